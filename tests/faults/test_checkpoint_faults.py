"""Broken checkpoints, full disks, diverging losses and malicious pickles, run through the CLI
(``resnetlab.cli.main``) in this process: each ends in one ``error:`` line or a clear warning,
and whatever good checkpoint was on disk before is still there and still resumes exactly."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab import checkpoint as ckpt
from resnetlab.cli import main

from ._helpers import TINY, assert_checkpoints_readable, assert_same_weights, metric_rows, set_args


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _equals_reference(run: Path, reference_run: Path) -> None:
    assert_checkpoints_readable(run)
    assert_same_weights(run / "checkpoints" / "last", reference_run / "checkpoints" / "last")
    assert metric_rows(run / "metrics.csv") == metric_rows(reference_run / "metrics.csv")


# -- an unreadable `last`: resume falls back to `last.prev` and says so -------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


CORRUPTIONS = {
    "truncated weights": lambda d: _truncate(d / ckpt.WEIGHTS),
    "garbage weights": lambda d: (d / ckpt.WEIGHTS).write_bytes(os.urandom(4096)),
    "truncated trainer state": lambda d: _truncate(d / ckpt.STATE),
    "zero-byte trainer state": lambda d: (d / ckpt.STATE).write_bytes(b""),
    "garbage meta.json": lambda d: (d / ckpt.META).write_text("{not json"),
    "foreign meta.json": lambda d: (d / ckpt.META).write_text('{"format": "someone-else/3"}'),
    "missing weights": lambda d: (d / ckpt.WEIGHTS).unlink(),
    "state of another shape": lambda d: torch.save({"epoch": "x"}, d / ckpt.STATE),
}


@pytest.mark.parametrize(
    "corruption",
    [pytest.param(k, marks=[] if k in ("truncated weights", "state of another shape") else pytest.mark.slow) for k in CORRUPTIONS],
)
def test_unreadable_last_falls_back_to_last_prev_and_says_so(tmp_path, reference_run, capsys, corruption):
    run = _copy_run(reference_run, tmp_path / "run")
    last = run / "checkpoints" / "last"
    CORRUPTIONS[corruption](last)
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {last} is unreadable; resumed from the previous one, {run / 'checkpoints' / 'last.prev'}" in err
    assert "resuming" in err and "epoch 3 step 0" in err  # last.prev holds epoch 2
    # Epoch 3 was trained again from last.prev: the result is the uninterrupted run's.
    _equals_reference(run, reference_run)
    # The unreadable folder is kept for inspection, out of the rotation.
    assert (run / "checkpoints" / "last.unreadable").is_dir()


def test_no_usable_checkpoint_is_refused_and_nothing_is_changed(tmp_path, reference_run, capsys):
    run = _copy_run(reference_run, tmp_path / "run")
    for name in ("last", "last.prev"):
        _truncate(run / "checkpoints" / name / ckpt.WEIGHTS)
    before = _tree_digest(run)
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: no usable checkpoint in {run / 'checkpoints'}") and "corrupt or truncated" in line
    assert _tree_digest(run) == before


# -- a crafted pickle: refused, and its code never runs -------------------------------------------
class _Exploit:
    """Unpickling this calls os.system(cmd): what a malicious trainer_state.pt would do."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _craft(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "payload": _Exploit(f"touch {marker}")}, path)


def test_crafted_pickle_in_trainer_state_is_refused_and_never_runs(tmp_path, reference_run, capsys):
    marker = tmp_path / "PWNED"
    # Negative control: the file really runs code when unpickled without weights_only.
    probe = tmp_path / "probe.pt"
    _craft(probe, marker)
    torch.load(probe, weights_only=False)  # runs `touch marker` (harmless, inside tmp_path)
    assert marker.exists()
    marker.unlink()

    run = _copy_run(reference_run, tmp_path / "run")
    for name in ("last", "last.prev"):
        _craft(run / "checkpoints" / name / ckpt.STATE, marker)
    before = _tree_digest(run)
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no usable checkpoint" in line and "corrupt or unsafe, refused" in line
    assert not marker.exists()
    assert _tree_digest(run) == before
    # Evaluating / predicting from the run reads only safetensors + JSON: also no code runs.
    assert ckpt.load_checkpoint(run).meta["epoch"] >= 1
    assert not marker.exists()


def test_crafted_pickle_only_in_last_falls_back_without_running_it(tmp_path, reference_run, capsys):
    marker = tmp_path / "PWNED"
    run = _copy_run(reference_run, tmp_path / "run")
    _craft(run / "checkpoints" / "last" / ckpt.STATE, marker)
    assert main(["train", "--resume", str(run)]) == 0
    assert "unreadable; resumed from the previous one" in capsys.readouterr().err
    assert not marker.exists()
    _equals_reference(run, reference_run)


# -- a full disk while saving ----------------------------------------------------------------------
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["_write_file", "os.replace"])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, reference_run, capsys, monkeypatch, where):
    """The first epoch's checkpoints are written; the second epoch's `last` save fails."""
    run = tmp_path / "run"
    orig_write, orig_replace = ckpt._write_file, os.replace
    calls = {"n": 0}

    def failing_write(path, data):
        if "/.last.tmp-" in str(path) and (run / "checkpoints" / "last").exists():
            _enospc()
        return orig_write(path, data)

    def failing_replace(src, dst, *a, **k):
        # The second rename of a rotation: `last` already moved to `last.prev`.
        ck = run / "checkpoints"
        if ".last.tmp-" in str(src) and not (ck / "last").exists() and (ck / "last.prev").exists():
            calls["n"] += 1
            _enospc()
        return orig_replace(src, dst, *a, **k)

    if where == "_write_file":
        monkeypatch.setattr(ckpt, "_write_file", failing_write)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    assert main(["train", "-q", "--out", str(run), *set_args(TINY)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: cannot write checkpoint {run / 'checkpoints' / 'last'}: No space left on device"
    if where == "os.replace":
        assert calls["n"] == 1
    # The epoch-1 checkpoint is still `last`, complete, and no temporary folder is left.
    assert "last" in assert_checkpoints_readable(run)
    assert ckpt.load_trainer_state(run / "checkpoints" / "last")["epoch"] == 1
    assert not list((run / "checkpoints").glob(".*tmp-*"))
    monkeypatch.undo()
    # With space again, the run resumes and ends exactly like the uninterrupted one.
    assert main(["train", "-q", "--resume", str(run)]) == 0
    _equals_reference(run, reference_run)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
def test_real_full_disk_on_a_small_tmpfs(tmp_path, reference_run):
    """A real ENOSPC: the run goes to a 1.5 MB tmpfs (about two checkpoints' worth)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1500k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        run = disk / "run"
        env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        r = subprocess.run([sys.executable, "-m", "resnetlab", "train", "-q", "--out", str(run), *set_args(TINY)],
                           capture_output=True, text=True, env=env)  # fmt: skip
        assert r.returncode == 2, r.stderr
        line = _one_error_line(r.stderr)
        assert "No space left on device" in line, line
        names = assert_checkpoints_readable(run)  # every visible checkpoint loads
        assert any(n.startswith("last") for n in names), names
        saved = shutil.copytree(run, tmp_path / "moved")  # the user frees space / moves the run
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    from resnetlab.trainer import resume

    resume(saved, progress=False)
    _equals_reference(saved, reference_run)


# -- NaN / inf loss -------------------------------------------------------------------------------
def test_nan_loss_names_epoch_and_step_and_the_last_good_checkpoint_resumes(tmp_path, reference_run, capsys, monkeypatch):
    """The 11th training loss (epoch 2, step 3 of 8) is NaN; the check runs at the epoch end."""
    real = torch.nn.CrossEntropyLoss
    calls = {"n": 0}

    class NaNAt11(real):
        def forward(self, input, target):
            calls["n"] += 1
            loss = super().forward(input, target)
            return loss * float("nan") if calls["n"] == 11 else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNAt11)
    run = tmp_path / "run"
    assert main(["train", "-q", "--out", str(run), *set_args(TINY)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: loss became nan at epoch 2 step 3;"), line
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last'}" in line
    state = ckpt.load_trainer_state(run / "checkpoints" / "last")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt.load_weights(run / "checkpoints" / "last").values())
    monkeypatch.undo()
    assert main(["train", "-q", "--resume", str(run)]) == 0
    _equals_reference(run, reference_run)


def test_exploding_learning_rate_stops_with_epoch_and_step(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "-q", "--out", str(run), *set_args(TINY), "--set", "optim.lr=1e6", "--set", "train.epochs=1",
               "--set", "model.dropout=0"])  # fmt: skip
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: loss became ") and " at epoch 1 step " in line and "optim.lr=1000000.0" in line, line
    assert line.endswith("no checkpoint was saved before it"), line  # it named a last/ that did not exist
    assert not (run / "checkpoints" / "last").exists()  # nothing diverged was saved


@pytest.mark.slow
def test_same_config_and_seed_twice_gives_identical_metrics(tmp_path, reference_run):
    """Two processes (the reference in-process, this one via ``python -m resnetlab``)."""
    run = tmp_path / "again"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "-m", "resnetlab", "train", "-q", "--out", str(run), *set_args(TINY)],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert metric_rows(run / "metrics.csv") == metric_rows(reference_run / "metrics.csv")
    assert_same_weights(run / "checkpoints" / "last", reference_run / "checkpoints" / "last")
    r = subprocess.run([sys.executable, "-m", "resnetlab", "train", "-q", "--out", str(tmp_path / "seed1"), *set_args(TINY),
                        "--set", "seed=1", "--set", "train.epochs=1"], capture_output=True, text=True, env=env)  # fmt: skip
    assert metric_rows(tmp_path / "seed1" / "metrics.csv")[0] != metric_rows(run / "metrics.csv")[0]  # the seed matters


def test_overwrite_starts_a_clean_run_but_only_once_the_config_is_good(tmp_path, capsys):
    """--overwrite used to append to the old metrics.csv and rotate the old run's checkpoint
    into last.prev, where a resume fallback could pick it up as this run's."""
    run = tmp_path / "run"
    one = [*set_args(TINY), "--set", "train.epochs=1"]
    assert main(["train", "-q", "--out", str(run), *one]) == 0
    assert main(["train", "-q", "--out", str(run), "--overwrite", *one, "--set", "model.norm=bnn"]) == 2
    assert len(metric_rows(run / "metrics.csv")) == 1 and (run / "checkpoints" / "last").is_dir()  # bad config: kept
    # the old run's test result, report and explanations must not survive as the new run's
    # (this run does not evaluate or report); a file the user put there stays
    stale = [run / "eval" / "test" / "metrics.json", run / "report.html", run / "report.md", run / "explain" / "summary.json"]
    for path in stale + [run / "notes.txt"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    assert main(["train", "-q", "--out", str(run), "--overwrite", *one, "--set", "seed=1"]) == 0
    assert len(metric_rows(run / "metrics.csv")) == 1
    assert not (run / "checkpoints" / "last.prev").exists()
    assert ckpt.load_meta(run / "checkpoints" / "last")["config"]["seed"] == 1
    assert not any(p.exists() for p in stale) and not (run / "eval").exists()
    assert (run / "notes.txt").read_text() == "old"


def test_out_into_a_non_empty_folder_that_holds_no_run_is_refused(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("important")
    one = [*set_args(TINY), "--set", "train.epochs=1"]
    assert main(["train", "-q", "--out", str(folder), *one]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and holds no run" in err
    assert (folder / "config.yaml").read_text() == "important"  # nothing lost
