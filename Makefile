# The developer loop. `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test check fmt bench chaos clean

# Tests drive a real headless Chromium and a real sshd on loopback.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The tests use the example plugin package (docs/extending.md) as a real installed one.
PLUGIN := tests/plugins/apsis_example

$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e $(PLUGIN)
	touch $(STAMP)

install: $(STAMP)

## demo: a working scheduler with the example jobs and a local agent on 127.0.0.1:5005
demo: $(STAMP)
	$(BIN)/apsis-server --config examples/config.yaml

## check: formatting, lint and strict type checks
check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# PostgreSQL: only its binaries (tests/postgres.py runs its own clusters); the
# package's own cluster and service are not used.
system-deps:
	@if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v sudo >/dev/null \
			|| ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium openssh-server openssh-client sudo postgresql; \
	fi

## test: check, then the whole suite (soak and benchmark runs excluded)
test: check system-deps
	$(BIN)/pytest -q --durations=15

## chaos: the long seeded fault campaign (tests/chaos/README.md); APSIS_CHAOS_SEED replays one,
## APSIS_CHAOS_MINUTES (20) sets its length; needs root (tmpfs mounts)
chaos: $(STAMP) system-deps
	$(BIN)/pytest -q -s -m slow tests/chaos

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the benchmark scenarios of spec/05-quality.md; a table and bench/results/*.json
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-state .mypy_cache .ruff_cache .pytest_cache
