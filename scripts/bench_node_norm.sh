#!/usr/bin/env bash
# Which node normalisation learns: the RL-DARTS derived cell at the quick preset's size (PPO
# batch 256), retrained from scratch for STEPS env steps per run, for each `node_norm` and seed,
# then evaluated with the stochastic policy on the training levels (200 from 0) and on the full
# level distribution (held-out). Prints a markdown table per run and the mean +- standard error
# over seeds per norm.
#
#   SEEDS="1 2" NORMS="none layer batch" STEPS=163840 PARALLEL=2 bash scripts/bench_node_norm.sh
#
# GENOTYPE=path/genotype.json reuses a derived cell; without it the quick preset's search
# (seed 1) derives one first. Results: $OUT (default bench-out/node_norm).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/rl-darts}
SEEDS=${SEEDS:-"1 2"}
NORMS=${NORMS:-"none layer batch"}
STEPS=${STEPS:-163840}
PARALLEL=${PARALLEL:-2}
EPISODES=${EPISODES:-100}
OUT=${OUT:-bench-out/node_norm}
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

if [ -z "${GENOTYPE:-}" ]; then
  if [ ! -f "$OUT/derive/search/genotype.json" ]; then
    "$BIN" train --env coinrun --quick --seed 1 --phase search --run-dir "$OUT/derive" --quiet
  fi
  GENOTYPE=$OUT/derive/search/genotype.json
fi
GENOTYPE=$(realpath "$GENOTYPE")
echo "genotype: $(cat "${GENOTYPE%.json}.txt" 2>/dev/null || cat "$GENOTYPE")"

config() { # norm seed -> the retrain config (the quick preset's networks and PPO)
  cat <<EOF
env = "coinrun"
seed = $2
device = "cpu"
torch_threads = 1
[encoder]
kind = "rl_darts_fixed"
[encoder.params]
genotype = "$GENOTYPE"
[encoder.params.supernet]
channels = [4, 8, 8]
normal_cells_per_stage = 1
embedding = 32
init = "torch_default"
node_norm = "$1"
[ppo]
total_timesteps = $STEPS
num_envs = 8
num_steps = 32
num_minibatches = 2
update_epochs = 2
[procgen]
num_levels = 200
start_level = 0
distribution_mode = "easy"
num_threads = 1
[checkpoint]
every = 100
EOF
}

run_one() { # norm seed
  local dir=$OUT/$1_seed$2
  if [ -f "$dir/summary.json" ]; then return; fi
  mkdir -p "$OUT/configs"
  config "$1" "$2" > "$OUT/configs/$1_seed$2.toml"
  if [ -d "$dir/checkpoints" ]; then
    "$BIN" train --resume "$dir" --quiet > "$OUT/$1_seed$2.log" 2>&1
  else
    "$BIN" train --env coinrun --encoder rl_darts_fixed --config "$OUT/configs/$1_seed$2.toml" \
      --run-dir "$dir" --quiet > "$OUT/$1_seed$2.log" 2>&1
  fi
}

jobs_running() { jobs -rp | wc -l; }
for norm in $NORMS; do
  for seed in $SEEDS; do
    while [ "$(jobs_running)" -ge "$PARALLEL" ]; do sleep 5; done
    echo "$(date -u +%H:%M:%S) start $norm seed $seed"
    run_one "$norm" "$seed" &
  done
done
wait

eval_one() { # dir levels-args... -> "mean std"
  local dir=$1; shift
  "$BIN" eval --checkpoint "$dir" --episodes "$EPISODES" --num-envs 20 --seed 7 --device cpu "$@" \
    | sed -n 's/.*return \([-0-9.]*\) +- \([0-9.]*\).*/\1 \2/p'
}

{
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F); $STEPS env steps per run"
  echo
  echo "| node_norm | seed | last-100 training return | train levels ($EPISODES ep.) | held-out ($EPISODES ep.) | steps/s |"
  echo "|---|---:|---:|---:|---:|---:|"
  for norm in $NORMS; do
    for seed in $SEEDS; do
      dir=$OUT/${norm}_seed$seed
      read -r last sps < <(python3 -c "import json;s=json.load(open('$dir/summary.json'));print(s['mean_return'], round(s['steps_per_sec']))")
      read -r tr trs < <(eval_one "$dir" --num-levels 200 --start-level 0)
      read -r te tes < <(eval_one "$dir" --num-levels 0)
      echo "| $norm | $seed | $last | $tr +- $trs | $te +- $tes | $sps |"
      echo "$norm $seed $tr $te" >> "$OUT/evals.txt.tmp"
    done
  done
  echo
  echo "Mean over seeds (standard error of the mean over seeds):"
  echo
  echo "| node_norm | seeds | train levels | held-out |"
  echo "|---|---:|---:|---:|"
  python3 - "$OUT/evals.txt.tmp" <<'PY'
import sys, math, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    norm, seed, tr, te = line.split()
    rows[norm].append((float(tr), float(te)))
def ms(xs):
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else float("nan")
    return f"{m:.2f} +- {se:.2f}"
for norm, v in rows.items():
    print(f"| {norm} | {len(v)} | {ms([a for a, _ in v])} | {ms([b for _, b in v])} |")
PY
  rm -f "$OUT/evals.txt.tmp"
} | tee "$OUT/table.md"
