# meshgate developer tasks. Everything runs from the virtualenv in $(VENV).

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8443
CERT_DIR ?= certs/dev

.PHONY: install run test lint clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf $(CERT_DIR)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
