"""Augmentations by name, applied to whole batches with per-sample random parameters.

A spec (config key ``augment``, CLI ``--aug``) is a list whose items are a name (``"flip"``),
a name with parameters (``"crop:padding=4"``, ``"color-jitter:brightness=0.4,hue=0"``,
``"random-resized-crop:scale=(0.5,1.0)"``) or a one-key mapping
(``{"crop": {"padding": 4}}``). A single string may hold several items separated by ``;``
or spaces (``"crop:padding=4; flip"``).

Augmentations are ``kornia.augmentation`` modules working on float batches in ``[0, 1]`` of
shape ``(B, C, H, W)`` — salt-and-pepper included (``RandomSaltAndPepperNoise``) — except random
crop, horizontal flip and center crop, which are written here as fused per-sample index maps
because kornia's versions are the bottleneck on CPU (see the comment above ``_IndexOp``; the
center crop is also placed as torchvision places it), and resize, which is torch's antialiased
``interpolate`` (torchvision's ``Resize`` to the pixel), as is random-resized-crop's resize of
each kornia-drawn box (torchvision's ``RandomResizedCrop``), and random erasing, whose boxes are
drawn as torchvision draws them (``RandomErasingBox``). All parameters are drawn
from the global torch RNG, which the loader reseeds per step (see :mod:`resnetlab.data.loader`).

Names and parameters (defaults in brackets):

=====================  ==========================================================================
``crop``               random crop after padding: ``padding`` [4] px, ``size`` [image size; at most the padded size],
                       ``padding_mode`` [constant | reflect | replicate], ``p`` [1.0]
``flip``               horizontal flip: ``p`` [0.5]
``rotation``           random rotation in ``[-degrees, degrees]``: ``degrees`` [15, or (min, max)], ``p`` [0.5];
                       bilinear, corners filled with 0 (torchvision's ``RandomRotation`` defaults
                       to nearest and rotates every image)
``color-jitter``       ``brightness`` [0.2], ``contrast`` [0.2], ``saturation`` [0.2, RGB only],
                       ``hue`` [0.05, RGB only], ``p`` [1.0]; each a number x (factors in
                       [1 - x, 1 + x], hue in [-x, x]) or a range (min, max), as torchvision's
                       ``ColorJitter`` takes them; factors drawn per image, the order
                       of the four steps once per batch (kornia; torchvision draws it per image)
``random-resized-crop``  ``size`` [image size], ``scale`` [(0.08, 1.0)], ``ratio`` [(0.75, 1.333)]
``resize``             ``size`` (required; an int resizes the shorter side) — deterministic
``center-crop``        ``size`` (required) — deterministic
``cutout``             one square hole of ``size`` [half the image side] px: ``p`` [1.0],
                       ``value`` [0.0]
``erasing``            random erasing: ``scale`` [(0.02, 0.33)] of the area, ``ratio`` [(0.3, 3.3)]
                       (height / width, log-uniform), ``value`` [0.0, or ``random``: uniform
                       noise in [0, 1]], ``p`` [0.5]
``blur``               gaussian blur: ``kernel`` [3, odd], ``sigma`` [(0.1, 2.0)], ``p`` [0.5]
``salt-pepper``        per-pixel salt/pepper with probability ``amount`` [0.05];
                       ``salt_vs_pepper`` [0.5], ``p`` [0.5]
=====================  ==========================================================================

Evaluation uses only the deterministic items (``resize``, ``center-crop``), in spec order.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import DataError, unknown_name

log = logging.getLogger(__name__)

# name -> {param: default}; ``None`` means "required" or "derived from the image size".
_PARAMS: dict[str, dict[str, Any]] = {
    "crop": {"padding": 4, "size": None, "padding_mode": "constant", "p": 1.0},
    "flip": {"p": 0.5},
    "rotation": {"degrees": 15.0, "p": 0.5},
    "color-jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "p": 1.0},
    "random-resized-crop": {"size": None, "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "resize": {"size": None},
    "center-crop": {"size": None},
    "cutout": {"size": None, "value": 0.0, "p": 1.0},
    "erasing": {"scale": (0.02, 0.33), "ratio": (0.3, 3.3), "value": 0.0, "p": 0.5},
    "blur": {"kernel": 3, "sigma": (0.1, 2.0), "p": 0.5},
    "salt-pepper": {"amount": 0.05, "salt_vs_pepper": 0.5, "p": 0.5},
}
_ALIASES = {
    "hflip": "flip", "horizontal-flip": "flip", "random-crop": "crop", "rotate": "rotation",
    "colorjitter": "color-jitter", "color_jitter": "color-jitter", "rrc": "random-resized-crop",
    "random_resized_crop": "random-resized-crop", "center_crop": "center-crop",
    "centercrop": "center-crop", "random-erasing": "erasing", "gaussian-blur": "blur",
    "salt-and-pepper": "salt-pepper", "salt_pepper": "salt-pepper", "saltpepper": "salt-pepper",
}
AUGMENT_NAMES: tuple[str, ...] = tuple(_PARAMS)
DETERMINISTIC = frozenset({"resize", "center-crop"})
_REQUIRED = {"resize": ("size",), "center-crop": ("size",)}
_PADDING_MODES = ("constant", "reflect", "replicate")


@dataclass(frozen=True)
class AugmentItem:
    """One parsed augmentation: a canonical name and its full parameter dict (defaults filled)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        given = ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items() if v != _PARAMS[self.name][k])
        return f"{self.name}:{given}" if given else self.name


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    return str(v)


def _split_top(text: str, seps: str) -> list[str]:
    """Split on any char of ``seps`` that is not inside brackets (tuples hold commas)."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch in seps and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as ``reflect``


def _mapping_value(v: Any) -> Any:
    """A parameter from a YAML mapping, read as the string form reads it: YAML 1.1 leaves
    ``1e-2`` (no dot) and ``(0.5, 1)`` as strings, which ``salt-pepper:amount=1e-2`` parses."""
    if isinstance(v, str):
        return _literal(v.strip())
    if isinstance(v, list):
        return [_mapping_value(x) for x in v]
    return v


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _PARAMS:
        raise DataError(unknown_name("augmentation", name, AUGMENT_NAMES))
    return key


def _number(name: str, key: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"augmentation {name!r}: {key}={v!r} is not a number")
    if not math.isfinite(v):  # nan passes every comparison below, and inf an open range
        raise DataError(f"augmentation {name!r}: {key}={v!r} is not a finite number")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise DataError(f"augmentation {name!r}: {key}={v!r} is out of range (allowed: {rng})")
    return float(v)


def _range(name: str, key: str, v: Any, lo: float, hi: float | None) -> tuple[float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise DataError(f"augmentation {name!r}: {key}={v!r} must be a number or a pair (a,b)")
    a, b = (_number(name, key, x, lo, hi) for x in v)
    if a > b:
        raise DataError(f"augmentation {name!r}: {key}={v!r} has min > max")
    return (a, b)


def _one_or_pair(name: str, key: str, v: Any, one: tuple[float, float | None], pair: tuple[float, float | None]) -> float | tuple[float, float]:
    """A number within ``one``, or a pair ``(min, max)`` within ``pair``; the error names both forms."""
    if isinstance(v, (tuple, list)):
        if len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return _range(name, key, v, pair[0], pair[1])
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        return _number(name, key, v, one[0], one[1])
    hi = lambda b: "inf" if b is None else b  # noqa: E731
    raise DataError(f"augmentation {name!r}: {key}={v!r} is not a number or a pair (allowed: a number in "
                    f"[{one[0]}, {hi(one[1])}], or (min, max) within [{pair[0]}, {hi(pair[1])}])")  # fmt: skip


def _size(name: str, v: Any) -> int | tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
        return (int(v[0]), int(v[1]))
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return int(v)
    raise DataError(f"augmentation {name!r}: size={v!r} must be a positive int or a pair (h,w)")


def _validate(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check parameters that do not depend on the image size; return them normalized."""
    p = dict(params)
    if "p" in p:
        p["p"] = _number(name, "p", p["p"], 0.0, 1.0)
    if name == "cutout" and p["size"] is not None and (isinstance(p["size"], bool) or not isinstance(p["size"], int) or p["size"] < 1):
        raise DataError(f"augmentation 'cutout': size={p['size']!r} must be a positive int (the side of the square hole)")
    if "size" in p:
        p["size"] = _size(name, p["size"])
    for key in _REQUIRED.get(name, ()):
        if p[key] is None:
            raise DataError(f"augmentation {name!r} needs {key}=..., e.g. '{name}:{key}=224'")
    if name == "crop":
        if isinstance(p["padding"], bool) or not isinstance(p["padding"], int) or p["padding"] < 0:
            raise DataError(f"augmentation 'crop': padding={p['padding']!r} must be an int >= 0")
        if p["padding_mode"] not in _PADDING_MODES:
            raise DataError(f"augmentation 'crop': padding_mode={p['padding_mode']!r} (allowed: {', '.join(_PADDING_MODES)})")
    elif name == "rotation":  # a number d: [-d, d]; or (min, max), as torchvision's RandomRotation takes
        p["degrees"] = _one_or_pair(name, "degrees", p["degrees"], (0.0, 180.0), (-180.0, 180.0))
    elif name == "color-jitter":  # a number x: factors in [1 - x, 1 + x] (hue [-x, x]); or (min, max) as torchvision's
        for key in ("brightness", "contrast", "saturation"):
            p[key] = _one_or_pair(name, key, p[key], (0.0, None), (0.0, None))
        p["hue"] = _one_or_pair(name, "hue", p["hue"], (0.0, 0.5), (-0.5, 0.5))
    elif name in ("random-resized-crop", "erasing"):
        p["scale"] = _range(name, "scale", p["scale"], 1e-6, 1.0)
        p["ratio"] = _range(name, "ratio", p["ratio"], 1e-6, None)
    elif name == "blur":
        k = p["kernel"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise DataError(f"augmentation 'blur': kernel={k!r} must be an odd int >= 1")
        p["sigma"] = _range(name, "sigma", p["sigma"], 1e-6, None)
    elif name == "salt-pepper":
        p["amount"] = _number(name, "amount", p["amount"], 0.0, 1.0)
        p["salt_vs_pepper"] = _number(name, "salt_vs_pepper", p["salt_vs_pepper"], 0.0, 1.0)
    if "value" in p:  # the fill, on images scaled to [0, 1]; erasing also takes "random", as torchvision's
        if not (name == "erasing" and p["value"] == "random"):
            allowed = "a number in [0, 1], or random" if name == "erasing" else "a number in [0, 1]"
            if isinstance(p["value"], bool) or not isinstance(p["value"], (int, float)):
                raise DataError(f"augmentation {name!r}: value={p['value']!r} is not a fill value (allowed: {allowed})")
            p["value"] = _number(name, "value", p["value"], 0.0, 1.0)
    return p


def _item(name: str, given: Mapping[str, Any]) -> AugmentItem:
    key = _canonical(name)
    defaults = _PARAMS[key]
    for k in given:
        if k not in defaults:
            raise DataError(
                f"augmentation {key!r} has no parameter {k!r}{_did_you_mean_param(k, defaults)} "
                f"(allowed: {', '.join(defaults)})"
            )
    return AugmentItem(key, _validate(key, {**defaults, **dict(given)}))


def _did_you_mean_param(value: str, allowed: Mapping[str, Any]) -> str:
    from resnetlab.errors import did_you_mean

    return did_you_mean(value, list(allowed))


def _parse_string_item(text: str) -> AugmentItem:
    name, _, rest = text.partition(":")
    given: dict[str, Any] = {}
    for part in _split_top(rest, ","):
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise DataError(f"augmentation {name.strip()!r}: bad parameter {part!r} (write key=value, e.g. 'crop:padding=4')")
        if k.strip() in given:  # the last one won, silently (a recipe refuses a key given twice)
            raise DataError(f"augmentation {name.strip()!r}: parameter {k.strip()!r} is given twice; keep one")
        given[k.strip()] = _literal(v.strip())
    return _item(name, given)


def parse_augment(spec: str | Sequence[Any] | AugmentItem | None) -> list[AugmentItem]:
    """Parse an augmentation spec into validated :class:`AugmentItem` s.

    Args:
        spec: ``None`` / ``[]`` (no augmentation), a string (items separated by ``;`` or spaces),
            or a list of strings, one-key mappings ``{name: {param: value}}`` or ``AugmentItem`` s.

    Returns:
        The items in order, every parameter filled with its default when not given.

    Raises:
        DataError: unknown name, unknown parameter or a value out of range (one line).

    Example:
        >>> [str(a) for a in parse_augment(["crop:padding=2", {"flip": {"p": 1.0}}])]
        ['crop:padding=2', 'flip:p=1.0']
    """
    if spec is None:
        return []
    if isinstance(spec, (str, AugmentItem, Mapping)):
        spec = [spec]
    items: list[AugmentItem] = []
    for entry in spec:
        if isinstance(entry, AugmentItem):
            items.append(_item(entry.name, entry.params))
        elif isinstance(entry, str):
            # spaces around ',' ':' '=' belong to one item ("crop: padding=4", "a=1, b=2"); other
            # spaces, like ';', separate items ("crop:padding=4 flip")
            entry = re.sub(r"\s*([,:=])\s*", r"\1", entry)
            items.extend(_parse_string_item(t) for t in _split_top(entry, "; \t\n"))
        elif isinstance(entry, Mapping):
            if len(entry) != 1:
                raise DataError(f"augmentation mapping {dict(entry)!r} must have exactly one key, e.g. {{'crop': {{'padding': 4}}}}")
            (name, params), = entry.items()
            params = {} if params is None else params
            if not isinstance(params, Mapping):
                raise DataError(f"augmentation {name!r}: parameters must be a mapping, got {params!r}")
            items.append(_item(name, {k: _mapping_value(v) for k, v in params.items()}))
        else:
            raise DataError(f"augmentation spec item {entry!r} must be a name, 'name:k=v' or a mapping")
    return items


def _hw(size: int | tuple[int, int], shape_hw: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple):
        return size
    return (size, size)


def _module(item: AugmentItem, shape: tuple[int, int, int]) -> tuple[nn.Module, tuple[int, int, int]]:
    """Build the kornia module for one item at input ``shape`` (C, H, W); return it and its output shape."""
    import kornia.augmentation as K

    c, h, w = shape
    p = item.params
    name = item.name
    if name == "crop":
        th, tw = _hw(p["size"], (h, w)) if p["size"] is not None else (h, w)
        pad = p["padding"]
        if th > h + 2 * pad or tw > w + 2 * pad:  # as torchvision's RandomCrop(size, padding): up to the padded image
            raise DataError(f"augmentation 'crop': size={p['size']!r} is larger than the image {h}x{w} padded by {pad} "
                            f"(allowed: <= {h + 2 * pad}x{w + 2 * pad})")  # fmt: skip
        if p["padding_mode"] == "reflect" and p["padding"] >= min(h, w):
            raise DataError(f"augmentation 'crop': reflect padding={p['padding']} needs an image larger than the padding, got {h}x{w}")
        return RandomCropIndex((th, tw), p["padding"], p["padding_mode"], p["p"]), (c, th, tw)
    if name == "flip":
        return RandomFlipIndex(p["p"]), shape
    if name == "rotation":
        return K.RandomRotation(degrees=p["degrees"], p=p["p"]), shape
    if name == "color-jitter":
        if c == 1 and (p["saturation"] or p["hue"]):
            # Saturation and hue do not exist for one channel: only brightness/contrast apply. The
            # defaults are dropped quietly, 0 turns one off; another value asks for what cannot be.
            if any(p[k] not in (0, _PARAMS[name][k]) for k in ("saturation", "hue")):
                raise DataError("augmentation 'color-jitter': saturation/hue need RGB images; grayscale allows brightness and contrast only")
            mod = K.ColorJitter(brightness=p["brightness"], contrast=p["contrast"], p=p["p"])
        else:
            mod = K.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"], p=p["p"])
        return mod, shape
    if name == "random-resized-crop":
        th, tw = _hw(p["size"], (h, w)) if p["size"] is not None else (h, w)
        return RandomResizedCropAntialiased((th, tw), p["scale"], p["ratio"]), (c, th, tw)
    if name == "resize":
        size = p["size"]
        if isinstance(size, int):  # shorter side -> size, aspect kept; the longer one truncated, as torchvision does
            th, tw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        else:
            th, tw = size
        return AntialiasedResize((th, tw)), (c, th, tw)
    if name == "center-crop":
        th, tw = _hw(p["size"], (h, w))
        if th > h or tw > w:
            raise DataError(f"augmentation 'center-crop': size={p['size']!r} is larger than the image {h}x{w} (allowed: <= image size)")
        return CenterCropIndex((th, tw)), (c, th, tw)
    if name == "cutout":
        side = p["size"] if p["size"] is not None else max(1, min(h, w) // 2)
        if side > min(h, w):
            raise DataError(f"augmentation 'cutout': size={side} is larger than the image {h}x{w} (allowed: 1..{min(h, w)})")
        frac = side * side / (h * w)
        return K.RandomErasing(scale=(frac, frac), ratio=(1.0, 1.0), value=p["value"], p=p["p"]), shape
    if name == "erasing":
        return RandomErasingBox(p["scale"], p["ratio"], p["value"], p["p"]), shape
    if name == "blur":
        if p["kernel"] > min(h, w):
            largest = min(h, w) if min(h, w) % 2 else min(h, w) - 1
            raise DataError(f"augmentation 'blur': kernel={p['kernel']} is larger than the image {h}x{w} (allowed: an odd int 1..{largest})")
        return K.RandomGaussianBlur((p["kernel"], p["kernel"]), sigma=p["sigma"], p=p["p"]), shape
    if name == "salt-pepper":
        if c not in (1, 3):
            raise DataError(f"augmentation 'salt-pepper' needs 1 or 3 channels, got {c}")
        return K.RandomSaltAndPepperNoise(amount=p["amount"], salt_vs_pepper=p["salt_vs_pepper"], p=p["p"]), shape
    raise AssertionError(name)  # pragma: no cover - _canonical guards this


class AntialiasedResize(nn.Module):
    """Bilinear resize to ``size`` with torch's antialiasing: torchvision's ``Resize(antialias=True)``
    to the pixel (kornia's antialiasing blurs with a Gaussian first, another filter)."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float (B, C, H, W)
        return F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)


class RandomResizedCropAntialiased(nn.Module):
    """torchvision's ``RandomResizedCrop(antialias=True)``: kornia draws each sample's box (its
    scale and ratio sampling), then each box is resized to ``size`` in one antialiased bilinear
    step (torchvision's geometry, align_corners=False). kornia's own resize does not antialias,
    and cropping at the image size before shrinking resamples twice: at 64 -> 32 that took ~25%
    of the pixel-level contrast that torchvision keeps."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]):
        import kornia.augmentation as K

        super().__init__()
        self.size = tuple(size)
        self.boxes = K.RandomResizedCrop(self.size, scale=scale, ratio=ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float (B, C, H, W) -> (B, C, h, w)
        src = self.boxes.forward_parameters(x.shape)["src"]  # (B, 4, 2) corners as (x, y), inclusive
        boxes = torch.cat([src[:, 0], src[:, 2] + 1], dim=1).long().tolist()  # (B, 4) x0, y0, x1, y1
        if not boxes:
            return x.new_empty((0, x.shape[1], *self.size))
        return torch.cat([
            F.interpolate(x[i : i + 1, :, y0:y1, x0:x1], size=self.size, mode="bilinear", antialias=True, align_corners=False)
            for i, (x0, y0, x1, y1) in enumerate(boxes)
        ])


class RandomErasingBox(nn.Module):
    """Random erasing drawn as torchvision's ``RandomErasing`` draws it, per sample: the box's area
    uniform in ``scale`` x H x W, its aspect ratio (height / width) log-uniform in ``ratio``, up to
    10 tries to find a box that fits (none: the image is left as it is), then a uniform position.
    kornia draws the ratio uniformly on each side of 1, which made tall boxes (h/w > 2) twice as
    common as wide ones (w/h > 2) for the symmetric default (0.3, 3.3)."""

    tries = 10

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float], value: float | str = 0.0, p: float = 0.5):
        super().__init__()
        # "random": every erased value drawn uniformly in [0, 1], the image range here
        # (torchvision's value="random" draws N(0, 1), the range of an image normalized before it)
        self.scale, self.p = tuple(scale), float(p)
        self.value = "random" if value == "random" else float(value)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # float (B, C, H, W)
        b, _, h, w = x.shape
        dev = x.device
        area = torch.empty(b, self.tries, device=dev).uniform_(*self.scale) * (h * w)
        ratio = torch.empty(b, self.tries, device=dev).uniform_(*self.log_ratio).exp_()
        eh, ew = (area * ratio).sqrt_().round_(), (area / ratio).sqrt_().round_()  # (B, tries)
        fits = (eh < h) & (ew < w)  # strictly smaller, as torchvision's: a box never spans a whole side
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first box that fits
        eh, ew = eh.gather(1, first), ew.gather(1, first)  # (B, 1)
        on = fits.any(1, keepdim=True) & (torch.rand(b, 1, device=dev) < self.p)
        top = (torch.rand(b, 1, device=dev) * (h - eh + 1)).floor_()
        left = (torch.rand(b, 1, device=dev) * (w - ew + 1)).floor_()
        r, c = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_r = (r >= top) & (r < top + eh) & on  # (B, H)
        in_c = (c >= left) & (c < left + ew)  # (B, W)
        box = (in_r[:, :, None] & in_c[:, None, :])[:, None]
        if self.value == "random":
            return torch.where(box, torch.rand_like(x), x)
        return x.masked_fill(box, self.value)


# ---------------------------------------------------------------------------------------------
# Crop and flip as index maps (hand-written, on purpose)
# ---------------------------------------------------------------------------------------------
# kornia has RandomCrop and RandomHorizontalFlip, but on CPU they cost far more than the pixels:
# at batch 128 of 3x32x32, kornia's crop+flip ran at ~7k images/s on the 2-core CI box (its crop
# loops over samples in Python, and every call re-validates and builds transformation matrices),
# slower than a per-image DataLoader. The standard CIFAR pair is pure indexing, so here each op
# only edits per-sample row/column index maps, consecutive ops are fused, and a single gather
# produces the batch — on uint8, before the float conversion (exact, and 4x less memory traffic).
# Every other augmentation but the resizes and erasing is kornia's.
class _IndexOp(nn.Module):
    """A geometric op expressible as per-sample row and column index maps."""

    def remap(self, rows: torch.Tensor, cols: torch.Tensor, rvalid: torch.Tensor, cvalid: torch.Tensor):
        raise NotImplementedError  # pragma: no cover

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H', W'), any dtype
        return _gather(x, [self])


def _pad_index(pos: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map positions in the padded image to source positions in ``[0, size)``; also validity."""
    if mode == "reflect":  # torch's "reflect": ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        pos = pos.abs()
        pos = torch.where(pos >= size, 2 * (size - 1) - pos, pos)
        return pos, torch.ones_like(pos, dtype=torch.bool)
    valid = (pos >= 0) & (pos < size)
    pos = pos.clamp(0, size - 1)  # replicate; for constant the clamped pixels are zeroed via ``valid``
    return pos, (valid if mode == "constant" else torch.ones_like(valid))


class RandomCropIndex(_IndexOp):
    """Random crop of ``size`` after padding each side by ``padding`` (per-sample offsets).

    Output pixel ``(i, j)`` of sample ``b`` is ``padded[b, :, i + dy_b, j + dx_b]`` with
    ``dy_b, dx_b`` uniform in ``[0, H + 2*padding - h]``; constant padding is zero. With
    probability ``1 - p`` a sample gets the centred window instead.
    """

    def __init__(self, size: tuple[int, int], padding: int, padding_mode: str = "constant", p: float = 1.0):
        super().__init__()
        self.size, self.padding, self.padding_mode, self.p = tuple(size), int(padding), padding_mode, float(p)

    def remap(self, rows, cols, rvalid, cvalid):
        b, h = rows.shape
        w = cols.shape[1]
        th, tw = self.size
        pad, dev = self.padding, rows.device
        dy = torch.randint(0, h + 2 * pad - th + 1, (b, 1), device=dev)
        dx = torch.randint(0, w + 2 * pad - tw + 1, (b, 1), device=dev)
        if self.p < 1.0:
            keep = torch.rand(b, 1, device=dev) >= self.p
            dy = torch.where(keep, torch.full_like(dy, pad + (h - th) // 2), dy)
            dx = torch.where(keep, torch.full_like(dx, pad + (w - tw) // 2), dx)
        ry, vy = _pad_index(dy + torch.arange(th, device=dev) - pad, h, self.padding_mode)
        rx, vx = _pad_index(dx + torch.arange(tw, device=dev) - pad, w, self.padding_mode)
        return rows.gather(1, ry), cols.gather(1, rx), rvalid.gather(1, ry) & vy, cvalid.gather(1, rx) & vx


class CenterCropIndex(_IndexOp):
    """Center crop to ``size``, placed as torchvision places it (the offset ``(H - h) / 2``
    rounded; kornia's CenterCrop floors it, one pixel off when the difference is odd), so the
    augmentation, image loading (``resize_cover``) and torchvision agree."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def remap(self, rows, cols, rvalid, cvalid):
        (th, tw), h, w = self.size, rows.shape[1], cols.shape[1]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        r, c = slice(top, top + th), slice(left, left + tw)
        return rows[:, r], cols[:, c], rvalid[:, r], cvalid[:, c]


class RandomFlipIndex(_IndexOp):
    """Horizontal flip of each sample with probability ``p``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)

    def remap(self, rows, cols, rvalid, cvalid):
        flip = (torch.rand(cols.shape[0], 1, device=cols.device) < self.p)
        return rows, torch.where(flip, cols.flip(1), cols), rvalid, torch.where(flip, cvalid.flip(1), cvalid)


def _gather(x: torch.Tensor, ops: Sequence[_IndexOp]) -> torch.Tensor:
    """Apply fused index ops with one gather (any dtype); ``(B, C, H, W) -> (B, C, H', W')``."""
    b, _, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    rvalid = torch.ones((b, h), dtype=torch.bool, device=dev)
    cvalid = torch.ones((b, w), dtype=torch.bool, device=dev)
    for op in ops:
        rows, cols, rvalid, cvalid = op.remap(rows, cols, rvalid, cvalid)
    c, th, tw = x.shape[1], rows.shape[1], cols.shape[1]
    # constant padding showed up: checked on the CPU (skips two fills); on a GPU the check would
    # be a host sync per batch, and the fills are cheap there, so they always run
    masked = dev.type != "cpu" or not (bool(rvalid.all()) and bool(cvalid.all()))
    # torch.gather over flattened pixels: ~6x faster on CPU than 4-D advanced indexing. Index
    # arithmetic and masking broadcast over long inner dimensions only (fast paths on CPU).
    if c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        # NHWC memory: gather whole pixels and stay channels_last (a C=3 transpose is slow).
        cols_c = (cols[:, :, None] * c + torch.arange(c, device=dev)).view(b, tw * c)
        lin = (rows * (w * c))[:, :, None] + cols_c[:, None, :]  # (B, h, w*C)
        out = x.permute(0, 2, 3, 1).reshape(b, h * w * c).gather(1, lin.view(b, -1)).view(b, th, tw * c)
        if masked:
            out.masked_fill_(~rvalid[:, :, None], 0)
            out.masked_fill_(~cvalid[:, :, None].expand(b, tw, c).reshape(b, 1, tw * c), 0)
        return out.view(b, th, tw, c).permute(0, 3, 1, 2)
    lin = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, th * tw).expand(b, c, th * tw)
    out = x.reshape(b, c, h * w).gather(2, lin).view(b, c, th, tw)
    if masked:
        out.masked_fill_(~rvalid[:, None, :, None], 0)
        out.masked_fill_(~cvalid[:, None, None, :], 0)
    return out


class BatchAugment(nn.Module):
    """A chain of batch augmentations; ``(B, C, H, W) -> (B, C, H', W')`` with per-sample parameters.

    Accepts uint8 or float in ``[0, 1]``. Runs of crop/flip are fused into one gather and kept in
    the input dtype; the first kornia op converts uint8 to float in ``[0, 1]``. So the output is
    uint8 only when every op is a crop/flip (the loader then fuses conversion and normalization).

    Attributes:
        items: the parsed spec it was built from.
        in_shape / out_shape: ``(C, H, W)`` before and after.
    """

    def __init__(self, items: list[AugmentItem], in_shape: tuple[int, int, int]):
        super().__init__()
        self.items = list(items)
        self.in_shape = tuple(in_shape)
        mods, shape = [], tuple(in_shape)
        for item in self.items:
            mod, shape = _module(item, shape)
            mods.append(mod)
        self.ops = nn.ModuleList(mods)
        self.out_shape = shape
        # Group consecutive index ops: [[crop, flip], kornia_op, [flip], ...]
        self._plan: list[nn.Module | list[_IndexOp]] = []
        for m in mods:
            if isinstance(m, _IndexOp) and self._plan and isinstance(self._plan[-1], list):
                self._plan[-1].append(m)
            else:
                self._plan.append([m] if isinstance(m, _IndexOp) else m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._plan:
            if isinstance(step, list):
                x = _gather(x, step)
            else:
                if x.dtype == torch.uint8:
                    x = x.to(torch.float32).div_(255.0)
                x = step(x)
        return x


def build_augment(spec: Any, image_shape: Sequence[int], train: bool = True) -> BatchAugment:
    """Build the batch augmentation for images of ``image_shape`` (C, H, W).

    Args:
        spec: anything :func:`parse_augment` accepts.
        image_shape: ``(C, H, W)`` of the uint8 images the loader holds.
        train: ``False`` keeps only the deterministic items (resize, center-crop) for evaluation.

    Raises:
        DataError: a parameter that does not fit the image (crop larger than the image, ...).

    Example:
        >>> aug = build_augment("crop:padding=4 flip", (3, 32, 32))
        >>> aug(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 3, 32, 32])
    """
    items = parse_augment(spec)
    if not train:
        items = [i for i in items if i.name in DETERMINISTIC]
    return BatchAugment(items, tuple(int(s) for s in image_shape))


def eval_transforms(spec: Any) -> list[str]:
    """The deterministic items of ``spec`` (what evaluation applies), as canonical strings.

    Example:
        >>> eval_transforms(["crop:padding=4", {"resize": {"size": 36}}, "center-crop:size=32"])
        ['resize:size=36', 'center-crop:size=32']
    """
    return [str(i) for i in parse_augment(spec) if i.name in DETERMINISTIC]


def output_shape(spec: Any, image_shape: Sequence[int], train: bool = False) -> tuple[int, int, int]:
    """The ``(C, H, W)`` the loader yields for ``spec`` (eval by default: the model's input size)."""
    return build_augment(spec, image_shape, train=train).out_shape

