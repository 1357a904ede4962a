# suara — the two commands a newcomer needs are `make demo` and `make test`.
# Everything bootstraps through `install` (a .venv here, nothing global).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast lint protos protos-check docs bench clean help

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

# The site is tested in Debian's chromium and behind a real nginx: installed here when missing and
# possible (root with apt); otherwise those tests skip, saying why. Likewise promtool (Debian's prometheus),
# which checks and unit-tests the alert rules in deploy/prometheus; nftables, whose nft applies
# deploy/nftables in a network namespace of the test's own; iproute2 (ip, ss) for the cluster's hosts;
# Debian's postgresql: a PostgreSQL built with TLS for the cluster's database tier (the wheel's has none).
system-deps:  ## chromium and nginx for the site tests, prometheus (promtool) for the alert rules, etcd, iproute2 and a TLS-capable PostgreSQL for the cluster tests, nftables for the firewall test (apt, when root and missing)
	@if ! command -v chromium >/dev/null || ! command -v nginx >/dev/null || ! command -v promtool >/dev/null || ! command -v etcd >/dev/null || ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v ss >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "== installing chromium and nginx-light (site tests), prometheus (alert rule tests), etcd-server, iproute2 and postgresql (cluster tests), nftables (firewall test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx-light prometheus etcd-server iproute2 postgresql nftables >/dev/null; \
	  else echo "note: chromium/nginx/promtool/etcd/nft/ip/postgresql missing and not installable here: the browser, nginx, alert rule, cluster and firewall tests will skip (or the cluster runs on loopback addresses, its database tier without TLS)"; fi; \
	fi

test: install system-deps  ## the whole test suite, against real PostgreSQL (embedded unless DATABASE_URL is set)
	$(BIN)/pytest -n $${PYTEST_WORKERS:-2} $(PYTEST_ARGS)

# What `buf breaking` compares protos/ with: branch main of this repository (HEAD in a checkout that has
# no local main, such as a detached CI checkout: then what is uncommitted is compared). The git common
# dir is `.git` in a clone and the main repository's in a worktree (where `.git` is a file); buf clones
# it locally, no network. subdir: the protos are a module of their own, with or without a buf.yaml there.
BUF_REF := $(shell git rev-parse --verify -q refs/heads/main >/dev/null && echo branch=main || echo ref=HEAD)
BUF_AGAINST ?= $(shell git rev-parse --git-common-dir)\#$(BUF_REF),subdir=protos

lint: install system-deps  ## ruff, mypy, buf lint, promtool check, hadolint, kustomize + schemas; stubs and docs/api.md match protos/, docs/cli.md the CLI; no breaking change
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m suara.protogen --check
	$(BIN)/python -m cli.reference --check
	$(BIN)/buf lint
	$(BIN)/buf breaking --against '$(BUF_AGAINST)'
	@if command -v promtool >/dev/null; then \
	  promtool check rules --lint=all --lint-fatal deploy/prometheus/rules/*.yml && \
	  promtool check config --syntax-only deploy/prometheus/prometheus.yml; \
	else echo "note: promtool missing (Debian package prometheus, make system-deps): deploy/prometheus not checked"; fi
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/python deploy/k8s/validate.py  # kubectl kustomize, then the Kubernetes schemas (kubernetes-validate)

protos: install  ## regenerate suara/v1 and docs/api.md from protos/
	$(BIN)/python -m suara.protogen

docs: install  ## regenerate docs/cli.md, the CLI reference, from the commands' --help
	$(BIN)/python -m cli.reference

bench: install  ## benchmarks (BENCH_QUICK=1 for a short run)
	$(BIN)/python -m bench

clean:  ## remove the virtualenv and local state (.suara: the embedded database)
	rm -rf $(VENV) .suara .mypy_cache .ruff_cache .pytest_cache
