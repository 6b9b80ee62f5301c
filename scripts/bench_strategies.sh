#!/usr/bin/env bash
# Time and peak memory of one search iteration of every strategy against DARTS first order, on
# the same supernet and batches: the DARTS CIFAR supernet (8 cells, C = 16, 4 nodes, batch 64
# of 3x32x32), CPU. Each strategy runs with its default parameters (iDARTS T = 4, K = 2; SNAS
# and GDAS with their temperature schedules; DARTS-PRIME with its dynamic schedule, so some
# iterations have no alpha step: the table gives the alpha steps per iteration) through
# examples/bench_darts_search.rs, which drives the strategy exactly as `rl-darts search` does.
# One process per (strategy, repeat), so peak RSS (/usr/bin/time) covers that strategy alone.
# Writes bench-out/strategies.md and the raw JSON under bench-out/strategies/.
#
#   ITERS=5 WARMUP=1 REPEATS=2 THREADS=2 bash scripts/bench_strategies.sh
#
# Smaller supernets only to smoke-test the script: C=8 LAYERS=5 BATCH=16 ITERS=2 ...
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-5}; WARMUP=${WARMUP:-1}; REPEATS=${REPEATS:-2}; THREADS=${THREADS:-$(nproc)}
C=${C:-16}; LAYERS=${LAYERS:-8}; BATCH=${BATCH:-64}; IMAGE=${IMAGE:-32}
STRATEGIES=${STRATEGIES:-"darts:first darts:second idarts gdas snas unas darts_prime joint"}
PY=.venv/bin/python
OUT=bench-out/strategies
mkdir -p "$OUT"
rm -f "$OUT"/*.json

cargo build --release --example bench_darts_search
BIN=target/release/examples/bench_darts_search
common=(--iters "$ITERS" --warmup "$WARMUP" --batch "$BATCH" --c "$C" --layers "$LAYERS" --image "$IMAGE" --threads "$THREADS")

for rep in $(seq 1 "$REPEATS"); do
  for spec in $STRATEGIES; do
    strategy=${spec%%:*}; order=first
    [ "$spec" != "$strategy" ] && order=${spec#*:}
    name="$strategy-$order-$rep"
    echo "repeat $rep/$REPEATS: $strategy ($order) ..."
    /usr/bin/time -v -o "$OUT/$name.time" "$BIN" --strategy "$strategy" --order "$order" "${common[@]}" \
      > "$OUT/$name.out" 2> "$OUT/$name.log"
    kib=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$OUT/$name.time")
    tail -n 1 "$OUT/$name.out" | $PY -c "
import json, sys
d = json.loads(sys.stdin.read()); d['time_max_rss_mib'] = $kib / 1024
print(json.dumps(d))" > "$OUT/$name.json"
  done
done

$PY - "$OUT" "$ITERS" "$WARMUP" "$REPEATS" "$THREADS" "$C" "$LAYERS" "$BATCH" "$IMAGE" <<'PYEOF' > bench-out/strategies.md
import glob, json, os, statistics, sys
out, iters, warmup, repeats, threads, c, layers, batch, image = sys.argv[1:]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*.json")))]
groups = {}
for r in runs:
    label = r["strategy"] + (f" ({r['order']} order)" if r["strategy"] == "darts" else "")
    groups.setdefault(label, []).append(r)
def summary(rs):
    return (statistics.median(r["sec_per_iter_median"] for r in rs),
            max(r["time_max_rss_mib"] for r in rs),
            statistics.mean(r["arch_steps_per_iter"] for r in rs))
base_t, base_m, _ = summary(groups["darts (first order)"])
print(f"DARTS CIFAR supernet ({layers} cells, C = {c}, 4 nodes, batch {batch}, 3x{image}x{image}), CPU, "
      f"{threads} threads, {iters} timed iterations after {warmup} warm-up per process, {repeats} "
      f"process(es) per strategy (median of the per-process medians; peak RSS: max over processes).")
print()
print("| strategy | s/iter | vs DARTS 1st order | peak RSS MiB | vs DARTS 1st order | alpha steps/iter |")
print("|---|---:|---:|---:|---:|---:|")
for label, rs in groups.items():
    t, m, a = summary(rs)
    print(f"| {label} | {t:.3f} | {t / base_t:.2f}x | {m:.0f} | {m / base_m:.2f}x | {a:.2f} |")
PYEOF
echo "machine: $(nproc --all) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%F), load $(cut -d' ' -f1-3 /proc/loadavg)"
cat bench-out/strategies.md
