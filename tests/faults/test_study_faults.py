"""A study killed (kill -9) mid-grid and run again: the finished cell is kept as it was, the
interrupted one resumes, the rest run, and the comparison equals an uninterrupted study's.
Also ``--jobs 2`` (one subprocess per cell) against the sequential study: same table."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import yaml

from resnetlab.cli import main

from ._helpers import assert_checkpoints_readable, assert_same_weights, kill9, start_victim, wait_for

BASE = {
    "seed": 0,
    "model": {"name": "resnet8", "dropout": 0.2},
    "data": {"name": "digits", "subset": 320, "val_fraction": 0.2},
    "augment": ["crop:padding=1"],
    "train": {"epochs": 2, "batch_size": 32, "num_threads": 1},
    "output": {"report": False, "tensorboard": False},
}
CELLS = ["optim.lr=0.02", "optim.lr=0.05", "optim.lr=0.1"]
TIMING = ("train_time_s", "images_per_s")


def _study(tmp: Path) -> Path:
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump({"name": "faults", "base": BASE, "grid": {"optim.lr": [0.02, 0.05, 0.1]}, "seeds": 1}))
    return p


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study-ref")
    out = tmp / "ref"
    assert main(["study", str(_study(tmp)), "--out", str(out), "-q"]) == 0
    return out


def _cell_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/seed0"))


@pytest.mark.slow
def test_study_killed_mid_grid_keeps_finished_cells_and_ends_like_an_uninterrupted_one(tmp_path, reference_study, capsys):
    study, out, log = _study(tmp_path), tmp_path / "study", tmp_path / "events.log"
    proc = start_victim(["study", str(study), "--out", str(out), "-q"], log)
    # The second cell, epoch 2, step 4 of 8: cell 1 is finished, cell 2 has an epoch-1 checkpoint.
    hits = []
    i = wait_for(proc, log, lambda line: line == "step 1 3" and (hits.append(line) or len(hits) == 2))
    assert i is not None, proc.communicate()
    kill9(proc)
    cells = _cell_dirs(out)
    assert len(cells) == 2, cells  # the third cell never started
    first, second = (c / "seed0" for c in cells)
    assert (first / "eval" / "test" / "metrics.json").is_file()
    assert not (second / "eval" / "test" / "metrics.json").exists()
    assert_checkpoints_readable(second)
    kept = _digest(first)

    assert main(["study", str(study), "--out", str(out)]) == 0
    report = capsys.readouterr()
    assert "(2 runs trained, 1 already finished)" in report.out
    assert _digest(first) == kept  # the finished cell was not touched
    assert _table(out) == _table(reference_study)
    for a, b in zip(_cell_dirs(out), _cell_dirs(reference_study)):
        assert a.name == b.name
        assert_same_weights(a / "seed0" / "checkpoints" / "last", b / "seed0" / "checkpoints" / "last")


@pytest.mark.slow
def test_study_with_two_jobs_equals_the_sequential_study(tmp_path, reference_study):
    out = tmp_path / "jobs2"
    assert main(["study", str(_study(tmp_path)), "--out", str(out), "--jobs", "2", "-q"]) == 0
    assert _table(out) == _table(reference_study)
    for a, b in zip(_cell_dirs(out), _cell_dirs(reference_study)):
        assert_same_weights(a / "seed0" / "checkpoints" / "best", b / "seed0" / "checkpoints" / "best")
