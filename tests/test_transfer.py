"""Transfer learning: loading torchvision / resnetlab weights, freezing, parameter groups."""

from __future__ import annotations

import socket
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from resnetlab import checkpoint as ck
from resnetlab.errors import CheckpointError, ResnetlabError
from resnetlab.models import create_model
from resnetlab.transfer import (
    freeze,
    freeze_all_but_head,
    load_pretrained,
    param_groups,
    pretrained_preprocessing,
    set_frozen_norms_eval,
    unfreeze,
)


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory):
    """A torchvision-style state dict (random init, no download), with non-trivial BN buffers."""
    torch.manual_seed(7)
    tv = torchvision.models.resnet18()
    with torch.no_grad():  # make running stats differ from the defaults, so loading them is visible
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("tv") / "resnet18-random.pth"
    torch.save(tv.state_dict(), path)
    return path, {k: v.clone() for k, v in tv.state_dict().items()}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is as fast, and avoids OpenMP spin-waits when the
    two cores are shared with other jobs (2 threads measured 27x slower per step under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta(model, arch, arch_args, classes):
    return {"arch": arch, "arch_args": arch_args, "classes": classes, "mean": [0.5], "std": [0.25],
            "input_size": [1, 28, 28], "config": {"data": {"name": "fashion-mnist"}}}


# -- loading ---------------------------------------------------------------------------------


def test_torchvision_state_dict_loads_body_and_reinitializes_head(tv_resnet18_file):
    path, tv_state = tv_resnet18_file
    model = create_model("resnet18", num_classes=5)
    fc_before = model.fc.weight.detach().clone()
    report = load_pretrained(model, str(path))
    own = model.state_dict()
    body = [k for k in own if not k.startswith("fc.")]
    assert sorted(report["loaded"]) == sorted(body)
    assert report["reinitialized"] == ["fc.bias", "fc.weight"]
    assert report["skipped"] == ["fc.bias", "fc.weight"]  # the source's 1000-class head
    for k in body:
        assert torch.equal(own[k], tv_state[k]), k
    assert own["fc.weight"].shape == (5, 512)
    # re-initialized: a fresh draw, not the pre-load values and not zeros
    assert not torch.equal(model.fc.weight, fc_before)
    assert model.fc.weight.std() > 0


def test_same_head_shape_loads_head_too(tv_resnet18_file):
    path, tv_state = tv_resnet18_file
    model = create_model("resnet18")  # 1000 classes like the source
    report = load_pretrained(model, str(path))
    assert report["reinitialized"] == [] and report["skipped"] == []
    assert torch.equal(model.fc.weight, tv_state["fc.weight"])
    # forcing a new head
    report = load_pretrained(model, str(path), reset_head=True)
    assert report["reinitialized"] == ["fc.bias", "fc.weight"]
    assert not torch.equal(model.fc.weight, tv_state["fc.weight"])


def test_safetensors_and_wrapped_state_dicts(tv_resnet18_file, tmp_path):
    path, tv_state = tv_resnet18_file
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tv_state.items()}, str(st))
    wrapped = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv_state.items()}}, wrapped)
    for source in (st, wrapped):
        model = create_model("resnet18", num_classes=3)
        load_pretrained(model, str(source))
        assert torch.equal(model.layer4[1].conv2.weight, tv_state["layer4.1.conv2.weight"])


def test_grayscale_model_gets_summed_rgb_stem(tv_resnet18_file):
    path, tv_state = tv_resnet18_file
    model = create_model("resnet18", num_classes=10, in_channels=1)
    report = load_pretrained(model, str(path))
    assert report["adapted"] == ["conv1.weight"]
    assert torch.allclose(model.conv1.weight, tv_state["conv1.weight"].sum(1, keepdim=True))


def test_grayscale_source_into_a_colour_model_gives_the_same_response_on_a_gray_image(tmp_path):
    # it was refused as "another architecture?" (shape mismatch at conv1.weight)
    src = create_model("resnet20", num_classes=10, in_channels=1).eval()
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "best", src, _meta(src, "resnet20", {"num_classes": 10, "in_channels": 1},
                                                                   [str(i) for i in range(10)]))
    dst = create_model("resnet20", num_classes=10, in_channels=3).eval()
    report = load_pretrained(dst, str(run), classes=[str(i) for i in range(10)])
    assert report["adapted"] == ["conv1.weight"] and report["reinitialized"] == []
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(dst(x.expand(2, 3, 16, 16)), src(x), atol=1e-5, rtol=1e-5)
    four = create_model("resnet20", num_classes=10, in_channels=4)
    load_pretrained(four, str(run), classes=[str(i) for i in range(10)])
    torch.testing.assert_close(four.conv1.weight, src.conv1.weight.repeat(1, 4, 1, 1) / 4)


def test_resnetlab_checkpoint_loads_with_new_head(tmp_path):
    src = create_model("resnet20", num_classes=10, in_channels=1)
    run = tmp_path / "run"
    ck.save_checkpoint(run / "checkpoints" / "best", src, _meta(src, "resnet20", {"num_classes": 10, "in_channels": 1},
                                                                   [f"c{i}" for i in range(10)]))
    # same class count, different class names: the head must still be re-initialized
    dst = create_model("resnet20", num_classes=10, in_channels=1)
    report = load_pretrained(dst, str(run), classes=[str(i) for i in range(10)])
    assert report["reinitialized"] == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.layer3[2].conv2.weight, src.layer3[2].conv2.weight)
    assert not torch.equal(dst.fc.weight, src.fc.weight)
    # same classes: the head loads as well
    dst2 = create_model("resnet20", num_classes=10, in_channels=1)
    report = load_pretrained(dst2, str(run), classes=[f"c{i}" for i in range(10)])
    assert report["reinitialized"] == [] and torch.equal(dst2.fc.weight, src.fc.weight)
    # the checkpoint's preprocessing is offered to the trainer
    pre = pretrained_preprocessing(str(run))
    assert pre["mean"] == [0.5] and pre["std"] == [0.25] and pre["input_size"] == [1, 28, 28]


def test_foreign_architecture_names_the_key(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight"):
        load_pretrained(create_model("resnet18", num_classes=5), str(path))
    # a CIFAR resnet20 checkpoint into a resnet32: missing blocks are named
    path2 = tmp_path / "r20.pth"
    torch.save(create_model("resnet20").state_dict(), path2)
    with pytest.raises(CheckpointError, match=r"missing keys \['layer1\.3\."):
        load_pretrained(create_model("resnet32"), str(path2))


@pytest.mark.parametrize("source, target, named", [
    ({"norm": "ln"}, {"norm": "gn"}, "norm=gn here, ln in the source"),
    ({"norm": "gn", "groups": 4}, {"norm": "gn-torch"}, r"groups=\[16, 32\] here, \[4\] in the source"),
    ({"act": "gelu"}, {}, "act=relu here, gelu in the source"),
    ({"stem": "cifar-pool"}, {}, "stem=cifar here, cifar-pool in the source"),
    # the keys differ too (running statistics): it said "another architecture?" with the buffers' names
    ({"norm": "bn-torch"}, {"norm": "gn"}, "norm=gn here, bn in the source"),
], ids=["norm", "groups", "act", "stem", "bn-gn"])
def test_resnetlab_source_with_other_unseen_options_is_refused(tmp_path, source, target, named):
    # these sources have the same parameter names and shapes as the model: they loaded silently
    args = {"num_classes": 10, "in_channels": 1}
    src = create_model("resnet20", **args, **source)
    ck.save_checkpoint(tmp_path / "run" / "checkpoints" / "best", src, _meta(src, "resnet20", {**args, **source}, None))
    dst = create_model("resnet20", **args, **target)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"trained in another architecture \\({named}\\)"):
        load_pretrained(dst, str(tmp_path / "run"))
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing was loaded
    # the same options (bn and bn-torch, ln and ln-torch count as the same norm) load
    same = {**source, "norm": source.get("norm", "bn-torch").removesuffix("-torch")}
    assert load_pretrained(create_model("resnet20", **args, **same), str(tmp_path / "run"))["loaded"]


def test_bad_specs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(create_model("resnet20"), str(tmp_path / "nope"))
    with pytest.raises(ResnetlabError, match="IMAGENET1K_V1"):
        load_pretrained(create_model("resnet18"), "torchvision:IMAGENET1K_V9")
    with pytest.raises(ResnetlabError, match="only for resnet18"):
        load_pretrained(create_model("resnet20"), "torchvision:IMAGENET1K_V1")
    bad = tmp_path / "code.pt"
    torch.save({"x": object()}, bad)  # needs pickle: weights_only must refuse it
    with pytest.raises(CheckpointError, match="safely"):
        load_pretrained(create_model("resnet20"), str(bad))


def test_torchvision_offline_message_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError(socket.timeout("timed out"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ResnetlabError) as err:
        load_pretrained(create_model("resnet18", num_classes=5), "torchvision:IMAGENET1K_V1")
    msg = str(err.value)
    assert "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_torchvision_cached_file_loads_without_network(tv_resnet18_file, tmp_path, monkeypatch):
    """A file already in the hub cache (here: a random-init stand-in) is used, no download tried."""
    path, tv_state = tv_resnet18_file
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    model = create_model("resnet18", num_classes=5)
    report = load_pretrained(model, "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(model.conv1.weight, tv_state["conv1.weight"]) and len(report["reinitialized"]) == 2
    # the data_root mirror is used as well
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    model = create_model("resnet18", num_classes=5)
    load_pretrained(model, "torchvision:IMAGENET1K_V1", data_root=mirror)
    assert torch.equal(model.layer4[1].conv2.weight, tv_state["layer4.1.conv2.weight"])
    # torchvision's ResNets use ReLU: same keys, but another activation would compute something else
    with pytest.raises(CheckpointError, match=r"another architecture \(act=gelu here, relu in the source\)"):
        load_pretrained(create_model("resnet18", num_classes=5, act="gelu"), "torchvision:IMAGENET1K_V1", data_root=mirror)


def test_pretrained_preprocessing_from_torchvision_metadata():
    pre = pretrained_preprocessing("torchvision:IMAGENET1K_V2", "resnet50")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert pre["input_size"] == [3, 224, 224] and pre["resize_size"] == 232
    assert len(pre["categories"]) == 1000
    assert pretrained_preprocessing(None) is None


# -- freezing --------------------------------------------------------------------------------


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_named_stage():
    model = create_model("resnet18", num_classes=5)
    frozen = freeze(model, "layer2")
    assert all(n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2") for n in frozen)
    assert {n.split(".")[0] for n in _trainable(model)} == {"layer3", "layer4", "fc"}
    unfreeze(model)
    frozen = freeze(model, "stem")
    assert frozen == ["conv1.weight", "bn1.weight", "bn1.bias"]


def test_freeze_count_matches_torchvision_children_convention():
    model = create_model("resnet18", num_classes=5)
    freeze(model, 7)  # conv1, bn1, act, maxpool, layer1, layer2, layer3
    tv = torchvision.models.resnet18()
    for child in list(tv.children())[:7]:
        for p in child.parameters():
            p.requires_grad_(False)
    tv_trainable = {n for n, p in tv.named_parameters() if p.requires_grad}
    assert _trainable(model) == tv_trainable
    # strings of digits come from the CLI
    m2 = create_model("resnet18", num_classes=5)
    freeze(m2, "7")
    assert _trainable(m2) == tv_trainable



def test_freeze_log_names_a_cifar_stems_maxpool_as_an_identity(caplog):
    # ResNet-20 has no max-pool: the log said "froze ... in conv1, bn1, act, maxpool, ..." all the same
    import logging

    with caplog.at_level(logging.INFO, logger="resnetlab"):
        freeze(create_model("resnet20"), 5)
        freeze(create_model("resnet18"), 5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("froze")]
    assert lines[0].endswith("in conv1, bn1, act, maxpool (an identity here), layer1")
    assert lines[1].endswith("in conv1, bn1, act, maxpool, layer1")


def test_freeze_errors():
    model = create_model("resnet20")
    with pytest.raises(ValueError, match=r"unknown layer 'layer4'.*layer1, layer2, layer3, stem"):
        freeze(model, "layer4")
    with pytest.raises(ValueError, match=r"0\.\.9"):
        freeze(model, 11)


def test_freeze_all_but_head_and_unfreeze():
    model = create_model("resnet20", head=[32, 16])
    freeze_all_but_head(model)
    assert _trainable(model) == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias", "fc.4.weight", "fc.4.bias"}
    n_params = len(list(model.parameters()))
    assert len(unfreeze(model)) == n_params - 6
    assert len(_trainable(model)) == n_params


@pytest.mark.parametrize("norm", ["bn-torch", "bn"])
def test_frozen_bn_stays_in_eval_and_keeps_running_stats(norm):
    model = create_model("resnet20", norm=norm, num_classes=4)
    freeze(model, "layer1")
    model.train()
    n = set_frozen_norms_eval(model)
    assert n == 1 + 3 * 2  # stem bn1 + three blocks x (bn1, bn2)
    assert not model.bn1.training and not model.layer1[2].bn2.training
    assert model.layer2[0].bn1.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.0), momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32) * 3 + 1, torch.randint(0, 4, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith(("conv1", "bn1", "layer1")):
            assert torch.equal(before[k], after[k]), k  # weights and running stats untouched
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])


def test_parameter_free_norm_follows_its_conv():
    model = create_model("resnet20")
    model.bn1 = nn.BatchNorm2d(16, affine=False)  # no parameters of its own
    model.layer2[0].bn1 = nn.BatchNorm2d(32, affine=False)
    freeze(model, "stem")
    model.train()
    assert set_frozen_norms_eval(model) == 1
    assert not model.bn1.training and model.layer2[0].bn1.training


# -- parameter groups ------------------------------------------------------------------------


def test_param_groups_counts_and_lrs():
    model = create_model("resnet20", num_classes=10)  # shortcut A: no downsample params
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, body_lr_mult=0.1)
    by = {g["name"]: g for g in groups}
    assert list(by) == ["head", "head_no_decay", "body", "body_no_decay"]
    n_convs = 1 + 9 * 2
    n_norm_params = (1 + 9 * 2) * 2
    assert len(by["head"]["params"]) == 1 and len(by["head_no_decay"]["params"]) == 1
    assert len(by["body"]["params"]) == n_convs and len(by["body_no_decay"]["params"]) == n_norm_params
    assert by["head"]["lr"] == 0.1 and by["body"]["lr"] == pytest.approx(0.01)
    assert by["head_no_decay"]["lr"] == 0.1 and by["body_no_decay"]["lr"] == pytest.approx(0.01)
    assert by["body"]["weight_decay"] == 5e-4 and by["body_no_decay"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))
    # no exclusion: two groups; frozen params left out on request
    freeze(model, "layer2")
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, exclude_norm_bias=False, trainable_only=True)
    assert [g["name"] for g in groups] == ["head", "body"]
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    assert all(g["weight_decay"] == 5e-4 for g in groups)
    torch.optim.SGD(groups, lr=0.1)  # accepted by an optimizer as is


def test_head_only_then_unfreeze_trains_the_body_with_one_optimizer():
    """fastai's fine_tune: the optimizer is built while the body is frozen; after unfreezing the body
    must train (at body_lr_mult), and while frozen nothing in it may move (not even weight decay)."""
    model = create_model("resnet8", num_classes=3, norm="gn")
    freeze_all_but_head(model)
    opt = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.1, body_lr_mult=0.5), lr=0.1, momentum=0.9)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 3, (6,))
    body0 = model.layer2[0].conv1.weight.detach().clone()
    head0 = model.fc.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(model.layer2[0].conv1.weight, body0)
    assert not torch.equal(model.fc.weight, head0)
    unfreeze(model)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model.layer2[0].conv1.weight, body0)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["body"] == pytest.approx(0.05)


def test_param_groups_errors():
    model = create_model("resnet8")
    with pytest.raises(ValueError, match="lr must be > 0"):
        param_groups(model, lr=0, weight_decay=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, lr=0.1, weight_decay=0)


def test_freeze_count_may_reach_the_head_and_a_lone_last_checkpoint_is_found(tmp_path):
    model = create_model("resnet20")
    children = [n for n, _ in model.named_children()]
    freeze(model, children.index("fc"))  # every module before the head
    assert all(p.requires_grad == n.startswith("fc.") for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="count must be in 0"):
        freeze(create_model("resnet20"), children.index("fc") + 1)
    # a run stopped before its first validation has only last/: best falls back to it
    ck.save_checkpoint(tmp_path / "checkpoints" / "last", create_model("resnet8"), {"arch": "resnet8", "arch_args": {}})
    assert ck.resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last"


def test_train_refuses_unavailable_pretrained_weights_before_loading_the_dataset(tmp_path, monkeypatch):
    # offline, `train --pretrained torchvision:IMAGENET1K_V1 --data imagefolder:photos` decoded the
    # whole folder first (minutes for a real one), then failed on the weights
    import resnetlab.data
    from resnetlab.config import load_config
    from resnetlab.trainer import train

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError(socket.timeout("timed out"))))
    monkeypatch.setattr(resnetlab.data, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded first"))
    for spec, error, match in (("torchvision:IMAGENET1K_V1", ResnetlabError, r"not cached and cannot be downloaded .*resnet18-f37072fd\.pth"),
                               (str(tmp_path / "missing.pth"), CheckpointError, "pretrained weights not found"),
                               ("torchvision:IMAGENET1K_V9", ResnetlabError, "IMAGENET1K_V9")):
        cfg = load_config(None, ["model.name=resnet18", f"model.pretrained={spec}", f"data.name=imagefolder:{tmp_path}",
                                 "train.device=cpu"])
        with pytest.raises(error, match=match):
            train(cfg, tmp_path / "run", progress=False)


def test_offline_torchvision_weights_print_nothing_on_stdout(tmp_path, monkeypatch, capsys):
    # torch hub printed 'Downloading: "https://..." to ...' on stdout, --quiet or not, before the error
    from resnetlab.cli import main

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError(socket.timeout("timed out"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    code = main(["-q", "train", "--model", "resnet18", "--pretrained", "torchvision:IMAGENET1K_V1", "--data",
                 f"imagefolder:{tmp_path}", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: torchvision weights ResNet18_Weights.IMAGENET1K_V1 are not cached")
