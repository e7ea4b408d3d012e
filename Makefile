# The two commands README.md gives: `make demo` (the main job) and `make test` (everything CI checks).
VENV := .venv
BIN := $(VENV)/bin
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: demo test build setup lint rust-test py-test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Cargo.toml scripts/bootstrap.sh
	scripts/bootstrap.sh
	touch $@

# Rebuild the extension in place after Rust changes.
build: setup
	$(BIN)/maturin develop --release --quiet --skip-install 2>&1 | grep -v '^🔗\|^📦\|^🐍\|^🛠' || true
	@$(BIN)/python -c "import meshpipe._meshpipe" 

demo: build
	$(BIN)/meshpipe demo $(ARGS)

lint: setup
	cargo fmt --check
	cargo clippy --quiet --all-targets --features python -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest meshpipe._meshpipe --allowlist python/stubtest-allowlist.txt

rust-test: setup
	cargo test --quiet

py-test: build
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test: lint rust-test py-test

bench: build
	$(BIN)/python -m pytest benches -q --benchmark-columns=min,mean,max -s $(PYTEST_ARGS)
