"""The training loop. The trainer owns the loop; logging, checkpointing, progress and
TensorBoard are callbacks (Lightning / fastai style).

Hot path choices (airbench): data is augmented as whole batches on the device, the loop
never calls ``.item()`` per step (loss and accuracy accumulate on the device and are read
once per logging window), the model runs channels_last, and the schedule steps per batch.

Determinism: the loader reseeds the global RNG from ``(seed, epoch, step)`` before each batch,
so a run resumed at any ``(epoch, step)`` follows the uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shlex
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab import checkpoint as ckpt
from resnetlab.config import Config, ProgressiveResizeConfig, config_difference, config_from_dict, read_yaml, save_config
from resnetlab.data.datasets import check_held_out_split, split_fingerprint
from resnetlab.errors import CheckpointError, ConfigError, DataError, ResnetlabError, TrainingDiverged
from resnetlab.evaluate import resolve_device
from resnetlab.norms import BatchInstanceNorm2d

log = logging.getLogger(__name__)

__all__ = ["Trainer", "Callback", "train", "resume", "FitResult", "METRIC_COLUMNS", "TEST_COLUMNS"]

METRIC_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "epoch_time_s",
    "images_per_s",
]
# output.test_every_epoch: the test split after every validation (curves only, never selection)
TEST_COLUMNS = ["test_loss", "test_acc"]
TIMING_COLUMNS = ("epoch_time_s", "images_per_s")
NAN_CHECK_EVERY = 25  # steps between host syncs that check the loss is finite


# ---------------------------------------------------------------------------------------
# distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
# ---------------------------------------------------------------------------------------
def dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command that resumes ``run_dir`` in this process's launch: ``resnetlab train --resume
    RUN``, or its torchrun form with as many processes (a resume on another count is refused)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = shlex.quote(str(run_dir))  # pasted into a shell: "runs/sp ace" was two arguments
    if world <= 1:
        return f"resnetlab train --resume {run_dir}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = max(1, world // max(1, local))
    where = "" if nodes == 1 else f" on each of the {nodes} nodes (the same --nnodes and rendezvous)"
    return f"torchrun --nproc_per_node={local}{'' if nodes == 1 else f' --nnodes={nodes}'} -m resnetlab train --resume {run_dir}{where}"


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _collective(lambda: torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM), [t])
    return t


def _refcounts(tensors: Sequence[torch.Tensor]) -> list[int]:
    return [sys.getrefcount(t) for t in tensors]


def _collective(op: Callable[[], Any], tensors: Sequence[torch.Tensor], timeout: float = 10.0) -> None:
    """Run ``op()``, a collective on ``tensors``, and return once gloo has let go of them.

    gloo runs a collective on a worker thread, which drops its references to the tensors just
    after ``op()`` has returned here. Dropping the last one touches the tensors' Python objects,
    which takes the GIL: a process that exits right after a collective (a rank other than 0
    after the final weights check, a stop on a signal, an error) could reach interpreter
    shutdown first, and the worker thread then aborted it ("terminate called without an active
    exception", SIGABRT instead of exit code 0; seen in CI on a busy machine). torch keeps a
    tensor's Python object referenced while C++ holds the tensor, so the Python refcounts fall
    back to what they were before ``op()`` exactly when gloo is done; sleeping between looks
    lets the worker thread take the GIL. (Written here: torch has no call that waits for it.)
    NCCL's watchdog releases its works on its own schedule: not waited for."""
    before = _refcounts(tensors)
    op()
    if torch.distributed.get_backend() != "gloo":
        return
    deadline = time.monotonic() + timeout
    while any(now > was for now, was in zip(_refcounts(tensors), before)) and time.monotonic() < deadline:
        time.sleep(0.0002)


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` from every process, in rank order (see :func:`_collective`)."""
    every = [torch.zeros_like(t) for _ in range(torch.distributed.get_world_size())]
    _collective(lambda: torch.distributed.all_gather(every, t), [t, *every])
    return every


def _all_gather_json(obj: Any, device: torch.device) -> list[Any]:
    """A JSON-serialisable ``obj`` from every process, in rank order. torch's ``all_gather_object``
    makes its tensors inside, out of :func:`_collective`'s reach; a difference these comparisons
    find is followed by an exit at once."""
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    sizes = [int(n) for n in _all_gather(torch.tensor([data.numel()], dtype=torch.int64, device=device))]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    return [json.loads(bytes(t[:n].tolist()).decode()) for t, n in zip(_all_gather(padded), sizes)]


# ---------------------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------------------
class Callback:
    """Hooks called by :class:`Trainer`. All no-ops by default."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_window_end(self, trainer: Trainer, step_in_epoch: int, loss: float, acc: float, images_per_s: float) -> None: ...
    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


class CSVLogger(Callback):
    """Appends one row per epoch to ``metrics.csv``: ``columns`` (default :data:`METRIC_COLUMNS`)."""

    def __init__(self, path: Path, columns: Sequence[str] = METRIC_COLUMNS):
        self.path = path
        self.columns = list(columns)

    def on_epoch_end(self, trainer, row):
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in self.columns})


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class LogLines(Callback):
    """One log line per epoch; a tqdm bar with live loss / accuracy / images/s on a terminal."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.bar = None

    def on_epoch_start(self, trainer, epoch):
        if self.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch + 1}/{trainer.epochs}", leave=False, file=sys.stderr)
            self.bar.update(trainer.start_step)

    def on_window_end(self, trainer, step_in_epoch, loss, acc, images_per_s):
        if self.bar is not None:
            self.bar.n = step_in_epoch
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", img_s=f"{images_per_s:.0f}")
            self.bar.refresh()

    def on_epoch_end(self, trainer, row):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}" if row.get("val_acc") is not None else ""
        if row.get("test_acc") is not None:
            val += f"  test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f}"
        log.info(
            "epoch %d/%d  lr %.4g  train_loss %.4f  train_acc %.4f%s  %.1fs  %.0f img/s",
            row["epoch"], trainer.epochs, row["lr"], row["train_loss"], row["train_acc"], val,
            row["epoch_time_s"], row["images_per_s"],
        )  # fmt: skip


class TensorBoardLogger(Callback):
    """Epoch scalars for TensorBoard in ``logdir``.

    The writer (which creates ``logdir`` and its event file) opens when the fit starts, not here:
    ``train(..., overwrite=True)`` removes the old run's outputs, ``tensorboard/`` among them,
    after the trainer is built, and would delete a file opened now from under the writer.
    """

    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter  # ImportError here: no tensorboard, no logger

        self._writer_cls = SummaryWriter
        self.logdir = logdir
        self.writer = None

    def on_fit_start(self, trainer):
        self.writer = self._writer_cls(str(self.logdir))

    def on_epoch_end(self, trainer, row):
        for k in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", *TEST_COLUMNS, "images_per_s"):
            if row.get(k) is not None:
                self.writer.add_scalar(k, row[k], row["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer):
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------
@dataclass
class FitResult:
    run_dir: Path
    best_val_acc: float | None
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, Any] | None = None
    train_metrics: dict[str, Any] | None = None  # the best checkpoint on the training split (output.evaluate_train)
    interrupted: bool = False
    signal: int | None = None  # the signal that interrupted it (SIGINT, SIGTERM)


class _Interrupted(Exception):
    pass


def process_device(spec: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device this process trains on (``train.device``), made the current CUDA device, with
    cuDNN's autotuner on.

    Under torchrun with CUDA each process takes ``cuda:LOCAL_RANK`` (for ``auto`` and ``cuda``);
    an explicit ``cuda:N`` would put every process on one GPU and is refused. The current device
    matters beyond the model: NCCL collectives, ``torch.cuda.manual_seed`` and pinned-memory
    threads all use it.
    """
    dev = resolve_device(spec, local_rank, key="train.device")
    if dev.type != "cuda":
        return dev
    if world_size > 1:
        if str(spec) not in ("auto", "cuda"):
            raise ConfigError(
                f"train.device={spec!r} would put all {world_size} processes on one GPU; under torchrun use "
                "auto or cuda (process k takes cuda:LOCAL_RANK) and pick the GPUs with CUDA_VISIBLE_DEVICES"
            )
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:  # else CUDA's own "invalid device ordinal", naming nothing
            raise ConfigError(
                f"train.device={spec!r}: process with local rank {local_rank} needs GPU cuda:{local_rank} but "
                f"{n_gpus} GPU(s) are visible here; start at most {n_gpus} processes per node "
                "(torchrun --nproc_per_node) or train on the CPU with train.device=cpu"
            )
        dev = torch.device("cuda", local_rank)
    elif dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True  # training shapes repeat: let cuDNN time and pick its fastest kernels
    return dev


class Trainer:
    """The training loop of a run: the model, data, optimizer and schedule of a
    :class:`~resnetlab.config.Config`, fitted into ``run_dir`` (``checkpoints/``, ``metrics.csv``).

    It is the part of the main job that trains. :func:`train` is the whole job, and what most
    callers want: it also writes ``config.yaml`` (which makes the folder resumable with
    :func:`resume`), evaluates on the test split, builds the report, and puts the process's
    thread count back afterwards (the Trainer sets ``train.num_threads`` for the process).

    Args:
        cfg: the resolved config.
        run_dir: the run folder (created; must not hold another run unless resuming).
        progress: show a progress bar (defaults to "stderr is a terminal").
        callbacks: extra callbacks.
        normalization: ``(mean, std)`` to normalize with instead of the dataset's (or the
            pretrained source's): a resume's, from its checkpoint.
        pretrained: load ``cfg.model.pretrained`` into the new model; False for a resume, whose
            checkpoint holds the weights (the source may be gone or not cached on this machine).

    Example:
        >>> from resnetlab.config import load_config
        >>> cfg = load_config(None, ["model.name=resnet8", "train.epochs=1"])  # doctest: +SKIP
        >>> Trainer(cfg, "runs/x").fit()  # doctest: +SKIP
        >>> train(cfg, "runs/y")  # the whole job  # doctest: +SKIP
    """

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, progress: bool | None = None, callbacks: Sequence[Callback] = (),
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None, pretrained: bool = True):  # fmt: skip
        from resnetlab.data import build_loader, load_dataset, output_shape
        from resnetlab.data.loader import eval_batch_size
        from resnetlab.data.augment import eval_transforms
        from resnetlab.models import create_model
        from resnetlab.optim import build_optimizer, build_scheduler

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, local_rank = dist_info()
        self.is_main = self.rank == 0
        self.device = process_device(cfg.train.device, local_rank, self.world_size)
        self._init_distributed()
        if self.device.type == "cpu" and cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.tune_malloc:
            from resnetlab.runtime import tune_malloc

            tune_malloc()  # host-side buffers on CUDA too (the data pipeline, metrics)
        torch.manual_seed(cfg.seed)
        if cfg.model.freeze_until is not None:  # a bad name fails now, not after the data has loaded
            from resnetlab.transfer import freeze_prefixes

            with torch.device("meta"):
                layout = create_model(cfg.model.name, **cfg.model.arch_args(num_classes=2, in_channels=3))
            try:
                freeze_prefixes(layout, cfg.model.freeze_until)
            except ValueError as exc:
                raise ConfigError(f"model.freeze_until: {exc}") from None

        # data -------------------------------------------------------------------------
        d = cfg.data
        if cfg.model.pretrained and pretrained:
            from resnetlab.transfer import check_pretrained_source

            # weights that cannot be had fail now, not after a folder of photos took minutes to load
            check_pretrained_source(cfg.model.pretrained, arch=cfg.model.name, data_root=d.root)
        # a resume's normalization is its checkpoint's: nothing to compute (a streaming folder's
        # estimate decodes up to 2,000 images)
        self.splits = self._load_in_turns(lambda: load_dataset(d.name, **d.load_kwargs(cfg.seed), normalization=normalization), local_rank)
        s = self.splits
        # image folders: which files each split holds, recorded in every checkpoint (computed once:
        # a digest of every path, which a large folder would otherwise pay at each save)
        self.split_fingerprints = {k: split_fingerprint(getattr(s, k)) for k in ("train", "val", "test")}
        self._check_same_data()
        self.classes = list(s.classes)
        self.mean, self.std = list(s.mean), list(s.std)
        pre = None
        if cfg.model.pretrained:
            from resnetlab.transfer import pretrained_preprocessing

            pre = pretrained_preprocessing(cfg.model.pretrained, arch=cfg.model.name)
        if pre and pre.get("mean") and len(pre["mean"]) == 1 < s.image_shape[0]:
            # a grayscale source for a colour model: its stem was tiled over the channels, so each
            # channel gets the source's normalization
            pre = {**pre, "mean": list(pre["mean"]) * s.image_shape[0], "std": list(pre["std"]) * s.image_shape[0]}
        if pre and pre.get("mean") and len(pre["mean"]) == s.image_shape[0]:
            self.mean, self.std = list(pre["mean"]), list(pre["std"])
        if normalization is not None and all(len(v) == s.image_shape[0] for v in normalization):
            # a resume goes on with what its weights were trained with: the dataset's estimate can
            # differ (a folder that streams now and did not then: from 2,000 images, not all)
            self.mean, self.std = [float(v) for v in normalization[0]], [float(v) for v in normalization[1]]
        bs = cfg.train.batch_size
        if bs > len(s.train):
            raise ConfigError(f"train.batch_size={bs} is larger than the training split ({len(s.train)} images); lower it")
        if bs > len(s.train) // self.world_size:  # each process drops its last partial batch
            raise ConfigError(f"train.batch_size={bs} per process is larger than each of the {self.world_size} processes' "
                              f"share of the training split ({len(s.train) // self.world_size} images); lower it")  # fmt: skip
        common = dict(mean=self.mean, std=self.std, device=self.device, seed=cfg.seed, channels_last=cfg.train.channels_last,
                      num_workers=d.num_workers)  # fmt: skip
        self.train_loader = build_loader(
            s.train, bs, train=True, augment=cfg.augment, rank=self.rank, world_size=self.world_size, **common
        )
        # Evaluation applies the deterministic part of the augmentations (resize, center crop).
        # Under torchrun each process scores its own share of an evaluation split (arange(n)[rank::
        # world_size]: every image once, no padding) and validate() sums the counts over them.
        shard = dict(rank=self.rank, world_size=self.world_size)
        ebs = eval_batch_size(s.image_shape, bs)  # 256 images, fewer when large (memory)
        self.val_loader = build_loader(s.val, ebs, train=False, augment=cfg.augment, **shard, **common) if len(s.val) else None
        # the test split after every validation: curves for the report, never a selection
        self.test_loader = None
        if cfg.output.test_every_epoch and len(s.test):
            self.test_loader = build_loader(s.test, ebs, train=False, augment=cfg.augment, **shard, **common)
        self.input_size = list(output_shape(cfg.augment, s.image_shape, train=False))
        self.train_shape = tuple(output_shape(cfg.augment, s.image_shape, train=True))
        if list(self.train_shape) != self.input_size and self.is_main:
            h, w = self.train_shape[1:]
            # larger than the images (a crop of the padded image): a center crop cannot reach it
            fix = f"center-crop:size={h} (or resize)" if h <= self.input_size[1] and w <= self.input_size[2] else f"resize:size={h}"
            log.warning("training images are %dx%d (a crop / random-resized-crop size) but evaluation sees %dx%d; "
                        "add %s to the augmentations to evaluate at the training size",
                        h, w, self.input_size[1], self.input_size[2], fix)  # fmt: skip
        src_size = list((pre or {}).get("input_size") or [])[1:]
        if src_size and src_size != self.input_size[1:] and self.is_main:
            # the mean/std are carried over from the source, the image size is the dataset's
            log.warning("the pretrained weights %s were trained on %dx%d images, this run evaluates at %dx%d; "
                        "set data.image_size (or a resize augmentation) to match if that is not intended",
                        cfg.model.pretrained, *src_size, *self.input_size[1:])  # fmt: skip
        pr = cfg.train.progressive_resize
        if pr and pr.start_size >= self.train_shape[1]:
            raise ConfigError(
                f"train.progressive_resize.start_size={pr.start_size} must be smaller than the training images' height ({self.train_shape[1]})"
            )
        # what predict / export need to reproduce evaluation's geometry on arbitrary files: the
        # size the dataset stores images at, then the deterministic transforms (resize, center-crop)
        self.data_shape = list(s.image_shape)
        # images per class in each split, for the report (an imbalanced folder is read there)
        self.class_counts = {k: torch.bincount(getattr(s, k).targets, minlength=len(s.classes)).tolist()
                             for k in ("train", "val", "test")}  # fmt: skip
        self.eval_transforms = eval_transforms(cfg.augment)

        # model ------------------------------------------------------------------------
        arch_args = cfg.model.arch_args(num_classes=len(self.classes), in_channels=s.image_shape[0])
        self.model = create_model(cfg.model.name, **arch_args)
        self.arch_args = arch_args
        self.pretrained_report = None
        if cfg.model.pretrained and pretrained:
            from resnetlab.transfer import load_pretrained

            self.pretrained_report = load_pretrained(self.model, cfg.model.pretrained, data_root=d.root, classes=self.classes)
        self.model.to(self.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if cfg.train.ema:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(self.model, multi_avg_fn=_ema_update(cfg.train.ema), use_buffers=True)
        # DDP only reduces the gradients of parameters that were trainable when it was built:
        # wrap first, freeze after, so a body unfrozen after head_only_epochs stays in sync
        self.net = self._wrap(self.model)
        self._apply_freeze(epoch=0)

        # optimization -------------------------------------------------------------------
        self.steps_per_epoch = len(self.train_loader)
        if cfg.train.iterations:
            self.total_steps = cfg.train.iterations
            self.epochs = math.ceil(cfg.train.iterations / self.steps_per_epoch)
        else:
            self.epochs = cfg.train.epochs
            self.total_steps = self.epochs * self.steps_per_epoch
        if cfg.train.progressive_resize and self.epochs < 2:
            raise ConfigError(f"train.progressive_resize needs at least 2 epochs (the last one trains at full size), "
                              f"this run has {self.epochs}; remove it or train longer")  # fmt: skip
        if cfg.train.head_only_epochs >= self.epochs:
            last_stage = (list(getattr(self.model, "stage_names", None) or []) or ["layer4"])[-1]  # CIFAR models end at layer3
            raise ConfigError(
                f"train.head_only_epochs={cfg.train.head_only_epochs} leaves no epoch to train the whole network "
                f"(this run has {self.epochs}); use fewer head-only epochs, or model.freeze_until={last_stage} to train only the head"
            )
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.total_steps, self.steps_per_epoch, cfg.optim.lr)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.autocast_dtype = self._amp_dtype()
        if self.is_main:
            self._log_amp()
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

        # state --------------------------------------------------------------------------
        self.epoch = 0  # epochs completed
        self.start_step = 0  # steps of the current epoch already done (mid-epoch resume)
        self.global_step = 0
        self.best_val_acc: float | None = None
        self.history: list[dict[str, Any]] = []
        self._partial: dict[str, float] | None = None
        self._stop_signal: int | None = None

        progress = sys.stderr.isatty() if progress is None else progress
        self.callbacks: list[Callback] = []
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            columns = METRIC_COLUMNS + (TEST_COLUMNS if self.test_loader is not None else [])
            self.callbacks += [CSVLogger(self.run_dir / "metrics.csv", columns), LogLines(progress)]
            if cfg.output.tensorboard:
                with contextlib.suppress(ImportError):
                    self.callbacks.append(TensorBoardLogger(self.run_dir / "tensorboard"))
        self.callbacks += list(callbacks)

    # -- setup helpers -----------------------------------------------------------------
    def _init_distributed(self) -> None:
        self._owns_group = False  # a group the caller set up is the caller's to take down
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            self._owns_group = True
        if self.world_size > 1:
            # Every process must train the same run: a different seed shards and splits the data
            # differently (overlapping shards, one rank's validation images in another's training),
            # a different batch size deadlocks the collectives, a different lr ends in weights
            # that differ. Compared once, here, so the error names the key before any step.
            mine = self.cfg.model_dump(mode="json")
            every = _all_gather_json(mine, self.device)
            # what may differ between machines: where the data lives, threads, what rank 0 writes
            # (not data.stream_threshold_gb: a node that streams where another holds the images may
            # split and normalize them differently)
            per_node = (*(k for k in RESUME_MAY_CHANGE if k != "data.stream_threshold_gb"), "data.root")
            for rank, theirs in enumerate(every):
                diff = config_difference(every[0], theirs, ignore=per_node, labels=("rank 0", f"rank {rank}"))
                if diff:
                    # every process finds the same difference and stops here; the group is taken
                    # down first, else gloo's threads abort the process at exit ("terminate called
                    # without an active exception") and the exit code is not the error's 2
                    self.leave_process_group()
                    raise ConfigError(f"the torchrun processes were started with different configs ({diff}); "
                                      f"start every process (on every node) with the same command and config")  # fmt: skip

    def _check_same_data(self) -> None:
        """Every process must have loaded the same splits. ``data.root`` may differ between nodes
        (and a relative image-folder path is read from each node's working folder): a copy with
        one file more or less gave the ranks other splits and another number of steps per epoch,
        and the collectives then waited for a step that one rank never took."""
        if self.world_size == 1:
            return
        s = self.splits
        mine = {"classes": list(s.classes), "image_shape": list(s.image_shape),
                **{k: len(getattr(s, k)) for k in ("train", "val", "test")}, "files": self.split_fingerprints}  # fmt: skip
        every = _all_gather_json(mine, self.device)
        for rank, theirs in enumerate(every):
            diff = next((k for k in mine if theirs[k] != every[0][k]), None)
            if diff is None:
                continue
            what = {"classes": "class list", "image_shape": "image shape", "files": "files"}.get(diff, f"{diff} split")
            shown = (f"{every[0][diff]} images (rank 0) vs {theirs[diff]} (rank {rank})" if diff in ("train", "val", "test")
                     else f"rank 0 and rank {rank} differ")  # fmt: skip
            self.leave_process_group()  # every process finds the same difference; the exit code stays the error's
            raise DataError(f"the torchrun processes loaded different data ({what}: {shown}); give every node the same "
                            f"copy of {self.cfg.data.name} (data.root and a relative image-folder path are read on each node)")  # fmt: skip

    def _load_in_turns(self, load: Callable[[], Any], local_rank: int) -> Any:
        """``load()`` on every process; with ``data.download`` not all at once.

        torchvision downloads into a fixed file name and unpacks beside it: the processes of one
        node fetching into one data root at once overwrote each other's archive (a checksum
        error) or read a half-unpacked folder. Rank 0 goes first; then the first process of
        every other node (its own disk, or nothing left to fetch on a shared one); then the rest,
        which find the files there. A process that fails lets the others go on to their turn,
        then every process stops (the one that failed with its own error)."""
        if self.world_size == 1 or not self.cfg.data.download:
            return load()
        result, error = None, None
        for turn in (self.rank == 0, self.rank != 0 and local_rank == 0, local_rank != 0):
            if turn:
                try:
                    result = load()
                except Exception as exc:  # noqa: BLE001 - re-raised below, after the others' turn ended
                    error = exc
            failed = torch.tensor([0.0 if error is None else 1.0], device=self.device)
            _collective(lambda: torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX), [failed])
            if failed.item() > 0:
                self.leave_process_group()  # the exit code stays the error's (see _init_distributed)
                if error is not None:
                    raise error
                raise DataError("another torchrun process could not load the dataset (see its error); nothing was trained")
        return result

    def leave_process_group(self) -> None:
        """Take down the process group this trainer joined (none to leave: nothing happens).

        Called when no collective follows: the ranks other than 0 may then exit while rank 0
        evaluates and reports, and no process is left to wait in a collective that times out."""
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.world_size > 1:
            if self.cfg.train.sync_bn:
                from resnetlab.norms import enable_sync_batch_stats

                if self.device.type == "cuda":
                    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # torch's layers (bn-torch)
                # the hand-written bn / bin; on CPU also torch's, as nn.SyncBatchNorm is GPU-only
                n = enable_sync_batch_stats(net, replace_torch=self.device.type != "cuda")
                if self.is_main:
                    log.info("sync_bn: batch statistics over %d processes in %d layers", self.world_size, n)
            ids = [self.device.index] if self.device.type == "cuda" else None
            freezes = self.cfg.model.freeze_until is not None or self.cfg.train.head_only_epochs > 0
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=freezes)
        elif self.cfg.train.sync_bn:  # one process: its batch statistics are already all there is
            log.info("train.sync_bn has no effect on one process (it shares batch statistics between torchrun processes)")
        if self.cfg.train.compile:
            net = torch.compile(net)
        return net

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.train.amp
        if amp == "off":
            return None
        if self.device.type != "cuda":
            # The CPU trains in fp32 unless asked for bf16 on a CPU with bf16 units: without them
            # bf16 autocast runs emulated kernels, slower than fp32. auto stays fp32 on the CPU
            # (the fp32 result is the one a user of the CPU expects to reproduce elsewhere).
            from resnetlab.runtime import cpu_has_bf16

            return torch.bfloat16 if amp == "bf16" and self.device.type == "cpu" and cpu_has_bf16() else None
        if amp == "fp16":
            return torch.float16
        # auto: bf16 where the GPU has bf16 tensor cores (compute capability 8.0, Ampere, and
        # later); fp16 with loss scaling before (torch.cuda.is_bf16_supported() says yes there
        # too, through emulation, which is slow)
        if amp == "bf16" or torch.cuda.get_device_capability(self.device)[0] >= 8:
            return torch.bfloat16
        return torch.float16

    def _log_amp(self) -> None:
        amp, where = self.cfg.train.amp, self.device.type
        if self.autocast_dtype is not None and where == "cpu":
            log.info("train.amp=bf16: training under bf16 autocast on the CPU (it has bf16 units); validation and test run in fp32")
        elif amp == "bf16" and self.autocast_dtype is None and where == "cpu":
            log.warning("train.amp=bf16: this CPU has no bf16 units (AVX512_BF16, AMX or ARM BF16), where bf16 autocast "
                        "runs slower than fp32; this run trains in fp32 (set train.amp=auto or off to silence this)")  # fmt: skip
        elif amp in ("bf16", "fp16") and self.autocast_dtype is None:
            scope = "CUDA only" if amp == "fp16" else "CUDA and on CPUs with bf16 units only"
            log.warning("train.amp=%s applies on %s; on %s this run trains in fp32 (set train.amp=auto or off to silence this)",
                        amp, scope, where)  # fmt: skip

    def _apply_freeze(self, epoch: int) -> None:
        cfg = self.cfg
        if not (cfg.train.head_only_epochs or cfg.model.freeze_until is not None):
            return
        from resnetlab import transfer

        transfer.unfreeze(self.model)
        if epoch < cfg.train.head_only_epochs:
            transfer.freeze_all_but_head(self.model)
        elif cfg.model.freeze_until is not None:
            transfer.freeze(self.model, cfg.model.freeze_until)

    # -- checkpointing -----------------------------------------------------------------
    def meta(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "arch": self.cfg.model.name,
            "arch_args": self.arch_args,
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
            "input_size": self.input_size,
            "data_shape": self.data_shape,
            "eval_transforms": self.eval_transforms,
            "config": self.cfg.model_dump(mode="json"),
            "metrics": metrics or {},
            "epoch": self.epoch,
            "step": self.global_step,
            "dataset": self.splits.name if hasattr(self.splits, "name") else self.cfg.data.name,
            # the step counters, schedule length and data shards are per process: a resume needs as many
            "world_size": self.world_size,
            # image folders: which files each split held (evaluate and --resume say when the folder changed)
            "splits": self.split_fingerprints,
            "class_counts": self.class_counts,  # {split: images per class}
        }

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        scheduler = self.scheduler.state_dict()
        # torch < 2.4 (torch>=2.3 is allowed): OneCycleLR's state holds its anneal function, a bound
        # method that pickles the scheduler and optimizer with it and that torch.load(weights_only=True)
        # refuses, so --resume of a onecycle run failed. The scheduler rebuilt from the config has
        # it already (its load_state_dict only updates __dict__); torch >= 2.4 saves a string instead.
        scheduler.pop("anneal_func", None)
        state = {
            "epoch": self.epoch,
            "start_step": self.start_step,
            "global_step": self.global_step,
            "best_val_acc": self.best_val_acc,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng_cpu": torch.get_rng_state(),
            "partial": self._partial,
        }
        if self.ema is not None:
            state["model"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            # AveragedModel copies the live weights when its count is 0: the count must survive a resume
            state["ema_n_averaged"] = self.ema.n_averaged.detach().cpu().clone()
        return state

    def save_last(self) -> None:
        if not self.is_main:
            return
        metrics = self.history[-1] if self.history else {}
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "last", self._eval_model(), self.meta(metrics), self.state())

    def save_best(self, row: dict[str, Any]) -> None:
        if self.is_main:
            ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best", self._eval_model(), self.meta(row), keep_previous=False)

    def load_state(self, directory: Path) -> None:
        """Restore model, optimizer, scheduler, RNG and counters from a ``last`` checkpoint.

        Raises:
            CheckpointError: the checkpoint is unreadable, unsafe or from another run
                (a state that loads but lacks keys or does not fit the optimizer).
        """
        meta = ckpt.load_meta(directory)  # evaluate/predict need it: a broken meta.json is a broken checkpoint
        for split, recorded in (meta.get("splits") or {}).items():
            # a held-out split that changed is refused: the resumed run would train on some of it
            change = check_held_out_split(recorded, getattr(self.splits, split, None), split, "resume the run")
            if change and self.is_main:
                log.warning("resuming on a changed dataset: %s", change)
        state = ckpt.load_trainer_state(directory)
        weights = ckpt.load_weights(directory)
        try:
            self._restore(state, weights, directory)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            # A weights_only pickle can still hold the wrong things (another tool's file, an
            # edited dict): name the folder instead of surfacing a bare KeyError.
            raise CheckpointError(f"trainer state in {directory} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc

    def _restore(self, state: dict[str, Any], weights: dict[str, torch.Tensor], directory: Path) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"expected a dict, got {type(state).__name__}")
        if self.ema is not None:
            self.ema.module.load_state_dict(weights)
            self.model.load_state_dict(state["model"])
            # checkpoints from before the count was saved hold an average of >= 1 update
            self.ema.n_averaged.copy_(state.get("ema_n_averaged", torch.tensor(1)))
        else:
            ckpt.load_state_dict_checked(self.model, weights, str(directory))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.epoch = int(state["epoch"])
        self.start_step = int(state["start_step"])
        self.global_step = int(state["global_step"])
        self.best_val_acc = state["best_val_acc"]
        self._partial = state.get("partial")
        self._apply_freeze(self.epoch)

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, loader=None) -> tuple[float | None, float | None]:
        """Loss and accuracy of the evaluated weights (EMA if on, flip TTA if on) on the
        validation split, or on ``loader`` (the test split's, for ``output.test_every_epoch``).
        Under torchrun a collective: each process scores its loader's shard, the sums are reduced."""
        loader = self.val_loader if loader is None else loader
        if loader is None:
            return None, None
        from resnetlab.evaluate import collect_outputs
        from resnetlab.runtime import release_free_memory

        release_free_memory()  # the training steps' kept buffers do not fit evaluation's batch

        tta = self.cfg.train.tta_flip
        logits, targets, _ = collect_outputs(self._eval_model(), loader, self.device, tta_flip=tta)
        if self.world_size == 1:
            loss = F.cross_entropy(logits.float(), targets).item()
            acc = int((logits.argmax(1) == targets).sum()) / max(len(targets), 1)  # exact: 1/6 is 0.1666..., not float32's
            return loss, acc
        # this process's share (possibly empty: fewer images than processes): sums, in float64,
        # over every process; each rank's weights are the same, so the result is one model's score
        sums = torch.tensor([F.cross_entropy(logits.double(), targets, reduction="sum").item() if len(targets) else 0.0,
                             float((logits.argmax(1) == targets).sum()), float(len(targets))],
                            dtype=torch.float64, device=self.device)  # fmt: skip
        sums = _all_reduce_sum(sums)
        return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()

    # -- the loop ----------------------------------------------------------------------
    def _install_signal_handlers(self):
        previous = {}

        def handler(signum, frame):
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                previous[sig] = signal.signal(sig, handler)
        return previous

    def fit(self) -> FitResult:
        previous = self._install_signal_handlers()
        interrupted = False
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            # an epoch saved mid-way after the run's last step (a signal then) still has its end to
            # do: the row, the validation and the checkpoints
            while self.epoch < self.epochs and (self.global_step < self.total_steps or self.start_step > 0):
                self._stop_if_signalled()  # one that came during the last epoch's validation or save
                self._train_epoch()
            self._stop_if_signalled()
        except _Interrupted:
            interrupted = True
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
        if not interrupted:
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return FitResult(self.run_dir, self.best_val_acc, self.epoch, self.history, interrupted=interrupted,
                         signal=self._stop_signal if interrupted else None)

    def _stop_agreed(self, collective: bool = True) -> bool:
        """Whether to stop now. One process: its own signal flag. Several: only where ``collective``
        (every rank reaches that point at the same step), true if any rank was signalled; a rank
        that was not takes the signal of the rank that was (the highest number, if several were:
        SIGTERM over SIGINT), so rank 0 names the signal that stopped the job."""
        if self.world_size == 1:
            return self._stop_signal is not None
        if not collective:
            return False
        flag = torch.tensor([float(self._stop_signal or 0)], device=self.device)
        _collective(lambda: torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX), [flag])
        got = int(flag.item())
        if got > 0 and self._stop_signal is None:
            self._stop_signal = got
        return got > 0

    def _stop_if_signalled(self) -> None:
        """Between epochs (``last`` holds the finished epoch): stop on a signal that came after the
        step loop's own check, during validation or the checkpoint write. After the last epoch
        that skips the test evaluation and the report, which ``--resume`` then writes."""
        if not self._stop_agreed():
            return
        name = signal.Signals(self._stop_signal).name
        last = self.run_dir / "checkpoints" / "last"
        if not self.is_main:
            raise _Interrupted()
        if self.epoch >= self.epochs or self.global_step >= self.total_steps:
            log.warning("%s received: training finished and %s is saved; the test evaluation and report were skipped: "
                        "%s writes them", name, last, resume_command(self.run_dir))  # fmt: skip
        else:
            log.warning("%s received: saved %s at the end of epoch %d; resume with: %s",
                        name, last, self.epoch, resume_command(self.run_dir))  # fmt: skip
        raise _Interrupted()

    def _train_epoch(self) -> None:
        epoch = self.epoch
        model, net, opt, sched = self.model, self.net, self.optimizer, self.scheduler
        model.train()
        if self.cfg.train.head_only_epochs or self.cfg.model.freeze_until is not None:
            from resnetlab.transfer import set_frozen_norms_eval

            if epoch == self.cfg.train.head_only_epochs > 0 and self.start_step == 0:
                self._apply_freeze(epoch)  # the head-only phase is over (epoch 0's freeze is __init__'s)
            set_frozen_norms_eval(model)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch)

        dev = self.device
        # Running sums live on the device: read once per window, never per step.
        p = self._partial or {}
        # the saved partial sums are over all processes: rank 0 carries them, the others start at 0,
        # and the epoch-end all-reduce adds everything once
        own = p if self.rank == 0 else {}
        loss_sum = torch.tensor(own.get("loss_sum", 0.0), device=dev, dtype=torch.float64)
        correct = torch.tensor(own.get("correct", 0.0), device=dev, dtype=torch.float64)
        seen = int(own.get("seen", 0))
        elapsed_before = float(p.get("elapsed", 0.0))
        window_losses = torch.zeros(NAN_CHECK_EVERY, device=dev)

        def totals() -> torch.Tensor:  # (loss sum, correct, images) over every process
            return _all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=dev, dtype=torch.float64)]))

        clip = self.cfg.train.grad_clip
        clip_value = self.cfg.train.grad_clip_mode == "value"
        bin_norms = [m for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]
        amp = torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        size = progressive_size(epoch, self.epochs, self.train_shape[1:], self.cfg.train.progressive_resize)
        if size is not None:
            log.info("epoch %d: progressive resizing, training at %dx%d", epoch + 1, *size)
        t0 = time.perf_counter()
        step = self.start_step
        # the lr of the epoch's last step so far: a resume saved after that last step has no step
        # left to take, and the optimizer's lr is then the next epoch's first
        step_lr = float(p.get("lr", _head_lr(opt)))
        done = self.global_step >= self.total_steps  # resumed after the run's last step: only the epoch's end is left
        for x, y, _ in () if done else self.train_loader.iter_epoch(epoch, start_step=self.start_step):
            if size is not None:
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            with amp:
                out = net(x)
                loss = self.criterion(out, y)
            opt.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(opt)
            else:
                loss.backward()
            if clip:
                params = [q for q in model.parameters() if q.grad is not None]
                if clip_value:
                    nn.utils.clip_grad_value_(params, clip)
                else:
                    nn.utils.clip_grad_norm_(params, clip, foreach=True)
            if self.scaler:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            step_lr = _head_lr(opt)  # the lr this step used (a Python float: no sync)
            sched.step()
            for m in bin_norms:  # keep Batch-Instance Norm gates in [0, 1]
                m.clamp_()
            if self.ema is not None:
                self.ema.update_parameters(model)
            ld = loss.detach()
            window_losses[step % NAN_CHECK_EVERY] = ld
            loss_sum += ld.double() * y.shape[0]
            correct += (out.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            step += 1
            self.global_step += 1
            window_end = step % NAN_CHECK_EVERY == 0 or step == self.steps_per_epoch
            if window_end:
                self._check_finite(window_losses, step, epoch)
                elapsed = elapsed_before + time.perf_counter() - t0
                for cb in self.callbacks:
                    cb.on_window_end(self, step, (loss_sum / max(seen, 1)).item(), (correct / max(seen, 1)).item(), seen / max(elapsed, 1e-9))
            # One process checks its signal flag every step; several agree on it at window ends
            # (a collective), so they all stop after the same step and rank 0's save is the state of all.
            if self._stop_agreed(window_end):
                sums = totals()
                self._partial = {"loss_sum": sums[0].item(), "correct": sums[1].item(), "seen": int(sums[2].item()),
                                 "elapsed": elapsed_before + time.perf_counter() - t0, "lr": step_lr}  # fmt: skip
                self.start_step = step
                self._check_finite(window_losses, step, epoch)
                self.save_last()
                if self.is_main:
                    name = signal.Signals(self._stop_signal).name
                    log.warning("%s received: saved %s at epoch %d step %d; resume with: %s",
                                name, self.run_dir / "checkpoints" / "last", epoch + 1, step, resume_command(self.run_dir))  # fmt: skip
                raise _Interrupted()
            if self.global_step >= self.total_steps:
                break
        self._check_finite(window_losses, step, epoch)

        # epoch end: reduce across ranks, validate, log, checkpoint ------------------------
        self._sync_buffers()
        sums = totals()
        elapsed = elapsed_before + time.perf_counter() - t0
        self.epoch = epoch + 1
        self.start_step = 0
        self._partial = None
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.global_step,
            "lr": step_lr,  # the head's learning rate (optim.lr on the schedule) in the epoch's last step
            "train_loss": (sums[0] / sums[2]).item(),
            "train_acc": (sums[1] / sums[2]).item(),
            "val_loss": None,
            "val_acc": None,
            "epoch_time_s": elapsed,
            "images_per_s": sums[2].item() / max(elapsed, 1e-9),
        }
        last_epoch = self.epoch >= self.epochs or self.global_step >= self.total_steps
        if self.epoch % self.cfg.train.eval_every == 0 or last_epoch:
            row["val_loss"], row["val_acc"] = self.validate()
            if row["val_loss"] is not None and not math.isfinite(row["val_loss"]):  # the same on every rank (reduced)
                self._diverged(f"validation loss became {row['val_loss']} at epoch {self.epoch} (training loss "
                               f"{row['train_loss']:.3g}): the model's outputs overflowed")  # fmt: skip
            if self.test_loader is not None:  # a curve only: the checkpoint is chosen on val_acc below
                row["test_loss"], row["test_acc"] = self.validate(self.test_loader)
        self.history.append(row)
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        improved = row["val_acc"] is not None and (self.best_val_acc is None or row["val_acc"] > self.best_val_acc)
        if improved:
            self.best_val_acc = row["val_acc"]
        if self.val_loader is None and last_epoch:
            improved = True  # no validation split: the final weights are the "best"
        self.save_last()
        if improved:
            self.save_best(row)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's norm statistics (DDP only broadcasts them at the next forward),
        so validation and the saved checkpoint are the same on all ranks. The EMA's too: it
        averages the statistics each rank's own forward passes left (rank 0's are what is saved),
        and every rank scores its share of the validation split with it."""
        if self.world_size > 1:
            buffers = [*self.model.buffers(), *(self.ema.buffers() if self.ema is not None else ())]
            for buf in buffers:
                _collective(lambda buf=buf: torch.distributed.broadcast(buf, src=0), [buf])

    def _check_finite(self, window_losses: torch.Tensor, step: int, epoch: int) -> None:
        finite = torch.isfinite(window_losses)
        if bool(finite.all()):
            return
        # the first bad step inside the window that ended at `step`
        n = (step - 1) % NAN_CHECK_EVERY + 1
        bad = [i for i in range(n) if not bool(finite[i])]
        bad_step = step - n + bad[0] + 1 if bad else step
        self._diverged(f"loss became {window_losses[bad[0] if bad else 0].item()} at epoch {epoch + 1} step {bad_step}")

    def _diverged(self, what: str) -> None:
        last = self.run_dir / "checkpoints" / "last"
        where = f"the last good checkpoint is {last}" if last.is_dir() else "no checkpoint was saved before it"
        raise TrainingDiverged(f"{what}; lower the learning rate (optim.lr={self.cfg.optim.lr}) or set train.grad_clip; {where}")


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """EMA of float weights and norm statistics (``ema = decay * ema + (1 - decay) * live``, as
    timm's ModelEma); integer buffers (BatchNorm's ``num_batches_tracked``) take the live value.

    torch's ``get_ema_multi_avg_fn`` averaged those too, in float and truncated back: the EMA's
    count stayed at 1 for the whole run (``int(n * 0.9 + (n + 1) * 0.1) == n``).
    """

    @torch.no_grad()
    def update(ema: list[torch.Tensor], live: list[torch.Tensor], _n_averaged: Any) -> None:
        if ema[0].is_floating_point() or ema[0].is_complex():  # AveragedModel groups tensors by dtype
            torch._foreach_lerp_(ema, live, 1.0 - decay)
        else:
            torch._foreach_copy_(ema, live)

    return update


def _head_lr(opt: torch.optim.Optimizer) -> float:
    """The head's learning rate: ``optim.lr`` on the schedule, whatever ``optim.body_lr_mult`` (a
    multiplier above 1 made the body's the largest, and metrics.csv logged it as the run's lr)."""
    heads = [g["lr"] for g in opt.param_groups if str(g.get("name", "")).startswith("head")]
    return max(heads or [g["lr"] for g in opt.param_groups])


def progressive_size(epoch: int, epochs: int, full: Sequence[int], pr: ProgressiveResizeConfig | None) -> tuple[int, int] | None:
    """Training (height, width) of a 0-based epoch under progressive resizing, or None at full size.

    The height grows linearly from ``pr.start_size`` at epoch 0 to the full height at epoch
    ``round(pr.full_at * epochs)`` (at the latest the last epoch: evaluation is at full size, so
    training ends there), rounded down to a multiple of ``pr.multiple`` (never below
    ``pr.start_size``); the width keeps the aspect ratio.

    Example:
        >>> from resnetlab.config import ProgressiveResizeConfig
        >>> pr = ProgressiveResizeConfig(start_size=16, full_at=0.5)
        >>> [progressive_size(e, 10, (28, 28), pr) for e in range(6)]
        [(16, 16), (16, 16), (20, 20), (20, 20), (24, 24), None]
    """
    if pr is None:
        return None
    full_h, full_w = int(full[0]), int(full[1])
    full_epoch = min(max(1, round(pr.full_at * epochs)), epochs - 1)
    if epoch >= full_epoch:
        return None
    h = pr.start_size + (full_h - pr.start_size) * epoch / full_epoch
    h = max(pr.start_size, int(h) // pr.multiple * pr.multiple)
    if h >= full_h:
        return None
    return h, max(1, round(full_w * h / full_h))


# ---------------------------------------------------------------------------------------
# entry points used by the CLI and the study runner
# ---------------------------------------------------------------------------------------
# What a run writes into its folder; --overwrite removes these (and nothing else) once the new
# run has started, so no file of the old run (its test result, report, explanations) is left to
# be read as the new run's.
RUN_OUTPUTS = ("metrics.csv", "checkpoints", "eval", "explain", "report_sections", "report_files",
               "report.html", "report.md", "tensorboard")  # fmt: skip


RUN_LOCK = ".run.lock"  # held while a process trains into the folder; an empty file, left in place


def run_folder_lock(run_dir: Path):
    """Hold an exclusive lock on ``<run_dir>/.run.lock`` while a process trains into the folder: a
    second ``train`` or ``--resume`` of it is refused instead of appending its own rows to
    ``metrics.csv`` and overwriting the other's checkpoints. Under torchrun rank 0 holds it."""
    from resnetlab.runtime import exclusive_lock

    return exclusive_lock(run_dir / RUN_LOCK, f"run folder {run_dir} is in use by another resnetlab process (a train, a "
                                              f"--resume or a study's cell); wait for it to end, or stop it, and run this again")


def _check_writable(run_dir: Path, remedy: str = "choose another with --out") -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        what = "output folder" if remedy.endswith("--out") else "run folder"
        raise ResnetlabError(f"{what} {run_dir} is not writable ({exc.strerror or exc}); {remedy}") from None


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and (run_dir / "checkpoints").exists() and not overwrite:
        raise ResnetlabError(
            f"run folder {run_dir} already holds a run; use --resume {run_dir} to continue it, or --out for a new folder"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ResnetlabError(f"output folder {run_dir} is an existing file, not a folder; choose a folder with --out")
    if run_dir.is_dir() and not overwrite and any(p.name != RUN_LOCK for p in run_dir.iterdir()):
        raise ResnetlabError(
            f"output folder {run_dir} is not empty and holds no run; choose a new or empty folder with --out "
            f"(--overwrite writes the run into it, replacing only files a run writes)"
        )
    _check_writable(run_dir)


def finish_run(run_dir: Path, cfg: Config, splits=None, device: str | torch.device | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Evaluate the best checkpoint on the test split (and the training split with
    ``output.evaluate_train``, the validation split with ``output.evaluate_val``) and build the
    report (rank 0).

    ``splits`` is the dataset the trainer loaded; evaluation and the report use it instead of
    loading it again (``None``: rebuilt from the checkpoint). Both log their own result lines.
    ``device`` is where evaluation runs: the trainer's (default: ``train.device``).
    Returns the training-split and test-split metrics (``None`` for a split not evaluated).
    """
    from resnetlab.data.loader import eval_batch_size
    from resnetlab.evaluate import evaluate
    from resnetlab.runtime import restore_malloc

    restore_malloc()  # training is over: glibc's own behaviour for evaluation and the report
    train_metrics = test_metrics = None
    device = cfg.train.device if device is None else device
    # the training's evaluation batch: 256 images, fewer when they are large (memory)
    bs = 256 if splits is None else eval_batch_size(splits.image_shape, cfg.train.batch_size)
    if cfg.output.evaluate_train:
        train_metrics = evaluate(run_dir, split="train", data_root=cfg.data.root, splits=splits, device=device, batch_size=bs)
    if cfg.output.evaluate_val:
        # only a run that validated has a validation split to score (an image folder's val/ is one
        # even with data.val_fraction 0)
        if any(r.get("val_acc") is not None for r in _read_metrics(run_dir / "metrics.csv")):
            evaluate(run_dir, split="val", data_root=cfg.data.root, splits=splits, device=device, batch_size=bs)
        else:
            log.info("output.evaluate_val: the run has no validation split (data.val_fraction=0, no val/ folder); nothing to score")
    if cfg.output.evaluate_test:
        test_metrics = evaluate(run_dir, split="test", data_root=cfg.data.root, splits=splits, device=device, batch_size=bs)
    if cfg.output.report:
        from resnetlab.report import build_report

        build_report(run_dir, splits=splits)
    return train_metrics, test_metrics


@contextlib.contextmanager
def _callers_thread_count():
    """Put torch's intra-op thread count back when a run ends.

    ``train.num_threads`` is the run's setting: the Trainer applies it for training and the final
    evaluation, and the caller's own count (a notebook's, a test suite's) is restored afterwards,
    as :func:`resnetlab.runtime.restore_malloc` puts malloc back.
    """
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@_callers_thread_count()
def train(cfg: Config, run_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool | None = None) -> FitResult:
    """Train from a config into a run folder, then evaluate and report.

    Example:
        >>> from resnetlab.config import load_config
        >>> result = train(load_config("recipes/demo-digits.yaml"))  # doctest: +SKIP
    """
    run_dir = Path(run_dir) if run_dir else Path(cfg.output.dir) / cfg.run_name()
    rank, _, _ = dist_info()
    created = not run_dir.exists()
    if rank == 0:
        _prepare_run_dir(run_dir, overwrite)
    with run_folder_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:  # the other process took the lock between our check and now: check again under it
            _prepare_run_dir(run_dir, overwrite)
        try:
            trainer = Trainer(cfg, run_dir, progress=progress)
        except BaseException:
            if rank == 0 and created and run_dir.is_dir() and all(p.name == RUN_LOCK for p in run_dir.iterdir()):
                (run_dir / RUN_LOCK).unlink(missing_ok=True)
                run_dir.rmdir()  # a run that never started leaves no empty folder behind
            raise
        return _start_and_fit(trainer, cfg, run_dir, overwrite, rank)


def _start_and_fit(trainer: Trainer, cfg: Config, run_dir: Path, overwrite: bool, rank: int) -> FitResult:
    if rank == 0:
        if overwrite:
            # Only now that config and data are known to be good: the old run's rows would be
            # appended to, and its checkpoints rotated into last.prev, where a resume could
            # pick them up as if they belonged to this run.
            for name in RUN_OUTPUTS:
                path = run_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")  # (the pretrained weights' summary is logged where they load)
    return _fit_and_finish(trainer, cfg, run_dir)


def weights_checksum(model: nn.Module) -> float:
    """Sum of every parameter and buffer, in float64: equal on all ranks iff DDP kept them in sync."""
    return float(sum(v.detach().double().sum().item() for v in model.state_dict().values() if v.is_floating_point()))


def check_ranks_in_sync(trainer: Trainer) -> None:
    """All ranks must end with identical weights; rank 0 logs the comparison."""
    local = torch.tensor([weights_checksum(trainer.model)], dtype=torch.float64, device=trainer.device)
    values = [g.item() for g in _all_gather(local)]
    if any(v != values[0] for v in values):
        raise ResnetlabError(f"weights differ across ranks after training (checksums {values}); this is a bug")
    if trainer.is_main:
        log.info("weights identical on all %d ranks (checksum %.10g)", trainer.world_size, values[0])


def _fit_and_finish(trainer: Trainer, cfg: Config, run_dir: Path) -> FitResult:
    result = trainer.fit()
    if result.interrupted:
        return result
    if trainer.world_size > 1:
        check_ranks_in_sync(trainer)  # a collective: every rank has finished training here
        # The test evaluation and the report are rank 0's alone and can take longer than the
        # group's timeout (30 min gloo, 10 min nccl): the other ranks used to wait for them in a
        # barrier, timed out, and torchrun then killed rank 0 in the middle of its evaluation.
        # No collective follows, so every rank leaves the group now and the others exit.
        trainer.leave_process_group()
    if trainer.is_main:
        result.train_metrics, result.test_metrics = finish_run(run_dir, cfg, trainer.splits, trainer.device)
    return result


@_callers_thread_count()
def resume(run_dir: str | os.PathLike, progress: bool | None = None) -> FitResult:
    """Continue a run from its newest good ``last`` checkpoint (falls back to ``last.prev``)."""
    run_dir = Path(run_dir)
    saved = None
    if not (run_dir / "config.yaml").is_file():
        # checkpoints without config.yaml (deleted, or lost in a copy): train refused the folder
        # ("holds a run; use --resume") and resume refused it ("not a run folder"), each naming the other
        saved = checkpoint_config(run_dir)
        if saved is None:
            what = "is a file, not a run folder (give the folder that holds config.yaml)" if Path(run_dir).is_file() else "is not a run folder (no config.yaml)"
            raise ResnetlabError(f"{run_dir} {what}; nothing to resume")
    rank, _, _ = dist_info()
    if rank == 0:  # a read-only folder failed in tensorboard's writer thread, with a traceback
        _check_writable(run_dir, "a resume writes its checkpoints and metrics there: make it writable")
    # every rank reads the checkpoint's config itself: rank 0 writing config.yaml back is no race for them
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml") if saved is None else saved, recorded=True)
    if saved is not None and rank == 0:
        log.warning("%s has no config.yaml: resuming with the config saved in its checkpoint (written back to config.yaml)", run_dir)
        save_config(cfg, run_dir / "config.yaml")
    with run_folder_lock(run_dir) if rank == 0 else contextlib.nullcontext():
        return _resume_locked(run_dir, cfg, progress)


def _resume_locked(run_dir: Path, cfg: Config, progress: bool | None) -> FitResult:
    candidates = ckpt.resume_candidates(run_dir)
    _check_resume_config(run_dir, cfg, candidates)
    # with a checkpoint to load (or an error below), the pretrained source is not read again
    trainer = Trainer(cfg, run_dir, progress=progress, normalization=_checkpoint_normalization(candidates),
                      pretrained=not candidates)
    loaded = None
    problems = []
    for cand in candidates:
        try:
            trainer.load_state(cand)
            loaded = cand
            break
        except CheckpointError as exc:
            problems.append(str(exc))
            if trainer.is_main:
                log.warning("skipping checkpoint %s: %s", cand, exc)
    if trainer.world_size > 1:
        torch.distributed.barrier()  # every process has read its checkpoint before rank 0 changes the folder
    if loaded is not None and loaded != candidates[0] and trainer.is_main:
        log.warning("checkpoint %s is unreadable; resumed from the previous one, %s", candidates[0], loaded)
        # Move the unreadable folder aside (kept for inspection): otherwise the next save
        # would rotate it into last.prev and delete the good one, and a crash during that
        # save would leave only the unreadable checkpoint.
        aside = candidates[0].with_name(candidates[0].name + ".unreadable")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(candidates[0], aside)
    if loaded is None and candidates:
        # Restarting from scratch would rotate these folders away: refuse and keep them.
        raise CheckpointError(
            f"no usable checkpoint in {run_dir / 'checkpoints'} ({'; '.join(problems)}); "
            f"nothing was changed; train again with --overwrite to start over"
        )
    if loaded is None and trainer.is_main:
        log.warning("no checkpoint in %s yet: starting the run from the beginning", run_dir)
    if trainer.is_main:
        logger = next((cb for cb in trainer.callbacks if isinstance(cb, CSVLogger)), None)
        _truncate_metrics(run_dir / "metrics.csv", trainer.epoch, logger.columns if logger else METRIC_COLUMNS)
    if trainer.world_size > 1:
        torch.distributed.barrier()
    trainer.history = _read_metrics(run_dir / "metrics.csv")
    if trainer.epoch >= trainer.epochs:
        log.info("run %s already finished (%d epochs)", run_dir, trainer.epoch)
    else:
        log.info("resuming %s at epoch %d step %d", run_dir, trainer.epoch + 1, trainer.start_step)
    return _fit_and_finish(trainer, cfg, run_dir)


# What a resume may change in config.yaml: where and how fast it runs, and what it writes at the end.
# Anything else (epochs, batch size, schedule, data ...) would continue the saved optimizer and
# schedule state under another plan: a cosine schedule sized for 2 epochs trained epochs 3-4 at lr 0.
# The data keys only say how the images are read (streamed or held, cached, decoded by how many
# processes); a resume normalizes with its checkpoint's mean/std, whichever way they are read.
RESUME_MAY_CHANGE = ("name", "output", "train.num_threads", "train.tune_malloc", "train.device", "train.compile",
                     "data.stream_threshold_gb", "data.cache", "data.num_workers")  # fmt: skip


def _check_resume_config(run_dir: Path, cfg: Config, candidates: Sequence[Path]) -> None:
    """Refuse a resume whose config.yaml was edited since its checkpoint was written, or that runs
    on another number of processes than the checkpoint was trained on."""
    for cand in candidates:
        try:
            meta = ckpt.load_meta(cand)
        except CheckpointError:
            continue  # resume() reports unreadable checkpoints itself
        world = dist_info()[1]
        saved_world = meta.get("world_size")  # None: a checkpoint from before it was recorded, not known
        if saved_world is not None and int(saved_world) != world and not _finished(meta, cfg):
            how = "without torchrun" if saved_world == 1 else f"with torchrun --nproc_per_node={saved_world} (in all, over the nodes)"
            raise ConfigError(
                f"{run_dir} was trained on {saved_world} process(es) and this resume runs on {world}; its step counters, "
                f"schedule and data shards are per process: resume it {how}"
            )
        saved = meta.get("config")
        if not isinstance(saved, dict):
            return
        diff = config_difference(saved, cfg.model_dump(mode="json"), ignore=RESUME_MAY_CHANGE, labels=("checkpoint", "config.yaml"))
        if diff:
            raise ConfigError(
                f"{run_dir / 'config.yaml'} differs from the config its checkpoint was trained with ({diff}); "
                f"--resume continues the run as it was set up: restore config.yaml, or train a new run "
                f"(--pretrained {run_dir} starts it from these weights)"
            )
        return


def checkpoint_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The config recorded in the newest readable resume checkpoint of ``run_dir`` (None if none)."""
    for cand in ckpt.resume_candidates(run_dir):
        try:
            saved = ckpt.load_meta(cand).get("config")
        except CheckpointError:
            continue
        if isinstance(saved, dict):
            return saved
    return None


def _finished(meta: dict[str, Any], cfg: Config) -> bool:
    """Whether the checkpoint ends the run's training: its resume only evaluates and reports,
    which any number of processes can do (a run interrupted after its last epoch is resumed
    for that, as the interruption's message says, and it need not be under torchrun again)."""
    try:
        if cfg.train.iterations:
            return int(meta["step"]) >= cfg.train.iterations
        return int(meta["epoch"]) >= cfg.train.epochs
    except (KeyError, TypeError, ValueError):
        return False


def _checkpoint_normalization(candidates: Sequence[Path]) -> tuple[list[float], list[float]] | None:
    """The mean/std the run was trained with, from the first of its checkpoints that records them."""
    for cand in candidates:
        try:
            meta = ckpt.load_meta(cand)
        except CheckpointError:
            continue
        if isinstance(meta.get("mean"), list) and isinstance(meta.get("std"), list):
            return meta["mean"], meta["std"]
    return None


def read_metrics_file(path: Path) -> tuple[list[str], list[dict[str, float | None]], list[int]]:
    """``metrics.csv`` as ``(columns, rows, damaged line numbers)``; ``([], [], [])`` if absent.

    Rows are appended one per epoch, so a crash, a full disk or an edit can leave a line cut short
    (the next epoch's row then continues it), bytes that are not UTF-8, or a word for a number.
    Such a line, and every line under a header that is not ``metrics.csv``'s, is left out and its
    number returned, instead of being read with its values under the wrong columns."""
    if not path.is_file():
        return [], [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        lines = list(csv.reader(f))
    if not lines:
        return [], [], []
    columns, rows, bad = lines[0], [], []
    known = set(METRIC_COLUMNS) | set(TEST_COLUMNS)
    # every column the trainer writes (a header cut at a comma is made of good names), at most the test ones more
    header_ok = (bool(columns) and columns[0] == "epoch" and set(METRIC_COLUMNS) <= set(columns) <= known
                 and len(set(columns)) == len(columns))  # fmt: skip
    for number, values in enumerate(lines[1:], start=2):
        if not values:
            continue
        row: dict[str, float | None] | None = None
        if header_ok and len(values) == len(columns):
            try:
                row = {k: (float(v) if v != "" else None) for k, v in zip(columns, values)}
            except ValueError:
                row = None
            if row is not None and (row["epoch"] is None or not float(row["epoch"]).is_integer()):
                row = None
        if row is None:
            bad.append(number)
        else:
            rows.append(row)
    if not header_ok:
        bad.insert(0, 1)
    return (columns if header_ok else []), rows, bad


def _line_numbers(bad: Sequence[int]) -> str:
    return ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    _, rows, bad = read_metrics_file(path)
    if bad:
        log.warning("%s: line(s) %s are damaged (cut short, not UTF-8, or not numbers) and left out", path, _line_numbers(bad))
    return rows


def _truncate_metrics(path: Path, epochs_done: int, columns: Sequence[str] = METRIC_COLUMNS) -> None:
    """Drop rows written after the checkpoint we resume from (a crash between the two), and damaged
    lines (:func:`read_metrics_file`): the resumed run appends to a file that parses again."""
    if not path.exists():
        return
    own, rows, bad = read_metrics_file(path)
    if bad:
        log.warning("%s: dropped damaged line(s) %s before resuming (cut short, not UTF-8, or not numbers); the report's "
                    "curves miss those epochs", path, _line_numbers(bad))
    columns = own or list(columns)  # the file's own (test columns or not), the run's if the header is damaged
    keep = [{k: _fmt(r.get(k)) for k in columns} for r in rows if int(r["epoch"]) <= epochs_done]
    if len(keep) != len(rows) or bad:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, path)
