"""``resnetlab bench``: training / inference images/s and the share of the matmul roof."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli import int_at_least


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training and inference images/s against the machine's matmul GFLOP/s",
        description="Synthetic-data throughput of a model: training (fwd+bwd+SGD) and inference "
        "(eager and BN-folded) images/s, the measured matmul GFLOP/s (fp32, or the --amp dtype) and the fraction of it "
        "the training step reaches (3 x forward FLOPs per image).",
    )
    p.add_argument("--model", default="resnet20", help="registered model name (default: resnet20)")
    p.add_argument("--batch-size", type=int_at_least(1), default=128, help="images per step (default: 128)")
    p.add_argument("--input-size", default="3x32x32", help="CxHxW (default: 3x32x32)")
    p.add_argument("--steps", type=int_at_least(1), default=20, help="timed steps per window (default: 20)")
    p.add_argument("--warmup", type=int_at_least(0), default=3,
                   help="untimed steps first; 1 or more with --compile (default: 3)")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="timed windows, the best counts (default: 3)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default: cpu)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC training and optimized inference (default: on)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="autocast dtype for training and inference; the roof matmul runs in it too (default: off, fp32)",
    )
    p.add_argument("--threads", type=int_at_least(1), default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--matmul-size", type=int_at_least(1), default=2048, help="side of the roof matmul (default: 2048)")
    p.add_argument("--norm", default=None, help="norm layer for the model (default: the model's)")
    p.add_argument("--depth", type=int_at_least(1), default=None,
                   help="6n+2 depth (9n+2 with --block bottleneck), for --model resnet_cifar (default: the model's)")
    p.add_argument("--block", choices=("basic", "bottleneck"), default=None,
                   help="block of --model resnet_cifar, as model.block (default: basic)")
    p.add_argument("--width", type=float, default=None,
                   help="multiplier on every channel count, as model.width (default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.bench import run_bench

    given = {"norm": args.norm, "depth": args.depth, "block": args.block, "width": args.width}
    model_args = {k: v for k, v in given.items() if v is not None} or None
    r = run_bench(
        model=args.model,
        batch_size=args.batch_size,
        input_size=args.input_size,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        channels_last=args.channels_last,
        compile=args.compile,
        threads=args.threads,
        matmul_size=args.matmul_size,
        model_args=model_args,
        amp=args.amp,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    size = "x".join(str(s) for s in r["input_size"])
    extra = "".join(f"  {k} {v:g}" if isinstance(v, float) else f"  {k} {v}" for k, v in r["model_args"].items())
    print(f"model            {r['model']}{extra}  batch {r['batch_size']}  input {size}  device {r['device']}  threads {r['threads']}")
    print(f"model FLOPs      {r['model_gflops_per_image']:.4f} GFLOP/image forward (x3 for a training step)")
    print(f"matmul roof      {r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_dtype']}, {args.matmul_size}x{args.matmul_size})")
    print(f"training         {r['train_images_per_s']:.1f} images/s = {r['train_gflops']:.1f} GFLOP/s "
          f"= {100 * r['train_roof_fraction']:.1f}% of the roof")
    print(f"inference eager  {r['infer_eager_images_per_s']:.1f} images/s")
    n = r["folded_norms"]
    how = [f"{n} batch norm{'s' if n != 1 else ''} folded" if n else "no batch norm to fold"]
    if r["channels_last"]:
        how.append("channels_last")
    print(f"inference fast   {r['infer_optimized_images_per_s']:.1f} images/s ({r['infer_speedup']:.2f}x eager; "
          f"{', '.join(how)})")
    return 0
