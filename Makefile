# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project into it first (torch==2.13.0, the CPU build on this disk).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The real MovieLens sample beside the checkout, when there is one.
DEMO_DATA ?= $(firstword $(wildcard ../shared/data/ml-latest-small))

.PHONY: install demo test lint bench reliability clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(if $(DEMO_DATA),MOVIEREC_DEMO_DATA=$(DEMO_DATA)) $(BIN)/movierec demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m bench.ingest

# The longer runs behind RELIABILITY.md's figures (minutes each).
reliability: install
	$(PY) -m bench.chaos --jobs 300
	$(PY) -m bench.load --seconds 180

clean:
	rm -rf $(VENV) .movierec .mypy_cache .ruff_cache .pytest_cache
