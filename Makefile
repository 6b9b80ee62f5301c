# The two commands of the README: `make train` and `make test`. Both run the idempotent
# setup first (Debian packages, .venv with torch 2.13.0, procgen/gym3 wheels in .deps/).

CARGO ?= cargo
TRAIN_ARGS ?=

.PHONY: setup build train lint test bench-envs bench-ppo bench-darts bench-strategies bench-digits clean-deps

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

# The main job on its defaults: the RL-DARTS pipeline on coinrun (search, derive, retrain +
# IMPALA baseline, eval; configs/coinrun-darts.toml spells the defaults out). TRAIN_ARGS adds
# flags, e.g. TRAIN_ARGS=--quick for the few-minutes preset or TRAIN_ARGS='--resume runs/...'.
train: build
	./target/release/rl-darts train --env coinrun $(TRAIN_ARGS)

# The lint gates: rustfmt.toml's formatting, and clippy on every crate and target with its
# warnings as errors (the lints themselves, e.g. undocumented_unsafe_blocks, are set in
# Cargo.toml's [workspace.lints]; rust-toolchain.toml pins the clippy that judges).
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every crate of the workspace: the main crate's unit and integration tests, and the unit
# tests of envs/ and agents/.
test: setup lint
	$(CARGO) test --workspace --no-fail-fast

bench-envs: build
	bash scripts/bench_envs.sh

bench-ppo: build
	bash scripts/bench_ppo.sh

bench-darts: build
	bash scripts/bench_darts_search.sh

bench-strategies: build
	bash scripts/bench_strategies.sh

bench-digits: build
	bash scripts/bench_digits_strategies.sh

clean-deps:
	rm -rf .venv .deps
