"""The model zoo: registry-wide forward/backward, norm cross-product, overfit, parameter counts,
torchvision weight compatibility, options and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import max_abs_diff
from torch import nn

import resnetlab
from resnetlab.models import Bottleneck, BasicBlock, ResNet, TwoConvBottleneck
from resnetlab.models.profile import count_params
from resnetlab.models.resnet import ZeroPadShortcut
from resnetlab.norms import NORM_NAMES, clamp_bin_gates

# Too big to run on 2 CPU cores in a unit test: built on the meta device, counted only.
HEAVY = {"resnet101", "resnet152", "resnet1202"}
ALL_MODELS = resnetlab.list_models()


def _grad_check(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Output shape, finiteness, and a non-zero gradient on every parameter."""
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(x.shape[0]) % num_classes).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no / non-finite gradient for {missing[:5]}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero[:5]}"


# --- the registry ------------------------------------------------------------------------


def test_registry_lists_every_architecture_of_the_issue():
    expected = {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110, 164, 1202, 18, 34, 50, 101, 152)}
    assert expected | {"resnet_cifar", "resnet38_bottleneck_cifar", "resnet26_bottleneck2_cifar"} <= set(ALL_MODELS)
    assert resnetlab.list_models("resnet1*") == ["resnet14", "resnet18", "resnet101", "resnet110", "resnet152", "resnet164", "resnet1202"]
    assert resnetlab.list_models("bottleneck") == ["resnet26_bottleneck2_cifar", "resnet38_bottleneck_cifar"]  # substring
    assert resnetlab.list_models("nothing*") == []


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_registered_model_forward_backward(name):
    if name in HEAVY:
        with torch.device("meta"):
            model = resnetlab.create_model(name, num_classes=10)
        assert model.fc.out_features == 10
        assert count_params(model) > 4e7 if name != "resnet1202" else count_params(model) > 1.9e7
        return
    model = resnetlab.create_model(name, num_classes=7)
    assert model.arch == name and model.default_input_size[0] == 3
    # 16x16 keeps the deep CIFAR models cheap; the ImageNet stem needs 32 to keep a 1x1 map.
    size = 32 if resnetlab.models.model_info(name).family == "imagenet" else 16
    _grad_check(model, torch.randn(2, 3, size, size), 7)


# The norm cross-product runs on small models only (basic CIFAR, basic ImageNet-family on the
# CIFAR stem, and the bottleneck model), at 16x16 so it stays fast.
SMALL = [
    ("resnet8", {}),
    ("resnet20", {"width": 0.5}),
    ("resnet18", {"stem": "cifar", "width": 0.25}),
    ("resnet38_bottleneck_cifar", {"width": 0.125}),
    ("resnet26_bottleneck2_cifar", {"width": 0.125}),
]


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("name,kwargs", SMALL, ids=[s[0] for s in SMALL])
def test_small_models_with_every_norm(name, kwargs, norm):
    model = resnetlab.create_model(name, num_classes=5, norm=norm, **kwargs)
    _grad_check(model, torch.randn(3, 3, 16, 16), 5)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16))  # batch of 1 in eval works with every norm
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def _overfit(model: nn.Module, steps: int, lr: float, size: int = 16) -> tuple[float, int]:
    """Adam on 32 random images with random labels; returns (train accuracy, steps used)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, size, size, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        out = model(x)
        if (out.argmax(1) == y).all():
            break
        opt.zero_grad()
        F.cross_entropy(out, y).backward()
        opt.step()
        clamp_bin_gates(model)
    with torch.no_grad():  # training accuracy on the whole training batch (batch statistics)
        acc = (model(x).argmax(1) == y).float().mean().item()
    return acc, step


OVERFIT_NORMS = ["bn", "bn-torch", "gn", "ln", "in", "bin", "none"]


@pytest.mark.parametrize("norm", OVERFIT_NORMS)
def test_resnet8_overfits_32_samples(norm):
    model = resnetlab.create_model("resnet8", num_classes=10, norm=norm)
    acc, steps = _overfit(model, steps=80, lr=1e-2, size=8)
    assert acc == 1.0, f"{norm}: train accuracy {acc} after {steps} steps"


@pytest.mark.slow  # the same trunk code as resnet8's overfit, with bottleneck blocks: ~40 s per block type
@pytest.mark.parametrize("block", ["bottleneck", "bottleneck2"])
@pytest.mark.parametrize("norm", OVERFIT_NORMS)
def test_bottleneck_trunk_overfits_32_samples(norm, block):
    # Three bottleneck blocks (out 32/64/128 channels) through the same trunk as every model;
    # the registered 12-block bottleneck model runs the same check under -m slow.
    model = ResNet(block, (1, 1, 1), (8, 16, 32), num_classes=10, stem="cifar", norm=norm)
    acc, steps = _overfit(model, steps=80, lr=1e-2, size=8)
    assert acc == 1.0, f"{norm}: train accuracy {acc} after {steps} steps"


@pytest.mark.slow
@pytest.mark.parametrize("norm", OVERFIT_NORMS)
def test_registered_bottleneck_model_overfits_32_samples(norm):
    model = resnetlab.create_model("resnet38_bottleneck_cifar", num_classes=10, norm=norm, width=0.0625)
    assert isinstance(model.layer1[0], Bottleneck)
    acc, steps = _overfit(model, steps=80, lr=1e-2)
    assert acc == 1.0, f"{norm}: train accuracy {acc} after {steps} steps"


def test_report_004_two_convolution_bottleneck_network():
    """resnet26_bottleneck2_cifar is report 004's network: 4/5/3 blocks of 1x1 reduce (strided) ->
    3x3 expand, stages 64->256, 128->512, 256->1024, projection shortcuts, 4x4 final map at 32x32."""
    model = resnetlab.create_model("resnet26_bottleneck2_cifar").eval()
    blocks = [m for m in model.modules() if isinstance(m, TwoConvBottleneck)]
    assert [len(model.get_stage(f"layer{i}")) for i in (1, 2, 3)] == [4, 5, 3] and len(blocks) == 12
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 2 per block + 3 projection shortcuts; 26 weight layers with the classifier
    assert len(convs) == 1 + 24 + 3 and sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    for stage, (planes, cout) in zip((model.layer1, model.layer2, model.layer3), ((64, 256), (128, 512), (256, 1024))):
        first = stage[0]
        assert (first.conv1.kernel_size, first.conv1.out_channels) == ((1, 1), planes)
        assert (first.conv2.kernel_size, first.conv2.out_channels) == ((3, 3), cout)
        assert first.downsample is not None and all(b.downsample is None for b in stage[1:])
    assert model.layer1[0].conv1.stride == (1, 1)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)  # stride on the 1x1
    # every block has its own weights (the report's code reused one module per stage: a bug)
    assert len({id(b.conv2.weight) for b in blocks}) == 12
    # parameters counted by hand: convs (no bias) + BN (2 per channel) + classifier
    def block(cin, p, proj):
        return cin * p + p * 4 * p * 9 + 2 * (p + 4 * p) + ((cin * 4 * p + 2 * 4 * p) if proj else 0)
    expected = 3 * 64 * 9 + 2 * 64
    for cin, p, n in ((64, 64, 4), (256, 128, 5), (512, 256, 3)):
        expected += block(cin, p, True) + (n - 1) * block(4 * p, p, False)
    expected += 1024 * 100 + 100
    assert count_params(model) == expected
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1024, 4, 4)


# --- parameter counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth,millions,digits",
    [(20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1), (1202, 19.4, 1)],
)
def test_cifar_param_counts_match_the_paper_with_option_a(depth, millions, digits):
    with torch.device("meta"):
        model = resnetlab.create_model(f"resnet{depth}")
    assert round(count_params(model) / 1e6, digits) == millions
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_resnet164_is_the_9n_plus_2_bottleneck_network_of_the_identity_mappings_paper():
    # He et al. 2016 ("Identity Mappings"), CIFAR: 1.7M parameters, 18 bottlenecks per stage
    # at 16/32/64 (outputs 64/128/256), projection shortcuts where the shape changes
    with torch.device("meta"):
        model = resnetlab.create_model("resnet164")
        same = resnetlab.create_model("resnet_cifar", depth=164, block="bottleneck")
        basic = resnetlab.create_model("resnet_cifar", depth=164)  # 164 is 6n+2 too: basic blocks, n=27
    assert count_params(model) == count_params(same) == 1_704_154 and round(count_params(model) / 1e6, 1) == 1.7
    assert [len(model.get_stage(s)) for s in ("layer1", "layer2", "layer3")] == [18, 18, 18]
    assert all(isinstance(b, Bottleneck) for b in model.modules() if isinstance(b, (BasicBlock, Bottleneck)))
    assert model.num_features == 256 and model.layer1[0].downsample is not None and not any(isinstance(m, ZeroPadShortcut) for m in model.modules())
    assert [len(basic.get_stage(s)) for s in ("layer1", "layer2", "layer3")] == [27, 27, 27] and basic.num_features == 64
    small = resnetlab.create_model("resnet_cifar", depth=11, block="bottleneck", shortcut="A", num_classes=3)
    assert sum(isinstance(m, ZeroPadShortcut) for m in small.modules()) == 3  # 16 -> 64, then 64 -> 128 and 128 -> 256 strided
    _grad_check(small, torch.randn(2, 3, 16, 16), 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 21, "block": "bottleneck"}, "depth must be 9n+2 with n >= 1 for block='bottleneck' (11, 20, 29, 56, 110, 164, 1001, ...), got 21"),
        ({"depth": 29}, "got 29; 29 is 9n+2: with block='bottleneck' (model.block) it is a bottleneck network"),
        ({"depth": 164, "block": "bottle"}, "block must be 'basic' (depth 6n+2) or 'bottleneck' (depth 9n+2), got 'bottle'"),
    ],
)
def test_resnet_cifar_depth_must_fit_its_block(kwargs, message):
    with pytest.raises(ValueError) as e:
        resnetlab.create_model("resnet_cifar", **kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("name,key", [("resnet18", "block"), ("resnet50", "layers"), ("resnet20", "block"), ("resnet38_bottleneck_cifar", "widths")])
def test_a_fixed_layout_option_is_refused_by_name(name, key):
    # Python's "_imagenet() got multiple values for argument 'block'" named no option
    with pytest.raises(TypeError) as e:
        resnetlab.create_model(name, **{key: "bottleneck"})
    assert str(e.value).startswith(f"create_model({name!r}): {key!r} is fixed by the model's layout, not an option")
    assert ("resnet_cifar takes depth and block" in str(e.value)) == name.startswith(("resnet20", "resnet38"))


@pytest.mark.parametrize(
    "name,count",
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160), ("resnet152", 60_192_808)],
)
def test_imagenet_param_counts_equal_torchvision(name, count):
    with torch.device("meta"):
        model = resnetlab.create_model(name)
        tv = getattr(torchvision.models, name)()
    assert count_params(model) == count == count_params(tv)


def test_shortcut_b_adds_exactly_the_projection_params():
    a = resnetlab.create_model("resnet20", shortcut="A")
    b = resnetlab.create_model("resnet20", shortcut="B")
    # Two projections: 16->32 and 32->64, each a 1x1 conv + a norm (weight and bias).
    expected = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_params(b) - count_params(a) == expected
    assert sum(isinstance(m, ZeroPadShortcut) for m in a.modules()) == 2
    assert sum(isinstance(m, ZeroPadShortcut) for m in b.modules()) == 0
    assert all(p.numel() == 0 for m in a.modules() if isinstance(m, ZeroPadShortcut) for p in m.parameters())


def test_zero_pad_shortcut_is_strided_identity_with_zero_channels():
    sc = ZeroPadShortcut(4, 6, stride=2)
    x = torch.randn(2, 4, 6, 6)
    y = sc(x)
    assert y.shape == (2, 6, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2])
    assert torch.all(y[:, 4:] == 0)
    with pytest.raises(ValueError, match="shortcut 'A'"):
        ZeroPadShortcut(8, 4, 1)


# --- torchvision weight compatibility ---------------------------------------------------


@pytest.mark.parametrize("norm", ["bn-torch", "bn"])
@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet34", marks=pytest.mark.slow), "resnet50"])
def test_torchvision_state_dict_loads_and_outputs_match(name, norm):
    # float64 for the scratch BN: in train mode its float32 rounding differs from torch's kernel
    # by ~1e-4 after 50 layers of random weights; in float64 the two agree to ~1e-12.
    dtype = torch.float32 if norm == "bn-torch" else torch.float64
    tv = getattr(torchvision.models, name)().to(dtype)
    model = resnetlab.create_model(name, norm=norm).to(dtype)
    assert list(model.state_dict()) == list(tv.state_dict())
    model.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        tv.eval(), model.eval()
        assert max_abs_diff(model(x), tv(x)) < 1e-5
        tv.train(), model.train()
        assert max_abs_diff(model(x), tv(x)) < 1e-5
    # Train mode also moved the running statistics the same way.
    sd, tsd = model.state_dict(), tv.state_dict()
    assert max_abs_diff(sd["layer4.1.bn2.running_var"], tsd["layer4.1.bn2.running_var"]) < 1e-5
    assert int(sd["bn1.num_batches_tracked"]) == int(tsd["bn1.num_batches_tracked"]) == 1


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize("size,expected", [(64, {"imagenet": 2, "cifar": 8}), (96, {"imagenet": 3, "cifar": 12})])
def test_stem_imagenet_vs_cifar_spatial_size(size, expected):
    for stem, side in expected.items():
        model = resnetlab.create_model("resnet18", stem=stem, width=0.125).eval()
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, size, size))
        assert feats.shape == (1, 64, side, side), stem
    bottleneck = resnetlab.create_model("resnet38_bottleneck_cifar", width=0.125).eval()  # cifar-pool stem
    with torch.no_grad():
        assert bottleneck.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 128, 4, 4)


def test_forward_is_forward_head_of_forward_features():
    model = resnetlab.create_model("resnet20", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), model(x))
        pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features) == (2, 64)
    assert torch.allclose(pooled, feats.mean(dim=(2, 3)))


@pytest.mark.parametrize("size", [32, 57, 100, 256])
@pytest.mark.parametrize("name,kwargs", [("resnet18", {"width": 0.125}), ("resnet8", {})], ids=["resnet18", "resnet8"])
def test_any_input_size_and_grayscale(name, kwargs, size):
    model = resnetlab.create_model(name, num_classes=3, in_channels=1, **kwargs).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_resnet_cifar_depth_argument_n2_at_256():
    """Report 001 (birds) uses n=2, i.e. depth 14, at 256x256 input."""
    model = resnetlab.create_model("resnet_cifar", depth=14, num_classes=200).eval()
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [2, 2, 2]
    assert count_params(model) == count_params(resnetlab.create_model("resnet14", num_classes=200))
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 256, 256))
    assert feats.shape == (1, 64, 64, 64)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)
    deep = resnetlab.create_model("resnet_cifar", depth=26)
    assert [len(getattr(deep, f"layer{i}")) for i in (1, 2, 3)] == [4, 4, 4]


def test_mlp_head_with_dropout_has_the_right_layers():
    model = resnetlab.create_model("resnet18", num_classes=5, head=[256, 128], head_dropout=0.3, width=0.25)
    linears = [m for m in model.fc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 256), (256, 128), (128, 5)]
    drops = [m for m in model.fc.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.3 for d in drops)
    assert isinstance(model.drop, nn.Identity)  # dropout before the head stays off
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    linear = resnetlab.create_model("resnet18", num_classes=5, head="linear", width=0.25)
    assert isinstance(linear.fc, nn.Linear) and linear.fc.out_features == 5


def test_dropout_before_classifier():
    model = resnetlab.create_model("resnet8", num_classes=4, dropout=0.5)
    assert isinstance(model.drop, nn.Dropout) and model.drop.p == 0.5
    feats = torch.randn(4, model.num_features, 2, 2)
    model.train()
    a, b = model.forward_head(feats), model.forward_head(feats)
    assert max_abs_diff(a, b) > 1e-4  # different masks in training
    model.eval()
    assert torch.equal(model.forward_head(feats), model.forward_head(feats))
    assert not any(isinstance(m, nn.Dropout) for m in resnetlab.create_model("resnet8").modules())


@pytest.mark.parametrize("norm", ["bn-torch", "bn", "gn", "bin", "ln"])
@pytest.mark.parametrize(
    "name,kwargs",
    [("resnet20", {}), ("resnet18", {"width": 0.25}), ("resnet50", {"width": 0.125}), ("resnet26_bottleneck2_cifar", {"width": 0.125})],
)
def test_zero_init_residual_makes_blocks_identities(name, kwargs, norm):
    model = resnetlab.create_model(name, norm=norm, zero_init_residual=True, **kwargs)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, TwoConvBottleneck))]
    assert blocks
    residuals = []
    for blk in blocks:
        assert torch.all(blk.last_norm().weight == 0)
        blk.last_norm().register_forward_hook(lambda m, i, o: residuals.append(o.detach()))
    model(torch.randn(2, 3, 32, 32))
    assert len(residuals) == len(blocks)
    assert all(torch.all(r == 0) for r in residuals)  # every residual branch outputs exactly 0
    # Without the option, the last norms start at one.
    plain = resnetlab.create_model(name, norm=norm, **kwargs)
    assert all(torch.all(m.last_norm().weight == 1) for m in plain.modules() if isinstance(m, (BasicBlock, Bottleneck, TwoConvBottleneck)))


def test_zero_init_residual_zeroes_the_last_norm_of_each_branch_by_name():
    """torchvision's (Goyal et al.) scheme: the norm after the last conv of the branch, not another."""
    basic = resnetlab.create_model("resnet18", width=0.25, zero_init_residual=True).layer1[0]
    assert torch.all(basic.bn2.weight == 0) and torch.all(basic.bn1.weight == 1)
    bottleneck = resnetlab.create_model("resnet50", width=0.125, zero_init_residual=True).layer1[0]
    assert torch.all(bottleneck.bn3.weight == 0)
    assert torch.all(bottleneck.bn2.weight == 1) and torch.all(bottleneck.bn1.weight == 1)


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("resnet50", {"width": 0.125}), ("resnet26_bottleneck2_cifar", {"width": 0.125})])
def test_zero_init_residual_without_a_norm_zeroes_the_last_convolution(name, kwargs):
    # norm "none" has no weight to zero: the option used to be accepted and do nothing
    model = resnetlab.create_model(name, norm="none", zero_init_residual=True, **kwargs)
    plain = resnetlab.create_model(name, norm="none", **kwargs)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks
    for blk in blocks:
        assert torch.all(blk.last_conv().weight == 0)
        assert blk.last_conv() is (blk.conv3 if isinstance(blk, Bottleneck) else blk.conv2)
        assert torch.any(blk.conv1.weight != 0)
    assert all(torch.any(m.last_conv().weight != 0) for m in plain.modules() if isinstance(m, (BasicBlock, Bottleneck)))
    x = torch.randn(2, 3, 32, 32)
    for blk in blocks:  # each block passes its input through its shortcut, as with a zeroed norm
        blk.register_forward_hook(lambda m, i, o: torch.testing.assert_close(o, m.act(i[0] if m.downsample is None else m.downsample(i[0]))))
    model(x)


def test_kaiming_init_of_convolutions():
    model = resnetlab.create_model("resnet18")
    w = model.layer3[0].conv2.weight  # 256 out channels, 3x3: fan_out = 256 * 9
    assert abs(w.std().item() - (2 / (256 * 9)) ** 0.5) < 0.002


def test_stages_are_named_and_hookable():
    model = resnetlab.create_model("resnet20")
    assert list(model.stages()) == ["stem", "layer1", "layer2", "layer3"]
    big = resnetlab.create_model("resnet18", width=0.25)
    assert list(big.stages()) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert big.get_stage("layer4") is big.layer4
    seen = {}

    def hook(name):
        def record(module, inputs, output):  # returns None: the output is left as it is
            seen[name] = tuple(output.shape)

        return record

    model.get_stage("layer3").register_forward_hook(hook("layer3"))
    model.get_stage("stem").register_forward_hook(hook("stem"))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"layer3": (2, 64, 8, 8), "stem": (2, 16, 32, 32)}
    with pytest.raises(ValueError, match=r"'layer9'.*did you mean.*layer"):
        model.get_stage("layer9")


def test_reset_classifier():
    model = resnetlab.create_model("resnet20", num_classes=10)
    body = model.layer1[0].conv1.weight.clone()
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert torch.equal(model.layer1[0].conv1.weight, body)
    model.reset_classifier(6, head=[32])
    assert [m.out_features for m in model.fc.modules() if isinstance(m, nn.Linear)] == [32, 6]
    with pytest.raises(ValueError, match="num_classes.*0"):
        model.reset_classifier(0)
    # arch_args follows, so a checkpoint saved with them rebuilds the model (it said num_classes 10:
    # "shape mismatch at fc.weight" on load)
    assert model.arch_args == {"num_classes": 6, "head": [32]}
    model.reset_classifier(4)
    assert model.arch_args == {"num_classes": 4}
    rebuilt = resnetlab.create_model("resnet20", **model.arch_args)
    rebuilt.load_state_dict(model.state_dict())


def test_activation_option():
    model = resnetlab.create_model("resnet8", act="gelu")
    assert any(isinstance(m, nn.GELU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    with pytest.raises(ValueError, match=r"unknown activation 'rleu'.*'relu'"):
        resnetlab.create_model("resnet8", act="rleu")


def test_width_multiplier_scales_channels():
    model = resnetlab.create_model("resnet20", width=2)
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [32, 64, 128]
    assert model.num_features == 128


def test_trunk_directly():
    model = ResNet("bottleneck", (1, 1), (8, 16), num_classes=2, stem="cifar")
    assert model.num_features == 64 and model(torch.randn(2, 3, 8, 8)).shape == (2, 2)


def test_create_model_records_arch_args():
    model = resnetlab.create_model("resnet20", num_classes=7, norm="gn")
    assert model.arch == "resnet20" and model.arch_args == {"num_classes": 7, "norm": "gn"}
    assert model.default_input_size == (3, 32, 32)


# --- bad input ------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_model_names_closest_matches():
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet21")
    msg = _one_line(err)
    assert "unknown model 'resnet21'" in msg and "did you mean" in msg and "'resnet20'" in msg


def test_unknown_norm_through_create_model():
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet8", norm="batchnorm")
    assert "unknown norm 'batchnorm'" in _one_line(err)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])  # True was a torch TypeError
def test_num_classes_must_be_positive_int(bad):
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet8", num_classes=bad)
    msg = _one_line(err)
    assert "num_classes" in msg and repr(bad) in msg and ">= 1" in msg


@pytest.mark.parametrize("depth", [21, 2, 7, "20"])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet_cifar", depth=depth)
    msg = _one_line(err)
    assert "depth" in msg and repr(depth) in msg and "6n+2" in msg


def test_gn_groups_must_divide_channels():
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet20", norm="gn", groups=5)
    msg = _one_line(err)
    assert "groups=5" in msg and "16" in msg and "divisors" in msg
    # A divisor of every stage width (16/32/64) works.
    assert resnetlab.create_model("resnet20", norm="gn", groups=8).bn1.num_groups == 8


def test_wrong_input_channels_at_forward_time():
    model = resnetlab.create_model("resnet8", in_channels=1)
    with pytest.raises(ValueError) as err:
        model(torch.randn(2, 3, 32, 32))
    msg = _one_line(err)
    assert "in_channels=1" in msg and "(2, 3, 32, 32)" in msg
    with pytest.raises(ValueError, match="in_channels=3"):
        resnetlab.create_model("resnet8")(torch.randn(3, 32, 32))  # no batch dimension


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"stem": "tiny"}, "unknown stem 'tiny'"),
        ({"shortcut": "C"}, "shortcut must be 'A'"),
        ({"dropout": 1.5}, "dropout must be in [0, 1), got 1.5"),
        ({"width": 0}, "width must be > 0, got 0"),
        ({"head": "mlp"}, "head must be 'linear'"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1, got 0"),
        # the config refused these; the Python API built a zero-width layer, or ignored the dropout
        ({"head": [0]}, "every head hidden size must be an integer >= 1, got 0"),
        ({"head_dropout": 0.5}, "head_dropout applies between the layers of an MLP head"),
        # a string or a bool was a TypeError or a ValueError naming nothing, or taken as true
        ({"dropout": "0.5"}, "dropout must be in [0, 1), got '0.5'"),
        ({"width": "x"}, "width must be > 0, got 'x'"),
        ({"head": 256}, "head must be 'linear', None or a list of hidden sizes (e.g. [256]), got 256"),
        ({"zero_init_residual": "no"}, "zero_init_residual must be True or False, got 'no'"),
        # groups was silently ignored by every norm but GroupNorm (the config refused it)
        ({"groups": 5}, "groups applies only to norm 'gn' or 'gn-torch' (GroupNorm), got norm='bn-torch'"),
        ({"groups": 5, "norm": "ln-torch"}, "groups applies only to norm 'gn' or 'gn-torch'"),
        ({"stem_width": 0}, "stem_width must be an integer >= 1, got 0"),
        ({"depth": 32}, "resnet8 has a fixed depth; for another use the model resnet_cifar with depth=32 (--model resnet_cifar --depth 32, or create_model('resnet_cifar', depth=32))"),
    ],
)
def test_other_bad_options(kwargs, words):
    with pytest.raises(ValueError) as err:
        resnetlab.create_model("resnet8", **kwargs)
    assert words in _one_line(err)


def test_count_params_counts_frozen_parameters_unless_asked_for_trainable_only():
    model = resnetlab.create_model("resnet8", num_classes=10)
    total = sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    assert count_params(model) == total
    assert count_params(model, trainable_only=True) == model.fc.weight.numel() + model.fc.bias.numel()


@pytest.mark.parametrize(
    "layers,widths,words",
    [
        ((2, 2, 2, 2), (16, 32, 64), "got 4 and 3"),  # zip() built 3 stages and said nothing
        ((2, 2), (16, 32, 64), "got 2 and 3"),
        ((), (), "got 0 and 0"),
        ((2, 0, 2), (16, 32, 64), "block count (layers) must be an integer >= 1, got 0"),  # failed at forward time
        ((2, 2), (16, 0), "stage width (widths) must be an integer >= 1, got 0"),
    ],
)
def test_trunk_refuses_layers_and_widths_that_do_not_make_stages(layers, widths, words):
    with pytest.raises(ValueError) as err:
        ResNet("basic", layers, widths, num_classes=3, stem="cifar")
    assert words in _one_line(err)


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "resnet26_bottleneck2_cifar"])
def test_block_dropout_acts_between_the_convolutions_in_training_only(name):
    # report 003 varied dropout "after different layers"; only the classifier had it
    torch.manual_seed(0)
    m = resnetlab.create_model(name, num_classes=10, block_dropout=0.5)
    plain = resnetlab.create_model(name, num_classes=10)
    block = m.layer1[0]
    nxt = block.conv3 if hasattr(block, "conv3") else block.conv2  # the conv after the dropout
    seen = {}
    block.drop.register_forward_hook(lambda mod, i, o: seen.__setitem__("drop", o))
    nxt.register_forward_pre_hook(lambda mod, i: seen.__setitem__("conv", i[0]))
    x = torch.randn(4, 3, 32, 32)
    m.train()
    m(x)
    assert seen["conv"] is seen["drop"]  # the next convolution reads the dropout's output
    assert sum(isinstance(k, torch.nn.Dropout) for k in m.modules()) == sum(len(getattr(m, s)) for s in m.stage_names)
    plain.load_state_dict(m.state_dict())  # dropout has no state: the same keys, the same weights and statistics
    m.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(m(x), plain(x))  # off in evaluation
    assert not any(isinstance(k, torch.nn.Dropout) for k in plain.modules())  # at 0 no module at all


def test_block_dropout_bad_values_and_config_key():
    from resnetlab.config import load_config
    from resnetlab.errors import ConfigError

    with pytest.raises(ValueError, match=r"block_dropout must be in \[0, 1\), got 1.0"):
        resnetlab.create_model("resnet20", block_dropout=1.0)
    with pytest.raises(ConfigError, match="model.block_dropout"):
        load_config(None, ["model.block_dropout=1"])
    cfg = load_config(None, ["model.block_dropout=0.2"])
    assert cfg.model.arch_args(num_classes=10, in_channels=1)["block_dropout"] == 0.2
    assert "block_dropout" not in load_config(None, []).model.arch_args(num_classes=10, in_channels=1)


def test_a_misspelt_model_option_names_the_closest_and_the_allowed_ones():
    # Python's own "got an unexpected keyword argument 'nrom'" named neither
    with pytest.raises(TypeError, match=r"^create_model\('resnet20'\): unknown option 'nrom'; did you mean 'norm'\? \(allowed: act, block_dropout, "):
        resnetlab.create_model("resnet20", nrom="gn")
    with pytest.raises(TypeError, match=r"allowed: .*\bdepth\b"):  # resnet_cifar's own option is listed for it
        resnetlab.create_model("resnet_cifar", widht=2)
    with pytest.raises(TypeError) as info:  # ... and not for a model of fixed depth
        resnetlab.create_model("resnet18", depht=18)
    assert "depth" not in str(info.value).split("allowed:")[1]
