"""An augmentation preview grid (matplotlib): originals, one column per augmentation, all together."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from resnetlab.data.augment import BatchAugment, parse_augment
from resnetlab.data.datasets import DatasetSplits
from resnetlab.data.images import png_path
from resnetlab.data.loader import derive_seed
from resnetlab.errors import DataError

log = logging.getLogger(__name__)


def preview_columns(splits: DatasetSplits, spec: Any, n: int = 6, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """The grid's columns as ``(title, float images (n, C, H, W) in [0, 1])``.

    Column 0 is the originals, then one column per spec item, then (with several items) all
    items chained. Samples are picked from the training split with ``seed``.

    Example:
        >>> from resnetlab.data import load_dataset
        >>> cols = preview_columns(load_dataset("digits", val_fraction=0), "flip:p=1 crop:padding=1", n=2)
        >>> [t for t, _ in cols]
        ['original', 'flip:p=1.0', 'crop:padding=1', 'all']
    """
    if n < 1:
        raise DataError(f"n={n} must be >= 1")
    items = parse_augment(spec)
    if not items:
        raise DataError("no augmentation given (e.g. --aug 'crop:padding=4 flip')")
    train = splits.train
    if n > len(train):
        log.warning("n=%d is more than the %d training images: the preview shows all %d", n, len(train), len(train))
    g = torch.Generator().manual_seed(derive_seed(seed, 0))
    pick = torch.randperm(len(train), generator=g)[: min(n, len(train))]
    x = train.get(pick).float().div_(255.0)  # (n, C, H, W)
    cols = [("original", x)]
    chains = [(str(i), [i]) for i in items] + ([("all", items)] if len(items) > 1 else [])
    for k, (title, chain) in enumerate(chains):
        torch.manual_seed(derive_seed(seed, 1, k))
        cols.append((title, BatchAugment(chain, train.image_shape)(x.clone()).clamp_(0, 1)))
    return cols


def augment_preview(splits: DatasetSplits, spec: Any, out: str | os.PathLike, n: int = 6, seed: int = 0) -> Path:
    """Write the preview grid PNG to ``out`` and return its path.

    Example:
        >>> from resnetlab.data import load_dataset
        >>> augment_preview(load_dataset("digits"), ["crop:padding=1", "flip"], "/tmp/aug.png")  # doctest: +SKIP
        PosixPath('/tmp/aug.png')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = preview_columns(splits, spec, n=n, seed=seed)
    rows = cols[0][1].shape[0]
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.6 * len(cols), 1.6 * rows + 0.4), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(rows):
            ax = axes[i][j]
            img = imgs[i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    out = png_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    log.info("augmentation preview: %d samples x %d columns -> %s", rows, len(cols), out)
    return out
