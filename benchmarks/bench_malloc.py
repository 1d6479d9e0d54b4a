"""Page faults and system time of a training step, with and without resnetlab's malloc tuning.

Each variant runs in its own process (``mallopt`` settings cannot be undone): the trainer's step
(channels_last, SGD-nesterov, batch 128) for ``--steps`` steps after 3 warm-up steps, reporting
per step the minor page faults, user and system CPU time (``getrusage``) and wall time.
"default" is glibc as it comes; "tuned" calls :func:`resnetlab.runtime.tune_malloc` first, as
``resnetlab train`` does (``train.tune_malloc: true``).

Run:  python benchmarks/bench_malloc.py                    (ResNet-20 at 3x32x32 and the speedrun net)
      python benchmarks/bench_malloc.py --threads 1 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODELS = {
    "resnet20": ("resnet20", {}, (3, 32, 32)),
    "speedrun": ("resnet_cifar", {"depth": 8, "width": 2.0, "stem": "cifar-pool", "in_channels": 1}, (1, 28, 28)),
}


def child(variant: str, model: str, steps: int, threads: int) -> dict:
    """One measurement in this process; the caller must be a fresh process."""
    import resource
    import time

    if variant == "tuned":
        from resnetlab.runtime import tune_malloc

        assert tune_malloc(), "mallopt not available here"
    import torch

    from resnetlab import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, kwargs, size = MODELS[model]
    net = create_model(name, **kwargs).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(128, *size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        loss_fn(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"variant": variant, "model": model, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
            "user_ms": 1000 * (r1.ru_utime - r0.ru_utime) / steps, "sys_ms": 1000 * (r1.ru_stime - r0.ru_stime) / steps,
            "wall_ms": 1000 * (t1 - t0) / steps}


def measure(variant: str, model: str, steps: int, threads: int) -> dict:
    """Run :func:`child` in a fresh interpreter and return its result."""
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--model", model, "--steps", str(steps),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", choices=sorted(MODELS), action="append", default=None)
    ap.add_argument("--child", choices=("default", "tuned"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model[0], args.steps, args.threads)))
        return 0
    print(f"# {os.cpu_count()} cores, {args.threads} threads, {args.steps} steps, load average {os.getloadavg()[0]:.2f}")
    for model in args.model or list(MODELS):
        for variant in ("default", "tuned"):
            r = measure(variant, model, args.steps, args.threads)
            print(f"{model:<9} {variant:<8} {r['faults_per_step']:8.0f} faults/step  user {r['user_ms']:6.1f} ms  "
                  f"sys {r['sys_ms']:5.1f} ms  wall {r['wall_ms']:6.1f} ms/step", flush=True)
    print(f"$ python benchmarks/bench_malloc.py --threads {args.threads} --steps {args.steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
