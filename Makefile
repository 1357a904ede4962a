# suara — the two commands a newcomer needs are `make demo` and `make test`.
# Everything bootstraps through `install` (a .venv here, nothing global).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint protos protos-check bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install suara with its dev tools

demo: install  ## start PostgreSQL and the services, feed a small simulated election
	$(BIN)/suara demo $(DEMO_ARGS)

test: install  ## the whole test suite, against real PostgreSQL (embedded unless DATABASE_URL is set)
	$(BIN)/pytest -n $${PYTEST_WORKERS:-2} $(PYTEST_ARGS)

lint: install  ## ruff and mypy, and the generated code must match protos/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m suara.protogen --check

protos: install  ## regenerate suara/v1 from protos/
	$(BIN)/python -m suara.protogen

bench: install  ## benchmarks (BENCH_QUICK=1 for a short run)
	$(BIN)/python -m bench

clean:  ## remove the virtualenv and local state (.suara: the embedded database)
	rm -rf $(VENV) .suara .mypy_cache .ruff_cache .pytest_cache
