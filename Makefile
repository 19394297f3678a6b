# sophons — the verbs. `make test` is what CI runs (.ci/run); `make demo` shows the whole system.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV                 := .venv
CARGO_LAMBDA_VERSION := 1.9.2
PY_TOOLS             := moto[server]==5.2.1 checkov==3.3.30 cargo-lambda==$(CARGO_LAMBDA_VERSION)
SCRIPT_TOOLS         := shellcheck bats
BINARIES             := autoscaler create-runner stop-runner move-jobs
ARCH                 ?= x86_64
TFVARS               ?= terraform/terraform.tfvars
CARGO_TEST           := cargo test --workspace --all-targets --locked
JOBS                 ?= 6

.PHONY: help setup build lint test test-rust test-terraform test-scripts demo bench soak fuzz deploy clean

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@

# shellcheck and bats are for `make test-scripts` only: apt-get installs them when run as root on Debian/Ubuntu
# (a fresh CI machine); anyone else is told the command, and setup goes on.
setup: $(VENV)/.installed ## install the pinned Python tools (moto, checkov, cargo-lambda) into .venv, and shellcheck/bats
	@missing="$$(for tool in $(SCRIPT_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done | xargs)"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $$missing with apt-get"; \
	  apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && apt-get install -y -qq $$missing >/dev/null; }; \
	else \
	  echo "make setup: $$missing not installed; make test-scripts (and so make test) needs them, make build does not:"; \
	  echo "  sudo apt-get install -y $$missing    # Debian, Ubuntu"; \
	  echo "  brew install $${missing/bats/bats-core}    # macOS"; \
	fi

# Needs only Rust and cargo-lambda (from .venv when `make setup` installed it, else from PATH), no root.
build: ## release-build each Lambda into target/lambda/<name>/bootstrap.zip (ARCH=x86_64|arm64)
	@export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"; missing=0; \
	case "$(ARCH)" in x86_64|arm64) ;; *) echo "make build: ARCH must be x86_64 or arm64, not $(ARCH)"; exit 1;; esac; \
	command -v cargo >/dev/null || { missing=1; \
	  echo "make build: cargo is missing: install Rust (stable) with rustup, https://rustup.rs"; }; \
	command -v cargo-lambda >/dev/null || { missing=1; \
	  echo "make build: cargo-lambda is missing: make setup (installs cargo-lambda==$(CARGO_LAMBDA_VERSION) into .venv), or"; \
	  echo "  pip install cargo-lambda==$(CARGO_LAMBDA_VERSION), or https://www.cargo-lambda.info/guide/installation.html"; }; \
	if [ "$(ARCH)" = arm64 ] && command -v rustup >/dev/null && \
	   ! rustup target list --installed | grep -q aarch64-unknown-linux-gnu; then missing=1; \
	  echo "make build: ARCH=arm64 needs the aarch64-unknown-linux-gnu standard library: rustup target add aarch64-unknown-linux-gnu"; fi; \
	exit $$missing
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cargo lambda build --release --locked \
	  $(if $(filter arm64,$(ARCH)),--arm64,--x86-64) --output-format zip $(addprefix --bin ,$(BINARIES))
	@ls -l target/lambda/*/bootstrap.zip

lint: ## rustfmt and clippy, warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

test-rust: setup ## the Rust tests, against one moto server started for the run
	cargo build --workspace --all-targets --locked
	scripts/with-moto.sh $(CARGO_TEST)

test-terraform: setup ## terraform fmt/validate/checkov, apply to moto, IAM checks
	SOPHONS_REQUIRE_CONFIG_CHECK=1 scripts/with-moto.sh scripts/check-terraform.sh

test-scripts: setup ## shellcheck and tests of the runner script
	scripts/test-runner-script.sh

test: setup lint test-rust test-terraform test-scripts ## every check CI runs
	@echo "make test: all checks passed"

demo: setup ## the whole system on this machine: Terraform on moto, the four binaries, a fake GitHub (JOBS=6)
	cargo build --workspace --all-targets --locked
	scripts/with-moto.sh target/debug/demo --jobs $(JOBS)

bench: setup ## the benchmarks' table: cold start, memory, webhook hot path, create-runner cost, burst, size
	scripts/bench.sh

# Optimised, but without the Lambdas' fat LTO (minutes of linking for no faster a simulation), in a
# target dir of its own so that it does not evict `make build`'s artefacts.
soak: ## the simulation under faults with >= 1,000,000 jobs, serial and concurrent (SOPHONS_SOAK_JOBS to change)
	CARGO_TARGET_DIR=target/soak CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
	  cargo test --release -p sophons-core --test simulation --locked -- --ignored --nocapture --exact soak

fuzz: ## coverage-guided fuzzing of the webhook input path (nightly, cargo-fuzz), >= 1,000,000 executions
	fuzz/run.sh

deploy: build ## build, then terraform apply with TFVARS (default terraform/terraform.tfvars)
	terraform -chdir=terraform init
	terraform -chdir=terraform apply -var-file="$(abspath $(TFVARS))"

# A debug build on purpose: smoke waits on GitHub, not on the CPU, and the release profile's fat LTO would
# spend minutes linking it; the debug build shares `make test`'s artefacts.
.PHONY: smoke
smoke: ## dispatch a tiny workflow on a real deployment and follow it (REPO=owner/name TEMPLATE=<name>, GITHUB_TOKEN in the environment)
	@missing=""; \
	[ -n "$(REPO)" ] || missing="$$missing REPO=owner/name"; \
	[ -n "$(TEMPLATE)" ] || missing="$$missing TEMPLATE=<template>"; \
	[ -n "$${GITHUB_TOKEN:-}" ] || missing="$$missing GITHUB_TOKEN (in the environment)"; \
	if [ -n "$$missing" ]; then \
	  echo "make smoke: missing:$$missing"; \
	  echo "  export GITHUB_TOKEN=...; make smoke REPO=my-org/app TEMPLATE=template_cpu [REF=<branch>] [TIMEOUT=<minutes>] [API_URL=https://<host>/api/v3]"; \
	  echo "  the token's permissions: docs/deploy.md, \"Check it works: make smoke\", or cargo run -p smoke -- --help"; \
	  exit 2; \
	fi
	cargo run --locked -p smoke -- --repository "$(REPO)" --template "$(TEMPLATE)" \
	  $(if $(REF),--ref "$(REF)") $(if $(TIMEOUT),--timeout-minutes "$(TIMEOUT)") $(if $(API_URL),--api-url "$(API_URL)")

clean: ## remove build output and the venv
	cargo clean
	rm -rf $(VENV)
