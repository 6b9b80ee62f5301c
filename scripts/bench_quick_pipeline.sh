#!/usr/bin/env bash
# The quick preset's RL-DARTS pipeline at STEPS env steps per phase, for several search
# strategies and seeds: search (supernet + strategy, or random search from scratch), derive,
# retrain the derived cell from scratch, evaluate it with the stochastic policy on the training
# levels (200 from 0) and on the full level distribution (held-out), EPISODES episodes each.
# The IMPALA-CNN baseline (as narrow as the searched network) does not depend on the strategy:
# it is trained once per seed, inside the first strategy's pipeline; the other strategies run
# with --skip-baseline and the table shows that one baseline row per seed.
#
#   STRATEGIES="joint gdas snas random" SEEDS="1" STEPS=163840 PARALLEL=2 \
#     bash scripts/bench_quick_pipeline.sh
#
# Results: $OUT (default bench-out/quick_pipeline): one pipeline run directory per (strategy,
# seed) with its comparison.json, and table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/rl-darts}
STRATEGIES=${STRATEGIES:-"joint gdas snas random"}
SEEDS=${SEEDS:-"1"}
STEPS=${STEPS:-163840}
PARALLEL=${PARALLEL:-2}
EPISODES=${EPISODES:-100}
OUT=${OUT:-bench-out/quick_pipeline}
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

first=${STRATEGIES%% *}
jobs=()
for seed in $SEEDS; do
  for strategy in $STRATEGIES; do
    jobs+=("$strategy $seed")
  done
done

run_one() { # strategy seed
  local strategy=$1 seed=$2 dir="$OUT/$1-seed$2" extra=()
  [ "$strategy" != "$first" ] && extra+=(--skip-baseline)
  if [ -f "$dir/comparison.json" ]; then echo "$dir: done"; return; fi
  echo "$(date -u +%H:%M:%S) start $strategy seed $seed"
  if [ -d "$dir" ]; then # an interrupted run continues from its checkpoint
    "$BIN" train --resume "$dir" --quiet >> "$dir.log" 2>&1
  else
    /usr/bin/time -v -o "$dir.time" "$BIN" train --env coinrun --quick --strategy "$strategy" --seed "$seed" \
      --set pipeline.search_timesteps="$STEPS" --set pipeline.retrain_timesteps="$STEPS" \
      --set pipeline.eval.episodes="$EPISODES" --set pipeline.eval.num_envs=20 \
      --set procgen.num_threads=1 --set torch_threads=1 \
      "${extra[@]}" --run-dir "$dir" --quiet > "$dir.log" 2>&1
  fi
  echo "$(date -u +%H:%M:%S) end $strategy seed $seed"
}
export -f run_one
export BIN OUT STEPS EPISODES first
printf '%s\n' "${jobs[@]}" | xargs -P "$PARALLEL" -L 1 bash -c 'run_one $0 $1'

.venv/bin/python - "$OUT" <<'PYEOF' > "$OUT/table.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*-seed*/comparison.json"))):
    c = json.load(open(path))
    strategy = os.path.basename(os.path.dirname(path)).rsplit("-seed", 1)[0]
    search = c.get("search") or {}
    for r in c["rows"]:
        name = f"{strategy}: derived cell" if r["encoder"] != "impala" else "IMPALA-CNN baseline"
        rows.append((name, c["seed"], r, search if r["encoder"] != "impala" else None, c))
print("| model | seed | params | search steps/s | retrain steps/s | train levels: return | normalised | held-out: return | normalised | genotype |")
print("|---|---|---|---|---|---|---|---|---|---|")
def fmt(level):
    n = level.get("mean_normalized_return")
    return f"{level['mean_return']:.2f} ± {level['std_return']:.2f}", ("" if n is None else f"{n:.3f}")
for name, seed, r, search, c in sorted(rows, key=lambda x: (x[0].startswith("IMPALA"), x[0], x[1])):
    tr, trn = fmt(r["train_levels"]); te, ten = fmt(r["test_levels"])
    sps = f"{search['steps_per_sec']:.0f}" if search else ""
    geno = (search or {}).get("genotype", "")
    print(f"| {name} | {seed} | {r['params']:,} | {sps} | {r['steps_per_sec']:.0f} | {tr} | {trn} | {te} | {ten} | `{geno}` |")
PYEOF
cat "$OUT/table.md"
