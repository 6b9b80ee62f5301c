#!/usr/bin/env bash
# Time per search iteration (DARTS first-order alpha step + SGD weight step), reversible vs
# plain transformer supernet, robust to a shared machine's load: both networks in one process,
# repetitions alternating plain, reversible, plain, ... (a burst of load falls on both), each
# mode's median and minimum, and the per-pair ratios' spread; plus each mode's parts (alpha
# step, weight step, forward without graph, loss-and-gradients pass).
#   scripts/bench_transformer_time.sh     # writes runs/bench_transformer_time.jsonl, prints a table
# Knobs: DEPTHS ("6 12 24"), REPS (9), ITERS (2), D_MODEL (64), BATCH (16), LENGTH (32).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_transformer_time.jsonl}
mkdir -p "$(dirname "$OUT")"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo build --release --example bench_transformer_time >/dev/null
BIN=target/release/examples/bench_transformer_time
: > "$OUT"
echo "# $(lscpu | grep 'Model name' | sed 's/ \+/ /g'); $(date -u +%F); OMP_NUM_THREADS=$OMP_NUM_THREADS; load $(cut -d' ' -f1-3 /proc/loadavg)"
for layers in ${DEPTHS:-6 12 24}; do
  "$BIN" --layers "$layers" --d-model "${D_MODEL:-64}" --batch "${BATCH:-16}" --length "${LENGTH:-32}" \
    --repetitions "${REPS:-9}" --iterations "${ITERS:-2}" | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("\n| layers | plain s/iter (median, min) | reversible s/iter (median, min) | ratio of medians | ratio of mins | per-pair ratio median [min, max] | alpha step plain / rev | weight step plain / rev | rev forward (no graph) / loss-and-grads | plain loss-and-grads |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    c, x = r["case"], r["result"]
    p, v, pp, rp, pr = x["plain"], x["reversible"], x["plain_parts"], x["reversible_parts"], x["pair_ratios"]
    print(f"| {c['layers']} | {p['median']:.3f}, {p['min']:.3f} | {v['median']:.3f}, {v['min']:.3f} | "
          f"{x['ratio_of_medians']:.2f}x | {x['ratio_of_mins']:.2f}x | {pr['median']:.2f}x [{pr['min']:.2f}, {pr['max']:.2f}] | "
          f"{pp['alpha_step']:.3f} / {rp['alpha_step']:.3f} | {pp['weight_step']:.3f} / {rp['weight_step']:.3f} | "
          f"{rp['forward_no_graph']:.3f} / {rp['loss_and_grads']:.3f} | {pp['loss_and_grads']:.3f} |")
PY
