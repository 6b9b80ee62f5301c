#!/usr/bin/env bash
# Search results of the transformer space (Zhao et al. 2021) on the project's tasks. For each
# task and seed, three arms, every architecture retrained from scratch with the same
# [train_arch] budget and evaluated on the test split (token accuracy and exact match; greedy
# autoregressive decoding for addition):
#   darts     DARTS first order on the reversible supernet -> its derived architecture;
#   standard  the standard transformer ([self_attention, ffn] splits) resized to the derived
#             architecture's parameter count (train_arch.target_parameters);
#   random    random search from scratch at equal compute: candidates trained for
#             RANDOM_EPOCHS x train_arch.iterations_per_epoch each until the DARTS search's wall
#             time is spent (search.random_budget_seconds), then its best retrained.
# Prints a markdown table (and writes it to $OUT/table.md).
#   scripts/search_transformer.sh                  # TASKS="sort addition" SEEDS="0 1"
# SETS adds --set overrides to every run of every task, e.g. smaller budgets:
#   SETS="search.epochs=3 train_arch.epochs=4" scripts/search_transformer.sh
# SETS_SORT / SETS_ADDITION add overrides for one task only. RANDOM_EPOCHS (1) sizes each
# random candidate's training. Runs at one libtorch thread (torch_threads=1).
# TABLE_ONLY=1 skips the runs and prints the table of what $OUT holds for TASKS x SEEDS (runs
# of different seeds are independent, so seeds can be run in several calls and tabled at once).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"sort addition"}
SEEDS=${SEEDS:-"0 1"}
RE=${RANDOM_EPOCHS:-1}
OUT=${OUT:-runs/search_transformer}
export OMP_NUM_THREADS=1
[ -n "${TABLE_ONLY:-}" ] || cargo build --release >/dev/null
BIN=target/release/rl-darts
mkdir -p "$OUT"
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
echo "# $(lscpu | grep 'Model name' | sed 's/ \+/ /g'); $(date -u '+%F %H:%M') UTC; 1 libtorch thread"
for task in $TASKS; do
  [ -n "${TABLE_ONLY:-}" ] && break
  cfg=configs/seq-$task-darts.toml
  per_task=SETS_${task^^}
  EXTRA=(--set torch_threads=1)
  for kv in ${SETS:-} ${!per_task:-}; do EXTRA+=(--set "$kv"); done
  for seed in $SEEDS; do
    d=$OUT/$task-darts-$seed
    rm -rf "$d" "$OUT/$task-standard-$seed" "$OUT/$task-random-$seed"
    "$BIN" search --config "$cfg" --set seed="$seed" "${EXTRA[@]}" --run-dir "$d" -q > "$d.log"
    "$BIN" train-arch --genotype "$d/genotype.json" --config "$cfg" --set seed="$seed" \
      "${EXTRA[@]}" --out "$d/retrain" >> "$d.log"
    params=$(json "$d/retrain/summary.json" "['parameters']")
    budget=$(json "$d/summary.json" "['seconds']")
    s=$OUT/$task-standard-$seed
    "$BIN" train-arch --genotype standard --config "$cfg" --set seed="$seed" "${EXTRA[@]}" \
      --set train_arch.target_parameters="$params" --out "$s" > "$s.log"
    r=$OUT/$task-random-$seed
    "$BIN" search --config "$cfg" --set seed="$seed" "${EXTRA[@]}" \
      --set search.strategy.kind=random --set search.strategy.params.epochs_per_candidate="$RE" \
      --set search.random_budget_seconds="$budget" --run-dir "$r" -q > "$r.log"
    "$BIN" train-arch --genotype "$r/genotype.json" --config "$cfg" --set seed="$seed" \
      "${EXTRA[@]}" --out "$r/retrain" >> "$r.log"
    echo "done: $task seed $seed ($(date -u +%H:%M))" >&2
  done
done
python3 - "$OUT" "$TASKS" "$SEEDS" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out, tasks, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
load = lambda p: json.load(open(p))
def arch(run_dir):
    # genotype.txt: DARTS text form, then the readable form.
    lines = open(os.path.join(run_dir, "genotype.txt")).read().splitlines()
    return " ".join(lines[1:]).replace("|", "/")
print("| task | seed | arm | architecture | params (d_model) | search s (candidates) "
      "| val token acc / exact | test token acc / exact | retrain s |")
print("|---|---|---|---|---|---|---|---|---|")
mean = {}
for task in tasks:
    for seed in seeds:
        d, s, r = (f"{out}/{task}-{arm}-{seed}" for arm in ("darts", "standard", "random"))
        rows = [("darts", f"{d}/retrain", load(f"{d}/summary.json")),
                ("standard", s, None),
                ("random", f"{r}/retrain", load(f"{r}/summary.json"))]
        for arm, retrain, search in rows:
            t = load(f"{retrain}/summary.json")
            cost = "-" if search is None else f"{search['seconds']:.0f}" + (
                f" ({search['epochs_done']})" if arm == "random" else "")
            print(f"| {task} | {seed} | {arm} | {arch(retrain)} | {t['parameters']} ({t['d_model']}) "
                  f"| {cost} | {t['val']['token_accuracy']:.3f} / {t['val']['exact_match']:.3f} "
                  f"| {t['test']['token_accuracy']:.3f} / {t['test']['exact_match']:.3f} | {t['seconds']:.0f} |")
            mean.setdefault((task, arm), []).append((t['test']['token_accuracy'], t['test']['exact_match']))
print("\n| task | arm | seeds | mean test token acc | mean test exact match |")
print("|---|---|---|---|---|")
for (task, arm), v in mean.items():
    print(f"| {task} | {arm} | {len(v)} | {sum(a for a, _ in v) / len(v):.3f} | {sum(e for _, e in v) / len(v):.3f} |")
PY
