#!/usr/bin/env bash
# Plain vs per-layer activation checkpointing vs reversible transformer supernet (Zhao et al.
# 2021): activation memory and time of one search iteration (DARTS first-order alpha step +
# weight step) at 6, 12 and 24 layers, then the widest model each mode fits in a memory budget.
# Every case runs in its own process.
#   scripts/bench_transformer.sh            # writes runs/bench_transformer.jsonl, prints tables
# The depth table counts everything a search iteration allocates beyond the built model
# (activations and the weight gradients); the width probe ties the layers' weights so that it
# counts activations (and one layer's gradients) only.
# Knobs: D_MODEL (64), BATCH (16), LENGTH (32), BUDGET_MB (100), WIDTH_LAYERS (12),
# DEPTHS ("6 12 24"), WIDTHS ("64 128 256 384 512"), MODES ("plain checkpointed reversible").
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
MODES=${MODES:-plain checkpointed reversible}
for layers in ${DEPTHS:-6 12 24}; do
  for mode in $MODES; do
    "$BIN" --mode $mode --layers $layers --d-model "$D_MODEL" --batch "$BATCH" --length "$LENGTH" \
      --iterations 3 | tee -a "$OUT"
  done
done
for d in ${WIDTHS:-64 128 256 384 512}; do
  for mode in $MODES; do
    "$BIN" --mode $mode --layers "$WIDTH_LAYERS" --d-model $d --batch 8 --length "$LENGTH" \
      --tie-layers --iterations 1 | sed 's/^{/{"width_probe":true,/' | tee -a "$OUT"
  done
done
python3 - "$OUT" "$BUDGET_MB" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
budget = float(sys.argv[2])
mb = lambda b: b / 2**20
modes = [m for m in ("plain", "checkpointed", "reversible") if any(r["case"]["mode"] == m for r in rows)]
def find(probe, key, value, mode):
    return next((r["result"] for r in rows if bool(r.get("width_probe")) == probe
                 and r["case"][key] == value and r["case"]["mode"] == mode), None)
depth = [r for r in rows if not r.get("width_probe")]
print("\n| layers | params | " + " | ".join(f"{m} MB" for m in modes) + " | "
      + " | ".join(f"plain / {m}" for m in modes[1:]) + " | "
      + " | ".join(f"{m} s/iter" for m in modes) + " | "
      + " | ".join(f"{m} / plain time" for m in modes[1:]) + " |")
print("|---" * (2 + 4 * len(modes) - 2) + "|")
for layers in sorted({r["case"]["layers"] for r in depth}):
    res = {m: find(False, "layers", layers, m) for m in modes}
    if any(v is None for v in res.values()):
        continue
    p = res["plain"]
    cells = [str(layers), f"{p['parameters'] / 1e6:.2f}M"]
    cells += [f"{mb(res[m]['activation_bytes']):.1f}" for m in modes]
    cells += [f"{p['activation_bytes'] / max(res[m]['activation_bytes'], 1):.1f}x" for m in modes[1:]]
    cells += [f"{res[m]['seconds_per_iteration']:.2f}" for m in modes]
    cells += [f"{res[m]['seconds_per_iteration'] / p['seconds_per_iteration']:.2f}x" for m in modes[1:]]
    print("| " + " | ".join(cells) + " |")
probes = [r for r in rows if r.get("width_probe")]
if probes:
    print(f"\n| d_model | " + " | ".join(f"{m} MB" for m in modes) + " | "
          + " | ".join(f"{m} s/iter" for m in modes) + " |")
    print("|---" * (1 + 2 * len(modes)) + "|")
    widest = {}
    for d in sorted({r["case"]["d_model"] for r in probes}):
        res = {m: find(True, "d_model", d, m) for m in modes}
        for m, v in res.items():
            if v is not None and mb(v["activation_bytes"]) <= budget:
                widest[m] = max(widest.get(m, 0), d)
        cells = [str(d)]
        cells += [f"{mb(v['activation_bytes']):.1f}" if v else "-" for v in res.values()]
        cells += [f"{v['seconds_per_iteration']:.2f}" if v else "-" for v in res.values()]
        print("| " + " | ".join(cells) + " |")
    print(f"\nwidest within {budget:.0f} MB: " + ", ".join(f"{m} d_model {widest.get(m, 'none tried')}" for m in modes))
PY
