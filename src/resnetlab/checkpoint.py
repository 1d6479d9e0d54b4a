"""Checkpoints: atomic folders of safetensors weights, JSON metadata and resumable state.

A checkpoint is a folder::

    model.safetensors    weights (safetensors: loading can never execute code)
    meta.json            arch, arch_args, classes, mean, std, input_size, config, metrics, ...
    trainer_state.pt     optimizer / scheduler / RNG / epoch / step (resume only; loaded with
                         ``torch.load(weights_only=True)``, which refuses pickled code)

Folders are written to a temporary sibling, flushed, and renamed into place; the previous
``last`` is kept as ``last.prev`` until the new one is complete, so a crash at any point
leaves at least one good checkpoint (nanoGPT keeps ``model_args`` in its checkpoints for
the same reason: a model can be rebuilt from the file alone).
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import CheckpointError, unknown_name

log = logging.getLogger(__name__)

FORMAT = "resnetlab-checkpoint/1"
WEIGHTS = "model.safetensors"
META = "meta.json"
STATE = "trainer_state.pt"
WHICH = ("best", "last")  # the checkpoints of a run folder

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_meta",
    "load_trainer_state",
    "resolve_checkpoint",
    "resume_candidates",
    "library_versions",
    "build_model_from_meta",
    "require_preprocessing",
    "checkpoint_identity",
    "made_of_another_checkpoint",
]


def library_versions() -> dict[str, str]:
    """Versions recorded in a checkpoint's meta.json: resnetlab, torch, torchvision and Python."""
    import torchvision

    from resnetlab import __version__

    return {
        "resnetlab": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP / compile wrappers
    model = getattr(model, "_orig_mod", model)
    # safetensors refuses shared or non-contiguous storage: give each tensor its own copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep_previous: bool = True,
) -> Path:
    """Atomically write a checkpoint folder.

    Args:
        directory: the final folder, e.g. ``runs/x/checkpoints/last``.
        model: the model whose ``state_dict`` is saved.
        meta: JSON-serializable metadata (``arch``, ``arch_args``, ``classes``, ...).
        trainer_state: optional resumable state (tensors, numbers, lists, dicts only).
        keep_previous: keep the replaced folder as ``<name>.prev`` (resume falls back to it).

    Raises:
        CheckpointError: the folder cannot be written (read-only, disk full); whatever was
            saved before stays in place.
    """
    from safetensors.torch import save as st_save

    directory = Path(directory)
    parent = directory.parent
    meta = {"format": FORMAT, "versions": library_versions(), **meta}
    tmp: Path | None = None
    rotated = False
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(parent, directory.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
        _write_file(tmp / WEIGHTS, st_save(_state_dict_for_save(model), metadata={"format": FORMAT}))
        _write_file(tmp / META, json.dumps(meta, indent=2, default=_json_default).encode())
        if trainer_state is not None:
            # Serialized in memory first: torch.save's zip writer reports a full disk as a
            # RuntimeError, while _write_file raises OSError like the other two files.
            buf = io.BytesIO()
            torch.save(trainer_state, buf)
            _write_file(tmp / STATE, buf.getvalue())
        _fsync_dir(tmp)
        prev = parent / f"{directory.name}.prev"
        if directory.exists():
            if prev.exists():
                _discard(prev)
            os.replace(directory, prev)
            rotated = True
        os.replace(tmp, directory)
        rotated = False
        tmp = None
        _fsync_dir(parent)
        if prev.exists() and not keep_previous:
            _discard(prev)
    except OSError as exc:
        if rotated and not directory.exists():
            # The new folder could not be renamed into place: put the previous one back under
            # its own name, so readers that only look for `directory` still find it.
            try:
                os.replace(parent / f"{directory.name}.prev", directory)
            except OSError:
                pass  # it stays readable as <name>.prev, which resume also tries
        raise CheckpointError(f"cannot write checkpoint {directory}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder so that a kill never leaves it half-deleted under its name.

    ``rmtree`` unlinks file by file; a process killed in between would leave a folder that
    looks like a checkpoint but lacks files. Renaming it to a dot-name first makes the removal
    atomic as far as readers (``resume_candidates``, ``resolve_checkpoint``) are concerned.
    """
    trash = folder.with_name(f".{folder.name}.tmp-trash")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temps(parent: Path, name: str) -> None:
    # Temporary folders of a writer that was killed (kill -9, power loss) are never renamed
    # into place; remove them so they do not pile up. Only one process writes a run's
    # checkpoints (rank 0), so no live writer owns them.
    for stale in parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in parent.glob(f".{name}.prev.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def resolve_checkpoint(path: str | os.PathLike, which: str = "best", warn: bool = True) -> Path:
    """A run folder, a checkpoint folder or a ``.safetensors`` file -> the checkpoint folder.

    For a run folder, ``which`` picks ``best`` or ``last``: ``best`` falls back to ``best.prev``
    (a save killed between its two renames), then ``last`` (a run interrupted before its first
    validated epoch has no best), then ``last.prev``; ``last`` falls back to ``last.prev``, then
    ``best``, then ``best.prev``. A fallback is logged as a warning (``warn=False``: not, for
    callers that only look the folder up and say which one they use themselves).

    Raises:
        CheckpointError: ``which`` is not ``best`` or ``last``, or no checkpoint is found.
    """
    if which not in WHICH:
        raise CheckpointError(unknown_name("checkpoint (which)", which, WHICH))
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint or run folder not found: {p}")
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / META).exists():
            if p.name != WEIGHTS:  # the folder's model.safetensors would be loaded, not this file
                raise CheckpointError(f"{p} is not a checkpoint's {WEIGHTS}: the {META} beside it describes "
                                      f"{WEIGHTS}, not this file; give the checkpoint folder or its {WEIGHTS}")  # fmt: skip
            return p.parent
        hint = {
            ".onnx": "; an exported ONNX file is read by resnetlab predict --backend onnx",
            ".pt": "; an exported TorchScript file is read by resnetlab predict --backend torchscript",
        }.get(p.suffix.lower(), "")
        raise CheckpointError(
            f"{p} is not a resnetlab checkpoint (expected a run folder, a checkpoint folder with "
            f"{WEIGHTS} and {META}, or a {WEIGHTS} file next to {META}){hint}"
        )
    if (p / META).exists() or (p / WEIGHTS).exists():
        return p
    ckdir = p / "checkpoints"
    other = "last" if which == "best" else "best"
    order = [which, f"{which}.prev", other, f"{other}.prev"]
    for name in order:
        if (ckdir / name / META).exists():
            if name != which and warn:
                log.warning("no %s checkpoint in %s; using %s instead", which, ckdir, name)
            return ckdir / name
    raise CheckpointError(f"no checkpoint in {p} (looked for {', '.join(str(ckdir / n) for n in order)})")


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint folder's meta.json (a missing, damaged or foreign one is a
    one-line :class:`CheckpointError`)."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint metadata missing: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata is not valid JSON: {path}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a resnetlab checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("arch", "arch_args"):
        if key not in meta:
            raise CheckpointError(f"checkpoint metadata {path} lacks {key!r}")
    return meta


def checkpoint_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What tells one checkpoint of a run from another, for the results made of it (evaluate's
    metrics.json, explain's summary.json): the epoch and optimizer step it was saved at."""
    return {"checkpoint_epoch": meta.get("epoch"), "checkpoint_step": meta.get("step")}


def made_of_another_checkpoint(result: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """Whether the result file ``result`` (a metrics.json or summary.json) was made of another
    checkpoint than the one now in ``directory``: the run was resumed and saved a new one since.

    Results that record :func:`checkpoint_identity` are compared by it, which a copy of the run
    folder keeps; older ones by time (written before the checkpoint folder was)."""
    result, directory = Path(result), Path(directory)
    try:
        made = json.loads(result.read_text())
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        made, meta = None, None
    if isinstance(made, dict) and isinstance(meta, dict) and made.get("checkpoint_step") is not None:
        return (made.get("checkpoint_epoch"), made.get("checkpoint_step")) != (meta.get("epoch"), meta.get("step"))
    try:
        return result.stat().st_mtime_ns < directory.stat().st_mtime_ns
    except OSError:
        return False


def require_preprocessing(meta: dict[str, Any], source: str | os.PathLike, hint: str = "") -> None:
    """Refuse metadata (``meta.json``, an export's sidecar) without the preprocessing predict and
    export need: ``input_size`` ``[C, H, W]`` and per-channel ``mean`` / ``std``. ``source`` is the
    file named in the one-line :class:`CheckpointError`, ``hint`` ends it (``"; ..."``)."""
    for key in ("input_size", "mean", "std"):
        if meta.get(key) is None:
            raise CheckpointError(f"metadata {source} lacks {key!r}, which predict and export need (input_size "
                                  f"[C, H, W], mean and std: one number per channel){hint}")  # fmt: skip
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(type(v) is int and v > 0 for v in size)):
        raise CheckpointError(f"metadata {source}: input_size must be [C, H, W], three integers >= 1, got {size!r}{hint}")
    for key in ("mean", "std"):
        values = meta[key]
        if not (isinstance(values, list) and len(values) == size[0] and all(type(v) in (int, float) for v in values)):
            raise CheckpointError(f"metadata {source}: {key} must be a list of {size[0]} numbers (one per input "
                                  f"channel, input_size {size}), got {values!r}{hint}")  # fmt: skip


def load_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS
    if not path.exists():
        raise CheckpointError(f"checkpoint weights missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint weights are corrupt or truncated: {path} ({exc})") from exc


def load_trainer_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The optimizer, scheduler, RNG and progress state of a ``last`` checkpoint folder, for resume."""
    path = Path(directory) / STATE
    if not path.exists():
        raise CheckpointError(f"no resumable trainer state in {directory} ({STATE} missing)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for crafted files, EOF for truncated ones
        raise CheckpointError(f"trainer state is corrupt or unsafe, refused: {path} ({type(exc).__name__})") from exc


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """An untrained model of the architecture recorded in ``meta`` (``arch``, ``arch_args``)."""
    from resnetlab.models import create_model

    try:
        return create_model(meta["arch"], **meta["arch_args"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot rebuild model {meta.get('arch')!r} from checkpoint: {exc}") from exc


def check_classes(meta: dict[str, Any], model: nn.Module, source: str | os.PathLike) -> None:
    """Refuse ``classes`` metadata that does not name each of the model's outputs (a hand-edited
    ``meta.json``): predict would index past the list, export write a wrong sidecar. Absent
    ``classes`` are fine (outputs are then named by index, :attr:`Checkpoint.classes`)."""
    classes = meta.get("classes")
    n = getattr(model, "num_classes", None)
    if not classes or n is None:
        return
    if not isinstance(classes, list):
        raise CheckpointError(f"checkpoint metadata {source}: classes must be a list of {n} names, got {classes!r}")
    if len(classes) != n:
        raise CheckpointError(f"checkpoint metadata {source} lists {len(classes)} classes but the model has {n} outputs "
                              f"(num_classes {n}); classes must name each output, in order")  # fmt: skip


def describe_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys=None, optional=()) -> str | None:
    """``None`` when ``state`` fits ``own`` (over ``keys``, default all), else a one-line account
    of the first mismatching keys. Keys ending in one of ``optional`` may be absent from ``state``."""
    own_keys = [k for k in own if keys is None or k in keys]
    src_keys = [k for k in state if keys is None or k in keys]
    missing = [k for k in own_keys if k not in state and not k.endswith(tuple(optional))]
    unexpected = [k for k in src_keys if k not in own]
    shape = [k for k in own_keys if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if shape:
        k = shape[0]
        parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    if missing:
        parts.append(f"missing keys {missing[:3]}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:3]}")
    return "; ".join(parts) or None


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatching keys."""
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"weights in {source} do not fit the model: {problem}")
    model.load_state_dict(state, strict=True)


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [str(i) for i in range(self.model.num_classes)])


def load_checkpoint(path: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (run folder, checkpoint folder or weights file) into a model in eval mode.

    Args:
        path: a run folder, a checkpoint folder or its ``model.safetensors``.
        which: ``"best"`` or ``"last"`` checkpoint of a run folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available, else CPU).

    Raises:
        CheckpointError: a missing, damaged or foreign checkpoint.
        ConfigError: a device name torch does not know, or CUDA where there is none.

    Example:
        >>> ckpt = load_checkpoint("runs/demo")          # doctest: +SKIP
        >>> ckpt.model(torch.zeros(1, *ckpt.meta["input_size"]))  # doctest: +SKIP
    """
    from resnetlab.evaluate import resolve_device  # evaluate imports this module

    device = resolve_device(device)  # before any loading: a bad name is one line, "auto" works
    directory = resolve_checkpoint(path, which)
    meta = load_meta(directory)
    model = build_model_from_meta(meta)
    check_classes(meta, model, directory / META)
    load_state_dict_checked(model, load_weights(directory), str(directory / WEIGHTS))
    model.to(device).eval()
    return Checkpoint(model=model, meta=meta, path=directory)


def resume_candidates(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders a resume may use, newest first."""
    ck = Path(run_dir) / "checkpoints"
    return [ck / n for n in ("last", "last.prev") if (ck / n).is_dir()]
