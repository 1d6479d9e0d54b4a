"""Transfer learning: pretrained weights, freezing, parameter groups.

Three jobs, each a function the trainer calls:

- :func:`load_pretrained` puts weights from torchvision (``torchvision:IMAGENET1K_V1``), a
  resnetlab run / checkpoint, or a torchvision-style state-dict file into a resnetlab model.
  The body must match exactly; the head (``fc.*``) is loaded when it fits and re-initialized
  when the class count (or the class names, when both sides know them) differ.
- :func:`freeze` / :func:`freeze_all_but_head` / :func:`unfreeze` / :func:`set_frozen_norms_eval`
  switch ``requires_grad`` and keep frozen norm layers' running statistics fixed.
- :func:`param_groups` builds optimizer groups: head at ``lr``, body at ``lr * body_lr_mult``,
  norm and bias parameters without weight decay.

resnetlab's ImageNet ResNets keep torchvision's parameter names, so torchvision state dicts load
without any remapping (timm does the same, "weight compat requires it").
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import CheckpointError, ResnetlabError, unknown_name
from resnetlab.norms import is_norm

log = logging.getLogger(__name__)

__all__ = [
    "load_pretrained",
    "check_pretrained_source",
    "pretrained_preprocessing",
    "freeze",
    "freeze_all_but_head",
    "unfreeze",
    "set_frozen_norms_eval",
    "param_groups",
    "freezable_layers",
    "TORCHVISION_ARCHS",
]

TORCHVISION_PREFIX = "torchvision:"
# resnetlab models whose architecture (and parameter names) equal torchvision's at default args.
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
HEAD = "fc"  # the classifier's attribute name on every resnetlab model (torchvision's too)


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------


def _is_head_key(key: str) -> bool:
    return key == HEAD or key.startswith(HEAD + ".")


def _torchvision_weights(name: str, arch: str | None):
    """``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1`` -> the torchvision weights enum member."""
    from torchvision.models import get_model_weights

    if "." in name:
        from torchvision.models import get_weight

        try:
            return get_weight(name)
        except (ValueError, KeyError, AttributeError) as exc:
            raise ResnetlabError(f"unknown torchvision weights {name!r} ({exc})") from exc
    archs = [arch] if arch else list(TORCHVISION_ARCHS)
    if arch is not None and arch not in TORCHVISION_ARCHS:
        raise ResnetlabError(
            f"torchvision weights exist only for {', '.join(TORCHVISION_ARCHS)}, not for model {arch!r}; "
            "use --pretrained PATH with a resnetlab run or state-dict file instead"
        )
    for a in archs:
        enum = get_model_weights(a)
        if name in enum.__members__:
            return enum[name]
    allowed = sorted({m for a in archs for m in get_model_weights(a).__members__})
    raise ResnetlabError(unknown_name(f"torchvision weights for {archs[0] if arch else 'ResNet'}", name, allowed))


def _download_torchvision(weights, progress: bool, data_root: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """Load (downloading with checksum when needed) a torchvision weights file into a state dict."""
    file_name = os.path.basename(weights.url)
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    model_dir = None
    # An offline mirror next to the datasets is used as is; otherwise torch hub's cache.
    if data_root is not None and (Path(data_root) / file_name).exists():
        model_dir = str(data_root)
    if not (Path(model_dir or hub_dir) / file_name).exists():
        log.info("downloading %s into %s", weights.url, model_dir or hub_dir)
    try:
        # check_hash: the sha256 prefix in the file name is verified after download (torchvision does
        # the same); weights_only refuses pickled code. torch hub prints its "Downloading: ..." line
        # to stdout: logged above instead, so --quiet is quiet and stdout stays the command's own.
        with contextlib.redirect_stdout(io.StringIO()):
            return weights.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True,
                                          model_dir=model_dir)
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        cached = Path(model_dir or hub_dir) / file_name
        if cached.exists():
            raise CheckpointError(f"cannot read cached weights {cached}: {exc}") from exc
        where = f"{hub_dir}" + (f" (or {data_root})" if data_root is not None else "")
        raise ResnetlabError(
            f"torchvision weights {type(weights).__name__}.{weights.name} are not cached and cannot be downloaded "
            f"({type(exc).__name__}): download {weights.url} and put {file_name} into {where}"
        ) from exc
    except RuntimeError as exc:  # torch.hub raises RuntimeError on a checksum mismatch
        raise CheckpointError(f"torchvision weights file {file_name} failed its check: {exc}") from exc


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``, DDP ``module.`` prefixes) -> tensors."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise CheckpointError(
            f"{path} is not a weights file (allowed: a resnetlab run or checkpoint folder, .safetensors, .pth, .pt)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled code, EOFError / RuntimeError for corrupt files
        raise CheckpointError(f"cannot load {path} safely (weights_only): {type(exc).__name__}: {exc}") from exc
    return _unwrap_state_dict(obj, str(path))


def _existing_source(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"pretrained weights not found: {spec!r} (allowed: torchvision:<WEIGHTS NAME>, a resnetlab run or "
            "checkpoint folder, or a .pth/.pt/.safetensors state-dict file)"
        )
    return path


def check_pretrained_source(spec: str, arch: str | None = None, data_root: str | os.PathLike | None = None) -> None:
    """Fail before anything slow when :func:`load_pretrained` would: an unknown torchvision weights
    name, a model torchvision has no weights for, torchvision weights neither cached nor
    downloadable, a file or folder that is not there. The trainer calls it before loading the
    dataset, which for a folder of photos can take minutes; torchvision weights not cached yet are
    downloaded here (into torch hub's cache, where :func:`load_pretrained` finds them).

    Raises:
        ResnetlabError / CheckpointError: as :func:`load_pretrained`, with the same messages.
    """
    spec = str(spec).strip()
    if not spec.startswith(TORCHVISION_PREFIX):
        _existing_source(spec)
        return
    _fetch_torchvision(_torchvision_weights(spec[len(TORCHVISION_PREFIX):].strip(), arch), data_root)


def _fetch_torchvision(weights, data_root: str | os.PathLike | None = None) -> None:
    """Make sure the file of torchvision ``weights`` is here: in torch hub's cache or in
    ``data_root`` already (not read), else downloaded now.

    Raises:
        ResnetlabError: not here and cannot be downloaded (names the file and where to put it).
        CheckpointError: a download that does not read or fails its hash.
    """
    file_name = os.path.basename(weights.url)
    places = [Path(torch.hub.get_dir()) / "checkpoints"] + ([Path(data_root)] if data_root is not None else [])
    if not any((p / file_name).exists() for p in places):
        _download_torchvision(weights, False, data_root)


def _resolve_source(
    spec: str, arch: str | None, progress: bool, data_root
) -> tuple[dict[str, torch.Tensor], list[str] | None, str, dict[str, Any] | None]:
    """spec -> (state dict, class names of the source if known, description, resnetlab metadata if any)."""
    if spec.startswith(TORCHVISION_PREFIX):
        weights = _torchvision_weights(spec[len(TORCHVISION_PREFIX):].strip(), arch)
        state = _download_torchvision(weights, progress, data_root)
        # torchvision's ResNets are resnetlab's at default options (bn, relu, imagenet stem)
        meta = {"arch": arch, "arch_args": {}} if arch in TORCHVISION_ARCHS else None
        return state, list(weights.meta.get("categories") or []) or None, f"torchvision {type(weights).__name__}.{weights.name}", meta

    from resnetlab import checkpoint as ck

    path = _existing_source(spec)
    if path.is_dir() or (path.suffix == ".safetensors" and (path.parent / ck.META).exists()):
        directory = ck.resolve_checkpoint(path, "best")
        meta = ck.load_meta(directory)
        return ck.load_weights(directory), meta.get("classes"), f"resnetlab checkpoint {directory}", meta
    return _read_state_file(path), None, f"state-dict file {path}", None


def _unseen_options(model: nn.Module) -> dict[str, Any]:
    """The options that change what a body computes but not its parameter names or shapes."""
    norm = getattr(model, "norm_name", None)
    family = None if norm is None else str(norm).lower().removesuffix("-torch")  # bn == bn-torch, ln == ln-torch ...
    options = {"norm": family, "act": getattr(model, "act_name", None), "stem": getattr(model, "stem_type", None)}
    if family == "gn":
        options["groups"] = [m.num_groups for n, m in model.named_modules() if hasattr(m, "num_groups") and not _is_head_key(n)]
    return options


def _options_difference(model: nn.Module, meta: dict[str, Any]) -> str:
    """'norm=ln here, gn in the source' for a source built with other unseen options; '' if none."""
    from resnetlab.models import create_model

    try:
        with torch.device("meta"):  # the source's architecture without allocating or initializing weights
            source = create_model(meta["arch"], **meta["arch_args"])
    except (KeyError, TypeError, ValueError):  # metadata from another version: the key check must do
        return ""
    own, theirs = _unseen_options(model), _unseen_options(source)
    diff = [k for k in own if own[k] is not None and theirs.get(k) is not None and own[k] != theirs[k]]
    value = lambda v: v if not isinstance(v, list) else sorted(set(v))  # noqa: E731
    return ", ".join(f"{k}={value(own[k])} here, {value(theirs[k])} in the source" for k in diff)


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor | None:
    """Stem weights of a source with another input channel count (timm's adapt_input_conv idea).

    Either way a gray image gives the source's response: to one channel the kernel is summed over
    its input channels (x through the sum equals the RGB kernel on (x, x, x)); to more channels the
    source's channels are tiled and scaled by ``source / target`` (a 1-channel kernel becomes
    three thirds, so (x, x, x) through it equals the gray kernel on x).
    """
    if weight.dim() != 4 or weight.shape[1] == in_channels:
        return None
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    src = weight.shape[1]
    reps = -(-in_channels // src)  # ceil
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (src / in_channels)


def _reset_head(model: nn.Module) -> None:
    for m in getattr(model, HEAD).modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def load_pretrained(
    model: nn.Module,
    spec: str,
    data_root: str | os.PathLike | None = None,
    *,
    classes: list[str] | None = None,
    reset_head: bool | None = None,
    progress: bool = False,
) -> dict[str, list[str]]:
    """Load pretrained weights into ``model`` in place; the head is re-initialized when it does not fit.

    Args:
        model: a resnetlab model (``create_model``); its ``arch`` picks the torchvision weights.
        spec: ``torchvision:IMAGENET1K_V1`` (any torchvision ResNet weights name, or the full
            ``ResNet50_Weights.IMAGENET1K_V2``), a resnetlab run or checkpoint folder, or a
            torchvision-style state-dict file (``.pth`` / ``.pt`` / ``.safetensors``).
        data_root: a folder checked for the torchvision weights file before torch hub's cache
            (``torch.hub.get_dir()/checkpoints``), for machines without internet.
        classes: the new task's class names; with a source that knows its classes (a resnetlab
            checkpoint, torchvision's ImageNet categories), different names re-initialize the head
            even when the count matches (transfer to another 10-class task needs a new head).
        reset_head: force (True) or forbid (False) re-initializing the head; None decides as above.
        progress: show torch hub's download progress bar.

    Returns:
        ``{"loaded": [...], "reinitialized": [...], "skipped": [...], "adapted": [...]}``: model keys
        taken from the source, model keys of the re-initialized head, source keys not used (the old
        head), and keys converted on the way (an RGB stem summed for a grayscale model).

    Raises:
        CheckpointError: the body does not match (names the first mismatching keys), a resnetlab or
            torchvision source was built with another norm, activation or stem (same keys, another
            computation), or a file is unreadable.
        ResnetlabError: torchvision weights are not cached and cannot be downloaded (names the file and
            the folder to put it in), or an unknown weights name.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet18", num_classes=5)
        >>> report = load_pretrained(m, "torchvision:IMAGENET1K_V1")   # doctest: +SKIP
        >>> report["reinitialized"]                                    # doctest: +SKIP
        ['fc.weight', 'fc.bias']
    """
    spec = str(spec).strip()
    arch = getattr(model, "arch", None)
    state, source_classes, source, source_meta = _resolve_source(spec, arch, progress, data_root)
    own = model.state_dict()

    adapted: list[str] = []
    in_channels = getattr(model, "in_channels", None)
    for key, value in list(state.items()):
        if key in own and not _is_head_key(key) and tuple(value.shape) != tuple(own[key].shape) and in_channels:
            new = _adapt_input_conv(value, in_channels)
            if new is not None and tuple(new.shape) == tuple(own[key].shape):
                state[key] = new
                adapted.append(key)

    from resnetlab.checkpoint import describe_mismatch

    body_own = [k for k in own if not _is_head_key(k)]
    body = {k for k in (*own, *state) if not _is_head_key(k)}
    # Old torchvision files predate BatchNorm's num_batches_tracked buffer; the model's value stays.
    problem = describe_mismatch(own, state, keys=body, optional=("num_batches_tracked",))
    # Norms with only an affine weight and bias (gn, ln, in) share names and shapes, as do all
    # activations: a body trained with another would load and compute something else. Named first
    # when the keys differ too (a batch norm's buffers against a group norm's none).
    other = _options_difference(model, source_meta) if source_meta else ""
    if problem and not other:
        raise CheckpointError(
            f"weights from {source} do not fit model {arch or type(model).__name__} (another architecture?): {problem}"
        )
    if other:
        raise CheckpointError(f"weights from {source} were trained in another architecture ({other}): "
                              f"build the model with the source's options{f' (the keys differ too: {problem})' if problem else ''}")

    head_own = {k: own[k] for k in own if _is_head_key(k)}
    head_src = {k: state[k] for k in state if _is_head_key(k)}
    head_fits = set(head_own) == set(head_src) and all(
        tuple(head_own[k].shape) == tuple(head_src[k].shape) for k in head_own
    )
    why = "the head's shape differs" if not head_fits else ""
    if reset_head is None:
        reset = not head_fits
        if head_fits and classes is not None and source_classes is not None and list(classes) != list(source_classes):
            reset, why = True, "the class names differ"
    else:
        reset = bool(reset_head) or not head_fits
        why = why or ("reset_head=True" if reset_head else "")

    to_load = {k: state[k] for k in body_own if k in state}
    if not reset:
        to_load.update(head_src)
    result = model.load_state_dict(to_load, strict=False)
    # Anything the model still misses must be the head being re-initialized or a batch counter.
    left = [k for k in result.missing_keys if not (reset and _is_head_key(k)) and not k.endswith("num_batches_tracked")]
    if left:  # pragma: no cover - guarded by the checks above
        raise CheckpointError(f"weights from {source} left keys unset: {left[:3]}")
    if reset:
        _reset_head(model)

    report = {
        "loaded": sorted(to_load),
        "reinitialized": sorted(head_own) if reset else [],
        "skipped": sorted(k for k in state if k not in to_load),
        "adapted": adapted,
    }
    log.info(
        "pretrained %s: loaded %d tensors, re-initialized %d (%s), skipped %d%s",
        source, len(report["loaded"]), len(report["reinitialized"]),
        ", ".join(report["reinitialized"]) or "-", len(report["skipped"]),
        f"; head re-initialized because {why}" if reset else "",
    )
    if adapted:
        how = "summed over the source's input channels" if in_channels == 1 else "tiled and scaled from the source's input channels"
        log.info("pretrained: stem weights %s for a %d-channel model: %s", how, in_channels, adapted)
    return report


def pretrained_preprocessing(spec: str | None, arch: str | None = None) -> dict[str, Any] | None:
    """Preprocessing that belongs to pretrained weights: ``{"mean", "std", "input_size", ...}`` or None.

    torchvision weights give their ``transforms()`` (mean/std, crop size, resize size); a resnetlab
    checkpoint gives the mean/std/input size it was trained with; a bare state-dict file gives None.

    Args:
        spec: the ``pretrained`` spec (see :func:`load_pretrained`); None gives None.
        arch: the model name, to pick the weights enum (default: the first ResNet having that name).

    Example:
        >>> pretrained_preprocessing("torchvision:IMAGENET1K_V1", "resnet18")["input_size"]
        [3, 224, 224]
    """
    if not spec:
        return None
    spec = str(spec).strip()
    if spec.startswith(TORCHVISION_PREFIX):
        weights = _torchvision_weights(spec[len(TORCHVISION_PREFIX):].strip(), arch)
        t = weights.transforms()
        crop = int(t.crop_size[0])
        return {
            "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std],
            "input_size": [3, crop, crop],
            "resize_size": int(t.resize_size[0]),
            "categories": list(weights.meta.get("categories") or []),
        }
    path = Path(spec).expanduser()
    if path.exists() and (path.is_dir() or path.suffix == ".safetensors"):
        from resnetlab import checkpoint as ck

        try:
            meta = ck.load_meta(ck.resolve_checkpoint(path, "best", warn=False))  # the weights' own lookup warns
        except CheckpointError:
            return None
        if meta.get("mean") is None:
            return None
        return {"mean": meta.get("mean"), "std": meta.get("std"), "input_size": meta.get("input_size"),
                "categories": meta.get("classes")}
    return None


# ---------------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------------


def freezable_layers(model: nn.Module) -> list[str]:
    """Names accepted by :func:`freeze`: ``stem`` and the stages ``layer1`` ... ``layerN``."""
    stages = list(getattr(model, "stage_names", []))
    return ["stem", *stages]


def _top_level(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def freeze(model: nn.Module, until: str | int) -> list[str]:
    """Freeze the model from its input up to and including ``until``; returns the frozen parameter names.

    ``until`` is either

    - a named stage: ``"stem"`` (``conv1`` + ``bn1``; act and max-pool have no parameters),
      ``"layer1"`` ... ``"layerN"`` (the stem and every stage up to this one), or
    - a count ``n`` of leading top-level modules in ``model.named_children()`` order, which for
      every resnetlab model is ``conv1, bn1, act, maxpool, layer1, layer2, ..., avgpool, drop, fc``
      (parameter-free modules count too, exactly as ``list(model.children())[:n]`` does on a
      torchvision ResNet). So the report's "first 7 layers" of ResNet-18 is
      ``conv1, bn1, act, maxpool, layer1, layer2, layer3``. ``n`` may not reach the head ``fc``.

    Parameters outside that range are left as they are (call :func:`unfreeze` first to start clean).

    Raises:
        ValueError: an unknown layer name (lists the valid ones) or a count out of range.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet18", num_classes=5)
        >>> names = freeze(m, "layer2")
        >>> m.layer2[0].conv1.weight.requires_grad, m.layer3[0].conv1.weight.requires_grad
        (False, True)
    """
    prefixes = freeze_prefixes(model, until)
    frozen = []
    for prefix in prefixes:
        for name, p in getattr(model, prefix).named_parameters(prefix=prefix):
            p.requires_grad_(False)
            frozen.append(name)
    # a CIFAR stem's maxpool is an Identity: counted (as list(model.children()) does) but named as such
    shown = [f"{p} (an identity here)" if isinstance(getattr(model, p), nn.Identity) else p for p in prefixes]
    log.info("froze %d parameter tensors in %s", len(frozen), ", ".join(shown) or "nothing")
    return frozen


def freeze_prefixes(model: nn.Module, until: str | int) -> list[str]:
    """The top-level modules :func:`freeze` freezes for ``until``; ValueError for an unknown name
    or a count out of range (a model built on the meta device is enough: nothing is computed)."""
    children = _top_level(model)
    if isinstance(until, str) and until.strip().isdigit():
        until = int(until.strip())
    if isinstance(until, bool) or not isinstance(until, (str, int)):
        raise ValueError(f"freeze_until must be a layer name or a module count, got {until!r}")
    if isinstance(until, int):
        limit = children.index(HEAD) if HEAD in children else len(children)
        if not 0 <= until <= limit:
            raise ValueError(
                f"freeze_until count must be in 0..{limit} (the leading modules before the head: "
                f"{', '.join(children[:limit])}), got {until}"
            )
        prefixes = children[:until]
    else:
        valid = freezable_layers(model)
        if until not in valid:
            raise ValueError(unknown_name("layer", until, valid))
        stop = children.index("maxpool") + 1 if until == "stem" else children.index(until) + 1
        prefixes = children[:stop]
    return prefixes


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """Freeze every parameter outside the head ``fc``; returns the frozen names.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet20")
        >>> _ = freeze_all_but_head(m)
        >>> [n for n, p in m.named_parameters() if p.requires_grad]
        ['fc.weight', 'fc.bias']
    """
    frozen = []
    for name, p in model.named_parameters():
        if not _is_head_key(name):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def unfreeze(model: nn.Module) -> list[str]:
    """Make every parameter trainable again; returns the names that were frozen.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet20"); _ = freeze(m, "layer1")
        >>> len(unfreeze(m)) > 0
        True
    """
    thawed = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            p.requires_grad_(True)
            thawed.append(name)
    return thawed


def _frozen_norms(model: nn.Module) -> Iterable[nn.Module]:
    last_params: list[nn.Parameter] = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if is_norm(module):
            # A parameter-free norm (affine=False) has no flag of its own: it follows the layer that
            # feeds it, which in this trunk is the last module with parameters before it (its conv).
            params = own or last_params
            if params and not any(p.requires_grad for p in params):
                yield module
        if own:
            last_params = own


def set_frozen_norms_eval(model: nn.Module) -> int:
    """Put every norm layer whose parameters are all frozen into eval mode; returns how many.

    A frozen BatchNorm must also stop updating its running statistics, or "frozen" layers still
    drift with the new data. Call after every ``model.train()``.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet20"); _ = freeze(m, "stem"); m.train()  # doctest: +ELLIPSIS
        ResNet(...)
        >>> set_frozen_norms_eval(m), m.bn1.training
        (1, False)
    """
    n = 0
    for module in _frozen_norms(model):
        module.eval()
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Optimizer parameter groups
# ---------------------------------------------------------------------------------------------


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        if is_norm(module):
            names.update(f"{mod_name}.{n}" if mod_name else n for n, _ in module.named_parameters(recurse=False))
    names.update(n for n, _ in model.named_parameters() if n.endswith("bias"))
    return names


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    body_lr_mult: float = 1.0,
    exclude_norm_bias: bool = True,
    trainable_only: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: head at ``lr``, body at ``lr * body_lr_mult``.

    With ``exclude_norm_bias``, norm-layer parameters and biases get ``weight_decay=0`` (decaying
    a BatchNorm scale only fights the normalization). Empty groups are dropped. Each group has a
    ``name``: ``head``, ``head_no_decay``, ``body``, ``body_no_decay``.

    Frozen parameters are kept in their groups by default: PyTorch's optimizers skip a parameter
    whose ``.grad`` is None (no update, no weight decay, no momentum buffer), so while frozen it
    stays exactly as it is, and a fine-tune schedule that unfreezes the body later (head only for
    N epochs, then everything) finds it in the optimizer already. ``trainable_only=True`` leaves
    them out, for an optimizer built after the final freeze.

    Args:
        model: the model; the head is ``model.fc``.
        lr: the head's learning rate.
        weight_decay: L2 / decoupled weight decay for the decayed groups.
        body_lr_mult: factor on ``lr`` for everything but the head (fine-tuning uses < 1).
        exclude_norm_bias: no weight decay on norm parameters and biases.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Example:
        >>> from resnetlab import create_model
        >>> groups = param_groups(create_model("resnet20"), lr=0.1, weight_decay=5e-4, body_lr_mult=0.1)
        >>> [(g["name"], g["lr"], g["weight_decay"]) for g in groups]  # doctest: +NORMALIZE_WHITESPACE
        [('head', 0.1, 0.0005), ('head_no_decay', 0.1, 0.0), ('body', 0.010000000000000002, 0.0005),
         ('body_no_decay', 0.010000000000000002, 0.0)]
    """
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not float(weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not float(body_lr_mult) >= 0:
        raise ValueError(f"body_lr_mult must be >= 0, got {body_lr_mult!r}")
    no_decay = _no_decay_names(model) if exclude_norm_bias else set()
    buckets: dict[str, list[nn.Parameter]] = {"head": [], "head_no_decay": [], "body": [], "body_no_decay": []}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        part = "head" if _is_head_key(name) else "body"
        buckets[part + ("_no_decay" if name in no_decay else "")].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        groups.append({
            "name": name,
            "params": params,
            "lr": float(lr) * (1.0 if name.startswith("head") else float(body_lr_mult)),
            "weight_decay": 0.0 if name.endswith("no_decay") else float(weight_decay),
        })
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ValueError("no trainable parameters: every parameter is frozen")
    return groups
