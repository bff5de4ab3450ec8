# vault-rotator: two commands do everything on a fresh machine with Python 3.11 and make.
#   make demo   set up, then run a full rotation on an embedded OpenBao dev server + the emulator
#   make test   set up, then run formatter check, linter, type checker and the test suite
#   make chaos  the chaos run: the daemon SIGKILLed 100 times under traffic, Vault stopped,
#               sealed and its tokens revoked, provider faults; one line of figures
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := $(VENV)/tools

.PHONY: setup demo test lint fmt bench chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml | $(TOOLS)/promtool
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# promtool checks deploy/prometheus/alerts.yaml (tests/test_alerts.py); no PyPI package ships it.
$(TOOLS)/promtool:
	scripts/get-promtool $(TOOLS)

demo: $(STAMP)
	$(BIN)/vault-rotator demo

lint: $(STAMP)
	$(BIN)/ruff format --check vault_rotator tests benchmarks
	$(BIN)/ruff check vault_rotator tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy tests
	$(BIN)/lint-imports --no-cache --no-logo

test: lint
	$(BIN)/pytest

fmt: $(STAMP)
	$(BIN)/ruff format vault_rotator tests benchmarks
	$(BIN)/ruff check --fix vault_rotator tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The chaos run (README "Chaos"): one line of figures, exit 1 when a must-be-zero one is not 0.
# CHAOS_ARGS: more flags, e.g. --no-provider-faults, --no-vault-faults, --keep, --keys K.
CHAOS_KILLS ?= 100
CHAOS_SEED  ?= 1
CHAOS_ARGS  ?=
chaos: $(STAMP)
	$(BIN)/python -m vault_rotator.testing.chaos --kills $(CHAOS_KILLS) --seed $(CHAOS_SEED) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
