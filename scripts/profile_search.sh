#!/usr/bin/env bash
# Where the search's time goes (issue 18): `perf record` of examples/profile_search.rs (forward
# and backward of one PPO micro-batch through the IMPALA-CNN baseline and the RL-DARTS
# supernet: joint, partial channels K = 4, GDAS), one process per encoder, then the samples
# grouped by kernel kind (conv, the op-weight products, sums, copies, pools, ...) with
# scripts/profile_classify.py. Writes bench-out/profile/{VARIANT.data,VARIANT.txt,table.md}.
#   SIZE=paper STEPS=30 VARIANTS="baseline joint pc4 gdas" bash scripts/profile_search.sh
#   (BIN=target/debug/examples/profile_search to profile the optimised dev build)
# perf needs kernel.perf_event_paranoid <= 2 (the default on Debian) and the `linux-perf`
# Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-paper}; STEPS=${STEPS:-30}; VARIANTS=${VARIANTS:-"baseline joint pc4 gdas"}
OUT=bench-out/profile
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
# BIN: another build of the example (e.g. the optimised dev build, target/debug/examples/).
BIN=${BIN:-target/release/examples/profile_search}
[ -x "$BIN" ] || cargo build --release --example profile_search
{
  grep -m1 'model name' /proc/cpuinfo
  echo "cores: $(nproc); load at start: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%F %H:%M UTC'); commit $(git rev-parse --short HEAD)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"
for v in $VARIANTS; do
  echo "perf record: $v ($SIZE, $STEPS steps)..."
  perf record -q -F 499 -o "$OUT/$v.data" "$BIN" --size "$SIZE" --variant "$v" \
    --steps "$STEPS" > "$OUT/$v.json"
  perf report -i "$OUT/$v.data" --stdio --no-children --sort symbol 2>/dev/null > "$OUT/$v.txt"
done
python3 scripts/profile_classify.py $(for v in $VARIANTS; do echo "$OUT/$v.txt"; done) \
  | tee "$OUT/table.md"
