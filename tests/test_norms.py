"""The from-scratch normalization layers against PyTorch's own, and get_norm_layer."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff
from torch import nn

from resnetlab import norms
from resnetlab.norms import (
    BatchInstanceNorm2d,
    BatchNorm2d,
    GroupNorm,
    InstanceNorm2d,
    LayerNorm2d,
    clamp_bin_gates,
    default_groups,
    get_norm_layer,
)

TOL = 1e-5
# (B, C, H, W): several batch sizes, odd spatial sizes, a 1x1 map with a batch > 1.
SHAPES = [(2, 4, 5, 5), (8, 6, 3, 7), (3, 12, 1, 1), (16, 8, 4, 4)]
# (kind, shape) pairs to compare with torch; instance norm of a 1x1 map raises in both (tested below)
CASES = [(k, s) for k in ("bn", "in", "ln", "gn") for s in SHAPES if not (k == "in" and s[2] * s[3] == 1)]


def _pair(kind: str, channels: int, groups: int = 1):
    """A (scratch, reference) pair with the same random affine parameters, in float64."""
    if kind == "bn":
        ours, ref = BatchNorm2d(channels), nn.BatchNorm2d(channels)
    elif kind == "in":
        ours, ref = InstanceNorm2d(channels), nn.InstanceNorm2d(channels, affine=True)
    elif kind == "ln":
        # LayerNorm over (C, H, W) with per-channel affine is GroupNorm with one group.
        ours, ref = LayerNorm2d(channels), nn.GroupNorm(1, channels)
    elif kind == "gn":
        ours, ref = GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
    else:  # pragma: no cover
        raise AssertionError(kind)
    ours, ref = ours.double(), ref.double()
    with torch.no_grad():
        w = torch.rand(channels, dtype=torch.float64) + 0.5
        b = torch.randn(channels, dtype=torch.float64)
        for m in (ours, ref):
            m.weight.copy_(w)
            m.bias.copy_(b)
    return ours, ref


def _forward_backward(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad.detach(), module.weight.grad.detach(), module.bias.grad.detach()


def _assert_same(ours: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    upstream = torch.randn_like(x)
    got = _forward_backward(ours, x, upstream)
    want = _forward_backward(ref, x, upstream)
    for label, a, b in zip(("output", "grad input", "grad weight", "grad bias"), got, want):
        assert a.shape == b.shape, label
        assert max_abs_diff(a, b) < TOL, f"{label} differs by {max_abs_diff(a, b):.2e}"


# --- match the torch counterparts ------------------------------------------------------


@pytest.mark.parametrize("kind,shape", CASES, ids=str)
def test_scratch_norm_matches_torch_train_mode(kind, shape):
    b, c, h, w = shape
    groups = 2 if c % 2 == 0 else 1
    ours, ref = _pair(kind, c, groups)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1.5  # off-centre, not unit scale
    _assert_same(ours.train(), ref.train(), x)


@pytest.mark.parametrize("kind,shape", CASES, ids=str)
def test_scratch_norm_matches_torch_eval_mode(kind, shape):
    b, c, h, w = shape
    ours, ref = _pair(kind, c, groups=2 if c % 2 == 0 else 1)
    # Train a few steps first so BN's running statistics are not the (0, 1) defaults.
    for _ in range(3):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 0.7
        ours.train()(x)
        ref.train()(x)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.7
    _assert_same(ours.eval(), ref.eval(), x)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_instance_norm_of_a_1x1_map_raises_like_torch(mode):
    """Every output would be the bias (the network trains at chance): torch raises, so does ours,
    naming the way out, instead of training a ResNet at chance on too-small images."""
    ours, ref = _pair("in", 12)
    x = torch.randn(3, 12, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        getattr(ref, mode)()(x)
    with pytest.raises(ValueError, match=r"1x1 feature map \(input \[3, 12, 1, 1\]\).*larger data.image_size"):
        getattr(ours, mode)()(x)
    assert getattr(ours, mode)()(torch.randn(3, 12, 1, 2, dtype=torch.float64)).shape == (3, 12, 1, 2)  # 2 values suffice


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 7, 2, 3), (4, 5, 1, 1)], ids=str)
def test_batchnorm_running_stats_match_torch(shape, momentum):
    ours = BatchNorm2d(shape[1], momentum=momentum).double()
    ref = nn.BatchNorm2d(shape[1], momentum=momentum).double()
    for step in range(4):
        x = torch.randn(shape, dtype=torch.float64) * (step + 1) + step
        ours(x)
        ref(x)
        # Running variance uses the unbiased estimate, the normalization the biased one.
        assert max_abs_diff(ours.running_mean, ref.running_mean) < TOL
        assert max_abs_diff(ours.running_var, ref.running_var) < TOL
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    # Eval mode must not touch the running statistics.
    before = ours.running_mean.clone()
    ours.eval()(torch.randn(shape, dtype=torch.float64) + 10)
    assert torch.equal(ours.running_mean, before)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1"])
def test_batchnorm_momentum_out_of_range_is_refused_when_built(bad):
    with pytest.raises(ValueError, match=r"momentum=.* is out of range \(allowed: a number in \[0, 1\], or None"):
        BatchNorm2d(4, momentum=bad)


@pytest.mark.parametrize("kind", ["gn", "ln", "bn", "in"])
def test_channels_last_input_gives_channels_last_output_like_torch(kind):
    """A channels_last model (the CPU trainer's layout) keeps its layout through every norm: the
    hand-written GroupNorm returned NCHW, a copy at each layer."""
    ours, ref = _pair(kind, 8, groups=4)
    x = (torch.randn(4, 8, 5, 5, dtype=torch.float64) * 2 + 1).contiguous(memory_format=torch.channels_last)
    if kind != "in":  # torch's own InstanceNorm2d returns NCHW; ours keeps the layout too
        assert ref(x).is_contiguous(memory_format=torch.channels_last)
    assert ours(x).is_contiguous(memory_format=torch.channels_last)
    _assert_same(ours, ref, x)
    x = x.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(ours, (x,))


def test_batchnorm_state_dict_names_match_torch():
    assert set(BatchNorm2d(4).state_dict()) == set(nn.BatchNorm2d(4).state_dict())
    BatchNorm2d(4).load_state_dict(nn.BatchNorm2d(4).state_dict(), strict=True)
    GroupNorm(2, 4).load_state_dict(nn.GroupNorm(2, 4).state_dict(), strict=True)


def test_batchnorm_loads_a_state_dict_without_num_batches_tracked_like_torch():
    # pre-0.4 checkpoints (and dicts rebuilt without their metadata) have no counter: torch's
    # layer keeps its own, so a strict load must not fail on the hand-written one either
    src = nn.BatchNorm2d(4)
    src.running_mean.fill_(0.5)
    old = {k: v for k, v in src.state_dict().items() if k != "num_batches_tracked"}  # no _metadata
    ours, ref = BatchNorm2d(4), nn.BatchNorm2d(4)
    ours.num_batches_tracked.fill_(7)
    assert str(ours.load_state_dict(old, strict=True)) == str(ref.load_state_dict(old, strict=True))
    assert torch.equal(ours.running_mean, torch.full((4,), 0.5))
    assert int(ours.num_batches_tracked) == 7
    # a current state dict (version 2 metadata) without the counter still fails, as torch's does
    current = src.state_dict()
    del current["num_batches_tracked"]
    for layer in (BatchNorm2d(4), nn.BatchNorm2d(4)):
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            layer.load_state_dict(current, strict=True)


def test_float32_layers_match_torch():
    """The default dtype is float32; the match holds there too (to float32 precision)."""
    x = torch.randn(4, 8, 6, 6) * 2 + 1
    for ours, ref in [
        (BatchNorm2d(8), nn.BatchNorm2d(8)),
        (InstanceNorm2d(8), nn.InstanceNorm2d(8, affine=True)),
        (LayerNorm2d(8), nn.GroupNorm(1, 8)),
        (GroupNorm(4, 8), nn.GroupNorm(4, 8)),
    ]:
        assert max_abs_diff(ours(x), ref(x)) < 1e-5, type(ours).__name__



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["bn", "in", "bin", "ln", "gn"])
def test_half_precision_inputs_get_fp32_statistics(name, dtype):
    # Under CUDA autocast a convolution hands the norm fp16 / bf16. The statistics were computed in
    # it: in fp16 a channel with std > 256 had variance inf and the layer output zeros, and bf16
    # was 2-6x coarser than torch's norms (fp32 statistics). Shift 30, std 300: both at once.
    torch.manual_seed(0)
    x32 = torch.randn(8, 8, 6, 6) * 300 + 30
    x = x32.to(dtype)
    ours = get_norm_layer(name, groups=4)(8)
    ref = get_norm_layer(name, groups=4)(8)
    ref.load_state_dict(ours.state_dict())
    y, want = ours(x), ref(x.float()).to(dtype).float()  # the same input, statistics in fp32, rounded once
    assert y.dtype == dtype  # back to the input's dtype, as torch's batch norm returns it
    tol = 4e-3 if dtype == torch.float16 else 3e-2  # one rounding of values of size ~2
    assert (y.float() - want).abs().max() < tol, (y.float() - want).abs().max()

def test_layernorm2d_equals_nn_layernorm_without_affine():
    """Statistics over (C, H, W) of each sample, as nn.LayerNorm([C, H, W]) computes them."""
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    ours = LayerNorm2d(5).double()
    ref = nn.LayerNorm([5, 4, 6], elementwise_affine=False).double()
    assert max_abs_diff(ours(x), ref(x)) < TOL


# --- Batch-Instance Norm ---------------------------------------------------------------


def _bin_with_rho(channels: int, rho: float) -> BatchInstanceNorm2d:
    m = BatchInstanceNorm2d(channels).double()
    with torch.no_grad():
        m.rho.fill_(rho)
        m.weight.copy_(torch.rand(channels, dtype=torch.float64) + 0.5)
        m.bias.copy_(torch.randn(channels, dtype=torch.float64))
    return m


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (2, 3, 8, 4)], ids=str)
def test_bin_equals_bn_at_rho_one(shape, mode):
    bin_ = _bin_with_rho(shape[1], 1.0)
    bn = nn.BatchNorm2d(shape[1]).double()
    with torch.no_grad():
        bn.weight.copy_(bin_.weight)
        bn.bias.copy_(bin_.bias)
    for _ in range(2):  # populate running stats
        x = torch.randn(shape, dtype=torch.float64) + 1
        bin_.train()(x)
        bn.train()(x)
    assert max_abs_diff(bin_.running_var, bn.running_var) < TOL
    x = torch.randn(shape, dtype=torch.float64) * 2 - 1
    bin_.train(mode == "train")
    bn.train(mode == "train")
    up = torch.randn(shape, dtype=torch.float64)
    got = _forward_backward(bin_, x, up)
    want = _forward_backward(bn, x, up)
    for a, b in zip(got, want):
        assert max_abs_diff(a, b) < TOL


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bin_equals_in_at_rho_zero(mode):
    shape = (4, 6, 5, 5)
    bin_ = _bin_with_rho(6, 0.0).train(mode == "train")
    inn = nn.InstanceNorm2d(6, affine=True).double()
    with torch.no_grad():
        inn.weight.copy_(bin_.weight)
        inn.bias.copy_(bin_.bias)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    up = torch.randn(shape, dtype=torch.float64)
    got = _forward_backward(bin_, x, up)
    want = _forward_backward(inn, x, up)
    for a, b in zip(got, want):
        assert max_abs_diff(a, b) < TOL


def test_bin_mixes_linearly_between_bn_and_in():
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64) + 0.3
    m = _bin_with_rho(3, 0.3)
    m0, m1 = _bin_with_rho(3, 0.0), _bin_with_rho(3, 1.0)
    for mm in (m0, m1):
        with torch.no_grad():
            mm.weight.copy_(m.weight)
            mm.bias.copy_(m.bias)
    expected = 0.3 * m1(x) + 0.7 * m0(x)
    assert max_abs_diff(m(x), expected) < TOL
    assert max_abs_diff(m0(x), m1(x)) > 0.01  # the two ends really differ


def test_bin_gate_stays_in_unit_interval_after_optimizer_step():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchInstanceNorm2d(4), nn.Conv2d(4, 4, 1), BatchInstanceNorm2d(4))
    with torch.no_grad():
        model[1].rho.fill_(0.95)
        model[3].rho.fill_(0.05)
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    x = torch.randn(4, 3, 8, 8)
    # A loss whose gradient pushes rho of layer 1 up and of layer 3 down, far out of [0, 1].
    loss = -model[1].rho.sum() + model[3].rho.sum() + model(x).sum() * 0
    loss.backward()
    opt.step()
    assert model[1].rho.max() > 1 and model[3].rho.min() < 0  # the step did push it out
    # Forward never uses a gate outside [0, 1]: rho = 50 behaves exactly like rho = 1.
    bin_ = model[1].eval()
    ref = _bin_with_rho(4, 1.0).float().eval()
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(ref, name).copy_(getattr(bin_, name))
    h = torch.randn(2, 4, 5, 5)
    assert max_abs_diff(bin_(h), ref(h)) < 1e-6
    clamp_bin_gates(model)
    assert model[1].rho.min() >= 0 and model[1].rho.max() <= 1
    assert model[3].rho.min() >= 0 and model[3].rho.max() <= 1
    assert torch.all(model[1].rho == 1) and torch.all(model[3].rho == 0)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0, 1.5])
def test_bin_gate_gets_a_gradient_also_at_the_bounds(rho):
    """rho starts at 1 (the paper's init): a zero gradient there would freeze BIN at BN."""
    m = _bin_with_rho(3, rho)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    up = torch.randn_like(x)
    (m(x) * up).sum().backward()
    # d out / d rho = weight * (x_bn - x_in), whatever rho is.
    x_bn = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / (x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + m.eps).sqrt()
    x_in = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.var(dim=(2, 3), keepdim=True, unbiased=False) + m.eps).sqrt()
    expected = (up * m.weight.view(1, -1, 1, 1) * (x_bn - x_in)).sum(dim=(0, 2, 3))
    assert m.rho.grad.abs().min() > 0
    assert max_abs_diff(m.rho.grad, expected) < TOL


def test_bin_default_gate_starts_at_one_and_learns():
    m = BatchInstanceNorm2d(3)
    assert torch.all(m.rho == 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.randn(4, 3, 5, 5) * 2 + torch.randn(4, 3, 1, 1)  # per-instance shifts: IN helps
    target = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True, unbiased=False)
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(m(x), target).backward()
        opt.step()
        clamp_bin_gates(m)
    assert m.rho.max() < 0.9 and m.rho.min() >= 0  # moved towards instance norm, stayed in range


# --- errors and get_norm_layer -----------------------------------------------------------


def test_batchnorm_one_value_per_channel_raises_clear_error():
    for cls in (BatchNorm2d, BatchInstanceNorm2d):
        m = cls(4).train()
        with pytest.raises(ValueError, match=r"batch size > 1") as err:
            m(torch.randn(1, 4, 1, 1))
        assert "(1, 4, 1, 1)" in str(err.value) and "\n" not in str(err.value)
        m.eval()(torch.randn(1, 4, 1, 1))  # eval mode uses running stats: fine


def test_get_norm_layer_unknown_name_names_closest():
    with pytest.raises(ValueError) as err:
        get_norm_layer("bnn")
    msg = str(err.value)
    assert "'bnn'" in msg and "did you mean" in msg and "'bn'" in msg
    assert "allowed" in msg and "gn-torch" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["gn", "gn-torch"])
def test_get_norm_layer_groups_must_divide_channels(name):
    with pytest.raises(ValueError, match=r"groups=5.*16"):
        get_norm_layer(name, groups=5)(16)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "4"])
def test_get_norm_layer_groups_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="groups"):
        get_norm_layer("gn", groups=bad)


@pytest.mark.parametrize("channels,expected", [(64, 32), (16, 16), (48, 24), (24, 24), (100, 25), (7, 7), (3, 3), (66, 22)])
def test_default_groups_picks_largest_divisor_up_to_32(channels, expected):
    assert default_groups(channels) == expected
    layer = get_norm_layer("gn")(channels)
    assert layer.num_groups == expected and channels % layer.num_groups == 0
    assert get_norm_layer("gn-torch")(channels).num_groups == expected


@pytest.mark.parametrize(
    "name,cls",
    [
        ("bn", BatchNorm2d),
        ("in", InstanceNorm2d),
        ("bin", BatchInstanceNorm2d),
        ("ln", LayerNorm2d),
        ("gn", GroupNorm),
        ("none", nn.Identity),
        ("bn-torch", nn.BatchNorm2d),
        ("gn-torch", nn.GroupNorm),
        ("in-torch", nn.InstanceNorm2d),
        ("ln-torch", nn.GroupNorm),
        ("BN", BatchNorm2d),
    ],
)
def test_get_norm_layer_resolves_every_name(name, cls):
    layer = get_norm_layer(name)(8)
    assert type(layer) is cls
    x = torch.randn(2, 8, 3, 3)
    assert layer(x).shape == x.shape
    if name == "ln-torch":
        assert layer.num_groups == 1
    if name == "in-torch":
        assert layer.affine and layer.weight.shape == (8,)
    assert norms.is_norm(layer) == (name != "none")


def test_norm_names_cover_the_issue():
    assert set(norms.NORM_NAMES) == {"bn", "in", "bin", "ln", "gn", "none", "bn-torch", "gn-torch", "in-torch", "ln-torch"}


def test_scratch_layers_do_not_call_the_functional_norms(monkeypatch):
    """The scratch layers are written with tensor ops, not F.*_norm."""
    import torch.nn.functional as F

    def forbidden(*a, **k):
        raise AssertionError("functional norm called")

    for fn in ("batch_norm", "group_norm", "layer_norm", "instance_norm"):
        monkeypatch.setattr(F, fn, forbidden)
    x = torch.randn(2, 8, 4, 4)
    for name in ("bn", "in", "bin", "ln", "gn"):
        layer = get_norm_layer(name)(8)
        layer.train()(x)
        layer.eval()(x)
    with pytest.raises(AssertionError):  # the guard itself works
        get_norm_layer("bn-torch")(8)(x)


def _sync_rank(rank: int, world: int, store: str, kind: str, q) -> None:
    """One process of the sync test: half the batch, statistics shared with the other process."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x = torch.randn(8, 6, 5, 5, dtype=torch.float64) * 3 + 1
        r = torch.randn(8, 6, 5, 5, dtype=torch.float64)
        layer = (BatchNorm2d(6) if kind == "bn" else BatchInstanceNorm2d(6, rho_init=0.6)).double()
        assert norms.enable_sync_batch_stats(layer) == 1
        xs = x[rank * 4 : rank * 4 + 4].clone().requires_grad_(True)
        out = layer(xs)
        (out * r[rank * 4 : rank * 4 + 4]).mean().backward()
        # numpy copies: tensors would travel as shared-memory handles that die with this process
        q.put((rank, *(t.detach().numpy().copy() for t in (out, xs.grad, layer.weight.grad, layer.running_mean, layer.running_var))))
        dist.barrier()  # both processes done with every collective before the group goes away
    finally:
        dist.destroy_process_group()
    # Results are delivered: leave without interpreter teardown, where torch's collective threads
    # once aborted a child under CI load ("terminate called without an active exception").
    q.close()
    q.join_thread()
    os._exit(0)


@pytest.mark.parametrize("kind", ["bn", "bin"])
def test_sync_batch_stats_over_two_processes_equal_one_big_batch(kind, tmp_path):
    """train.sync_bn for the hand-written layers: 2 gloo processes with 4 images each normalize,
    update running statistics and back-propagate exactly as one process with all 8."""
    import torch.multiprocessing as mp

    # the processes meet through a file, not a port: a free port picked here (bind, close) could be
    # taken by another process before rank 0 binds it
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_sync_rank, args=(k, 2, str(tmp_path / "store"), kind, q)) for k in range(2)]
    for p in procs:
        p.start()
    got = {item[0]: [torch.from_numpy(a) for a in item[1:]] for item in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    torch.manual_seed(0)
    x = (torch.randn(8, 6, 5, 5, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    r = torch.randn(8, 6, 5, 5, dtype=torch.float64)
    ref = (BatchNorm2d(6) if kind == "bn" else BatchInstanceNorm2d(6, rho_init=0.6)).double()
    out = ref(x)
    (out * r).mean().backward()
    for k in range(2):
        o, xg, wg, rm, rv = got[k]
        half = slice(k * 4, k * 4 + 4)
        assert max_abs_diff(o, out[half]) < 1e-10
        # each process's loss is the mean over its half: their sum is twice the big batch's loss
        assert max_abs_diff(xg / 2, x.grad[half]) < 1e-10
        assert max_abs_diff(rm, ref.running_mean) < 1e-12 and max_abs_diff(rv, ref.running_var) < 1e-12
    # the parameter gradient DDP would average over the two processes is the big batch's
    assert max_abs_diff((got[0][2] + got[1][2]) / 2, ref.weight.grad) < 1e-10


def _fp16_rank(store: str, q) -> None:
    """One process alone in a gloo group: synced statistics of an fp16 batch (what fp16 autocast
    feeds the norm on a GPU) with more values per channel than fp16 can count (65,504)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = (torch.randn(128, 2, 32, 32) * 3 + 1).half()  # 131,072 values per channel
        layer = BatchNorm2d(2)
        norms.enable_sync_batch_stats(layer)
        out = layer(x)
        ref = BatchNorm2d(2)(x.float())
        q.put((float((out.float() - ref).abs().max()), layer.running_var.tolist(), layer.running_mean.tolist()))
    finally:
        dist.destroy_process_group()
    q.close()
    q.join_thread()
    os._exit(0)


def test_sync_batch_stats_of_an_fp16_batch_count_in_fp32(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_fp16_rank, args=(str(tmp_path / "store"), q))
    p.start()
    diff, running_var, running_mean = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0
    # was: a count of inf, mean and variance 0, outputs x / sqrt(eps) and a NaN running variance
    assert diff < 2e-2  # fp16 input rounding only
    assert running_var == pytest.approx([0.9 * 1.0 + 0.1 * 9.0] * 2, rel=0.02)  # one step, momentum 0.1
    assert running_mean == pytest.approx([0.1] * 2, abs=0.02)


def test_enable_sync_replaces_torch_batchnorm_keeping_its_state():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(BatchNorm2d(4), nn.GroupNorm(2, 4)))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
        model[1].weight.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert norms.enable_sync_batch_stats(model) == 1 and type(model[1]) is nn.BatchNorm2d  # torch's kept
    assert norms.enable_sync_batch_stats(model, replace_torch=True) == 2
    assert type(model[1]) is BatchNorm2d and model[1].sync and model[3][0].sync
    # torch's momentum is kept as it was, 0 and None (a cumulative average) included
    for momentum in (0.0, None):
        m = nn.Sequential(nn.BatchNorm2d(4, momentum=momentum))
        norms.enable_sync_batch_stats(m, replace_torch=True)
        assert type(m[0]) is BatchNorm2d and m[0].momentum == momentum
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
