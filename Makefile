# The front door. Each target is one line of intent; the logic lives in
# scripts/ and in Rust.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test build lint fmt bench clean

## run: build and start hub + ws-gateway + http-ingress on localhost (Ctrl-C stops)
run:
	scripts/run.sh

## test: every test (unit, end-to-end against the real binaries)
test: build
	$(CARGO) nextest run --workspace --profile ci

## build: the three service binaries (the end-to-end tests start them)
build:
	$(CARGO) build --workspace --bins --tests

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
