# The front door. Each target is one line of intent; the logic lives in
# scripts/ and in Rust.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test build lint fmt bench bench-smoke clean tools image image-docker image-tools helm-test browser-test sdk-build sdk-test sdk-bundle

## run: build and start hub + ws-gateway + http-ingress on localhost, restarting any that dies (Ctrl-C stops)
run:
	scripts/run.sh

## test: every test (unit, end-to-end against the real binaries, then the Helm chart on a simulated cluster)
test: build image-tools
	$(CARGO) nextest run --workspace --profile ci
	$(MAKE) bench-smoke
	$(MAKE) helm-test
	$(MAKE) sdk-test
	$(MAKE) browser-test

## build: the three service binaries (the end-to-end tests start them)
build:
	$(CARGO) build --workspace --bins --tests

## bench: the full benchmark on release binaries (minutes); figures in target/bench/, see docs/performance.md
bench:
	$(CARGO) build --release --bins
	target/release/pushmesh-bench --out target/bench suite

## bench-smoke: a seconds-long run of the benchmark tool; fails if a delivery is lost
bench-smoke: build
	target/debug/pushmesh-bench --out target/bench-smoke smoke

## tools: helm, kubectl (pinned by version and checksum) and the chart tests' Python venv, under .tools/
tools:
	deploy/install-tools.sh

## image: the container image as an OCI archive in target/image/, no daemon needed (buildah); prints how to push it
image:
	deploy/build-image.sh

## image-docker: the same image from deploy/Dockerfile, with docker or podman, into the local engine
image-docker:
	deploy/build-image-docker.sh

## image-tools: buildah, skopeo, strip and CA certificates for `make image` and its test (apt, when missing)
image-tools:
	deploy/install-image-tools.sh

## helm-test: lint, render and validate the chart, then run it against the binaries on a simulated cluster (root)
helm-test: tools build
	.tools/venv/bin/python -m pytest tests/cluster

## browser-test: the demo page and the SDK package in headless Chromium against the real binaries (installs chromium and npm deps if missing)
browser-test: build sdk-build
	tests/browser/setup.sh
	cd tests/browser && node --test

## sdk-build: build the client SDK package in clients/js (installs node and its pinned build tools if missing)
sdk-build:
	clients/js/setup.sh
	cd clients/js && npm run build

## sdk-test: the SDK's unit tests, its tests against the real binaries, and its npm package (files, types)
sdk-test: build sdk-build
	cd clients/js && npm test

## sdk-bundle: rebuild the SDK and copy it to the gateway's static/pushmesh.js (commit that file; sdk-test checks it)
sdk-bundle:
	clients/js/setup.sh
	cd clients/js && node scripts/build.mjs --gateway

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
