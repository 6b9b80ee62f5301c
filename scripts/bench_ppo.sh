#!/usr/bin/env bash
# PPO throughput: `rl-darts train --encoder impala` against CleanRL's ppo_procgen.py
# (cleanrl==1.2.0) with the same configuration (Procgen paper defaults: 64 envs x 256 steps,
# 3 epochs, 8 minibatches; coinrun easy, all levels as CleanRL uses), on CPU, one after the
# other in one session. Writes bench-out/ppo.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-2}; ENV=${ENV:-coinrun}
STEPS=$((ITERS * 64 * 256))
BIN=target/release/rl-darts
[ -x "$BIN" ] || cargo build --release
# CleanRL 1.2.0 declares python<3.11 but runs on 3.11 with gym 0.23.1 (REFERENCE.md sec. 2).
if ! .venv/bin/python -c "import cleanrl" 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps --ignore-requires-python cleanrl==1.2.0
fi
# cleanrl installs as a namespace package (no __init__.py): take its path, not __file__.
CLEANRL=$(.venv/bin/python -c "import cleanrl; print(list(cleanrl.__path__)[0])")/ppo_procgen.py
mkdir -p bench-out/cleanrl
rm -rf bench-out/ppo-rl-darts

echo "CleanRL ppo_procgen.py: $STEPS steps on $ENV (CPU)..."
(cd bench-out/cleanrl && PYTHONPATH=../../.deps/procgen PYTHONWARNINGS=ignore \
  ../../.venv/bin/python "$CLEANRL" --env-id "$ENV" --total-timesteps "$STEPS" --cuda False \
  --seed 1 > log.txt 2>&1)
cleanrl_sps=$(grep -o 'SPS: [0-9]*' bench-out/cleanrl/log.txt | tail -1 | awk '{print $2}')

# The same peer with the heap policy rl-darts sets for itself (device::keep_freed_memory_for_reuse):
# glibc's defaults mmap and unmap every large activation, which costs both sides page faults.
echo "CleanRL ppo_procgen.py with MALLOC_MMAP_MAX_=0 (heap kept): $STEPS steps..."
(cd bench-out/cleanrl && PYTHONPATH=../../.deps/procgen PYTHONWARNINGS=ignore \
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \
  ../../.venv/bin/python "$CLEANRL" --env-id "$ENV" --total-timesteps "$STEPS" --cuda False \
  --seed 1 > log-heap.txt 2>&1)
cleanrl_heap_sps=$(grep -o 'SPS: [0-9]*' bench-out/cleanrl/log-heap.txt | tail -1 | awk '{print $2}')

echo "rl-darts train: $STEPS steps on $ENV (CPU)..."
$BIN train --env "$ENV" --encoder impala --device cpu --total-steps "$STEPS" --quiet \
  --set procgen.num_levels=0 --run-dir bench-out/ppo-rl-darts > bench-out/ppo-rl-darts.log
read -r ours roll upd < <(.venv/bin/python -c "
import json; s = json.load(open('bench-out/ppo-rl-darts/summary.json'))
print(round(s['steps_per_sec'], 1), round(s['rollout_secs'], 1), round(s['update_secs'], 1))")

{
  echo "| implementation | env steps/s | rollout s | update s |"
  echo "|---|---:|---:|---:|"
  echo "| CleanRL ppo_procgen.py 1.2.0 (PyTorch 2.13) | $cleanrl_sps | - | - |"
  echo "| CleanRL, glibc heap kept (MALLOC_MMAP_MAX_=0) | $cleanrl_heap_sps | - | - |"
  echo "| rl-darts train --encoder impala | $ours | $roll | $upd |"
  echo
  echo "ratio rl-darts / CleanRL: $(awk -v a="$ours" -v b="$cleanrl_sps" 'BEGIN{printf "%.2f", a/b}')"
  echo "ratio rl-darts / CleanRL with the heap kept: $(awk -v a="$ours" -v b="$cleanrl_heap_sps" 'BEGIN{printf "%.2f", a/b}')"
} > bench-out/ppo.md
echo "env=$ENV steps=$STEPS machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%F)"
cat bench-out/ppo.md
