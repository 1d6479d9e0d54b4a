"""torchrun: 2 CPU processes (gloo) train one run folder with identical weights on both ranks."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab.checkpoint import load_checkpoint


# head_only: epoch 1 trains the head only, epoch 2 the whole net; DDP must reduce the body's
# gradients in epoch 2 too (it did not when the wrapper was built around a frozen body)
@pytest.mark.timeout(600)
# sync_bn: torch's nn.SyncBatchNorm is GPU-only, so on CPU the default bn-torch layers become the
# hand-written BatchNorm with statistics over both processes (tests/test_norms.py checks the math)
@pytest.mark.parametrize(
    "extra", [[], ["--set", "train.head_only_epochs=1"], ["--set", "train.sync_bn=true"]], ids=["plain", "head_only", "sync_bn"]
)
def test_torchrun_two_cpu_ranks(tmp_path, extra):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    out = tmp_path / "ddp run"  # a space in the path on purpose
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}  # torchelastic_* dirs stay in tmp_path
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "resnetlab", "train",
           "--model", "resnet8", "--data", "digits", "--epochs", "2", "--batch-size", "32",
           "--set", "output.report=false", "--set", "train.num_threads=1", "--set", "train.device=cpu", "--out", str(out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "weights identical on all 2 ranks" in log
    assert ("sync_bn: batch statistics over 2 processes in 7 layers" in log) == ("train.sync_bn=true" in extra)
    assert log.count("run: ") == 1  # only rank 0 reports
    # one run folder, written once, by rank 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # 1,293 training images sharded over 2 ranks, batch 32 per rank, partial batches dropped: 20 steps
    assert [r["step"] for r in rows] == ["20", "40"]
    assert float(rows[-1]["val_acc"]) > 0.8 and 0 <= float(rows[-1]["train_acc"]) <= 1
    ck = load_checkpoint(out)
    assert ck.meta["epoch"] == 2
    assert (out / "eval" / "test" / "metrics.json").exists()


@pytest.mark.timeout(300)
def test_a_batch_larger_than_each_ranks_share_is_refused(tmp_path):
    """300 images over 2 ranks is 135 training images each (after the validation hold-out):
    batch 256 would give every rank 0 steps (the last partial batch is dropped) and train nothing."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "resnetlab", "train", "--model", "resnet8",
           "--data", "digits", "--subset", "300", "--batch-size", "256", "--epochs", "1", "--set", "train.device=cpu", "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    assert "train.batch_size=256 per process is larger than each of the 2 processes' share of the training split (135 images)" in proc.stderr
    assert not (tmp_path / "r").exists()
