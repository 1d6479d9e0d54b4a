"""evaluate / collect_outputs and `resnetlab evaluate`, on a really trained run and on image folders."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from _eval_runs import fresh_checkpoint_run, make_image_folder, trained_run

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.cli.evaluate import JSON_KEYS
from resnetlab.data import load_dataset
from resnetlab.data.images import preprocess
from resnetlab.errors import CheckpointError, ResnetlabError
from resnetlab.evaluate import collect_outputs, evaluate


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def run(tmp_path):
    return trained_run(tmp_path)


# -- collect_outputs -----------------------------------------------------------------------


class _ListLoader:
    def __init__(self, batches):
        self.batches = batches

    def iter_epoch(self, epoch, start_step=0):
        assert epoch == 0
        yield from self.batches


def test_collect_outputs_matches_forward_and_restores_mode():
    from resnetlab.models import create_model

    model = create_model("resnet8", num_classes=4, in_channels=3).train()
    x = torch.randn(10, 3, 8, 8)
    y = torch.arange(10) % 4
    loader = _ListLoader([(x[:4], y[:4], torch.arange(4)), (x[4:], y[4:], torch.arange(4, 10))])
    logits, targets, idx = collect_outputs(model, loader, "cpu")
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(logits, expected)
    assert targets.tolist() == y.tolist() and idx.tolist() == list(range(10))
    assert not logits.requires_grad and logits.dtype == torch.float32

    flip, _, _ = collect_outputs(model, loader, "cpu", tta_flip=True)
    with torch.no_grad():
        expected_flip = (model(x) + model(x.flip(3))) / 2
    torch.testing.assert_close(flip, expected_flip)
    assert not torch.allclose(flip, logits)

    bf, _, _ = collect_outputs(model, loader, "cpu", amp_dtype=torch.bfloat16)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, expected, atol=0.1, rtol=0.05)


# -- evaluate on the trained digits run ----------------------------------------------------


def test_evaluate_files_agree_with_an_independent_forward_pass(run):
    m = evaluate(run, split="test", device="cpu")
    out = run / "eval" / "test"
    assert m["predictions"] == str(out / "predictions.csv")
    # the trainer reached a useful model, so the numbers below are not about a constant predictor
    assert m["accuracy"] > 0.8 and m["num_samples"] == 360

    # recompute from scratch: dataset + checkpoint mean/std + model, without the loader
    ckpt = load_checkpoint(run)
    splits = load_dataset("digits", seed=0)
    x = preprocess(splits.test.images, ckpt.meta["mean"], ckpt.meta["std"])
    with torch.no_grad():
        probs = torch.softmax(ckpt.model(x).double(), 1)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(float((pred == splits.test.targets).double().mean()))
    assert m["loss"] == pytest.approx(float(torch.nn.functional.nll_loss(probs.log(), splits.test.targets)), rel=1e-4)

    rows = _read_csv(out / "predictions.csv")
    assert rows[0] == ["index", "target", "prediction", "confidence", "target_name", "prediction_name"]  # no path for digits
    # the class names beside the indices (report 004 read its predictions as names)
    assert all(r[4] == splits.classes[int(r[1])] and r[5] == splits.classes[int(r[2])] for r in rows[1:])
    body = np.array([r[:4] for r in rows[1:]], dtype=float)
    assert body.shape == (360, 4)
    order = body[:, 0].astype(int)
    assert sorted(order.tolist()) == list(range(360))
    assert (body[:, 1].astype(int) == splits.test.targets.numpy()[order]).all()
    assert (body[:, 2].astype(int) == pred.numpy()[order]).all()
    np.testing.assert_allclose(body[:, 3], probs.max(1).values.numpy()[order], atol=1e-6)
    assert (body[:, 1] == body[:, 2]).mean() == pytest.approx(m["accuracy"])

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and saved["split"] == "test" and saved["dataset"] == "digits"
    cm = np.array(saved["confusion_matrix"])
    assert cm.sum() == 360 and np.trace(cm) == round(m["accuracy"] * 360)
    assert cm.sum(1).tolist() == np.bincount(splits.test.targets.numpy(), minlength=10).tolist()

    cm_csv = _read_csv(out / "confusion_matrix.csv")
    assert cm_csv[0] == ["true\\predicted", *splits.classes]
    assert np.array([r[1:] for r in cm_csv[1:]], dtype=int).tolist() == cm.tolist()
    cmn = np.array([r[1:] for r in _read_csv(out / "confusion_matrix_normalized.csv")[1:]], dtype=float)
    np.testing.assert_allclose(cmn, cm / cm.sum(1, keepdims=True), atol=1e-5)
    cm_json = json.loads((out / "confusion_matrix.json").read_text())
    assert cm_json["counts"] == cm.tolist() and cm_json["classes"] == splits.classes
    np.testing.assert_allclose(cm_json["normalized"], cm / cm.sum(1, keepdims=True), atol=1e-9)  # rows: share of the true class

    per = _read_csv(out / "per_class.csv")
    assert per[0] == ["class", "precision", "recall", "f1", "support"]
    assert [int(r[4]) for r in per[1:]] == cm.sum(1).tolist()
    assert float(per[1][2]) == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-5)  # recall of class 0

    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_evaluate_val_split_and_out_dir(run, tmp_path):
    m = evaluate(run, split="val", out_dir=tmp_path / "elsewhere", device="cpu")
    assert m["num_samples"] == 144  # digits: 10 % of 1437 held out, seeded like the trainer
    assert (tmp_path / "elsewhere" / "metrics.json").is_file()
    assert not (run / "eval" / "val").exists()
    # validation accuracy of the best checkpoint is the one the trainer logged for its epoch
    best_val = max(float(r["val_acc"]) for r in csv.DictReader(open(run / "metrics.csv")))
    assert m["accuracy"] == pytest.approx(best_val, abs=1e-5)
    # the same --out again (a rerun, or one cut short): its own files are replaced
    (tmp_path / "elsewhere" / "metrics.json").unlink()
    assert evaluate(run, split="val", out_dir=tmp_path / "elsewhere", device="cpu")["num_samples"] == 144
    # a folder of other files is refused before any work, and keeps its files
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "predictions.csv").write_text("my predictions\n")
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ResnetlabError, match=r"holds files evaluate does not write \(notes.txt\); choose a new or empty folder"):
        evaluate(run, split="val", out_dir=tmp_path / "mine", device="cpu")
    assert (tmp_path / "mine" / "predictions.csv").read_text() == "my predictions\n"


def test_last_checkpoint_evaluates_beside_the_best_ones_result(run):
    best = evaluate(run, split="val", device="cpu")
    last = evaluate(run, split="val", which="last", device="cpu")
    # the report reads eval/<split> as the best checkpoint's result: --which last must not replace it
    assert best["out_dir"] == str(run / "eval" / "val") and last["out_dir"] == str(run / "eval" / "val-last")
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["accuracy"] == best["accuracy"]
    # the folder follows the checkpoint actually loaded, however it was named
    by_path = evaluate(run / "checkpoints" / "last", split="val", device="cpu")
    assert by_path["out_dir"] == str(run / "eval" / "val-last") and by_path["accuracy"] == last["accuracy"]
    assert evaluate(run / "checkpoints" / "best", split="val", which="last", device="cpu")["out_dir"] == str(run / "eval" / "val")
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["accuracy"] == best["accuracy"]


def _run_with(tmp_path, *names):
    """A run folder holding the named checkpoint folders, each a tiny model whose meta names it."""
    from resnetlab.checkpoint import save_checkpoint
    from resnetlab.models import create_model

    run = tmp_path / "r"
    model = create_model("resnet8", num_classes=2, width=4)
    for name in names:
        save_checkpoint(run / "checkpoints" / name, model, {"arch": "resnet8", "arch_args": {"num_classes": 2, "width": 4},
                                                            "name": name}, keep_previous=False)  # fmt: skip
    return run


@pytest.mark.parametrize(
    "present,which,loaded",
    [
        (("best", "last", "last.prev"), "best", "best"),
        (("best", "last", "last.prev"), "last", "last"),
        (("best", "last.prev"), "last", "last.prev"),  # was best: the previous last is the newer weights
        (("last.prev", "best"), "last", "last.prev"),
        (("best",), "last", "best"),
        (("last", "last.prev"), "best", "last"),  # interrupted before its first validated epoch: documented
        (("best.prev", "last"), "best", "best.prev"),  # a save of best killed between its two renames
    ],
)
def test_which_falls_back_newest_first_and_says_so(tmp_path, caplog, present, which, loaded):
    import logging

    from resnetlab.checkpoint import resolve_checkpoint

    run = _run_with(tmp_path, *present)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        ck = load_checkpoint(run, which=which)
    assert ck.path == run / "checkpoints" / loaded and ck.meta["name"] == loaded
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if loaded == which:
        assert warned == []
    else:
        assert warned == [f"no {which} checkpoint in {run / 'checkpoints'}; using {loaded} instead"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):  # a lookup that says itself what it found
        assert resolve_checkpoint(run, which, warn=False) == ck.path
    assert not caplog.records


def test_which_must_be_best_or_last(tmp_path, caplog):
    from resnetlab.checkpoint import resolve_checkpoint

    run = _run_with(tmp_path, "best", "last")
    with pytest.raises(CheckpointError, match=r"^unknown checkpoint \(which\) 'lastt'; did you mean 'last'\? \(allowed: best, last\)$"):
        load_checkpoint(run, which="lastt")  # loaded best
    for bad in ("", "best.prev", "Last", None):
        with pytest.raises(CheckpointError, match=r"\(allowed: best, last\)"):
            resolve_checkpoint(run, bad)
    with pytest.raises(CheckpointError, match="allowed: best, last"):  # a checkpoint folder too: which is never ignored
        evaluate(run / "checkpoints" / "best", which="lastt")
    # a checkpoint folder named directly is loaded whatever which says, without a warning
    assert load_checkpoint(run / "checkpoints" / "best", which="last").meta["name"] == "best" and not caplog.records


def test_a_safetensors_file_other_than_model_safetensors_is_refused(tmp_path, capsys):
    """ema.safetensors beside a checkpoint's meta.json loaded the folder's model.safetensors instead."""
    import shutil

    best = _run_with(tmp_path, "best") / "checkpoints" / "best"
    shutil.copy(best / "model.safetensors", best / "ema.safetensors")
    want = f"{best / 'ema.safetensors'} is not a checkpoint's model.safetensors: the meta.json beside it describes"
    with pytest.raises(CheckpointError, match="^" + want):
        load_checkpoint(best / "ema.safetensors")
    assert _cli_error(capsys, ["evaluate", str(best / "ema.safetensors")]) == f"error: {want} model.safetensors, not this " \
        "file; give the checkpoint folder or its model.safetensors"  # fmt: skip
    assert load_checkpoint(best / "model.safetensors").path == best


def test_cli_evaluate_json_prints_one_object(run, capsys):
    assert main(["evaluate", str(run), "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    obj = json.loads(out)  # exactly one JSON document on stdout
    assert list(obj) == list(JSON_KEYS)
    assert obj["top5_accuracy"] >= obj["accuracy"]  # 10 classes: top-5 is reported
    assert len(obj["confusion_matrix"]) == 10 and len(obj["per_class"]) == 10
    assert obj["predictions"].endswith("eval/test/predictions.csv")


def test_cli_evaluate_summary(run, capsys):
    assert main(["evaluate", str(run / "checkpoints" / "best"), "--split", "train", "--out", str(run / "tr")]) == 0
    out = capsys.readouterr().out
    assert "train split of digits: 1293 images" in out
    assert (run / "tr" / "predictions.csv").is_file()


def test_quiet_works_for_every_command_before_or_after_it(run, tmp_path, capsys):
    # only train and study had --quiet; `resnetlab --quiet evaluate` was refused
    for i, argv in enumerate((["--quiet", "evaluate"], ["evaluate", "-q"])):
        assert main([*argv, str(run), "--split", "val", "--out", str(tmp_path / f"q{i}")]) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and "val split of digits" in captured.out
    assert main(["evaluate", str(run), "--split", "val", "--out", str(tmp_path / "loud")]) == 0
    assert capsys.readouterr().err != ""  # without it the INFO lines are there: the test can fail


# -- image folders: the path column ------------------------------------------------------


def test_image_folder_predictions_have_paths(tmp_path):
    folder = make_image_folder(tmp_path / "shapes")
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16})
    m = evaluate(run, device="cpu")
    rows = list(csv.DictReader(open(m["predictions"])))
    assert list(rows[0]) == ["index", "target", "prediction", "confidence", "target_name", "prediction_name", "path"]
    assert {(r["target_name"], r["prediction_name"]) for r in rows} <= {(a, b) for a in ("circle", "square", "stripes") for b in ("circle", "square", "stripes")}
    assert len(rows) == m["num_samples"] == 6  # 20 % of 30 images, stratified
    for r in rows:
        assert r["path"].startswith(str(folder)) and r["path"].endswith(".png")
        # the target is the class folder the file lives in
        assert ["circle", "square", "stripes"][int(r["target"])] in r["path"]

    # a dataset that moved away: one line naming the path the checkpoint recorded, and how to
    # give its new place (--data-root was ignored for image folders: no way to evaluate it)
    folder.rename(tmp_path / "moved")
    with pytest.raises(ValueError, match="shapes' the run was trained on does not exist.*if it moved, give its new place with --data-root") as exc:
        evaluate(run, device="cpu")
    assert "\n" not in str(exc.value)
    other = make_image_folder(tmp_path / "other", classes=("x", "y"))
    with pytest.raises(CheckpointError, match=f"do not match dataset 'imagefolder:{other}'"):  # the folder it read, not the old one
        evaluate(run, device="cpu", data_root=other, out_dir=tmp_path / "e-other")
    again = evaluate(run, device="cpu", data_root=tmp_path / "moved", out_dir=tmp_path / "e-moved")
    assert again["accuracy"] == m["accuracy"] and again["num_samples"] == 6  # the same split: its fingerprint holds relative paths
    rows = list(csv.DictReader(open(again["predictions"])))
    assert all(r["path"].startswith(str(tmp_path / "moved")) for r in rows)



def test_class_names_without_glyphs_give_one_warning_line(tmp_path, capsys):
    # matplotlib's default font has no CJK characters: it warned once per character per figure,
    # a screenful of "Glyph ... missing from font(s)" lines on stderr for a few class names
    folder = make_image_folder(tmp_path / "animals", classes=("\u732b", "\u72ac", "\u9ce5 bird"))
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16})
    capsys.readouterr()
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert (run / "eval" / "test" / "confusion_matrix.png").is_file()
    assert "Glyph" not in err
    told = [line for line in err.splitlines() if "lacks characters such as" in line]
    assert len(told) == 1 and "'\u72ac'" in told[0] and "matplotlibrc" in told[0]  # classes sort: the first drawn
    # other warnings go on to whatever showed them before (here a recorder)
    import warnings

    from resnetlab.cli import summarise_glyph_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with summarise_glyph_warnings():
            warnings.warn("something else", UserWarning, stacklevel=1)
            warnings.warn("Glyph 29483 (\\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]
    assert "lacks characters such as '\u732b'" in capsys.readouterr().err

def test_glyph_warnings_of_matplotlib_before_3_9_are_summarised_too(caplog):
    # matplotlib 3.7/3.8 (inside matplotlib>=3.7) word it "missing from current font." and name no
    # font: the pattern only knew 3.9's "from font(s) NAME.", so every character warned on stderr.
    import warnings

    from resnetlab.cli import summarise_glyph_warnings

    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING, logger="resnetlab"):
        warnings.simplefilter("always")
        with summarise_glyph_warnings():
            for code in ("732B", "72AC"):
                warnings.warn(f"Glyph 1 (\\N{{CJK UNIFIED IDEOGRAPH-{code}}}) missing from current font.", UserWarning, stacklevel=1)
    assert seen == []
    told = [r.getMessage() for r in caplog.records if "lacks characters such as" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("the figures' font lacks characters such as '\u732b'")


# -- bad input: one line, exit code 2 -----------------------------------------------------


def _cli_error(capsys, argv):
    # Drop earlier output: the CLI's log handler from a previous test may hold a closed stream.
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_missing_checkpoint(tmp_path, capsys):
    msg = _cli_error(capsys, ["evaluate", str(tmp_path / "nope")])
    assert "not found" in msg and "nope" in msg


def test_truncated_weights(run, capsys):
    w = run / "checkpoints" / "best" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    msg = _cli_error(capsys, ["evaluate", str(run)])
    assert "corrupt or truncated" in msg and "model.safetensors" in msg


def test_a_checkpoint_with_nan_weights_is_not_scored(run, capsys):
    """nan logits made argmax predict class 0 everywhere: evaluate wrote a number for a broken model."""
    from safetensors.torch import load_file, save_file

    w = run / "checkpoints" / "best" / "model.safetensors"
    state = load_file(w)
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    save_file(state, w)
    before = sorted(p.name for p in run.rglob("*"))
    msg = _cli_error(capsys, ["evaluate", str(run)])
    assert msg.startswith("error: the model's outputs are nan or inf for ") and "diverged" in msg
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written


def test_foreign_meta_json(run, capsys):
    (run / "checkpoints" / "best" / "meta.json").write_text(json.dumps({"format": "keras-h5/2", "layers": []}))
    msg = _cli_error(capsys, ["evaluate", str(run)])
    assert "not a resnetlab checkpoint" in msg and "keras-h5/2" in msg


def test_checkpoint_of_other_classes(tmp_path):
    run = fresh_checkpoint_run(tmp_path, {"name": "digits"})
    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["data"]["name"] = "synthetic:1x8x8:3:60"  # 3 classes, but the model has 10
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"checkpoint classes \(10: .*do not match dataset 'synthetic"):
        evaluate(run, device="cpu")


def test_bad_split_and_batch_size(run):
    with pytest.raises(ValueError, match="split must be one of test, val, train, got 'dev'"):
        evaluate(run, split="dev")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(run, batch_size=0)


def test_unwritable_output(run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should be
    msg = _cli_error(capsys, ["evaluate", str(run), "--out", str(blocker / "sub")])
    assert "cannot write evaluation results" in msg


def test_data_root_replaces_the_recorded_root(tmp_path, capsys):
    from test_data import write_mnist  # the data tests' writer of real IDX files

    write_mnist(tmp_path / "old", n_train=100, n_test=30)
    run = fresh_checkpoint_run(tmp_path, {"name": "mnist", "root": str(tmp_path / "old")})
    (tmp_path / "old").rename(tmp_path / "new")
    msg = _cli_error(capsys, ["evaluate", str(run)])
    assert "old" in msg  # names the recorded root that is gone
    assert main(["evaluate", str(run), "--data-root", str(tmp_path / "new"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["per_class"]) == 10
    rows = list(csv.DictReader(open(run / "eval" / "test" / "predictions.csv")))
    assert len(rows) == 30


def test_evaluate_and_resume_say_when_the_image_folder_changed_since_training(tmp_path, caplog):
    # one file added to a folder without test/ moved images between the splits; evaluate reported
    # on the new split without a word, and --resume continued on it
    import logging
    import shutil

    from resnetlab.config import load_config
    from resnetlab.trainer import train

    folder = make_image_folder(tmp_path / "shapes", per_class=12)
    run = tmp_path / "run"
    cfg = load_config(None, [f"data.name=imagefolder:{folder}", "data.image_size=16", "model.name=resnet8", "train.epochs=2",
                             "train.batch_size=8", "output.report=false", "output.tensorboard=false", "train.device=cpu"])  # fmt: skip
    train(cfg, run, progress=False)
    meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["splits"]["test"]["images"] == 8 and len(meta["splits"]["test"]["sha1"]) == 40
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        evaluate(run, device="cpu")
    assert "changed since training" not in caplog.text  # the same folder: silent
    shutil.copy(folder / "circle" / "circle_00.png", folder / "circle" / "extra.png")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        evaluate(run, device="cpu", out_dir=tmp_path / "e2")  # this file left the test split as it was
        assert "changed since training" not in caplog.text
        evaluate(run, split="train", device="cpu", out_dir=tmp_path / "e3")
    assert "the train split is not the one the run had: 26 images now, 25 then; the image folder changed" in caplog.text
    caplog.clear()
    from resnetlab.errors import DataError
    from resnetlab.trainer import Trainer

    # the validation split is drawn from the same files with the run's seed: one more file
    # shuffled it, so it may hold images the run trained on; --resume would train on the rest
    held = r"the val split is not the one the run had: 3 images now, 3 then \(other files\).*may now hold images the run trained on"
    with pytest.raises(DataError, match="cannot resume the run: " + held):  # what --resume runs once the run is rebuilt
        Trainer(cfg, run, progress=False).load_state(run / "checkpoints" / "last")
    with pytest.raises(DataError, match="cannot evaluate the val split: " + held):
        evaluate(run, split="val", device="cpu", out_dir=tmp_path / "e4")
    assert not (tmp_path / "e4").exists()

    # more files: the test split changes too; its earlier result is kept, nothing is written
    before = (run / "eval" / "test" / "metrics.json").read_bytes()
    for i in range(6):
        shutil.copy(folder / "square" / "square_00.png", folder / "square" / f"more_{i}.png")
    with pytest.raises(DataError, match=r"cannot evaluate the test split: the test split is not the one the run had: 9 images now, 8 then"):
        evaluate(run, device="cpu")
    assert (run / "eval" / "test" / "metrics.json").read_bytes() == before
    with pytest.raises(DataError, match=r"cannot explain the test split: the test split is not"):
        from resnetlab.explain import explain

        explain(run, device="cpu", out_dir=tmp_path / "x")
    # the folder put back as it was: the run resumes
    for p in [*folder.glob("*/more_*.png"), folder / "circle" / "extra.png"]:
        p.unlink()
    Trainer(cfg, run, progress=False).load_state(run / "checkpoints" / "last")


def test_a_changed_test_folder_of_its_own_is_evaluated_with_a_warning(tmp_path, caplog):
    # test/ is a folder of its own: files added to train/ or test/ move no image between the
    # splits, so the run's result on the new test/ is a held-out result (on other images): a warning
    import logging
    import shutil

    from resnetlab.config import load_config
    from resnetlab.trainer import Trainer, train

    root = tmp_path / "shapes"
    make_image_folder(root / "train", per_class=8)
    make_image_folder(root / "test", per_class=3)
    cfg = load_config(None, [f"data.name=imagefolder:{root}", "data.image_size=16", "model.name=resnet8", "train.epochs=1",
                             "data.val_fraction=0", "train.batch_size=8", "output.report=false", "output.tensorboard=false",
                             "train.device=cpu"])  # fmt: skip
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    shutil.copy(root / "test" / "circle" / "circle_00.png", root / "test" / "circle" / "new.png")
    shutil.copy(root / "train" / "circle" / "circle_00.png", root / "train" / "circle" / "new.png")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        m = evaluate(run, device="cpu")
        Trainer(cfg, run, progress=False).load_state(run / "checkpoints" / "last")
    assert m["num_samples"] == 10
    assert "the test split is not the one the run had: 10 images now, 9 then; the image folder changed" in caplog.text
    assert "resuming on a changed dataset: the train split is not the one the run had: 25 images now, 24 then" in caplog.text


def test_metrics_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    # metrics.json marks an evaluated split (a study skips a cell that has one): a process killed
    # while writing it left a truncated file, which looked done and failed every later read
    from pathlib import Path

    from resnetlab.evaluate import write_eval_files
    from resnetlab.metrics import classification_metrics

    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    metrics = classification_metrics(logits, targets, ["a", "b"])
    real = Path.write_text

    def killed_midway(self, text, *a, **k):
        if "metrics.json" in self.name:
            real(self, text[: len(text) // 2], *a, **k)
            raise KeyboardInterrupt
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        write_eval_files(tmp_path, metrics, ["a", "b"], logits, targets, torch.arange(3), None)
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.setattr(Path, "write_text", real)
    files = write_eval_files(tmp_path, metrics, ["a", "b"], logits, targets, torch.arange(3), None)
    assert json.loads(files["metrics.json"].read_text())["accuracy"] == pytest.approx(2 / 3)


def test_a_run_recorded_with_an_option_its_combination_does_not_read_stays_readable(run, tmp_path):
    # the config now refuses options a combination ignores (schedule.gamma under cosine, ...): a
    # run trained by an earlier version that accepted them must still evaluate and resume
    import shutil

    import yaml

    from resnetlab.config import config_from_dict
    from resnetlab.errors import ConfigError

    copy = tmp_path / "old run"
    shutil.copytree(run, copy)
    for meta_path in (copy / "checkpoints").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta["config"]["schedule"].update(name="cosine", gamma=0.5)
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="schedule.gamma=0.5 applies to schedule.name=step or multistep"):
        config_from_dict(meta["config"])  # given by a user: refused
    assert config_from_dict(meta["config"], recorded=True).schedule.gamma == 0.5
    assert evaluate(copy, split="val", device="cpu")["num_samples"] == 144
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["schedule"].update(name="cosine", gamma=0.5)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    from resnetlab.trainer import resume

    resume(copy)  # a finished run: nothing to train, and no refusal of its config


def test_a_test_split_without_some_class_says_so(tmp_path, caplog):
    # test/ without a class: its recall is undefined and, when the model predicts it, it counts
    # as 0 in the macro averages (sklearn's rule); the numbers were reported without a word
    import logging

    root = tmp_path / "shapes"
    make_image_folder(root / "train", per_class=6)
    make_image_folder(root / "test", classes=("circle", "square"), per_class=3)
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{root}", "image_size": 16, "val_fraction": 0})
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        m = evaluate(run, device="cpu")
    assert [r["support"] for r in m["per_class"]] == [3, 3, 0]
    assert "the test split has no images of class(es) stripes: their recall is undefined" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        evaluate(run, split="train", device="cpu")
    assert "has no images of class" not in caplog.text
