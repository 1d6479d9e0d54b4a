"""GPU throughput (issue 7 section 4): `resnetlab bench` for ResNet-20 and ResNet-18 on CIFAR-sized
synthetic data, in fp32 (TF32 convolutions, cuDNN's default) and bf16 autocast, eager and compiled.

Every row is one :func:`resnetlab.bench.run_bench` call, the function behind ``resnetlab bench``;
the row's equivalent command is printed with it. The roof is a matmul in the row's dtype (TF32
for fp32 rows, as the convolutions run), so a fraction compares like with like.

Usage:
    python benchmarks/bench_gpu.py                      # the table in docs/BENCHMARKS.md
    python benchmarks/bench_gpu.py --models resnet20 --amp bf16 --no-compile
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch

from resnetlab.bench import run_bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    p.add_argument("--input-size", default="3x32x32")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "fp16"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="add compiled rows (default: on)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=8192, help="side of the roof matmul (8192: compute-bound on a GPU)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json-out", default=None, help="also write one JSON object per row to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    dev = torch.device(args.device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        print(f"error: this benchmark needs a CUDA device, got {args.device!r} (cuda available: {torch.cuda.is_available()})", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(dev)
    print(f"device {name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"batch {args.batch_size}, input {args.input_size}")  # fmt: skip
    print("| model | amp | compiled | train images/s | % of roof | infer eager images/s | infer folded images/s | roof TFLOP/s (dtype) | command |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    rows = []
    for model in args.models:
        for amp in args.amp:
            for compiled in ([False, True] if args.compile else [False]):
                t0 = time.perf_counter()
                r = run_bench(model, batch_size=args.batch_size, input_size=args.input_size, steps=args.steps, warmup=5,
                              repeats=args.repeats, device=dev, compile=compiled, matmul_size=args.matmul_size, amp=amp)  # fmt: skip
                r["device_name"] = name
                r["seconds"] = time.perf_counter() - t0
                rows.append(r)
                cmd = (f"resnetlab bench --device cuda --model {model} --input-size {args.input_size} --batch-size {args.batch_size} "
                       f"--amp {amp} --steps {args.steps} --warmup 5 --repeats {args.repeats} --matmul-size {args.matmul_size}"
                       f"{' --compile' if compiled else ''}")  # fmt: skip
                print(f"| {model} | {amp} | {'yes' if compiled else 'no'} | {r['train_images_per_s']:,.0f} | "
                      f"{100 * r['train_roof_fraction']:.1f}% | {r['infer_eager_images_per_s']:,.0f} | "
                      f"{r['infer_optimized_images_per_s']:,.0f} | {r['matmul_gflops'] / 1e3:,.0f} ({r['matmul_dtype']}) | `{cmd}` |",
                      flush=True)  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
