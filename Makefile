# meshgate developer tasks. Everything runs from the virtualenv in $(VENV).

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443
CERT_DIR ?= certs/dev

.PHONY: install run test lint fuzz bench soak audit clean

install: $(VENV)/.installed

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	touch $@

# Serves https://$(HOST):$(PORT) with a throwaway CA and serving cert generated into
# $(CERT_DIR) on first start; never contacts a cluster.
run: $(VENV)/.installed
	$(BIN)/meshgate serve --dev --cert-dir $(CERT_DIR) --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed
	$(BIN)/ruff check webhook tests bench soak
	$(BIN)/mypy webhook bench soak

test: lint
	$(BIN)/pytest -q

# The property-based fuzz tests (tests/test_fuzz.py) with the "fuzz" Hypothesis profile:
# random rather than derandomized, FUZZ_SCALE (default 20) times the examples `make test`
# runs, failures kept in .hypothesis/ and replayed first next time. About 10 minutes at the
# default scale on two cores; the example count is printed at the end.
FUZZ_SCALE ?= 20
fuzz: $(VENV)/.installed
	HYPOTHESIS_PROFILE=fuzz FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -q -o timeout=0 \
		tests/test_fuzz.py

# meshgate against a bare TLS server (the floor) with wrk; writes bench/results.md and
# bench/latency-vs-size.png (see bench/README.md). Not part of `make test`; about 7 minutes.
bench: $(VENV)/.bench-installed
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }
	$(BIN)/python -m bench.run

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -c constraints.txt -e '.[bench]'
	touch $@

# A real `meshgate serve` against the fake API server (tests/fakeapi.py) at a fixed request
# rate while its policy ConfigMap flips and its serving certificate rotates; every answer is
# checked; writes soak/results.md (see docs/reliability.md). Not part of `make test`;
# SOAK_SECONDS sets the duration (default 180), SOAK_RATE the rate (default 200 req/s).
soak: $(VENV)/.installed
	$(BIN)/python -m soak.run

# pip-audit over the locked dependencies (constraints.txt), installed from PyPI at run time
# into a virtualenv of its own, so that the project's virtualenv and `make test` never depend
# on it or on an advisory database. Exit 1 on findings, 2 when not every pinned package
# could be audited (soak/audit.py). Not part of `make test`.
AUDIT_VENV := $(VENV)/pip-audit
audit:
	test -x $(AUDIT_VENV)/bin/python || $(PY) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet --timeout 30 --retries 2 --upgrade pip-audit \
		|| { echo "make audit: could not install pip-audit from PyPI" >&2; exit 2; }
	$(AUDIT_VENV)/bin/python soak/audit.py --pip-audit $(AUDIT_VENV)/bin/pip-audit \
		-r constraints.txt

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf $(CERT_DIR)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
