# Quartet's single entry point. `make` (or `make help`) lists the targets.
#
# Build output lives outside the clone so that rebuilds in a fresh clone stay fast:
# override CARGO_TARGET_DIR to put it elsewhere.
export CARGO_TARGET_DIR ?= /var/tmp/quartet/target
CARGO ?= cargo
CRATE ?= quartet-kit
SERVICES := quartet-auth quartet-task-gateway quartet-rpc-gateway quartet-db quartet-operator

.DEFAULT_GOAL := help
.PHONY: help setup dev build test test-fast lint fmt gen check-gen images images-test e2e bench fuzz fuzz-smoke envtest-up envtest-down clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install what building and testing need (apt packages, the Kubernetes test binaries)
	scripts/setup.sh

dev: ## build and run every service on loopback with embedded defaults; Ctrl-C stops them all
	scripts/dev.sh

build: ## build every binary (debug)
	$(CARGO) build --workspace --bins --locked

test: setup lint check-gen build images-test fuzz-smoke ## the whole suite: lint, generated-file drift, a short fuzzing run, unit, integration (PostgreSQL, Redis, Shiro), Docker and Kubernetes tests
	QUARTET_K8S_KCM=1 e2e/k8s/envtest.sh up
	scripts/postgres.sh up
	scripts/redis.sh up
	$(CARGO) test --workspace --locked --no-fail-fast; status=$$?; e2e/k8s/envtest.sh down; scripts/postgres.sh down; scripts/redis.sh down; exit $$status

test-fast: ## unit and integration tests of one crate while working on it: make test-fast CRATE=quartet-kit
	$(CARGO) test -p $(CRATE)

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

gen: build ## regenerate generated files (configuration references under docs/reference/, the CRDs in charts/quartet/crds/)
	@mkdir -p docs/reference
	@for s in $(SERVICES); do $(CARGO_TARGET_DIR)/debug/$$s --config-reference > docs/reference/config-$${s#quartet-}.md; done
	@mkdir -p charts/quartet/crds
	@$(CARGO_TARGET_DIR)/debug/quartet-crdgen > charts/quartet/crds/quartet.dev.yaml
	@echo "generated docs/reference/config-*.md and charts/quartet/crds/quartet.dev.yaml"

check-gen: gen ## fail when generated files differ from what is committed
	@git diff --exit-code -- docs/reference charts/quartet/crds || { echo "generated files drifted: run 'make gen' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- docs/reference charts/quartet/crds)" || { git status --porcelain -- docs/reference charts/quartet/crds; echo "untracked generated files: run 'make gen' and commit"; exit 1; }

images: ## release images quartet/<role>:<version>, built with the local Docker engine, no registry
	scripts/images.sh --profile release

images-test: build ## images tagged :test from the debug build, for the e2e tests
	scripts/images.sh --profile dev --tag test

e2e: images-test ## only the end-to-end tests (processes, tracing, Docker, Kubernetes)
	QUARTET_K8S_KCM=1 e2e/k8s/envtest.sh up
	$(CARGO) test -p quartet-e2e --locked; status=$$?; e2e/k8s/envtest.sh down; exit $$status

bench: ## benchmarks against a peer in the same run, reported as ratios (docs/BENCHMARKS.md)
	scripts/bench.sh

fuzz: ## coverage-guided fuzzing of every decoder of untrusted input, FUZZ_SECONDS (180) per target (docs/fuzzing.md)
	scripts/fuzz.sh

fuzz-smoke: ## every fuzz target on FUZZ_SMOKE_RUNS (20000) inputs from the committed seeds, reproducibly: the short run in make test
	scripts/fuzz.sh --smoke $${FUZZ_SMOKE_RUNS:-20000}

envtest-up: ## start the test Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
	QUARTET_K8S_KCM=1 e2e/k8s/envtest.sh up

envtest-down: ## stop it
	e2e/k8s/envtest.sh down

clean: ## remove build output
	$(CARGO) clean
