#!/usr/bin/env bash
# Plain vs reversible transformer supernet (Zhao et al. 2021): activation memory and time of
# one search iteration (DARTS first-order alpha step + weight step) at 6, 12 and 24 layers,
# then the widest model each mode fits in a memory budget. Every case runs in its own process.
#   scripts/bench_transformer.sh            # writes runs/bench_transformer.jsonl, prints tables
# The depth table counts everything a search iteration allocates beyond the built model
# (activations and the weight gradients); the width probe ties the layers' weights so that it
# counts activations (and one layer's gradients) only.
# Knobs: D_MODEL (64), BATCH (16), LENGTH (32), BUDGET_MB (100), WIDTH_LAYERS (12).
set -euo pipefail
cd "$(dirname "$0")/.."
D_MODEL=${D_MODEL:-64}
BATCH=${BATCH:-16}
LENGTH=${LENGTH:-32}
BUDGET_MB=${BUDGET_MB:-100}
WIDTH_LAYERS=${WIDTH_LAYERS:-12}
OUT=${OUT:-runs/bench_transformer.jsonl}
mkdir -p "$(dirname "$OUT")"
export MALLOC_MMAP_THRESHOLD_=4096 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo build --release --example bench_transformer >/dev/null
BIN=target/release/examples/bench_transformer
: > "$OUT"
echo "# $(lscpu | grep 'Model name' | sed 's/ \+/ /g'); $(date -u +%F); OMP_NUM_THREADS=$OMP_NUM_THREADS"
for layers in ${DEPTHS:-6 12 24}; do
  for mode in plain reversible; do
    "$BIN" --mode $mode --layers $layers --d-model "$D_MODEL" --batch "$BATCH" --length "$LENGTH" \
      --iterations 3 | tee -a "$OUT"
  done
done
for d in ${WIDTHS:-64 128 256 384}; do
  for mode in plain reversible; do
    "$BIN" --mode $mode --layers "$WIDTH_LAYERS" --d-model $d --batch 8 --length "$LENGTH" \
      --tie-layers --iterations 1 | sed 's/^{/{"width_probe":true,/' | tee -a "$OUT"
  done
done
python3 - "$OUT" "$BUDGET_MB" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
budget = float(sys.argv[2])
mb = lambda b: b / 2**20
print("\n| layers | plain MB | reversible MB | plain/rev | plain s/it | rev s/it | rev/plain time |")
print("|---|---|---|---|---|---|---|")
depth = [r for r in rows if not r.get("width_probe")]
for layers in sorted({r["case"]["layers"] for r in depth}):
    p = next(r["result"] for r in depth if r["case"]["layers"] == layers and r["case"]["mode"] == "plain")
    v = next(r["result"] for r in depth if r["case"]["layers"] == layers and r["case"]["mode"] == "reversible")
    print(f"| {layers} | {mb(p['activation_bytes']):.1f} | {mb(v['activation_bytes']):.1f} | "
          f"{p['activation_bytes'] / max(v['activation_bytes'], 1):.1f}x | {p['seconds_per_iteration']:.3f} | "
          f"{v['seconds_per_iteration']:.3f} | {v['seconds_per_iteration'] / p['seconds_per_iteration']:.2f}x |")
print(f"\n| d_model | plain MB | reversible MB | (budget {budget:.0f} MB) |")
print("|---|---|---|---|")
widest = {}
for r in [r for r in rows if r.get("width_probe")]:
    c, res = r["case"], r["result"]
    if mb(res["activation_bytes"]) <= budget:
        widest[c["mode"]] = max(widest.get(c["mode"], 0), c["d_model"])
for d in sorted({r["case"]["d_model"] for r in rows if r.get("width_probe")}):
    cell = lambda m: next((f"{mb(r['result']['activation_bytes']):.1f}" for r in rows
                          if r.get("width_probe") and r["case"]["d_model"] == d and r["case"]["mode"] == m), "-")
    print(f"| {d} | {cell('plain')} | {cell('reversible')} | |")
print(f"\nwidest within {budget:.0f} MB of activations: plain d_model {widest.get('plain')}, reversible d_model {widest.get('reversible')}")
PY
