"""BN folding: the folded inference copy computes the same function, for every BN placement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab import create_model
from resnetlab.fold import fold_batchnorm, foldable_pairs, optimize_for_inference
from resnetlab.norms import BatchInstanceNorm2d, BatchNorm2d, GroupNorm
from tests.conftest import max_abs_diff


def _trained_with_batch(name: str, size: int, norm: str, steps: int = 2, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    """A model after a few SGD steps, so running stats and affine parameters are non-trivial."""
    model = create_model(name, num_classes=5, norm=norm, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    batch = lambda: torch.randn(6, 3, size, size, generator=g) * 2 + 0.5  # noqa: E731
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(batch()), torch.randint(0, 5, (6,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Calibrate the running statistics on one batch (momentum 1) and test on that batch: eval-mode
    # activations then stay normalized through 50 layers, so logits are O(1-10) and 1e-4 is a
    # fair fp32 tolerance; the statistics still differ from the (0, 1) defaults everywhere.
    x = batch()
    with torch.no_grad():
        for m in _norms(model):
            m.momentum = 1.0
        model(x)
    return model.eval(), x


def _trained(name: str, size: int, norm: str, **kwargs) -> nn.Module:
    return _trained_with_batch(name, size, norm, **kwargs)[0]


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, BatchNorm2d))]


CASES = [
    # name, input side, extra args; shortcut B so the downsample conv -> BN pairs exist too
    ("resnet20", 32, {"shortcut": "B"}),
    ("resnet18", 32, {"stem": "cifar"}),
    ("resnet50", 32, {"width": 0.25}),
    ("resnet26_bottleneck2_cifar", 32, {"width": 0.125}),
]


@pytest.mark.parametrize("norm", ["bn", "bn-torch"])
@pytest.mark.parametrize("name,size,kwargs", CASES, ids=[c[0] for c in CASES])
def test_folded_matches_unfolded(name, size, kwargs, norm):
    model, x = _trained_with_batch(name, size, norm, **kwargs)
    n_bn = len(_norms(model))
    assert n_bn > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.bn1.running_var.sub(1).abs().max() > 1e-3  # statistics really moved

    folded = fold_batchnorm(model)
    assert _norms(folded) == []  # every BN (stem, blocks, downsample) was folded
    assert len(foldable_pairs(model)) == n_bn
    assert any(".downsample.1" in n for _, n in foldable_pairs(model))
    assert not folded.training

    with torch.no_grad():
        ref = model(x)
        out = folded(x)
    scale = ref.abs().max().item()
    assert scale > 0.1  # a real signal, not all zeros
    # 1e-4 at logits of order 1, relative beyond: fp32 rounding through 50 layers scales with them.
    assert max_abs_diff(out, ref) < 1e-4 * max(1.0, scale)
    # In float64 the folded network is the same function up to rounding (1e-9 would catch a
    # wrong eps, a missed bias or a folded norm that is not fed by its conv).
    model64 = model.double()
    with torch.no_grad():
        assert max_abs_diff(fold_batchnorm(model64)(x.double()), model64(x.double())) < 1e-9
    # the original is untouched
    assert all(torch.equal(before[k].double(), v) for k, v in model.state_dict().items())


def test_optimize_for_inference_channels_last_matches():
    model = _trained("resnet20", 32, "bn-torch", shortcut="B")
    fast = optimize_for_inference(model, channels_last=True)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert max_abs_diff(out, ref) < 1e-4
    unfolded = optimize_for_inference(model, channels_last=False, fold=False)
    assert len(_norms(unfolded)) == len(_norms(model))


@pytest.mark.parametrize("norm,cls", [("gn", GroupNorm), ("bin", BatchInstanceNorm2d), ("gn-torch", nn.GroupNorm)])
def test_non_bn_norms_are_left_alone(norm, cls):
    model = _trained("resnet8", 16, norm)
    folded = fold_batchnorm(model)
    assert foldable_pairs(model) == []
    n = sum(isinstance(m, cls) for m in model.modules())
    assert n > 0 and sum(isinstance(m, cls) for m in folded.modules()) == n
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert max_abs_diff(folded(x), model(x)) < 1e-6


def test_bn_without_running_stats_is_not_folded():
    # native BN with track_running_stats=False normalizes with batch statistics even in eval
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    assert foldable_pairs(model) == [("2", "3")]
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.BatchNorm2d) and isinstance(folded[3], nn.Identity)
    assert folded[2].bias is not None
