"""Training images/s with OpenMP's wait policy unset, PASSIVE, ACTIVE or a spin count, alone and beside busy processes.

PyTorch's CPU kernels run on an OpenMP thread pool (libgomp in the Linux wheels). Between
parallel regions its threads spin before they sleep; when another process wants the same cores,
a spinning thread can burn the time slice its descheduled partner needs and every op's barrier
waits for the scheduler. ``resnetlab`` (the command line) sets ``OMP_WAIT_POLICY=PASSIVE`` and
``GOMP_SPINCOUNT=3000`` (``resnetlab.runtime.SPIN_COUNT``; ``--policy spin:3000`` here) unless either
is already set; this script measures what such settings do, on a quiet machine and with
``--hogs`` busy-looping Python processes competing for the cores.

Each cell is a fresh interpreter (the policy is read once, when torch loads OpenMP) running
:func:`resnetlab.bench.train_images_per_s` (forward, loss, backward, SGD step; channels_last) for
one timed window of ``--steps`` steps after 3 warm-up steps.

Run:  python benchmarks/bench_wait_policy.py                 (speedrun net, 2 threads, 0 and 2 hogs)
      python benchmarks/bench_wait_policy.py --model resnet20 --hogs 0 1 2
      python benchmarks/bench_wait_policy.py --model resnet20 --hogs 0 2 4 --policy PASSIVE --policy spin:10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_malloc import MODELS  # noqa: E402  the same two networks as the page-fault benchmark

POLICIES = ("unset", "PASSIVE", "ACTIVE")


def policy_arg(text: str) -> str:
    """``unset``, ``PASSIVE``, ``ACTIVE`` or ``spin:K`` (variable unset, ``GOMP_SPINCOUNT=K``)."""
    if text in POLICIES or (text.startswith("spin:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(POLICIES)} or spin:K (K a whole number)")


def child(model: str, steps: int, threads: int, batch_size: int) -> float:
    """Training images/s of ``model`` in this (fresh) process."""
    import torch

    from resnetlab import create_model
    from resnetlab.bench import configure_threads, train_images_per_s

    configure_threads(threads)
    torch.manual_seed(0)
    name, kwargs, size = MODELS[model]
    return train_images_per_s(create_model(name, **kwargs), batch_size=batch_size, input_size=size,
                              steps=steps, warmup=3, repeats=1)  # fmt: skip


def measure(policy: str, model: str, steps: int, threads: int, batch_size: int, hogs: int) -> float:
    """Run :func:`child` in a fresh interpreter under ``policy`` beside ``hogs`` busy processes."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(0.5 if hogs else 0)
        out = subprocess.run([sys.executable, __file__, "--child", "--model", model, "--steps", str(steps),
                              "--threads", str(threads), "--batch-size", str(batch_size)],
                             capture_output=True, text=True, check=True, env=env)  # fmt: skip
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="speedrun")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per cell (default 30)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 2], help="busy processes beside the training (default: 0 2)")
    ap.add_argument("--policy", type=policy_arg, action="append", default=None,
                    help="unset, PASSIVE, ACTIVE or spin:K (GOMP_SPINCOUNT=K, policy unset); repeatable; default: the first three")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.steps, args.threads, args.batch_size)))
        return 0
    policies = args.policy or list(POLICIES)
    print(f"# {os.cpu_count()} cores, {args.threads} threads, model {args.model}, batch {args.batch_size}, "
          f"{args.steps} steps, load average before {os.getloadavg()[0]:.2f}")  # fmt: skip
    for hogs in args.hogs:
        for policy in policies:
            rate = measure(policy, args.model, args.steps, args.threads, args.batch_size, hogs)
            print(f"hogs {hogs}  OMP_WAIT_POLICY {policy:<11} {rate:8.1f} train img/s", flush=True)
    cmd = (f"python benchmarks/bench_wait_policy.py --model {args.model} --steps {args.steps} --threads {args.threads} "
           f"--batch-size {args.batch_size} --hogs {' '.join(map(str, args.hogs))}"
           + "".join(f" --policy {p}" for p in (args.policy or [])))  # fmt: skip
    print(f"$ {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
