"""Test oracle: procgen's own Python wrapper (gym3) over the same libenv.so.

Reads a JSON list of cases on stdin, plays each with a deterministic action sequence, and
prints JSON with, per case, the sha256 of every observation batch plus the rewards and first
flags. tests/procgen_equivalence.rs plays the same cases through rl-darts and compares.
Run with the project's .venv and PYTHONPATH=.deps/procgen (the unpacked wheel).
"""
import hashlib
import json
import sys

import numpy as np
from procgen import ProcgenGym3Env

MASK = (1 << 64) - 1


def action(case_seed, t, i):
    # Must match `oracle_action` in tests/procgen_equivalence.rs.
    h = (t * 1000003 + i * 7919 + case_seed * 104729 + 12345) & MASK
    h = (h * 6364136223846793005 + 1442695040888963407) & MASK
    return (h >> 33) % 15


def play(case):
    kwargs = dict(
        num=case["num_envs"],
        env_name=case["game"],
        distribution_mode=case["mode"],
        rand_seed=case["seed"],
        num_threads=case.get("num_threads", 4),
    )
    for key in ("num_levels", "start_level", "use_sequential_levels", "center_agent",
                "use_backgrounds", "use_monochrome_assets", "restrict_themes",
                "use_generated_assets", "paint_vel_info"):
        if key in case:
            kwargs[key] = case[key]
    env = ProcgenGym3Env(**kwargs)
    out = {"obs": [], "rew": [], "first": []}

    def record():
        rew, ob, first = env.observe()
        rgb = np.ascontiguousarray(ob["rgb"], dtype=np.uint8)
        out["obs"].append(hashlib.sha256(rgb.tobytes()).hexdigest())
        out["rew"].append([float(r) for r in rew])
        out["first"].append([int(f) for f in first])

    record()
    for t in range(case["steps"]):
        acts = np.array([action(case["seed"], t, i) for i in range(case["num_envs"])], dtype=np.int32)
        env.act(acts)
        record()
    env.close()
    return out


def main():
    cases = json.load(sys.stdin)
    json.dump([play(c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()
