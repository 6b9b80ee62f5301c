#!/usr/bin/env bash
# One DARTS search iteration (alpha step on a search batch + weight step on a train batch) on
# the DARTS CIFAR supernet (8 cells, C = 16, 4 nodes, batch 64 of 3x32x32), CPU, first and
# second order: rl-darts (examples/bench_darts_search.rs, the library code `rl-darts search`
# runs) against NNI 3.0's DARTS CIFAR space made differentiable the way NNI's DARTS strategy
# does it (scripts/bench_darts_nni.py says exactly what it times). Every measurement is its own
# process, so peak memory (max RSS, from /usr/bin/time -v, with the process's own VmHWM /
# ru_maxrss as a cross-check) covers one implementation and one order only. Both sides use the
# same thread count; runs alternate between the implementations. Writes
# bench-out/darts_search.md (and the raw JSON and logs under bench-out/darts_search/).
#
#   ITERS=10 WARMUP=2 REPEATS=3 THREADS=2 bash scripts/bench_darts_search.sh
#
# PROFILE=dev builds the example with the dev profile (a quick check of the script; the
# figures to report come from the default release build).
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-10}; WARMUP=${WARMUP:-2}; REPEATS=${REPEATS:-3}; THREADS=${THREADS:-$(nproc)}
PROFILE=${PROFILE:-release}
ORDERS=${ORDERS:-"first second"}
# The issue's configuration; smaller values only to smoke-test the script.
C=${C:-16}; LAYERS=${LAYERS:-8}; BATCH=${BATCH:-64}; IMAGE=${IMAGE:-32}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
PY=.venv/bin/python
OUT=bench-out/darts_search
mkdir -p "$OUT"

if [ "$PROFILE" = release ]; then
  cargo build --release --example bench_darts_search
  BIN=target/release/examples/bench_darts_search
else
  cargo build --example bench_darts_search
  BIN=target/debug/examples/bench_darts_search
fi
if ! $PY -c "import nni, pytorch_lightning" 2>/dev/null; then
  # NNI 3.0 imports pkg_resources (removed in setuptools 81) and predates Lightning 2.1. The
  # .venv's torch is the libtorch rl-darts links against, and numpy<2 is what gym3 needs: pin
  # both, or pip's resolver swaps them for other versions (it once picked torch 2.12.1, which
  # broke every rl-darts binary built against 2.13.0).
  torch_pin=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
  $PY -m pip install -q nni==3.0 'pytorch-lightning<2.1' 'setuptools<81' "torch==$torch_pin" 'numpy<2'
fi

# run NAME CMD...: one process under /usr/bin/time; its JSON line goes to $OUT/NAME.json and the
# max RSS /usr/bin/time saw is added to it as "time_max_rss_mib".
run() {
  local name=$1; shift
  /usr/bin/time -v -o "$OUT/$name.time" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
  local kib
  kib=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$OUT/$name.time")
  tail -n 1 "$OUT/$name.out" | $PY -c "
import json, sys
d = json.loads(sys.stdin.read()); d['time_max_rss_mib'] = $kib / 1024
print(json.dumps(d))" > "$OUT/$name.json"
}

common=(--iters "$ITERS" --warmup "$WARMUP" --batch "$BATCH" --c "$C" --layers "$LAYERS" --image "$IMAGE" --threads "$THREADS")
rm -f "$OUT"/*.json
for rep in $(seq 1 "$REPEATS"); do
  for order in $ORDERS; do
    echo "repeat $rep/$REPEATS, $order order: rl-darts ..."
    run "rl-darts-$order-$rep" "$BIN" --order "$order" "${common[@]}"
    echo "repeat $rep/$REPEATS, $order order: NNI ..."
    run "nni-$order-$rep" env PYTHONWARNINGS=ignore $PY scripts/bench_darts_nni.py --order "$order" "${common[@]}"
  done
done

$PY - "$OUT" "$ITERS" "$WARMUP" "$REPEATS" "$THREADS" "$PROFILE" "$C" "$LAYERS" "$BATCH" "$IMAGE" <<'EOF' > bench-out/darts_search.md
import glob, json, os, statistics, sys
out, iters, warmup, repeats, threads, profile, c, layers, batch, image = sys.argv[1:]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "*.json")))]
def pick(impl, order, key):
    return [r[key] for r in runs if r["impl"] == impl and r["order"] == order]
rows, ratios = [], []
for order in ("first", "second"):
    cells = {}
    for impl in ("rl-darts", "nni"):
        t = pick(impl, order, "sec_per_iter_median")
        if not t:
            continue
        m = pick(impl, order, "time_max_rss_mib")
        own = pick(impl, order, "peak_rss_mib")
        cells[impl] = (statistics.median(t), max(m))
        rows.append(f"| {impl} | {order} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} "
                    f"| {max(m):.0f} | {max(own):.0f} |")
    if len(cells) == 2:
        (tr, mr), (tn, mn) = cells["rl-darts"], cells["nni"]
        ratios.append(f"- {order} order: rl-darts is {tn / tr:.2f}x faster than NNI per iteration, "
                      f"peak memory {mr:.0f} vs {mn:.0f} MiB ({mr / mn:.2f}x).")
nni_meta = next((r for r in runs if r["impl"] == "nni"), {})
print(f"DARTS CIFAR supernet ({layers} cells, C = {c}, 4 nodes, batch {batch}, 3x{image}x{image}), CPU, {threads} threads, "
      f"{iters} timed iterations after {warmup} warm-up per process, {repeats} process(es) per cell "
      f"(median of the per-process medians; min and max of them shown). Build profile: {profile}.")
print()
print("| implementation | order | s/iter (median) | min | max | peak RSS MiB (/usr/bin/time) | peak RSS MiB (own) |")
print("|---|---|---:|---:|---:|---:|---:|")
print("\n".join(rows))
print()
print("\n".join(ratios))
print()
if nni_meta:
    print(f"NNI {nni_meta.get('nni_version')} (PyTorch {nni_meta.get('torch_version')}): "
          f"{nni_meta.get('what', '')}")
rl = next((r for r in runs if r["impl"] == "rl-darts"), {})
print(f"Parameters: rl-darts {rl.get('parameters')} weights, NNI {nni_meta.get('parameters')} weights + "
      f"{nni_meta.get('alphas')} alphas.")
EOF
echo "machine: $(nproc --all) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%F), load $(cut -d' ' -f1-3 /proc/loadavg)"
cat bench-out/darts_search.md
