"""Where a ResNet-20 training step spends its time on the CPU, against the matmul roof.

Issue 7 asks for 80% of the measured fp32 matmul roof in ResNet-20 training (batch 128, 32x32
RGB). This script explains the figure `benchmarks/bench_cpu.py` prints: it runs the trainer's
step (channels_last, SGD with Nesterov momentum, no host sync) under ``torch.profiler`` and groups
the self CPU time of the aten ops into convolution forward, convolution backward, batch norm,
ReLU, residual adds, optimizer and the rest. For the convolutions it divides their FLOPs (the
model's forward FLOPs from :func:`resnetlab.models.profile.count_flops`; backward = 2x forward
less the first layer's input gradient, which is not computed) by their time, so the output says
how close oneDNN's kernels themselves get to the roof, and what the whole step could reach if
everything but the convolutions took no time at all.

Run:  python benchmarks/profile_train_step.py            (2 threads by default; ~1 min)
      python benchmarks/profile_train_step.py --threads 1 --steps 5
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from resnetlab import create_model
from resnetlab.bench import _batch, configure_threads, matmul_gflops
from resnetlab.models.profile import count_flops

CATEGORIES = (
    ("conv forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d")),
    ("conv backward", ("aten::convolution_backward",)),
    ("batch norm", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_impl_index",
                    "aten::batch_norm", "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_functional")),
    ("relu", ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward")),
    ("adds / copies", ("aten::add", "aten::add_", "aten::copy_", "aten::fill_", "aten::zero_")),
)


def categorize(name: str) -> str:
    for cat, names in CATEGORIES:
        if name in names:
            return cat
    if "SGD" in name or "_foreach" in name or name in ("aten::mul_", "aten::addcmul_", "aten::lerp_"):
        return "optimizer"
    return "other"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (default 10)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)

    threads = configure_threads(args.threads)
    size = (3, 32, 32)
    torch.manual_seed(0)
    model = create_model("resnet20").to(memory_format=torch.channels_last).train()
    fwd_flops = count_flops(create_model("resnet20"), size)
    first = model.conv1
    first_flops = 2 * first.in_channels * first.out_channels * first.kernel_size[0] * first.kernel_size[1] * size[1] * size[2]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = _batch(args.batch_size, size, 10, torch.device("cpu"), True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    roof = max(matmul_gflops(2048, repeats=3) for _ in range(2))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    per_cat: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        per_cat[categorize(ev.key)] += ev.self_cpu_time_total / 1e6  # seconds, over all steps
    total = sum(per_cat.values())
    images = args.batch_size * args.steps
    step_flops = 3 * fwd_flops * args.batch_size  # the bench's convention: training = 3x forward

    print(f"# {os.cpu_count()} cores, {threads} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"# resnet20 batch {args.batch_size} channels_last, {args.steps} profiled steps, matmul roof {roof:.1f} GFLOP/s")
    print(f"{'category':<15} {'time s':>8} {'share':>7}  GFLOP/s (% of roof)")
    conv_fwd_flops = fwd_flops * images
    conv_bwd_flops = (2 * fwd_flops - first_flops) * images
    for cat in ("conv forward", "conv backward", "batch norm", "relu", "adds / copies", "optimizer", "other"):
        t = per_cat.get(cat, 0.0)
        extra = ""
        if cat == "conv forward" and t:
            extra = f"  {conv_fwd_flops / t / 1e9:6.1f} ({100 * conv_fwd_flops / t / 1e9 / roof:4.1f}%)"
        if cat == "conv backward" and t:
            extra = f"  {conv_bwd_flops / t / 1e9:6.1f} ({100 * conv_bwd_flops / t / 1e9 / roof:4.1f}%)"
        print(f"{cat:<15} {t:8.3f} {100 * t / total:6.1f}%{extra}")
    step_gflops = step_flops * args.steps / total / 1e9
    conv_only = step_flops * args.steps / (per_cat["conv forward"] + per_cat["conv backward"]) / 1e9
    print(f"whole step (profiled): {images / total:.0f} img/s, {step_gflops:.1f} GFLOP/s = {100 * step_gflops / roof:.1f}% of the roof")
    print(f"if only the convolutions took time: {100 * conv_only / roof:.1f}% of the roof   "
          f"$ python benchmarks/profile_train_step.py" + (f" --threads {args.threads}" if args.threads else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
