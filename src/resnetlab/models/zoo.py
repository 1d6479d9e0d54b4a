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


@register_model((3, 32, 32), "cifar")
def resnet_cifar(depth: int = 20, **kwargs) -> ResNet:
    """CIFAR ResNet of any depth 6n+2: 3 stages of n basic blocks, widths 16/32/64."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
    n = (depth - 2) // 6
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("stem", "cifar")
    kwargs.setdefault("shortcut", "A")  # the paper's default for CIFAR
    return ResNet("basic", (n, n, n), CIFAR_WIDTHS, **kwargs)


def _cifar_builder(depth: int):
    def builder(**kwargs) -> ResNet:
        if "depth" in kwargs:
            raise ValueError(f"resnet{depth} has a fixed depth; for another use the model resnet_cifar with depth={kwargs['depth']!r} "
                             f"(--model resnet_cifar --depth {kwargs['depth']!r}, or create_model('resnet_cifar', depth={kwargs['depth']!r}))")
        return resnet_cifar(depth=depth, **kwargs)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} for CIFAR (6n+2, n={(depth - 2) // 6}), shortcut A by default."
    return register_model((3, 32, 32), "cifar")(builder)


for _d in (8, 14, 20, 32, 44, 56, 110, 1202):
    globals()[f"resnet{_d}"] = _cifar_builder(_d)


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
