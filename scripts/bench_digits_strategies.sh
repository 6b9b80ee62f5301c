#!/usr/bin/env bash
# Every strategy's digits preset end to end: `rl-darts search --config configs/digits-X.toml`,
# then `rl-darts train-arch` of the derived genotype with the same preset, and the test
# accuracy of the retrained cell on the 359 held-out digits (seeded split). Also the random
# baseline (the DARTS preset with search.strategy.kind = random). Writes bench-out/digits.md
# (and each run under bench-out/digits/).
#
#   PRESETS="darts idarts gdas snas unas darts-prime random" bash scripts/bench_digits_strategies.sh
#
# SETS="torch_threads=1" adds --set overrides to both commands. The table lists every preset
# whose logs are under bench-out/digits/, so presets can be run in several invocations.
set -euo pipefail
cd "$(dirname "$0")/.."
ALL="darts idarts gdas snas unas darts-prime random"
PRESETS=${PRESETS:-$ALL}
sets=(); for kv in ${SETS:-}; do sets+=(--set "$kv"); done
OUT=bench-out/digits
mkdir -p "$OUT"
cargo build --release
BIN=target/release/rl-darts
for name in $PRESETS; do
  config=configs/digits-$name.toml; extra=()
  if [ "$name" = random ]; then config=configs/digits-darts.toml; extra=(--set search.strategy.kind=random); fi
  rm -rf "$OUT/$name" "$OUT/$name.search.log" "$OUT/$name.retrain.log"
  echo "== $name: search ($config) =="
  $BIN search --config "$config" "${extra[@]}" "${sets[@]}" --run-dir "$OUT/$name/search" -q | tee "$OUT/$name.search.log"
  echo "== $name: train-arch =="
  $BIN train-arch --genotype "$OUT/$name/search/genotype.json" --config "$config" "${sets[@]}" --out "$OUT/$name/retrain" -q \
    | tee "$OUT/$name.retrain.log"
done

rows=()
for name in $ALL; do
  [ -f "$OUT/$name.retrain.log" ] || continue
  search_line=$(grep -E "epochs in [0-9]+s" "$OUT/$name.search.log" | tail -n 1)
  retrain_line=$(grep -E "test accuracy" "$OUT/$name.retrain.log" | tail -n 1)
  search_s=$(sed -n 's/.*epochs in \([0-9]*\)s.*/\1/p' <<< "$search_line")
  val=$(sed -n 's/.*validation accuracy \([0-9.]*\).*/\1/p' <<< "$search_line")
  params=$(sed -n 's/^\([0-9]*\) parameters.*/\1/p' <<< "$retrain_line")
  retrain_s=$(sed -n 's/.*epochs in \([0-9]*\)s.*/\1/p' <<< "$retrain_line")
  test_acc=$(sed -n 's/.*test accuracy \([0-9.]*\).*/\1/p' <<< "$retrain_line")
  genotype=$(cat "$OUT/$name/search/genotype.txt")
  rows+=("| $name | $search_s | $val | $params | $retrain_s | $test_acc | \`$genotype\` |")
done
{
  echo "Digits (scikit-learn 8x8, 1438 train / 359 test), each preset's search then train-arch of its genotype,"
  echo "$(nproc --all) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%F)."
  echo
  echo "| strategy | search s | supernet val acc | retrained params | retrain s | test acc | genotype |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} > bench-out/digits.md
cat bench-out/digits.md
