"""Trainer: determinism, exact resume after SIGTERM, schedules, clipping, EMA, fine-tune phases."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetlab.checkpoint import load_checkpoint, load_weights
from resnetlab.config import load_config
from resnetlab.errors import ConfigError, DataError, ResnetlabError, TrainingDiverged
from resnetlab.optim import LRFactor, build_scheduler
from resnetlab.trainer import TIMING_COLUMNS, Callback, Trainer, resume, train

TINY = [
    "model.name=resnet8",
    "data.name=digits",
    "data.subset=320",
    "data.val_fraction=0.2",
    "train.batch_size=32",
    "train.epochs=2",
    "optim.lr=0.05",
    "output.evaluate_test=false",
    "output.report=false",
    "output.tensorboard=false",
    "augment=['crop:padding=1']",
    "model.dropout=0.2",
]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def read_rows(path, drop_timing=True):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if drop_timing:
        for r in rows:
            for k in TIMING_COLUMNS:
                r.pop(k)
    return rows


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train(tiny(), tmp_path / "a", progress=False)
    b = train(tiny(), tmp_path / "b", progress=False)
    rows = read_rows(tmp_path / "a" / "metrics.csv")
    assert len(rows) == 2 and rows == read_rows(tmp_path / "b" / "metrics.csv")
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert b.best_val_acc == max(h["val_acc"] for h in b.history)
    train(tiny("seed=1"), tmp_path / "c", progress=False)
    assert read_rows(tmp_path / "c" / "metrics.csv") != rows  # the seed matters


def test_val_accuracy_is_the_exact_fraction_of_correct_images(tmp_path):
    """val_acc was a float32 mean: 10 of 60 was 0.1666666716, while evaluate says 0.1666666666."""
    r = train(tiny("data.subset=300", "train.epochs=1"), tmp_path / "r", progress=False)  # 60 val images
    acc = r.history[0]["val_acc"]
    assert acc == round(acc * 60) / 60 and r.best_val_acc == acc


class _SignalAt(Callback):
    """Send ourselves SIGTERM at the end of a logging window of a given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch
        self.sent = False

    def on_window_end(self, trainer, step_in_epoch, loss, acc, images_per_s):
        if trainer.epoch == self.epoch and not self.sent and step_in_epoch < trainer.steps_per_epoch:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize(
    "extra", [[], ["train.ema=0.9"], ["augment=[]"]], ids=["plain", "ema", "no-augment"]
)  # no augmentation: the loader still reseeds the CPU generator per step, for dropout
def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path, extra):
    # 288 training images / batch 8 = 36 steps per epoch: the window at step 25 is mid-epoch.
    # With EMA, last/ holds the averaged weights: equal only if the average survives the resume.
    cfg = tiny("train.batch_size=8", "train.epochs=2", "train.device=cpu", *extra)  # bit-exact: not CUDA
    train(cfg, tmp_path / "ref", progress=False)

    from resnetlab.config import save_config

    run = tmp_path / "cut"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    trainer = Trainer(cfg, run, progress=False, callbacks=[_SignalAt(epoch=1)])
    result = trainer.fit()
    assert result.interrupted and trainer.epoch == 1 and trainer.start_step == 25
    restored = Trainer(cfg, run, progress=False)
    restored.load_state(run / "checkpoints" / "last")
    assert restored.best_val_acc == trainer.best_val_acc is not None  # best/ is not replaced by a worse epoch
    resumed = resume(run, progress=False)
    assert not resumed.interrupted and resumed.epochs == 2

    ref = load_weights(tmp_path / "ref" / "checkpoints" / "last")
    got = load_weights(run / "checkpoints" / "last")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert read_rows(run / "metrics.csv") == read_rows(tmp_path / "ref" / "metrics.csv")


class _SignalAtLastStep(Callback):
    """SIGTERM in the window that ends an epoch: the checkpoint is saved after its last step."""

    def __init__(self):
        self.sent = False

    def on_window_end(self, trainer, step_in_epoch, loss, acc, images_per_s):
        if trainer.epoch == 0 and not self.sent and step_in_epoch == trainer.steps_per_epoch:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_resume_saved_after_an_epochs_last_step_logs_the_lr_that_step_used(tmp_path):
    # The resumed epoch has no step left to take: its row logged the optimizer's lr then, the
    # next epoch's first (0.025 instead of 0.0299 under cosine), not the lr of the last step.
    cfg = tiny("train.device=cpu", "train.ema=0.9", "data.subset=160")
    train(cfg, tmp_path / "ref", progress=False)
    from resnetlab.config import save_config

    run = tmp_path / "cut"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    trainer = Trainer(cfg, run, progress=False, callbacks=[_SignalAtLastStep()])
    assert trainer.fit().interrupted and trainer.epoch == 0 and trainer.start_step == trainer.steps_per_epoch
    resume(run, progress=False)
    assert read_rows(run / "metrics.csv") == read_rows(tmp_path / "ref" / "metrics.csv")


@pytest.mark.parametrize("extra", [[], ["train.iterations=12"]], ids=["epochs", "iterations"])
def test_a_resume_saved_after_the_runs_last_step_finishes_its_last_epoch(tmp_path, extra):
    # A signal in the run's last step (mid-epoch under train.iterations: 12 steps, 8 per epoch)
    # saved that epoch unfinished; the resume saw every step done and stopped without the epoch's
    # end: no last metrics row, no final validation, `last` still at the epoch before.
    cfg = tiny("train.device=cpu", *extra)
    ref = train(cfg, tmp_path / "ref", progress=False)
    from resnetlab.config import save_config

    run = tmp_path / "cut"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    trainer = Trainer(cfg, run, progress=False)
    criterion = trainer.criterion

    def signal_in_last_step(out, y):
        if trainer.global_step == trainer.total_steps - 1:
            trainer._stop_signal = signal.SIGTERM
        return criterion(out, y)

    trainer.criterion = signal_in_last_step
    assert trainer.fit().interrupted and trainer.global_step == trainer.total_steps and trainer.epoch == 1
    resumed = resume(run, progress=False)
    assert resumed.epochs == 2 and len(resumed.history) == 2
    assert read_rows(run / "metrics.csv") == read_rows(tmp_path / "ref" / "metrics.csv")
    assert resumed.best_val_acc == ref.best_val_acc
    assert load_checkpoint(run, which="last").meta["epoch"] == 2


def test_streaming_run_without_augmentation_equals_in_memory_and_resumes_exactly(tmp_path, monkeypatch):
    # With dropout and no augmentation, the streaming DataLoader's worker seeds were drawn from
    # the global RNG each epoch and validation (epoch-1 train_loss 0.3978 vs 0.4106 in memory),
    # and a resumed epoch drew them once more than the uninterrupted one.
    import yaml

    import resnetlab.trainer
    from conftest import write_png_folder
    from resnetlab.config import save_config
    from resnetlab.evaluate import open_split

    name = write_png_folder(tmp_path / "imgs")  # 32 train+val images: 24 train / batch 4 = 6 steps
    args = [f"data.name={name}", "data.subset=", "data.val_fraction=0.25", "data.image_size=16", "augment=[]",
            "model.dropout=0.5", "train.batch_size=4", "train.device=cpu"]  # fmt: skip
    train(tiny(*args), tmp_path / "mem", progress=False)
    streaming = tiny(*args, "data.stream_threshold_gb=1e-9", "data.num_workers=1")
    train(streaming, tmp_path / "stream", progress=False)
    rows = read_rows(tmp_path / "stream" / "metrics.csv")
    assert len(rows) == 2 and rows == read_rows(tmp_path / "mem" / "metrics.csv")
    ref = load_weights(tmp_path / "stream" / "checkpoints" / "last")
    mem = load_weights(tmp_path / "mem" / "checkpoints" / "last")
    assert all(torch.equal(ref[k], mem[k]) for k in ref)
    assert open_split(tmp_path / "stream", "val").loader(8, "cpu").num_workers == 1  # evaluate decodes as the run did

    monkeypatch.setattr(resnetlab.trainer, "NAN_CHECK_EVERY", 4)  # a window end (and the signal) at step 4 of 6
    run = tmp_path / "cut"
    run.mkdir()
    save_config(streaming, run / "config.yaml")
    trainer = Trainer(streaming, run, progress=False, callbacks=[_SignalAt(epoch=1)])
    assert not trainer.splits.train.in_memory
    assert trainer.fit().interrupted and trainer.epoch == 1 and trainer.start_step == 4
    # how the images are read may change on --resume
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["data"].update(num_workers=0, cache=str(tmp_path / "cache"), stream_threshold_gb=1e-8)
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    assert not resume(run, progress=False).interrupted
    got = load_weights(run / "checkpoints" / "last")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert read_rows(run / "metrics.csv") == rows


def test_a_resume_that_now_streams_the_folder_keeps_the_checkpoints_normalization(tmp_path, monkeypatch):
    # data.stream_threshold_gb may change on --resume, and a folder that streams now but was held
    # in memory gets other mean/std (an estimate from 2,000 images; here from 6; and a truncated
    # PNG, dropped in memory but listed when streaming, changes the train split): the weights were
    # trained with the checkpoint's values, and the resumed epochs and the checkpoints they write
    # keep them. (train/ and test/ folders and no validation split: a split drawn from the changed
    # files by a seeded shuffle would refuse the resume, test_evaluate's changed-folder tests.)
    import yaml

    from conftest import write_png_folder
    from resnetlab.config import save_config
    from resnetlab.data import load_dataset

    write_png_folder(tmp_path / "imgs" / "train")
    write_png_folder(tmp_path / "imgs" / "test", n=8)
    name = f"imagefolder:{tmp_path / 'imgs'}"
    whole = (tmp_path / "imgs" / "train" / "c0" / "000.png").read_bytes()
    (tmp_path / "imgs" / "train" / "c0" / "999.png").write_bytes(whole[: len(whole) // 2])
    cfg = tiny(f"data.name={name}", "data.subset=", "data.image_size=16", "train.batch_size=4", "data.val_fraction=0")
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    assert Trainer(cfg, run, progress=False, callbacks=[_SignalAtEpochEnd(1)]).fit().interrupted
    saved = load_checkpoint(run, which="last").meta
    import resnetlab.data.datasets as ds

    # a large folder's estimate: from 2,000 of its images; here from 6 of the 40
    sample = ds._decodable_sample
    monkeypatch.setattr(ds, "_decodable_sample", lambda imageset, count, **k: sample(imageset, 6, **k))
    streamed = load_dataset(name, **{**cfg.data.load_kwargs(cfg.seed), "stream_threshold_gb": 1e-9})
    assert streamed.mean != saved["mean"]
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["data"]["stream_threshold_gb"] = 1e-9
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    decoded, real = [], ds.read_image
    monkeypatch.setattr(ds, "read_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    assert not resume(run, progress=False).interrupted
    assert decoded == []  # no estimate decoded for the resume (the loaders decode on their own)
    meta = load_checkpoint(run, which="last").meta
    assert meta["epoch"] == 2 and (meta["mean"], meta["std"]) == (saved["mean"], saved["std"])


class _SignalAtEpochEnd(Callback):
    """SIGINT while an epoch's validation and checkpoint are being written (after the step loop)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("at", [1, 2], ids=["between-epochs", "after-the-last-epoch"])
def test_a_signal_during_an_epochs_validation_or_save_stops_at_that_checkpoint(tmp_path, caplog, at):
    # The step loop's check had passed: epoch 1's signal trained one more step before stopping,
    # and the last epoch's went unnoticed (test evaluation and report ran, exit 0).
    from resnetlab.config import save_config
    from resnetlab.trainer import _fit_and_finish

    cfg = tiny("output.evaluate_test=true")
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    trainer = Trainer(cfg, run, progress=False, callbacks=[_SignalAtEpochEnd(at)])
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        result = _fit_and_finish(trainer, cfg, run)
    assert result.interrupted and trainer.epoch == at and trainer.start_step == 0
    assert load_checkpoint(run, which="last").meta["epoch"] == at
    assert not (run / "eval" / "test").exists()
    expected = "the test evaluation and report were skipped" if at == 2 else "saved .* at the end of epoch 1"
    assert re.search(f"SIGINT received: .*{expected}", caplog.text)
    resumed = resume(run, progress=False)
    assert not resumed.interrupted and (run / "eval" / "test" / "metrics.json").is_file()
    assert len(read_rows(run / "metrics.csv")) == 2


def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(tmp_path):
    # a cosine schedule sized for 2 epochs, extended to 4 by editing config.yaml, trained epochs
    # 3-4 at lr 0 (its state came from the checkpoint); onecycle failed with torch's step count
    import yaml

    run = tmp_path / "r"
    train(tiny("schedule.name=cosine"), run, progress=False)
    saved = (run / "config.yaml").read_text()
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    data = yaml.safe_load(saved)
    data["train"]["epochs"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"config.yaml differs from the config its checkpoint was trained with "
                                          r"\(train.epochs: 2 \(checkpoint\) vs 4 \(config.yaml\)\); --resume continues"):
        resume(run, progress=False)
    assert {p: p.read_bytes() for p in before if p.name != "config.yaml"} == {p: b for p, b in before.items() if p.name != "config.yaml"}
    # where it runs and what it writes at the end may change
    data["train"]["epochs"] = 2
    data["train"]["num_threads"] = 1
    data["output"]["report"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    assert not resume(run, progress=False).interrupted


def test_train_and_resume_put_the_callers_thread_count_back(tmp_path, monkeypatch):
    # train.num_threads is the run's: it left torch at 1 thread for whatever the caller ran next
    # (in CI, every test after the first such run)
    import resnetlab.trainer as trainer_mod

    during = []
    real_finish = trainer_mod.finish_run

    def finish(*args, **kwargs):
        during.append(torch.get_num_threads())  # the final evaluation runs at the run's count
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "finish_run", finish)
    torch.set_num_threads(2)  # the caller's count, not the run's (conftest restores the suite's after the test)
    before = torch.get_num_threads()
    run = tmp_path / "r"
    train(tiny("train.num_threads=1", "output.report=false"), run, progress=False)
    assert torch.get_num_threads() == before
    resume(run, progress=False)  # a finished run: evaluated again at its own count
    assert torch.get_num_threads() == before
    assert during == [1, 1]
    # and when the run stops with an error (here: its dataset is not on disk)
    with pytest.raises(DataError):
        train(tiny("train.num_threads=1", "data.name=cifar10", f"data.root={tmp_path / 'nothing'}"), tmp_path / "bad", progress=False)
    assert torch.get_num_threads() == before


def test_resume_of_a_transfer_run_does_not_need_the_pretrained_source(tmp_path):
    # the checkpoint holds the weights: a source moved away (or torchvision weights not cached on
    # the machine that resumes) stopped the resume with "pretrained weights not found"
    from resnetlab.config import save_config
    from resnetlab.models import create_model

    source = tmp_path / "source.pth"
    torch.save(create_model("resnet8", num_classes=10, in_channels=1).state_dict(), source)
    cfg = tiny("train.batch_size=8", "train.device=cpu", f"model.pretrained={source}", "model.freeze_until=layer1",
               "train.head_only_epochs=1")
    train(cfg, tmp_path / "ref", progress=False)
    run = tmp_path / "cut"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    assert Trainer(cfg, run, progress=False, callbacks=[_SignalAt(epoch=0)]).fit().interrupted  # in the head-only epoch
    source.unlink()
    assert not resume(run, progress=False).interrupted
    ref = load_weights(tmp_path / "ref" / "checkpoints" / "last")
    got = load_weights(run / "checkpoints" / "last")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_source_trained_at_another_image_size_is_warned_about(tmp_path, caplog):
    # its mean/std are carried over silently; its image size was not, nor said to differ
    from resnetlab import checkpoint as ck
    from resnetlab.models import create_model

    args = {"num_classes": 10, "in_channels": 1}
    meta = {"arch": "resnet8", "arch_args": args, "classes": None, "mean": [0.5], "std": [0.25], "input_size": [1, 28, 28]}
    ck.save_checkpoint(tmp_path / "src" / "checkpoints" / "best", create_model("resnet8", **args), meta)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        t = Trainer(tiny(f"model.pretrained={tmp_path / 'src'}"), tmp_path / "r", progress=False)
    assert (t.mean, t.std, t.input_size) == ([0.5], [0.25], [1, 8, 8])
    assert "were trained on 28x28 images, this run evaluates at 8x8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        Trainer(tiny(f"model.pretrained={tmp_path / 'src'}", "data.image_size=28"), tmp_path / "r28", progress=False)
    assert "were trained on" not in caplog.text


def test_a_metrics_csv_cut_mid_line_is_repaired_on_resume_and_left_out_when_read(tmp_path, caplog):
    """A row cut short (a crash mid-write) had the next epoch's row appended to it: the report then
    read a step count as the validation accuracy (2.0000) and counted epochs wrong."""
    from resnetlab.report import read_metrics_csv
    from resnetlab.trainer import read_metrics_file

    run = tmp_path / "r"
    train(tiny("train.epochs=3"), run, progress=False)
    ref = read_rows(run / "metrics.csv")
    text = (run / "metrics.csv").read_text()
    lines = text.splitlines()
    # epoch 1's row cut in half, no newline: as if the process died while appending epoch 2's row
    (run / "metrics.csv").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1.0] and "line(s) 3 are damaged" in caplog.text
    # resume from epoch 2's checkpoint (the last one removed): the cut row is dropped, epoch 3 appended
    import shutil

    (run / "checkpoints" / "last").rename(run / "keep")
    shutil.copytree(run / "checkpoints" / "last.prev", run / "checkpoints" / "last")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        resume(run, progress=False)
    assert "dropped damaged line(s) 3 before resuming" in caplog.text
    columns, rows, bad = read_metrics_file(run / "metrics.csv")
    assert bad == [] and [int(r["epoch"]) for r in rows] == [1, 3]
    assert read_rows(run / "metrics.csv")[0] == ref[0] and read_rows(run / "metrics.csv")[1]["epoch"] == "3"
    # a header cut at a comma (good names, too few): rewritten whole on resume, so later rows parse
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("epoch,step,lr,train_loss\n" + "\n".join(lines[1:]) + "\n")
    shutil.rmtree(run / "checkpoints" / "last")
    shutil.copytree(run / "checkpoints" / "last.prev", run / "checkpoints" / "last")  # epoch 2 again
    resume(run, progress=False)
    columns, rows, bad = read_metrics_file(run / "metrics.csv")
    assert bad == [] and [int(r["epoch"]) for r in rows] == [3] and columns[:3] == ["epoch", "step", "lr"]


def test_damaged_metrics_lines_are_named_not_read_under_the_wrong_columns(tmp_path):
    from resnetlab.trainer import METRIC_COLUMNS, read_metrics_file

    p = tmp_path / "metrics.csv"
    good = ",".join("1" if c == "epoch" else "0.5" for c in METRIC_COLUMNS)
    p.write_bytes((",".join(METRIC_COLUMNS) + "\n" + good + "\n" + good.replace("0.5", "abc", 1) + "\n\xff\xfe,1\n"
                   + good.replace("1", "1.5", 1) + "\n").encode("latin-1"))  # fmt: skip
    columns, rows, bad = read_metrics_file(p)
    assert columns == METRIC_COLUMNS and len(rows) == 1 and bad == [3, 4, 5]
    p.write_text("epoch,step,lr,train_loss,train2,66,0.1\n" + good + "\n")  # a header cut short, then a row
    assert read_metrics_file(p) == ([], [], [1, 2])
    p.write_text("epoch,step,lr,train_loss\n" + good + "\n")  # cut at a comma: good names, too few of them
    assert read_metrics_file(p) == ([], [], [1, 2])


def test_a_run_without_config_yaml_resumes_with_its_checkpoints_config(tmp_path, caplog):
    """train refused the folder ("already holds a run; use --resume") and resume refused it ("not a
    run folder (no config.yaml)"), each sending the user to the other."""
    run = tmp_path / "r"
    cfg = tiny("train.epochs=2")
    train(cfg, run, progress=False)
    before = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        result = resume(run, progress=False)
    assert f"{run} has no config.yaml: resuming with the config saved in its checkpoint" in caplog.text
    assert result.epochs == 2 and (run / "config.yaml").read_text() == before


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ResnetlabError, match="not a run folder"):
        resume(tmp_path)


def test_existing_run_folder_is_not_overwritten(tmp_path):
    train(tiny("train.epochs=1"), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    with pytest.raises(ResnetlabError, match="--resume"):
        train(tiny("train.epochs=1"), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before


def test_nan_loss_names_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    # 256 images / 32 = 8 steps per epoch; the loss turns NaN at the 3rd step of epoch 2.
    t = Trainer(tiny("train.epochs=3"), tmp_path / "nan", progress=False)
    calls = {"n": 0}
    ce = torch.nn.CrossEntropyLoss()

    def criterion(out, y):
        calls["n"] += 1
        loss = ce(out, y)
        return loss * float("nan") if calls["n"] >= 11 else loss

    t.criterion = criterion
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2 step 3; lower the learning rate"):
        t.fit()
    ck = load_checkpoint(tmp_path / "nan", which="last")
    assert ck.meta["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_weights(ck.path).values() if v.dtype.is_floating_point)


def test_an_infinite_validation_loss_is_a_divergence(tmp_path, monkeypatch):
    """A run whose outputs overflow (lr 50: train loss 4e9, val loss inf) trained on without a
    word, wrote val_loss=inf, and a study of it then failed in its std: it is a divergence."""
    t = Trainer(tiny("train.epochs=3"), tmp_path / "inf", progress=False)
    real, calls = t.validate, {"n": 0}

    def validate(loader=None):
        calls["n"] += 1
        loss, acc = real(loader)
        return (float("inf") if calls["n"] >= 2 else loss), acc

    monkeypatch.setattr(t, "validate", validate)
    with pytest.raises(TrainingDiverged, match=r"validation loss became inf at epoch 2 \(training loss [0-9.e+]+\): the "
                                               r"model's outputs overflowed; lower the learning rate .* the last good checkpoint is"):
        t.fit()
    assert load_checkpoint(tmp_path / "inf", which="last").meta["epoch"] == 1
    assert len(read_rows(tmp_path / "inf" / "metrics.csv")) == 1  # the inf row is not written


def test_iterations_override_epochs(tmp_path):
    # 256 images / 32 = 8 steps per epoch; 12 iterations = 2 epochs, the second cut at 4 steps.
    r = train(tiny("train.iterations=12"), tmp_path / "it", progress=False)
    assert [int(h["step"]) for h in r.history] == [8, 12]


# one plain SGD step at lr 1: the update is minus the (clipped) gradient
PLAIN_STEP = ("optim.momentum=0", "optim.lr=1.0", "optim.weight_decay=0", "schedule.name=constant",
              "train.iterations=1", "model.norm=gn", "model.dropout=0")  # fmt: skip


def _one_step_update(t: Trainer) -> torch.Tensor:
    before = {k: v.detach().clone() for k, v in t.model.named_parameters()}
    t.fit()
    return torch.cat([(p.detach() - before[k]).flatten() for k, p in t.model.named_parameters()])


def test_grad_clip_by_value_bounds_each_update(tmp_path):
    t = Trainer(tiny("train.grad_clip=0.001", "train.grad_clip_mode=value", *PLAIN_STEP), tmp_path / "clip", progress=False)
    assert _one_step_update(t).abs().max().item() <= 1e-3 + 1e-7


def test_grad_clip_by_norm_scales_the_whole_gradient_to_the_bound(tmp_path):
    t = Trainer(tiny("train.grad_clip=0.001", "train.grad_clip_mode=norm", *PLAIN_STEP), tmp_path / "c", progress=False)
    assert _one_step_update(t).norm().item() == pytest.approx(0.001, rel=1e-3)


def test_grad_clip_acts_on_unscaled_gradients_under_loss_scaling(tmp_path):
    """CUDA fp16 scales the loss (here a CPU GradScaler at 1024 stands in): the clip bound applies
    to the true gradient, so the gradients are unscaled before clipping."""
    t = Trainer(tiny("train.grad_clip=0.001", "train.grad_clip_mode=value", *PLAIN_STEP), tmp_path / "s", progress=False)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert _one_step_update(t).abs().max().item() == pytest.approx(0.001, rel=1e-4)


def test_label_smoothing_reaches_the_loss(tmp_path):
    t = Trainer(tiny("train.label_smoothing=0.2"), tmp_path / "ls", progress=False)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)
    expected = F.cross_entropy(logits, y, label_smoothing=0.2).item()
    assert expected != pytest.approx(F.cross_entropy(logits, y).item())
    assert t.criterion(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_epoch_metrics_are_averages_over_images_and_images_per_s_counts_images(tmp_path):
    t = Trainer(tiny("train.epochs=1"), tmp_path / "tl", progress=False)
    seen, ce = [], torch.nn.CrossEntropyLoss()

    def criterion(out, y):
        loss = ce(out, y)
        seen.append((loss.item(), int((out.argmax(1) == y).sum()), len(y)))
        return loss

    t.criterion = criterion
    t.fit()
    row, n = t.history[0], sum(b for *_, b in seen)
    assert n == 256 and len(seen) == 8
    assert row["train_loss"] == pytest.approx(sum(loss * b for loss, _, b in seen) / n, rel=1e-5)
    assert row["train_acc"] == pytest.approx(sum(c for _, c, _ in seen) / n, rel=1e-9)
    assert row["images_per_s"] == pytest.approx(256 / row["epoch_time_s"], rel=1e-6)


def test_a_tie_on_validation_keeps_the_first_best_checkpoint(tmp_path):
    t = Trainer(tiny("train.epochs=3"), tmp_path / "tie", progress=False)
    accs = iter([0.5, 0.5, 0.4])
    t.validate = lambda: (1.0, next(accs))
    t.fit()
    assert load_checkpoint(tmp_path / "tie", which="best").meta["epoch"] == 1  # as the report's best epoch


def test_batch_instance_norm_gates_stay_in_0_1_after_each_step(tmp_path):
    from resnetlab.norms import BatchInstanceNorm2d

    t = Trainer(tiny(*PLAIN_STEP, "model.norm=bin"), tmp_path / "bin", progress=False)

    def gates():
        return torch.cat([m.rho.detach().clone() for m in t.model.modules() if isinstance(m, BatchInstanceNorm2d)])

    before = gates()
    t.fit()
    rho = gates()
    assert not torch.equal(rho, before) and rho.min().item() >= 0.0 and rho.max().item() <= 1.0


def test_lr_factor_schedules():
    from resnetlab.config import ScheduleConfig

    ms = LRFactor(ScheduleConfig(name="multistep"), total_steps=100, steps_per_epoch=10)
    assert [ms(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    it = LRFactor(ScheduleConfig(name="multistep", milestones=[32000, 48000], milestones_unit="iteration"), 64000, 391)
    assert it(31999) == 1 and it(32000) == pytest.approx(0.1) and it(48000) == pytest.approx(0.01)
    cos = LRFactor(ScheduleConfig(name="cosine", warmup_epochs=1), total_steps=110, steps_per_epoch=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    # schedule.min_lr is an absolute floor: with lr 0.1 the run ends at 1e-3, not 1e-4
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", min_lr=1e-3), total_steps=10, steps_per_epoch=10, base_lr=0.1)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    st = LRFactor(ScheduleConfig(name="step", step_size=2, gamma=0.5), total_steps=100, steps_per_epoch=10)
    assert [st(s) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.5, 0.25])


def test_onecycle_peaks_at_lr():
    from resnetlab.config import ScheduleConfig

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, ScheduleConfig(name="onecycle", pct_start=0.3), total_steps=100, steps_per_epoch=10, base_lr=1e-3)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3) and 25 <= lrs.index(max(lrs)) <= 31
    assert lrs[0] == pytest.approx(1e-3 / 25, rel=1e-3)


@pytest.mark.parametrize("total,pct_start", [(4, 0.25), (10, 0.1), (5, 0.2)])
def test_onecycle_with_a_one_step_warmup_starts_at_the_peak(total, pct_start):
    # pct_start x total_steps = 1 made torch's OneCycleLR divide by zero (a 4-step run at the
    # default 0.25 ended in 'error: float division by zero')
    from resnetlab.config import ScheduleConfig

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = build_scheduler(opt, ScheduleConfig(name="onecycle", pct_start=pct_start), total_steps=total, steps_per_epoch=total, base_lr=0.1)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 / 25


@pytest.mark.parametrize("momentum,cycled", [(0.0, False), (0.9, True)])
def test_onecycle_cycles_momentum_only_when_sgd_has_some(momentum, cycled):
    from resnetlab.config import ScheduleConfig

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=momentum)
    build_scheduler(opt, ScheduleConfig(name="onecycle"), total_steps=100, steps_per_epoch=10, base_lr=0.1)
    # OneCycleLR sets momentum to its max_momentum (0.95) at the start when it cycles it
    assert opt.param_groups[0]["momentum"] == (0.95 if cycled else 0.0)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_onecycle_momentum_cycle_is_configurable_and_can_be_switched_off(name, caplog):
    import logging

    from resnetlab.config import OptimConfig, ScheduleConfig
    from resnetlab.optim import build_optimizer

    def momenta(schedule, **optim):
        opt = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name=name, lr=0.1, **optim))
        sched = build_scheduler(opt, schedule, total_steps=100, steps_per_epoch=10, base_lr=0.1)
        out = []
        for _ in range(100):
            g = opt.param_groups[0]
            out.append(g["momentum"] if name == "sgd" else g["betas"][0])
            opt.step()
            sched.step()
        return out

    own = {"momentum": 0.5} if name == "sgd" else {"betas": (0.5, 0.99)}
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        m = momenta(ScheduleConfig(name="onecycle", pct_start=0.3, base_momentum=0.6, max_momentum=0.8), **own)
    assert m[0] == pytest.approx(0.8) and min(m) == pytest.approx(0.6, abs=1e-3) and m[-1] == pytest.approx(0.8, abs=1e-3)
    assert 25 <= m.index(min(m)) <= 31  # lowest momentum at the lr peak
    which = "momentum" if name == "sgd" else "beta1"
    assert f"onecycle: {which} cycles 0.80 -> 0.60 -> 0.80" in caplog.text
    # switched off: the optimizer's own value stays for the whole run
    assert set(momenta(ScheduleConfig(name="onecycle", cycle_momentum=False), **own)) == {0.5}


def test_onecycle_metrics_log_the_lr_of_each_epochs_last_step(tmp_path):
    r = train(tiny("schedule.name=onecycle", "optim.lr=0.05", "schedule.final_div_factor=100"), tmp_path / "oc", progress=False)
    lrs = [row["lr"] for row in r.history]
    # the last step runs at lr / div_factor / final_div_factor (it logged a value past the end of the curve)
    assert lrs[-1] == pytest.approx(0.05 / 25 / 100, rel=1e-6)
    assert lrs[0] > lrs[-1]


@pytest.mark.parametrize("mult", [0.5, 2.0])
def test_metrics_log_the_heads_lr_whatever_the_bodys_multiplier(tmp_path, mult):
    t = Trainer(tiny("train.iterations=2", "schedule.name=constant", f"optim.body_lr_mult={mult}"), tmp_path / "lr", progress=False)
    t.fit()
    assert t.history[-1]["lr"] == pytest.approx(0.05)  # optim.lr, not the body's 0.1 at mult 2


def test_channels_last_false_trains_and_evaluates_in_nchw(tmp_path):
    layouts = {}
    for flag in (True, False):
        t = Trainer(tiny("data.name=synthetic:3x16x16:4:160", "data.subset=null", f"train.channels_last={flag}"),
                    tmp_path / str(flag), progress=False)  # fmt: skip
        seen = []
        t.model.layer1[0].conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
        t._train_epoch()  # training steps, then validation
        layouts[flag] = set(seen)
    assert layouts == {True: {False}, False: {True}}  # NHWC batches vs plain contiguous NCHW, train and val


def test_training_and_evaluation_sizes_that_differ_are_warned(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        t = Trainer(tiny("augment=['random-resized-crop:size=6']"), tmp_path / "rrc", progress=False)
    assert t.train_shape == (1, 6, 6) and t.input_size == [1, 8, 8]
    assert "training images are 6x6 (a crop / random-resized-crop size) but evaluation sees 8x8; add center-crop:size=6" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        Trainer(tiny("augment=['random-resized-crop:size=6', 'center-crop:size=6']"), tmp_path / "cc", progress=False)
    assert "training images are" not in caplog.text
    # a crop of the padded image larger than the image: a center crop to its size is refused, a resize is the way
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        Trainer(tiny("augment=['crop:size=12,padding=4']"), tmp_path / "big", progress=False)
    assert "training images are 12x12 (a crop / random-resized-crop size) but evaluation sees 8x8; add resize:size=12 to" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        Trainer(tiny("augment=['resize:size=12', 'crop:size=12,padding=4']"), tmp_path / "big2", progress=False)
    assert "training images are" not in caplog.text


class _FakeCuda:
    """Stands in for a machine with 4 GPUs (no test needs a GPU): records set_device calls."""

    def __init__(self, monkeypatch, capability=(8, 0)):
        self.current = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
        monkeypatch.setattr(torch.cuda, "set_device", self.current.append)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch):
    from resnetlab.trainer import process_device

    cuda = _FakeCuda(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    # under torchrun (world size 2, local rank 1): auto and cuda both give cuda:1, made current
    # (plain "cuda" put every process on GPU 0: NCCL's "Duplicate GPU detected")
    assert process_device("auto", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert process_device("cuda", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert cuda.current == [torch.device("cuda", 1)] * 2
    with pytest.raises(ConfigError, match=r"train.device='cuda:0' would put all 2 processes on one GPU; .* CUDA_VISIBLE_DEVICES"):
        process_device("cuda:0", local_rank=1, world_size=2)
    # more processes than GPUs (seen on a 1-GPU machine: "CUDA error: invalid device ordinal")
    with pytest.raises(ConfigError, match=r"train.device='auto': process with local rank 4 needs GPU cuda:4 but 4 GPU\(s\) "
                                          r"are visible here; start at most 4 processes per node .* train.device=cpu"):
        process_device("auto", local_rank=4, world_size=5)
    assert process_device("auto", local_rank=3, world_size=5) == torch.device("cuda", 3)
    cuda.current.pop()
    # one process: cuda is the current GPU, cuda:N is taken as given; the CPU is never "current"
    assert process_device("cuda", 0, 1) == torch.device("cuda", 3)
    assert process_device("cuda:2", 0, 1) == torch.device("cuda", 2)
    assert process_device("cpu", 1, 2) == torch.device("cpu")
    assert cuda.current[2:] == [torch.device("cuda", 3), torch.device("cuda", 2)]
    assert torch.backends.cudnn.benchmark is True  # fixed training shapes: cuDNN's autotuner


@pytest.mark.parametrize("capability,amp,expected", [((8, 0), "auto", torch.bfloat16), ((7, 5), "auto", torch.float16),
                                                     ((7, 0), "bf16", torch.bfloat16), ((9, 0), "fp16", torch.float16)])  # fmt: skip
def test_amp_auto_picks_bf16_only_where_the_gpu_has_it(monkeypatch, capability, amp, expected):
    from types import SimpleNamespace

    _FakeCuda(monkeypatch, capability)
    fake = SimpleNamespace(cfg=load_config(None, [f"train.amp={amp}"]), device=torch.device("cuda", 0))
    # V100/T4 (7.x) report bf16 as "supported" through emulation, which is slow: fp16 there
    assert Trainer._amp_dtype(fake) == expected


def test_amp_on_cpu_warns_that_it_trains_in_fp32(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        t = Trainer(tiny("train.amp=fp16", "train.device=cpu"), tmp_path / "amp", progress=False)
    assert t.autocast_dtype is None and "train.amp=fp16 applies on CUDA only; on cpu this run trains in fp32" in caplog.text


@pytest.mark.parametrize("has_bf16", [True, False])
def test_amp_bf16_on_cpu_trains_in_bf16_only_where_the_cpu_has_bf16_units(tmp_path, caplog, monkeypatch, has_bf16):
    # bf16 autocast on a CPU without bf16 units runs emulated kernels, slower than fp32: fp32 there
    # with a warning; on one with them (AVX512_BF16, AMX) the convolutions run in bf16
    import logging

    import resnetlab.runtime

    monkeypatch.setattr(resnetlab.runtime, "cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        t = Trainer(tiny("train.amp=bf16", "train.device=cpu", "train.iterations=3"), tmp_path / "bf16", progress=False)
    seen = []
    t.model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    r = t.fit()
    assert seen == [torch.bfloat16 if has_bf16 else torch.float32] * 3
    assert math.isfinite(r.history[-1]["train_loss"])
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # the weights and the optimizer stay fp32
    if has_bf16:
        assert t.autocast_dtype == torch.bfloat16 and t.scaler is None
        assert "training under bf16 autocast on the CPU" in caplog.text and "WARNING" not in caplog.text
    else:
        assert t.autocast_dtype is None
        assert "train.amp=bf16: this CPU has no bf16 units (AVX512_BF16, AMX or ARM BF16)" in caplog.text
        assert "this run trains in fp32" in caplog.text


@pytest.mark.parametrize("norm", ["bn", "in", "bin", "ln", "gn", "none", "gn-torch", "in-torch", "ln-torch"])
def test_every_norm_trains_under_cpu_bf16_autocast(tmp_path, monkeypatch, norm):
    # the hand-written norms take the bf16 convolution outputs of CPU autocast (as CUDA's fp16/bf16)
    # and keep fp32 weights and statistics; EMA and flip TTA run beside them
    import resnetlab.runtime

    monkeypatch.setattr(resnetlab.runtime, "cpu_has_bf16", lambda: True)
    t = Trainer(tiny("train.amp=bf16", "train.device=cpu", "train.iterations=3", f"model.norm={norm}", "train.ema=0.9",
                     "train.tta_flip=true"), tmp_path / norm, progress=False)  # fmt: skip
    r = t.fit()
    assert t.autocast_dtype == torch.bfloat16
    assert math.isfinite(r.history[-1]["train_loss"]) and r.history[-1]["val_acc"] is not None
    assert all(v.dtype == torch.float32 for v in t.model.state_dict().values() if v.is_floating_point())


def test_amp_auto_on_cpu_stays_fp32_even_with_bf16_units(tmp_path, monkeypatch):
    import resnetlab.runtime

    monkeypatch.setattr(resnetlab.runtime, "cpu_has_bf16", lambda: True)
    assert Trainer(tiny("train.device=cpu"), tmp_path / "auto", progress=False).autocast_dtype is None


def test_cpu_has_bf16_agrees_with_the_cpu_flags():
    from resnetlab.runtime import cpu_has_bf16

    flags = set()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.skip("no CPU flags to compare with")
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "bf16"})


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_train(tmp_path, name):
    lr = 0.05 if name == "sgd" else 3e-3
    r = train(tiny(f"optim.name={name}", f"optim.lr={lr}", "train.epochs=3", "augment=[]", "model.dropout=0"), tmp_path / name, progress=False)
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


def test_ema_averages_weights_and_norm_statistics_per_step_and_keeps_the_batch_count(tmp_path):
    # ema = 0.9 ema + 0.1 live after every step, from the first step's weights (timm's ModelEma);
    # BatchNorm's integer num_batches_tracked used to be averaged and truncated: it stayed at 1
    t = Trainer(tiny("train.iterations=4", "train.ema=0.9", "train.device=cpu"), tmp_path / "ema", progress=False)
    seen = []  # the live weights and statistics before each training forward = after each step
    t.model.register_forward_pre_hook(lambda m, _: seen.append({k: v.double() for k, v in m.state_dict().items()}) if m.training else None)
    t.fit()
    after = [*seen[1:], {k: v.double() for k, v in t.model.state_dict().items()}]
    ref = dict(after[0])
    for live in after[1:]:
        ref = {k: 0.9 * ref[k] + 0.1 * live[k] for k in ref}
    got = t.ema.module.state_dict()
    for k, v in got.items():
        if k.endswith("num_batches_tracked"):
            assert v.item() == 4, k
        else:
            assert torch.allclose(v.double(), ref[k], atol=1e-6), k


def test_ema_and_tta_are_used_for_evaluation(tmp_path):
    from resnetlab.evaluate import collect_outputs

    t = Trainer(tiny("train.ema=0.9", "train.tta_flip=true", "train.epochs=1"), tmp_path / "v", progress=False)
    t._train_epoch()
    loss, _ = t.validate()

    def val_loss(model, tta):
        logits, y, _ = collect_outputs(model, t.val_loader, tta_flip=tta)
        return F.cross_entropy(logits, y).item()

    # validation scores the averaged weights with flip TTA: not the raw weights, not without TTA
    assert loss == pytest.approx(val_loss(t.ema.module, True), abs=1e-6)
    assert abs(loss - val_loss(t.ema.module, False)) > 1e-4
    assert abs(loss - val_loss(t.model, True)) > 1e-4

    train(tiny("train.ema=0.9", "train.tta_flip=true", "train.epochs=1"), tmp_path / "ema", progress=False)
    # last/ holds the EMA weights for inference and the raw weights for resume: they differ
    from resnetlab.checkpoint import load_trainer_state

    raw = load_trainer_state(tmp_path / "ema" / "checkpoints" / "last")["model"]
    ema = load_weights(tmp_path / "ema" / "checkpoints" / "last")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].dtype.is_floating_point)


def test_head_only_epochs_keep_body_frozen(tmp_path):
    t = Trainer(tiny("train.head_only_epochs=1", "train.epochs=2", "model.dropout=0"), tmp_path / "ft", progress=False)
    body0 = t.model.layer1[0].conv1.weight.detach().clone()
    fc0 = t.model.fc.weight.detach().clone()
    t._train_epoch()
    assert torch.equal(t.model.layer1[0].conv1.weight, body0)
    assert not torch.equal(t.model.fc.weight, fc0)
    t._train_epoch()
    assert not torch.equal(t.model.layer1[0].conv1.weight, body0)


def test_freezing_happens_once_per_phase(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="resnetlab"):
        train(tiny("model.freeze_until=layer1"), tmp_path / "fz", progress=False)
    assert caplog.text.count("froze ") == 1  # was logged (and done) twice: at start-up and again at epoch 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        train(tiny("train.head_only_epochs=1", "model.freeze_until=layer1"), tmp_path / "ho", progress=False)
    assert caplog.text.count("froze ") == 1  # up to layer1, once the head-only epoch is over


def test_metrics_csv_columns_and_values(tmp_path):
    r = train(tiny(), tmp_path / "m", progress=False)
    rows = read_rows(tmp_path / "m" / "metrics.csv", drop_timing=False)
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "images_per_s"]
    for row in rows:
        assert 0 <= float(row["train_acc"]) <= 1 and 0 <= float(row["val_acc"]) <= 1
        assert float(row["images_per_s"]) > 0 and math.isfinite(float(row["val_loss"]))
    assert float(rows[-1]["val_acc"]) == pytest.approx(r.history[-1]["val_acc"], abs=1e-6)



def test_test_every_epoch_adds_test_curves_that_pick_nothing(tmp_path):
    # reports 000, 002 and 003 plot the test split per epoch; the checkpoint stays chosen on val_acc
    from resnetlab.evaluate import evaluate
    from resnetlab.report import build_report
    from resnetlab.trainer import _truncate_metrics

    run = tmp_path / "t"
    r = train(tiny("train.epochs=3", "output.test_every_epoch=true", "train.tta_flip=true"), run, progress=False)
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0])[-2:] == ["test_loss", "test_acc"] and len(rows) == 3
    # the last row's test figures are those of the last checkpoint's weights on the test split
    last = evaluate(run, which="last", device="cpu")
    assert float(rows[-1]["test_acc"]) == pytest.approx(last["accuracy"], abs=1e-6)
    assert float(rows[-1]["test_loss"]) == pytest.approx(last["loss"], rel=1e-4)
    assert r.history[-1]["test_acc"] == pytest.approx(last["accuracy"], abs=1e-6)
    best_epoch = max(range(3), key=lambda i: (float(rows[i]["val_acc"]), -i)) + 1
    assert json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["epoch"] == best_epoch
    md = build_report(run)[1].read_text()
    assert "| epoch | lr | train_loss | train_acc | val_loss | val_acc | test_loss | test_acc |" in md
    assert f"| 3 | {float(rows[-1]['lr']):.4g} |" in md
    # a resume that drops rows written after its checkpoint keeps the file's own columns
    _truncate_metrics(run / "metrics.csv", 2)
    assert list(read_rows(run / "metrics.csv")[0])[-2:] == ["test_loss", "test_acc"] and len(read_rows(run / "metrics.csv")) == 2
    # off (the default): no test columns
    train(tiny("train.epochs=1"), tmp_path / "off", progress=False)
    assert "test_acc" not in read_rows(tmp_path / "off" / "metrics.csv")[0]

def test_progressive_resize_trains_small_first_and_evaluates_at_full_size(tmp_path):
    cfg = tiny(
        "data.name=synthetic:1x16x16:4:160",
        "data.subset=null",
        "augment=[flip]",
        "train.epochs=4",
        "train.progressive_resize.start_size=8",
        "train.progressive_resize.full_at=0.5",
    )
    t = Trainer(cfg, tmp_path / "pr", progress=False)
    seen = []
    t.model.register_forward_pre_hook(lambda m, args: seen.append((m.training, tuple(args[0].shape[-2:]))))
    sizes = []
    for _ in range(4):
        seen.clear()
        t._train_epoch()
        sizes.append(sorted(set(seen)))
    # epochs 1-2 ramp 8 -> 12, epochs 3-4 at full size; validation always at 16x16
    assert sizes == [
        [(False, (16, 16)), (True, (8, 8))],
        [(False, (16, 16)), (True, (12, 12))],
        [(False, (16, 16)), (True, (16, 16))],
        [(False, (16, 16)), (True, (16, 16))],
    ]
    assert math.isfinite(t.history[-1]["train_loss"])


def test_progressive_resize_always_ends_at_full_size():
    from resnetlab.config import ProgressiveResizeConfig
    from resnetlab.trainer import progressive_size

    pr = ProgressiveResizeConfig(start_size=8, full_at=1.0)
    assert [progressive_size(e, 4, (16, 16), pr) for e in range(4)] == [(8, 8), (8, 8), (12, 12), None]
    pr = ProgressiveResizeConfig(start_size=8, full_at=0.5)
    assert [progressive_size(e, 2, (16, 16), pr) for e in range(2)] == [(8, 8), None]


def test_progressive_resize_needs_two_epochs(tmp_path):
    with pytest.raises(ResnetlabError, match=r"train.progressive_resize needs at least 2 epochs .* this run has 1"):
        Trainer(tiny("data.name=synthetic:1x16x16:4:160", "data.subset=null", "train.epochs=1",
                     "train.progressive_resize.start_size=8"), tmp_path / "x", progress=False)  # fmt: skip


def test_final_evaluation_runs_on_the_trainers_device(tmp_path, monkeypatch):
    import resnetlab.evaluate

    devices = []
    real = resnetlab.evaluate.evaluate

    def recording(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(resnetlab.evaluate, "evaluate", recording)
    train(tiny("train.epochs=1", "train.device=cpu", "output.evaluate_test=true", "output.evaluate_train=true"), tmp_path / "d", progress=False)
    assert devices == [torch.device("cpu")] * 2  # the trainer's device, not evaluate's "auto" (cuda:0 on a GPU machine)


def test_progressive_resize_start_size_must_be_below_the_image_size(tmp_path):
    with pytest.raises(ResnetlabError, match=r"start_size=16 must be smaller than the training images' height \(16\)"):
        Trainer(tiny("data.name=synthetic:1x16x16:4:160", "data.subset=null", "train.progressive_resize.start_size=16"), tmp_path / "x", progress=False)


def test_the_dataset_is_loaded_once_for_training_test_evaluation_and_report(tmp_path, monkeypatch):
    import resnetlab.data
    from resnetlab.evaluate import evaluate

    calls = []
    real = resnetlab.data.load_dataset

    def counting(name, **kwargs):
        calls.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(resnetlab.data, "load_dataset", counting)
    cfg = tiny("output.evaluate_test=true", "output.report=true", "output.evaluate_train=true", "train.epochs=1")
    r = train(cfg, tmp_path / "once", progress=False)
    assert calls == ["digits"]  # the trainer's load, reused by the evaluations and the report
    html = (tmp_path / "once" / "report.html").read_text()
    assert "misclassified test images" in html  # the report's images came from the same splits
    # output.evaluate_train: the best checkpoint on the training split (256 of the 320-image subset), in the summary
    train_eval = json.loads((tmp_path / "once" / "eval" / "train" / "metrics.json").read_text())
    assert train_eval["split"] == "train" and train_eval["num_samples"] == 256
    assert r.train_metrics["accuracy"] == train_eval["accuracy"]
    assert "train accuracy (best checkpoint, no augmentation)" in html
    # the same numbers as an evaluation that rebuilds the dataset from the checkpoint
    again = evaluate(tmp_path / "once", split="test", out_dir=tmp_path / "again")
    assert len(calls) == 2 and again["accuracy"] == r.test_metrics["accuracy"] and again["num_samples"] == 360


def test_tensorboard_scalars_match_metrics_csv_after_overwrite(tmp_path):
    # --overwrite removes the old run's tensorboard/ once the new trainer is built: the writer
    # must open after that (it used to open first and lose its event file: the run failed).
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny("output.tensorboard=true")
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    train(tiny("output.tensorboard=true", "seed=1"), run, overwrite=True, progress=False)
    events = list((run / "tensorboard").iterdir())
    assert len(events) == 1  # the first run's event file went with --overwrite
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rows = read_rows(run / "metrics.csv")
    for key in ("train_loss", "val_acc", "lr"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in logged] == [int(r["epoch"]) for r in rows]
        assert [v for _, v in logged] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)


def test_progress_bar_on_a_terminal_shows_each_epoch_and_the_live_window_figures(tmp_path, capsys):
    # progress=True is what a terminal gets (sys.stderr.isatty()); 256 training images / batch 8
    # = 32 steps per epoch: the windows end at step 25 and at the epoch's end
    result = train(tiny("train.batch_size=8"), tmp_path / "bar", progress=True)
    frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert len(result.history) == 2
    for epoch in (1, 2):
        mine = [f for f in frames if f.startswith(f"epoch {epoch}/2:")]
        for step in ("25/32", "32/32"):
            live = [f for f in mine if f" {step} " in f]
            assert live and all("loss=" in f and "acc=" in f and "img_s=" in f for f in live), (epoch, step, mine)


def test_head_only_epochs_that_cover_the_whole_run_are_refused(tmp_path):
    # the body would never train (it ended equal to the pretrained weights)
    with pytest.raises(ConfigError, match=r"train.head_only_epochs=2 leaves no epoch to train the whole network "
                                          r"\(this run has 2\); .* model.freeze_until=layer3 to train only the head"):
        Trainer(tiny("train.head_only_epochs=2"), tmp_path / "r", progress=False)
    assert Trainer(tiny("train.head_only_epochs=1"), tmp_path / "ok", progress=False).epochs == 2


def test_a_warmup_longer_than_a_run_of_iterations_is_refused_before_any_step():
    # the config check compares warmup_epochs with train.epochs only: with train.iterations=5 a
    # 3-epoch warmup (60 steps) ran, and the lr peaked at 5/60 of optim.lr without a word
    from resnetlab.config import ScheduleConfig

    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"^schedule.warmup_epochs=3.0 is 60 steps and covers the whole run \(5 steps\)"):
        build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=3), total_steps=5, steps_per_epoch=20, base_lr=0.1)
    build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=0.2), total_steps=5, steps_per_epoch=20, base_lr=0.1)


def test_milestones_at_or_past_the_end_of_the_run_are_named_in_a_warning(caplog):
    # epoch / iteration milestones were not checked against the run's length: a 2-epoch run with
    # milestones_unit=epoch and [1, 2] decayed once, and a milestone past the end never, silently.
    # A warning, not an error: cutting a recipe short for a trial is a legitimate run.
    from resnetlab.config import ScheduleConfig

    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        build_scheduler(opt, ScheduleConfig(name="multistep", milestones=[1, 2], milestones_unit="epoch"), 40, 20, 0.1)
    assert re.search(r"schedule.milestones \[2\] \(epochs\) are at or past the end of the run \(40 steps, 2 epochs\)", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        build_scheduler(opt, ScheduleConfig(name="multistep", milestones=[50, 10, 40], milestones_unit="iteration"), 30, 20, 0.1)
    assert "schedule.milestones [40, 50] (iterations)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        build_scheduler(opt, ScheduleConfig(name="multistep", milestones=[1, 1.5], milestones_unit="epoch"), 40, 20, 0.1)
    assert "milestones" not in caplog.text


def test_sync_bn_on_one_process_says_it_has_no_effect(tmp_path, caplog):
    # accepted and silently ignored without torchrun
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        Trainer(tiny("train.sync_bn=true"), tmp_path / "r", progress=False)
    assert "train.sync_bn has no effect on one process" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        Trainer(tiny(), tmp_path / "r2", progress=False)
    assert "sync_bn" not in caplog.text


def test_onecycle_state_loads_weights_only_even_where_torch_keeps_the_anneal_function(tmp_path):
    """torch 2.3 (inside torch>=2.3) puts OneCycleLR's anneal function, a bound method, in its
    state_dict; load_trainer_state's torch.load(weights_only=True) refused it, so --resume of a
    onecycle run failed. Simulated here by giving the scheduler that attribute as torch 2.3 does."""
    import resnetlab.checkpoint as ck

    trainer = Trainer(tiny("schedule.name=onecycle"), tmp_path / "run", progress=False)
    sched = trainer.scheduler
    sched.anneal_func = sched._anneal_func  # torch 2.3: self.anneal_func = self._annealing_cos
    assert "anneal_func" in sched.state_dict()
    trainer.save_last()
    state = ck.load_trainer_state(tmp_path / "run" / "checkpoints" / "last")
    assert "anneal_func" not in state["scheduler"]
    fresh = Trainer(tiny("schedule.name=onecycle"), tmp_path / "run2", progress=False)
    fresh.scheduler.load_state_dict(state["scheduler"])
    assert fresh.scheduler.get_last_lr() == sched.get_last_lr()



def _large_image_config(*extra: str):
    return load_config(None, ["model.name=resnet8", "data.name=synthetic:3x256x256:2:20", "train.epochs=1",
                              "train.batch_size=4", "output.test_every_epoch=true", "output.report=false", *extra])  # fmt: skip


def test_evaluation_batches_of_large_images_are_smaller_than_256(tmp_path):
    # 256 images per evaluation forward at 256 px (a CIFAR stem) peaked at 5 GB, twice a training
    # step at batch 32: validation and the test curve now take 64 at 256 px, 256 at 32 px.
    trainer = Trainer(_large_image_config(), tmp_path / "run", progress=False)
    assert trainer.val_loader.batch_size == trainer.test_loader.batch_size == 64
    small = load_config(None, ["model.name=resnet8", "data.name=synthetic:3x32x32:2:40", "train.batch_size=8"])
    assert Trainer(small, tmp_path / "small", progress=False).val_loader.batch_size == 256


@pytest.mark.slow
def test_the_final_evaluation_of_large_images_takes_the_smaller_batch(tmp_path, monkeypatch):
    import resnetlab.evaluate as ev
    from resnetlab.trainer import finish_run

    sizes = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: sizes.append(k.get("batch_size")) or real(*a, **k))
    cfg = _large_image_config("output.evaluate_val=true", "output.evaluate_train=true")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    finish_run(tmp_path / "run", cfg, splits=trainer.splits, device="cpu")
    assert len(sizes) == 3 and set(sizes) == {64}
