#!/usr/bin/env bash
# The RL search's overhead over the IMPALA-CNN baseline (issue 18): time per env step and peak
# resident memory of a PPO run with the supernet encoder, for joint first-order DARTS
# (RL-DARTS's default), GDAS (only the sampled op of each edge runs) and the partial-channel
# supernet (PC-DARTS, K = 4, joint), next to the baseline at the same width, PPO batch and
# micro-batch, at the quick preset's size and at paper size; and, at the quick size, the
# baseline and the joint search with asynchronous env stepping (`ppo.async_envs = on`: half of
# the envs step while the policy runs on the other half) against the same runs with it off
# (every other row). One run of this script measures
# everything; repetitions are interleaved (baseline, joint, gdas, pc4, baseline, ...) and each
# figure is the best of them, so that load from other jobs on the machine cancels out as far
# as it can.
#
#   QUICK_REPS=3 PAPER_REPS=1 nice -n 19 bash scripts/bench_search_overhead.sh
#
# steps/s = median over a run's iterations after the first (warm-up) of the per-iteration
# figure the run prints; peak = max RSS of the process (/usr/bin/time). rollout / update /
# search seconds come from the run's summary.json. Writes $OUT/table.md (default
# bench-out/search_overhead).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/rl-darts}
[ -x "$BIN" ] || BIN=target/debug/rl-darts
[ -x "$BIN" ] || { echo "build first: cargo build --release (or cargo build)" >&2; exit 1; }
QUICK_REPS=${QUICK_REPS:-3}
PAPER_REPS=${PAPER_REPS:-2}
SIZES=${SIZES:-"quick paper"}
QUICK_VARIANTS=${QUICK_VARIANTS:-"baseline baseline_async joint joint_async gdas pc4"}
PAPER_VARIANTS=${PAPER_VARIANTS:-"baseline joint gdas pc4"}
OUT=${OUT:-bench-out/search_overhead}
mkdir -p "$OUT"
PY=${PY:-python3}

# size -> iterations, then the --set flags of the networks and PPO (both sides share PPO's).
size_args() {
  case $1 in
    quick)
      NET_RL="--set encoder.params.supernet.channels=[4,8,8] --set encoder.params.supernet.normal_cells_per_stage=1 --set encoder.params.supernet.embedding=32"
      NET_IMPALA="--set encoder.params.channels=[4,8,8] --set encoder.params.embedding=32"
      PPO="--set ppo.num_envs=8 --set ppo.num_steps=32 --set ppo.num_minibatches=2 --set ppo.update_epochs=2 --set torch_threads=1 --set memory.micro_batch_size=128"
      ITERS=8; BATCH=256 ;;
    paper)
      NET_RL="--set encoder.params.supernet.channels=[16,32,32] --set encoder.params.supernet.normal_cells_per_stage=2 --set encoder.params.supernet.embedding=256"
      NET_IMPALA="--set encoder.params.channels=[16,32,32] --set encoder.params.embedding=256"
      # A smaller PPO batch than the paper's 64 x 256 (both sides the same), so that a run of
      # the full-channel supernet takes minutes on 2 cores; update_epochs stays at 3.
      PPO="--set ppo.num_envs=8 --set ppo.num_steps=64 --set ppo.num_minibatches=4 --set torch_threads=1 --set memory.micro_batch_size=128"
      ITERS=2; BATCH=512 ;;
    *) echo "unknown size $1 (quick | paper)" >&2; exit 1 ;;
  esac
  # Both encoders start from PyTorch's default init (the quick preset's); speed does not
  # depend on it.
  NET_RL="$NET_RL --set encoder.params.supernet.init=torch_default"
  NET_IMPALA="$NET_IMPALA --set encoder.params.init=torch_default"
}

run_one() { # size variant rep
  local size=$1 variant=$2 rep=$3 dir=$OUT/$1_$2_rep$3
  size_args "$size"
  local steps=$((ITERS * BATCH)) enc
  local async=off
  case $variant in *_async) async=on ;; esac
  case ${variant%_async} in
    baseline) enc="--encoder impala $NET_IMPALA" ;;
    joint) enc="--encoder rl_darts --strategy joint $NET_RL" ;;
    gdas) enc="--encoder rl_darts --strategy gdas $NET_RL" ;;
    pc4) enc="--encoder rl_darts --strategy joint $NET_RL --set encoder.params.supernet.partial_channels=4" ;;
    *) echo "unknown variant $variant" >&2; exit 1 ;;
  esac
  enc="$enc --set ppo.async_envs=$async"
  rm -rf "$dir"
  echo "$(date -u +%H:%M:%S) $size $variant rep $rep: $steps steps" >&2
  # shellcheck disable=SC2086 # the flag strings are word lists on purpose
  /usr/bin/time -f "maxrss_kb %M" "$BIN" train --env coinrun --device cpu --seed 1 \
    --total-steps "$steps" --run-dir "$dir" --quiet $enc $PPO \
    --set procgen.num_threads=1 > "$dir.log" 2>&1
}

reps_of() { case $1 in quick) echo "$QUICK_REPS" ;; *) echo "$PAPER_REPS" ;; esac; }
variants_of() { case $1 in quick) echo "$QUICK_VARIANTS" ;; *) echo "$PAPER_VARIANTS" ;; esac; }
for size in $SIZES; do
  for rep in $(seq 1 "$(reps_of "$size")"); do
    for variant in $(variants_of "$size"); do
      run_one "$size" "$variant" "$rep"
    done
  done
done

# One row per size and variant: the best repetition's steps/s, its peak, the time split.
$PY - "$OUT" "$QUICK_REPS" "$PAPER_REPS" "$SIZES" "$QUICK_VARIANTS" "$PAPER_VARIANTS" <<'EOF' | tee "$OUT/table.md"
import json, re, statistics, sys
out, sizes = sys.argv[1], sys.argv[4].split()
variants_of = {"quick": sys.argv[5].split(), "paper": sys.argv[6].split()}
reps_of = {"quick": int(sys.argv[2]), "paper": int(sys.argv[3])}
label = {"baseline": "IMPALA-CNN baseline", "joint": "joint first order (full channels)",
         "gdas": "GDAS (sampled ops only)", "pc4": "joint, partial channels K = 4"}
label.update({f"{k}_async": f"{v}, async envs" for k, v in list(label.items())})
def measure(size, variant, rep):
    base = f"{out}/{size}_{variant}_rep{rep}"
    log = open(base + ".log").read()
    sps = [float(x) for x in re.findall(r"\| SPS ([0-9.]+)", log)]
    rss = int(re.search(r"maxrss_kb (\d+)", log).group(1)) / 1024
    plan = re.search(r"^memory: (.*)$", log, re.M)
    s = json.load(open(base + "/summary.json"))
    return dict(sps=statistics.median(sps[1:] or sps), rss=rss,
                split=(s["rollout_secs"], s["update_secs"], s["search_secs"]),
                plan=plan.group(1) if plan else "micro-batch = minibatch, set by hand (memory.micro_batch_size)")
print("| size | encoder / search | steps/s | time per step vs baseline | peak MiB | peak vs baseline | rollout / update / search s |")
print("|---|---|---:|---:|---:|---:|---|")
plans = []
async_rows = []
for size in sizes:
    variants = variants_of[size]
    best = {}
    for v in variants:
        runs = [measure(size, v, r) for r in range(1, reps_of[size] + 1)]
        best[v] = dict(max(runs, key=lambda m: m["sps"]), rss=min(m["rss"] for m in runs),
                       all=[round(m["sps"], 1) for m in runs])
        plans.append(f"{size} {v}: {best[v]['plan']}")
    b = best.get("baseline")
    for v in variants:
        m = best[v]
        ratio = f"{b['sps'] / m['sps']:.2f}x" if b else "-"
        mem = f"{m['rss'] / b['rss']:.2f}x" if b else "-"
        r, u, s = m["split"]
        print(f"| {size} | {label[v]} | {m['sps']:.1f} (reps {m['all']}) | {ratio} | {m['rss']:.0f} | {mem} | {r:.0f} / {u:.0f} / {s:.0f} |")
        sync = v.removesuffix("_async")
        if v.endswith("_async") and sync in best:
            runs = [(measure(size, sync, r), measure(size, v, r)) for r in range(1, reps_of[size] + 1)]
            gains = [round(a["sps"] / s_["sps"], 3) for s_, a in runs]
            async_rows.append(f"| {size} | {label[sync]} | {best[sync]['sps']:.1f} | {m['sps']:.1f} | "
                              f"{m['sps'] / best[sync]['sps']:.3f}x (per rep {gains}) | "
                              f"{best[sync]['split'][0]:.1f} -> {m['split'][0]:.1f} |")
print()
if async_rows:
    print("| size | run | steps/s sync | steps/s async | async / sync | rollout s sync -> async |")
    print("|---|---|---:|---:|---:|---|")
    for row in async_rows:
        print(row)
    print()
print("Micro-batches (the same on every side of a size):")
for p in plans:
    print(f"- {p}")
EOF
