"""Every recipe in recipes/: training recipes validate, studies parse, and every one of them
runs end to end with --smoke (what CI runs). Studies are capped to their first cell with
max_cells, except study-depth, whose whole smoke grid runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from resnetlab import study as st
from resnetlab.cli import main
from resnetlab.config import load_config
from resnetlab.models import list_models

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
STUDIES = [p for p in RECIPES if p.name.startswith("study-")]
TRAINING = [p for p in RECIPES if not p.name.startswith("study-")]
FULL_GRID = "study-depth.yaml"  # the study whose every smoke cell runs in CI (4 cells)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models on a shared 2-core box: one thread is faster than two fighting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_recipes_the_issue_asks_for_exist():
    names = {p.name for p in RECIPES}
    for what in ("normalization", "batch-size", "optimizer", "regularization", "dropout", "augmentation", "depth"):
        assert f"study-{what}.yaml" in names
    for name in ("resnet18-3class-imagefolder", "resnet14-birds256-imagefolder", "resnet20-cifar10", "resnet18-cifar10",
                 "resnet38_bottleneck_cifar-cifar100", "resnet26_bottleneck2_cifar-cifar100", "resnet20-cifar10-paper"):  # fmt: skip
        assert f"{name}.yaml" in names


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_recipe_validates_and_is_commented(path):
    cfg = load_config(path)
    assert cfg.model.name in list_models()
    text = path.read_text()
    assert text.lstrip().startswith("#"), "a recipe starts with a comment saying what it reproduces"
    # training recipes are named <model>-<data>; the demo and issue 7's fmnist-speedrun / fmnist-best
    # have names fixed by the Makefile and the issue
    if not path.stem.startswith(("demo-", "fmnist-")):
        model = f"resnet{cfg.model.depth}" if cfg.model.name == "resnet_cifar" else cfg.model.name
        assert path.stem.startswith(model + "-")


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_parses_and_every_cell_validates(path):
    spec = st.load_study(path)
    cells = st.expand_cells(spec)
    assert len(cells) >= 2 and spec.seeds >= 1
    configs = [st.cell_config(spec, c, k) for c in cells for k in range(spec.seeds)]
    assert len({(c.model_dump_json()) for c in configs}) == len(cells) * spec.seeds  # cells x seeds all differ
    if path.name not in ("study-transfer.yaml", "study-transfer-imagenet-cifar10.yaml"):  # transfer needs a source
        assert spec.base["data"]["name"] == "fashion-mnist", "studies run offline by default"
        assert "the report's:" in path.read_text(), "a comment names the one-key switch to the report's dataset"


def test_report_details_in_the_recipes():
    r = {p.stem: load_config(p) for p in TRAINING}
    paper = r["resnet20-cifar10-paper"]
    assert (paper.train.batch_size, paper.optim.lr, paper.optim.momentum, paper.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (paper.schedule.name, paper.schedule.milestones, paper.schedule.milestones_unit) == ("multistep", [32000, 48000], "iteration")
    assert paper.train.iterations == 64000 and paper.data.val_fraction == 0.1 and paper.schedule.gamma == 0.1
    assert paper.augment == [{"crop": {"padding": 4}}, "flip"]
    r000 = r["resnet18-3class-imagefolder"]
    assert (r000.model.stem, r000.model.shortcut, r000.optim.weight_decay) == ("imagenet", "A", 1e-5)
    r001 = r["resnet14-birds256-imagefolder"], r["resnet14-birds256-imagefolder-adam"]
    assert [(c.model.depth, c.data.image_size, c.train.batch_size, c.train.epochs) for c in r001] == [(14, 256, 32, 50)] * 2
    assert [c.optim.name for c in r001] == ["sgd", "adam"]
    # the report's network keeps 256 px in its first stage (no pooling stem) and trains on resized images only
    assert [(c.model.stem, c.augment, c.optim.weight_decay) for c in r001] == [("cifar", [], 0.0)] * 2
    assert r001[0].optim.lr == 2e-3 and r001[0].optim.momentum == 0.9  # its best SGD setting
    assert all(c.output.evaluate_train for c in (*r001, r000))  # their tables give train-split figures too
    assert all(c.output.evaluate_val for c in r001)  # and report 001's validation micro- / macro-F1
    # the reports' optimizers decay every parameter, norm and bias included
    assert not any(r[k].optim.exclude_norm_bias for k in ("resnet18-3class-imagefolder", "resnet20-cifar10", "resnet38_bottleneck_cifar-cifar100"))
    r002 = r["resnet20-cifar10"]
    assert (r002.model.shortcut, r002.optim.weight_decay, r002.data.name) == ("B", 5e-4, "cifar10")
    r003 = r["resnet18-cifar10"]
    assert (r003.model.stem, r003.train.epochs) == ("cifar", 50)
    assert r000.output.test_every_epoch and r002.output.test_every_epoch and r003.output.test_every_epoch  # their per-epoch test curves
    r004 = r["resnet26_bottleneck2_cifar-cifar100"]
    assert r004.model.name == "resnet26_bottleneck2_cifar"  # the report's two-convolution blocks
    for c in (r004, r["resnet38_bottleneck_cifar-cifar100"]):  # the same training for the standard block
        assert (c.optim.name, c.schedule.name, c.optim.lr, c.train.grad_clip, c.train.grad_clip_mode, c.optim.weight_decay, c.train.epochs) == (
            "adam", "onecycle", 1e-3, 0.1, "value", 1e-5, 100)  # fmt: skip
        assert c.schedule.pct_start == r004.schedule.pct_start and c.data.name == "cifar100" and not c.optim.exclude_norm_bias
    # the recipe's schedule gives the learning rates report 004 logged after epochs 9 / 13 / 17
    from resnetlab.optim import build_scheduler

    spe = 352  # 45,000 training images / batch 128
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=r004.optim.lr)
    sched = build_scheduler(opt, r004.schedule, r004.train.epochs * spe, spe, r004.optim.lr)
    logged = {}
    for step in range(1, 18 * spe + 1):
        opt.step()
        if step % spe == 0 and step // spe - 1 in (9, 13, 17):  # the lr the epoch's last step used, as both log it
            logged[step // spe - 1] = round(opt.param_groups[0]["lr"], 5)
        sched.step()
    assert logged == {9: 0.00028, 13: 0.00047, 17: 0.00067}
    # report 003's transfer arms: torchvision ResNet-18 on CIFAR-10, 30 epochs, its two heads behind 7 frozen layers
    tr = st.load_study(next(p for p in STUDIES if p.name == "study-transfer-imagenet-cifar10.yaml"))
    arms = {c.label: st.cell_config(tr, c) for c in st.expand_cells(tr)}
    assert {k: (c.model.pretrained, c.model.freeze_until, c.model.head, c.model.head_dropout) for k, c in arms.items()} == {
        "scratch": (None, None, None, 0.0), "finetune": ("torchvision:IMAGENET1K_V1", None, None, 0.0),
        "config1": ("torchvision:IMAGENET1K_V1", 7, [128], 0.3),
        "config2": ("torchvision:IMAGENET1K_V1", 7, [256, 128, 128, 64, 32], 0.2)}  # fmt: skip
    assert {(c.model.name, c.model.stem, c.data.name, c.train.epochs) for c in arms.values()} == {("resnet18", "imagenet", "cifar10", 30)}
    from resnetlab.models import create_model
    from resnetlab.transfer import freeze

    frozen = freeze(create_model("resnet18", num_classes=10), arms["config1"].model.freeze_until)
    assert {n.split(".")[0] for n in frozen} == {"conv1", "bn1", "layer1", "layer2", "layer3"}  # the report's "first 7 layers"
    bs = st.load_study(next(p for p in STUDIES if p.name == "study-batch-size.yaml"))
    lrs = {c.label: st.cell_config(bs, c).optim.lr for c in st.expand_cells(bs)}
    assert lrs["norm=bn,batch_size=8"] == pytest.approx(0.1 * 8 / 128) and lrs["norm=gn,batch_size=128"] == pytest.approx(0.1)
    # report 001's own question: one learning rate for every batch size
    fixed = st.load_study(next(p for p in STUDIES if p.name == "study-batch-size-fixed-lr.yaml"))
    assert {st.cell_config(fixed, c).optim.lr for c in st.expand_cells(fixed)} == {1e-3}


SMOKE_TRAINING = TRAINING


@pytest.mark.parametrize("path", SMOKE_TRAINING, ids=lambda p: p.name)
def test_training_recipe_smoke(path, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", str(path), "--smoke", "--out", str(out), "--quiet", "--set", "train.num_threads=1"])
    assert rc == 0, capsys.readouterr().err
    epochs = 2 if load_config(path).train.progressive_resize else 1  # progressive resizing: a small epoch, then a full one
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == epochs
    test = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert 0.0 <= test["accuracy"] <= 1.0 and test["num_samples"] > 0
    cfg = load_config(out / "config.yaml")
    assert cfg.model.name == load_config(path).model.name and cfg.data.subset == 256 and cfg.train.epochs == epochs


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_smoke(path, tmp_path):
    full = path.name == FULL_GRID
    spec = st.load_study(path)
    result = st.run_study(spec, out=tmp_path / "s", smoke=True, max_cells=None if full else 1)
    n_cells = len(st.expand_cells(spec)) if full else 1
    assert len(result.rows) == n_cells and len(result.ran) == n_cells
    assert all(r["n"] == 1 and r["epochs_mean"] == 1 for r in result.rows)  # one seed, one epoch
    assert all(0.0 <= r["test_acc_mean"] <= 1.0 for r in result.rows)
    payload = json.loads((result.out_dir / "results.json").read_text())
    assert payload["smoke"] is True and payload["best"] == result.best
    assert max(payload["test_images"]) <= st.SMOKE_TEST_IMAGES
    html = (result.out_dir / "study.html").read_text()
    assert "SMOKE RUN" in html and "data:image/png;base64," in html
    assert "the batch capped at 64" in html  # a cell labelled batch_size=128 ran at 64: the report says so
