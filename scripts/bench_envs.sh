#!/usr/bin/env bash
# Env stepping: `rl-darts envs bench` against procgen's Python gym3 wrapper over the same
# library, same num_envs/threads/steps, alternating runs in one session; median of REPEATS.
# Writes the table to bench-out/envs.md and prints it (paste into BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${ENV:-coinrun}; STEPS=${STEPS:-2000}; REPEATS=${REPEATS:-3}
BIN=target/release/rl-darts
[ -x "$BIN" ] || cargo build --release
mkdir -p bench-out
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
out=bench-out/envs.md
{
  echo "| num_envs | threads | rl-darts steps/s | Python gym3 steps/s | ratio | time inside libenv (rl-darts) |"
  echo "|---:|---:|---:|---:|---:|---:|"
} > "$out"
for cfg in "64 4" "64 1" "16 4"; do
  set -- $cfg; n=$1; th=$2
  rs=(); ps=(); lib=()
  for _ in $(seq "$REPEATS"); do
    line=$($BIN envs bench --env "$ENV" --num-envs "$n" --threads "$th" --steps "$STEPS" --machine)
    rs+=("$(echo "$line" | field steps_per_sec)")
    lib+=("$(awk -v l="$(echo "$line" | field library_secs)" -v s="$(echo "$line" | field secs)" 'BEGIN{printf "%.1f", 100*l/s}')")
    ps+=("$(PYTHONPATH=.deps/procgen PYTHONWARNINGS=ignore .venv/bin/python scripts/bench_envs_python.py \
      --env "$ENV" --num-envs "$n" --threads "$th" --steps "$STEPS" 2>/dev/null | field steps_per_sec)")
  done
  r=$(printf '%s\n' "${rs[@]}" | median); p=$(printf '%s\n' "${ps[@]}" | median); l=$(printf '%s\n' "${lib[@]}" | median)
  printf '| %s | %s | %.0f | %.0f | %.2f | %s%% |\n' "$n" "$th" "$r" "$p" "$(awk -v a="$r" -v b="$p" 'BEGIN{print a/b}')" "$l" >> "$out"
done
echo "env=$ENV steps=$STEPS repeats=$REPEATS machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%F)"
cat "$out"
