"""Peer for `rl-darts envs bench`: procgen's Python gym3 wrapper over the same libenv.so,
random actions drawn before timing, the same num_envs, threads, mode and step count.
Prints one line: steps_per_sec=... secs=..."""
import argparse
import time

import numpy as np
from procgen import ProcgenGym3Env

p = argparse.ArgumentParser()
p.add_argument("--env", default="coinrun")
p.add_argument("--num-envs", type=int, default=64)
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--threads", type=int, default=4)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

env = ProcgenGym3Env(num=a.num_envs, env_name=a.env, distribution_mode="easy",
                     num_threads=a.threads, rand_seed=a.seed)
rng = np.random.default_rng(a.seed)
warmup = min(max(a.steps // 10, 1), 200)
acts = rng.integers(0, 15, size=(a.steps + warmup, a.num_envs), dtype=np.int32)
for t in range(warmup):
    env.act(acts[t])
    env.observe()
start = time.perf_counter()
for t in range(warmup, warmup + a.steps):
    env.act(acts[t])
    rew, ob, first = env.observe()
secs = time.perf_counter() - start
print(f"steps_per_sec={a.steps * a.num_envs / secs:.1f} secs={secs:.4f}")
