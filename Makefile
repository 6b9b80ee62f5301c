# The two commands of the README: `make train` and `make test`. Both run the idempotent
# setup first (Debian packages, .venv with torch 2.13.0, procgen/gym3 wheels in .deps/).

CARGO ?= cargo
TRAIN_ARGS ?=

.PHONY: setup build train test bench-envs bench-ppo clean-deps

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

# The main job on its defaults: PPO on coinrun (see README for options; TRAIN_ARGS adds flags).
train: build
	./target/release/rl-darts train --env coinrun $(TRAIN_ARGS)

test: setup
	$(CARGO) test --no-fail-fast

bench-envs: build
	bash scripts/bench_envs.sh

bench-ppo: build
	bash scripts/bench_ppo.sh

clean-deps:
	rm -rf .venv .deps
