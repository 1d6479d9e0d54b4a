"""Shared pieces of the fault tests: the tiny run they all use, a victim subprocess with
event hooks (``_victim.py``), and checks that every checkpoint on disk is readable."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnetlab import checkpoint as ckpt
from resnetlab.trainer import TIMING_COLUMNS

VICTIM = Path(__file__).with_name("_victim.py")

# 320 digits, 20 % validation -> 256 training images / batch 32 = 8 steps per epoch. Dropout and
# a random crop make every step depend on the RNG, so an inexact resume shows in the weights.
TINY = [
    "model.name=resnet8",
    "data.name=digits",
    "data.subset=320",
    "data.val_fraction=0.2",
    "train.batch_size=32",
    "train.epochs=3",
    "train.num_threads=1",
    "train.device=cpu",  # resumes are compared bit for bit: CUDA's kernels are not deterministic
    "optim.lr=0.05",
    "model.dropout=0.2",
    "augment=['crop:padding=1']",
    "output.evaluate_test=false",
    "output.report=false",
    "output.tensorboard=false",
]
STEPS_PER_EPOCH = 8


def set_args(overrides: list[str]) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


def victim_env(log: Path, slow: float = 0.0, hold_write: str = "", hold_event: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RESNETLAB_FAULT_LOG=str(log),
        RESNETLAB_FAULT_SLOW=str(slow),
        RESNETLAB_FAULT_HOLD_WRITE=hold_write,
        RESNETLAB_FAULT_HOLD_EVENT=hold_event,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    return env


def start_victim(argv: list[str], log: Path, slow: float = 0.0, hold_write: str = "", hold_event: str = "") -> subprocess.Popen:
    """``python _victim.py ARGV`` (a resnetlab command line) with hooks logging to ``log``;
    ``hold_write`` / ``hold_event``: where the victim waits for the test (see ``_victim.py``)."""
    return subprocess.Popen(
        [sys.executable, str(VICTIM), *argv],
        env=victim_env(log, slow, hold_write, hold_event),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def events(log: Path) -> list[str]:
    try:
        return log.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_for(proc: subprocess.Popen, log: Path, pred, start: int = 0, timeout: float = 240.0) -> int | None:
    """Poll ``log`` until an event after line ``start`` satisfies ``pred``; its index, or None
    when the process ended first."""
    deadline = time.monotonic() + timeout
    pos = start  # each line is shown to `pred` once (predicates may count events)
    while time.monotonic() < deadline:
        done = proc.poll() is not None  # read the log after this, so no last line is missed
        lines = events(log)
        for i in range(pos, len(lines)):
            if pred(lines[i]):
                return i
        pos = len(lines)
        if done:
            return None
        time.sleep(0.005)
    proc.kill()
    raise TimeoutError(f"no matching event in {log} after {timeout}s")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def assert_checkpoints_readable(run: Path) -> list[str]:
    """Every checkpoint folder a reader can pick (not dot-named temporaries) loads completely:
    metadata, weights and, where present, the trainer state. Returns the folder names."""
    ckdir = run / "checkpoints"
    # `*.unreadable` is where resume quarantines a checkpoint it found broken.
    names = sorted(p.name for p in ckdir.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".unreadable")) if ckdir.is_dir() else []
    for name in names:
        d = ckdir / name
        meta = ckpt.load_meta(d)
        weights = ckpt.load_weights(d)
        model = ckpt.build_model_from_meta(meta)
        ckpt.load_state_dict_checked(model, weights, str(d))
        if name.startswith("last"):
            state = ckpt.load_trainer_state(d)
            assert {"epoch", "start_step", "optimizer"} <= set(state), (d, set(state))
    return names


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = ckpt.load_weights(a), ckpt.load_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


def metric_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-time columns (the only ones allowed to differ)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in TIMING_COLUMNS:
            r.pop(k)
    return rows
