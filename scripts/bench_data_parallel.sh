#!/usr/bin/env bash
# The figures of BENCHMARKS.md "Data-parallel PPO and a sweep on Ray": the 1-vs-2-process
# equivalence of the data-parallel update (`rl-darts dist selftest` under mpirun), then the
# 2 games x 2 seeds x 2 strategies quick sweep through the Ray runner and its collected table.
#   scripts/bench_data_parallel.sh [BINARY]    (default: target/release/rl-darts)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/rl-darts}
export OMP_NUM_THREADS=1
# Containers often forbid the cross-memory attach of Open MPI's shared-memory transport.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
root_flag=()
[ "$(id -u)" -eq 0 ] && root_flag=(--allow-run-as-root)

echo "== equivalence: 2 processes x half a batch vs 1 process x the whole batch"
mpirun -np 2 --oversubscribe "${root_flag[@]}" "$BIN" dist selftest --backend mpi

echo "== sweep through the Ray runner (a throwaway one-node cluster)"
"$BIN" sweep plan --spec configs/sweep-coinrun-quick.toml
date -u +"started %FT%TZ"
"$BIN" sweep run runs/sweep-coinrun-quick/plan.json --ray local
date -u +"finished %FT%TZ"
"$BIN" sweep collect runs/sweep-coinrun-quick/plan.json
