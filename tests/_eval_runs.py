"""Run folders for the evaluate / predict / report tests.

``trained_run(dest)`` trains a real ResNet-8 on digits through the trainer once per test
process (about 10-20 s on 2 cores) and copies the finished run folder to ``dest``, so tests
can write into their copy. ``fresh_checkpoint_run`` builds a run folder without training
(a freshly initialized model saved with ``save_checkpoint`` plus a hand-written
``metrics.csv``) for tests that only need the file layout or a custom dataset.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

TRAIN_OVERRIDES = [
    "model.name=resnet8",
    "data.name=digits",
    "train.epochs=2",
    "train.batch_size=64",
    "optim.lr=0.05",
    "train.device=cpu",
    "seed=0",
]


@functools.lru_cache(maxsize=1)
def _trained_base() -> Path:
    from resnetlab.config import load_config
    from resnetlab.trainer import train

    root = Path(tempfile.mkdtemp(prefix="resnetlab-evaltests-"))
    atexit.register(shutil.rmtree, root, True)
    run = root / "run"
    train(load_config(None, TRAIN_OVERRIDES), run, progress=False)
    return run


def trained_run(dest: Path) -> Path:
    """A copy of the trained digits run (config.yaml, metrics.csv, checkpoints, eval/test, report)."""
    out = dest / "run"
    shutil.copytree(_trained_base(), out)
    return out


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "images_per_s"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def fresh_checkpoint_run(dest: Path, data: dict, arch: str = "resnet8", seed: int = 0, metrics_rows=None) -> Path:
    """A run folder holding an untrained model's checkpoint for dataset ``data`` (a config data section)."""
    import torch
    import yaml

    from resnetlab.checkpoint import save_checkpoint
    from resnetlab.data import load_dataset
    from resnetlab.models import create_model

    kw = {k: v for k, v in data.items() if k in ("root", "image_size", "val_fraction", "subset")}
    splits = load_dataset(data["name"], seed=seed, **kw)
    arch_args = {"num_classes": len(splits.classes), "in_channels": splits.image_shape[0]}
    torch.manual_seed(seed)
    model = create_model(arch, **arch_args)
    config = {"seed": seed, "model": {"name": arch}, "data": dict(data)}
    meta = {
        "arch": arch,
        "arch_args": arch_args,
        "classes": splits.classes,
        "mean": splits.mean,
        "std": splits.std,
        "input_size": list(splits.image_shape),
        "config": config,
        "metrics": {},
        "epoch": 1,
        "step": 10,
    }
    run = dest / "run"
    save_checkpoint(run / "checkpoints" / "best", model, meta)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_metrics_csv(run / "metrics.csv", metrics_rows or [])
    return run


def make_image_folder(root: Path, classes=("circle", "square", "stripes"), per_class: int = 10, size: int = 20) -> Path:
    """A small ImageFolder of PNGs whose classes differ visibly (and one stray text file)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            if ci == 0:
                img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = (220, 40, 40)
            elif ci == 1:
                img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (40, 220, 40)
            else:
                img[:, ::4] = (40, 40, 220)
            Image.fromarray(img).save(d / f"{name}_{i:02d}.png")
    return root
