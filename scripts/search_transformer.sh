#!/usr/bin/env bash
# Search results of the transformer space (Zhao et al. 2021) on the project's tasks: for each
# task and seed, DARTS (reversible supernet) -> retrain the derived transformer; the standard
# transformer of the same width and depth retrained with the same budget; random search from
# scratch (4 candidates x 2 retraining epochs each) -> retrain its best. Prints one line per run.
#   scripts/search_transformer.sh                 # TASKS="addition sort" SEEDS="0"
# SETS adds --set overrides to every run (smaller budgets), e.g.
#   SETS="search.epochs=3 search.iterations_per_epoch=40 train_arch.epochs=4" scripts/search_transformer.sh
# RANDOM_CANDIDATES (4) and RANDOM_EPOCHS (2) size the random search from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"addition sort"}
SEEDS=${SEEDS:-"0"}
cargo build --release >/dev/null
BIN=target/release/rl-darts
OUT=${OUT:-runs/search_transformer}
EXTRA=()
for kv in ${SETS:-}; do EXTRA+=(--set "$kv"); done
RC=${RANDOM_CANDIDATES:-4}
RE=${RANDOM_EPOCHS:-2}
mkdir -p "$OUT"
for task in $TASKS; do
  cfg=configs/seq-$task-darts.toml
  for seed in $SEEDS; do
    d=$OUT/$task-darts-$seed
    "$BIN" search --config "$cfg" --set seed=$seed "${EXTRA[@]}" --run-dir "$d" > "$d.log"
    "$BIN" train-arch --genotype "$d/genotype.json" --config "$cfg" --set seed=$seed "${EXTRA[@]}" --out "$d/retrain" >> "$d.log"
    s=$OUT/$task-standard-$seed
    "$BIN" train-arch --genotype standard --config "$cfg" --set seed=$seed "${EXTRA[@]}" --out "$s" > "$s.log"
    r=$OUT/$task-random-$seed
    "$BIN" search --config "$cfg" --set seed=$seed --set search.strategy.kind=random \
      --set search.strategy.params.num_candidates=$RC --set search.strategy.params.epochs_per_candidate=$RE \
      "${EXTRA[@]}" --run-dir "$r" > "$r.log"
    "$BIN" train-arch --genotype "$r/genotype.json" --config "$cfg" --set seed=$seed "${EXTRA[@]}" --out "$r/retrain" >> "$r.log"
    for run in "$d/retrain" "$s" "$r/retrain"; do
      python3 -c "import json,sys; s=json.load(open('$run/summary.json')); print('$task seed $seed', '$run', 'params', s['parameters'], 'test token acc %.4f exact %.4f' % (s['test']['token_accuracy'], s['test']['exact_match']), '%.0fs' % s['seconds'])"
    done
    grep -h 'encoder layer\|decoder layer' "$d.log" "$r.log" || true
  done
done
