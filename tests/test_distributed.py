"""torchrun: 2 CPU processes (gloo) train one run folder with identical weights on both ranks."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab.checkpoint import load_checkpoint


def _env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a worker process: the processes run in ``tmp_path`` (torchelastic_*
    dirs stay there) and import this resnetlab, not one that a relative PYTHONPATH (src) or an
    installed copy would give them there."""
    import resnetlab

    src = str(Path(resnetlab.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path), **extra}


@contextlib.contextmanager
def _reserved_port():
    """A free port for MASTER_PORT, kept bound (SO_REUSEADDR, not listening) until the processes
    are done: rank 0's store binds it as well (it sets SO_REUSEADDR too), while no other socket on
    the machine can take it in between, as it could once a picked port was closed again."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _torchrun() -> str:
    torchrun = Path(sys.executable).with_name("torchrun")
    return str(torchrun) if torchrun.exists() else shutil.which("torchrun")


# head_only: epoch 1 trains the head only, epoch 2 the whole net; DDP must reduce the body's
# gradients in epoch 2 too (it did not when the wrapper was built around a frozen body)
@pytest.mark.timeout(600)
# sync_bn: torch's nn.SyncBatchNorm is GPU-only, so on CPU the default bn-torch layers become the
# hand-written BatchNorm with statistics over both processes (tests/test_norms.py checks the math)
@pytest.mark.parametrize(
    "extra", [[], ["--set", "train.head_only_epochs=1"], ["--set", "train.sync_bn=true"]], ids=["plain", "head_only", "sync_bn"]
)
def test_torchrun_two_cpu_ranks(tmp_path, extra):
    torchrun = _torchrun()
    assert torchrun, "torchrun ships with torch"
    out = tmp_path / "ddp run"  # a space in the path on purpose
    env = _env(tmp_path)
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
    torchrun = _torchrun()
    env = _env(tmp_path)
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "resnetlab", "train", "--model", "resnet8",
           "--data", "digits", "--subset", "300", "--batch-size", "256", "--epochs", "1", "--set", "train.device=cpu", "--out", str(tmp_path / "r")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    assert "train.batch_size=256 (--batch-size) per process is larger than each of the 2 processes' share of the training split (135 images)" in proc.stderr
    assert not (tmp_path / "r").exists()


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker process with RANK=rank (read from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


@pytest.mark.timeout(600)
def test_a_signal_to_one_rank_stops_both_at_one_step_then_resume_needs_the_same_process_count(tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop after the same step (they agree at the next logging
    window), rank 0 saves that state and alone says so, every rank exits 130. A resume on 1 process
    is refused (the counters and schedule are per process); on 2 it finishes with equal weights."""
    import json
    import signal
    import time

    env = _env(tmp_path)
    out = tmp_path / "run"
    # 1,293 images over 2 ranks at batch 8: 80 steps per epoch, logging windows at 25, 50, 75, 80
    cmd = [_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "resnetlab", "train", "--model", "resnet8",
           "--data", "digits", "--epochs", "6", "--batch-size", "8", "--schedule", "onecycle",
           "--set", "output.report=false", "--set", "train.num_threads=1", "--set", "train.device=cpu", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        # epoch 1's row, then its `last` and `best` saves (fsync'd: slow on a busy disk): a signal
        # before rank 0 is past them stops both at the end of epoch 1, not at a step of epoch 2
        deadline = time.time() + 300
        while time.time() < deadline and not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) >= 2
                                              and (out / "checkpoints" / "best" / "meta.json").is_file()):  # fmt: skip
            time.sleep(0.2)
        time.sleep(1.0)  # the epoch-2 start check (one all_reduce), then into epoch 2
        pid = _worker_pid(proc.pid, 1)
        assert pid, "rank 1's process"
        os.kill(pid, signal.SIGTERM)
        log, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    saves = [line for line in log.splitlines() if "received: saved" in line]
    assert len(saves) == 1, log[-3000:]  # rank 0 alone; rank 1 used to claim a save it never made
    # named as the signal rank 1 got (rank 0 said SIGINT), with the command that resumes it (the
    # plain `resnetlab train --resume` it gave is refused for a 2-process run)
    assert "SIGTERM received: saved" in saves[0], saves
    assert saves[0].endswith(f"resume with: torchrun --nproc_per_node=2 -m resnetlab train --resume {out}"), saves
    assert f"interrupted: resume with `torchrun --nproc_per_node=2 -m resnetlab train --resume {out}`" in log
    assert "Connection closed by peer" not in log and "Traceback" not in log.split("received: saved")[0]
    meta = json.loads((out / "checkpoints" / "last" / "meta.json").read_text())
    mid = re.search(r"at epoch (\d+) step (\d+)", saves[0])
    if mid:  # stopped inside an epoch, at a logging window
        epoch, step = (int(v) for v in mid.groups())
        assert meta["world_size"] == 2 and meta["epoch"] == epoch - 1 and meta["step"] == (epoch - 1) * 80 + step, (meta, saves)
        assert step in (25, 50, 75, 80)
    else:  # on a busy machine the signal can land in the epoch's validation or checkpoint write: stopped at its end
        end = re.search(r"at the end of epoch (\d+)", saves[0])
        assert end, saves
        epoch = int(end.group(1))
        assert meta["world_size"] == 2 and meta["epoch"] == epoch and meta["step"] == epoch * 80, (meta, saves)
    # one process: refused, nothing changed
    before = (out / "metrics.csv").read_text()
    one = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--resume", str(out)], capture_output=True, text=True, env=env)
    assert one.returncode == 2 and "was trained on 2 process(es) and this resume runs on 1" in one.stderr, one.stderr
    assert (out / "metrics.csv").read_text() == before
    two = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "resnetlab", "train", "--resume", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)  # fmt: skip
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert "weights identical on all 2 ranks" in two.stdout + two.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6] and [int(r["step"]) for r in rows] == [80 * e for e in range(1, 7)]


@pytest.mark.timeout(300)
def test_processes_started_with_different_configs_are_refused_before_training(tmp_path):
    """Two processes of one job (as two nodes would start them) with different seeds: the seed
    shards and splits the data, so they would train on overlapping shards; refused at start."""
    procs = []
    with _reserved_port() as port:
        for rank, seed in ((0, 0), (1, 1)):
            env = _env(tmp_path, RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))  # fmt: skip
            cmd = [sys.executable, "-m", "resnetlab", "train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
                   "--seed", str(seed), "--set", "train.device=cpu", "--out", str(tmp_path / "r")]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))
        errs = [p.communicate(timeout=240)[1] for p in procs]
    assert all(p.returncode == 2 for p in procs), errs
    assert "the torchrun processes were started with different configs (seed: 0 (rank 0) vs 1 (rank 1))" in errs[0], errs[0]
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_a_study_under_torchrun_is_refused(tmp_path, monkeypatch):
    from resnetlab import study as st
    from resnetlab.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="resnetlab study does not run under torchrun"):
        st.run_study(tmp_path / "any.yaml")


# rank 0's test evaluation and report outlast the process group's timeout (shortened to 3 s here;
# 30 min for gloo, 10 min for nccl by default, which evaluating a large split or building the
# report can take)
_SLOW_FINISH = '''
import datetime, sys, time
import torch.distributed as dist
_init = dist.init_process_group
dist.init_process_group = lambda *a, **k: _init(*a, **{**k, "timeout": datetime.timedelta(seconds=3)})
import resnetlab.trainer as t
_finish = t.finish_run
t.finish_run = lambda *a, **k: (time.sleep(8), _finish(*a, **k))[1]
from resnetlab.cli import main
sys.exit(main())
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_other_ranks_do_not_wait_in_a_collective_for_rank_0s_evaluation(tmp_path):
    """The other ranks waited for rank 0's test evaluation in a barrier: past the group's timeout
    they failed, and torchrun killed rank 0 before eval/test was written. Now they leave the
    group after the weights check and exit; rank 0 evaluates alone."""
    script = tmp_path / "slow_finish.py"
    script.write_text(_SLOW_FINISH)
    env = _env(tmp_path)
    out = tmp_path / "r"
    cmd = [_torchrun(), "--standalone", "--nproc_per_node=2", str(script), "train", "--model", "resnet8", "--data", "digits",
           "--subset", "400", "--epochs", "1", "--batch-size", "32", "--set", "output.report=false", "--set", "train.device=cpu",
           "--set", "train.num_threads=1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "weights identical on all 2 ranks" in log and "Timed out" not in log
    assert (out / "eval" / "test" / "metrics.json").is_file()


# torchvision's download stood in for by one that takes 2 s to "unpack" a small CIFAR-10 into the
# data root: a second process that fetches at the same time, or reads the half-made folder, fails
_FAKE_DOWNLOAD = '''
import os, pickle, sys, time
from pathlib import Path
import numpy as np
import resnetlab.data.datasets as ds

def fake_download(cls, root, name):
    with open(Path(root) / "downloads.log", "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir()  # FileExistsError: another process is unpacking into the same folder
    time.sleep(2)
    rng = np.random.default_rng(0)
    def dump(path, obj):
        with open(base / path, "wb") as f:
            pickle.dump(obj, f)
    for i in range(1, 6):
        dump(f"data_batch_{i}", {"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8), "labels": [j % 10 for j in range(40)]})
    dump("test_batch", {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": [j % 10 for j in range(20)]})
    dump("batches.meta", {"label_names": [f"c{k}" for k in range(10)]})

ds._download = fake_download
from resnetlab.cli import main
sys.exit(main())
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_download_under_torchrun_is_made_by_one_process(tmp_path):
    """data.download=true: the processes of a node fetched and unpacked into one data root at once
    (torchvision writes one archive name): a checksum error or a half-unpacked folder read. Rank 0
    fetches first; the other process finds the files."""
    script = tmp_path / "fake_download.py"
    script.write_text(_FAKE_DOWNLOAD)
    data, out = tmp_path / "data", tmp_path / "r"
    cmd = [_torchrun(), "--standalone", "--nproc_per_node=2", str(script), "train", "--model", "resnet8", "--data", "cifar10",
           "--data-root", str(data), "--set", "data.download=true", "--epochs", "1", "--batch-size", "16",
           "--set", "output.report=false", "--set", "train.device=cpu", "--set", "train.num_threads=1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=240, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (data / "downloads.log").read_text().split() == ["0"]
    assert [r["epoch"] for r in csv.DictReader(open(out / "metrics.csv"))] == ["1"]


@pytest.mark.parametrize("argv", [["evaluate", "runs/x"], ["predict", "runs/x", "a.png"], ["report", "runs/x"], ["models"]])
def test_commands_other_than_train_are_refused_under_torchrun(tmp_path, monkeypatch, capsys, argv):
    """Every process ran the whole command: evaluate under torchrun wrote eval/test twice at once
    and printed its summary twice."""
    from resnetlab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: resnetlab {argv[0]} does not run under torchrun (only train does): start it as a plain command" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "epoch", "step", "refused"),
    [([], 2, 40, False), ([], 1, 20, True), (["train.iterations=30"], 2, 30, False), (["train.iterations=30"], 1, 20, True)],
    ids=["epochs-finished", "epochs-unfinished", "iterations-finished", "iterations-unfinished"],
)
def test_a_finished_run_resumes_on_any_process_count(tmp_path, monkeypatch, overrides, epoch, step, refused):
    """A run interrupted after its last epoch is told to resume for its test evaluation and report
    (nothing left to train): a 2-process run's was refused on 1 process. An unfinished run still
    needs the process count it was trained on."""
    import json

    from resnetlab.checkpoint import FORMAT
    from resnetlab.config import load_config
    from resnetlab.errors import ConfigError
    from resnetlab.trainer import _check_resume_config

    cfg = load_config(None, ["model.name=resnet8", "data.name=digits", "train.epochs=2", *overrides])
    last = tmp_path / "checkpoints" / "last"
    last.mkdir(parents=True)
    meta = {"format": FORMAT, "arch": "resnet8", "arch_args": {}, "epoch": epoch, "step": step, "world_size": 2,
            "config": cfg.model_dump(mode="json")}  # fmt: skip
    (last / "meta.json").write_text(json.dumps(meta))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if refused:
        with pytest.raises(ConfigError, match=r"was trained on 2 process\(es\) and this resume runs on 1"):
            _check_resume_config(tmp_path, cfg, [last])
    else:
        _check_resume_config(tmp_path, cfg, [last])


@pytest.mark.timeout(300)
def test_processes_that_load_different_data_are_refused_before_training(tmp_path):
    """One config; two nodes whose data roots (data.root may differ between nodes) hold copies of
    CIFAR-10 that differ: the ranks had other splits and step counts (a collective then waits
    for a step that one rank never takes)."""
    from test_data import write_cifar10

    procs = []
    with _reserved_port() as port:
        for rank, per_batch in ((0, 20), (1, 22)):
            root = tmp_path / f"node{rank}"
            write_cifar10(root, per_batch=per_batch)
            env = _env(tmp_path, RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))  # fmt: skip
            cmd = [sys.executable, "-m", "resnetlab", "train", "--model", "resnet8", "--data", "cifar10", "--data-root", str(root),
                   "--epochs", "1", "--batch-size", "4", "--set", "train.device=cpu", "--out", str(tmp_path / "r")]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))
        errs = [p.communicate(timeout=240)[1] for p in procs]
    assert all(p.returncode == 2 for p in procs), errs
    assert "the torchrun processes loaded different data (train split: 90 images (rank 0) vs 99 (rank 1))" in errs[0], errs[0]
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_a_rank_other_than_0_logs_errors_only(tmp_path, monkeypatch, capsys):
    """Every process warned what rank 0 warned (data.root unused by digits, a schedule milestone
    past the end ...): N copies of each line. Other ranks log errors only; --debug shows all,
    each line prefixed with its rank."""
    import logging

    from resnetlab.cli import setup_logging

    log, root = logging.getLogger("resnetlab.trainer"), logging.getLogger("resnetlab")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        setup_logging(rank=1)
        log.warning("a config warning")
        log.error("a failure")
        err = capsys.readouterr().err
        assert "a config warning" not in err and "[rank 1] a failure" in err
        setup_logging(debug=True, rank=1)
        log.warning("a config warning")
        assert "[rank 1] a config warning" in capsys.readouterr().err
        setup_logging()
        log.warning("a config warning")
        assert capsys.readouterr().err == "a config warning\n"
    finally:
        root.handlers[:], root.level, root.propagate = saved


# counts the images each process scores in validation (collect_outputs, as the trainer calls it)
_COUNT_EVAL = '''
import os, sys
import resnetlab.evaluate as ev
_collect = ev.collect_outputs
def counting(*a, **k):
    out = _collect(*a, **k)
    with open(os.environ["COUNT_LOG"], "a") as f:
        f.write(f"{os.environ['RANK']} {len(out[1])}\\n")
    return out
ev.collect_outputs = counting
from resnetlab.cli import main
sys.exit(main())
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_validation_is_sharded_and_scores_as_one_process_evaluation(tmp_path):
    """Every process validated the whole split (N times the work); each now scores its share of
    an odd-sized split (31 val, 61 test images: shards of 16 and 15, no padding) and the sums are
    reduced. With EMA and flip TTA the reported numbers are those of a one-process evaluate of the
    saved checkpoint (the EMA's statistics were each rank's own before)."""
    import json

    script = tmp_path / "count_eval.py"
    script.write_text(_COUNT_EVAL)
    counts, out = tmp_path / "counts.txt", tmp_path / "r"
    cmd = [_torchrun(), "--standalone", "--nproc_per_node=2", str(script), "train", "--model", "resnet8", "--data", "synthetic:1x8x8:3:305",
           "--epochs", "2", "--batch-size", "16", "--set", "train.ema=0.9", "--set", "train.tta_flip=true",
           "--set", "output.test_every_epoch=true", "--set", "output.evaluate_test=false", "--set", "output.report=false",
           "--set", "train.device=cpu", "--set", "train.num_threads=1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path, COUNT_LOG=str(counts)), timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    seen = [tuple(map(int, line.split())) for line in counts.read_text().splitlines()]
    # per epoch: val then test on each rank
    assert sorted(seen) == sorted([(0, 16), (1, 15), (0, 31), (1, 30)] * 2), seen
    row = list(csv.DictReader(open(out / "metrics.csv")))[-1]
    for split in ("val", "test"):
        one = subprocess.run([sys.executable, "-m", "resnetlab", "evaluate", str(out), "--which", "last", "--split", split, "--json",
                              "--out", str(tmp_path / f"ev-{split}")], capture_output=True, text=True, env=_env(tmp_path))  # fmt: skip
        assert one.returncode == 0, one.stderr
        m = json.loads(one.stdout)
        assert float(row[f"{split}_acc"]) == pytest.approx(m["accuracy"], abs=1e-6)
        assert float(row[f"{split}_loss"]) == pytest.approx(m["loss"], rel=1e-5)


@pytest.mark.timeout(300)
def test_a_collective_returns_only_once_gloo_has_released_its_tensors(tmp_path):
    """gloo's worker thread drops its references to a collective's tensors just after the call
    returns; dropping the last one takes the GIL. A rank that exited at once (the others after the
    final weights check) could reach interpreter shutdown first and was aborted (SIGABRT, seen in
    CI). ``_collective`` returns when the tensors' refcounts are back to what they were; a plain
    call leaves them raised now and then (counted here, not asserted: it depends on timing)."""
    script = tmp_path / "release.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from resnetlab.trainer import _all_gather, _all_gather_json, _all_reduce_sum\n"
        "dist.init_process_group('gloo')\n"
        "raised = plain = 0\n"
        "for i in range(300):\n"
        "    t = torch.tensor([float(i + dist.get_rank())])\n"
        "    base = sys.getrefcount(t)\n"
        "    every = _all_gather(t)\n"
        "    raised += sys.getrefcount(t) != base\n"
        "    assert [float(e) for e in every] == [float(i), float(i + 1)]\n"
        "    _all_reduce_sum(t)\n"
        "    raised += sys.getrefcount(t) != base\n"
        "    assert float(t) == 2 * i + 1\n"
        "    out = [torch.zeros(1), torch.zeros(1)]\n"
        "    dist.all_gather(out, t)\n"
        "    plain += sys.getrefcount(t) != base\n"
        "objs = _all_gather_json({'rank': dist.get_rank(), 'name': 'caf\\u00e9', 'x': [1.5, None]}, torch.device('cpu'))\n"
        "assert objs == [{'rank': r, 'name': 'caf\\u00e9', 'x': [1.5, None]} for r in (0, 1)], objs\n"
        "print(f'rank {dist.get_rank()}: raised {raised}, plain call left them raised {plain} times', flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    proc = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=240, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    found = re.findall(r"rank (\d): raised (\d+), plain call left them raised (\d+) times", proc.stdout)
    assert sorted(r for r, _, _ in found) == ["0", "1"], proc.stdout
    assert [raised for _, raised, _ in found] == ["0", "0"], proc.stdout
    print(proc.stdout)


def test_the_resume_command_and_a_lost_peer_are_said_for_the_launch(monkeypatch, tmp_path):
    from resnetlab.cli import _peer_lost
    from resnetlab.trainer import resume_command

    for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert resume_command("runs/a") == "resnetlab train --resume runs/a"
    assert resume_command("runs/sp ace") == "resnetlab train --resume 'runs/sp ace'"  # pasted into a shell as is
    assert _peer_lost(RuntimeError("Connection reset by peer"), "Connection reset by peer") is None  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command("runs/a") == "torchrun --nproc_per_node=2 -m resnetlab train --resume runs/a"
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command("runs/a") == ("torchrun --nproc_per_node=4 --nnodes=2 -m resnetlab train --resume runs/a on each of the "
                                        "2 nodes (the same --nnodes and rendezvous)")  # fmt: skip
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:16774: "
            "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")
    assert _peer_lost(RuntimeError(gloo), gloo) == "Connection reset by peer"
    assert _peer_lost(ValueError("unknown config key"), "unknown config key") is None


def test_a_dead_peer_is_one_line_that_says_so_and_how_to_resume(tmp_path, monkeypatch, capsys):
    # gloo's own words were the error line: "[.../pair.cc:545] Read error ...: Connection reset by
    # peer. This is typically caused by ..."
    from resnetlab import cli
    from resnetlab.cli import train as cli_train

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")

    def dies(args):
        raise RuntimeError("[../pair.cc:545] Read error [127.0.0.1]:16774: Connection reset by peer. This is typically caused by ...")

    monkeypatch.setattr(cli_train, "run", dies)
    rc = cli.main(["train", "--data", "digits", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == (f"error: another process of this torchrun job stopped (Connection reset by peer); the run "
                                   f"folder keeps its last saved checkpoint: resume with `torchrun --nproc_per_node=2 -m resnetlab "
                                   f"train --resume {tmp_path / 'run'}`")  # fmt: skip
