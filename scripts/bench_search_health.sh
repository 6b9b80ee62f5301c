#!/usr/bin/env bash
# Cost of one search-health measurement (src/train/health.rs) in the digits DARTS search:
# one epoch (12 weight steps, each with a first-order alpha step) with health off, and with
# one measurement at the end of the epoch (search.health.every = 12), at the given number of
# power-iteration steps. Prints the CPU (user) seconds of each run.
# Usage: scripts/bench_search_health.sh [POWER_ITERATIONS] (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${1:-20}"
bin=target/debug/rl-darts
cargo build --bin rl-darts >/dev/null
out=$(mktemp -d)
for every in 0 12; do
  /usr/bin/time -f "health.every=$every power_iterations=$iters: user %U s, wall %e s" \
    "$bin" search --config configs/digits-darts.toml --set search.epochs=1 \
    --set search.health.every="$every" --set search.health.power_iterations="$iters" \
    --run-dir "$out/every$every" -q 2>&1 | grep "health.every="
done
rm -rf "$out"
