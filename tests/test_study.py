"""Studies: grid expansion, seeds, resume after interruption, --jobs, best-on-val, mean/std."""

from __future__ import annotations

import csv
import logging
import json
import re
from pathlib import Path

import pytest
import yaml

from resnetlab import study as st
from resnetlab.cli import main
from resnetlab.errors import ConfigError, ResnetlabError

# A study that trains in about a second per run on one core: ResNet-8 on 8x8 synthetic images.
BASE = {
    "seed": 0,
    "model": {"name": "resnet8", "norm": "bn"},
    "data": {"name": "synthetic:1x8x8:3:60", "val_fraction": 0.2},
    "optim": {"lr": 0.1},
    "train": {"epochs": 2, "batch_size": 16, "num_threads": 1, "device": "cpu"},  # tables compared exactly
    "output": {"report": False, "tensorboard": False},
}
TIMING = ("train_time_s", "images_per_s")


def write_study(tmp: Path, name: str = "tiny", **extra) -> Path:
    data = {"name": name, "base": BASE, "grid": {"model.norm": ["bn", "gn"]}, "seeds": 2, **extra}
    path = tmp / f"study-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def table(path: Path) -> list[dict[str, str]]:
    """results.csv without the columns that depend on the machine's speed."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in csv.DictReader(f)]


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted study (2 cells x 2 seeds), shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp)
    result = st.run_study(path, out=tmp / "out")
    return path, result


# -- the study file ------------------------------------------------------------------------
def test_grid_is_the_cartesian_product_in_row_major_order():
    spec = st.StudySpec("s", BASE, grid={"model.norm": ["bn", "gn"], "train.batch_size": [8, 16, 32]})
    cells = st.expand_cells(spec)
    assert [c.label for c in cells] == [f"norm={n},batch_size={b}" for n in ("bn", "gn") for b in (8, 16, 32)]
    assert cells[4].overrides == {"model.norm": "gn", "train.batch_size": 16}
    cfg = st.cell_config(spec, cells[4], seed_index=1)
    assert (cfg.model.norm, cfg.train.batch_size, cfg.seed) == ("gn", 16, 1)


def test_explicit_cells_are_crossed_with_the_grid_and_list_values_label_cleanly():
    spec = st.StudySpec(
        "s", BASE, grid={"optim.lr": [0.1, 0.01]},
        cells=[{"label": "none", "set": {"augment": []}}, {"label": "all", "set": {"augment": [{"crop": {"padding": 1}}, "flip"]}}],
    )  # fmt: skip
    cells = st.expand_cells(spec)
    assert [c.label for c in cells] == ["none,lr=0.1", "none,lr=0.01", "all,lr=0.1", "all,lr=0.01"]
    assert spec.axes == ["cell", "optim.lr"]
    cfg = st.cell_config(spec, cells[2])
    assert cfg.augment == [{"crop": {"padding": 1}}, "flip"] and cfg.optim.lr == 0.1
    # an augmentation list as a grid value becomes a readable folder name
    grid = st.expand_cells(st.StudySpec("s", BASE, grid={"augment": [[], ["flip", "crop:padding=2"]]}))
    assert [c.label for c in grid] == ["augment=none", "augment=flip+crop-padding=2"]


def test_a_cell_that_sets_a_section_changes_only_the_keys_it_names():
    base = {**BASE, "model": {"name": "resnet8", "norm": "bn", "shortcut": "A"}, "optim": {"lr": 0.05, "weight_decay": 1e-3}}
    spec = st.StudySpec("s", base, grid={"train.batch_size": [8]}, cells=[{"label": "adam", "set": {"optim": {"name": "adam"}}}])
    cfg = st.cell_config(spec, st.expand_cells(spec)[0])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 0.05, 1e-3)
    grid = st.StudySpec("s", base, grid={"model": [{"norm": "gn"}]})
    cfg = st.cell_config(grid, st.expand_cells(grid)[0])
    assert (cfg.model.name, cfg.model.norm, cfg.model.shortcut) == ("resnet8", "gn", "A")
    assert base["model"]["norm"] == "bn"  # the spec's base is not changed by a cell


def test_base_recipe_is_relative_to_the_study_file_and_base_overrides_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text(yaml.safe_dump({**BASE, "optim": {"lr": 0.3, "momentum": 0.5}}))
    path = tmp_path / "sub" / "study-x.yaml"
    path.write_text(yaml.safe_dump({"base_recipe": "r.yaml", "base": {"optim": {"lr": 0.05}}, "grid": {"model.norm": ["gn"]}}))
    spec = st.load_study(path)
    cfg = st.cell_config(spec, st.expand_cells(spec)[0])
    assert spec.name == "x"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.model.name) == (0.05, 0.5, "resnet8")


def test_linear_lr_scaling_with_the_batch():
    spec = st.StudySpec("s", BASE, grid={"train.batch_size": [8, 32, 128]}, scale_lr_with_batch=128)
    lrs = [st.cell_config(spec, c).optim.lr for c in st.expand_cells(spec)]
    assert lrs == pytest.approx([0.1 * 8 / 128, 0.1 * 32 / 128, 0.1])


def load_all(path: Path) -> list:
    spec = st.load_study(path)
    return [st.cell_config(spec, c) for c in st.expand_cells(spec)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {"model.nrom": ["bn"]}}, "unknown config key 'model.nrom'; did you mean 'model.norm'"),
        ({"grid": {"seed": [1, 2]}}, "'seed' cannot be varied"),
        ({"grid": {"model.norm": []}}, "non-empty list"),
        ({"grid": {"model.norm": ["bn", "nb"]}}, "unknown norm 'nb'"),
        ({"seeds": 0}, "seeds must be an integer >= 1"),
        ({"grdi": {}}, "unknown key 'grdi'; did you mean 'grid'"),
        ({"cells": [{"label": "a", "set": {}}, {"label": "a", "set": {}}], "grid": {}}, "share the folder name 'a'"),
        ({"base_recipe": "missing.yaml"}, "base_recipe 'missing.yaml' not found"),
        # a study without cells trained one unlabelled run of the base and called it a study
        ({"grid": {}}, "has no grid and no cells: nothing to compare"),
        ({"grid": {}, "cells": []}, "has no grid and no cells: nothing to compare"),
        ({"grid": {}, "cells": [{"label": "a"}]}, "cells[0] has no 'set' (a cell is {label: NAME, set: {config key: value, ...}}"),
        ({"grid": {}, "cells": [{"label": "a", "set": {}, "sett": 1}]}, "cells[0] has unknown key 'sett'; did you mean 'set'? (allowed: label, set)"),
        # recorded in each run's config but never used: every run goes into the study folder
        ({"grid": {"output.dir": ["o1", "o2"]}}, "'output.dir' cannot be set per cell: each run goes to <study folder>/<cell>/seed<N>"),
        ({"grid": {}, "cells": [{"label": "a", "set": {"output": {"dir": "x"}}}]}, "'output' cannot be set per cell"),
        # an unknown key in the base names the study and what is allowed
        ({"base": {**BASE, "foo": 1}}, "base: unknown config key 'foo' (allowed at the top: augment, data, model, name, optim"),
        ({"base": {**BASE, "trian": {}}}, "base: unknown config key 'trian'; did you mean 'train'?"),
    ],
)
def test_bad_study_files_fail_with_one_line(tmp_path, change, message):
    path = write_study(tmp_path, **change)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_all(path)
    assert "\n" not in str(info.value)


def test_bad_cell_value_is_reported_with_the_cell(tmp_path):
    with pytest.raises(ConfigError, match=r"cell dropout=1.5: config model.dropout"):
        load_all(write_study(tmp_path, grid={"model.dropout": [0.1, 1.5]}))
    # run_study refuses it before making the study folder: nothing is left behind
    with pytest.raises(ConfigError, match=r"cell dropout=1.5: config model.dropout"):
        st.run_study(write_study(tmp_path, grid={"model.dropout": [0.1, 1.5]}), out=tmp_path / "study")
    assert not (tmp_path / "study").exists()


# -- running ------------------------------------------------------------------------------
def test_every_cell_and_seed_is_an_ordinary_run_folder(finished):
    path, result = finished
    out = result.out_dir
    for label in ("norm=bn", "norm=gn"):
        for k in range(2):
            run = out / label / f"seed{k}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["seed"] == k and cfg["model"]["norm"] == label.split("=")[1]
            assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
            assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["num_samples"] == 12
            assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["num_samples"] == 12
            # the training split evaluated without augmentation, as reports 000/003 quote it
            assert json.loads((run / "eval" / "train" / "metrics.json").read_text())["split"] == "train"
    assert sorted(result.ran) == sorted(f"norm={n}/seed{k}" for n in ("bn", "gn") for k in range(2))
    for name in ("study.html", "study.md", "results.csv", "results.json"):
        assert (out / name).stat().st_size > 0
    assert [r["cell"] for r in table(out / "results.csv")] == ["norm=bn", "norm=gn"]


def test_mean_and_std_are_computed_from_the_per_seed_files(finished):
    _, result = finished
    rows = {r["cell"]: r for r in csv.DictReader(open(result.out_dir / "results.csv"))}
    for label in ("norm=bn", "norm=gn"):
        runs = [result.out_dir / label / f"seed{k}" for k in range(2)]
        test = [json.loads((r / "eval" / "test" / "metrics.json").read_text()) for r in runs]
        val = [json.loads((r / "eval" / "val" / "metrics.json").read_text()) for r in runs]
        train = [json.loads((r / "eval" / "train" / "metrics.json").read_text()) for r in runs]
        last = [list(csv.DictReader(open(r / "metrics.csv")))[-1] for r in runs]
        expect = {
            "test_acc": [m["accuracy"] for m in test],
            "test_f1_macro": [m["f1_macro"] for m in test],
            "val_acc": [m["accuracy"] for m in val],
            "val_f1_micro": [m["f1_micro"] for m in val],
            "train_acc": [m["accuracy"] for m in train],
            # report 001's train / val / test F1 table, report 000's test loss and weighted precision / recall / F1
            "train_f1_micro": [m["f1_micro"] for m in train],
            "train_f1_macro": [m["f1_macro"] for m in train],
            "test_loss": [m["loss"] for m in test],
            "test_precision_weighted": [m["precision_weighted"] for m in test],
            "test_recall_weighted": [m["recall_weighted"] for m in test],
            "test_f1_weighted": [m["f1_weighted"] for m in test],
            "train_acc_running": [float(r["train_acc"]) for r in last],
            "train_loss": [float(r["train_loss"]) for r in last],
            "val_loss": [float(r["val_loss"]) for r in last],
        }
        row = rows[label]
        assert row["n"] == "2" and row["epochs_mean"] == "2"
        for key, xs in expect.items():
            assert float(row[f"{key}_mean"]) == pytest.approx(sum(xs) / 2, rel=1e-5, abs=1e-9), key
            assert float(row[f"{key}_std"]) == pytest.approx(abs(xs[0] - xs[1]) / 2**0.5, rel=1e-5, abs=1e-6), key
    # a single seed has no spread: std is left blank, not reported as 0
    one = st.summarize([st.Cell("a", {}, {})], {("a", 0): {"val_acc": 0.5}})[0]
    assert one["n"] == 1 and one["val_acc_mean"] == 0.5 and one["val_acc_std"] is None


def test_ties_pick_the_first_cell_and_curve_bands_are_sample_std():
    assert st.select_best([{"cell": "a", "val_acc_mean": 0.8}, {"cell": "b", "val_acc_mean": 0.8}]) == "a"
    assert st.select_best([{"cell": "a", "val_acc_mean": None}]) is None
    curves = [{"epoch": [1, 2], "val_acc": [0.5, 0.6]}, {"epoch": [1], "val_acc": [0.7]}]  # run 2 stopped after epoch 1
    epochs, means, stds = st._mean_curve(curves, "val_acc")
    assert epochs == [1, 2] and means == pytest.approx([0.6, 0.6])
    assert stds == pytest.approx([0.2 / 2**0.5, 0.0])  # n - 1 in the denominator, as the report says


def test_best_cell_is_chosen_on_validation_even_when_test_disagrees(tmp_path):
    cells = [st.Cell("high-val", {}, {"cell": "high-val"}), st.Cell("high-test", {}, {"cell": "high-test"})]
    curves = {"epoch": [1.0], "val_acc": [0.5], "train_loss": [1.0]}
    run = lambda v, t: {**{m: 0.5 for m in st.METRICS}, "val_acc": v, "test_acc": t, "curves": curves}  # noqa: E731
    runs = {("high-val", 0): run(0.9, 0.60), ("high-val", 1): run(0.8, 0.62), ("high-test", 0): run(0.7, 0.95), ("high-test", 1): run(0.75, 0.97)}
    rows = st.summarize(cells, runs)
    best = st.select_best(rows)
    assert best == "high-val"
    spec = st.StudySpec("s", BASE, cells=[{"label": c.label, "set": {}} for c in cells], seeds=2)
    st.write_study_report(tmp_path, spec, cells, rows, runs, best)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["best"] == "high-val" and "never" in payload["selection"]
    md = (tmp_path / "study.md").read_text()
    assert "Best cell: **high-val**, chosen on mean **validation** accuracy" in md
    assert "| high-val **(best)** |" in md and "high-test **(best)**" not in md
    html = (tmp_path / "study.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "src='study_files" not in html


def test_curves_keep_each_cells_colour_and_label_when_a_cell_has_no_validation(monkeypatch):
    figs = []
    monkeypatch.setattr(st, "_png", lambda fig: figs.append(fig) or b"")
    withval = {"epoch": [1, 2], "val_acc": [0.5, 0.6], "train_loss": [1.0, 0.8]}
    noval = {"epoch": [1, 2], "val_acc": [None, None], "train_loss": [1.2, 0.9]}
    st._curves_figure([("noval", [noval]), ("withval", [withval])], "t")
    axes = {ax.get_ylabel().split(" (")[0]: ax for ax in figs[0].axes}
    val_ax, loss_ax = axes["validation accuracy"], axes["training loss"]
    colour = {ln.get_label(): ln.get_color() for ln in loss_ax.get_lines()}
    assert [ln.get_label() for ln in val_ax.get_lines()] == ["withval"]
    assert val_ax.get_lines()[0].get_color() == colour["withval"] != colour["noval"]  # it took noval's colour
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["noval", "withval"]  # noval had no label



def test_curves_show_training_accuracy_validation_loss_and_a_test_curve_when_recorded(monkeypatch):
    # report 003 compares its arms on training and validation loss and accuracy (and test, per epoch)
    figs = []
    monkeypatch.setattr(st, "_png", lambda fig: figs.append(fig) or b"")
    run = {"epoch": [1, 2], "val_acc": [0.5, 0.6], "val_loss": [1.1, 0.9], "train_acc": [0.4, 0.7], "train_loss": [1.0, 0.8],
           "test_acc": [None, None], "test_loss": [None, None]}  # fmt: skip
    st._curves_figure([("a", [run])], "t")
    labels = sorted(ax.get_ylabel() for ax in figs[0].axes)
    assert labels == ["training accuracy (%), running, augmented", "training loss", "validation accuracy (%)", "validation loss"]
    ys = {ax.get_ylabel(): [round(float(v), 6) for v in ax.get_lines()[0].get_ydata()] for ax in figs[0].axes}
    assert ys["validation loss"] == [1.1, 0.9] and ys["training accuracy (%), running, augmented"] == [40.0, 70.0]
    st._curves_figure([("a", [{**run, "test_acc": [0.45, 0.55], "test_loss": [1.2, 1.0]}])], "t")
    ys = {ax.get_ylabel(): [round(float(v), 6) for v in ax.get_lines()[0].get_ydata()] for ax in figs[1].axes}
    assert ys["test accuracy (%), picks nothing"] == [45.0, 55.0] and ys["test loss"] == [1.2, 1.0] and len(ys) == 6

def test_interrupted_study_resumes_without_rerunning_finished_cells(finished, tmp_path, monkeypatch):
    path, reference = finished
    out = tmp_path / "out"
    from resnetlab.trainer import Trainer

    real_epoch = Trainer._train_epoch

    def crash_in_second_epoch(self):
        if self.run_dir.parent.name == "norm=gn" and self.run_dir.name == "seed1" and self.epoch == 1:
            raise RuntimeError("power cut")
        return real_epoch(self)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(ResnetlabError, match=r"1 of 4 runs failed \(first: norm=gn/seed1: power cut\)"):
        st.run_study(path, out=out)
    victim = out / "norm=gn" / "seed1"
    assert (victim / "checkpoints" / "last").is_dir() and not (victim / "eval").exists()
    # the report of the three finished runs is written, naming the failed one
    assert json.loads((out / "results.json").read_text())["failed"] == {"norm=gn/seed1": "power cut"}
    # a user looks at the half-trained run: its test metrics must not make it count as finished
    from resnetlab.evaluate import evaluate

    evaluate(victim, split="test")
    done = {k: v for k, v in snapshot(out).items() if k.startswith(("norm=bn/", "norm=gn/seed0"))}
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)

    from resnetlab import trainer

    resumed = []
    real_resume = trainer.resume
    monkeypatch.setattr(trainer, "resume", lambda run_dir, **kw: resumed.append(Path(run_dir)) or real_resume(run_dir, **kw))
    result = st.run_study(path, out=out)
    assert result.ran == ["norm=gn/seed1"] and len(result.skipped) == 3
    assert resumed == [victim]  # continued from its epoch-1 checkpoint, not restarted
    after = snapshot(out)
    assert {k: after[k] for k in done} == done  # finished runs untouched (every file's mtime)
    assert len(list(csv.DictReader(open(victim / "metrics.csv")))) == 2
    # exact resume: the table equals the uninterrupted study's
    assert table(out / "results.csv") == table(reference.out_dir / "results.csv")


def test_results_of_an_evaluation_made_before_a_resume_are_not_reported(tmp_path, monkeypatch):
    """A user evaluates a half-trained cell on val and train; the resumed cell's best checkpoint
    is a later one, so the study must score that one, not read the old files back."""
    base = {**BASE, "train": {**BASE["train"], "epochs": 3}}
    path = write_study(tmp_path, grid={"model.norm": ["gn"]}, seeds=1, base=base)
    reference = st.run_study(path, out=tmp_path / "ref")
    from resnetlab.evaluate import evaluate
    from resnetlab.trainer import Trainer

    real_epoch = Trainer._train_epoch

    def crash_in_second_epoch(self):
        if self.epoch == 1:
            raise RuntimeError("power cut")
        return real_epoch(self)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(ResnetlabError, match="power cut"):
        st.run_study(path, out=tmp_path / "out")
    victim = tmp_path / "out" / "norm=gn" / "seed0"
    early = {s: evaluate(victim, split=s)["accuracy"] for s in ("val", "train")}
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    result = st.run_study(path, out=tmp_path / "out")
    assert result.ran == ["norm=gn/seed0"]
    assert early != {s: reference.rows[0][f"{s}_acc_mean"] for s in ("val", "train")}  # the test means something
    assert table(tmp_path / "out" / "results.csv") == table(reference.out_dir / "results.csv")


def test_rerun_of_a_finished_study_trains_nothing_and_a_lost_eval_is_redone(finished, tmp_path):
    path, reference = finished
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(reference.out_dir, out)
    (out / "norm=bn" / "seed0" / "eval" / "test" / "metrics.json").unlink()
    before = (out / "norm=bn" / "seed0" / "checkpoints" / "best" / "model.safetensors").stat().st_mtime_ns
    result = st.run_study(path, out=out)
    assert result.ran == ["norm=bn/seed0"] and len(result.skipped) == 3
    assert (out / "norm=bn" / "seed0" / "checkpoints" / "best" / "model.safetensors").stat().st_mtime_ns == before
    assert table(out / "results.csv") == table(reference.out_dir / "results.csv")


def test_a_finished_cell_whose_missing_evaluation_fails_is_one_failed_run(finished, tmp_path, monkeypatch):
    # the evaluation redone for a finished cell ran outside the per-run error handling: its error
    # ended the whole study with no report, where a failing training run is named and the rest go on
    path, reference = finished
    import shutil

    import resnetlab.evaluate

    shutil.copytree(reference.out_dir, tmp_path / "o")
    (tmp_path / "o" / "norm=bn" / "seed0" / "eval" / "val" / "metrics.json").unlink()
    (tmp_path / "o" / "study.md").unlink()

    def dataset_gone(*a, **k):
        raise RuntimeError("dataset gone")

    monkeypatch.setattr(resnetlab.evaluate, "evaluate", dataset_gone)
    with pytest.raises(ResnetlabError, match=r"^1 of 4 runs failed \(first: norm=bn/seed0: dataset gone\)"):
        st.run_study(path, out=tmp_path / "o")
    assert "norm=bn/seed0: dataset gone" in (tmp_path / "o" / "study.md").read_text()


def test_a_folder_with_another_config_is_not_mistaken_for_the_cell(finished, tmp_path):
    path, reference = finished
    import shutil

    shutil.copytree(reference.out_dir, tmp_path / "o")
    changed = write_study(tmp_path, name="tiny2", base={**BASE, "optim": {"lr": 0.05}})
    with pytest.raises(ResnetlabError, match=r"holds a run with another config \(optim.lr: 0.1 \(folder\) vs 0.05 \(study\)\)"):
        st.run_study(changed, out=tmp_path / "o")


def test_jobs_2_gives_the_same_table_as_jobs_1(finished, tmp_path):
    path, reference = finished
    result = st.run_study(path, out=tmp_path / "par", jobs=2, seeds=1)
    serial = st.run_study(path, out=tmp_path / "ser", jobs=1, seeds=1)
    assert table(result.out_dir / "results.csv") == table(serial.out_dir / "results.csv")
    # the recorded command is the one that ran: --jobs changes the time columns
    command = lambda d: next(x for x in (tmp_path / d / "study.md").read_text().splitlines() if x.startswith("Command:"))  # noqa: E731
    assert command("par").endswith(f"--seeds 1 --out {tmp_path / 'par'} --jobs 2`")
    assert command("ser").endswith(f"--seeds 1 --out {tmp_path / 'ser'}`")
    # the seed-0 runs are the very runs of the 2-seed study
    for label in ("norm=bn", "norm=gn"):
        a = json.loads((tmp_path / "par" / label / "seed0" / "eval" / "test" / "metrics.json").read_text())
        b = json.loads((reference.out_dir / label / "seed0" / "eval" / "test" / "metrics.json").read_text())
        assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]
        assert (tmp_path / "par" / label / "seed0" / "study-cell.log").is_file()  # ran as a subprocess


def test_a_study_folder_in_use_is_refused_and_jobs_cells_hold_its_lock(finished, tmp_path, monkeypatch):
    """A rerun while the first study (or the --jobs cells of a killed one, which go on training)
    still uses the folder would train the same cells into the same folders at once."""
    import subprocess
    import sys

    path, reference = finished
    import shutil

    out = tmp_path / "o"
    shutil.copytree(reference.out_dir, out)
    before = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(out / ".study.lock")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ResnetlabError, match=r"is in use by another resnetlab study, or by cells a killed study started"):
            st.run_study(path, out=out)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(out) == before
    assert st.run_study(path, out=out).ran == []  # free again
    # --jobs cells inherit the lock: it outlives a study killed while they train
    passed = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        passed.append(kwargs.get("pass_fds"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    st.run_study(path, out=tmp_path / "par", jobs=2, seeds=1, max_cells=1)
    assert len(passed) == 1 and len(passed[0]) == 1


def test_seeds_flag_and_max_cells(finished, tmp_path):
    path, _ = finished
    result = st.run_study(path, out=tmp_path / "o", seeds=1, max_cells=1)
    assert [r["cell"] for r in result.rows] == ["norm=bn"] and result.rows[0]["n"] == 1
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir() and p.name != "study_files") == ["norm=bn"]
    assert not (tmp_path / "o" / "norm=bn" / "seed1").exists()
    # the recorded command reproduces this report, not the whole study
    assert "--seeds 1 --out" in (tmp_path / "o" / "study.md").read_text() and "--max-cells 1" in (tmp_path / "o" / "study.md").read_text()


def test_smoke_keeps_an_explicit_number_of_seeds(tmp_path, capsys):
    # --smoke runs one seed; `--smoke --seeds 2` was silently one seed too
    path = write_study(tmp_path, seeds=3)
    assert main(["study", str(path), "--smoke", "--seeds", "2", "--max-cells", "1", "--out", str(tmp_path / "o"), "-q"]) == 0
    assert "norm=bn" in capsys.readouterr().out and (tmp_path / "o" / "norm=bn" / "seed1").is_dir()
    assert not (tmp_path / "o" / "norm=bn" / "seed2").exists()
    md = (tmp_path / "o" / "study.md").read_text()
    assert "SMOKE RUN" in md and "2 seeds" in md and "--smoke --seeds 2 --out" in md
    assert re.search(r"2 seeds, test on \d+ images;", md)  # it printed the list: "test on [360] images"
    # the study's images/s is not the report's (the median of the epochs'): it says which it is
    assert "images/s: the images trained (steps x batch size) over that time (a run's report gives the median" in md


def test_out_a_non_empty_folder_that_holds_no_study_is_refused(tmp_path, capsys):
    # the study's results.csv replaced the user's own, and a training run's folder got a study mixed in
    path = write_study(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my numbers\n")
    rc = main(["study", str(path), "--out", str(mine), "--max-cells", "1", "--seeds", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: study folder {mine} is not empty and holds no study (no results.json, no cell folder); choose a new or empty folder with --out"
    assert sorted(p.name for p in mine.iterdir()) == ["results.csv"] and (mine / "results.csv").read_text() == "my numbers\n"
    # a study stopped before its first cell folder leaves only its lock file: that folder is its own
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / ".study.lock").touch()
    assert main(["study", str(path), "--out", str(stopped), "--max-cells", "1", "--seeds", "1", "-q"]) == 0


def test_out_another_studys_folder_is_refused(tmp_path, capsys):
    # a second study written into the first one's folder replaced its results.csv and study.md
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"study": "norms", "rows": []}))
    (other / "study.md").write_text("# Study: norms\n")
    rc = main(["study", str(write_study(tmp_path)), "--out", str(other), "--max-cells", "1", "--seeds", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"error: study folder {other} holds another study, 'norms' (results.json), not 'tiny'; "
                               f"choose a new or empty folder with --out")  # fmt: skip
    assert sorted(p.name for p in other.iterdir()) == ["results.json", "study.md"]
    assert (other / "study.md").read_text() == "# Study: norms\n"


def test_a_finished_run_without_its_report_gets_it_on_the_rerun(tmp_path):
    # a cell stopped between its test evaluation and its report counted as finished, and its
    # report was never written
    path = write_study(tmp_path, base={**BASE, "output": {"report": True, "tensorboard": False}}, seeds=1)
    st.run_study(path, out=tmp_path / "o", max_cells=1)
    run = tmp_path / "o" / "norm=bn" / "seed0"
    report = (run / "report.md").read_text()
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    result = st.run_study(path, out=tmp_path / "o", max_cells=1)
    assert result.skipped == ["norm=bn/seed0"] and not result.ran
    assert (run / "report.html").is_file() and (run / "report.md").read_text() == report
    before = (run / "report.html").stat().st_mtime_ns
    st.run_study(path, out=tmp_path / "o", max_cells=1)
    assert (run / "report.html").stat().st_mtime_ns == before  # a report there is left as it is


def test_the_recorded_command_runs_as_it_is_copied(tmp_path):
    import shlex

    sets = ["model.head=[64, 32]", "augment=['crop:padding=1']", "data.subset=300"]
    spec = st.StudySpec("s", BASE, grid={"model.norm": ["bn"]}, path=tmp_path / "my studies" / "study-s.yaml", overrides=sets)
    command = st._command_line(spec, False, tmp_path / "out", jobs=2)
    assert shlex.split(command) == ["resnetlab", "study", str(spec.path), "--set", sets[0], "--set", sets[1], "--set", sets[2],
                                    "--seeds", "1", "--out", str(tmp_path / "out"), "--jobs", "2"]  # fmt: skip
    assert "--set data.subset=300 " in command  # plain values stay unquoted


def test_empty_study_file_is_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"study file .*empty.yaml is empty; a study needs at least a grid or cells"):
        st.load_study(tmp_path / "empty.yaml")


def test_cli_study(finished, tmp_path, capsys):
    path, reference = finished
    import shutil

    shutil.copytree(reference.out_dir, tmp_path / "o")
    assert main(["study", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    best = json.loads((tmp_path / "o" / "results.json").read_text())["best"]
    assert "0 runs trained, 4 already finished" in out
    assert f"{best:<40}" in out and "<- best (on validation)" in out
    assert main(["study", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found") and err.count("\n") == 1
    assert main(["study", str(path), "--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    assert "argument --jobs/-j: must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_set_overrides_change_every_cell_base(tmp_path):
    from resnetlab.study import cell_config, expand_cells, load_study

    from pathlib import Path

    spec = load_study(Path(__file__).parents[1] / "recipes" / "study-normalization.yaml", overrides=["train.epochs=2", "data.subset=500"])
    cfgs = [cell_config(spec, c) for c in expand_cells(spec)]
    assert {c.train.epochs for c in cfgs} == {2} and {c.data.subset for c in cfgs} == {500}
    assert sorted(c.model.norm for c in cfgs) == sorted(spec.grid["model.norm"])  # the axis still wins
    assert spec.overrides == ["train.epochs=2", "data.subset=500"]


def test_set_on_a_grid_axis_is_refused_and_on_a_cells_key_is_named(tmp_path, caplog):
    """--set of a key that the study sets itself was silently overridden: refused for a grid axis
    (it changes no cell), a warning naming the cells for a cell's own set."""
    from resnetlab.errors import ConfigError
    from resnetlab.study import cell_config, expand_cells, load_study

    grid = write_study(tmp_path, name="g", grid={"model.norm": ["bn", "gn"]}, seeds=1)
    with pytest.raises(ConfigError, match=r"--set model.norm=in: model.norm is a grid axis of study .* change the grid"):
        load_study(grid, overrides=["model.norm=in"])
    with pytest.raises(ConfigError, match=r"--set model=\{norm: in\}: model.norm is a grid axis"):  # a whole section
        load_study(grid, overrides=["model={norm: in}"])
    cells = tmp_path / "study-c.yaml"
    cells.write_text(yaml.safe_dump({"base": {"model": {"name": "resnet8"}}, "cells": [
        {"label": "fast", "set": {"optim.lr": 0.5}}, {"label": "slow", "set": {"optim.lr": 0.01}},
        {"label": "plain", "set": {}}]}))
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        spec = load_study(cells, overrides=["optim.lr=0.2"])
    assert "--set optim.lr=0.2 is overridden in cells fast, slow, which set optim.lr itself" in caplog.text
    assert [cell_config(spec, c).optim.lr for c in expand_cells(spec)] == [0.5, 0.01, 0.2]
    # every cell sets it: refused as a grid axis is (it said "it applies to the other cells" with none left)
    with pytest.raises(ConfigError, match=r"--set model.name=resnet20: every cell of study .* sets model.name itself "
                                          r"\(fast, slow, plain\)"):
        every = tmp_path / "study-e.yaml"
        every.write_text(yaml.safe_dump({"cells": [{"label": n, "set": {"model.name": "resnet8"}} for n in ("fast", "slow", "plain")]}))
        load_study(every, overrides=["model.name=resnet20"])
    # a cell's set given as a mapping changes only the keys it names (it is merged): optim: {lr: ...}
    # does not set optim.weight_decay (the --set was refused as set by every cell)
    nested = tmp_path / "study-n.yaml"
    nested.write_text(yaml.safe_dump({"base": {"model": {"name": "resnet8"}}, "cells": [
        {"label": "a", "set": {"optim": {"lr": 0.05}}}, {"label": "b", "set": {"optim": {"lr": 0.2}}}]}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        spec = load_study(nested, overrides=["optim.weight_decay=0.01"])
    assert "overridden" not in caplog.text
    assert [cell_config(spec, c).optim.weight_decay for c in expand_cells(spec)] == [0.01, 0.01]
    with pytest.raises(ConfigError, match="every cell of study .* sets optim.lr itself"):
        load_study(nested, overrides=["optim.lr=0.3"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_study(cells, overrides=["train.epochs=1"])  # a key no cell sets: no word
    assert "overridden" not in caplog.text


def test_a_run_saved_before_a_config_key_existed_still_counts_as_done(finished, tmp_path):
    """A key added to the config later (with its default) is not a difference: old study folders stay usable."""
    path, reference = finished
    import shutil

    import yaml

    out = tmp_path / "old"
    shutil.copytree(reference.out_dir, out)
    for saved in out.glob("*/seed*/config.yaml"):
        data = yaml.safe_load(saved.read_text())
        data["train"].pop("eval_every")  # as if written by a version without train.eval_every
        data["train"].pop("tune_malloc", None)
        saved.write_text(yaml.safe_dump(data, sort_keys=False))
    result = st.run_study(path, out=out)
    assert result.ran == [] and len(result.skipped) == 4


def test_a_failed_cell_still_gets_the_report_of_the_others(tmp_path):
    """A diverging cell is a result too: the study report is written from the runs that
    finished, names the failed one, does not choose it, and the command still fails (exit 2)."""
    path = write_study(tmp_path, name="diverge", grid={"optim.lr": [0.1, 1e12]}, seeds=1)
    with pytest.raises(ResnetlabError, match=r"1 of 2 runs failed \(first: lr=1e\+12/seed0: loss became nan.*study report"):
        st.run_study(path, out=tmp_path / "o")
    payload = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(payload["failed"]) == ["lr=1e+12/seed0"] and payload["best"] == "lr=0.1"
    rows = {r["cell"]: r for r in payload["rows"]}
    assert rows["lr=0.1"]["n"] == 1 and rows["lr=1e+12"]["n"] == 0
    md = (tmp_path / "o" / "study.md").read_text()
    assert "FAILED runs, left out of the means" in md and "lr=1e+12/seed0: loss became nan" in md


def test_an_image_folder_with_a_val_folder_is_validated_even_with_val_fraction_0(tmp_path):
    """val_fraction is ignored when the folder has val/: the runs pick their checkpoint on it, so
    the study reports it and chooses on it; a run without any validation split reports none."""
    from conftest import write_png_folder

    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        write_png_folder(tmp_path / "ds" / split, n=n, side=8)
    folder = {"name": f"imagefolder:{tmp_path / 'ds'}", "val_fraction": 0.0}
    cells = [{"label": "folder", "set": {"data": folder}}, {"label": "noval", "set": {"data.val_fraction": 0.0}}]
    path = write_study(tmp_path, grid={}, cells=cells, seeds=1, base={**BASE, "train": {**BASE["train"], "epochs": 1}})
    result = st.run_study(path, out=tmp_path / "o")
    rows = {r["cell"]: r for r in result.rows}
    assert rows["folder"]["val_acc_mean"] is not None and result.best == "folder"
    assert (tmp_path / "o" / "folder" / "seed0" / "eval" / "val" / "metrics.json").is_file()
    assert rows["noval"]["val_acc_mean"] is None and not (tmp_path / "o" / "noval" / "seed0" / "eval" / "val").exists()


def test_each_seed_of_a_cell_counts_up_from_the_base_seed():
    spec = st.StudySpec("s", {"seed": 7, "model": {"name": "resnet8"}}, grid={"model.norm": ["bn"]})
    cell = st.expand_cells(spec)[0]
    assert [st.cell_config(spec, cell, seed_index=k).seed for k in range(3)] == [7, 8, 9]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_to_a_parallel_study_starts_no_queued_cell(tmp_path, sig):
    """--jobs 2 with 4 cells: a signal to the study process alone (not its process group) stops
    the two running cells at a resumable checkpoint, and the two queued cells never start (they
    used to start and train to the end after Ctrl-C)."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    base = {**BASE, "train": {**BASE["train"], "epochs": 400}}  # minutes if not stopped
    path = tmp_path / "study-long.yaml"
    path.write_text(yaml.safe_dump({"name": "long", "base": base, "grid": {"model.norm": ["bn", "gn"]}, "seeds": 2}))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "study", str(path), "--jobs", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len([m for m in out.glob("*/seed*/metrics.csv") if len(m.read_text().splitlines()) > 2]) < 2:
            time.sleep(0.2)
        started = sorted(p.parent for p in out.glob("*/seed*/study-cell.log"))
        assert len(started) == 2, started
        os.kill(proc.pid, getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    finally:  # the whole process group: no cell may outlive the test, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), err  # 128 + the signal
    assert sorted(p.parent for p in out.glob("*/seed*/study-cell.log")) == started  # no queued cell started
    for run in started:
        meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
        assert meta["epoch"] < 400  # stopped early, at a checkpoint a rerun resumes
        assert "SIGINT received: saved" in (run / "study-cell.log").read_text()


def test_how_a_cell_reads_its_images_does_not_make_it_another_cell(tmp_path):
    # streaming, the cache and the decode processes change how images are read, not the run
    from resnetlab.config import load_config, save_config

    save_config(load_config(None, ["data.num_workers=0", "data.cache=true", "data.stream_threshold_gb=5"]), tmp_path / "config.yaml")
    assert st.cell_status(tmp_path, load_config(None)) == "fresh"
    with pytest.raises(ResnetlabError, match=r"another config \(data.val_fraction: 0.1 \(folder\) vs 0.2 \(study\)\)"):
        st.cell_status(tmp_path, load_config(None, ["data.val_fraction=0.2"]))


def test_curves_of_a_study_whose_every_run_failed_warn_nothing():
    # matplotlib's "No artists with labels found to put in legend" came out when no run had a curve
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = st._curves_figure([("norm=bn", [{"epoch": [], "train_loss": [], "val_acc": [], "train_acc": [], "val_loss": []}])], "t")
    assert png.startswith(b"\x89PNG")


def test_a_missing_pretrained_source_is_refused_before_any_cell_trains(tmp_path, monkeypatch):
    # study-transfer.yaml names runs/fmnist-pretrain: without it the study trained its scratch cells,
    # then failed the pretrained ones at the end (and the smoke check of the recipe never got there)
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path, grid={"model.pretrained": [None, "runs/source"]}, seeds=1)
    with pytest.raises(ConfigError, match=r"cell pretrained=runs-source: model.pretrained 'runs/source' does not exist .*relative to the folder"):
        st.run_study(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing trained, no folder left behind
    # a torchvision name is not a path: it is looked up when its cell starts
    spec = st.load_study(write_study(tmp_path, name="tv", grid={"model.pretrained": ["torchvision:IMAGENET1K_V1"]}))
    cell = st.expand_cells(spec)[0]
    st._check_pretrained_exists(spec, cell, st.cell_config(spec, cell))


def test_smoke_study_uses_the_sources_smoke_run_when_the_source_run_is_missing(tmp_path, monkeypatch):
    # smoke_fallback swaps a missing source run (runs/source) for its --smoke run (runs/source-smoke),
    # but the study copied only the data section of the fallback back: study-transfer --smoke failed
    from resnetlab.config import config_from_dict
    from resnetlab.trainer import train

    monkeypatch.chdir(tmp_path)
    train(config_from_dict({**BASE, "train": {**BASE["train"], "epochs": 1}}), tmp_path / "runs" / "source-smoke", progress=False)
    path = write_study(tmp_path, grid={"model.pretrained": ["runs/source"]}, seeds=1)
    result = st.run_study(path, out=tmp_path / "out", smoke=True)
    assert result.ran == ["pretrained=runs-source/seed0"]
    cfg = yaml.safe_load((tmp_path / "out" / "pretrained=runs-source" / "seed0" / "config.yaml").read_text())
    assert cfg["model"]["pretrained"] == "runs/source-smoke"


def test_smoke_study_of_a_small_image_folder_fits_each_cells_batch_to_it(tmp_path):
    # `train --smoke` fits the batch to a small folder's training split; a study's cells took only
    # the fallback's data section and failed: "train.batch_size=64 is larger than the training split"
    from conftest import write_png_folder

    data = write_png_folder(tmp_path / "photos", n=30, side=8, classes=3)
    path = tmp_path / "study-bs.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bs", "seeds": 1,
        "base": {"model": {"name": "resnet8"}, "data": {"name": data, "image_size": 8, "val_fraction": 0.2},
                 "train": {"epochs": 1}, "output": {"report": False, "tensorboard": False}},
        "grid": {"train.batch_size": [8, 128]},
    }))  # fmt: skip
    st.run_study(path, out=tmp_path / "o", smoke=True)
    rows = list(csv.DictReader(open(tmp_path / "o" / "results.csv")))
    assert [r["n"] for r in rows] == ["1", "1"]  # both cells trained
    sizes = [yaml.safe_load((tmp_path / "o" / f"batch_size={b}" / "seed0" / "config.yaml").read_text())["train"]["batch_size"]
             for b in (8, 128)]  # fmt: skip
    meta = json.loads((tmp_path / "o" / "batch_size=128" / "seed0" / "checkpoints" / "best" / "meta.json").read_text())
    assert sizes == [8, sum(meta["class_counts"]["train"])] and sizes[1] < 64  # the large batch fitted to the training split


def test_summary_of_runs_with_an_infinite_value_has_no_std():
    """statistics.stdev fails on inf ("'float' object has no attribute 'numerator'"): a study of
    runs written with val_loss=inf (before the trainer called that a divergence) wrote no report."""
    cell = st.Cell("a", {}, {"cell": "a"})
    row = st.summarize([cell], {("a", 0): {"val_loss": float("inf"), "val_acc": 0.1},
                                ("a", 1): {"val_loss": 0.5, "val_acc": 0.3}})[0]
    assert row["val_loss_mean"] == float("inf") and row["val_loss_std"] is None
    assert row["val_acc_mean"] == pytest.approx(0.2) and row["val_acc_std"] == pytest.approx(0.1414, abs=1e-4)


def test_a_damaged_evaluation_of_a_finished_cell_is_made_again(finished, tmp_path, caplog):
    """A cut eval/val/metrics.json made the rerun fail with json's "Expecting property name ..."
    naming no file; it is evaluated again from the cell's checkpoint."""
    import shutil

    path, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference.out_dir, out)
    damaged = out / "norm=bn" / "seed0" / "eval" / "val" / "metrics.json"
    good = json.loads(damaged.read_text())
    damaged.write_text("{bad")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        result = st.run_study(path, out=out)
    assert f"{damaged} is damaged: evaluating the val split again" in caplog.text
    assert result.ran == [] and json.loads(damaged.read_text())["accuracy"] == good["accuracy"]
    assert table(out / "results.csv") == table(reference.out_dir / "results.csv")
    with pytest.raises(ResnetlabError, match=r"metrics.json is damaged \(Expecting"):  # read where it is not remade
        damaged.write_text("{bad")
        st.read_run(damaged.parents[2])


def test_a_cell_whose_config_yaml_is_gone_is_resumed_not_trained_again(finished, tmp_path):
    """It was taken as "fresh": the finished cell was trained again from scratch over its checkpoints."""
    import shutil

    path, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference.out_dir, out)
    cell = out / "norm=gn" / "seed1"
    weights = (cell / "checkpoints" / "best" / "model.safetensors").read_bytes()
    (cell / "config.yaml").unlink()
    spec = st.load_study(path)
    cfg = st.cell_config(spec, next(c for c in st.expand_cells(spec) if c.label == "norm=gn"), seed_index=1)
    assert st.cell_status(cell, cfg) == "resume"
    result = st.run_study(path, out=out)
    assert result.ran == ["norm=gn/seed1"] and (cell / "config.yaml").is_file()
    assert (cell / "checkpoints" / "best" / "model.safetensors").read_bytes() == weights  # not retrained
    assert table(out / "results.csv") == table(reference.out_dir / "results.csv")


def test_test_accuracy_figure_draws_points_on_a_zoomed_axis_that_says_so(monkeypatch):
    """Bars on an axis starting near 80% (5 in a transfer study) drew a 10.0 vs 10.6 gap as a bar
    twice as tall; the title was cut ('... on validation accur')."""
    figs = []
    monkeypatch.setattr(st, "_png", lambda fig: figs.append(fig) or b"")
    rows = [{"cell": "pretrained=torchvision-IMAGENET1K_V1,freeze_until=layer3", "test_acc_mean": 0.100, "test_acc_std": 0.002},
            {"cell": "scratch", "test_acc_mean": 0.106, "test_acc_std": None},
            {"cell": "failed", "test_acc_mean": None, "test_acc_std": None}]  # fmt: skip
    st._bar_figure(rows, "scratch")
    ax = figs[0].axes[0]
    assert not [p for p in ax.patches if type(p).__name__ == "Rectangle"]  # no bars
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(line.get_ydata()) for line in points] == [[pytest.approx(10.0)], [pytest.approx(10.6)]]
    assert points[1].get_color() == "tab:orange"
    lo, hi = ax.get_ylim()
    assert 0 < lo < 9.8 and 10.8 < hi < 12  # zoomed, and the title says the axis does not start at 0
    title = figs[0]._suptitle
    assert "the axis does not start at 0" in title.get_text()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figs[0])
    canvas.draw()
    title = title.get_window_extent(canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= figs[0].bbox.width  # the whole title is inside the figure
    for label in ax.get_xticklabels():  # and every cell's label (one axis per line)
        assert label.get_window_extent(canvas.get_renderer()).x0 >= 0, label.get_text()


def test_study_tables_give_each_cells_parameters_and_accuracy_and_f1_by_split(finished):
    """Report 002's table has #params per depth; report 001's gives accuracy, micro and macro F1 on
    train, val and test: study.md had no parameter count and only some of the F1 scores."""
    from resnetlab import create_model
    from resnetlab.models.profile import count_params

    path, result = finished
    rows = {r["cell"]: r for r in csv.DictReader(open(result.out_dir / "results.csv"))}
    spec = st.load_study(path)
    md = (result.out_dir / "study.md").read_text()
    for cell in st.expand_cells(spec):
        cfg = st.cell_config(spec, cell)
        expect = count_params(create_model(cfg.model.name, **cfg.model.arch_args(num_classes=3, in_channels=1)))  # synthetic:1x8x8:3
        assert float(rows[cell.label]["params_mean"]) == expect
        line = next(x for x in md.splitlines() if x.startswith(f"| {cell.label}"))
        assert line.split(" | ")[2] == f"{expect:,}"
        split_line = [x for x in md.splitlines() if x.startswith(f"| {cell.label}")][1]
        r = rows[cell.label]
        assert split_line.split(" | ")[1:] == [
            f"{float(r[f'{s}_{m}_mean']) * 100:.2f} ± {float(r[f'{s}_{m}_std']) * 100:.2f}" + (" |" if (s, m) == ("test", "f1_macro") else "")
            for s in ("train", "val", "test") for m in ("acc", "f1_micro", "f1_macro")]  # fmt: skip
    assert "| cell | train acc % | train F1 micro % | train F1 macro % | val acc % |" in md
    html_text = (result.out_dir / "study.html").read_text()
    assert "<th>train F1 micro %</th>" in html_text and "<th>params</th>" in html_text


def test_curves_of_one_epoch_runs_have_whole_epoch_ticks(monkeypatch):
    """With one epoch, MaxNLocator(integer=True) fell back to ticks 0.945 ... 1.065."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figs = []
    monkeypatch.setattr(st, "_png", lambda fig: figs.append(fig) or b"")
    curve = {"epoch": [1.0], "val_acc": [0.5], "train_loss": [1.0], "val_loss": [0.9], "train_acc": [0.4]}
    st._curves_figure([("a", [curve])], "all cells")
    FigureCanvasAgg(figs[0]).draw()
    for ax in figs[0].axes:
        visible = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert visible == [1.0], (ax.get_title(), list(ax.get_xticks()))


def test_each_cells_report_is_built_once(tmp_path, monkeypatch):
    """The study scored val and train after the trainer had built the run's report, then built it
    again to show them: the trainer now scores every split the study needs, once."""
    import resnetlab.report as report

    built = []
    real = report.build_report
    monkeypatch.setattr(report, "build_report", lambda run, *a, **k: built.append(Path(run)) or real(run, *a, **k))
    path = write_study(tmp_path, name="once", grid={"model.norm": ["bn"]}, seeds=1,
                       base={**BASE, "output": {"report": True, "tensorboard": False}})
    result = st.run_study(path, out=tmp_path / "o")
    run = tmp_path / "o" / "norm=bn" / "seed0"
    assert built == [run] and result.ran == ["norm=bn/seed0"]
    for split in ("test", "val", "train"):
        assert (run / "eval" / split / "metrics.json").is_file()
    assert "val" in (run / "report.md").read_text()
