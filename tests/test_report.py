"""build_report / `resnetlab report`: contents of report.html and report.md."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from _eval_runs import fresh_checkpoint_run, trained_run

from resnetlab.cli import main
from resnetlab.errors import ResnetlabError
from resnetlab.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def _imgs(html_text: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', html_text)


def test_report_of_a_trained_run(tmp_path):
    run = trained_run(tmp_path)
    html_path, md_path = build_report(run)
    page, md = html_path.read_text(), md_path.read_text()
    test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    # titled with the run's name (an evaluated run's title said "test", the last split looked at)
    name = yaml.safe_load((run / "config.yaml").read_text()).get("name") or run.name
    assert name != "test" and md.startswith(f"# resnetlab report: {name}\n")
    assert f"<title>resnetlab report: {name}</title>" in page and f"<h1>resnetlab report: {name}</h1>" in page

    for title in ("Summary", "Configuration", "Model", "Training curves", "Final metrics (test split)",
                  "Confusion matrix", "Per-class metrics", "Misclassified test images"):
        assert f"<h2>{title}</h2>" in page and f"## {title}" in md

    # self-contained: every image is an embedded PNG, no file or network reference
    srcs = _imgs(page)
    assert len(srcs) == 3  # curves, confusion matrix, misclassified grid
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG
    # the Markdown references the same figures as files
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert refs == ["report_files/curves.png", "report_files/confusion_matrix.png", "report_files/misclassified.png"]
    for r in refs:
        assert (run / r).read_bytes()[:8] == PNG

    # numbers come from the run's files
    assert f"| accuracy | {test['accuracy']:.4f} |" in md
    assert f"| F1 (macro) | {test['f1_macro']:.4f} |" in md
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert f"| best val accuracy | {float(best['val_acc']):.4f} (epoch {best['epoch']}) |" in md
    assert f"| epochs run | {len(rows)} |" in md
    for pc in test["per_class"]:
        assert f"| {pc['class']} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} | {pc['support']} |" in md
    # model summary: the profile of resnet8 at 1x8x8
    from resnetlab.models import create_model
    from resnetlab.models.profile import count_flops, count_params

    model = create_model("resnet8", num_classes=10, in_channels=1)
    assert f"| parameters | {count_params(model):,} |" in md
    assert f"| forward FLOPs / image | {count_flops(model, (1, 8, 8)):,} |" in md
    # config summary: what the test recipe changed from the defaults
    assert "| model.name | resnet8 | resnet20 |" in md and "| train.epochs | 2 | 10 |" in md
    # misclassified count matches predictions.csv
    preds = list(csv.DictReader(open(run / "eval" / "test" / "predictions.csv")))
    wrong = sum(r["target"] != r["prediction"] for r in preds)
    assert f"{wrong} of {len(preds)} test images are misclassified" in md


def test_cli_report_rebuilds_and_extra_sections(tmp_path, capsys):
    run = trained_run(tmp_path)
    (run / "report.html").unlink()
    sec = run / "report_sections"
    sec.mkdir()
    from PIL import Image

    Image.new("RGB", (7, 5), (255, 0, 0)).save(sec / "cam.png")
    (sec / "20-grad_cam.html").write_text('<p>maps</p><img src="cam.png" alt="cam">')
    (sec / "20-grad_cam.md").write_text("# Grad-CAM gallery\n\n![cam](report_sections/cam.png)\n")
    (sec / "30-notes.md").write_text("plain *markdown* note")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(run / "report.html")
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    assert "<h2>Grad-CAM gallery</h2>" in page and "## Grad-CAM gallery" in md
    assert "<h2>Notes</h2>" in page and "<pre>plain *markdown* note</pre>" in page
    assert md.index("## Grad-CAM gallery") < md.index("## Notes")
    # the section's relative image was inlined, so the HTML stays one file
    srcs = _imgs(page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[3].split(",", 1)[1]) == (sec / "cam.png").read_bytes()
    assert 'src="cam.png"' not in page

    html_path, md_path = build_report(run, extra_sections=[("From code", "<p>hello html</p>", "hello md")])
    assert "<h2>From code</h2>\n<p>hello html</p>" in html_path.read_text()
    assert "## From code\n\nhello md" in md_path.read_text()


def test_median_images_per_s_of_an_even_number_of_epochs_is_the_middle_pair_mean(tmp_path):
    rows = [{"epoch": e, "step": 5 * e, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "epoch_time_s": 1.0, "images_per_s": v}
            for e, v in enumerate((577.8, 635.7, 711.0, 769.4), start=1)]
    run = fresh_checkpoint_run(tmp_path, {"name": "digits"}, metrics_rows=rows)
    _, md_path = build_report(run)
    assert "| median images/s | 673.4 |" in md_path.read_text()  # (635.7 + 711.0) / 2; it showed 711


def test_class_names_are_escaped_in_the_markdown_tables():
    from resnetlab.report import _Table

    md = _Table(["class", "f1"], [("pipe|bar", 0.5), ("<script>x<b>", 0.25)], numeric=[False, True]).md()
    assert "| pipe\\|bar | 0.5 |" in md
    assert "<script>" not in md and "&lt;script&gt;x&lt;b&gt;" in md
    assert all(line.count(" | ") == 1 for line in md.splitlines()[2:])  # two cells per row


def test_report_of_a_run_with_only_its_last_checkpoint_reads_evaluates_folder_for_it(tmp_path):
    # an interrupted run before its first validated epoch: evaluate RUN writes eval/test-last, and
    # the report kept saying "run resnetlab evaluate" because it only read eval/test
    import shutil

    from resnetlab.evaluate import evaluate

    run = fresh_checkpoint_run(tmp_path, {"name": "digits"})
    shutil.move(run / "checkpoints" / "best", run / "checkpoints" / "last")
    _, md_path = build_report(run)
    assert "Not evaluated on the test split yet" in md_path.read_text()
    m = evaluate(run, device="cpu")
    assert Path(m["predictions"]).parent == run / "eval" / "test-last"
    _, md_path = build_report(run)
    md = md_path.read_text()
    assert "Not evaluated" not in md and "Of the last checkpoint: the run has no best checkpoint yet" in md
    assert f"| test accuracy (last checkpoint) | {m['accuracy']:.4f} |" in md
    assert f"| accuracy | {m['accuracy']:.4f} |" in md


def test_report_without_training_or_evaluation(tmp_path):
    """A run folder from a saved checkpoint and a hand-written metrics.csv (no val in epoch 2)."""
    rows = [
        {"epoch": 1, "step": 5, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.8, "val_acc": 0.4,
         "epoch_time_s": 1.5, "images_per_s": 100},
        {"epoch": 2, "step": 10, "lr": 0.05, "train_loss": 1.0, "train_acc": 0.6, "epoch_time_s": 1.0, "images_per_s": 300},
        {"epoch": 3, "step": 15, "lr": 0.0, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.9, "val_acc": 0.7,
         "epoch_time_s": 2.0, "images_per_s": 200},
    ]
    run = fresh_checkpoint_run(tmp_path, {"name": "digits"}, metrics_rows=rows)
    html_path, md_path = build_report(run)
    md = md_path.read_text()
    assert "| best val accuracy | 0.7000 (epoch 3) |" in md
    assert "| training time (s) | 4.5 |" in md and "| median images/s | 200 |" in md
    assert "train accuracy" not in md  # no eval/train (output.evaluate_train off): no empty row
    assert "Not evaluated on the test split yet" in md
    assert "## Confusion matrix" not in md
    assert len(_imgs(html_path.read_text())) == 1  # the curves only


def test_report_bad_run_folder(tmp_path, capsys):
    with pytest.raises(ResnetlabError, match="run folder not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_best_epoch_defaults_of_optional_sections_and_a_subset_evaluation(tmp_path):
    from resnetlab.report import _UNKNOWN, _best_epoch, _config_defaults, _default_of, _flatten

    # the test star goes at the best checkpoint's epoch: the first highest validation accuracy
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "val_acc": 0.7}, {"epoch": 4, "val_acc": 0.6}]
    assert _best_epoch(rows) == 2 and _best_epoch([{"epoch": 1}, {"epoch": 2}]) == 2
    # keys of a section whose default is None are settings that differ from the defaults
    defaults = _config_defaults()
    assert ("train.progressive_resize.start_size", 16) in _flatten({"train": {"progressive_resize": {"start_size": 16}}})
    assert _default_of("train.progressive_resize.start_size", defaults) is None
    assert _default_of("train.epochs", defaults) == 10 and _default_of("nope.key", defaults) is _UNKNOWN
    # predictions of a subset of the test split cannot be matched to its images: none are shown
    run = trained_run(tmp_path)
    pred = run / "eval" / "test" / "predictions.csv"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:-5]) + "\n")
    _, md_path = build_report(run)
    md = md_path.read_text()
    assert f"(images unavailable: the evaluation used {len(lines) - 6} of the {len(lines) - 1} test images)" in md
    # the mistakes are still listed, from predictions.csv (the section had the heading and no rows)
    wrong = sorted((r for r in csv.DictReader(open(pred)) if r["target"] != r["prediction"]), key=lambda r: -float(r["confidence"]))
    assert wrong and "| image | true | predicted | confidence |" in md
    assert f"| {wrong[0]['index']} | {wrong[0]['target']} | {wrong[0]['prediction']} |" in md


def test_evaluations_and_explanations_of_an_earlier_checkpoint_are_left_out(tmp_path):
    # explain and evaluate --split train ran on an interrupted run, then --resume saved a new best:
    # the report showed the earlier model's explanations and train accuracy beside the new test result
    import os
    import shutil

    run = trained_run(tmp_path)
    sec = run / "report_sections"
    sec.mkdir()
    (sec / "explain.html").write_text("<p>old maps</p>")
    (sec / "explain.md").write_text("# Explanations\n\nold maps\n")
    (sec / "notes.md").write_text("a note")
    best = run / "checkpoints" / "best"
    meta = json.loads((best / "meta.json").read_text())
    made_of = {"checkpoint_epoch": meta["epoch"], "checkpoint_step": meta["step"]}
    (run / "explain").mkdir()
    (run / "explain" / "summary.json").write_text(json.dumps(made_of))  # explain's record of what it explained
    shutil.copytree(run / "eval" / "test", run / "eval" / "train")
    test = run / "eval" / "test" / "metrics.json"
    assert {k: json.loads(test.read_text())[k] for k in made_of} == made_of  # evaluate records it too
    md = build_report(run)[1].read_text()
    assert "old maps" in md and "| train accuracy (best checkpoint" in md  # of this checkpoint: shown

    # a copy of the run folder whose files lost their times (cp -r): still this checkpoint's
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for p in (copy / "eval").rglob("*"):
        os.utime(p, ns=(1, 1))
    assert "old maps" in build_report(copy)[1].read_text()

    # the resume's new best, and its own test evaluation
    (best / "meta.json").write_text(json.dumps({**meta, "epoch": meta["epoch"] + 1, "step": meta["step"] + 10}))
    test.write_text(json.dumps({**json.loads(test.read_text()), "checkpoint_epoch": meta["epoch"] + 1, "checkpoint_step": meta["step"] + 10}))
    page, md = (p.read_text() for p in build_report(run))
    assert "old maps" not in md and "old maps" not in page and "train accuracy" not in md
    assert "## Explanations\n\nThese explanations were made before the run's checkpoint was replaced" in md
    assert "## Notes\n\na note" in md  # not the checkpoint's: kept
    assert f"| accuracy | {json.loads(test.read_text())['accuracy']:.4f} |" in md

    test.write_text(json.dumps({**json.loads(test.read_text()), **made_of}))  # output.evaluate_test off: the earlier one
    md = build_report(run)[1].read_text()
    assert "## Final metrics" not in md and "## Misclassified" not in md
    assert "eval/test was evaluated before the run's checkpoint was replaced (it was resumed): run `resnetlab evaluate" in md

    # results of an earlier version record no checkpoint: their time tells
    for p in (run / "explain" / "summary.json", run / "eval" / "train" / "metrics.json"):
        p.unlink()
    later = (sec / "explain.md").stat().st_mtime_ns + 10**9
    os.utime(best, ns=(later, later))
    assert "old maps" not in build_report(run)[1].read_text()


def test_a_run_name_with_markup_is_escaped_in_both_titles(tmp_path):
    # report.md's heading took the run name as it was: <script>...</script> ran in a Markdown viewer
    import yaml

    run = fresh_checkpoint_run(tmp_path, {"name": "digits"})
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "<script>x</script>|a", "data": {"name": "digits"}}))
    page, md = (p.read_text() for p in build_report(run))
    assert md.startswith("# resnetlab report: &lt;script&gt;x&lt;/script&gt;\\|a\n")
    assert "<h1>resnetlab report: &lt;script&gt;x&lt;/script&gt;|a</h1>" in page and "<script>" not in page


def test_the_test_result_says_which_checkpoint_it_scored_and_that_it_chose_nothing(tmp_path):
    # the summary's "test accuracy" and the final metrics named no checkpoint (only a last-only run did)
    run = trained_run(tmp_path)
    meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    md = build_report(run)[1].read_text()
    assert f"| test accuracy (best checkpoint) | {test['accuracy']:.4f} |" in md
    m = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    m["accuracy"] = 1.0  # a perfect score read "| 1 |" beside the best val accuracy's "1.0000"
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(m))
    assert "| test accuracy (best checkpoint) | 1.0000 |" in build_report(run)[1].read_text()
    assert f"Of the best checkpoint (epoch {meta['epoch']}), chosen on validation accuracy; the test split chose nothing." in md


def test_report_of_the_val_split_shows_val_results_and_val_images(tmp_path, capsys, monkeypatch):
    # build_report(split="val") read eval/val/ but drew the mistakes from the test split's images
    # at val's indices; `resnetlab report` had no --split
    import numpy as np

    import resnetlab.report as rp
    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.evaluate import evaluate, load_splits_for

    run = trained_run(tmp_path)
    assert main(["report", str(run), "--split", "val"]) == 0
    md = (run / "report.md").read_text()
    assert f"Not evaluated on the val split yet: run `resnetlab evaluate {run} --split val`." in md
    evaluate(run, split="val")
    drawn = []
    real = rp._misclassified_figure
    monkeypatch.setattr(rp, "_misclassified_figure", lambda images, titles: drawn.append(images) or real(images, titles))
    capsys.readouterr()
    assert main(["report", str(run), "--split", "val"]) == 0
    md = (run / "report.md").read_text()
    val = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    preds = list(csv.DictReader(open(run / "eval" / "val" / "predictions.csv")))
    wrong = sorted((r for r in preds if r["target"] != r["prediction"]), key=lambda r: -float(r["confidence"]))
    assert "## Final metrics (val split)" in md and "## Misclassified val images" in md
    # the val split chose the checkpoint: it said "the val split chose nothing"
    assert "chosen on validation accuracy; the val split chose it, so these figures are optimistic" in md
    assert "val split chose nothing" not in md
    assert f"| accuracy | {val['accuracy']:.4f} |" in md
    assert f"{len(wrong)} of {len(preds)} val images are misclassified" in md
    splits = load_splits_for(load_checkpoint(run).meta)
    shown = [int(r["index"]) for r in wrong[: len(drawn[0])]]
    np.testing.assert_array_equal(np.asarray(drawn[0]), np.asarray(splits.val.get(shown)))
    assert main(["report", str(run), "--split", "dev"]) == 2
    assert "argument --split: invalid choice: 'dev'" in capsys.readouterr().err


def test_summary_names_the_classes_and_split_sizes_and_per_class_train_counts(tmp_path):
    # the report showed neither the class names, nor how many images each split had, nor how many
    # training images each class had: an imbalanced folder could not be read from it
    import numpy as np
    from PIL import Image

    from resnetlab.checkpoint import load_meta
    from resnetlab.config import load_config
    from resnetlab.trainer import train

    rng = np.random.default_rng(0)
    for c, n in {"big cat": 30, "dög": 10}.items():
        (tmp_path / "ds" / c).mkdir(parents=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "ds" / c / f"{j}.png")
    cfg = load_config(None, ["model.name=resnet8", f"data.name=imagefolder:{tmp_path / 'ds'}", "data.image_size=8",
                             "train.epochs=1", "train.batch_size=8", "train.device=cpu", "output.tensorboard=false",
                             "output.report=false"])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    md = build_report(run)[1].read_text()
    sizes = {k: v["images"] for k, v in load_meta(run / "checkpoints" / "best")["splits"].items()}
    assert sizes["train"] + sizes["val"] + sizes["test"] == 40
    assert "| classes | 2: big cat, dög |" in md
    assert f"| images (train / val / test) | {sizes['train']} / {sizes['val']} / {sizes['test']} |" in md
    test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert sum(r["support"] for r in test["per_class"]) == sizes["test"]
    # training images per class, stratified from 30 and 10: three to one
    rows = re.findall(r"^\| (big cat|dög) \|.*\| (\d+) \|$", md, flags=re.M)
    train_counts = dict((name, int(n)) for name, n in rows)
    assert sum(train_counts.values()) == sizes["train"] and train_counts["big cat"] == 3 * train_counts["dög"]
    # a run of an earlier version (no class_counts): the sizes come from the split fingerprints
    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["class_counts"]
    meta_path.write_text(json.dumps(meta))
    md = build_report(run)[1].read_text()
    assert f"| images (train / val / test) | {sizes['train']} / {sizes['val']} / {sizes['test']} |" in md
    assert "| class | precision | recall | f1 | support |\n" in md  # no train images column


def test_misclassified_images_of_an_image_folder_are_listed_by_file(tmp_path):
    # the report showed the most confident mistakes as pictures only: which photos they were had
    # to be dug out of predictions.csv
    from _eval_runs import make_image_folder

    from resnetlab.evaluate import evaluate

    folder = make_image_folder(tmp_path / "shapes")
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16})
    preds = list(csv.DictReader(open(evaluate(run, device="cpu")["predictions"])))
    wrong = sorted((r for r in preds if r["target"] != r["prediction"]), key=lambda r: -float(r["confidence"]))
    assert wrong  # an untrained model
    md = build_report(run)[1].read_text()
    section = md.split("## Misclassified test images", 1)[1]
    listed = re.findall(r"^\| (\S+\.png) \| (\w+) \| (\w+) \| [0-9.]+ \|$", section, flags=re.M)
    assert listed == [(r["path"], r["target_name"], r["prediction_name"]) for r in wrong[:len(listed)]]
    assert 0 < len(listed) == min(len(wrong), section.count("\n| ") - 1)


@pytest.mark.parametrize("val_fraction", [0.2, 0.0])
def test_evaluate_val_scores_the_best_checkpoint_on_every_split_and_the_report_tabulates_them(tmp_path, val_fraction, caplog, monkeypatch):
    # report 001 tabulates train, validation and test accuracy, micro- and macro-F1 of one model: a run
    # wrote eval/train and eval/test, but nothing for the validation split beyond metrics.csv's val_acc
    from resnetlab.config import load_config
    from resnetlab.trainer import train

    cfg = load_config(None, ["model.name=resnet8", "data.name=synthetic:1x8x8:3:60", f"data.val_fraction={val_fraction}",
                             "train.epochs=1", "train.batch_size=16", "train.num_threads=1", "train.device=cpu",
                             "output.evaluate_train=true", "output.evaluate_val=true", "output.tensorboard=false"])  # fmt: skip
    run = tmp_path / "run"
    import logging

    monkeypatch.setattr(logging.getLogger("resnetlab"), "propagate", True)  # a CLI test before may have turned it off
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        train(cfg, run, progress=False)
    md = (run / "report.md").read_text()
    if not val_fraction:  # no validation split: nothing to score, no error, and the log says so
        assert not (run / "eval" / "val").exists()
        assert "output.evaluate_val: the run has no validation split" in caplog.text
        names = ("train", "test")
    else:
        names = ("train", "val", "test")
    assert "| split | accuracy | loss | F1 (micro) | F1 (macro) | images |" in md
    for name in names:
        m = json.loads((run / "eval" / name / "metrics.json").read_text())
        assert m["split"] == name
        row = f"| {name} | {m['accuracy']:.4f} | {m['loss']:.4g} | {m['f1_micro']:.4f} | {m['f1_macro']:.4f} | {m['num_samples']} |"
        assert row in md


def test_the_report_of_an_interrupted_run_says_where_it_stopped_and_how_to_go_on(tmp_path):
    # an interrupted run's report showed "epochs run 2" beside "train.epochs 8" and nothing else
    import yaml

    run = trained_run(tmp_path)
    assert "Training is unfinished" not in build_report(run)[1].read_text()
    config = yaml.safe_load((run / "config.yaml").read_text())
    done = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert done["epoch"] == config["train"]["epochs"] == 2
    config["train"]["epochs"] = 5  # as a run of 5 epochs stopped after 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page, md = (p.read_text() for p in build_report(run))
    assert f"Training is unfinished: it stopped after 2 of 5 epochs; `resnetlab train --resume {run}` continues it." in md
    assert "Training is unfinished: it stopped after 2 of 5 epochs" in page
    assert f"<code>resnetlab train --resume {run}</code> continues it." in page  # the HTML showed the backticks
    config["train"]["iterations"] = done["step"] + 100
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert f"it stopped at step {done['step']:,} of {done['step'] + 100:,};" in build_report(run)[1].read_text()


def test_a_damaged_evaluation_or_config_is_named_in_one_warning_line(tmp_path, caplog):
    """A cut eval/test/metrics.json made the report show '-' for the test accuracy without a word;
    an unparsable config.yaml's warning pasted YAML's five-line message."""
    import logging

    run = trained_run(tmp_path)
    (run / "eval" / "test" / "metrics.json").write_text('{"accuracy": 0.9')
    (run / "config.yaml").write_text("model:\n  name: resnet8\n   norm: bn\n")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        build_report(run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    test = [w for w in warnings if "eval/test/metrics.json" in w]
    assert len(test) == 1 and "the report leaves its numbers out" in test[0]
    assert f"`resnetlab evaluate {run} --split test` writes it again" in test[0]
    cfg = [w for w in warnings if "config.yaml" in w]
    assert len(cfg) == 1 and "\n" not in cfg[0] and cfg[0].endswith("; using the checkpoint's config")


def test_misclassified_titles_keep_both_long_class_names(tmp_path, monkeypatch):
    # "Yellow_headed_Blackbird -> Black_footed_Albatross" on one line ran into the next image's
    # title and off the figure; explain's cut at 18 characters dropped the predicted class
    from _eval_runs import make_image_folder

    import resnetlab.report as report
    from resnetlab.evaluate import evaluate
    from resnetlab.report import mistake_title

    title = mistake_title("Yellow_headed_Blackbird", "Black_footed_Albatross", 16)
    assert title == "Yellow_headed_B…\n→ Black_footed_Al…"
    assert mistake_title("cat", "dog") == "cat\n→ dog"
    names = ("Yellow_headed_Blackbird", "Black_footed_Albatross", "Rose_breasted_Grosbeak")
    folder = make_image_folder(tmp_path / "birds", classes=names)
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16})
    evaluate(run, device="cpu")
    seen: list[str] = []
    real = report._misclassified_figure
    monkeypatch.setattr(report, "_misclassified_figure", lambda images, titles: seen.extend(titles) or real(images, titles))
    build_report(run)
    assert seen and all(len(t.splitlines()) == 3 and all(len(line) <= 22 for line in t.splitlines()) for t in seen)
    assert all(t.splitlines()[1].startswith("→ ") and t.splitlines()[1][2:5] in ("Yel", "Bla", "Ros") for t in seen)


def test_one_diverging_epoch_puts_the_loss_panel_on_a_log_scale(monkeypatch):
    # a validation loss of 381 beside 0.3 drew every other point flat on zero
    import resnetlab.report as report

    figs = []
    monkeypatch.setattr(report, "_png", lambda fig: figs.append(fig) or b"")
    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": v, "train_acc": 0.5, "val_acc": 0.5, "lr": 0.1}
            for e, v in ((1, 381.0), (2, 0.4), (3, 0.3))]
    report._curves_figure(rows, None)
    loss = figs[-1].axes[0]
    assert loss.get_yscale() == "log" and loss.get_title() == "Loss (log scale)"
    report._curves_figure([{**r, "val_loss": 0.5} for r in rows], None)  # an ordinary run keeps its linear axis
    assert figs[-1].axes[0].get_yscale() == "linear" and figs[-1].axes[0].get_title() == "Loss"
