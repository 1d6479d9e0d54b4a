"""One full Fashion-MNIST epoch of ResNet-20 with crop + flip: resnetlab's trainer vs a conventional loop.

Issue 7, section 2: "a full Fashion-MNIST epoch of ResNet-20 with crop + flip: at least 1.7x faster
than a conventional loop (torchvision per-image transforms, DataLoader with 2 workers, NCHW)
measured in the same run".

- resnetlab: :func:`resnetlab.trainer.train` on a config (the code path of ``resnetlab train``):
  uint8 images in memory, crop + flip as one batched gather, channels_last, no per-step host
  sync. The figure is the trainer's own ``epoch_time_s`` (the training phase of the epoch; there
  is no validation split, so nothing else happens in the epoch) and, beside it, the wall time of
  the whole ``train()`` call (dataset load, model build, checkpoint write included).
- conventional: the loop of the PyTorch tutorials, written out here: a map-style dataset that
  hands out PIL images, ``RandomCrop(28, padding=2) + RandomHorizontalFlip + ToTensor +
  Normalize`` per image, ``DataLoader(batch_size=128, shuffle=True, num_workers=2)``, an NCHW
  model, ``running_loss += loss.item()`` and an accuracy count per step (one host sync per step,
  as tutorials do).

- bare step: the same model and optimizer on one resident batch (no data at all), channels_last:
  the ceiling any loop can reach with these kernels, printed last with the share of it each loop
  keeps.

Both train the same ResNet-20 (BatchNorm, 1 input channel, 10 classes) with SGD (lr 0.1,
momentum 0.9, nesterov, weight decay 5e-4) on the same 60,000 training images, batch 128, with the
same torch thread count. The conventional loop's figure is the wall time of its epoch loop.

Run:  python benchmarks/bench_epoch.py                      (full epoch each, ~10 min on 2 cores)
      python benchmarks/bench_epoch.py --images 6000        (a tenth of an epoch: a smoke run)
      python benchmarks/bench_epoch.py --bf16                (also the trainer under train.amp=bf16, on a CPU with bf16 units)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnetlab import create_model
from resnetlab.config import config_from_dict
from resnetlab.data import load_dataset
from resnetlab.trainer import train

COMMAND = "python benchmarks/bench_epoch.py"
BATCH = 128
PAD = 2


def bench_config(images: int, threads: int, amp: str = "auto"):
    """The run both loops mirror (the trainer takes it as it is; ``amp="bf16"``: its opt-in bf16 autocast)."""
    return config_from_dict({
        "name": "bench-epoch",
        "seed": 0,
        "model": {"name": "resnet20", "norm": "bn-torch"},
        "data": {"name": "fashion-mnist", "val_fraction": 0.0, "subset": images if images < 60000 else None},
        "augment": [{"crop": {"padding": PAD}}, "flip"],
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": BATCH, "num_threads": threads, "amp": amp},
        "output": {"evaluate_test": False, "report": False, "tensorboard": False},
    })


def resnetlab_epoch(cfg, out: Path) -> dict:
    """One epoch through the project's trainer; returns its epoch time and the call's wall time."""
    t0 = time.perf_counter()
    result = train(cfg, run_dir=out, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    row = result.history[-1]
    return {"epoch_s": row["epoch_time_s"], "wall_s": wall, "images": int(round(row["images_per_s"] * row["epoch_time_s"])),
            "train_acc": row["train_acc"]}


class _PILDataset(torch.utils.data.Dataset):
    """Hands out (PIL image, label) pairs like ``torchvision.datasets.FashionMNIST`` does."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i, 0].numpy(), mode="L")
        return self.transform(img), int(self.targets[i])


def conventional_epoch(cfg, workers: int) -> dict:
    """One epoch of the tutorial loop (per-image torchvision transforms, DataLoader workers, NCHW)."""
    from torchvision import transforms as T

    splits = load_dataset(cfg.data.name, val_fraction=0.0, subset=cfg.data.subset)
    tf = T.Compose([T.RandomCrop(28, padding=PAD), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    ds = _PILDataset(splits.train.images, splits.train.targets, tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=False, drop_last=False)
    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.arch_args(num_classes=10, in_channels=1))  # what the trainer builds
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    running_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        running_loss += loss.item() * y.shape[0]
        correct += (out.argmax(1) == y).sum().item()
        seen += y.shape[0]
    epoch = time.perf_counter() - t0
    return {"epoch_s": epoch, "images": seen, "train_acc": correct / seen}


def bare_step(cfg, steps: int = 20, repeats: int = 3) -> dict:
    """The ceiling for any loop: the same model and optimizer stepping on one resident batch.

    :func:`resnetlab.bench.train_images_per_s` (what ``resnetlab bench`` measures): channels_last,
    no data, no augmentation, no metrics, no scheduler; the best of ``repeats`` windows. The
    trainer's rate divided by this is the share of the step's own speed the trainer keeps; the
    rest is the kernels.
    """
    from resnetlab.bench import train_images_per_s
    from resnetlab.runtime import tune_malloc

    tune_malloc()
    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.arch_args(num_classes=10, in_channels=1))
    ips = train_images_per_s(model, BATCH, (1, 28, 28), steps=steps, warmup=3, repeats=repeats, channels_last=True)
    return {"images_per_s": ips, "steps": steps, "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch (default 60000: the full split)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both loops (default: all cores)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional loop (default 2)")
    ap.add_argument("--bare-steps", type=int, default=20, help="timed steps per window of the bare step (default 20, 3 windows)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the trainer with train.amp=bf16 (bf16 autocast; CPUs with bf16 units only): "
                         "a separate row, not the fp32 comparison the target asks for")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    print(f"# {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    cfg = bench_config(args.images, args.threads)
    # the conventional loop first: the trainer tunes glibc malloc for the rest of the process
    conv = conventional_epoch(cfg, args.workers)
    print(f"conventional loop     {conv['images']:6d} images  epoch {conv['epoch_s']:7.1f} s  "
          f"{conv['images'] / conv['epoch_s']:6.0f} img/s  (DataLoader {args.workers} workers, NCHW)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fast = resnetlab_epoch(cfg, Path(tmp) / "run")
    print(f"resnetlab trainer     {fast['images']:6d} images  epoch {fast['epoch_s']:7.1f} s  "
          f"{fast['images'] / fast['epoch_s']:6.0f} img/s  (whole train() call {fast['wall_s']:.1f} s)", flush=True)
    # images/s, not raw seconds: the trainer drops the last partial batch, the tutorial loop keeps it
    ratio = (fast["images"] / fast["epoch_s"]) / (conv["images"] / conv["epoch_s"])
    print(f"speed-up of the epoch (images/s): {ratio:.2f}x (target 1.7x); the conventional epoch vs the whole train() call: "
          f"{conv['epoch_s'] / fast['wall_s']:.2f}x   $ {COMMAND}" + (f" --images {args.images}" if args.images != 60000 else ""))
    bf16 = None
    if args.bf16:
        from resnetlab.runtime import cpu_has_bf16

        if not cpu_has_bf16():
            print("resnetlab trainer, train.amp=bf16: skipped (this CPU has no bf16 units: it would train in fp32)", flush=True)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bf16 = resnetlab_epoch(bench_config(args.images, args.threads, amp="bf16"), Path(tmp) / "run")
            bf16["speedup"] = (bf16["images"] / bf16["epoch_s"]) / (conv["images"] / conv["epoch_s"])
            print(f"resnetlab trainer, bf16 {bf16['images']:6d} images  epoch {bf16['epoch_s']:7.1f} s  "
                  f"{bf16['images'] / bf16['epoch_s']:6.0f} img/s  (train.amp=bf16, opt-in bf16 autocast; train acc "
                  f"{bf16['train_acc']:.4f} vs fp32 {fast['train_acc']:.4f}): {bf16['speedup']:.2f}x the conventional loop   "
                  f"$ {COMMAND} --bf16", flush=True)
    bare = bare_step(cfg, steps=args.bare_steps)
    print(f"bare training step    one resident batch, {bare['steps']} steps x {bare['repeats']}: {bare['images_per_s']:6.0f} img/s "
          f"(the ceiling of any loop); the trainer keeps {fast['images'] / fast['epoch_s'] / bare['images_per_s']:.0%} of it, "
          f"the conventional loop {conv['images'] / conv['epoch_s'] / bare['images_per_s']:.0%}", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"resnetlab": fast, "resnetlab_bf16": bf16, "conventional": conv, "bare_step": bare, "speedup": ratio,
                                         "argv": sys.argv[1:]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
