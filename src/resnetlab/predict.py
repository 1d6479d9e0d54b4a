"""Top-k predictions for image files, with the checkpoint's own preprocessing.

Size, channel count and mean/std come from the checkpoint metadata (``input_size``, ``mean``,
``std``), so any photo or PNG can be classified: it is decoded, converted to the model's
channels, resized to cover the size the run's dataset stored its images at and center-cropped,
put through the run's evaluation transforms (resize, center-crop), then normalized: the same
geometry ``resnetlab evaluate`` gives the test split. A run trained with ``train.tta_flip``
averages the logits of each image and its mirror, as its evaluation did (every backend; an
export's sidecar records the setting).

Backends turn a checkpoint into a function from a normalized float batch to logits:
``"torch"`` (eager), ``"torch-compile"`` (BN-folded and compiled by inductor with weight freezing;
pays for large jobs, see :func:`resnetlab.fold.compile_for_inference`), ``"onnx"`` (an exported
file run by ONNX Runtime, :mod:`resnetlab.export`) and ``"torchscript"`` (an exported TorchScript
file run by ``torch.jit``). The two exported-file backends take their preprocessing from the
export's ``FILE.json`` sidecar.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resnetlab.errors import DataError, ResnetlabError, check_int, unknown_name

if TYPE_CHECKING:
    from resnetlab.checkpoint import Checkpoint

log = logging.getLogger(__name__)

__all__ = ["predict", "collect_image_files", "BACKENDS", "register_backend", "IMAGE_EXTENSIONS"]

# Extensions picked up when walking a directory (files named explicitly may have any name).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif"})  # fmt: skip

DEFAULT_TOP_K = 5  # classes per image when top_k is not given (all of a model with fewer)

# A backend factory: (checkpoint source, device, which) -> (run, meta); run(x) -> logits.
Runner = Callable[[torch.Tensor], torch.Tensor]
BackendFactory = Callable[..., tuple[Runner, dict]]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend factory ``f(checkpoint_or_run, device, which) -> (run, meta)``.

    ``run`` maps a normalized float32 batch (B, C, H, W) on ``device`` to logits (B, K);
    ``meta`` is the checkpoint metadata (``classes``, ``input_size``, ``mean``, ``std``).

    Example:
        >>> @register_backend("onnx")  # doctest: +SKIP
        ... def _onnx(source, device, which): ...
    """

    def deco(fn: BackendFactory) -> BackendFactory:
        BACKENDS[name] = fn
        return fn

    return deco


def _load(source, device: torch.device, which: str):
    """The checkpoint (loaded unless given) and its metadata with ``classes`` filled in.

    Raises:
        CheckpointError: the metadata lacks the preprocessing (``input_size``, ``mean``, ``std``).
    """
    from resnetlab.checkpoint import META, Checkpoint, load_checkpoint, require_preprocessing

    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source, which=which, device=device)
    require_preprocessing(ckpt.meta, ckpt.path / META)
    meta = dict(ckpt.meta)
    meta["classes"] = ckpt.classes  # by index where the metadata has none (null included)
    return ckpt, meta


@register_backend("torch")
def _torch_backend(source, device: torch.device, which: str = "best") -> tuple[Runner, dict]:
    ckpt, meta = _load(source, device, which)
    model = ckpt.model.to(device).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).float()

    return run, meta


@register_backend("torch-compile")
def _torch_compile_backend(source, device: torch.device, which: str = "best") -> tuple[Runner, dict]:
    # The torch backend's model, BN-folded and compiled by inductor with weight freezing
    # (resnetlab.fold.compile_for_inference). The graph is specialized to one batch shape, so a
    # smaller last batch is padded with zeros to the first batch's size and the padding's logits
    # dropped: eval-mode rows are independent, so the real rows' outputs do not change.
    from resnetlab.fold import compile_for_inference

    ckpt, meta = _load(source, device, which)
    compiled = compile_for_inference(ckpt.model.to(device))
    shape: list[tuple[int, ...]] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        if not shape:
            shape.append(tuple(x.shape))
        n = x.shape[0]
        if tuple(x.shape[1:]) == shape[0][1:] and n < shape[0][0]:
            x = torch.cat([x, x.new_zeros((shape[0][0] - n, *x.shape[1:]))])
        try:
            with torch.no_grad():
                return compiled(x)[:n].float()
        except Exception as exc:  # inductor needs a working C++ toolchain on CPU
            if type(exc).__name__ in ("BackendCompilerFailed", "InductorError", "CppCompileError"):
                raise ResnetlabError(
                    f"backend torch-compile could not compile the model ({str(exc).splitlines()[0][:160]}); "
                    "it needs a C++ compiler (g++) for CPU inference: install one or use --backend torch"
                ) from exc
            raise

    return run, meta


@register_backend("onnx")
def _onnx_backend(source, device: torch.device, which: str = "best") -> tuple[Runner, dict]:
    # An exported .onnx file run by ONNX Runtime; preprocessing from its FILE.json sidecar.
    from resnetlab.export import onnx_backend

    return onnx_backend(source, device, which)


@register_backend("torchscript")
def _torchscript_backend(source, device: torch.device, which: str = "best") -> tuple[Runner, dict]:
    # An exported TorchScript file (resnetlab export --format torchscript) loaded with torch.jit
    # onto the device; preprocessing from its FILE.json sidecar.
    from resnetlab.export import torchscript_backend

    return torchscript_backend(source, device, which)


_GLOB_CHARS = frozenset("*?[")


def _walk(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, hidden files and folders left out, linked folders
    followed as the image-folder datasets follow them: files with an image extension, and other
    files whose header reads as an image (training reads ``scan_01`` or ``x.dat`` by its header:
    ``predict`` on the same folder left them out)."""
    from resnetlab.data.datasets import walk_files
    from resnetlab.data.images import image_mode

    def is_image(f: Path) -> bool:
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            return True
        try:
            image_mode(f)
        except Exception:  # Pillow raises several types for what is not an image
            return False
        return True

    return sorted(f for f in walk_files(folder) if is_image(f))


def collect_image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, directories and glob patterns into a de-duplicated list of image files.

    Directories are walked recursively, linked folders followed, and keep the files the
    image-folder datasets train on: those with an image extension (:data:`IMAGE_EXTENSIONS`) and
    others whose header reads as an image, leaving out hidden files and folders (a name
    starting with a dot); files given explicitly are kept whatever their name and
    are checked when decoded. A path that does not exist and holds ``*``, ``?`` or ``[`` is a glob
    pattern (``**`` for any depth), for a quoted pattern or a shell that does not expand them: its
    matches are treated as a folder's files (image extensions only) and its folders walked.

    Raises:
        DataError: a path that does not exist, a pattern that matches nothing, or no image file
            at all (a directory or pattern without image files beside other inputs that have some
            is named in a warning).

    Example:
        >>> collect_image_files(["photos/", "cat.jpg"])  # doctest: +SKIP
    """
    files: list[Path] = []
    empty: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists() and _GLOB_CHARS.intersection(str(p)):
            # a quoted pattern (or a shell that does not expand them): expanded here, its files
            # kept as a folder's are (image extensions only), its folders walked
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                raise DataError(f"no file or directory matches the pattern {str(p)!r}")
            before = len(files)
            for m in matches:
                if m.is_dir():
                    files.extend(_walk(m))
                elif m.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(m)
            if len(files) == before:
                empty.append(f"pattern {str(p)!r}")
            continue
        if p.is_dir():
            found = _walk(p)
            if not found:
                empty.append(f"directory {str(p)!r}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image file or directory {str(p)!r} does not exist")
    if empty:
        looked = f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        if not files:
            raise DataError(f"no image files in {' or '.join(empty)} {looked}")
        log.warning("no image files in %s %s; predicting the other inputs", ", ".join(empty), looked)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _geometry(meta: dict) -> tuple[int, tuple[int, int], torch.nn.Module | None]:
    """Channels, the size files are loaded at, and the eval transforms after that.

    A run records the size its dataset stores images at (``data_shape``) and the deterministic
    transforms evaluation applies (``eval_transforms``: resize, center-crop), so a file is
    processed as the test split was: resized to cover ``data_shape`` and center-cropped (as the
    image-folder datasets do), then e.g. center-cropped to the model's input. Checkpoints without
    them (older runs, state-dict files) are resized straight to ``input_size``.
    """
    from resnetlab.data.augment import build_augment

    c, h, w = (int(v) for v in meta["input_size"])
    shape, transforms = meta.get("data_shape"), meta.get("eval_transforms")
    if shape and transforms:
        shape = [int(v) for v in shape]
        return c, (shape[1], shape[2]), build_augment(transforms, shape, train=False)
    return c, (h, w), None


def load_as_evaluated(paths: Sequence[str | os.PathLike], meta: dict) -> torch.Tensor:
    """Image files as the run's evaluation sees them before normalization.

    Loaded at the run's ``data_shape`` and passed through its ``eval_transforms`` (see
    :func:`_geometry`): uint8 ``(B, C, H, W)``, or float in [0, 1] after a resize.
    """
    from resnetlab.data.images import load_images

    c, load_hw, transform = _geometry(meta)
    images = load_images(list(paths), size=load_hw, channels=c)
    return transform(images) if transform is not None else images


def predict(
    checkpoint_or_run: str | os.PathLike | Checkpoint,
    inputs: Sequence[str | os.PathLike],
    top_k: int | None = None,
    batch_size: int = 64,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    which: str = "best",
    tta_flip: bool | None = None,
) -> list[dict]:
    """Classify image files with a checkpoint and return the top-k classes of each.

    Args:
        checkpoint_or_run: a run folder, a checkpoint folder / weights file, or a loaded
            :class:`resnetlab.checkpoint.Checkpoint` (torch backend).
        inputs: image files and/or directories (walked recursively for image files).
        top_k: classes per image; more than the model has gives all of them, with a warning.
            ``None``: 5, or every class of a model with fewer (no warning).
        batch_size: images per forward pass (files are decoded batch by batch).
        backend: a name from :data:`BACKENDS` (``"torch"``).
        device: where the model runs: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when
            available, else CPU), as for :func:`resnetlab.evaluate.evaluate`.
        which: ``"best"`` or ``"last"`` checkpoint of a run folder.
        tta_flip: average the logits of each image and its horizontal mirror; ``None`` (the
            default) does what the run's evaluation did (``train.tta_flip``), so the
            probabilities equal ``resnetlab evaluate``'s for the same image.

    Returns:
        One ``{"path": str, "top": [{"class": name, "index": i, "prob": p}, ...]}`` per image,
        in input order, classes by decreasing probability.

    Raises:
        DataError: a missing path or a file that is not a readable image (one line naming it).

    Example:
        >>> predict("runs/demo", ["digit.png"], top_k=3)[0]["top"][0]["class"]  # doctest: +SKIP
        '7'
    """
    from resnetlab.checkpoint import CheckpointError
    from resnetlab.data.images import preprocess
    from resnetlab.evaluate import resolve_device, tta_flip_of

    if backend not in BACKENDS:
        raise ValueError(unknown_name("backend", backend, BACKENDS))
    if top_k is not None:
        check_int("top_k", top_k, 1)
    check_int("batch_size", batch_size, 1)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = collect_image_files(inputs)
    if not files:
        raise DataError("no image files given to predict")
    device = resolve_device(device)
    run, meta = BACKENDS[backend](checkpoint_or_run, device, which)
    classes = [str(c) for c in meta["classes"]]
    tta = tta_flip_of(meta) if tta_flip is None else bool(tta_flip)
    k = min(DEFAULT_TOP_K if top_k is None else top_k, len(classes))
    if top_k is not None and top_k > k:  # asked for more than there are: say so rather than return fewer silently
        log.warning("top_k (--top-k) %d is more than the model's %d classes; giving all %d", top_k, k, k)
    if tta:  # the probabilities then differ from a plain forward pass: say why
        why = "the run's evaluation did (train.tta_flip)" if tta_flip is None else "asked (tta_flip)"
        log.info("averaging each image's logits with its mirror's (flip TTA), as %s", why)
    # a file named on the command line must be readable; one found by walking a folder that is
    # not is skipped with a warning, as the training datasets do
    named = {Path(i).expanduser().resolve() for i in inputs if Path(i).expanduser().is_file()}
    skipped: list[str] = []
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        try:
            images = load_as_evaluated(chunk, meta)
        except DataError:  # one file at a time, to find the unreadable ones
            readable = []
            # quietly: each file's own "converted to N channels" notice would be one line per file
            images_log = logging.getLogger("resnetlab.data.images")
            level = images_log.level
            images_log.setLevel(logging.WARNING)
            try:
                for f in chunk:
                    try:
                        load_as_evaluated([f], meta)
                        readable.append(f)
                    except DataError:
                        if f.resolve() in named:
                            raise
                        skipped.append(str(f))
            finally:
                images_log.setLevel(level)
            chunk = readable
            if not chunk:
                continue
            images = load_as_evaluated(chunk, meta)  # again, for the batch's one notice
        x = preprocess(images, meta["mean"], meta["std"], device=device)
        logits = run(x).float()
        if logits.ndim != 2 or logits.shape[1] != len(classes):  # a hand-edited classes list (an export's sidecar)
            k_out = logits.shape[1] if logits.ndim == 2 else tuple(logits.shape[1:])
            raise CheckpointError(f"{checkpoint_or_run}: the model gives {k_out} logits per image but its metadata "
                                  f"lists {len(classes)} classes; classes must name each output, in order")  # fmt: skip
        if tta:  # as evaluation: the mean of the two logits (collect_outputs)
            logits = (logits + run(torch.flip(x, dims=(3,))).float()) / 2
        probs = torch.softmax(logits.double(), dim=1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for path, ps, idx in zip(chunk, top_p.tolist(), top_i.tolist()):
            results.append(
                {"path": str(path), "top": [{"class": classes[i], "index": int(i), "prob": float(p)} for p, i in zip(ps, idx)]}
            )
    if skipped:
        log.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    if not results:
        raise DataError(f"none of the {len(files)} image file(s) could be read")
    log.debug("predicted %d images with %s backend%s", len(results), backend, " and flip TTA" if tta else "")
    return results
