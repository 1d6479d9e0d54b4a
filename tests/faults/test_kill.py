"""kill -9 / SIGINT / SIGTERM a real ``resnetlab train`` subprocess and resume it.

The victim is the real CLI run by ``_victim.py``, which only logs what the process is doing
(step, evaluation, checkpoint file writes, renames) and optionally pauses inside those events
so a kill can land in them: half a weights file on disk, between the two renames of a
checkpoint rotation, inside validation. After every kill each checkpoint folder on disk must
load completely, and the resumed run must end with exactly the weights (``torch.equal`` on
every tensor) and metrics.csv (wall-time columns aside) of an uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from resnetlab import checkpoint as ckpt
from resnetlab.cli import main

from ._helpers import (
    STEPS_PER_EPOCH,
    TINY,
    assert_checkpoints_readable,
    assert_same_weights,
    events,
    kill9,
    metric_rows,
    set_args,
    start_victim,
    wait_for,
)

SLOW = 0.3  # seconds each hooked event pauses in the victim


def _train_argv(run):
    return ["train", "-q", "--out", str(run), *set_args(TINY)]


def _resume_in_process(run, capsys) -> str:
    assert main(["train", "--resume", str(run)]) == 0
    return capsys.readouterr().err


def _assert_equals_reference(run, reference_run):
    assert_checkpoints_readable(run)
    assert_same_weights(run / "checkpoints" / "last", reference_run / "checkpoints" / "last")
    assert_same_weights(run / "checkpoints" / "best", reference_run / "checkpoints" / "best")
    assert metric_rows(run / "metrics.csv") == metric_rows(reference_run / "metrics.csv")
    assert len(metric_rows(run / "metrics.csv")) == 3
    assert not list((run / "checkpoints").glob(".*tmp-*")), "temporary folders left behind"


def test_kill9_while_a_checkpoint_file_is_half_written_then_resume(tmp_path, reference_run, capsys):
    run, log = tmp_path / "run", tmp_path / "events.log"
    # The second epoch's `last` save (the first epoch's checkpoint is already in place) stops with
    # half its weights on disk and waits there for the kill. (It was a 0.3 s pause and a kill 0.1 s
    # after the write began: a loaded machine could delay either side past its window.)
    proc = start_victim(_train_argv(run), log, hold_write="*/.last.tmp-*/model.safetensors@2")
    i = wait_for(proc, log, lambda line: line.startswith("held ") and line.endswith("model.safetensors"))
    assert i is not None, proc.communicate()
    kill9(proc)
    assert proc.returncode == -signal.SIGKILL

    # The half-written file really exists (the kill landed mid-write) and is not readable ...
    tmp = [p for p in (run / "checkpoints").glob(".last.tmp-*")]
    assert len(tmp) == 1
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load_weights(tmp[0])
    # ... but no reader ever sees it: `last` is the complete epoch-1 checkpoint.
    assert "last" in assert_checkpoints_readable(run)
    assert ckpt.load_trainer_state(run / "checkpoints" / "last")["epoch"] == 1

    err = _resume_in_process(run, capsys)
    assert "resuming" in err and "epoch 2 step 0" in err
    _assert_equals_reference(run, reference_run)


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_mid_epoch_saves_exact_state_and_resume_matches(tmp_path, reference_run, capsys, sig):
    run, log = tmp_path / "run", tmp_path / "events.log"
    # epoch 2, step 4 of 8: the victim waits there for the signal, so it lands mid-epoch however
    # late this process sends it (4 steps and an epoch end were the margin on a loaded machine)
    proc = start_victim(_train_argv(run), log, hold_event="step 1 3")
    i = wait_for(proc, log, lambda line: line == "step 1 3")
    assert i is not None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), err  # 130 for SIGINT, 143 for SIGTERM
    assert f"interrupted: resume with `resnetlab train --resume {run}`" in out
    assert f"{signal.Signals(sig).name} received" in err and "Traceback" not in err
    state = ckpt.load_trainer_state(run / "checkpoints" / "last")
    assert state["epoch"] == 1 and 1 <= state["start_step"] < STEPS_PER_EPOCH  # mid-epoch
    assert state["partial"]["seen"] == 32 * state["start_step"]
    assert len(metric_rows(run / "metrics.csv")) == 1

    err = _resume_in_process(run, capsys)
    assert f"epoch 2 step {state['start_step']}" in err
    _assert_equals_reference(run, reference_run)


PHASES = {
    # a training step is running (the event is logged as the batch is handed to the step)
    "step": lambda line: line.startswith("step "),
    # validation at the end of an epoch
    "eval": lambda line: line.startswith("eval "),
    # any checkpoint file is half written
    "write": lambda line: line.startswith("write "),
    # `last` was rotated to `last.prev`; the new folder is not yet renamed into place
    "replace": lambda line: line.startswith("replace ") and ".tmp-" in line.split()[1],
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_repeated_random_kill9_then_resume_ends_like_an_uninterrupted_run(tmp_path, reference_run, capsys, seed):
    rng = random.Random(seed)
    run, log = tmp_path / "run", tmp_path / "events.log"
    # Every phase once (shuffled), at its first occurrence after the (re)start, so each resume
    # makes at most a little progress and all four are reached; then two random extra kills.
    first = list(PHASES)
    rng.shuffle(first)
    plan = [(p, 0) for p in first] + [(p, rng.randrange(4)) for p in rng.choices(list(PHASES), k=2)]
    killed_in = []
    for n, (phase, skip) in enumerate(plan):
        argv = _train_argv(run) if n == 0 else ["train", "-q", "--resume", str(run)]
        start = len(events(log))
        proc = start_victim(argv, log, slow=SLOW)
        count = []

        def pred(line, phase=phase, count=count, skip=skip):
            if PHASES[phase](line):
                count.append(line)
            return len(count) > skip

        i = wait_for(proc, log, pred, start=start)
        if i is None:  # the run finished before that event: it is complete
            out, err = proc.communicate()
            assert proc.returncode == 0, err
            break
        time.sleep(rng.uniform(0, SLOW * 0.8))
        kill9(proc)
        killed_in.append((phase, events(log)[i]))
        assert_checkpoints_readable(run)  # after every kill, whatever is visible loads
    assert {p for p, _ in killed_in} == set(PHASES), killed_in
    _resume_in_process(run, capsys)  # (a no-op plus the test-free finish if already complete)
    _assert_equals_reference(run, reference_run)
