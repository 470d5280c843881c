# gpucp: one entry point for building, running, testing and benchmarking.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Cargo.toml core_rs/Cargo.toml | cksum | cut -d' ' -f1)
RUST_SRC := $(shell find core_rs/src -name '*.rs' 2>/dev/null)

.DEFAULT_GOAL := help
.PHONY: help install run test test-rust test-python lint proto proto-check bench clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Cargo.toml core_rs/Cargo.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'maturin>=1.9.4,<2'
	rm -f $(VENV)/.installed-* && touch $@

# One build of the extension, installed editable into .venv with the dev extras.
controlplane/_core.abi3.so: $(STAMP) $(RUST_SRC)
	. $(VENV)/bin/activate && maturin develop --release --quiet -E dev
	touch $@

install: controlplane/_core.abi3.so ## Create .venv with gpucp (editable) and its tools

run: install ## Run the control plane with simulated agents and a sample workload, then print a summary
	$(PY) -m controlplane.demo

test: test-rust proto-check lint test-python ## Run every test (Rust, contract drift, lint, Python)

test-rust: ## Rust unit and property tests of the core
	cargo test -p gpucp-core --quiet

test-python: install ## Python tests over real gRPC on loopback
	$(PY) -m pytest -q

# Rust first: it needs no .venv and fails fastest. The python feature is checked apart because
# the bindings only compile with it. mypy reads its files and strictness from pyproject.toml.
lint: install ## cargo fmt and clippy, ruff, mypy (strict), and the native module against its stub
	cargo fmt --check
	cargo clippy -p gpucp-core --all-targets -- -D warnings
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy -p gpucp-core --all-targets --features python -- -D warnings
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m mypy.stubtest controlplane._core

proto: install ## Regenerate gpucp/v1 from proto/
	PYTHON=$(PY) scripts/gen_proto.sh

proto-check: install ## Fail when gpucp/v1 differs from what proto/ generates
	PYTHON=$(PY) scripts/gen_proto.sh
	git diff --exit-code --stat -- gpucp/v1 || (echo 'gpucp/v1 is out of date: run make proto and commit it' && exit 1)

$(VENV)/.bench-deps: controlplane/_core.abi3.so
	. $(VENV)/bin/activate && maturin develop --release --quiet -E dev,bench
	touch $@

bench: $(VENV)/.bench-deps ## Every bench: core, simulator, end to end vs Ray and Dask, scale (tables in benches/out/)
	cargo bench -p gpucp-core --bench placement
	$(PY) benches/bench_core.py --criterion
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(PY) benches/bench_instructions.py
	$(PY) benches/simulate.py
	$(PY) benches/bench_e2e.py
	$(PY) benches/bench_peers.py
	$(PY) benches/bench_scale.py
	$(PY) benches/bench_dashboard.py
	$(PY) benches/bench_store.py

clean: ## Remove build output and the virtualenv
	rm -rf target $(VENV) controlplane/_core*.so
