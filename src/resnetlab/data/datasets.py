"""Datasets by name: train / val / test splits as uint8 tensors (or file lists for big folders).

Names (see :data:`DATASET_NAMES`):

- ``cifar10``, ``cifar100``: torchvision's on-disk pickle format (``cifar-10-batches-py/``,
  ``cifar-100-python/``) under the data root; ``download=True`` fetches them with torchvision (also
  when files of the folder are missing). A damaged file is a :class:`DataError` naming it.
  ``cifar100-coarse``: CIFAR-100's files with its 20 superclass labels (``coarse_labels``).
- ``fashion-mnist``, ``mnist``: IDX files (raw or ``.gz``) in ``<root>/<name>/``, torchvision's
  ``<root>/FashionMNIST/raw`` / ``<root>/MNIST/raw``, ``<root>`` itself, or (Fashion-MNIST)
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, no download); a fixed stratified
  20 % test split (seed 0, independent of the run's seed).
- ``imagefolder:PATH``: one sub-folder per class; ``train/``, ``val/`` (or ``valid/``,
  ``validation/``), ``test/`` sub-folders (any case) when present, otherwise a stratified split (20 % test, fixed seed 0). Images are resized to cover
  ``image_size`` (default 224) and center-cropped. Bad files are skipped with one warning.
  Folders larger than ``stream_threshold_gb`` as uint8 stream from disk (see loader.py).
- ``synthetic[:CxHxW[:CLASSES[:N]]]``: deterministic class-dependent random images, default
  ``synthetic:3x32x32:10:2000`` (N training images plus N/5 test images).

The data root is ``root`` if given, else ``$RESNETLAB_DATA``, else ``~/.cache/resnetlab``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import os
import pickle
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetlab.errors import DataError, printable, unknown_name
from resnetlab.data.images import image_mode, is_gray_mode, read_image, resize_cover

log = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "cifar100-coarse", "fashion-mnist", "mnist", "digits", "imagefolder", "synthetic")
_SAID_WHERE: set[tuple[str, str]] = set()  # (dataset, folder) whose unusual place was logged
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_TEST_FRACTION = 0.2  # held-out test share for datasets that ship without a test split
_SPLIT_SEED = 0  # fixed so the test split never depends on the run's seed


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """One split: uint8 images in memory, or image files decoded on the fly.

    Attributes:
        targets: int64 ``(N,)`` class indices.
        images: uint8 ``(N, C, H, W)`` or ``None`` when streaming from ``paths``.
        paths: source files (image folders) or ``None``.
        image_shape: ``(C, H, W)`` of every item.
        classes: class names (shared by all splits).
        cache: optional path of a memory-mapped cache of the resized images (streaming only).
        cache_rows: int64 ``(N,)`` row of each item in ``cache`` (``None``: item ``i`` is row ``i``);
            the splits and subsets of one image folder share its one cache.
        held_out: the split was drawn from the same files as the training split by a seeded
            shuffle (an image folder's val or test without a folder of its own): once the folder
            changes, it may hold images a run trained on.
    """

    targets: torch.Tensor
    image_shape: tuple[int, int, int]
    classes: list[str]
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    cache: str | None = None
    cache_rows: torch.Tensor | None = None
    held_out: bool = False

    def __post_init__(self) -> None:
        self.targets = torch.as_tensor(self.targets, dtype=torch.int64)
        if self.cache_rows is not None:
            self.cache_rows = torch.as_tensor(self.cache_rows, dtype=torch.int64)
            if len(self.cache_rows) != len(self.targets):
                raise ValueError(f"ImageSet: {len(self.cache_rows)} cache rows but {len(self.targets)} targets")
        if self.images is None and self.paths is None:
            raise ValueError("ImageSet needs images or paths")
        n = len(self.targets)
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"ImageSet: {len(self.images)} images but {n} targets")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"ImageSet: {len(self.paths)} paths but {n} targets")
        if n and (int(self.targets.min()) < 0 or int(self.targets.max()) >= len(self.classes)):
            raise DataError(
                f"labels out of range: found {int(self.targets.min())}..{int(self.targets.max())} "
                f"(allowed: 0..{len(self.classes) - 1} for {len(self.classes)} classes)"
            )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def nbytes(self) -> int:
        c, h, w = self.image_shape
        return len(self) * c * h * w

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ImageSet:
        """A new ImageSet with the given items (in that order)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        rows = self.cache_rows
        if rows is None and self.cache:
            rows = torch.arange(len(self))
        return ImageSet(
            targets=self.targets[idx],
            image_shape=self.image_shape,
            classes=self.classes,
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[int(i)] for i in idx],
            cache=self.cache,  # the parent's: the subset's items keep their rows
            cache_rows=None if rows is None else rows[idx],
            held_out=self.held_out,
        )

    def get(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 ``(len(indices), C, H, W)``; decodes files when streaming (bad files -> zeros)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images is not None:
            return self.images[idx]
        c, h, w = self.image_shape
        out = torch.zeros((len(idx), c, h, w), dtype=torch.uint8)
        for j, i in enumerate(idx.tolist()):
            try:
                out[j] = read_image(self.paths[i], channels=c, size=(h, w))
            except Exception:  # OSError, RuntimeError, ValueError, PIL's DecompressionBombError ...
                log.warning("could not decode %s; using a blank image", self.paths[i])
        return out


@dataclass
class DatasetSplits:
    """What :func:`load_dataset` returns. ``mean`` / ``std`` are per channel, in [0, 1] units,
    computed on the training split only."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    image_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$RESNETLAB_DATA``, else ``~/.cache/resnetlab``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("RESNETLAB_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/resnetlab").expanduser()


def split_fingerprint(imageset: ImageSet | None) -> dict[str, Any] | None:
    """What identifies an image folder's split: its size and a digest of its files (paths relative
    to the split's common folder, so a moved dataset keeps its fingerprint) and labels. ``None``
    for the built-in datasets, whose splits depend only on the seed. Recorded in checkpoints so
    ``evaluate`` and ``--resume`` can say when the folder changed since training."""
    if imageset is None or imageset.paths is None or not len(imageset):
        return None
    base = os.path.commonpath([os.path.dirname(p) for p in imageset.paths])
    digest = hashlib.sha1()
    for p, y in sorted(zip((os.path.relpath(p, base) for p in imageset.paths), imageset.targets.tolist())):
        digest.update(f"{p}\0{y}\n".encode("utf-8", "surrogateescape"))
    return {"images": len(imageset), "sha1": digest.hexdigest()}


def fingerprint_change(recorded: dict[str, Any] | None, imageset: ImageSet | None, split: str) -> str | None:
    """One line saying how ``split`` differs from the fingerprint a checkpoint recorded, or None."""
    now = split_fingerprint(imageset)
    if not recorded or now is None or now == recorded:
        return None
    return (f"the {split} split is not the one the run had: {now['images']} images now, {recorded['images']} then"
            f"{'' if now['images'] != recorded['images'] else ' (other files)'}; the image folder changed since training")


def check_held_out_split(recorded: dict[str, Any] | None, imageset: ImageSet | None, split: str, doing: str) -> str | None:
    """:func:`fingerprint_change`, refused for a held-out split (``ImageSet.held_out``): the
    folder's files were shuffled again, so the split may now hold images the run trained on, and a
    score on it (or a resumed run that trains on the rest) would not be a held-out result.

    Returns:
        The change (to warn about) when the split changed but has a folder of its own, else None.

    Raises:
        DataError: a held-out split that changed.
    """
    change = fingerprint_change(recorded, imageset, split)
    if change and imageset is not None and imageset.held_out:
        raise DataError(f"cannot {doing}: {change}, and the {split} split is drawn from the folder's files by a seeded "
                        f"shuffle, so it may now hold images the run trained on (allowed: the folder as it was at "
                        f"training, or a new run; a {split}/ sub-folder of its own keeps a split fixed)")  # fmt: skip
    return change


def dataset_key(name: str) -> tuple[str, str]:
    """``"imagefolder:PATH"`` -> ``("imagefolder", "PATH")``, aliases resolved (``fashionmnist``).

    Raises:
        DataError: not one of :data:`DATASET_NAMES` (with a did-you-mean).
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(unknown_name("dataset", str(name), DATASET_NAMES))
    key, _, arg = name.strip().partition(":")
    key = key.lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100", "cifar-100-coarse": "cifar100-coarse"}.get(key, key)
    if key not in DATASET_NAMES:
        raise DataError(unknown_name("dataset", name, DATASET_NAMES))
    return key, arg


def _root_origin(root: str | os.PathLike | None) -> str:
    """Where an implicit data root came from, for the errors (a user who never set one does not
    know which folder was searched, nor how to name another); ``""`` for a given root."""
    if root is not None:
        return ""
    if os.environ.get("RESNETLAB_DATA"):
        return " (the data root from $RESNETLAB_DATA; pass --data-root or set data.root for another)"
    return " (the default data root; pass --data-root, set data.root or $RESNETLAB_DATA for another)"


def _check_root(root: Path, explicit: bool, origin: str = "") -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"data root {str(root)!r} is not a directory{origin}")
    if explicit and not root.exists():
        raise DataError(f"data root {str(root)!r} does not exist (create it or pass an existing --data-root)")
    if root.exists() and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data root {str(root)!r} is not readable{origin}")


def stratified_split(
    targets: torch.Tensor | np.ndarray, held: float | int, seed: int,
    classes: Sequence[str] | None = None, alone: str = "", more: str = "add images to them",
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out) with class proportions preserved (scikit-learn).

    Args:
        targets: class index per item.
        held: fraction in (0, 1) or a count of items to hold out.
        seed: the split's seed.
        classes: class names, to name a class with a single image in the error.
        alone: what else the user can do when a class has a single image (", or ...").
        more: how the user gives such a class more images (a synthetic set: a larger N).

    Returns:
        Two sorted int64 index arrays.

    Example:
        >>> keep, val = stratified_split(np.repeat(np.arange(2), 10), 0.2, seed=0)
        >>> len(keep), len(val)
        (16, 4)
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(targets)
    idx = np.arange(len(y))
    try:
        keep, out = train_test_split(idx, test_size=held, random_state=seed, stratify=y, shuffle=True)
    except ValueError:
        k = len(np.unique(y))
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() < 2:
            # raising the subset or the hold-out cannot help: the class has one image to split
            one = [str(classes[c]) if classes is not None else str(c) for c in labels[counts < 2]]
            raise DataError(
                f"cannot split {len(y)} images of {k} classes with a stratified hold-out of {held!r}: class(es) "
                f"{', '.join(repr(c) for c in one[:5])}{' ...' if len(one) > 5 else ''} have a single image here and each "
                f"side needs one of every class ({more}{alone})"
            ) from None
        raise DataError(
            f"cannot split {len(y)} images of {k} classes with a stratified hold-out of {held!r}: each side needs at least "
            f"one image per class (raise data.subset or data.val_fraction, or use more images)"
        ) from None
    return np.sort(keep), np.sort(out)


def _channel_stats(images: torch.Tensor | Iterable[torch.Tensor], chunk_bytes: int = 1 << 20,
                   channels: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 images in [0, 1] units.

    Exact integer sums of the pixels and of their squares, over chunks of about ``chunk_bytes``
    of images: the float64 copy this used to make per 8,192 images took ~17x the images' own
    size (+3.6 GB for a 207 MB split at 224 pixels). ``images`` is one ``(N, C, H, W)`` batch or
    an iterable of such batches (a streamed sample; then ``channels`` says C for an empty one)."""
    if isinstance(images, torch.Tensor):
        batches: Iterable[torch.Tensor] = (images,)
        c = images.shape[1]
    else:
        batches, c = images, channels or 1
    s = torch.zeros(c, dtype=torch.int64)
    s2 = torch.zeros(c, dtype=torch.int64)
    n = 0
    for batch in batches:
        per_image = max(1, batch[0].numel()) if len(batch) else 1
        step = max(1, chunk_bytes // per_image)
        for i in range(0, len(batch), step):
            x = batch[i : i + step]
            s += x.sum(dim=(0, 2, 3), dtype=torch.int64)
            s2 += x.to(torch.int32).square_().sum(dim=(0, 2, 3), dtype=torch.int64)  # 255^2 fits an int32
            n += x.shape[0] * x.shape[2] * x.shape[3]
    if n == 0:
        return [0.0] * c, [1.0] * c
    mean = s.double() / (255.0 * n)
    std = (s2.double() / (255.0**2 * n) - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}\t-"
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"


def _cache_prefix(source: str | os.PathLike, image_shape: tuple[int, int, int]) -> str:
    """``NAME-FOLDERHASH-CxHxW-``: what the cache files of one image folder at one size share
    (a cache folder may serve several image folders)."""
    src = os.path.abspath(os.path.expanduser(str(source)))
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(src).name) or "folder"
    c, h, w = image_shape
    return f"{name}-{hashlib.sha1(src.encode()).hexdigest()[:8]}-{c}x{h}x{w}-"


def cache_file_for(paths: Sequence[str], image_shape: tuple[int, int, int], folder: str | os.PathLike, source: str | os.PathLike) -> str:
    """Path in ``folder`` of the one memory-mapped cache of the image folder ``source``, whose rows
    are ``paths`` (every split's files, in order). The name hashes the listing with each file's size
    and modification time, and the image shape, so a changed folder, a rewritten file or another
    size gets a fresh cache; every split and seed of the same folder and size shares it. The
    decoder (:data:`resnetlab.data.images.DECODER_VERSION`, the Pillow and torchvision versions) is
    in the name too: a cache of pixels an earlier decoder made is not read back."""
    import PIL
    import torchvision

    from resnetlab.data.images import DECODER_VERSION

    listing = "\n".join(_stamp(p) for p in paths)
    decoder = f"decoder {DECODER_VERSION} pillow {PIL.__version__} torchvision {torchvision.__version__}"
    digest = hashlib.sha1((listing + repr(tuple(image_shape)) + decoder).encode()).hexdigest()[:12]
    return str(Path(folder) / f"{_cache_prefix(source, image_shape)}{digest}.u8")


def _pid_alive(pid: str) -> bool:
    """Whether the process ``pid`` (text, from a file name) exists on this machine; ``True`` when
    that cannot be told, so nothing of a live writer is removed."""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM), or not a pid
        return True
    return True


def _prune_stale_caches(path: str, source: str | os.PathLike, image_shape: tuple[int, int, int]) -> None:
    """Remove the caches of ``source`` at this size other than ``path``: made for an earlier listing
    of the folder (or by an earlier decoder), they would never be read again; and the temporary
    files of writers killed mid-allocation."""
    folder, keep = Path(path).parent, Path(path).name
    prefix = _cache_prefix(source, image_shape)
    removed = []
    for p in sorted(folder.iterdir()):
        if not p.name.startswith(prefix) or p.name == keep:
            continue
        # a cache of an earlier listing, or the temporary file of a writer that was killed while
        # allocating it (<cache>.u8.<pid>.tmp, its process gone): full-size files either way
        if p.name.endswith(".u8") or (p.name.endswith(".tmp") and not _pid_alive(p.name.rsplit(".", 2)[-2])):
            with contextlib.suppress(OSError):
                size = p.stat().st_size
                p.unlink()
                removed.append(f"{p.name} ({size / 1e9:.2f} GB)")
    if removed:
        log.info("removed %d stale image cache file(s) of %s from %s: %s", len(removed), source, folder, ", ".join(removed))


# The cache file: a header (magic, row count), one "done" flag byte per row, then the rows' uint8
# pixels. One file, replaced as a whole, so flags and pixels always belong together.
_CACHE_MAGIC = b"RLCACHE1"
_CACHE_HEADER = 16


def _header_rows(f, image_shape: tuple[int, int, int]) -> int | None:
    head = f.read(_CACHE_HEADER)
    if len(head) < _CACHE_HEADER or head[:8] != _CACHE_MAGIC:
        return None
    rows = int.from_bytes(head[8:], "little")
    return rows if os.fstat(f.fileno()).st_size == _CACHE_HEADER + rows * (1 + int(np.prod(image_shape))) else None


def cache_layout(path: str, image_shape: tuple[int, int, int]) -> int | None:
    """The row count of the cache file ``path`` for images of ``image_shape``, or ``None`` when it
    is missing, is not a cache, or has another size than its header says."""
    try:
        with open(path, "rb") as f:
            return _header_rows(f, image_shape)
    except OSError:
        return None


def open_cache(path: str, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(flags, pixels)`` of the cache file ``path``: writable uint8 views ``(rows,)`` and
    ``(rows, C, H, W)`` of one mapping (a row is valid once its flag is 1).

    Raises:
        OSError: missing, unreadable, or not a cache of this image shape.
    """
    with open(path, "r+b") as f:  # one open file: header and views are of the same file, even if it is replaced
        rows = _header_rows(f, image_shape)
        if rows is None:
            raise FileNotFoundError(errno.ENOENT, "not a cache of this image size", path)
        m = np.memmap(f, dtype=np.uint8, mode="r+", offset=_CACHE_HEADER, shape=(rows * (1 + int(np.prod(image_shape))),))
    return m[:rows], m[rows:].reshape(rows, *image_shape)


def _allocate(path: str, size: int, header: bytes = b"") -> None:
    """A zero-filled file of ``size`` bytes at ``path`` starting with ``header``, its blocks reserved
    on disk, written under a temporary name and renamed into place (a reader never sees it half made)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            if size and hasattr(os, "posix_fallocate"):
                # real blocks now: a full disk fails here, not as SIGBUS at a memmap write mid-epoch
                os.posix_fallocate(f.fileno(), 0, size)
            else:
                f.truncate(size)  # sparse (no posix_fallocate on this platform)
            f.write(header)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def reserve_cache(path: str, rows: int, image_shape: tuple[int, int, int]) -> bool:
    """Make the memory-mapped cache file ``path`` for ``rows`` uint8 images of ``image_shape`` (all
    rows "not done"), unless a cache of at least ``rows`` rows is there.

    Returns:
        ``False`` after one warning naming the folder and the reason when it cannot be made or
        written (a read-only folder, a full disk): streaming then decodes every image each epoch.
    """
    size = _CACHE_HEADER + rows * (1 + int(np.prod(image_shape)))
    folder = str(Path(path).parent)
    try:
        have = cache_layout(path, image_shape)
        if have is not None and have >= rows:
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "its file is not writable")
            return True
        Path(folder).mkdir(parents=True, exist_ok=True)
        _allocate(path, size, _CACHE_MAGIC + rows.to_bytes(8, "little"))
        return True
    except OSError as exc:
        why = exc.strerror or str(exc)
        log.warning("image cache folder %s is not used (%s, for %.2f GB); decoding the images in every epoch instead", folder, why, size / 1e9)
        return False


def _resize_all(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.cat([resize_cover(images[i : i + chunk], size) for i in range(0, len(images), chunk)])


def _size_arg(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
        return (image_size, image_size)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(isinstance(s, int) and s > 0 for s in image_size):
        return (int(image_size[0]), int(image_size[1]))
    raise DataError(f"image_size={image_size!r} must be a positive int or a pair (h, w)")


# ---------------------------------------------------------------------------------------------
# Readers: each returns (train, val or None, test, classes) as in-memory or streaming ImageSets
# ---------------------------------------------------------------------------------------------
def _unpickle(path: Path) -> dict:
    # The CIFAR archives are Python pickles (torchvision reads them the same way); only load
    # files from a data root you trust.
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as exc:
        # a truncated copy or an interrupted extraction: name the file, not just pickle's words
        raise DataError(
            f"{str(path)!r} is truncated or not a CIFAR pickle ({type(exc).__name__}: {exc}); extract the archive "
            f"again, or delete {str(path.parent)!r} and {_DOWNLOAD_HINT}"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{str(path)!r} is not a CIFAR pickle (expected a dict)")
    # Python-2 pickles load with str keys under latin1; others may carry bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


# Where a missing dataset can be fetched from: the option works in configs and with `resnetlab
# train --set`; other commands read the data root that a training run filled.
_DOWNLOAD_HINT = "download it with data.download=true (resnetlab train ... --set data.download=true)"


def _download(cls, root: Path, name: str) -> None:
    """torchvision's download of ``name`` into ``root``; a failure (no network, a server error, a
    bad archive) becomes one line naming the dataset and the folder."""
    log.info("downloading %s to %s", name, root)
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError (checksum) from torchvision
        why = " ".join(str(exc).split())  # torchvision's message spans lines (URLs tried, the cause): one line
        raise DataError(f"{name}: download into {str(root)!r} failed ({why}); check the network, or copy the files there") from None


def _read_cifar(root: Path, name: str, download: bool, origin: str = ""):
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    base = root / folder
    if not base.is_dir() and download:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        _download(cls, root, name)
    if not base.is_dir():
        raise DataError(
            f"{name} not found: expected {str(base)!r}{origin} (torchvision's python-pickle format); "
            f"{_DOWNLOAD_HINT}, or copy the extracted archive there"
        )
    if name == "cifar10":
        train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta_file, label_key, names_key = [base / "test_batch"], base / "batches.meta", "labels", "label_names"
    else:  # cifar100-coarse: the same files, labelled with the 20 superclasses (torchvision reads only the fine labels)
        train_files, test_files = [base / "train"], [base / "test"]
        kind = "coarse" if name == "cifar100-coarse" else "fine"
        meta_file, label_key, names_key = base / "meta", f"{kind}_labels", f"{kind}_label_names"
    missing = [f for f in [*train_files, *test_files, meta_file] if not f.is_file()]
    if missing and download:
        # a partial folder (an interrupted copy): torchvision checks every file and fetches the archive again
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        _download(cls, root, name)
        missing = [f for f in missing if not f.is_file()]
    if missing:
        raise DataError(f"{name}: missing file {str(missing[0])!r} (expected torchvision's {folder}/ layout); "
                        f"copy the whole extracted archive there, or {_DOWNLOAD_HINT}")

    meta = _unpickle(meta_file)
    if names_key not in meta:
        raise DataError(f"{name}: {str(meta_file)!r} has no {names_key!r} entry (keys: {sorted(map(str, meta))}); "
                        f"is it the {folder}/ archive's meta file?")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[names_key]]

    def read(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            d = _unpickle(f)
            try:
                x = np.asarray(d["data"], dtype=np.uint8)
                y = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{name}: {str(f)!r} is not in the CIFAR pickle format (no usable {exc})") from None
            # rows of 3,072 bytes (1,024 red, green, blue, each 32x32 row-major); any other size
            # would reshape into scrambled images without an error
            if x.size != len(y) * 3072:
                raise DataError(f"{name}: {str(f)!r} holds {x.size} pixel bytes for {len(y)} labels (expected "
                                f"{len(y)} x 3072: 32x32 RGB); the file is damaged, extract the archive again")
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise DataError(f"{name}: labels out of range in {str(f)!r}: found {int(y.min())}..{int(y.max())} but "
                                f"{str(meta_file)!r} names {len(classes)} classes (allowed: 0..{len(classes) - 1})")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    (xtr, ytr), (xte, yte) = read(train_files), read(test_files)
    shape = (3, 32, 32)
    return ImageSet(ytr, shape, classes, images=xtr), None, ImageSet(yte, shape, classes, images=xte), classes


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one IDX file (raw or gzip) of ``ndim`` dimensions. Written by hand: torchvision's
    reader needs raw files in its own folder layout, and the format is a 4-byte magic (0, 0, 8 for
    unsigned bytes, the dimension count), big-endian dims, then the bytes."""
    fix = "the file is damaged or not an MNIST-style IDX file: copy it again, or delete it and " + _DOWNLOAD_HINT
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"  # by content: a gzip file without .gz (or the reverse) reads too
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # a truncated or corrupt .gz
        raise DataError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file (magic {data[:4].hex() or 'missing'}, "
                        f"expected 000008{ndim:02x}); {fix}")
    if data[3] != ndim:
        # e.g. a labels file where the images belong: {1: labels, 3: images}
        raise DataError(f"{str(path)!r} has {data[3]} dimension(s) but {'an images' if ndim == 3 else 'a labels'} "
                        f"file has {ndim}; {fix}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{str(path)!r} is truncated inside its header ({len(data)} bytes); {fix}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise DataError(f"{str(path)!r}: IDX header says {dims} ({count} bytes) but holds {len(data) - offset} bytes; {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for cand in (d / stem, d / f"{stem}.gz"):
            if cand.is_file():
                return cand
    return None


def _find_idx_set(dirs: list[Path], stems: list[str]) -> list[Path | None]:
    """The four IDX files from the first folder that holds all four (never a mix of folders:
    MNIST and Fashion-MNIST use the same file names); else what each folder has, for the error."""
    for d in dirs:
        found = [_find_idx([d], s) for s in stems]
        if None not in found:
            return found
    return [_find_idx(dirs, s) for s in stems]


def _read_mnist(root: Path, name: str, download: bool, origin: str = ""):
    tv_folder = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    # the dataset's own folders first; the bare root (files put directly in --data-root, which
    # cannot say which of the two datasets they are) last, after the system Fashion-MNIST
    dirs = [root / name, root / tv_folder / "raw"]
    if name == "fashion-mnist":
        dirs.append(Path(SYSTEM_FASHION_MNIST))
    dirs.append(root)
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    # the user's own copy, incomplete: an error naming the missing file (or the download that
    # completes it), not the system's Fashion-MNIST in its place without a word
    own = [[_find_idx([d], st) for st in stems] for d in dirs[:2]]
    complete = any(None not in f for f in own)
    partial = None if complete else next(((d, f) for d, f in zip(dirs[:2], own) if any(f)), None)
    if partial is not None and not download:
        d, f = partial
        raise DataError(f"{name}: {d} holds {sum(p is not None for p in f)} of its 4 IDX files but no "
                        f"{stems[f.index(None)]}[.gz]{origin}; copy the missing file there, or {_DOWNLOAD_HINT}")  # fmt: skip
    # a partial copy with data.download: torchvision fetches what is missing into root/<dataset>/raw
    found = [None] if partial is not None else _find_idx_set(dirs, stems)
    if None in found and download:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
        _download(cls, root, name)
        found = _find_idx_set(dirs, stems)
    if None in found:
        missing = stems[found.index(None)]
        hint = " or install the Debian package dataset-fashion-mnist" if name == "fashion-mnist" else ""
        raise DataError(
            f"{name} not found: no {missing}[.gz] in {', '.join(str(d) for d in dirs)}{origin}; "
            f"{_DOWNLOAD_HINT}{hint}"
        )
    where = (name, str(found[0].parent))
    if where in _SAID_WHERE:
        pass  # once per process: the report reads the dataset again for its misclassified images
    elif found[0].parent == root:
        log.info("%s: using the IDX files directly in %s (%s/%s/ is the unambiguous place for them)", name, root, root, name)
    elif str(found[0].parent) == str(Path(SYSTEM_FASHION_MNIST)):
        log.info("%s: using the system copy in %s (Debian's dataset-fashion-mnist; none under %s)", name, found[0].parent, root)
    if log.isEnabledFor(logging.INFO):  # said, not only looked at: --smoke's silenced probe said nothing
        _SAID_WHERE.add(where)
    xtr, ytr, xte, yte = (_read_idx(p, ndim) for p, ndim in zip(found, (3, 1, 3, 1)))
    for xp, yp, x, y in ((found[0], found[1], xtr, ytr), (found[2], found[3], xte, yte)):
        if len(x) != len(y):
            raise DataError(f"{name}: {str(xp)!r} has {len(x)} images but {str(yp)!r} {len(y)} labels (files of two "
                            f"different sets?)")
        if len(y) and int(y.max()) > 9:
            raise DataError(f"{name}: labels out of range in {str(yp)!r}: found up to {int(y.max())} (allowed: 0..9)")
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    h, w = xtr.shape[1:]
    shape = (1, h, w)
    to_t = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731  (N, 1, H, W)
    tr = ImageSet(torch.from_numpy(ytr.astype(np.int64)), shape, classes, images=to_t(xtr))
    te = ImageSet(torch.from_numpy(yte.astype(np.int64)), shape, classes, images=to_t(xte))
    return tr, None, te, classes


def _read_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16; scale to the uint8 range all loaders share.
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    classes = [str(i) for i in range(10)]
    keep, test = stratified_split(y.numpy(), _TEST_FRACTION, _SPLIT_SEED)
    full = ImageSet(y, (1, 8, 8), classes, images=x)
    return full.subset(keep), None, full.subset(test), classes


_SYNTH_RE = re.compile(r"^(\d+)x(\d+)x(\d+)(?::(\d+))?(?::(\d+))?$")


SYNTHETIC_MAX_BYTES = 16 * 2**30  # a typo (an extra zero or two) was a MemoryError, or the machine swapping


def parse_synthetic(spec: str) -> tuple[tuple[int, int, int], int, int]:
    """``"3x32x32:10:2000"`` -> ((3, 32, 32), 10 classes, 2000 training images)."""
    if not spec:
        return (3, 32, 32), 10, 2000
    m = _SYNTH_RE.match(spec)
    if not m:
        raise DataError(f"synthetic spec {spec!r} is malformed (allowed: 'synthetic[:CxHxW[:CLASSES[:N]]]', e.g. 'synthetic:3x32x32:10:2000')")
    c, h, w = (int(m.group(i)) for i in (1, 2, 3))
    k = int(m.group(4) or 10)
    n = int(m.group(5) or 2000)
    if c not in (1, 3) or h < 1 or w < 1 or k < 2 or n < k:
        raise DataError(f"synthetic spec {spec!r}: need C in (1, 3), H, W >= 1, CLASSES >= 2 and N >= CLASSES")
    total = (n + max(k, n // 5)) * c * h * w  # uint8 bytes of the training and test images, held in memory
    if total > SYNTHETIC_MAX_BYTES:
        raise DataError(f"synthetic spec {spec!r} would hold {total / 2**30:.1f} GiB of images in memory (N training images "
                        f"and N/5 test images of CxHxW bytes each; at most {SYNTHETIC_MAX_BYTES / 2**30:.0f} GiB): use a "
                        f"smaller N or image")  # fmt: skip
    return (c, h, w), k, n


def _read_synthetic(spec: str):
    shape, k, n = parse_synthetic(spec)
    n_test = max(k, n // 5)
    # Fixed generator: the dataset is the same for every run and seed. Each class has a smooth
    # random prototype; images are prototype + noise, so a model can learn them.
    rng = np.random.default_rng(1234)
    c, h, w = shape
    coarse = torch.from_numpy(rng.random((k, c, max(1, h // 4), max(1, w // 4)), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    # uint8 arithmetic only (fast at 50k images): prototype in 0..128 plus noise in 0..127.
    protos = (smooth * 128).round().to(torch.uint8).numpy()

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.permutation(np.arange(count) % k)
        noise = np.frombuffer(rng.bytes(count * c * h * w), dtype=np.uint8).reshape(count, c, h, w) >> 1
        x = protos[y] + noise
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    classes = [f"class_{i}" for i in range(k)]
    (xtr, ytr), (xte, yte) = make(n), make(n_test)
    return ImageSet(ytr, shape, classes, images=xtr), None, ImageSet(yte, shape, classes, images=xte), classes


def walk_files(root: Path, fence: Path | None = None) -> list[Path]:
    """Every visible file under ``root``, in no set order: a file or folder whose name starts with
    a dot (``.DS_Store``, ``.ipynb_checkpoints/``, ``.thumbs/``) is never an image of a class, and
    training and ``predict`` on a folder both leave it out. Symbolic links to folders are followed, as torchvision's ``ImageFolder``
    follows them (``Path.rglob`` did not: a class's linked sub-folder was left out without a
    word), each real folder once, except links back into ``fence`` (default ``root``: the
    dataset's folder) or to a folder holding it, whose files are there already or would come
    round again (a loop)."""
    top = os.path.realpath(fence if fence is not None else root)
    seen: set[str] = set()
    out: list[Path] = []

    def visit(folder: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable, or gone: as rglob, its files are not listed
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if e.is_symlink():
                        target = os.path.realpath(e.path)
                        if os.path.commonpath([target, top]) in (target, top):  # inside the dataset, or holding it
                            continue
                    visit(e.path)
                elif e.is_file():
                    out.append(Path(e.path))
            except OSError:
                continue

    visit(os.fspath(root))
    return out


def _list_class_files(folder: Path, dataset: Path) -> dict[str, list[str]]:
    """Class -> its files, for the class folders of ``folder`` (a split of ``dataset``, or the
    dataset itself); a link back into ``dataset`` is not followed (a link from train/ into val/
    trained on the validation images)."""
    from resnetlab.predict import IMAGE_EXTENSIONS

    # images beside the class folders belong to no class: they were left out without a word
    loose = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))  # fmt: skip
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if loose and classes:  # without class folders the caller's error says it
        log.warning("image folder %s: ignoring %d image(s) beside the class folders (%s%s); an image's class is "
                    "the folder it is in: %s/<class>/", folder, len(loose), ", ".join(loose[:3]),
                    ", ..." if len(loose) > 3 else "", folder)  # fmt: skip
    out = {}
    for c in classes:
        root = folder / c
        out[c] = sorted(str(p) for p in walk_files(root, fence=dataset))
    return out


_SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _visible(folder: Path) -> tuple[list[str], list[str]]:
    """The visible sub-folders of ``folder`` and the image files directly in it (names, sorted)."""
    from resnetlab.predict import IMAGE_EXTENSIONS

    dirs, images = [], []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir():
            dirs.append(p.name)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p.name)
    return sorted(dirs), sorted(images)


def _not_a_split(path: str, split: str, folder: Path, what: str) -> None:
    log.warning("image folder %s: %s/ has %s; it is not used as the %s split: %s", path, folder.name, what,
                "validation" if split == "val" else "test",
                "data.val_fraction of train/ is held out instead" if split == "val" else
                f"part of train/ is held out instead (`resnetlab predict RUN {folder}` labels its images)")  # fmt: skip


def _split_dirs(base: Path, path: str) -> dict[str, Path]:
    """``train`` / ``val`` / ``test`` -> their sub-folder of ``base`` (``valid/`` and ``validation/``
    name the validation split too, as Kaggle-style datasets ship it). Names match in any case:
    ``Train/``, ``Val/``, ``Test/`` were read as three classes named after the splits.

    A folder with a split's name is a split only when it holds class sub-folders. Without them
    ``train/`` (and, without a ``train/`` split, ``val/`` and ``test/``) is a class of a flat
    layout (a class named "train": CIFAR-100 has one), and a ``val/`` or ``test/`` beside a
    ``train/`` split (empty, or unlabelled images directly in it, as Kaggle ships its test set;
    class folders without files are found empty by the caller) is left out with a warning, so
    the split is held out of train/ as when the folder is absent: it used to be a 0-image split,
    and the run failed after training for want of a test split. Beside ``train/``, any other
    visible folder is named in a warning: it is not read."""
    found: dict[str, Path] = {}
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    for split, names in _SPLIT_NAMES.items():
        present = [n for n in folders if n.lower() in names]
        if len(present) > 1:
            raise DataError(f"image folder {path!r} has {' and '.join(f'{n}/' for n in present)}: keep one {'validation' if split == 'val' else split} folder")
        if present:
            found[split] = base / present[0]
    contents = {split: _visible(d) for split, d in found.items()}
    if "train" in found and not contents["train"][0] and contents["train"][1]:
        return {}  # train/ holds images, no class folders: a class of a flat layout
    if "train" not in found:  # val/ or test/ of images without class folders: classes of a flat layout too
        found = {split: d for split, d in found.items() if contents[split][0]}
    for split in ("val", "test"):
        if split in found and "train" in found and not contents[split][0]:
            images = contents[split][1]
            _not_a_split(path, split, found.pop(split), f"{len(images)} image(s) directly in it and no class sub-folders "
                                                        f"(unlabelled?)" if images else "nothing in it")  # fmt: skip
    if "train" in found:
        known = {p.name for p in found.values()} | {n for n in folders if n.lower() in _SPLIT_NAMES["val"] + _SPLIT_NAMES["test"]}
        other = [n for n in folders if n not in known]
        if other:
            loose = {n: len(_visible(base / n)[1]) for n in other}
            log.warning("image folder %s: ignoring folder(s) %s beside train/ (the splits read are train/, val/ or valid/ "
                        "or validation/, and test/)%s", path, ", ".join(f"{n}/" + (f" ({loose[n]} images)" if loose[n] else "") for n in other),
                        "; if they are classes, move them into train/<class>/ (a class named train must hold its images "
                        "directly, not in sub-folders)" if any(loose.values()) else "")  # fmt: skip
    return found


def _read_imagefolder(path: str, size: tuple[int, int], stream_threshold_gb: float, workers: int):
    base = Path(path).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {path!r} does not exist or is not a directory")
    if not os.access(base, os.R_OK | os.X_OK):
        raise DataError(f"image folder {path!r} is not readable")
    split_dirs = _split_dirs(base, path)
    if split_dirs and "train" not in split_dirs:
        named = " and ".join(f"{d.name}/" for d in split_dirs.values())
        raise DataError(
            f"image folder {path!r} has {named} but no train/ sub-folder; put the training images in "
            f"{path}/train/<class>/ (or, if these are class names, rename them: 'val' and 'test' name splits)"
        )
    if "train" in split_dirs:
        listing = {s: _list_class_files(d, base) for s, d in split_dirs.items()}
        for split in ("val", "test"):  # class folders, every one empty: as an empty folder
            if split in listing and not any(listing[split].values()):
                _not_a_split(path, split, split_dirs[split], f"class folders ({', '.join(sorted(listing[split]))}) with no files in them")
                del listing[split]
    else:
        listing = {"all": _list_class_files(base, base)}
    main = listing.get("train", listing.get("all"))
    classes = sorted(main)
    if not classes:
        raise DataError(f"image folder {path!r} has no class sub-folders (expected PATH/<class>/<image files>)")
    if len(classes) < 2:
        raise DataError(f"image folder {path!r} has a single class {classes[0]!r}; classification needs at least 2 class folders")
    empty = [c for c in classes if not main[c]]
    if empty:
        raise DataError(f"image folder {path!r}: empty class folder(s) {', '.join(empty)} (every class needs images)")
    for split, lst in listing.items():
        extra = sorted(set(lst) - set(classes))
        if extra:
            import unicodedata

            nfc = {unicodedata.normalize("NFC", c) for c in classes}
            same = [c for c in extra if unicodedata.normalize("NFC", c) in nfc]
            hint = (f" ({', '.join(map(repr, same))} {'is' if len(same) == 1 else 'are'} spelt as in train/ but in another Unicode "
                    f"form, NFD as macOS writes names, or NFC: rename the folders so the names match byte for byte)") if same else ""  # fmt: skip
            raise DataError(f"image folder {path!r}: {split}/ has classes {extra} that train/ lacks{hint}")

    # Header pass (cheap): drops non-images and empty files, and decides gray vs RGB.
    entries = {s: [(f, classes.index(c)) for c in sorted(lst) for f in lst[c]] for s, lst in listing.items()}
    # A folder name that is not UTF-8 (bytes from another system) comes as surrogates, which no
    # file, figure or terminal takes: the class is named with the byte escaped ("chat_\xe9").
    classes = [printable(c) for c in classes]
    skipped: list[str] = []
    gray = True
    valid: dict[str, list[tuple[str, int]]] = {}
    for split, items in entries.items():
        keep = []
        for f, y in items:
            try:
                mode = image_mode(f)
            except Exception as exc:  # Pillow raises several types for non-images; all mean "skip"
                if type(exc).__name__ == "DecompressionBombError":  # an image, too large: "unreadable" alone misled
                    log.warning("image folder %s: %s is skipped: %s", path, f, str(exc).splitlines()[0])
                skipped.append(f)
                continue
            gray = gray and is_gray_mode(mode)
            keep.append((f, y))
        valid[split] = keep
    channels = 1 if gray else 3
    shape = (channels, size[0], size[1])
    n_total = sum(len(v) for v in valid.values())
    streaming = n_total * channels * size[0] * size[1] > stream_threshold_gb * 1e9

    sets: dict[str, ImageSet] = {}
    listing: list[str] = []  # streaming: every split's files, the rows of the folder's one cache
    for split, items in valid.items():
        paths = [f for f, _ in items]
        ys = [y for _, y in items]
        if streaming:
            rows = torch.arange(len(listing), len(listing) + len(paths))
            listing += paths
            sets[split] = ImageSet(torch.tensor(ys, dtype=torch.int64), shape, classes, paths=paths, cache_rows=rows)
            continue
        # held in memory: decoded by load_dataset once the splits (and data.subset) are drawn, so
        # only the images a run uses are decoded, and a file whose pixels do not decode takes
        # part in the draw as it does when streaming (both ways draw the same images)
        sets[split] = ImageSet(torch.tensor(ys, dtype=torch.int64), shape, classes, paths=paths)
    main_set = sets.get("train", sets.get("all"))
    counts = torch.bincount(main_set.targets, minlength=len(classes))
    if int(counts.min()) == 0:
        bad = [classes[i] for i in range(len(classes)) if counts[i] == 0]
        raise DataError(f"image folder {path!r}: class folder(s) {', '.join(bad)} have no readable images")
    if streaming:
        log.info("image folder %s: %.2f GB as uint8 > %.2f GB, streaming from disk", path, n_total * np.prod(shape) / 1e9, stream_threshold_gb)
    if "train" in sets:
        train, val, test = sets["train"], sets.get("val"), sets.get("test")
        if test is None:
            keep, held = stratified_split(train.targets.numpy(), _TEST_FRACTION, _SPLIT_SEED, classes,
                                          f", or put test images into {path}/test/<class>/")
            train, test = train.subset(keep), train.subset(held)
            test.held_out = True
            log.info("image folder %s has no test/<class>/ folders: holding out %d%% of train/ as test (seed %d)", path, int(_TEST_FRACTION * 100), _SPLIT_SEED)
    else:
        full = sets["all"]
        keep, held = stratified_split(full.targets.numpy(), _TEST_FRACTION, _SPLIT_SEED, classes,
                                      f", or split the folder into {path}/train/<class>/ and test/<class>/")
        train, val, test = full.subset(keep), None, full.subset(held)
        test.held_out = True
    return train, val, test, classes, skipped, listing, not streaming


def _decode_into_memory(imageset: ImageSet, workers: int) -> tuple[ImageSet, list[str]]:
    """An image folder's split decoded into memory, and the files that did not decode (left out).

    Threads (the decoders release the GIL); each image goes straight into one preallocated batch,
    stored NHWC (channels_last) as the in-memory loader keeps it: a list of decoded images then
    torch.stack held the split twice at the peak.
    """
    channels, h, w = imageset.image_shape
    paths = imageset.paths
    x = torch.empty((len(paths), channels, h, w), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)

    def load(i: int) -> bool:
        try:
            x[i] = read_image(paths[i], channels=channels, size=(h, w))
        except Exception:  # corrupt or truncated: reported once by load_dataset
            return False
        return True

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        good = list(pool.map(load, range(len(paths))))
    ok = [i for i, g in enumerate(good) if g]
    failed = [paths[i] for i, g in enumerate(good) if not g]
    if failed:
        keep = torch.tensor(ok, dtype=torch.int64)
        x, targets, paths = x[keep], imageset.targets[keep], [paths[i] for i in ok]  # x[keep] stays channels_last
    else:
        targets = imageset.targets
    return ImageSet(targets, imageset.image_shape, imageset.classes, images=x, paths=paths, held_out=imageset.held_out), failed


def _decodable_sample(imageset: ImageSet, count: int, chunk: int = 64) -> Iterator[torch.Tensor]:
    """Up to ``count`` evenly spaced images of a streaming set, decoded, in batches of up to
    ``chunk``; files that do not decode are left out (the loader drops them from its batches
    too), not counted as black images. Batches, not one stack: 2,000 images at 256 pixels held
    as a list and then stacked took 0.8 GB at the peak, only to be summed."""
    c, h, w = imageset.image_shape
    pick = np.linspace(0, len(imageset) - 1, num=min(count, len(imageset))).astype(np.int64)
    images = []
    for i in pick.tolist():
        try:
            images.append(read_image(imageset.paths[i], channels=c, size=(h, w)))
        except Exception:  # corrupt / truncated / vanished, as the loader's decode
            continue
        if len(images) == chunk:
            yield torch.stack(images)
            images = []
    if images:
        yield torch.stack(images)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
    val_fraction: float = 0.1,
    subset: int | float | None = None,
    seed: int = 0,
    download: bool = False,
    *,
    stream_threshold_gb: float = 2.0,
    cache: str | os.PathLike | bool | None = None,
    workers: int | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DatasetSplits:
    """Load a dataset by name as train / val / test splits.

    Args:
        name: one of :data:`DATASET_NAMES`; ``imagefolder:PATH`` and ``synthetic:CxHxW:K:N`` take
            an argument after the colon.
        root: data root (default ``$RESNETLAB_DATA`` or ``~/.cache/resnetlab``).
        image_size: resize to this (int or (h, w)); image folders default to 224, other datasets
            keep their native size.
        val_fraction: share of the training pool held out for validation (stratified, seeded by
            ``seed``); 0 gives an empty val split. Ignored when an image folder has ``val/``.
        subset: keep only this many (int, or a whole float > 1) or this share (float in (0, 1]) of the training pool,
            stratified, before the validation hold-out; the test split is never reduced.
        seed: seed of the subset and validation splits.
        download: fetch CIFAR / MNIST / Fashion-MNIST with torchvision when missing.
        stream_threshold_gb: image folders larger than this as uint8 stream from disk.
        cache: streaming only: a folder (or ``True`` for ``PATH/.resnetlab-cache``) for a
            memory-mapped cache of the resized images, filled during the first epoch; one file per
            folder listing and image size, shared by every split and seed (older listings' files
            of the folder are removed when it is made). A cache that cannot be made (a full disk,
            a read-only folder) is skipped with a warning.
        workers: decode threads for image folders (default: CPU count).
        normalization: ``(mean, std)`` the caller will normalize with (evaluate and explain: the
            checkpoint's): returned as the splits' ``mean`` / ``std`` instead of computing them
            (a streaming folder's estimate decodes up to 2,000 images).

    Returns:
        :class:`DatasetSplits` with ``mean`` / ``std`` from the training split.

    Raises:
        DataError: unknown name, missing files, bad root, bad folder, labels out of range.

    Example:
        >>> s = load_dataset("digits", val_fraction=0.1, seed=0)
        >>> s.image_shape, len(s.classes), len(s.test)
        ((1, 8, 8), 10, 360)
    """
    key, arg = dataset_key(name)
    if not (0.0 <= float(val_fraction) < 1.0):
        raise DataError(f"val_fraction={val_fraction!r} is out of range (allowed: 0 <= val_fraction < 1)")
    size = _size_arg(image_size)
    skipped: list[str] = []
    if key in ("cifar10", "cifar100", "cifar100-coarse", "fashion-mnist", "mnist"):
        r = data_root(root)
        origin = _root_origin(root)
        _check_root(r, explicit=root is not None and not download, origin=origin)
        reader = _read_cifar if key.startswith("cifar") else _read_mnist
        train, val, test, classes = reader(r, key, download, origin)
    else:
        if root is not None:  # a warning, not an error: a recipe's root may serve its other datasets
            reads = {"digits": "scikit-learn's bundled set", "synthetic": "no files"}.get(key, "the folder in its name")
            log.warning("data root %s is not used for the data: %s reads %s (a data root is only searched for "
                        "torchvision weights files then, with model.pretrained=torchvision:...)", root, key, reads)
        if key == "digits":
            train, val, test, classes = _read_digits()
        elif key == "synthetic":
            train, val, test, classes = _read_synthetic(arg)
        else:
            if not arg:
                raise DataError("imagefolder needs a path: 'imagefolder:PATH'")
            train, val, test, classes, skipped, listing, decode = _read_imagefolder(
                arg, size or (224, 224), stream_threshold_gb, workers or os.cpu_count() or 1
            )

    # Resize in-memory datasets once, here, so every epoch reads ready-sized uint8.
    if size is not None and train.in_memory and tuple(train.image_shape[1:]) != size:
        c = train.image_shape[0]
        parts = [train, val, test]
        train, val, test = (
            None if s is None else ImageSet(s.targets, (c, *size), classes, images=_resize_all(s.images, size), paths=s.paths,
                                            held_out=s.held_out)
            for s in parts
        )

    if subset is not None:
        n = len(train)
        if isinstance(subset, bool) or not isinstance(subset, (int, float)):
            raise DataError(f"subset={subset!r} must be an int count or a fraction in (0, 1]")
        if isinstance(subset, float) and subset > 1.0 and subset.is_integer():
            subset = int(subset)  # "--subset 500" arrives as 500.0 from a float-typed flag
        if isinstance(subset, float) and not (0.0 < subset <= 1.0):
            raise DataError(f"subset={subset!r} is out of range (allowed: a fraction in (0, 1] or a count)")
        count = int(subset) if isinstance(subset, int) else int(round(subset * n))
        if isinstance(subset, int) and not (1 <= subset <= n):
            raise DataError(f"subset={subset} is out of range (allowed: 1..{n}, the training pool size)")
        k = int(torch.unique(train.targets).numel())
        if count < k:  # a stratified subset holds one image of each class at least
            frac = "" if isinstance(subset, int) else f", or a fraction of at least {k / n:.3g}"
            raise DataError(f"data.subset={subset!r} keeps {count} image(s), fewer than the {k} classes: a stratified "
                            f"subset needs one image of each class (allowed: {k}..{n} images{frac})")  # fmt: skip
        if count < n:
            _, keep = stratified_split(train.targets.numpy(), count, seed)
            train = train.subset(keep)

    if val is None:
        if val_fraction > 0:
            # a synthetic set's images per class come from its spec, not from files
            more = ("give each class more images: a larger N in 'synthetic:CxHxW:CLASSES:N'" if key == "synthetic"
                    else "add images to them")  # fmt: skip
            keep, held = stratified_split(train.targets.numpy(), float(val_fraction), seed, classes,
                                          ", or set data.val_fraction=0 to train without a validation split", more)
            train, val = train.subset(keep), train.subset(held)
            val.held_out = True
        else:
            val = train.subset([])

    if key == "imagefolder":
        if decode:  # the splits are drawn: an in-memory folder decodes the images they hold
            decoded = [_decode_into_memory(s, workers or os.cpu_count() or 1) for s in (train, val, test)]
            (train, failed_train), (val, failed_val), (test, failed_test) = decoded
            skipped = skipped + failed_train + failed_val + failed_test
        if skipped:
            shown = ", ".join(skipped[:20]) + (f", ... ({len(skipped) - 20} more)" if len(skipped) > 20 else "")
            log.warning("skipped %d unreadable file(s) in %s: %s", len(skipped), arg, shown)
        if decode:
            lacking = sorted(set(range(len(classes))) - set(train.targets.tolist()))
            if lacking:
                raise DataError(f"image folder {arg!r}: class folder(s) {', '.join(classes[i] for i in lacking)} have no "
                                f"readable images in the training split")  # fmt: skip

    # accepted and unused without a word (data.root on such a dataset warns); said when a run loads
    # its data, not by evaluate / explain, which pass the checkpoint's normalization and where the
    # config cannot be changed
    if cache and train.in_memory and normalization is None:
        log.warning("data.cache applies to image folders that stream from disk; %s is held in memory, so no cache is made", name)
    if cache and not train.in_memory:
        cache_dir = Path(arg).expanduser() / ".resnetlab-cache" if isinstance(cache, bool) else Path(cache).expanduser()
        path = cache_file_for(listing, train.image_shape, cache_dir, arg)
        fresh = cache_layout(path, train.image_shape) is None
        if reserve_cache(path, len(listing), train.image_shape):
            if fresh:
                _prune_stale_caches(path, arg, train.image_shape)
            for s in (train, val, test):
                s.cache = path  # their cache_rows index it

    if normalization is not None:
        mean, std = (list(map(float, v)) for v in normalization)
        if len(mean) != train.image_shape[0] or len(std) != train.image_shape[0]:
            raise DataError(f"the given normalization has {len(mean)} mean and {len(std)} std values but {name} has "
                            f"{train.image_shape[0]} channel(s) (allowed: one of each per channel; a checkpoint of other "
                            f"images?)")  # fmt: skip
    elif train.in_memory:
        mean, std = _channel_stats(train.images)
    else:
        mean, std = _channel_stats(_decodable_sample(train, 2000), channels=train.image_shape[0])
    if normalization is None and len(train) and max(std) < 0.5 / 255:
        # a float TIFF clipped to black, say: the run trains at chance with nothing said
        log.warning("dataset %s: every training image is (nearly) one flat value (pixel std %.2g of 1 in every channel, mean %s): "
                    "nothing to learn from; are the files decoded as expected?", name, max(std),
                    ", ".join(f"{m:.3f}" for m in mean))  # fmt: skip
    log.info(
        "dataset %s: %d train / %d val / %d test, %d classes, shape %s",
        name, len(train), len(val), len(test), len(classes), "x".join(map(str, train.image_shape)),
    )
    return DatasetSplits(name, train, val, test, list(classes), tuple(train.image_shape), mean, std, skipped)
