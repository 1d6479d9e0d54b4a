"""Normalization layers, written from scratch with tensor operations.

The mission asks for these to be hand-written (report 001 compares its own BatchNorm
with PyTorch's), so none of them calls ``F.batch_norm`` / ``F.group_norm`` /
``F.layer_norm`` / ``F.instance_norm``. The native layers stay selectable under
``*-torch`` names and are the fast default.

Every layer is resolved from one map through :func:`get_norm_layer`, which returns a
callable taking a channel count, so a normalization study changes one string and no
block code (timm's ``get_norm_layer``).

Names:

========== ==========================================================================
``bn``      BatchNorm2d (running statistics with momentum; eval mode uses them)
``in``      InstanceNorm2d with affine parameters (no running statistics)
``bin``     Batch-Instance Norm (Nam & Kim, 2018): ``rho * BN + (1 - rho) * IN``
``ln``      LayerNorm over (C, H, W) with per-channel affine parameters
``gn``      GroupNorm (``groups``, default 32 lowered to a divisor of C)
``none``    identity
``bn-torch`` ``gn-torch`` ``in-torch`` ``ln-torch``  the native PyTorch layers
========== ==========================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from resnetlab.errors import unknown_name

__all__ = [
    "BatchNorm2d",
    "InstanceNorm2d",
    "BatchInstanceNorm2d",
    "LayerNorm2d",
    "GroupNorm",
    "NORM_NAMES",
    "get_norm_layer",
    "default_groups",
    "enable_sync_batch_stats",
]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 (what a convolution returns under CUDA autocast) -> fp32; fp32 and fp64 stay.
    The statistics are computed in it, as torch's own norms do: in fp16 a variance above 65,504
    is inf (the layer then outputs zeros), and bf16 sums are coarse. Outputs return to the
    input's dtype."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    # x: (B, C, H, W); weight, bias: (C,)
    if weight is not None:
        x = x * weight.view(1, -1, 1, 1)
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    return x


class BatchNorm2d(nn.Module):
    """Batch normalization (Ioffe & Szegedy, 2015), written by hand.

    Same parameter and buffer names as ``torch.nn.BatchNorm2d`` (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``) so torchvision state dicts
    load unchanged. Training normalizes with the biased batch variance and updates the
    running variance with the unbiased one, exactly as PyTorch does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True):
        super().__init__()
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum={momentum!r} is out of range (allowed: a number in [0, 1], or None for a cumulative average)")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.sync = False  # batch statistics over all DDP ranks (enable_sync_batch_stats)

    def batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and normalizing variance; updates running stats in training."""
        if self.training:
            if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
                mean, var, n = _global_var_mean(x)  # n: a tensor, no host sync
            else:
                n = x.numel() // x.shape[1]
                if n <= 1:
                    raise ValueError(
                        f"BatchNorm needs more than 1 value per channel in training, got input of shape "
                        f"{tuple(x.shape)}; use a batch size > 1 or another norm (gn, ln, in)"
                    )
                var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var.detach() * (n / (n - 1))
                if self.momentum is None:
                    # the cumulative average of all batches so far, as torch's momentum=None (a
                    # tensor weight 1/batches: no host synchronisation)
                    w = 1.0 / self.num_batches_tracked
                    self.running_mean.lerp_(mean.detach(), w)
                    self.running_var.lerp_(unbiased, w)
                else:
                    m = self.momentum
                    self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                    self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
            return mean, var
        return self.running_mean, self.running_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        xf = _at_least_fp32(x)
        mean, var = self.batch_stats(xf)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return _affine(y, self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    # torch's batch norm is at version 2 since num_batches_tracked exists (PyTorch 0.4)
    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # As torch.nn.BatchNorm2d: a state dict from before the counter existed (no version, or
        # version 1: pre-0.4 checkpoints, or a dict rebuilt without its metadata) loads with the
        # counter this layer holds, instead of failing on a missing num_batches_tracked.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and key not in state_dict:
            state_dict[key] = self.num_batches_tracked.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all processes, differentiable (the gradient is summed over processes too)."""
    import torch.distributed._functional_collectives as fc

    if hasattr(fc, "all_reduce_backward"):  # torch releases where the functional collective has autograd
        return fc.all_reduce(t, "sum", torch.distributed.group.WORLD) * 1  # * 1: wait, a plain tensor
    from torch.distributed.nn.functional import all_reduce  # older releases (deprecated since)

    return all_reduce(t)


def _global_var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` over the batches of every process, and the
    global count: what SyncBatchNorm computes, for the hand-written layers. Two passes (sum, then
    squared deviations from the global mean) through autograd-aware all-reduces, so gradients
    flow back to every rank's inputs as they would through one big batch.

    The sums and the count are at least fp32: under fp16 autocast a count of more than
    65,504 values per channel (batch 128 at 32x32) would be inf in fp16, and the sums overflow."""
    c = x.shape[1]
    x = _at_least_fp32(x)
    count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
    total = _all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))
    n = total[c]
    mean = total[:c] / n
    var = _all_reduce_sum((x - mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3))) / n
    return mean, var, n.clamp(min=2)  # the running variance's n / (n - 1) stays finite


def enable_sync_batch_stats(model: nn.Module, replace_torch: bool = False) -> int:
    """Make the batch norms of ``model`` use batch statistics over all DDP processes
    (``train.sync_bn``): the hand-written ``bn`` / ``bin`` layers switch to synced statistics;
    with ``replace_torch``, torch's ``nn.BatchNorm2d`` layers are replaced (in place, weights and
    running statistics kept: the names are the same) by the hand-written layer with synced
    statistics, for CPU processes, where ``nn.SyncBatchNorm`` does not run. Returns how many
    layers synchronise."""
    if replace_torch:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats:
                    mine = BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
                    mine.load_state_dict(child.state_dict())
                    setattr(parent, name, mine.to(device=child.weight.device, dtype=child.weight.dtype).train(child.training))
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in layers:
        m.sync = True
    return len(layers)


def _instance_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:  # x: at least fp32
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)  # (B, C, 1, 1)
    return (x - mean) * torch.rsqrt(var + eps)


class InstanceNorm2d(nn.Module):
    """Instance normalization (Ulyanov et al., 2016) with affine parameters, by hand.

    Statistics are always those of the instance, in training and in eval, matching
    ``nn.InstanceNorm2d(affine=True, track_running_stats=False)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] == 1:  # every output would be the bias: the network trains at chance
            raise ValueError(
                f"instance norm needs more than one value per channel, got a 1x1 feature map (input {list(x.shape)}): "
                "the images are too small for this model; use a larger data.image_size, model.stem=cifar, or another model.norm"
            )
        return _affine(_instance_normalize(_at_least_fp32(x), self.eps), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class BatchInstanceNorm2d(BatchNorm2d):
    """Batch-Instance Normalization (Nam & Kim, NeurIPS 2018), by hand.

    ``y = (rho * x_bn + (1 - rho) * x_in) * weight + bias`` with a learnable gate ``rho``
    per channel. ``rho`` is clamped to [0, 1] after every optimizer step (as in the paper)
    through :meth:`clamp_`; the forward pass also clamps, so it is never used outside the
    range. Batch statistics follow :class:`BatchNorm2d` (running stats in eval mode).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, rho_init: float = 1.0):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.rho = nn.Parameter(torch.full((num_features,), float(rho_init)))

    @torch.no_grad()
    def clamp_(self) -> None:
        self.rho.clamp_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, x = x.dtype, _at_least_fp32(x)
        mean, var = self.batch_stats(x)
        x_bn = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        x_in = _instance_normalize(x, self.eps)
        # Clamped value, identity gradient (straight-through): torch's clamp has a zero
        # gradient at the bounds, so a plain clamp would freeze rho at its init of 1 forever.
        # The optimizer may push rho outside [0, 1]; clamp_bin_gates() pulls it back after
        # each step, as the paper does.
        rho = self.rho + (self.rho.clamp(0.0, 1.0) - self.rho).detach()
        rho = rho.view(1, -1, 1, 1)
        return _affine(rho * x_bn + (1 - rho) * x_in, self.weight, self.bias).to(dtype)


class LayerNorm2d(nn.Module):
    """Layer normalization over (C, H, W) of each sample (Ba et al., 2016), by hand.

    Statistics over all of a sample's features; the affine parameters are per channel
    (as in GroupNorm with one group), so the layer works at any input size.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _at_least_fp32(x)
        var, mean = torch.var_mean(xf, dim=(1, 2, 3), keepdim=True, correction=0)  # (B, 1, 1, 1)
        return _affine((xf - mean) * torch.rsqrt(var + self.eps), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class GroupNorm(nn.Module):
    """Group normalization (Wu & He, 2018), by hand. Same parameter names as ``nn.GroupNorm``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"groups={num_groups} must be >= 1 and divide the channel count {num_channels} "
                f"(divisors: {_divisors(num_channels)})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xf = _at_least_fp32(x)
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            g = xf.reshape(b, self.num_groups, c // self.num_groups * h * w)  # (B, G, C/G*H*W)
            var, mean = torch.var_mean(g, dim=2, keepdim=True, correction=0)
            y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, h, w)
        else:
            # channels_last: grouped as a view of the NHWC memory, (B, H*W, G, C/G), so the output
            # stays channels_last as nn.GroupNorm's does (the NCHW reshape copied the input and
            # returned NCHW, a layout change at every norm of a channels_last model)
            g = xf.permute(0, 2, 3, 1).reshape(b, h * w, self.num_groups, c // self.num_groups)
            var, mean = torch.var_mean(g, dim=(1, 3), keepdim=True, correction=0)
            y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return _affine(y, self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def default_groups(channels: int, groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``groups`` (GroupNorm's default)."""
    return max(d for d in _divisors(channels) if d <= max(1, groups))


class _GroupNormFactory:
    """Picklable ``channels -> GroupNorm`` callable."""

    def __init__(self, cls, groups: int | None):
        self.cls = cls
        self.groups = groups

    def __call__(self, channels: int) -> nn.Module:
        groups = default_groups(channels) if self.groups is None else self.groups
        # Checked here so the native nn.GroupNorm ("gn-torch") fails with the same one-line
        # message naming the argument as the scratch layer, not torch's own wording.
        if channels % groups != 0:
            raise ValueError(
                f"groups={groups} must be >= 1 and divide the channel count {channels} "
                f"(divisors: {_divisors(channels)})"
            )
        return self.cls(groups, channels)


_NORMS: dict[str, Callable[..., nn.Module]] = {
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "bin": BatchInstanceNorm2d,
    "ln": LayerNorm2d,
    "gn": GroupNorm,
    "none": nn.Identity,
    "bn-torch": nn.BatchNorm2d,
    "gn-torch": nn.GroupNorm,
    "in-torch": functools.partial(nn.InstanceNorm2d, affine=True),
    "ln-torch": None,  # GroupNorm with one group == LayerNorm over (C, H, W) with per-channel affine
}

NORM_NAMES: tuple[str, ...] = tuple(_NORMS)


def get_norm_layer(name: str = "bn-torch", groups: int | None = None) -> Callable[[int], nn.Module]:
    """Resolve a norm name to a callable that takes a channel count and returns the layer.

    Args:
        name: one of :data:`NORM_NAMES`.
        groups: GroupNorm groups (``gn`` / ``gn-torch``); ``None`` picks the largest divisor
            of the channel count that is at most 32.

    Example:
        >>> layer = get_norm_layer("gn", groups=8)(64)
        >>> layer(torch.randn(2, 64, 4, 4)).shape
        torch.Size([2, 64, 4, 4])
    """
    key = str(name).lower()
    if key not in _NORMS:
        raise ValueError(unknown_name("norm", name, NORM_NAMES))
    if groups is not None and (not isinstance(groups, int) or groups < 1):
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if key == "gn":
        return _GroupNormFactory(GroupNorm, groups)
    if key == "gn-torch":
        return _GroupNormFactory(nn.GroupNorm, groups)
    if key == "ln-torch":
        return _GroupNormFactory(nn.GroupNorm, 1)
    if key == "none":
        return lambda channels: nn.Identity()
    return _NORMS[key]


def clamp_bin_gates(model: nn.Module) -> None:
    """Keep every Batch-Instance Norm gate in [0, 1]; call after each optimizer step."""
    for m in model.modules():
        if isinstance(m, BatchInstanceNorm2d):
            m.clamp_()


def is_norm(module: nn.Module) -> bool:
    """True for any normalization layer this module knows (scratch or native)."""
    native = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)
    return isinstance(module, native + (BatchNorm2d, InstanceNorm2d, LayerNorm2d, GroupNorm))

