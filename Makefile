# ordersaga — the commands a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

STACK := scripts/stack.sh
# Loads the local stack's addresses (written by `make stack-up`) into the environment.
WITH_STACK := set -a; . .stack/env; set +a;
TEST_THREADS ?= 8

.PHONY: help bench run test test-unit test-integration test-e2e test-browser compose-check fuzz-api drill stack-up stack-down stack-status migrate build fmt lint compose-up compose-down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

run: stack-up ## Start the local stack and run every component in one process on :8000
	$(WITH_STACK) cargo run --bin ordersaga -- all

test: stack-up ## Start the local stack if needed and run every test (unit, integration, cucumber, API fuzzing, browser, compose)
	$(WITH_STACK) cargo test --all-targets -- --test-threads $(TEST_THREADS)
	scripts/fuzz-api.sh
	scripts/browser-test.sh
	scripts/check-compose.sh

test-unit: ## Domain and adapter unit tests only (no servers needed)
	cargo test --lib --bins

test-integration: stack-up ## Integration and end-to-end tests against the local stack
	$(WITH_STACK) cargo test --test integration -- --test-threads $(TEST_THREADS)

test-e2e: stack-up ## The cucumber scenarios in features/ against the whole system
	$(WITH_STACK) cargo test --test cucumber

drill: stack-up ## Reliability drill: kill every component, kill and wipe the broker, stop MongoDB and the user API, besiege the API, under load
	$(WITH_STACK) cargo test --test drill -- $(DRILL_ARGS)

bench: stack-up ## Measure a release `ordersaga all` against PostgreSQL and Kafka floors (docs/performance.md)
	scripts/bench.sh

fuzz-api: stack-up build ## Fuzz the HTTP API with Schemathesis against its OpenAPI document
	scripts/fuzz-api.sh

test-browser: stack-up build ## The live saga page and Swagger UI in headless Chromium (skipped without Chromium)
	scripts/browser-test.sh

compose-check: ## Validate docker-compose.yml with the Compose client (no Docker engine needed)
	scripts/check-compose.sh

stack-up: ## Install (if missing) and start PostgreSQL, Apache Kafka and MongoDB (SecantusDB) on 127.0.0.1
	@$(STACK) up

stack-down: ## Stop what stack-up started
	@$(STACK) down

stack-status: ## Show which local servers answer
	@$(STACK) status

migrate: stack-up ## Create the database and apply migrations
	$(WITH_STACK) cargo run --bin ordersaga -- migrate

build: ## Build the binary
	cargo build --bin ordersaga

fmt: ## Format the code
	cargo fmt

lint: ## Check formatting and clippy (warnings are errors)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --test drill -- -D warnings

compose-up: .env ## Run everything with Docker Compose (needs a Docker engine); credentials in .env
	docker compose up -d --build

# Random credentials for Compose, written once (docker-compose.yml refuses to start without them).
.env:
	@umask 077; { echo "# Written by make compose-up; see .env.example."; \
	  echo "POSTGRES_PASSWORD=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; \
	  echo "MONGO_PASSWORD=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; \
	  echo "ORDERSAGA_API_KEYS=$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"; } >$@
	@echo "compose: wrote $@ with random credentials; your API key is in it (ORDERSAGA_API_KEYS)"

compose-down: ## Stop the Docker Compose stack
	docker compose down

clean: ## Remove build output and the local stack's data
	$(STACK) down
	rm -rf target .stack
