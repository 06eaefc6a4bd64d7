# meshgate developer tasks. Everything runs from the virtualenv in $(VENV).

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443
CERT_DIR ?= certs/dev

.PHONY: install run test lint bench clean

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
	$(BIN)/ruff check webhook tests
	$(BIN)/mypy webhook

test: lint
	$(BIN)/pytest -q

# meshgate against a bare TLS server (the floor) with wrk; writes bench/results.md and
# bench/latency-vs-size.png (see bench/README.md). Not part of `make test`; about 7 minutes.
bench: $(VENV)/.bench-installed
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }
	$(BIN)/python -m bench.run

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -c constraints.txt -e '.[bench]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf $(CERT_DIR)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
