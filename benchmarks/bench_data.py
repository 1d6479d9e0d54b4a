"""Input-pipeline throughput: the in-memory fast path vs a per-image DataLoader vs the model's appetite.

For CIFAR-sized RGB (synthetic 3x32x32, 50,000 images) and Fashion-MNIST (1x28x28, 60,000 images;
synthetic stand-in of the same shape when the files are absent) it measures, in one run:

1. fast path: ``resnetlab.data.build_loader`` (uint8 in memory, batch-wise crop + flip as one gather,
   normalize, channels_last) — images/s over whole epochs;
2. conventional: a ``torch.utils.data.DataLoader`` with 2 workers applying torchvision's
   per-image ``RandomCrop(padding=4) + RandomHorizontalFlip + ToTensor + Normalize`` to PIL images;
3. the images/s a ResNet-20 training step consumes (forward + backward + SGD step, batch 128).

and prints the ratios fast/train-step (target >= 10) and fast/conventional (target >= 5), by wall
clock and per CPU-second (process + reaped DataLoader workers; robust to a busy machine).

Run:
    python benchmarks/bench_data.py            # full (about 2-4 minutes on 2 cores)
    python benchmarks/bench_data.py --quick    # fewer images and steps
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time

import torch


def _cpu() -> float:
    """CPU seconds of this process plus its reaped children (the DataLoader workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def fast_path(splits, batch_size: int, epochs: int, pad: int, threads: int | None) -> tuple[float, float]:
    from resnetlab.data import build_loader

    dl = build_loader(splits.train, batch_size=batch_size, augment=[f"crop:padding={pad}", "flip"],
                      mean=splits.mean, std=splits.std, seed=0, threads=threads)  # fmt: skip
    next(dl.iter_epoch(99))  # warm-up
    n, t0, c0 = 0, time.perf_counter(), _cpu()
    for e in range(epochs):
        for x, _, _ in dl.iter_epoch(e):
            n += x.shape[0]
    return n / (time.perf_counter() - t0), n / (_cpu() - c0)


class _PerImage(torch.utils.data.Dataset):
    """The textbook pipeline: one PIL image and one transform call per sample."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform) -> None:
        arr = images.numpy()
        self.images = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)  # HWC as torchvision's CIFAR10
        self.targets = targets.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.targets[i])


def conventional(splits, batch_size: int, max_images: int, pad: int, workers: int) -> tuple[float, float]:
    import torchvision.transforms as T

    c, h, w = splits.image_shape
    tf = T.Compose([T.RandomCrop((h, w), padding=pad), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(splits.mean, splits.std)])
    ds = _PerImage(splits.train.images, splits.train.targets, tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    c0 = _cpu()
    it = iter(dl)
    next(it)  # workers started and warm
    n, t0 = 0, time.perf_counter()
    for x, _ in it:
        n += x.shape[0]
        if n >= max_images:
            break
    wall = n / (time.perf_counter() - t0)
    it._shutdown_workers()  # join the workers so their CPU time is counted (RUSAGE_CHILDREN)
    return wall, (n + batch_size) / (_cpu() - c0)


def train_step(in_channels: int, hw: int, num_classes: int, batch_size: int, steps: int) -> tuple[float, float]:
    import resnetlab

    model = resnetlab.create_model("resnet20", num_classes=num_classes, in_channels=in_channels)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.randn(batch_size, in_channels, hw, hw).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    t0, c0 = time.perf_counter(), _cpu()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0), steps * batch_size / (_cpu() - c0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images / steps (a rough figure in ~1 minute)")
    ap.add_argument("--batch-size", type=int, default=128, help="batch size of all three pipelines")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads (training step)")
    ap.add_argument("--loader-threads", type=int, default=1,
                    help="threads of the fast path's batch assembly (build_loader's threads=; 0 = same as --threads)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from resnetlab.data import load_dataset

    fm_real = os.path.isdir("/usr/share/datasets/fashion-mnist")
    cases = [
        ("CIFAR-sized RGB (synthetic 3x32x32, 50k)", "synthetic:3x32x32:10:50000", (3, 32, 10)),
        ("Fashion-MNIST (1x28x28, 60k)" + ("" if fm_real else " [synthetic stand-in]"),
         "fashion-mnist" if fm_real else "synthetic:1x28x28:10:60000", (1, 28, 10)),
    ]
    epochs = 1 if args.quick else 2
    conv_images = 5_000 if args.quick else 20_000
    steps = 5 if args.quick else 15
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"command: python benchmarks/bench_data.py {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads (loader {args.loader_threads or args.threads}), batch {args.batch_size}, load average at start {load1:.1f}")  # fmt: skip
    rows = []
    for title, name, (c, hw, k) in cases:
        splits = load_dataset(name, val_fraction=0.0)
        fast = fast_path(splits, args.batch_size, epochs, pad=4, threads=args.loader_threads or None)
        conv = conventional(splits, args.batch_size, conv_images, pad=4, workers=args.workers)
        step = train_step(c, hw, k, args.batch_size, steps)
        rows.append((title, fast[0], conv[0], step[0]))
        print(f"\n{title}                       images/s (wall)   images per CPU-second")
        print(f"  fast path (in-memory, batch-wise crop+flip+normalize):        {fast[0]:>10,.0f}   {fast[1]:>10,.0f}")
        print(f"  conventional DataLoader ({args.workers} workers, per-image PIL transforms): {conv[0]:>10,.0f}   {conv[1]:>10,.0f}")
        print(f"  ResNet-20 training step (fwd+bwd+SGD, batch {args.batch_size}):             {step[0]:>10,.0f}   {step[1]:>10,.0f}")
        print(f"  wall:    fast / training step = {fast[0] / step[0]:6.1f}x (target >= 10x)   "
              f"fast / conventional = {fast[0] / conv[0]:5.1f}x (target >= 5x)")  # fmt: skip
        print(f"  per CPU: fast / training step = {fast[1] / step[1]:6.1f}x                  "
              f"fast / conventional = {fast[1] / conv[1]:5.1f}x")  # fmt: skip
    ok = all(f / s >= 10 and f / c >= 5 for _, f, c, s in rows)
    print(f"\ntargets {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
