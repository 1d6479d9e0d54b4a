"""The main job end to end on real data: the `make demo` recipe and one Fashion-MNIST epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_fmnist

from resnetlab.cli import main

ROOT = Path(__file__).parents[1]


def test_demo_recipe_reaches_97_percent_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["train", "--config", str(ROOT / "recipes" / "demo-digits.yaml"), "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.97, metrics["accuracy"]
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Confusion" in html


def test_train_prints_the_train_split_accuracy_with_evaluate_train(tmp_path, capsys):
    out = tmp_path / "tr"
    rc = main(["train", "--config", str(ROOT / "recipes" / "demo-digits.yaml"), "--out", str(out), "--quiet",
               "--set", "train.epochs=1", "--set", "output.report=false", "--set", "output.evaluate_train=true"])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert rc == 0
    train = json.loads((out / "eval" / "train" / "metrics.json").read_text())
    test = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert f"train accuracy: {train['accuracy']:.4f}  (best checkpoint, no augmentation)" in printed
    assert printed.index(f"train accuracy: {train['accuracy']:.4f}  (best checkpoint, no augmentation)") < printed.index(
        f"test accuracy: {test['accuracy']:.4f}  macro F1: {test['f1_macro']:.4f}")
    assert train["num_samples"] + test["num_samples"] < 1797 and train["split"] == "train"


@needs_fmnist
def test_one_epoch_of_real_fashion_mnist_reaches_88_percent(tmp_path, capsys):
    out = tmp_path / "fmnist"
    rc = main([
        "train", "--config", str(ROOT / "recipes" / "resnet14-fmnist-1epoch.yaml"), "--out", str(out), "--quiet",
        "--set", "output.report=false",
    ])  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert sum(r["support"] for r in metrics["per_class"]) == 10000  # the whole real test split
    assert metrics["accuracy"] >= 0.88, metrics["accuracy"]
