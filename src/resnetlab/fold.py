"""Inference-time graph surgery: fold batch norm into the convolution before it.

In eval mode a batch norm is a fixed per-channel affine map, ``y = (x - mean) / sqrt(var + eps)
* gamma + beta``, so the convolution that feeds it can absorb it: the conv weights are scaled by
``gamma / sqrt(var + eps)`` per output channel and the conv gains a bias. The folded network
computes the same function with one memory pass fewer per norm, which matters most on CPUs
where these small ResNets are bandwidth-bound.

``torch.fx`` / ``torch.ao`` fusion helpers need a traceable forward (the ResNet trunk checks its
input shape in Python) or a hand-written fuse list, so the pairing is done here from the
torchvision naming convention the trunk follows: a child ``bn<k>`` is fed by its sibling
``conv<k>`` (stem, block convolutions), and inside an ``nn.Sequential`` a norm is fed by the
convolution just before it (``downsample.0`` -> ``downsample.1``). The weight arithmetic is
``torch.nn.utils.fusion.fuse_conv_bn_weights``; only the pairing is written by hand.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from resnetlab.norms import BatchInstanceNorm2d, BatchNorm2d

log = logging.getLogger(__name__)

__all__ = ["compile_for_inference", "fold_batchnorm", "foldable_pairs", "optimize_for_inference"]

_BN_NAME = re.compile(r"^bn(\d+)$")


def _is_foldable_norm(m: nn.Module) -> bool:
    """A batch norm whose eval-mode output is a fixed affine map of its input."""
    if isinstance(m, BatchInstanceNorm2d):  # the instance half depends on the input
        return False
    if isinstance(m, BatchNorm2d):  # scratch BN: eval always uses running statistics
        return True
    if isinstance(m, nn.BatchNorm2d):
        # Without running statistics the native layer normalizes with batch stats even in eval.
        return m.track_running_stats and m.running_mean is not None
    return False


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(conv, norm)`` of every conv -> batch-norm pair that can be folded.

    Example:
        >>> from resnetlab import create_model
        >>> foldable_pairs(create_model("resnet8"))[0]
        ('conv1', 'bn1')
    """
    pairs: list[tuple[str, str]] = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            items = list(children.items())
            for (cname, conv), (nname, norm) in zip(items, items[1:]):
                if isinstance(conv, nn.Conv2d) and _is_foldable_norm(norm):
                    pairs.append((prefix + cname, prefix + nname))
            continue
        for nname, norm in children.items():
            match = _BN_NAME.match(nname)
            conv = children.get(f"conv{match.group(1)}") if match else None
            if isinstance(conv, nn.Conv2d) and _is_foldable_norm(norm):
                pairs.append((prefix + f"conv{match.group(1)}", prefix + nname))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every conv -> batch-norm pair folded into the conv.

    Both the native ``nn.BatchNorm2d`` (with running statistics) and the scratch
    :class:`resnetlab.norms.BatchNorm2d` are folded, in the stem, the blocks and the
    ``downsample`` shortcuts; each folded norm becomes ``nn.Identity``. Other norms (GroupNorm,
    LayerNorm, InstanceNorm, Batch-Instance Norm) depend on the input and are left as they are.
    The arithmetic runs in float64 so the folded model matches the original to ~1e-6.

    Args:
        model: a model; it is not modified (a deep copy is folded).

    Returns:
        The folded copy, in eval mode, on the same device and dtype as ``model``.

    Example:
        >>> from resnetlab import create_model
        >>> m = create_model("resnet20").eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> bool(torch.allclose(fold_batchnorm(m)(x), m(x), atol=1e-4))
        True
    """
    folded = copy.deepcopy(model).eval()
    pairs = foldable_pairs(folded)
    for conv_name, norm_name in pairs:
        conv = folded.get_submodule(conv_name)
        norm = folded.get_submodule(norm_name)
        dtype = conv.weight.dtype
        weight, bias = fuse_conv_bn_weights(
            conv.weight.double(),
            None if conv.bias is None else conv.bias.double(),
            norm.running_mean.double(),
            norm.running_var.double(),
            norm.eps,
            None if norm.weight is None else norm.weight.double(),
            None if norm.bias is None else norm.bias.double(),
        )
        conv.weight = nn.Parameter(weight.to(dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
        _set_submodule(folded, norm_name, nn.Identity())
    log.debug("folded %d batch norms into convolutions", len(pairs))
    return folded


def optimize_for_inference(model: nn.Module, channels_last: bool = True, fold: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` prepared for fast CPU (or GPU) inference.

    Args:
        model: the trained model; it is not modified.
        channels_last: store conv weights NHWC; feed inputs with
            ``x.contiguous(memory_format=torch.channels_last)`` (oneDNN's native layout on CPU).
        fold: fold batch norms into the convolutions (:func:`fold_batchnorm`).

    Returns:
        The prepared copy with ``requires_grad`` off (inference needs no autograd graph).

    Example:
        >>> from resnetlab import create_model
        >>> fast = optimize_for_inference(create_model("resnet20"))
        >>> fast(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)).shape
        torch.Size([4, 10])
    """
    out = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def compile_for_inference(model: nn.Module, fold: bool = True) -> nn.Module:
    """``torch.compile`` an inference copy of ``model`` with inductor's weight freezing.

    The batch norms are folded first (:func:`fold_batchnorm`), then inductor compiles the graph with
    ``freezing`` on: parameters become constants, so on CPU it pre-packs the convolution weights
    for oneDNN and fuses conv + bias + ReLU (+ the residual add) into single kernels. On the 2-core
    development machine this ran ResNet-20 at batch 256 1.62x as fast as plain eager PyTorch and
    1.42x as fast as eager with :func:`resnetlab.runtime.tune_malloc` (`python benchmarks/bench_cpu.py
    --only infer:eager --only infer:compiled [--no-tune-malloc]`, docs/BENCHMARKS.md, third run).
    Inputs stay NCHW: inductor picks the layout itself.

    The compiled module is specialized to the first input shape it sees (``dynamic=False``); a new
    batch size compiles again, so callers that stream batches pad the last one
    (``resnetlab predict --backend torch-compile`` does). Compiling takes tens of seconds on a
    small CPU and needs a C++ compiler, so it pays for large prediction jobs, not for a handful of
    images. Call it under ``torch.no_grad()`` / ``torch.inference_mode()``.

    Args:
        model: the trained model; it is not modified.
        fold: fold batch norms into the convolutions first.

    Returns:
        The compiled module (compilation happens at its first call).

    Example:
        >>> from resnetlab import create_model
        >>> fast = compile_for_inference(create_model("resnet8"))  # doctest: +SKIP
        >>> with torch.no_grad(): fast(torch.randn(8, 3, 32, 32)).shape  # doctest: +SKIP
        torch.Size([8, 10])
    """
    prepared = optimize_for_inference(model, channels_last=False, fold=fold)
    return torch.compile(prepared, dynamic=False, options={"freezing": True})
