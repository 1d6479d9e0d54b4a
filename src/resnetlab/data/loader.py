"""Batch loaders with exact resume: in-memory (the fast path) and streaming (large image folders).

Both yield ``(x, y, idx)``: ``x`` float32 ``(B, C, H, W)`` normalized, on ``device``, channels_last;
``y`` int64 targets; ``idx`` int64 indices into the ImageSet.

Determinism contract (training mode):

- the shuffle of epoch ``e`` is ``randperm`` from a generator seeded with ``derive_seed(seed, e)``;
  every rank computes the same permutation and takes ``perm[rank::world_size]`` (after dropping
  the ``n % world_size`` tail so shards are disjoint and equal);
- before assembling step ``s`` of epoch ``e`` (with or without augmentations) the loader reseeds
  the *global* torch RNG with ``derive_seed(seed, e, s)`` (``derive_seed(seed, e, s, rank)`` when
  ``world_size > 1``), so the augmentation and whatever random ops the training step runs next
  (dropout) depend only on ``(seed, e, s)``; ``iter_epoch(e, start_step=k)`` therefore reproduces
  the tail of the epoch, and the in-memory and streaming loaders give the same batches and draws;
- neither loader draws from the global RNG itself (the streaming DataLoader has its own generator).

Evaluation loaders keep the dataset order, apply only deterministic transforms, and shard
``arange(n)[rank::world_size]`` (complete and disjoint; shard sizes may differ by one item).

The fast path holds the uint8 images on ``device`` and does everything batch-wise there
(gather -> float -> kornia augmentation with per-sample parameters -> normalize), with no
worker processes and no per-image Python work — the approach of the fastest CIFAR trainers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from resnetlab.data.augment import build_augment
from resnetlab.data.datasets import ImageSet, open_cache, reserve_cache
from resnetlab.data.images import read_image
from resnetlab.errors import DataError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (NumPy's SeedSequence hashing).

    Example:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
        True
    """
    ss = np.random.SeedSequence([int(p) % (1 << 32) for p in parts] + [len(parts)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` torch threads (None: leave as is); restored before the batch is yielded."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class _BaseLoader:
    def __init__(
        self,
        imageset: ImageSet,
        batch_size: int,
        train: bool,
        augment: Any,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device | str,
        seed: int,
        drop_last: bool | None,
        rank: int,
        world_size: int,
        threads: int | None = 1,
        channels_last: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r} must be an int >= 1")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise DataError(f"rank={rank!r}, world_size={world_size!r}: need 0 <= rank < world_size")
        self.dataset = imageset
        self.batch_size = batch_size
        self.train = bool(train)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.rank, self.world_size = rank, world_size
        # Batch assembly is a handful of ~0.5 MB ops: splitting them over OpenMP threads saves
        # little, and on a busy machine the thread barriers cost 3-10x (measured on the 2-core CI
        # box under load; see docs/BENCHMARKS.md). The model step keeps the caller's setting.
        self.threads = threads if self.device.type == "cpu" else None
        self.channels_last = bool(channels_last)
        c = imageset.image_shape[0]
        mean = [0.0] * c if mean is None else list(mean)
        std = [1.0] * c if std is None else list(std)
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise DataError(f"mean/std must have {c} values with std > 0, got mean={mean}, std={std}")
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._affine_cache: dict[tuple[int, int, float], tuple[torch.Tensor, torch.Tensor]] = {}
        self.augment = build_augment(augment, imageset.image_shape, train=self.train).to(self.device)
        self.output_shape = self.augment.out_shape
        self.epoch = 0

    # -- order ---------------------------------------------------------------------------------
    def _shard_len(self) -> int:
        n = len(self.dataset)
        if self.world_size == 1:
            return n
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self._shard_len()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's dataset indices for ``epoch``, in the order they are served."""
        n = len(self.dataset)
        if self.train:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
            if self.world_size > 1:
                order = order[: n - n % self.world_size]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size] if self.world_size > 1 else order

    def _step_seed(self, epoch: int, step: int) -> int:
        if self.world_size > 1:
            return derive_seed(self.seed, epoch, step, self.rank)
        return derive_seed(self.seed, epoch, step)

    def _finish(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """uint8 batch on device -> augmented, normalized float32 channels_last batch."""
        with _intra_op_threads(self.threads):
            return self._assemble(x, epoch, step)

    def _assemble(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if self.train:
            # every training step, augmented or not: the step's dropout then depends only on
            # (seed, epoch, step), not on what drew from the global RNG before (a DataLoader's
            # worker seeds, a validation pass), so both loaders and a mid-epoch resume agree
            self._reseed(self._step_seed(epoch, step))
        if len(self.augment.ops):
            x = self.augment(x)  # uint8 stays uint8 through crop/flip; kornia ops give float [0, 1]
        if x.dtype == torch.uint8:
            x = x.to(torch.float32, memory_format=torch.channels_last)
            scale, bias = self._affine(x.shape, 1.0 / 255.0)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
            scale, bias = self._affine(x.shape, 1.0)
        # (x * k - mean) / std as two in-place ops against a full-row (H*W*C) pattern: per-channel
        # broadcasting over NHWC's short inner dimension is ~10x slower on CPU.
        flat = x.permute(0, 2, 3, 1).view(x.shape[0], -1)
        flat.mul_(scale).add_(bias)
        return x if self.channels_last else x.contiguous()  # NCHW on request (one copy per batch)

    def _affine(self, shape: torch.Size, k: float) -> tuple[torch.Tensor, torch.Tensor]:
        key = (int(shape[2]), int(shape[3]), k)
        if key not in self._affine_cache:
            mean, std = self.mean.flatten(), self.std.flatten()
            hw = key[0] * key[1]
            self._affine_cache[key] = ((k / std).repeat(hw), (-mean / std).repeat(hw))
        return self._affine_cache[key]

    def _reseed(self, seed: int) -> None:
        # The global RNGs that the augmentation and the training step draw from. On CPU only the
        # CPU generator: torch.manual_seed() also queues a CUDA seeding with a stack trace per
        # call, which costs more than augmenting a CIFAR batch.
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            # the generator of the batch's GPU: torch.cuda.manual_seed seeds the current one only
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def _check_start(self, start_step: int) -> None:
        if not (0 <= start_step <= len(self)):
            raise DataError(f"start_step={start_step} is out of range (allowed: 0..{len(self)})")

    def __iter__(self) -> Iterator[Batch]:
        """Iterate epoch ``self.epoch`` (set it with :meth:`set_epoch`)."""
        return self.iter_epoch(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:  # pragma: no cover
        raise NotImplementedError


class BatchLoader(_BaseLoader):
    """The in-memory fast path: uint8 images held on ``device``, augmented batch-wise there."""

    def __init__(self, imageset: ImageSet, *args: Any, **kwargs: Any) -> None:
        super().__init__(imageset, *args, **kwargs)
        if imageset.images is None:
            raise DataError("BatchLoader needs an in-memory ImageSet (use build_loader to pick the streaming loader)")
        # One copy of the uint8 dataset on the device (CIFAR-10: 150 MB), stored NHWC so that a
        # gathered batch is channels_last from the start; batches are gathered there.
        self.images = imageset.images.to(self.device).contiguous(memory_format=torch.channels_last)
        self.targets = imageset.targets.to(self.device)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield ``(x, y, idx)`` for steps ``start_step..len(self)-1`` of ``epoch``."""
        self._check_start(start_step)
        order = self.epoch_indices(epoch)
        # the epoch's order on the device once: a per-step host-to-device copy of the indices
        # would wait for the GPU's previous step every step
        order_d = order.to(self.device)
        for step in range(start_step, len(self)):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            idx, idx_d = order[batch], order_d[batch]
            with _intra_op_threads(self.threads):
                x = self._assemble(self.images[idx_d], epoch, step)  # [] keeps channels_last; index_select does not
            yield x, self.targets.index_select(0, idx_d), idx


# ---------------------------------------------------------------------------------------------
# Streaming: a DataLoader whose workers decode files with torchvision.io (+ optional mmap cache)
# ---------------------------------------------------------------------------------------------
class _DecodeDataset(torch.utils.data.Dataset):
    """Item ``i`` -> (uint8 image, target, i, ok). A file that fails to decode gives ok=False
    instead of an exception, so one bad file never kills an epoch."""

    def __init__(self, imageset: ImageSet, cache: str | None) -> None:
        self.paths = imageset.paths
        self.targets = imageset.targets
        self.shape = imageset.image_shape
        self.cache_path = cache
        # item i -> its row of the cache, which the folder's other splits share
        # (a NumPy array: a list of Python ints would be copied into every worker as they touch it)
        self.rows = np.arange(len(imageset)) if imageset.cache_rows is None else imageset.cache_rows.numpy()
        self._cache: np.ndarray | None = None
        self._flags: np.ndarray | None = None

    def _open_cache(self) -> None:
        if self.cache_path is not None and self._cache is None:
            try:
                self._flags, self._cache = open_cache(self.cache_path, self.shape)
            except OSError as exc:  # removed or replaced since the loader checked it (another run's)
                log.warning("image cache %s could not be opened (%s); decoding without it", self.cache_path, exc.strerror or exc)
                self.cache_path = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        self._open_cache()
        c, h, w = self.shape
        row = int(self.rows[i])
        if self._flags is not None and self._flags[row]:
            return torch.from_numpy(np.array(self._cache[row])), int(self.targets[i]), i, True
        try:
            img = read_image(self.paths[i], channels=c, size=(h, w))
        except Exception:  # corrupt / truncated / vanished: dropped from the batch, reported by the loader
            return torch.zeros(self.shape, dtype=torch.uint8), int(self.targets[i]), i, False
        if self._cache is not None:
            self._cache[row] = img.numpy()
            self._flags[row] = 1  # written after the pixels, so a crash leaves the entry "not done"
        return img, int(self.targets[i]), i, True


def _collate(items):
    imgs, ys, idx, ok = zip(*items)
    return torch.stack(imgs), torch.tensor(ys, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64), torch.tensor(ok)


class StreamLoader(_BaseLoader):
    """Large image folders: worker processes decode and resize, the batch is augmented on device."""

    def __init__(self, imageset: ImageSet, *args: Any, num_workers: int = 2, **kwargs: Any) -> None:
        super().__init__(imageset, *args, **kwargs)
        if imageset.paths is None:
            raise DataError("StreamLoader needs an ImageSet with paths")
        self.num_workers = max(0, int(num_workers))
        rows = len(imageset) if imageset.cache_rows is None else int(imageset.cache_rows.max()) + 1 if len(imageset) else 0
        cache = imageset.cache if imageset.cache and reserve_cache(imageset.cache, rows, imageset.image_shape) else None
        self._data = _DecodeDataset(imageset, cache)
        self._warned: set[int] = set()

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield ``(x, y, idx)``; items whose file fails to decode are dropped from their batch
        (warned once per file)."""
        self._check_start(start_step)
        order = self.epoch_indices(epoch)
        batches = [order[s * self.batch_size : (s + 1) * self.batch_size].tolist() for s in range(start_step, len(self))]
        if not batches:
            return
        # A generator of its own: without one, every DataLoader iterator (each epoch, each
        # validation) draws its workers' base seed from the global RNG that dropout uses.
        dl = torch.utils.data.DataLoader(
            self._data, batch_sampler=batches, num_workers=self.num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)),
        )
        for step, (x, y, idx, ok) in enumerate(dl, start=start_step):
            if not bool(ok.all()):
                bad = [int(i) for i in idx[~ok] if int(i) not in self._warned]
                self._warned.update(bad)
                if bad:
                    log.warning("skipped %d unreadable file(s): %s", len(bad), ", ".join(self.dataset.paths[i] for i in bad))
                x, y, idx = x[ok], y[ok], idx[ok]
                if len(idx) == 0:
                    continue
            x = self._finish(x.to(self.device, non_blocking=True), epoch, step)
            yield x, y.to(self.device, non_blocking=True), idx


# Pixels per evaluation batch (per image, at the dataset's size): 256 images up to 128x128, 64 at
# 256x256. A fixed 256 images at 256 px with a CIFAR stem (stage 1 at full resolution) peaked at
# 5 GB of activations in one inference forward, over twice a training step's 2.2 GB at batch 32.
EVAL_BATCH_PIXELS = 1 << 22


def eval_batch_size(image_shape: Sequence[int], train_batch_size: int = 1, most: int = 256) -> int:
    """Images per evaluation forward pass during training: ``most`` for small images, fewer for
    large ones (:data:`EVAL_BATCH_PIXELS`), never fewer than the training batch (which fits).

    Example:
        >>> eval_batch_size((3, 32, 32), 128), eval_batch_size((3, 256, 256), 32), eval_batch_size((3, 512, 512), 32)
        (256, 64, 32)
    """
    h, w = int(image_shape[-2]), int(image_shape[-1])
    return max(int(train_batch_size), min(most, max(1, EVAL_BATCH_PIXELS // max(1, h * w))))


def build_loader(
    imageset: ImageSet,
    batch_size: int = 128,
    train: bool = True,
    augment: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    threads: int | None = 1,
    channels_last: bool = True,
) -> BatchLoader | StreamLoader:
    """A loader for ``imageset``: the in-memory fast path, or streaming for file-backed sets.

    Args:
        imageset: a split from :func:`~resnetlab.data.load_dataset`.
        batch_size: images per batch (per rank).
        train: shuffle + random augmentations; ``False``: dataset order, deterministic items only.
        augment: an augmentation spec (see :mod:`resnetlab.data.augment`).
        mean, std: per-channel normalization in [0, 1] units (default: none).
        device: where batches are built and returned: ``"auto"`` (CUDA when there is one, else
            the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        seed: base seed of shuffling and augmentation (see the module docstring).
        drop_last: drop a final partial batch (default: ``train``).
        rank, world_size: data-parallel sharding.
        num_workers: decode processes for streaming sets (ignored by the fast path).
        threads: torch intra-op threads while a batch is assembled on CPU (``None``: the
            caller's setting). The default 1 is faster for CIFAR-sized batches on a busy machine.
        channels_last: return NHWC memory (faster convolutions); ``False`` returns contiguous
            NCHW batches (assembly still runs in NHWC, then one copy).

    Example:
        >>> from resnetlab.data import load_dataset
        >>> s = load_dataset("synthetic:3x32x32:10:256", val_fraction=0)
        >>> dl = build_loader(s.train, 64, augment="crop flip", mean=s.mean, std=s.std)
        >>> x, y, idx = next(dl.iter_epoch(0))
        >>> x.shape, len(dl)
        (torch.Size([64, 3, 32, 32]), 4)
    """
    from resnetlab.evaluate import resolve_device  # (evaluate imports this module)

    device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0") or 0))  # torchrun's process: its own GPU
    common = dict(batch_size=batch_size, train=train, augment=augment, mean=mean, std=std, device=device,
                  seed=seed, drop_last=drop_last, rank=rank, world_size=world_size, threads=threads,
                  channels_last=channels_last)  # fmt: skip
    if imageset.in_memory:
        return BatchLoader(imageset, **common)
    return StreamLoader(imageset, num_workers=num_workers, **common)
