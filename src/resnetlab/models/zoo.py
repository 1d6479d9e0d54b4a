"""The registered ResNets: thin builders over the one trunk."""

from __future__ import annotations

from resnetlab.models.registry import register_model
from resnetlab.models.resnet import ResNet

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)


def _imagenet(block: str, layers, **kwargs) -> ResNet:
    # Defaults give torchvision's architecture and parameter names, so its weights load as-is.
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("stem", "imagenet")
    kwargs.setdefault("shortcut", "B")
    return ResNet(block, layers, IMAGENET_WIDTHS, **kwargs)


@register_model((3, 224, 224), "imagenet")
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 11.7M parameters at 1000 classes."""
    return _imagenet("basic", (2, 2, 2, 2), **kwargs)


@register_model((3, 224, 224), "imagenet")
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _imagenet("basic", (3, 4, 6, 3), **kwargs)


@register_model((3, 224, 224), "imagenet")
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), 25.6M parameters at 1000 classes."""
    return _imagenet("bottleneck", (3, 4, 6, 3), **kwargs)


@register_model((3, 224, 224), "imagenet")
def resnet101(**kwargs) -> ResNet:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return _imagenet("bottleneck", (3, 4, 23, 3), **kwargs)


@register_model((3, 224, 224), "imagenet")
def resnet152(**kwargs) -> ResNet:
    """ResNet-152: bottleneck blocks (3, 8, 36, 3)."""
    return _imagenet("bottleneck", (3, 8, 36, 3), **kwargs)


def cifar_depth_problem(depth: object, block: object = "basic") -> str | None:
    """Why :func:`resnet_cifar` refuses ``depth`` with ``block`` (None when it builds it).

    Example:
        >>> cifar_depth_problem(20), cifar_depth_problem(164, "bottleneck")
        (None, None)
    """
    if block not in ("basic", "bottleneck"):
        return f"block must be 'basic' (depth 6n+2) or 'bottleneck' (depth 9n+2), got {block!r}"
    per_block = 2 if block == "basic" else 3
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < per_block * 3 + 2 or (depth - 2) % (3 * per_block) != 0:
        examples = "8, 14, 20, 32, 44, 56, 110, ..." if block == "basic" else "11, 20, 29, 56, 110, 164, 1001, ..."
        other = "" if block == "bottleneck" or not (isinstance(depth, int) and depth >= 11 and (depth - 2) % 9 == 0) else (
            f"; {depth} is 9n+2: with block='bottleneck' (model.block) it is a bottleneck network")
        return f"depth must be {3 * per_block}n+2 with n >= 1 for block={block!r} ({examples}), got {depth!r}{other}"
    return None


@register_model((3, 32, 32), "cifar")
def resnet_cifar(depth: int = 20, block: str = "basic", **kwargs) -> ResNet:
    """CIFAR ResNet of any depth: 6n+2 with basic blocks, or 9n+2 with bottlenecks (ResNet-164).

    Three stages of n blocks at widths 16/32/64: basic blocks (two 3x3 convolutions, He et al.
    2015, shortcut A by default) or bottleneck blocks (1x1, 3x3, 1x1 expanding x4, so the stages
    output 64/128/256 channels: the ResNet-164 family of He et al. 2016, "Identity Mappings",
    in its original post-activation form, projection shortcuts (B) by default).

    Example:
        >>> sum(p.numel() for p in resnet_cifar(depth=164, block="bottleneck").parameters())
        1704154
    """
    problem = cifar_depth_problem(depth, block)
    if problem:
        raise ValueError(problem)
    n = (depth - 2) // (6 if block == "basic" else 9)
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("stem", "cifar")
    # the papers' defaults: zero-padding for basic blocks (2015), projections for bottlenecks (2016)
    kwargs.setdefault("shortcut", "A" if block == "basic" else "B")
    return ResNet(block, (n, n, n), CIFAR_WIDTHS, **kwargs)


def _fixed_depth(name: str, kwargs: dict) -> None:
    if "block" in kwargs:
        raise ValueError(f"{name} has fixed blocks; for others use the model resnet_cifar with block={kwargs['block']!r} and a depth")
    if "depth" in kwargs:
        raise ValueError(f"{name} has a fixed depth; for another use the model resnet_cifar with depth={kwargs['depth']!r} "
                         f"(--model resnet_cifar --depth {kwargs['depth']!r}, or create_model('resnet_cifar', depth={kwargs['depth']!r}))")


def _cifar_builder(depth: int):
    def builder(**kwargs) -> ResNet:
        _fixed_depth(f"resnet{depth}", kwargs)
        return resnet_cifar(depth=depth, **kwargs)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} for CIFAR (6n+2, n={(depth - 2) // 6}), shortcut A by default."
    return register_model((3, 32, 32), "cifar")(builder)


for _d in (8, 14, 20, 32, 44, 56, 110, 1202):
    globals()[f"resnet{_d}"] = _cifar_builder(_d)


@register_model((3, 32, 32), "cifar")
def resnet164(**kwargs) -> ResNet:
    """ResNet-164 for CIFAR (He et al. 2016; 9n+2, n=18 bottlenecks, 1.7M parameters), shortcut B."""
    _fixed_depth("resnet164", kwargs)
    return resnet_cifar(depth=164, block="bottleneck", **kwargs)


def _report004(block: str, **kwargs) -> ResNet:
    kwargs.setdefault("num_classes", 100)
    kwargs.setdefault("stem", "cifar-pool")
    kwargs.setdefault("shortcut", "B")
    return ResNet(block, (4, 5, 3), (64, 128, 256), **kwargs)


@register_model((3, 32, 32), "cifar")
def resnet38_bottleneck_cifar(**kwargs) -> ResNet:
    """Bottleneck CIFAR-100 ResNet of report 004: stages 64->256, 128->512, 256->1024 (4, 5, 3 blocks)."""
    return _report004("bottleneck", **kwargs)


@register_model((3, 32, 32), "cifar")
def resnet26_bottleneck2_cifar(**kwargs) -> ResNet:
    """Report 004's network as it wrote it: two-convolution bottlenecks, same stages as resnet38_bottleneck_cifar."""
    return _report004("bottleneck2", **kwargs)
