"""Export a checkpoint to ONNX or TorchScript, validated against PyTorch, and run ONNX models.

``export_model`` loads a checkpoint (:func:`resnetlab.checkpoint.load_checkpoint`), folds its
batch norms into the convolutions (:func:`resnetlab.fold.fold_batchnorm`: a smaller graph and
less work for every runtime), writes the file and a metadata sidecar ``FILE.json`` (classes,
mean, std, input size, ...) so the file alone can preprocess and label images, then reloads
the file with its runtime (ONNX Runtime, ``torch.jit.load``) and compares its logits with the
unfolded PyTorch model on random inputs; a logit further than ``atol + rtol * |PyTorch logit|``
from PyTorch's is an error (``numpy.allclose``'s rule: a deep net's own fp32 rounding grows with
the size of its logits, so a purely absolute bound fails sound exports of large models).

ONNX goes through ``torch.onnx.export(dynamo=True)`` (the ``torch.export`` based exporter);
TorchScript through ``torch.jit.trace`` (the trunk's forward has no data-dependent control
flow, so a trace is the whole model; the shape check at its top is re-validated on reload).

:class:`OnnxClassifier` wraps an ONNX Runtime session: ``OnnxClassifier(path)(x) -> logits``;
:func:`onnx_backend` and :func:`torchscript_backend` are ``resnetlab predict``'s ``onnx`` and
``torchscript`` backends.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetlab.errors import CheckpointError, ResnetlabError, unknown_name

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "ExportResult",
    "ExportError",
    "export_model",
    "OnnxClassifier",
    "sidecar_path",
    "read_sidecar",
    "onnx_backend",
    "torchscript_backend",
]

FORMATS = ("onnx", "torchscript")
META_FORMAT = "resnetlab-export/1"
MIN_OPSET = 18  # torch's dynamo exporter writes 18+; asked for less, it converts down or keeps 18


class ExportError(ResnetlabError):
    """The exported file does not reproduce the PyTorch model, or cannot be written."""


@dataclass
class ExportResult:
    path: Path  # the exported model file
    meta_path: Path  # the sidecar FILE.json
    format: str
    batch_size: int | None  # None: dynamic batch dimension
    max_abs_diff: float  # largest |exported - PyTorch| logit over the validation batches
    meta: dict[str, Any]


def sidecar_path(path: str | os.PathLike) -> Path:
    """The metadata file next to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def read_sidecar(path: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """The metadata written next to an exported ``fmt`` model (classes, mean, std, input_size, ...).

    Raises:
        CheckpointError: the sidecar is missing, not JSON, not written by :func:`export_model`
            (its ``format``), describes another kind of export, or lacks classes / preprocessing.
    """
    from resnetlab.checkpoint import require_preprocessing

    side = sidecar_path(path)
    again = f"export again with 'resnetlab export ... --format {fmt} --out {Path(path).name}'"
    if not side.is_file():
        raise CheckpointError(f"{side} is missing: {again} to get the metadata (classes, mean, std, input_size) next "
                              f"to the model")  # fmt: skip
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise CheckpointError(f"export metadata is not valid JSON: {side} ({why}); {again}") from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{side} is not resnetlab export metadata (format {found!r}, expected {META_FORMAT!r}); {again}")
    kind = meta.get("model_format", fmt)
    if kind != fmt:
        raise CheckpointError(f"{side} describes a {kind!r} export, not {fmt}: use --backend {kind}")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and classes):
        what = "lacks 'classes'" if classes is None else f"has classes {classes!r}, not a non-empty list of names"
        raise CheckpointError(f"export metadata {side} {what}; {again}")
    require_preprocessing(meta, side, f"; {again}")
    return meta


def _load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice (FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def _parse_batch_size(batch_size: int | str | None) -> int | None:
    if batch_size is None or (isinstance(batch_size, str) and batch_size.strip().lower() == "dynamic"):
        return None
    try:
        n = int(batch_size)
    except (TypeError, ValueError):
        n = 0
    if isinstance(batch_size, bool) or n < 1 or str(batch_size).strip() != str(n):
        raise ValueError(f"batch size must be 'dynamic' or an integer >= 1, got {batch_size!r}")
    return n


_EXPORT_EXTRA = "pip install -U 'resnetlab[export]' (onnx, onnxscript, onnxruntime)"


def _require_onnx_exporter() -> None:
    """Fail early, in one line, where this torch or its exporter's packages cannot export.

    ``torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=...)`` is the torch.export
    based exporter of torch >= 2.5; torch 2.3/2.4 (in the declared range) take neither keyword and
    raised a TypeError from deep in the call. The signature is checked rather than the version so a
    patched or nightly build is judged by what it has."""
    import inspect

    params = inspect.signature(torch.onnx.export).parameters
    if not {"dynamo", "dynamic_shapes", "external_data"} <= params.keys():
        raise ExportError(f"--format onnx needs torch >= 2.5 (its torch.export-based ONNX exporter); torch {torch.__version__} "
                          "is installed: upgrade torch, or use --format torchscript")  # fmt: skip


def _export_onnx(model: nn.Module, x: torch.Tensor, out: Path, dynamic: bool, opset: int | None) -> None:
    try:
        _export_onnx_call(model, x, out, dynamic, opset)
    except ImportError as exc:
        # torch imports onnxscript (and onnx_ir, which onnxscript >= 0.3 brings) lazily, from inside
        # the call: a missing or too old one (torch 2.11+ needs onnxscript >= 0.6) surfaced as a
        # ModuleNotFoundError traceback.
        raise ExportError(f"the ONNX exporter of torch {torch.__version__} cannot import what it needs ({exc}); "
                          f"install or upgrade the export extra: {_EXPORT_EXTRA}") from exc  # fmt: skip


def _export_onnx_call(model: nn.Module, x: torch.Tensor, out: Path, dynamic: bool, opset: int | None) -> None:
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    # The exporter reports its progress on stdout; library code must not print, so keep it.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=False,  # one self-contained file; these models are far below 2 GB
            verbose=False,
        )
    log.debug("torch.onnx.export: %s", sink.getvalue().strip().replace("\n", " | "))


def _export_torchscript(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        # TracerWarning for the input-shape check; the reload below validates other shapes.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x,))
        traced.save(str(out))


def _runner(fmt: str, path: Path):
    """Load the exported file with its own runtime: (float32 numpy (B, C, H, W)) -> numpy logits."""
    if fmt == "onnx":
        return OnnxClassifier(path, read_meta=False)
    module = _load_torchscript(path)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def export_model(
    checkpoint_or_run: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "onnx",
    batch_size: int | str | None = "dynamic",
    which: str = "best",
    fold: bool = True,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    overwrite: bool = False,
) -> ExportResult:
    """Export a checkpoint to ONNX or TorchScript and check the file against PyTorch.

    Args:
        checkpoint_or_run: a run folder, checkpoint folder or ``model.safetensors``.
        out: the file to write (``.onnx`` / ``.pt``); ``out + ".json"`` gets the metadata.
        format: ``"onnx"`` or ``"torchscript"``.
        batch_size: ``"dynamic"`` (any batch size) or a fixed integer.
        which: ``"best"`` or ``"last"`` checkpoint of a run folder.
        fold: fold batch norms into the convolutions before export.
        opset: ONNX opset (``None``: the exporter's default).
        atol: absolute part of the allowed logit difference from the PyTorch model.
        rtol: relative part: a logit may differ by ``atol + rtol * |PyTorch logit|``.
        seed: seed of the random validation inputs.
        overwrite: replace an existing ``out`` (and its ``.json``); without it they are refused.

    Returns:
        An :class:`ExportResult` with the paths and the measured ``max_abs_diff``.

    Raises:
        ValueError: an unknown format, a bad batch size or tolerance, an opset below 18, an
            existing ``out``.
        ExportError: a logit differs from PyTorch's by more than ``atol + rtol * |logit|``, or the
            runtime cannot load the file (it is kept as ``out + ".rejected"``; an earlier file at
            ``out`` is left as it was).

    Example:
        >>> r = export_model("runs/demo", "demo.onnx")  # doctest: +SKIP
        >>> r.max_abs_diff < 1e-4  # doctest: +SKIP
        True
    """
    from resnetlab.checkpoint import META, load_checkpoint, require_preprocessing
    from resnetlab.evaluate import tta_flip_of
    from resnetlab.fold import fold_batchnorm

    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(unknown_name("export format", format, FORMATS))
    fixed = _parse_batch_size(batch_size)
    for flag, tol in (("--atol", atol), ("--rtol", rtol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{flag} must be a finite number >= 0, got {tol!r}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out must be a file path, got the directory {str(out)!r}")
    if out.suffix.lower() == ".json":  # the metadata's suffix: model.pt.json would replace model.pt's sidecar
        raise ValueError(f"--out {out.name} ends in .json, the suffix of an export's metadata file (model.onnx -> "
                         f"model.onnx.json); use a {'.onnx' if fmt == 'onnx' else '.pt'} name")  # fmt: skip
    other = {"onnx": (".pt", ".pth", ".ts", ".torchscript"), "torchscript": (".onnx",)}[fmt]
    if out.suffix.lower() in other:  # a file named for the other format misleads every later reader
        raise ValueError(f"--out {out.name} names {'a TorchScript' if fmt == 'onnx' else 'an ONNX'} file, and --format is {fmt}; "
                         f"use a {'.onnx' if fmt == 'onnx' else '.pt'} name, or the other --format")  # fmt: skip
    if not overwrite and (out.exists() or sidecar_path(out).exists()):
        there = out if out.exists() else sidecar_path(out)  # the sidecar alone would be paired with the new model
        raise ValueError(f"{there} already exists; use --overwrite to replace {out.name} and {sidecar_path(out).name}, or another --out")
    if fmt != "onnx" and opset is not None:
        raise ValueError(f"--opset applies only to --format onnx, got --format {fmt}")
    if fmt == "onnx" and not fold:
        raise ValueError("--no-fold applies only to --format torchscript: the ONNX exporter folds batch norm into the "
                         "convolutions itself")  # fmt: skip
    if fmt == "onnx":
        _require_onnx_exporter()
    if fmt == "onnx" and opset is not None:
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise ValueError(f"ONNX opset must be {MIN_OPSET}..{newest} (the exporter does not convert down; {newest} is the "
                             f"newest this onnx knows), got {opset}")  # fmt: skip

    ckpt = load_checkpoint(checkpoint_or_run, which=which, device="cpu")
    reference = ckpt.model.eval()
    model = fold_batchnorm(reference) if fold else reference
    input_size = ckpt.meta.get("input_size")
    if input_size is None and getattr(reference, "default_input_size", None):
        # the registry's default size, with the model's own channels (a grayscale resnet18 is not 3x224x224)
        default = list(reference.default_input_size)
        input_size = [int(getattr(reference, "in_channels", default[0])), *default[1:]]
        log.warning("%s has no input_size; exporting at the model's default %s (add input_size [C, H, W] to it to "
                    "choose the size predict resizes images to)", ckpt.path / META, input_size)  # fmt: skip
    require_preprocessing({**ckpt.meta, "input_size": input_size}, ckpt.path / META)  # the sidecar needs them
    g = torch.Generator().manual_seed(seed)
    example_batch = fixed or 2
    example = torch.randn(example_batch, *input_size, generator=g)  # (B, C, H, W)

    # Written beside --out under another name and moved over it only once validated, so a failed
    # export never replaces a good file (nor leaves it paired with another model's metadata).
    part = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            _export_onnx(model, example, part, dynamic=fixed is None, opset=opset)
        else:
            _export_torchscript(model, example, part)
    except OSError as exc:
        with contextlib.suppress(OSError):  # under a file the temp path cannot even be unlinked: keep the real error
            part.unlink(missing_ok=True)
        why = f"{out.parent} is a file, not a folder" if out.parent.is_file() else exc.strerror or exc
        raise ExportError(f"cannot write {out}: {why}") from exc
    except BaseException:  # the exporter's own errors, Ctrl-C: no hidden temp file left behind
        part.unlink(missing_ok=True)
        raise
    rejected = out.with_name(out.name + ".rejected")
    try:
        meta = _validate(fmt, part, reference, example, fixed, input_size, g, atol, rtol, opset)
    except ExportError:
        os.replace(part, rejected)
        raise
    except Exception as exc:  # the runtime cannot load or run the file it was just given
        os.replace(part, rejected)
        runtime = "ONNX Runtime" if fmt == "onnx" else "torch.jit"
        # its message names the hidden temp file, which is gone: name --out instead
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(str(part), str(out)).replace(part.name, out.name)
        raise ExportError(f"{runtime} cannot load or run the model exported for --out {out} ({why}); kept for inspection at "
                          f"{rejected.name}, any earlier file at --out left as it was") from exc  # fmt: skip
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    meta = {
        "format": META_FORMAT,
        "model_format": fmt,
        "arch": ckpt.meta.get("arch"),
        "arch_args": ckpt.meta.get("arch_args"),
        "classes": ckpt.classes,
        "mean": ckpt.meta.get("mean"),
        "std": ckpt.meta.get("std"),
        "input_size": input_size,
        # predict's geometry: load at data_shape, then apply the eval transforms (absent: resize to input_size)
        "data_shape": ckpt.meta.get("data_shape"),
        "eval_transforms": ckpt.meta.get("eval_transforms") or [],
        # predict averages the logits of each image and its mirror, as the run's evaluation did
        "tta_flip": tta_flip_of(ckpt.meta),
        "batch_size": fixed if fixed else "dynamic",
        "input_name": "input",
        "output_name": "logits",
        "bn_folded": bool(fold),
        "checkpoint": str(ckpt.path),
        **meta,
        "versions": {"torch": torch.__version__, **_runtime_versions(fmt)},
    }
    meta_path = sidecar_path(out)
    meta_part = meta_path.with_name(f".{meta_path.name}.partial")
    meta_part.write_text(json.dumps(meta, indent=2))
    os.replace(part, out)
    os.replace(meta_part, meta_path)
    diff = meta["max_abs_diff"]
    log.info("exported %s to %s (max abs diff vs PyTorch %.3g)", ckpt.path, out, diff)
    return ExportResult(path=out, meta_path=meta_path, format=fmt, batch_size=fixed, max_abs_diff=diff, meta=meta)


def _validate(fmt, path, reference, example, fixed, input_size, g, atol, rtol, opset) -> dict[str, Any]:
    """Check an exported file with its own runtime against PyTorch, at the traced batch size and
    (dynamic) at others: every logit within ``atol + rtol * |PyTorch logit|``; the figures for its
    metadata."""
    example_batch = example.shape[0]
    if fmt == "onnx" and opset is not None:
        import onnx

        written = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise ExportError(f"the exporter wrote ONNX opset {written}, not the requested {opset}")
    run = _runner(fmt, path)
    batches = [example_batch] if fixed else [example_batch, 1, 5]
    diff = 0.0
    worst = (-math.inf, 0.0, 0.0)  # (excess over the allowed difference, difference, PyTorch logit)
    for b in batches:
        x = example if b == example_batch else torch.randn(b, *input_size, generator=g)
        with torch.no_grad():
            ref = reference(x).numpy()
        got = run(x.numpy())
        if got.shape != ref.shape:
            raise ExportError(f"exported {fmt} model returned shape {got.shape} for batch {b}, PyTorch {ref.shape}")
        ref64 = ref.astype(np.float64)
        d = np.abs(got.astype(np.float64) - ref64)
        diff = max(diff, float(d.max()))
        excess = np.nan_to_num(d - (atol + rtol * np.abs(ref64)), nan=np.inf)  # a NaN logit never passes
        i = int(np.argmax(excess))
        if excess.flat[i] > worst[0]:
            worst = (float(excess.flat[i]), float(d.flat[i]), float(ref64.flat[i]))
    excess, d, r = worst
    if not excess <= 0:
        raise ExportError(f"exported {fmt} model differs from PyTorch by {d:.3g} at a logit of {r:.3g}, more than "
                          f"atol {atol:g} + rtol {rtol:g} x |logit| = {atol + rtol * abs(r):.3g} (--atol/--rtol loosen "
                          f"the check); kept for inspection at {path.name.removeprefix('.').removesuffix('.partial')}"
                          f".rejected, any earlier file at --out left as it was")  # fmt: skip
    return {"max_abs_diff": diff, "atol": atol, "rtol": rtol, "validated_batches": batches}


def _runtime_versions(fmt: str) -> dict[str, str]:
    if fmt != "onnx":
        return {}
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


class OnnxClassifier:
    """An ONNX Runtime session for an exported model: ``OnnxClassifier(path)(x) -> logits``.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: ``torch.get_num_threads()``, so ``OMP_NUM_THREADS`` and
            the CLI's thread settings apply to ONNX Runtime as to PyTorch; all cores on a machine
            shared with others would slow everyone down).
        providers: ONNX Runtime execution providers (``None``: CPU).
        read_meta: read the ``FILE.json`` sidecar into :attr:`meta` (classes, mean, std, input_size).

    Example:
        >>> clf = OnnxClassifier("demo.onnx")  # doctest: +SKIP
        >>> clf(np.zeros((2, *clf.meta["input_size"]), np.float32)).shape  # doctest: +SKIP
        (2, 10)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: list[str] | None = None,
        read_meta: bool = True,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ResnetlabError(f"ONNX model not found: {self.path}")
        self.meta: dict[str, Any] = {}
        if read_meta:
            self.meta = read_sidecar(self.path, "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise ResnetlabError(f"cannot load ONNX model {self.path}: {str(exc).splitlines()[0]}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None  # an export with --batch-size N

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits (B, K) for a normalized float32 batch (B, C, H, W), of any B: a fixed-batch
        model is run on slices of its batch size, the last one zero-padded and trimmed."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = self.fixed_batch
        if n is None or len(x) == n:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        outs = []
        for start in range(0, len(x), n):
            part = x[start : start + n]
            if len(part) < n:
                part = np.concatenate([part, np.zeros((n - len(part), *part.shape[1:]), dtype=np.float32)])
            outs.append(self.session.run([self.output_name], {self.input_name: part})[0])
        return np.concatenate(outs)[: len(x)]


def onnx_backend(source: str | os.PathLike, device: torch.device, which: str = "best") -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Backend factory for :func:`resnetlab.predict.predict`: an ``.onnx`` file -> (run, meta).

    ``run`` takes the normalized torch batch and returns torch logits on the same device; the
    meta (classes, mean, std, input_size) comes from the sidecar written by :func:`export_model`.
    ``which`` does not apply to a single exported file and is ignored.
    """
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is None or path.suffix.lower() != ".onnx":
        raise ValueError(f"the onnx backend needs an exported .onnx file (resnetlab export), got {str(source)!r}")
    clf = OnnxClassifier(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clf(x)).to(x.device)

    return run, dict(clf.meta)


def torchscript_backend(source: str | os.PathLike, device: torch.device, which: str = "best") -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Backend factory for :func:`resnetlab.predict.predict`: a TorchScript export -> (run, meta).

    The file is loaded with ``torch.jit.load`` onto ``device``; ``run`` maps the normalized batch to
    float logits without autograd, and a fixed-batch export (``--batch-size N``, traced and
    validated at N only) is run on slices of N, the last one zero-padded and trimmed, as
    :class:`OnnxClassifier` does. The meta comes from the sidecar written by :func:`export_model`;
    ``which`` does not apply to a single exported file and is ignored.
    """
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is None or path.is_dir():
        raise ValueError(f"the torchscript backend needs an exported TorchScript file (resnetlab export --format "
                         f"torchscript), got {str(source)!r}")  # fmt: skip
    if not path.is_file():
        raise ResnetlabError(f"TorchScript model not found: {path}")
    meta = read_sidecar(path, "torchscript")
    try:
        module = _load_torchscript(path, device)
    except Exception as exc:  # RuntimeError from the zip reader / unpickler, for any file that is not one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResnetlabError(f"cannot load TorchScript model {path}: {first}") from exc
    fixed = meta.get("batch_size")
    fixed = fixed if isinstance(fixed, int) and not isinstance(fixed, bool) and fixed > 0 else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x).float()

    def run(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if fixed is None or n == fixed:
            return forward(x)
        outs = []
        for start in range(0, n, fixed):
            part = x[start : start + fixed]
            if len(part) < fixed:
                part = torch.cat([part, part.new_zeros((fixed - len(part), *part.shape[1:]))])
            outs.append(forward(part))
        return torch.cat(outs)[:n]

    return run, dict(meta)
