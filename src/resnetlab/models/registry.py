"""Model registry: ``@register_model``, ``create_model(name, **kwargs)``, ``list_models(pattern)``.

Builders are a few lines of arguments to the one :class:`~resnetlab.models.resnet.ResNet`
trunk. Each records its default input size, used by ``resnetlab models`` for FLOPs.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from resnetlab.errors import did_you_mean, unknown_name

__all__ = ["register_model", "create_model", "list_models", "model_info", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) the model is meant for
    family: str
    doc: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(input_size: tuple[int, int, int], family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a builder under its function name."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[fn.__name__] = ModelInfo(fn.__name__, fn, tuple(input_size), family, doc.splitlines()[0] if doc else "")
        return fn

    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"resnet*"``), a
    substring of the name (``"bottleneck"``) or a family name (``"cifar"``, ``"imagenet"``)."""
    names = sorted(_REGISTRY, key=_natural_key)
    if pattern:
        plain = not any(c in pattern for c in "*?[")
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or (plain and (pattern in n or pattern == _REGISTRY[n].family))]
    return names


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def model_info(name: str) -> ModelInfo:
    """The registry entry of a model: builder, default input size (C, H, W), family and the
    first line of its docstring.

    Example:
        >>> model_info("resnet20").input_size
        (3, 32, 32)
    """
    if name not in _REGISTRY:
        raise ValueError(unknown_name("model", name, _REGISTRY))
    return _REGISTRY[name]


def _options(builder: Callable[..., nn.Module]) -> set[str]:
    """The keyword options a builder takes: its own, and the ResNet trunk's when it passes
    ``**kwargs`` on (its fixed layout, ``block`` / ``layers`` / ``widths``, is not an option)."""
    from resnetlab.models.resnet import ResNet

    names: set[str] = set()
    params = inspect.signature(builder).parameters.values()
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names |= {n for n in inspect.signature(ResNet.__init__).parameters if n not in ("self", "block", "layers", "widths")}
    return names


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: options of the trunk (``num_classes``, ``in_channels``, ``norm``, ``shortcut``,
            ``stem``, ``width``, ``act``, ``dropout``, ``head``, ``zero_init_residual``, ...).

    Example:
        >>> import resnetlab
        >>> m = resnetlab.create_model("resnet20", num_classes=10, norm="gn")
    """
    info = model_info(name)
    allowed = sorted(_options(info.builder))
    for key in ("block", "layers", "widths"):  # Python's "got multiple values for argument 'block'" alone
        if key in kwargs and key not in allowed:
            hint = "; resnet_cifar takes depth and block" if info.family == "cifar" else ""
            raise TypeError(f"create_model({name!r}): {key!r} is fixed by the model's layout, not an option{hint} (allowed: {', '.join(allowed)})")
    try:
        model = info.builder(**kwargs)
    except TypeError as exc:  # a misspelt option: Python's "unexpected keyword argument 'nrom'" alone
        m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if m is None or m.group(1) not in kwargs:
            raise
        raise TypeError(f"create_model({name!r}): unknown option {m.group(1)!r}{did_you_mean(m.group(1), allowed)} "
                        f"(allowed: {', '.join(allowed)})") from None
    model.arch = name  # type: ignore[attr-defined]
    model.arch_args = dict(kwargs)  # type: ignore[attr-defined]
    model.default_input_size = info.input_size  # type: ignore[attr-defined]
    return model
