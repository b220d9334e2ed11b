# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project into it first (torch==2.13.0, the CPU build on this disk).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The real MovieLens sample beside the checkout, when there is one.
DEMO_DATA ?= $(firstword $(wildcard ../shared/data/ml-latest-small))

.PHONY: install browser demo test lint bench reliability clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $@

install: $(VENV)/.installed

# The browser the dashboard's tests drive (tests/ui): Debian's chromium, installed when missing and apt-get can
# (as root). Elsewhere the browser tests skip, saying so; MOVIEREC_CHROMIUM names another Chromium or Chrome.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$MOVIEREC_CHROMIUM" ] || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; \
	else echo "make browser: no Chromium and no way to install it (needs apt-get as root): the browser tests will skip"; fi

# `make demo SERVE=1` keeps the stack up afterwards, with the dashboard at /ui/ (Ctrl-C stops it).
demo: install
	$(if $(DEMO_DATA),MOVIEREC_DEMO_DATA=$(DEMO_DATA)) $(BIN)/movierec demo $(if $(SERVE),--serve)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint browser
	$(PY) -m pytest

bench: install
	$(PY) -m bench.ingest

# The longer runs behind RELIABILITY.md's figures (minutes each).
reliability: install
	$(PY) -m bench.chaos --jobs 300
	$(PY) -m bench.load --seconds 180

clean:
	rm -rf $(VENV) .movierec .mypy_cache .ruff_cache .pytest_cache .artifacts
