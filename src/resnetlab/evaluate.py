"""Evaluate a checkpoint on a dataset split: metrics files, confusion matrices, predictions.

``collect_outputs`` runs a model over a loader (the trainer uses it for per-epoch validation
too); ``evaluate`` rebuilds the checkpoint's dataset, computes
:func:`resnetlab.metrics.classification_metrics` and writes, under ``<run>/eval/<split>/``::

    metrics.json                      every metric, plus split, checkpoint and dataset
    per_class.csv                     class, precision, recall, f1, support
    confusion_matrix.csv / .json      counts (rows = true class, columns = predicted)
    confusion_matrix_normalized.csv   row-normalized (each true class sums to 1)
    confusion_matrix.png              heat map of the counts (colour = row-normalized share)
    predictions.csv                   index, target, prediction, confidence, target_name, prediction_name[, path]
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resnetlab.checkpoint import checkpoint_identity
from resnetlab.errors import CheckpointError, ConfigError, DataError, ResnetlabError, check_int, check_output_folder
from resnetlab.metrics import classification_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from resnetlab.checkpoint import Checkpoint
    from resnetlab.data import DatasetSplits
    from resnetlab.data.loader import BatchLoader, StreamLoader

log = logging.getLogger(__name__)

__all__ = ["collect_outputs", "evaluate", "SPLITS", "run_dir_of", "load_splits_for", "resolve_device", "plot_confusion_matrix"]

SPLITS = ("test", "val", "train")


def collect_outputs(
    model: nn.Module,
    loader: BatchLoader | StreamLoader | Iterable[tuple[torch.Tensor, ...]],
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    tta_flip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` over one pass of ``loader`` and return its outputs, on the CPU.

    Batches stay on ``device`` and are concatenated there, with a single device-to-host copy
    at the end, so a GPU never waits on a per-batch sync. The model is put in eval mode and
    restored to its previous mode afterwards (the trainer calls this every epoch).

    Args:
        model: the classifier.
        loader: a :func:`resnetlab.data.build_loader` loader (``iter_epoch(0)`` yields
            ``(x, y, idx)``), or any iterable of such triples.
        device: where the model runs; default: the device of the model's parameters.
        amp_dtype: run the forward pass under ``torch.autocast`` with this dtype
            (e.g. ``torch.bfloat16``); logits are returned as float32 either way.
        tta_flip: average the logits of each image and its horizontal mirror.

    Returns:
        ``(logits (N, K) float32, targets (N,) int64, indices (N,) int64)``.

    Example:
        >>> logits, y, idx = collect_outputs(model, build_loader(splits.val, train=False))  # doctest: +SKIP
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    batches = loader.iter_epoch(0) if hasattr(loader, "iter_epoch") else iter(loader)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    logits: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            for x, y, idx in batches:
                # no-ops when the loader already put the batch on the device
                x = x.to(device, non_blocking=True)
                out = model(x).float()
                if tta_flip:
                    out = (out + model(torch.flip(x, dims=(3,))).float()) / 2
                logits.append(out)
                targets.append(torch.as_tensor(y).to(device, non_blocking=True))
                indices.append(torch.as_tensor(idx).to(device, non_blocking=True))
    finally:
        model.train(was_training)
    if not logits:
        k = int(getattr(model, "num_classes", 0))
        return torch.empty(0, k), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return (
        torch.cat(logits).cpu(),
        torch.cat(targets).to("cpu", torch.int64),
        torch.cat(indices).to("cpu", torch.int64),
    )


# -- dataset of a checkpoint ------------------------------------------------------------


def resolve_device(device: str | torch.device, local_rank: int = 0, key: str = "device") -> torch.device:
    """``"auto"`` -> CUDA device ``local_rank`` when there is one, else the CPU; other names as given.

    Raises:
        ConfigError: a name torch does not know, or CUDA asked for where there is none (one line,
            naming ``key``, the option it came from).
    """
    if str(device) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{key}: unknown device {str(device)!r} (allowed: auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={str(device)!r} but CUDA is not available here (allowed: auto, cpu)")
    return dev


def run_dir_of(checkpoint_path: str | os.PathLike) -> Path | None:
    """The run folder of a checkpoint folder ``<run>/checkpoints/<which>``, or None."""
    p = Path(checkpoint_path)
    if p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def checkpoint_suffix(checkpoint_path: str | os.PathLike) -> str:
    """The suffix of the folders evaluate and explain write for a checkpoint: ``""`` for a run's
    ``best`` (or a checkpoint outside a run: what the run's report reads), ``"-last"`` for its
    ``last`` (``eval/test-last``, ``explain-last``), beside the best one's rather than over it."""
    p = Path(checkpoint_path)
    return "" if run_dir_of(p) is None or p.name == "best" else f"-{p.name}"


def _data_config(meta: dict[str, Any]) -> dict[str, Any]:
    config = meta.get("config") or {}
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not data.get("name"):
        raise CheckpointError(
            "checkpoint metadata has no data section (config.data.name); evaluate needs it to rebuild the dataset"
        )
    return data


def load_splits_for(meta: dict[str, Any], data_root: str | os.PathLike | None = None) -> DatasetSplits:
    """Rebuild the dataset a checkpoint was trained on, from ``meta["config"]["data"]``.

    Only keys that :func:`resnetlab.data.load_dataset` accepts are passed (a config's data
    section may hold loader options too); ``data_root`` replaces the recorded root. The splits carry
    the checkpoint's mean/std (what evaluation normalizes with) instead of computing them.

    Example:
        >>> splits = load_splits_for(load_checkpoint("runs/demo").meta)  # doctest: +SKIP
    """
    from resnetlab.data import load_dataset

    cfg = run_config(meta)
    kwargs = cfg.data.load_kwargs(cfg.seed)
    name = cfg.data.name
    if name.startswith("imagefolder:"):
        # an image folder is its own root: --data-root gives its new place when it was moved (the
        # split fingerprints hold paths relative to each split, so a moved folder still matches)
        if data_root is not None:
            moved = os.path.abspath(os.path.expanduser(os.fspath(data_root)))
            log.info("image folder %s read from %s (--data-root)", name.split(":", 1)[1], moved)
            name = f"imagefolder:{moved}"
        elif not Path(name.split(":", 1)[1]).is_dir():
            raise DataError(f"image folder {name.split(':', 1)[1]!r} the run was trained on does not exist or is not a "
                            f"directory; if it moved, give its new place with --data-root")  # fmt: skip
    elif data_root is not None:
        kwargs["root"] = str(data_root)
    if isinstance(meta.get("mean"), list) and isinstance(meta.get("std"), list):
        # evaluation normalizes with the checkpoint's values: no estimate to compute (a streaming
        # folder's decodes up to 2,000 images)
        kwargs["normalization"] = (meta["mean"], meta["std"])
    log.debug("rebuilding dataset %s with %s", name, kwargs)
    return load_dataset(name, **kwargs)


def run_config(meta: dict[str, Any]):
    """The validated training config recorded in a checkpoint."""
    from resnetlab.config import config_from_dict
    from resnetlab.errors import ConfigError

    _data_config(meta)
    try:
        return config_from_dict(meta["config"], recorded=True)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint config is not valid for this resnetlab version: {exc}") from None


def _check_classes(ckpt_classes: Sequence[str], data_classes: Sequence[str], name: str) -> None:
    if list(ckpt_classes) != list(data_classes):
        raise CheckpointError(
            f"checkpoint classes ({len(ckpt_classes)}: {', '.join(map(str, ckpt_classes[:5]))}"
            f"{', ...' if len(ckpt_classes) > 5 else ''}) do not match dataset {name!r} "
            f"({len(data_classes)}: {', '.join(map(str, data_classes[:5]))}{', ...' if len(data_classes) > 5 else ''})"
        )


# -- files ------------------------------------------------------------------------------


def plot_confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """A heat map of a confusion matrix as a matplotlib Figure (Agg, no pyplot state).

    Colour is the row-normalized share so rare classes are as readable as common ones; cell
    text is the count (omitted above 30 classes, where it would not fit).

    Example:
        >>> fig = plot_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"]); fig.savefig("cm.png")  # doctest: +SKIP
    """
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    side = min(max(4.0, 0.45 * k + 2.0), 24.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    # Display colours by share; the text shows the counts.
    disp = ConfusionMatrixDisplay(share, display_labels=list(classes))
    disp.plot(ax=ax, cmap="Blues", include_values=False, colorbar=True, xticks_rotation="vertical" if k > 6 else "horizontal")
    disp.im_.set_clim(0.0, 1.0)
    fig.axes[-1].set_ylabel("share of the true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8 if k > 12 else 10,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    # surrogateescape: a file or class name that is not UTF-8 (bytes from another system's disk)
    # is written back as its own bytes, so predictions.csv's paths still open the files
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# the files write_eval_files writes into a split's folder
EVAL_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.json",
              "confusion_matrix_normalized.csv", "confusion_matrix.png", "predictions.csv")


def write_eval_files(out: Path, metrics: dict, classes: Sequence[str], logits: torch.Tensor, targets: torch.Tensor,
                     indices: torch.Tensor, paths: Sequence[str] | None, extra: dict | None = None) -> dict[str, Path]:
    """Write the evaluation files of one split into ``out``; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in EVAL_FILES}
    cm = metrics["confusion_matrix"]
    cmn = metrics["confusion_matrix_normalized"]
    _write_csv(files["per_class.csv"], ["class", "precision", "recall", "f1", "support"],
               ([r["class"], _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), r["support"]] for r in metrics["per_class"]))
    _write_csv(files["confusion_matrix.csv"], ["true\\predicted", *classes], ([c, *row] for c, row in zip(classes, cm)))
    _write_csv(files["confusion_matrix_normalized.csv"], ["true\\predicted", *classes],
               ([c, *map(_fmt, row)] for c, row in zip(classes, cmn)))
    files["confusion_matrix.json"].write_text(
        json.dumps({"classes": list(classes), "rows": "true", "columns": "predicted", "counts": cm, "normalized": cmn}, indent=1)
    )
    fig = plot_confusion_matrix(cm, classes, title=f"Confusion matrix ({extra.get('split', '') if extra else ''})".replace(" ()", ""))
    fig.savefig(files["confusion_matrix.png"])

    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(1)
    header = ["index", "target", "prediction", "confidence", "target_name", "prediction_name"] + (["path"] if paths is not None else [])
    rows = []
    for i in range(len(targets)):
        t, p = int(targets[i]), int(pred[i])
        row = [int(indices[i]), t, p, f"{float(conf[i]):.6f}", classes[t], classes[p]]
        if paths is not None:
            row.append(str(paths[int(indices[i])]))
        rows.append(row)
    _write_csv(files["predictions.csv"], header, rows)

    payload = {**(extra or {}), **metrics, "predictions": str(files["predictions.csv"])}
    # metrics.json, written last, says the split is evaluated (a study reads it so): written whole
    # or not at all, so a process killed mid-write leaves no truncated file that looks done
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, files["metrics.json"])
    return files


# -- evaluate ---------------------------------------------------------------------------


@dataclass
class SplitSource:
    """A checkpoint together with one split of the dataset it was trained on, and the exact
    evaluation preprocessing of its run (the checkpoint's mean/std, the deterministic part of
    its augmentations, flip TTA when the run used it). Shared by evaluate and explain."""

    ckpt: Any
    splits: Any
    imageset: Any
    data_name: str
    mean: list[float]
    std: list[float]
    augment: list[Any]
    tta_flip: bool
    num_workers: int = 2  # decode processes when the split streams (the run's data.num_workers)

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices`` as :meth:`loader` feeds them, before normalization: after
        the run's deterministic transforms (resize, center-crop); uint8, or float in [0, 1]."""
        from resnetlab.data.augment import build_augment

        return build_augment(self.augment, self.imageset.image_shape, train=False)(self.imageset.get(indices))

    def loader(self, batch_size: int, device):
        from resnetlab.data import build_loader

        return build_loader(self.imageset, batch_size=batch_size, train=False, augment=self.augment,
                            mean=self.mean, std=self.std, device=device, num_workers=self.num_workers)  # fmt: skip


def tta_flip_of(meta: dict[str, Any]) -> bool:
    """Whether the run's evaluation averages each image with its mirror (``train.tta_flip``).

    Checkpoint metadata holds it in the resolved config; an export's sidecar holds it as a
    top-level ``tta_flip`` key (read first).
    """
    if "tta_flip" in meta:
        return bool(meta["tta_flip"])
    return bool(((meta.get("config") or {}).get("train") or {}).get("tta_flip", False))


def open_split(checkpoint_or_run, split: str, data_root=None, splits=None, which: str = "best", purpose: str = "evaluate") -> SplitSource:
    """Load a checkpoint (or take a loaded one), rebuild its dataset and pick ``split``."""
    from resnetlab.checkpoint import Checkpoint, load_checkpoint

    ckpt = checkpoint_or_run if isinstance(checkpoint_or_run, Checkpoint) else load_checkpoint(checkpoint_or_run, which=which)
    meta = ckpt.meta
    config = meta.get("config") or {}
    if splits is None:
        splits = load_splits_for(meta, data_root)
    # the dataset read: an image folder given a new place with --data-root is named there, not where it was
    data_name = getattr(splits, "name", None) or config.get("data", {}).get("name", "?")
    _check_classes(ckpt.classes, splits.classes, data_name)
    imageset = getattr(splits, split)
    if imageset is None or len(imageset) == 0:
        hint = " (try --split test)" if split != "test" else ""
        raise ResnetlabError(f"dataset {data_name!r} has no {split!r} split to {purpose}{hint}")
    from resnetlab.data.datasets import check_held_out_split

    # refused for a held-out split (it may now hold training images), before anything is written
    change = check_held_out_split((meta.get("splits") or {}).get(split), imageset, split, f"{purpose} the {split} split")
    if change:  # the figures are then not comparable with the run's
        log.warning("%s", change)
    workers = (config.get("data") or {}).get("num_workers", 2)
    return SplitSource(
        ckpt=ckpt,
        splits=splits,
        imageset=imageset,
        data_name=data_name,
        mean=meta.get("mean") or list(splits.mean),
        std=meta.get("std") or list(splits.std),
        augment=config.get("augment") or [],
        tta_flip=tta_flip_of(meta),
        num_workers=workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0 else 2,
    )


def evaluate(
    checkpoint_or_run: str | os.PathLike | Checkpoint,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    which: str = "best",
    splits: DatasetSplits | None = None,
) -> dict:
    """Evaluate a checkpoint on one split of its dataset and write the result files.

    Args:
        checkpoint_or_run: a run folder, a checkpoint folder / weights file, or a loaded
            :class:`resnetlab.checkpoint.Checkpoint`.
        split: ``"test"``, ``"val"`` or ``"train"``.
        out_dir: where the files go; default ``<run>/eval/<split>/`` for the best checkpoint,
            ``<run>/eval/<split>-last/`` for ``which="last"`` (``<checkpoint>/eval/<split>`` for a
            checkpoint outside a run folder).
        data_root: dataset root, replacing the one recorded in the checkpoint's config.
        batch_size: images per forward pass.
        device: where the model runs (``"auto"``: CUDA when available, else CPU).
        which: ``"best"`` or ``"last"`` checkpoint of a run folder.
        splits: an already loaded :class:`DatasetSplits` to use instead of rebuilding it.

    Returns:
        The metrics dict of :func:`resnetlab.metrics.classification_metrics` plus
        ``"predictions"`` (path of predictions.csv), ``"out_dir"``, ``"split"`` and ``"checkpoint"``.

    Example:
        >>> m = evaluate("runs/demo", split="test")  # doctest: +SKIP
        >>> round(m["accuracy"], 3), m["predictions"]  # doctest: +SKIP
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_int("batch_size", batch_size, 1)
    if out_dir is not None:  # before any work: a folder of other files is refused
        check_output_folder(out_dir, lambda name: name in EVAL_FILES or name == ".metrics.json.tmp", "evaluate")
    device = resolve_device(device)
    src = open_split(checkpoint_or_run, split, data_root=data_root, splits=splits, which=which, purpose="evaluate")
    ckpt, imageset, data_name = src.ckpt, src.imageset, src.data_name
    model = ckpt.model.to(device)
    loader = src.loader(batch_size, device)
    logits, targets, indices = collect_outputs(model, loader, device, tta_flip=src.tta_flip)
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        raise ValueError(f"the model's outputs are nan or inf for {int((~finite).sum())} of {len(finite)} {split} images "
                         f"(the checkpoint's weights diverged?): there is nothing to score")  # fmt: skip
    metrics = classification_metrics(logits, targets, ckpt.classes, kind="logits")
    absent = [row["class"] for row in metrics["per_class"] if row["support"] == 0]
    if absent:  # the macro averages then hold 0 for each of them the model predicts (sklearn's rule)
        log.warning("the %s split has no images of class(es) %s: their recall is undefined, and a class the model "
                    "still predicts counts as 0 in the macro averages (precision, recall, F1; as sklearn and "
                    "torchmetrics do)", split, ", ".join(absent[:10]) + (f" ... ({len(absent) - 10} more)" if len(absent) > 10 else ""))  # fmt: skip

    if out_dir is None:
        run = run_dir_of(ckpt.path)
        # named after the checkpoint actually loaded (a checkpoints/last path, or --which last)
        out = (run if run is not None else ckpt.path) / "eval" / f"{split}{checkpoint_suffix(ckpt.path)}"
    else:
        out = Path(out_dir)
    extra = {"split": split, "checkpoint": str(ckpt.path), **checkpoint_identity(ckpt.meta), "dataset": data_name,
             "classes": list(ckpt.classes)}  # fmt: skip
    try:
        write_eval_files(out, metrics, ckpt.classes, logits, targets, indices, getattr(imageset, "paths", None), extra)
    except OSError as exc:
        raise ResnetlabError(f"cannot write evaluation results to {out}: {exc.strerror or exc}") from exc
    log.info("%s accuracy %.4f on %d images -> %s", split, metrics["accuracy"], metrics["num_samples"], out)
    return {**metrics, "predictions": str(out / "predictions.csv"), "out_dir": str(out), **extra}
