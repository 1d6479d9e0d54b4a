"""ResNet trunk and blocks, written from scratch (He et al., 2016).

One :class:`ResNet` trunk builds every variant: the ImageNet family (ResNet-18 ... 152),
the CIFAR 6n+2 family (ResNet-20 ... 1202), the 9n+2 bottleneck family (ResNet-164) and
the bottleneck CIFAR-100 model of report 004. Blocks share one signature and expose ``expansion``; the norm layer and the
activation are injected callables (torchvision / timm style).

Parameter and buffer names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``) so torchvision state dicts load unchanged when the
architecture is the same (stem ``imagenet``, shortcut ``B``, a BatchNorm).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import check_fraction, check_int, unknown_name
from resnetlab.norms import get_norm_layer, is_norm

__all__ = ["BasicBlock", "Bottleneck", "TwoConvBottleneck", "ResNet", "ZeroPadShortcut", "get_act_layer", "ACT_NAMES"]

_ACTS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
}
ACT_NAMES = tuple(_ACTS)


def get_act_layer(name: str = "relu") -> Callable[[], nn.Module]:
    """Resolve an activation name to a zero-argument module factory."""
    key = str(name).lower()
    if key not in _ACTS:
        raise ValueError(unknown_name("activation", name, ACT_NAMES))
    cls = _ACTS[key]
    if key in ("relu", "leaky_relu", "silu", "elu", "mish"):
        return lambda: cls(inplace=True)
    return cls


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut of the ResNet paper: strided identity, extra channels zero-padded.

    Parameter-free, so the paper's CIFAR parameter counts (ResNet-20: 0.27M) hold.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise ValueError(f"shortcut 'A' cannot reduce channels ({cin} -> {cout}); use shortcut='B'")
        self.stride = stride
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


def make_shortcut(kind: str, cin: int, cout: int, stride: int, norm_layer) -> nn.Module | None:
    """``None`` when the identity fits, else option A (zero-pad) or B (1x1 conv + norm)."""
    if stride == 1 and cin == cout:
        return None
    if kind == "A":
        return ZeroPadShortcut(cin, cout, stride)
    # Sequential keeps torchvision's names: downsample.0 (conv), downsample.1 (norm).
    return nn.Sequential(conv1x1(cin, cout, stride), norm_layer(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 and the CIFAR family)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm_layer, act_layer, shortcut: str = "B", drop: float = 0.0):
        super().__init__()
        cout = planes * self.expansion
        conv1, conv2 = self.make_convs(cin, planes, cout, stride)
        self.conv1 = conv1  # registration order is state-dict key order: torchvision's
        self.bn1 = norm_layer(planes)
        self.act = act_layer()
        # dropout between the convolutions (Wide ResNet's place); no module at 0: the same
        # module tree (and layer names) as a block without it
        self.drop = nn.Dropout(drop) if drop > 0 else None
        self.conv2 = conv2
        self.bn2 = norm_layer(cout)
        self.downsample = make_shortcut(shortcut, cin, cout, stride, norm_layer)

    @staticmethod
    def make_convs(cin: int, planes: int, cout: int, stride: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        """The two convolutions: ``cin -> planes`` (strided) and ``planes -> cout``."""
        return conv3x3(cin, planes, stride), conv3x3(planes, cout)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def last_conv(self) -> nn.Conv2d:
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); stride on the 3x3 as in torchvision (ResNet v1.5)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm_layer, act_layer, shortcut: str = "B", drop: float = 0.0):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = norm_layer(cout)
        self.act = act_layer()
        self.drop = nn.Dropout(drop) if drop > 0 else None  # before the expanding 1x1
        self.downsample = make_shortcut(shortcut, cin, cout, stride, norm_layer)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def last_conv(self) -> nn.Conv2d:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)


class TwoConvBottleneck(BasicBlock):
    """Report 004's two-convolution bottleneck: 1x1 reduce (strided), then a 3x3 that expands (x4).

    The block the report's CIFAR-100 network is made of (``conv1x1 -> norm -> act -> conv3x3 ->
    norm``, the residual added before the last activation: a basic block's wiring with other
    convolutions), with the stride on the 1x1 as in the original ResNet v1. Differences from the
    report's code, on purpose: its convolutions carry biases, which the batch norm right after
    each cancels (no block here has them); and its identity blocks of a stage are one module
    applied several times (shared weights), a bug, while here every block has its own weights.
    """

    expansion = 4

    @staticmethod
    def make_convs(cin: int, planes: int, cout: int, stride: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        return conv1x1(cin, planes, stride), conv3x3(planes, cout)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "bottleneck2": TwoConvBottleneck}
STEMS = ("imagenet", "cifar", "cifar-pool")


def make_stage(block, cin: int, planes: int, blocks: int, stride: int, norm_layer, act_layer, shortcut, drop: float = 0.0) -> nn.Sequential:
    """One stage: the first block changes stride / width, the others keep them."""
    layers = []
    for i in range(blocks):
        layers.append(block(cin, planes, stride if i == 0 else 1, norm_layer, act_layer, shortcut, drop=drop))
        cin = planes * block.expansion
    return nn.Sequential(*layers)


def _check_head(head: Any, head_dropout: float) -> list[int] | None:
    """The validated hidden sizes of an MLP head (None: linear), as the config checks them."""
    if isinstance(head, str):
        if head != "linear":
            raise ValueError(f"head must be 'linear' or a list of hidden sizes, got {head!r}")
        head = None
    if head is not None:
        if not isinstance(head, (list, tuple)):  # head=256 was "'int' object is not iterable"
            raise ValueError(f"head must be 'linear', None or a list of hidden sizes (e.g. [256]), got {head!r}")
        head = list(head)
        for width in head:
            check_int("every head hidden size", width, 1)
    check_fraction("head_dropout", head_dropout)
    if head_dropout > 0 and not head:
        raise ValueError(f"head_dropout applies between the layers of an MLP head; give head (e.g. [256]) or use dropout "
                         f"(before the classifier), got head_dropout={head_dropout}")  # fmt: skip
    return head or None


def make_head(in_features: int, num_classes: int, hidden: Sequence[int] | None, dropout: float, act_layer) -> nn.Module:
    """A linear classifier, or an MLP ``in -> hidden[0] -> ... -> num_classes`` with dropout."""
    if not hidden:
        return nn.Linear(in_features, num_classes)
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, int(width)), act_layer()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = int(width)
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """The one ResNet trunk.

    Args:
        block: ``"basic"``, ``"bottleneck"``, ``"bottleneck2"`` (report 004's two-convolution
            bottleneck) or the block class.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 3, 3)`` for ResNet-20.
        widths: base planes per stage before ``width`` scaling, e.g. ``(64, 128, 256, 512)``.
        num_classes: output classes (>= 1).
        in_channels: input image channels (1 grayscale, 3 RGB).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool), ``"cifar"`` (3x3/1 conv, no pool)
            or ``"cifar-pool"`` (3x3/1 conv + 3x3/2 max-pool with padding 1, so 32 -> 16, as the
            imagenet stem pools; report 004's code pools without padding, 32 -> 15, and reaches
            the same 4x4 final map).
        stem_width: stem output channels before ``width`` scaling (default ``widths[0]``).
        width: multiplier on every channel count.
        shortcut: ``"A"`` (zero-pad, parameter-free) or ``"B"`` (1x1 conv + norm) where shapes change.
        norm: a name from :data:`resnetlab.norms.NORM_NAMES`.
        groups: GroupNorm groups (``gn`` only).
        act: activation name (``relu``, ``gelu``, ``silu``, ...).
        dropout: dropout probability before the classifier.
        head: ``None`` / ``"linear"`` for a linear classifier, or hidden sizes of an MLP head.
        head_dropout: dropout between the MLP head's layers.
        zero_init_residual: zero each block's last norm weight (its last convolution's weight
            with ``norm="none"``), so blocks start as identities.
        block_dropout: dropout probability inside every residual block, on the activations
            between its convolutions (Wide ResNet's placement; in a bottleneck before the
            expanding 1x1). Off at 0, where the block has no dropout module at all.

    Example:
        >>> m = ResNet("basic", (3, 3, 3), (16, 32, 64), num_classes=10, stem="cifar", shortcut="A")
        >>> m(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        block: str | type[nn.Module],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        stem_width: int | None = None,
        width: float = 1.0,
        shortcut: str = "B",
        norm: str = "bn-torch",
        groups: int | None = None,
        act: str = "relu",
        dropout: float = 0.0,
        head: Sequence[int] | str | None = None,
        head_dropout: float = 0.0,
        zero_init_residual: bool = False,
        block_dropout: float = 0.0,
    ):
        super().__init__()
        block_cls = BLOCKS.get(block, block) if isinstance(block, str) else block
        if isinstance(block, str) and block not in BLOCKS:
            raise ValueError(unknown_name("block", block, BLOCKS))
        check_int("num_classes", num_classes, 1)
        check_int("in_channels", in_channels, 1)
        if stem not in STEMS:
            raise ValueError(unknown_name("stem", stem, STEMS))
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 conv), got {shortcut!r}")
        check_fraction("dropout", dropout)
        check_fraction("block_dropout", block_dropout)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        if not isinstance(zero_init_residual, bool):  # "no" is a true string: it zeroed the norms
            raise ValueError(f"zero_init_residual must be True or False, got {zero_init_residual!r}")
        if groups is not None and str(norm).lower() not in ("gn", "gn-torch"):  # as the config refuses model.groups
            raise ValueError(f"groups applies only to norm 'gn' or 'gn-torch' (GroupNorm), got norm={norm!r}; drop groups")
        if stem_width is not None:
            check_int("stem_width", stem_width, 1)
        # zip() would silently drop the extra entries, and a stage of 0 blocks would leave the
        # next stage built for channels it never receives.
        layers, widths = tuple(layers), tuple(widths)
        if not layers or len(layers) != len(widths):
            raise ValueError(f"layers and widths must give one entry per stage (at least one), got {len(layers)} and {len(widths)}")
        for n in layers:
            check_int("every stage's block count (layers)", n, 1)
        for w in widths:
            check_int("every stage width (widths)", w, 1)
        head = _check_head(head, head_dropout)

        norm_layer = get_norm_layer(norm, groups=groups)
        act_layer = get_act_layer(act)
        scale = lambda c: max(1, int(round(c * width)))  # noqa: E731

        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem_type = stem
        self.norm_name = norm
        self.act_name = act

        c0 = scale(stem_width or widths[0])
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, c0, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, c0)
        self.bn1 = norm_layer(c0)
        self.act = act_layer()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem in ("imagenet", "cifar-pool") else nn.Identity()

        cin = c0
        self.stage_names: list[str] = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            stage = make_stage(block_cls, cin, scale(w), n, 1 if i == 0 else 2, norm_layer, act_layer, shortcut, block_dropout)
            name = f"layer{i + 1}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            cin = scale(w) * block_cls.expansion
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = make_head(cin, num_classes, head, head_dropout, act_layer)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Kaiming (fan_out) for convs and unit/zero norms, as torchvision does.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif is_norm(m) and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    norm = m.last_norm()
                    # without a norm weight to zero (norm "none", or a norm without affine
                    # parameters) the branch's last convolution is zeroed instead, as Fixup does:
                    # either way the block starts as the identity (its shortcut, through the act)
                    nn.init.zeros_(norm.weight if getattr(norm, "weight", None) is not None else m.last_conv().weight)

    # -- named stages, for hooks (activation maps, Grad-CAM) -----------------------------
    def stages(self) -> OrderedDict[str, nn.Module]:
        """Modules whose outputs are the stage outputs: ``stem``, ``layer1`` ... ``layerN``."""
        out: OrderedDict[str, nn.Module] = OrderedDict(stem=self.maxpool)
        for name in self.stage_names:
            out[name] = getattr(self, name)
        return out

    def get_stage(self, name: str) -> nn.Module:
        stages = self.stages()
        if name not in stages:
            raise ValueError(unknown_name("layer", name, stages))
        return stages[name]

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must have shape (B, {self.in_channels}, H, W) for in_channels={self.in_channels}, "
                f"got {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_feat, H', W') before pooling."""
        self.check_input(x)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C_feat, H', W') -> (B, num_classes), or pooled features with ``pre_logits``."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, head: Sequence[int] | None = None, head_dropout: float = 0.0) -> None:
        """Replace the classifier (transfer learning), keeping the body.

        ``arch_args`` (set by :func:`resnetlab.create_model`) follows, so that a checkpoint saved
        with them rebuilds this model."""
        check_int("num_classes", num_classes, 1)
        head = _check_head(head, head_dropout)
        self.num_classes = num_classes
        self.fc = make_head(self.num_features, num_classes, head, head_dropout, get_act_layer(self.act_name))
        args = getattr(self, "arch_args", None)
        if isinstance(args, dict):
            args["num_classes"] = num_classes
            for key, value in (("head", head), ("head_dropout", head_dropout)):
                if value:
                    args[key] = value
                else:  # the default
                    args.pop(key, None)
