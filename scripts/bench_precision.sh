#!/usr/bin/env bash
# Precision x layout on this machine (the `precision` and `layout` keys):
#  1. one PPO minibatch update of the IMPALA-CNN agent (2048 frames of 64x64: forward, loss,
#     backward, clip, Adam), rl-darts (examples/bench_precision.rs, the library's ppo_update)
#     against a PyTorch peer written from the same definition (scripts/bench_precision_torch.py,
#     torch.autocast("cpu", bfloat16) for bf16, as CleanRL's ppo_procgen.py would run it);
#  2. one DARTS search iteration, first order (examples/bench_darts_search.rs, paper supernet
#     C = 16, 8 cells, batch 64 of 32x32);
#  3. `rl-darts train --encoder impala` for ITERS PPO iterations (64 envs x 256 steps) in the
#     settings of TRAIN_SETTINGS (default fp32 / NCHW and `auto`, which records its probe in
#     compute.json), for env steps/s;
# peak resident memory (VmHWM / ru_maxrss) of each process.
# Settings are interleaved within each repetition and every figure is the minimum over
# repetitions, so that load from other jobs on a shared machine hits all settings alike.
# Runs at nice 19. Writes bench-out/precision/{*.jsonl,table.md}.
#   REPS=2 ITERS=1 bash scripts/bench_precision.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-2}; ITERS=${ITERS:-1}; PY_STEPS=${PY_STEPS:-1}; RS_STEPS=${RS_STEPS:-2}
DARTS_ITERS=${DARTS_ITERS:-2}; SKIP_TRAIN=${SKIP_TRAIN:-0}; SKIP_DARTS=${SKIP_DARTS:-0}
OUT=bench-out/precision
mkdir -p "$OUT"
[ -x target/release/rl-darts ] && [ -x target/release/examples/bench_precision ] \
  || cargo build --release --bin rl-darts --example bench_precision --example bench_darts_search
NICE="nice -n 19"
SETTINGS=${SETTINGS:-"fp32:nchw fp32:channels_last bf16:nchw bf16:channels_last"}
{
  grep -m1 'model name' /proc/cpuinfo
  echo "bf16/AMX flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E 'amx|bf16|vnni' | tr '\n' ' ')"
  echo "cores: $(nproc); load at start: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%F %H:%M UTC'); commit $(git rev-parse --short HEAD)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

for rep in $(seq 1 "$REPS"); do
  for s in $SETTINGS; do
    p=${s%%:*}; l=${s##*:}
    echo "rep $rep: $p / $l: rl-darts PPO minibatch..."
    $NICE target/release/examples/bench_precision --precision "$p" --layout "$l" \
      --steps "$RS_STEPS" >> "$OUT/ppo_minibatch.jsonl"
    echo "rep $rep: $p / $l: PyTorch peer..."
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 $NICE .venv/bin/python \
      scripts/bench_precision_torch.py --precision "$p" --layout "$l" --steps "$PY_STEPS" \
      >> "$OUT/torch_minibatch.jsonl"
    if [ "$SKIP_DARTS" = 0 ]; then
      echo "rep $rep: $p / $l: DARTS search iteration..."
      $NICE target/release/examples/bench_darts_search --order first --iters "$DARTS_ITERS" \
        --warmup 1 --threads "$(nproc)" --precision "$p" --layout "$l" >> "$OUT/darts.jsonl"
    fi
  done
done

if [ "$SKIP_TRAIN" = 0 ]; then
  STEPS=$((ITERS * 64 * 256))
  for s in ${TRAIN_SETTINGS:-fp32:nchw auto:auto}; do
    p=${s%%:*}; l=${s##*:}
    dir="$OUT/train-$p-$l"; rm -rf "$dir"
    echo "train --encoder impala, $p / $l, $STEPS steps..."
    /usr/bin/time -f '%M' -o "$dir.maxrss" $NICE target/release/rl-darts train --env coinrun \
      --encoder impala --device cpu --total-steps "$STEPS" --quiet --precision "$p" \
      --layout "$l" --set procgen.num_levels=0 --run-dir "$dir" > "$dir.log" 2>&1
  done
fi

.venv/bin/python - "$OUT" <<'EOF'
import json, sys, os, glob
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
def best(rows, key="seconds"):
    table = {}
    for r in rows:
        k = (r["precision"], r["layout"])
        t, m = table.get(k, (float("inf"), 0))
        table[k] = (min(t, min(r[key])), max(m, r.get("peak_rss_mib") or 0))
    return table
ours, peer, darts = best(load("ppo_minibatch.jsonl")), best(load("torch_minibatch.jsonl")), best(load("darts.jsonl"))
lines = [open(os.path.join(out, "machine.txt")).read().strip(), "",
         "| precision | layout | rl-darts s / 2048-frame minibatch | peak MiB | PyTorch peer s | peak MiB | DARTS 1st-order s / iter | peak MiB | PPO env steps/s | peak MiB |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
fmt = lambda d, k: ("%.2f" % d[k][0], "%d" % d[k][1]) if k in d else ("-", "-")
for p in ["fp32", "bf16"]:
    for l in ["nchw", "channels_last"]:
        k = (p, l)
        sps, rss = "-", "-"
        summ = os.path.join(out, f"train-{p}-{l}", "summary.json")
        summary = json.load(open(summ)) if os.path.exists(summ) else {}
        if summary.get("iterations", 0) > 0 and not summary.get("interrupted"):
            sps = "%.1f" % summary["steps_per_sec"]
            rss = "%d" % (int(open(os.path.join(out, f"train-{p}-{l}.maxrss")).read().split()[-1]) // 1024)
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (p, l, *fmt(ours, k), *fmt(peer, k), *fmt(darts, k), sps, rss))
auto = os.path.join(out, "train-auto-auto")
if os.path.exists(os.path.join(auto, "compute.json")):
    c = json.load(open(os.path.join(auto, "compute.json")))
    s = json.load(open(os.path.join(auto, "summary.json")))
    lines += ["", "auto chose %s / %s at %.1f env steps/s: %s" % (c["precision"], c["layout"], s["steps_per_sec"], c["reason"])]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "table.md"), "w").write(text)
print(text)
EOF
