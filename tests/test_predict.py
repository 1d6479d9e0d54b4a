"""predict() and `resnetlab predict`: preprocessing from the checkpoint, top-k, directories, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from _eval_runs import fresh_checkpoint_run, make_image_folder, trained_run
from PIL import Image

from resnetlab.cli import main
from resnetlab.errors import DataError
from resnetlab.evaluate import evaluate
from resnetlab.predict import BACKENDS, collect_image_files, predict, register_backend


@pytest.fixture
def shapes_run(tmp_path):
    folder = make_image_folder(tmp_path / "shapes")
    return fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16}), folder


def test_predict_matches_evaluate_on_the_same_files(shapes_run):
    """Preprocessing from the metadata reproduces the dataset pipeline: same classes, same probabilities."""
    run, _ = shapes_run
    m = evaluate(run, device="cpu")
    rows = list(csv.DictReader(open(m["predictions"])))
    results = predict(run, [r["path"] for r in rows], top_k=3)
    assert [r["path"] for r in results] == [r["path"] for r in rows]
    for row, res in zip(rows, results):
        assert res["top"][0]["index"] == int(row["prediction"])
        assert res["top"][0]["prob"] == pytest.approx(float(row["confidence"]), abs=1e-5)
        probs = [t["prob"] for t in res["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)  # 3 classes: all of them
        assert {t["class"] for t in res["top"]} == {"circle", "square", "stripes"}


def test_any_photo_size_and_mode_is_resized_and_converted(tmp_path):
    run = trained_run(tmp_path)  # grayscale 8x8 digits model
    ims = tmp_path / "photos"
    ims.mkdir()
    big = np.zeros((120, 90, 3), np.uint8)
    big[20:100, 40:50] = 255  # a bright vertical bar, a "1"-ish stroke
    Image.fromarray(big).save(ims / "bar.jpg")
    Image.fromarray(big).convert("RGBA").save(ims / "bar_rgba.png")
    Image.fromarray(big[:, :, 0]).save(ims / "bar_gray.png")
    (ims / "notes.txt").write_text("not an image")  # skipped when walking a directory
    results = predict(run, [ims], top_k=20)
    assert [r["path"].rsplit("/", 1)[1] for r in results] == ["bar.jpg", "bar_gray.png", "bar_rgba.png"]
    for r in results:
        assert len(r["top"]) == 10  # clipped to the number of classes
        assert sum(t["prob"] for t in r["top"]) == pytest.approx(1.0)
    # the same picture in three encodings gets the same answer
    assert len({r["top"][0]["class"] for r in results}) == 1
    assert results[1]["top"][0]["prob"] == pytest.approx(results[2]["top"][0]["prob"], abs=1e-6)


def test_predict_uses_the_checkpoint_mean_std(tmp_path):
    """A digit from the test set is classified as evaluate classifies it; a wrong std changes it."""
    run = trained_run(tmp_path)
    from resnetlab.data import load_dataset

    test = load_dataset("digits", seed=0).test
    paths = []
    for i in range(12):
        p = tmp_path / f"d{i}.png"
        Image.fromarray(test.images[i, 0].numpy()).save(p)  # lossless: same pixels as the dataset
        paths.append(p)
    res = predict(run, paths, top_k=1)
    m = evaluate(run, out_dir=tmp_path / "ev", device="cpu")
    rows = {int(r["index"]): r for r in csv.DictReader(open(m["predictions"]))}
    for i, r in enumerate(res):
        assert r["top"][0]["index"] == int(rows[i]["prediction"])
        assert r["top"][0]["prob"] == pytest.approx(float(rows[i]["confidence"]), abs=1e-5)

    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["std"] = [s * 10 for s in meta["std"]]
    meta_path.write_text(json.dumps(meta))
    changed = predict(run, paths, top_k=1)
    assert [r["top"][0]["prob"] for r in changed] != pytest.approx([r["top"][0]["prob"] for r in res], abs=1e-3)


def test_batches_give_the_same_answer(shapes_run):
    run, folder = shapes_run
    a = predict(run, [folder], batch_size=64)
    b = predict(run, [folder], batch_size=4)
    assert len(a) == 30
    for ra, rb in zip(a, b):
        assert ra["path"] == rb["path"]
        assert [t["index"] for t in ra["top"]] == [t["index"] for t in rb["top"]]
        np.testing.assert_allclose([t["prob"] for t in ra["top"]], [t["prob"] for t in rb["top"]], atol=1e-6)


def test_backend_registry_is_the_extension_point(shapes_run, monkeypatch):
    """A new backend (ONNX later) is one registered factory; predict routes through it."""
    run, folder = shapes_run
    calls = []

    def fake(source, device, which):
        torch_run, meta = BACKENDS["torch"](source, device, which)

        def run_batch(x):
            calls.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 3).index_fill_(1, torch.tensor([2]), 5.0)  # always "stripes"

        return run_batch, meta

    monkeypatch.setitem(BACKENDS, "fake", fake)
    res = predict(run, [folder / "circle"], backend="fake", top_k=1)
    assert calls == [(10, 3, 16, 16)]  # preprocessing happened before the backend
    assert {r["top"][0]["class"] for r in res} == {"stripes"}
    with pytest.raises(ValueError, match=r"unknown backend 'onnxx'.*allowed: .*torch"):
        predict(run, [folder], backend="onnxx")
    assert register_backend("x")(fake) is fake and BACKENDS.pop("x") is fake


def test_collect_image_files(tmp_path, caplog):
    folder = make_image_folder(tmp_path / "f", per_class=2)
    (folder / "readme.txt").write_text("x")
    files = collect_image_files([folder, folder / "circle" / "circle_00.png"])
    assert len(files) == 6  # the explicit duplicate is dropped, the txt is skipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files in directory"):
        collect_image_files([tmp_path / "empty"])
    # beside inputs that have images, an empty folder is named in a warning, not the end of the job
    import logging

    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        assert len(collect_image_files([tmp_path / "empty", folder])) == 6
    assert "no image files in" in caplog.text and "predicting the other inputs" in caplog.text
    # the JPEG spellings Pillow opens are images too (.jfif was left out of a folder)
    (folder / "circle" / "circle_00.png").rename(folder / "circle" / "photo.jfif")
    assert any(f.name == "photo.jfif" for f in collect_image_files([folder]))
    with pytest.raises(DataError, match="does not exist"):
        collect_image_files([tmp_path / "nothing-here"])


def test_cli_predict_text_and_json(shapes_run, capsys):
    run, folder = shapes_run
    img = folder / "square" / "square_00.png"
    assert main(["predict", str(run), str(img), "--top-k", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(img) and len(out) == 3 and out[1].strip().endswith(("circle", "square", "stripes"))
    assert main(["predict", str(run), str(img), str(folder / "circle"), "--top-k", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 11 and all(len(r["top"]) == 1 for r in data)
    assert set(data[0]["top"][0]) == {"class", "index", "prob"}


def _cli_error(capsys, argv):
    # Drop earlier output: the CLI's log handler from a previous test may hold a closed stream.
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_bad_inputs_are_one_line_errors(shapes_run, tmp_path, capsys):
    run, folder = shapes_run
    bogus = tmp_path / "photo.png"
    bogus.write_text("this is text, not a PNG")
    msg = _cli_error(capsys, ["predict", str(run), str(folder / "circle" / "circle_00.png"), str(bogus)])
    assert "cannot read image" in msg and "photo.png" in msg
    msg = _cli_error(capsys, ["predict", str(run), str(tmp_path / "missing.jpg")])
    assert "does not exist" in msg and "missing.jpg" in msg
    msg = _cli_error(capsys, ["predict", str(tmp_path / "no-run"), str(bogus)])
    assert "not found" in msg
    msg = _cli_error(capsys, ["predict", str(run), str(bogus), "--top-k", "0"])
    assert "argument --top-k: must be an integer >= 1, got '0'" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _cli_error(capsys, ["predict", str(run), str(empty)])
    assert "no image files in directory" in msg


def test_unreadable_files_found_in_a_folder_are_skipped_with_one_warning(shapes_run, tmp_path, caplog):
    import logging
    import shutil

    run, folder = shapes_run
    photos = tmp_path / "photos"
    shutil.copytree(folder / "circle", photos)
    good = sorted(photos.iterdir())
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    (photos / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        results = predict(run, [photos], batch_size=4)
    assert [r["path"] for r in results] == [str(p) for p in good]  # every good one, in order
    assert "skipped 2 unreadable file(s)" in caplog.text and "broken.png" in caplog.text and "empty.jpg" in caplog.text
    # named on the command line, the same file is an error
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        predict(run, [photos / "broken.png", good[0]])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("text")
    with pytest.raises(DataError, match="none of the 1 image file"):
        predict(run, [tmp_path / "bad"])


def test_predict_applies_the_runs_eval_transforms(tmp_path):
    """A run that stores images at 24x24 and evaluates a 16x16 center crop: predict on the test
    files gives what evaluate gives (a straight resize to 16x16 would see the whole image instead)."""
    from resnetlab.config import config_from_dict
    from resnetlab.export import export_model
    from resnetlab.trainer import train

    folder = make_image_folder(tmp_path / "shapes", size=40)
    cfg = config_from_dict({
        "seed": 0, "model": {"name": "resnet8"},
        "data": {"name": f"imagefolder:{folder}", "image_size": 24, "val_fraction": 0.2},
        "augment": ["flip", "center-crop:size=16"],
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"report": False, "evaluate_test": False, "tensorboard": False},
    })
    run = train(cfg, run_dir=tmp_path / "run", progress=False).run_dir
    meta = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["input_size"] == [3, 16, 16] and meta["data_shape"] == [3, 24, 24]
    assert meta["eval_transforms"] == ["center-crop:size=16"]
    m = evaluate(run, split="val", device="cpu")
    rows = list(csv.DictReader(open(m["predictions"])))
    res = predict(run, [r["path"] for r in rows], top_k=1)
    for row, r in zip(rows, res):
        assert r["top"][0]["index"] == int(row["prediction"])
        assert r["top"][0]["prob"] == pytest.approx(float(row["confidence"]), abs=1e-5)
    # the exported model's sidecar carries the same geometry
    onnx = export_model(run, tmp_path / "m.onnx", format="onnx")
    res_onnx = predict(onnx.path, [r["path"] for r in rows], top_k=1, backend="onnx")
    for row, r in zip(rows, res_onnx):
        assert r["top"][0]["prob"] == pytest.approx(float(row["confidence"]), abs=1e-4)
    # and dropping the recorded geometry (an older checkpoint) changes the answer: the test can fail
    meta.pop("data_shape")
    (run / "checkpoints" / "best" / "meta.json").write_text(json.dumps(meta))
    old = predict(run, [r["path"] for r in rows], top_k=1)
    assert [r["top"][0]["prob"] for r in old] != pytest.approx([float(row["confidence"]) for row in rows], abs=1e-4)


def test_non_square_runs_load_files_at_height_by_width():
    from resnetlab.predict import _geometry

    c, load_hw, transform = _geometry({"input_size": [3, 16, 16], "data_shape": [3, 20, 30], "eval_transforms": ["center-crop:size=16"]})
    assert (c, load_hw) == (3, (20, 30)) and transform(torch.zeros(1, 3, 20, 30)).shape == (1, 3, 16, 16)


def test_predict_averages_the_mirror_when_the_run_evaluated_with_tta_flip(shapes_run, tmp_path, capsys):
    """A run with train.tta_flip: predict (torch and ONNX backends) gives evaluate's probabilities,
    which average each image with its mirror; --no-tta-flip gives the plain image's."""
    from resnetlab.export import export_model

    run, _ = shapes_run
    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"] = {"tta_flip": True}
    meta_path.write_text(json.dumps(meta))
    m = evaluate(run, device="cpu")
    rows = list(csv.DictReader(open(m["predictions"])))
    paths = [r["path"] for r in rows]
    want = [float(r["confidence"]) for r in rows]
    got = [r["top"][0]["prob"] for r in predict(run, paths, top_k=1)]
    assert got == pytest.approx(want, abs=1e-5)
    plain = [r["top"][0]["prob"] for r in predict(run, paths, top_k=1, tta_flip=False)]
    assert max(abs(a - b) for a, b in zip(plain, want)) > 1e-4  # the mirror changes the answer: the test can fail
    onnx = export_model(run, tmp_path / "m.onnx", format="onnx")
    assert onnx.meta["tta_flip"] is True
    got_onnx = [r["top"][0]["prob"] for r in predict(onnx.path, paths, top_k=1, backend="onnx")]
    assert got_onnx == pytest.approx(want, abs=1e-4)
    assert main(["predict", str(run), paths[0], "--top-k", "1", "--json", "--no-tta-flip", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["prob"] == pytest.approx(plain[0], abs=1e-6)


def test_top_k_beyond_the_classes_gives_all_of_them_with_a_warning(shapes_run, caplog):
    """A top-k larger than the model's 3 classes was clipped silently; it is now said. The default
    (5, more than 3) stays quiet."""
    import logging

    run, folder = shapes_run
    img = folder / "square" / "square_00.png"
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        res = predict(run, [img])
    assert len(res[0]["top"]) == 3 and "top_k" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        res = predict(run, [img], top_k=7)
    assert len(res[0]["top"]) == 3
    assert "top_k (--top-k) 7 is more than the model's 3 classes; giving all 3" in caplog.text


def test_flip_tta_is_announced(shapes_run, caplog):
    """A run evaluated with train.tta_flip gets predict's mirror averaging; the log says so (it
    changes the probabilities from a plain forward pass)."""
    import logging

    run, folder = shapes_run
    img = folder / "square" / "square_00.png"
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        predict(run, [img])
    assert "flip TTA" not in caplog.text
    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"] = {"tta_flip": True}
    meta_path.write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        predict(run, [img])
    assert "flip TTA" in caplog.text and "train.tta_flip" in caplog.text


def test_a_quoted_glob_pattern_is_expanded(tmp_path, caplog):
    """'photos/*.png' (quoted, or from a shell that does not expand it) was refused as a missing
    path; its matches are now the inputs, as a folder's files (image extensions only)."""
    import logging

    folder = make_image_folder(tmp_path / "f", per_class=2)
    (folder / "circle" / "notes.txt").write_text("x")
    files = collect_image_files([str(folder / "circle" / "*")])
    assert [f.name for f in files] == ["circle_00.png", "circle_01.png"]  # the .txt is left out, as in a folder
    assert len(collect_image_files([str(folder / "**" / "*.png")])) == 6
    assert len(collect_image_files([str(folder / "s[qt]*")])) == 4  # folders matched are walked
    with pytest.raises(DataError, match=r"no file or directory matches the pattern '.*\*\.jpg'"):
        collect_image_files([str(folder / "*.jpg")])
    with pytest.raises(DataError, match=r"no image files in pattern '.*\*\.txt'"):
        collect_image_files([str(folder / "circle" / "*.txt")])
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        assert len(collect_image_files([str(folder / "circle" / "*.txt"), folder / "square"])) == 2
    assert "no image files in pattern" in caplog.text


def test_a_batch_with_an_unreadable_file_logs_one_conversion_notice(shapes_run, tmp_path, caplog):
    """A folder batch holding an unreadable file is decoded file by file to find it; each file's
    'converted to 3 channel(s)' notice was one log line per image. It is one line per batch."""
    import logging

    run, _ = shapes_run  # an RGB model
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(photos / f"gray{i}.png")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        assert len(predict(run, [photos], batch_size=8)) == 4
    notices = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert notices == ["converted 4 image(s) to 3 channel(s) (L: 4)"]
    assert "skipped 1 unreadable file(s)" in caplog.text
