# Atelier Compute — developer entry points. Every target creates/uses its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
MODELS := $(VENV)/share/atelier-models
APT := $(if $(filter 0,$(shell id -u)),,sudo )env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install browser run test test-fast lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ml]'
	$(BIN)/python scripts/install_models.py $(MODELS)
	$(BIN)/python -c "import onnxruntime, rembg"  # first import JIT-compiles pymatting (~1 min); cache it now
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the service with its dev tools, ML extra and shipped model weights

browser:  ## Chromium + chromedriver for the dashboard's browser tests (apt-get, through sudo unless root)
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		$(APT) install -y --no-install-recommends chromium chromium-driver \
		|| { $(APT) update -qq && $(APT) install -y --no-install-recommends chromium chromium-driver; }; \
	fi

run: install  ## migrate and serve on the embedded default at http://127.0.0.1:8000 (docs at /docs)
	$(BIN)/atelier serve

test: install $(if $(filter true,$(CI)),browser,)  ## the whole test suite (integration and browser tests skip without their servers/browser unless CI=true)
	$(BIN)/pytest

test-fast: install  ## skip tests marked slow
	$(BIN)/pytest -m "not slow"

lint: install  ## ruff + mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) atelier-data .pytest_cache .mypy_cache .ruff_cache
