"""Ray driver of `rl-darts sweep run PLAN --ray ADDRESS` (embedded in the binary; kept here to
be read and run by hand): one Ray task per trial, each asking for the plan's CPUs and GPUs per
trial and running `rl-darts sweep run PLAN --index I` on the node Ray places it on. The plan,
the binary and the run directories must be on a filesystem every node sees.

A trial that fails is reported with its log path; the others go on. Exit status: 0 when every
trial completed (or was already complete), 1 when some failed or were interrupted.
"""
import argparse
import json
import socket
import subprocess
import sys
import time

import ray

INTERRUPTED = 75  # `sweep run` exits with EX_TEMPFAIL when a trial stopped resumably


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True, help="a Ray address, 'auto', or 'local'")
    p.add_argument("--plan", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--indices", default="", help="comma-separated trial indices (default all)")
    args = p.parse_args()

    with open(args.plan) as f:
        plan = json.load(f)
    res = plan["resources"]
    names = {t["index"]: t["name"] for t in plan["trials"]}
    indices = [int(i) for i in args.indices.split(",") if i] or sorted(names)

    # log_to_driver=False: each trial writes its own log file; the driver prints one line a trial.
    ray.init(address=args.address, log_to_driver=False)

    # max_retries: a trial is idempotent (complete -> skipped, partial -> resumed), so a task
    # lost with its node is simply run again.
    @ray.remote(num_cpus=res["cpus_per_trial"], num_gpus=res["gpus_per_trial"], max_retries=2)
    def run_trial(binary, plan_path, index):
        started = time.time()
        r = subprocess.run(
            [binary, "sweep", "run", plan_path, "--index", str(index)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        out = (r.stdout + r.stderr).strip().splitlines()
        return index, r.returncode, socket.gethostname(), time.time() - started, out[-20:]

    print(
        f"ray: {len(indices)} trials on {args.address} "
        f"({res['cpus_per_trial']} CPU, {res['gpus_per_trial']} GPU each); "
        f"cluster resources {ray.cluster_resources()}",
        flush=True,
    )
    pending = [run_trial.remote(args.binary, args.plan, i) for i in indices]
    done = failed = interrupted = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        index, rc, host, secs, tail = ray.get(ready[0])
        done += 1
        name = names.get(index, "?")
        if rc == 0:
            status = "ok"
        elif rc == INTERRUPTED:
            interrupted += 1
            status = "interrupted (resumable)"
        else:
            failed += 1
            status = f"FAILED (exit code {rc})"
        print(f"[{done}/{len(indices)}] #{index} {name} on {host} in {secs:.0f}s: {status}", flush=True)
        if rc != 0:
            for line in tail:
                print(f"    {line}", flush=True)
    print(f"ray: {done - failed - interrupted} ok, {failed} failed, {interrupted} interrupted", flush=True)
    ray.shutdown()
    sys.exit(1 if failed or interrupted else 0)


if __name__ == "__main__":
    main()
