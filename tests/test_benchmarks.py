"""The scripts in benchmarks/ run end to end at a tiny size and print what docs/BENCHMARKS.md quotes.

The figures themselves are not asserted (timings belong to the benchmarks, not to tests); what is
asserted is that each script runs on the project's current code, prints or writes its rows, and
names the command that reproduces it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_quick_writes_train_and_infer_rows(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    assert _script("bench_cpu").main(["--quick", "--only", "train:channels_last", "--only", "infer:folded", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows["roof_gflops"] > 0
    rows = rows["results"]
    by = {(r["kind"], r["variant"]): r for r in rows}
    train, infer = by[("train", "channels_last")], by[("infer", "folded")]
    assert train["images_per_s"] > 0 and 0 < train["roof_fraction"] < 2, train
    assert infer["images_per_s"] > 0, infer
    assert "resnetlab bench" in train["command"]
    assert "GFLOP/s" in capsys.readouterr().out


@needs_fmnist
def test_bench_epoch_runs_both_loops_and_the_bare_step(tmp_path, capsys):
    out = tmp_path / "epoch.json"
    from resnetlab.runtime import cpu_has_bf16

    argv = ["--images", "1024", "--threads", "1", "--workers", "0", "--bare-steps", "1", "--bf16", "--json", str(out)]
    assert _script("bench_epoch").main(argv) == 0
    r = json.loads(out.read_text())
    assert r["conventional"]["images"] == 1024  # the tutorial loop keeps the last partial batch
    assert r["resnetlab"]["images"] == 1024  # 8 full batches of 128
    assert r["bare_step"]["images_per_s"] > 0 and r["speedup"] > 0
    text = capsys.readouterr().out
    assert "python benchmarks/bench_epoch.py --images 1024" in text and "bare training step" in text
    if cpu_has_bf16():  # the opt-in bf16 row: its own run of the trainer, the same images
        assert r["resnetlab_bf16"]["images"] == 1024 and r["resnetlab_bf16"]["speedup"] > 0
        assert "train.amp=bf16, opt-in bf16 autocast" in text
    else:
        assert r["resnetlab_bf16"] is None and "train.amp=bf16: skipped (this CPU has no bf16 units" in text


def test_bench_malloc_measures_both_variants_in_child_processes(capsys):
    assert _script("bench_malloc").main(["--steps", "1", "--threads", "1", "--model", "speedrun"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("speedrun")]
    assert [ln.split()[1] for ln in lines] == ["default", "tuned"]
    assert all("faults/step" in ln for ln in lines)


def test_bench_wait_policy_runs_each_cell_in_a_child_beside_its_busy_processes(capsys):
    argv = ["--steps", "1", "--threads", "1", "--batch-size", "8", "--hogs", "0", "1", "--policy", "PASSIVE", "--policy", "spin:100"]
    assert _script("bench_wait_policy").main(argv) == 0
    text = capsys.readouterr().out
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("hogs")]
    assert [(r[1], r[3]) for r in rows] == [("0", "PASSIVE"), ("0", "spin:100"), ("1", "PASSIVE"), ("1", "spin:100")]
    assert all(float(r[4]) > 0 for r in rows)
    assert "$ python benchmarks/bench_wait_policy.py --model speedrun --steps 1 --threads 1 --batch-size 8 --hogs 0 1 --policy PASSIVE --policy spin:100" in text
    with pytest.raises(SystemExit):
        _script("bench_wait_policy").main(["--policy", "spin:many"])
    assert "use one of unset, PASSIVE, ACTIVE or spin:K" in capsys.readouterr().err


def test_profile_train_step_splits_the_step_into_categories(capsys):
    assert _script("profile_train_step").main(["--steps", "1", "--batch-size", "8", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith(("conv forward", "conv backward", "batch norm", "relu", "optimizer"))]
    assert len(rows) == 5 and all("%" in ln for ln in rows), text
    assert "if only the convolutions took time" in text


@needs_fmnist
def test_time_to_accuracy_reads_the_test_accuracy_of_each_seed(tmp_path, capsys):
    exe = Path(sys.executable).with_name("resnetlab")
    if not exe.exists():
        pytest.skip("the resnetlab console script is not installed next to this Python")
    argv = [str(ROOT / "recipes" / "fmnist-speedrun.yaml"), "--seeds", "0", "--out-root", str(tmp_path),
            "--set", "train.iterations=2", "--set", "data.subset=600", "--set", "train.num_threads=1"]
    assert _script("time_to_accuracy").main(argv) == 0
    text = capsys.readouterr().out
    metrics = json.loads((tmp_path / "fmnist-speedrun-s0" / "eval" / "test" / "metrics.json").read_text())
    assert f"seed 0: test accuracy {metrics['accuracy']:.4f}" in text
    assert "fmnist-speedrun: n=1 test accuracy mean" in text


def test_probe_transfer_control_trains_the_control_cell_and_counts_live_head_units(capsys):
    assert _script("probe_transfer_control").main(["--seeds", "0", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"seed 0: last train loss [0-9.]+; pooled features mean [0-9.]+ std [0-9.]+; head hidden units active "
                     r"on any of 180 training images: \d+ of 64; logit std across images [0-9.]+", out), out
    assert "command: python benchmarks/probe_transfer_control.py --study recipes/study-transfer.yaml --seeds 0 --epochs 1" in out


def test_bench_imagefolder_memory_measures_both_modes_in_child_processes(tmp_path, capsys):
    assert _script("bench_imagefolder_memory").main(["--files", "40", "--size", "32", "--folder", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"command: python benchmarks/bench_imagefolder_memory.py --files 40 --size 32 --folder {tmp_path / 'p'}"
    assert out[1].startswith("in memory (0 MB as uint8, in_memory=True): over the imports, load peak ")
    assert out[2].startswith("streamed (0 MB as uint8, in_memory=False)") and "after one epoch" in out[2]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["circle", "hstripes", "square", "vstripes"]
