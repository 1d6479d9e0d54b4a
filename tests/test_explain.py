"""Explanations: attribution maps that localize evidence, galleries consistent with predictions,
every method, the report section, activation maps and bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnetlab import checkpoint as ck
from resnetlab.cli import main
from resnetlab.data import load_dataset
from resnetlab.data.images import preprocess
from resnetlab.errors import ResnetlabError
from resnetlab.explain import METHODS, activation_maps, attribution_maps, explain, stage_activations
from resnetlab.models import create_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is as fast, and avoids OpenMP spin-waits when the
    two cores are shared with other jobs (2 threads measured 27x slower per step under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(model, x, y, steps, lr=0.05, bs=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (bs,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# -- a model whose evidence is localized ------------------------------------------------------

SIZE, OBJ = 16, 5


def _objects(n: int, seed: int):
    """Noise images with one 5x5 object at a random place: a filled square (class 0) or a plus (class 1).
    Only the object tells the classes apart, so a faithful map must point at it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(0, SIZE - OBJ + 1, (n, 2), generator=g)
    plus = torch.zeros(OBJ, OBJ)
    plus[OBJ // 2, :] = 1
    plus[:, OBJ // 2] = 1
    for i in range(n):
        r, c = pos[i].tolist()
        shape = torch.ones(OBJ, OBJ) if y[i] == 0 else plus
        x[i, 0, r:r + OBJ, c:c + OBJ] = torch.maximum(x[i, 0, r:r + OBJ, c:c + OBJ], shape)
    return (x - 0.3) / 0.3, y, pos


@pytest.fixture(scope="module")
def object_model():
    torch.manual_seed(0)
    x, y, _ = _objects(1024, seed=1)
    model = _train(create_model("resnet8", num_classes=2, in_channels=1), x, y, steps=80, bs=32)
    xt, yt, pos = _objects(48, seed=2)
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"the localization model did not learn the task (accuracy {acc:.2f})"
    return model, xt, yt, pos


def _inside(maps: np.ndarray, pos: torch.Tensor, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean map value inside each object's box (grown by margin) and outside it."""
    ins, outs = [], []
    for m, (r, c) in zip(maps, pos.tolist()):
        mask = np.zeros_like(m, dtype=bool)
        mask[max(0, r - margin):r + OBJ + margin, max(0, c - margin):c + OBJ + margin] = True
        ins.append(m[mask].mean())
        outs.append(m[~mask].mean())
    return np.array(ins), np.array(outs)


@pytest.mark.parametrize("method,layer", [("gradcam", "layer2"), ("gradcam++", "layer2"), ("scorecam", "layer2"),
                                          ("saliency", None), ("integrated-gradients", None)])
def test_maps_point_at_the_evidence(object_model, method, layer):
    model, x, y, pos = object_model
    if method in ("scorecam", "integrated-gradients"):  # one forward per channel / per step: keep it short
        x, y, pos = x[:16], y[:16], pos[:16]
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = attribution_maps(model, x, pred, method=method, layer=layer, batch_size=32)
    assert maps.shape == (len(x), SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    ins, outs = _inside(maps, pos)
    # the object covers ~1/4 of the image with the margin; its share of the map must be far higher
    assert np.mean(ins > outs) >= 0.85, f"{method}: map larger inside the object for only {np.mean(ins > outs):.2f}"
    assert ins.mean() > 2 * outs.mean(), f"{method}: inside {ins.mean():.3f} vs outside {outs.mean():.3f}"
    if method in ("gradcam", "saliency"):
        peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
        hits = [r - 1 <= pr < r + OBJ + 1 and c - 1 <= pc < c + OBJ + 1 for (pr, pc), (r, c) in zip(peaks, pos.tolist())]
        assert np.mean(hits) >= 0.8, f"{method}: peak on the object in {np.mean(hits):.2f} of images"


def test_cam_depends_on_the_target_class(object_model):
    model, x, y, pos = object_model
    with torch.no_grad():
        pred = model(x).argmax(1)
    own = attribution_maps(model, x, pred, "gradcam", "layer2")
    other = attribution_maps(model, x, 1 - pred, "gradcam", "layer2")
    assert np.abs(own - other).mean() > 0.1
    # the predicted class's evidence sits on the object more than the other class's does
    assert _inside(own, pos)[0].mean() > _inside(other, pos)[0].mean()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "saliency"])
def test_maps_of_a_frozen_folded_model_equal_the_trained_ones_and_leave_its_state(object_model, method):
    # optimize_for_inference: BN folded, channels_last, requires_grad off (Grad-CAM's backward
    # raised "element 0 of tensors does not require grad"; frozen early stages an AttributeError)
    import copy

    from resnetlab.fold import optimize_for_inference

    model, x, _, _ = object_model
    x = x[:8]
    with torch.no_grad():
        pred = model(x).argmax(1)
    want = attribution_maps(model, x, pred, method, "layer2")
    fast = optimize_for_inference(model)
    np.testing.assert_allclose(attribution_maps(fast, x, pred, method, "layer2"), want, atol=1e-4)
    assert not any(p.requires_grad for p in fast.parameters())
    # a model in training with frozen early stages, explained under no_grad: its requires_grad,
    # .grad and mode come back as they were (the CAM library zeroed and then filled every .grad)
    m = copy.deepcopy(model).train()
    for p in [*m.conv1.parameters(), *m.layer1.parameters()]:
        p.requires_grad_(False)
    before = [p.requires_grad for p in m.parameters()]
    sentinel = torch.full_like(m.fc.weight, 7.0)
    m.fc.weight.grad = sentinel
    with torch.no_grad():
        np.testing.assert_allclose(attribution_maps(m, x, pred, method, "layer1"),
                                   attribution_maps(model, x, pred, method, "layer1"), atol=1e-5)
    assert m.training and [p.requires_grad for p in m.parameters()] == before
    assert m.fc.weight.grad is sentinel and all(p.grad is None for n, p in m.named_parameters() if n != "fc.weight")


def test_attribution_bad_input(object_model):
    model, x, _, _ = object_model
    with pytest.raises(ValueError, match=r"unknown layer 'layer4'.*allowed: layer1, layer2, layer3, stem"):
        attribution_maps(model, x[:2], [0, 1], "gradcam", "layer4")
    with pytest.raises(ValueError, match=r"unknown explanation method 'gradcam\+'.*allowed: gradcam, gradcam\+\+"):
        attribution_maps(model, x[:2], [0, 1], "gradcam+")
    with pytest.raises(ValueError, match="targets has 1 entries for 2 images"):
        attribution_maps(model, x[:2], [0])
    # a class the model does not have: grad-cam printed an IndexError and resnetlab failed with an
    # UnboundLocalError; -1 explained the last class; captum raised torch's index error
    n = model.num_classes
    for method in ("gradcam", "saliency"):
        for bad in (n, -1):
            with pytest.raises(ValueError, match=rf"targets: class {bad} is not a class of this model \(allowed: 0 .. {n - 1}\)"):
                attribution_maps(model, x[:2], [0, bad], method)
    for bad, shown in (([0, 2.7], "2.7"), ([True, False], "True")):  # were cut to class 2, and class 1
        with pytest.raises(ValueError, match=rf"targets must be class indices \(whole numbers\), got {shown}"):
            attribution_maps(model, x[:2], bad)


# -- a trained digits run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """resnet8 on digits, trained briefly with plain torch, saved as the trainer saves it."""
    torch.manual_seed(0)
    s = load_dataset("digits", val_fraction=0.1, seed=0)
    args = {"num_classes": 10, "in_channels": 1}
    x = preprocess(s.train.images, s.mean, s.std, channels_last=False)
    model = _train(create_model("resnet8", **args), x, s.train.targets, steps=60)
    run = tmp_path_factory.mktemp("runs") / "digits"
    meta = {"arch": "resnet8", "arch_args": args, "classes": s.classes, "mean": s.mean, "std": s.std,
            "input_size": list(s.image_shape), "metrics": {}, "epoch": 1, "step": 60, "dataset": "digits",
            "config": {"seed": 0, "data": {"name": "digits", "root": None, "image_size": None, "val_fraction": 0.1,
                                           "subset": None, "download": False}}}
    ck.save_checkpoint(run / "checkpoints" / "best", model, meta)
    xt = preprocess(s.test.images, s.mean, s.std, channels_last=False)
    with torch.no_grad():
        logits = model(xt)
    return run, s, logits


def test_explain_galleries_match_predictions(digits_run):
    run, s, logits = digits_run
    y = s.test.targets
    prob = logits.softmax(1)
    conf, pred = prob.max(1)
    summary = explain(run, method="gradcam", n_per_class=3, n_pairs=3, n_top_loss=5, device="cpu")
    assert summary["accuracy"] == int((pred == y).sum()) / len(y)  # exact (a float32 mean was 0.2027777731)
    assert summary["layer"] == "layer3"  # the last stage of resnet8
    errors = int((pred != y).sum())
    assert errors > 0, "the brief training should leave some mistakes to show"
    assert sum(g["n_incorrect"] for g in summary["galleries"]) == errors
    for c, g in enumerate(summary["galleries"]):
        assert g["n_correct"] + g["n_incorrect"] == int((y == c).sum())
        assert len(g["correct"]) == min(3, g["n_correct"]) and len(g["incorrect"]) == min(3, g["n_incorrect"])
        for it in g["correct"]:
            assert it["true"] == it["pred"] == c == int(y[it["index"]]) == int(pred[it["index"]])
        for it in g["incorrect"]:
            assert it["true"] == c == int(y[it["index"]]) and it["pred"] == int(pred[it["index"]]) != c
        for it in g["correct"] + g["incorrect"]:
            assert it["confidence"] == pytest.approx(conf[it["index"]].item(), abs=1e-3)
        # the most confident ones are shown
        for kind, mask in (("correct", pred == c), ("incorrect", pred != c)):
            shown = [it["confidence"] for it in g[kind]]
            assert shown == sorted(shown, reverse=True)
            if g[kind]:
                best = conf[(y == c) & mask].max().item()
                assert shown[0] == pytest.approx(best, abs=1e-3)
    # confused pairs equal the off-diagonal maxima of an independent confusion matrix
    cm = torch.zeros(10, 10, dtype=torch.int64)
    cm.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    cm.fill_diagonal_(0)
    top = sorted(cm.flatten().tolist(), reverse=True)[:3]
    assert [p["count"] for p in summary["confused_pairs"]] == [v for v in top if v > 0]
    for p in summary["confused_pairs"]:
        assert int(cm[p["true"], p["pred"]]) == p["count"]
        assert p["share_of_true"] == pytest.approx(p["count"] / int((y == p["true"]).sum()))  # of the true class's images
        assert all(e["true"] == p["true"] and e["pred"] == p["pred"] for e in p["examples"])
    losses = F.cross_entropy(logits, y, reduction="none")
    assert [t["index"] for t in summary["top_losses"]] == torch.argsort(losses, descending=True)[:5].tolist()

    files = summary["files"]
    assert len(files["galleries"]) == 10
    assert json.loads((run / "explain" / "summary.json").read_text())["accuracy"] == summary["accuracy"]
    html = (run / "report_sections" / "explain.html").read_text()
    assert {"confused_pairs", "top_losses"} <= set(files)  # errors > 0, so both sections exist
    assert html.count("data:image/png;base64,") == 12  # 10 galleries + confused pairs + top losses
    md = (run / "report_sections" / "explain.md").read_text()
    assert "](explain/gallery_000_0.png)" in md and "| true | predicted |" in md
    # in the report: one heading, in both formats (there were two, "Explain" and "Explanations")
    from resnetlab.report import build_report

    html_path, md_path = build_report(run)
    report_md, report_html = md_path.read_text(), html_path.read_text()
    assert report_md.count("## Explanations") == 1 and "## Explain\n" not in report_md
    assert report_html.count("<h2>Explanations</h2>") == 1 and "<h2>Explain</h2>" not in report_html


def test_explain_of_a_streamed_split_with_an_undecodable_file_keeps_images_and_labels_together(tmp_path):
    # the loader drops a file that does not decode from its batch: explain took row i of the
    # outputs for dataset image i, so every image after that file was shown with its neighbour's
    # label, prediction and confidence (and a class's last image under the next class's label)
    import csv
    from pathlib import Path

    from _eval_runs import fresh_checkpoint_run, make_image_folder

    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.evaluate import SplitSource, evaluate, load_splits_for

    folder = make_image_folder(tmp_path / "shapes")
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16,
                                          "stream_threshold_gb": 1e-9, "num_workers": 0})
    test = load_splits_for(load_checkpoint(run).meta).test
    assert not test.in_memory
    bad = Path(test.paths[0])
    bad.write_bytes(bad.read_bytes()[:60])  # the header still reads: listed, then dropped by the loader
    rows = {int(r["index"]): r for r in csv.DictReader(open(evaluate(run, device="cpu")["predictions"]))}
    assert 0 not in rows and len(rows) == len(test) - 1
    shown = []
    images = SplitSource.images

    def spy(self, indices):
        shown.extend(torch.as_tensor(indices).tolist())
        return images(self, indices)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SplitSource, "images", spy)
        s = explain(run, n_per_class=1, n_pairs=0, n_top_loss=len(test), device="cpu")
    assert s["num_images"] == len(rows)
    assert sorted(t["index"] for t in s["top_losses"]) == sorted(rows) == sorted(shown)
    for it in s["top_losses"] + [it for g in s["galleries"] for it in g["correct"] + g["incorrect"]]:
        r = rows[it["index"]]
        assert it["true"] == int(r["target"]) == int(test.targets[it["index"]]) and it["pred"] == int(r["prediction"])
        assert it["confidence"] == pytest.approx(float(r["confidence"]), abs=1e-3)


def test_explain_of_the_last_checkpoint_goes_beside_the_best_ones(digits_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    shutil.copytree(run / "checkpoints" / "best", run / "checkpoints" / "last")
    explain(run, n_per_class=1, n_pairs=1, n_top_loss=1)
    before = (run / "report_sections" / "explain.html").read_bytes()
    last = explain(run, which="last", n_per_class=1, n_pairs=1, n_top_loss=1)
    # the report shows the best checkpoint: its explanations and section are untouched
    assert last["files"]["html"] == str(run / "explain-last" / "explain.html")
    assert (run / "report_sections" / "explain.html").read_bytes() == before
    assert (run / "explain-last" / "summary.json").is_file()
    # a page of its own says whose it is: a bare <section> named neither run nor checkpoint, nor a charset
    page = (run / "explain-last" / "explain.html").read_text(encoding="utf-8")
    epoch = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"]
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and page.rstrip().endswith("</html>")
    assert "<title>Explanations: run (last checkpoint)</title>" in page
    assert f"Checkpoint: {run / 'checkpoints' / 'last'}, epoch {epoch};" in page
    assert before.startswith(b'<section id="explanations">')  # the report's section stays a fragment
    # the command says the report does not show it (it printed the path alone, as if it did)
    from resnetlab.cli import main

    capsys.readouterr()
    assert main(["explain", str(run), "--which", "last", "--n", "1", "--pairs", "1", "--top-loss", "1"]) == 0
    out = capsys.readouterr().out
    assert f"report section: {run / 'explain-last' / 'explain.html'} (a page of its own: the run's report shows the best" in out



def test_a_run_with_only_its_last_checkpoint_reports_its_explanations(digits_run, tmp_path, capsys):
    # an interrupted run before its first validated epoch: the report shows last (eval/test-last),
    # and explain wrote explain-last/, which the report did not read
    import shutil

    from resnetlab.cli import main
    from resnetlab.report import build_report

    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    shutil.rmtree(run / "report_sections", ignore_errors=True)
    shutil.move(run / "checkpoints" / "best", run / "checkpoints" / "last")
    capsys.readouterr()
    assert main(["explain", str(run), "--n", "1", "--pairs", "1", "--top-loss", "1"]) == 0
    assert f"resnetlab report {run}" in capsys.readouterr().out
    assert (run / "explain-last" / "explain.md").is_file() and not (run / "report_sections").exists()
    html_path, md_path = build_report(run)
    md = md_path.read_text()
    assert md.count("## Explanations") == 1 and "](explain-last/gallery_000_0.png)" in md
    assert (run / "explain-last" / "gallery_000_0.png").is_file()
    assert html_path.read_text().count("<h2>Explanations</h2>") == 1
    # once the run has a best checkpoint the report shows it, and last's explanations leave it
    shutil.copytree(run / "checkpoints" / "last", run / "checkpoints" / "best")
    assert "## Explanations" not in build_report(run)[1].read_text()
    assert main(["explain", str(run), "--which", "last", "--n", "1", "--pairs", "1", "--top-loss", "1"]) == 0
    assert "resnetlab report" not in capsys.readouterr().out

def test_maps_are_scaled_min_to_max_per_image():
    from resnetlab.explain import _normalize_maps

    maps = torch.tensor([[[2.0, 4.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = _normalize_maps(maps)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.25, 1.0]])  # the minimum maps to 0, not 2/6
    assert out.dtype == np.float32 and not out[1].any()  # an all-zero map stays zero


def test_explain_bad_layer_and_split(digits_run):
    run, _, _ = digits_run
    with pytest.raises(ValueError, match=r"unknown layer 'layer4'.*allowed: layer1, layer2, layer3, stem"):
        explain(run, layer="layer4")
    with pytest.raises(ValueError, match="split must be one of"):
        explain(run, split="holdout")


def test_cli_explain_every_method(digits_run, tmp_path, capsys):
    run, _, _ = digits_run
    for method in METHODS:
        out = tmp_path / method
        rc = main(["explain", str(run), "--method", method, "--n", "1", "--pairs", "1", "--top-loss", "2",
                   "--out", str(out), "--device", "cpu"])
        assert rc == 0, method
        summary = json.loads((out / "summary.json").read_text())
        assert summary["method"] == method
        assert (out / "top_losses.png").stat().st_size > 1000
        # --out outside the run: the report section stays in that folder, with links relative to it
        assert "](top_losses.png)" in (out / "explain.md").read_text() and (out / "explain.html").is_file()
    assert not (tmp_path / "report_sections").exists()  # nothing written beside the --out folders
    text = capsys.readouterr().out
    assert "integrated-gradients: 360 test images" in text and "gradcam @ layer3" in text
    assert "add it to report.html" not in text  # --out elsewhere: not the run's section
    # the run's own section: the command says how to get it into report.html (it was not rebuilt)
    import shutil

    inside = tmp_path / "inside"
    shutil.copytree(run, inside)
    assert main(["explain", str(inside), "--n", "1", "--pairs", "1", "--top-loss", "1", "--device", "cpu"]) == 0
    assert f"(add it to report.html: resnetlab report {inside})" in capsys.readouterr().out
    rc = main(["explain", str(run), "--layer", "layer7", "--out", str(tmp_path / "x")])
    assert rc == 2 and "error: unknown layer 'layer7'" in capsys.readouterr().err


# -- activation maps ------------------------------------------------------------------------------


def test_stage_activations_shapes():
    model = create_model("resnet20", in_channels=1)
    acts = stage_activations(model, torch.randn(2, 1, 28, 28), ["layer1", "layer3"])
    assert {k: tuple(v.shape) for k, v in acts.items()} == {"layer1": (2, 16, 28, 28), "layer3": (2, 64, 7, 7)}
    with pytest.raises(ValueError, match="unknown layer 'layer4'"):
        stage_activations(model, torch.randn(1, 1, 28, 28), ["layer4"])


def test_activations_of_any_module_first_call_of_a_reused_activation():
    # report 003 shows the first convolution before its norm, a block's ReLU, its second conv ...
    model = create_model("resnet8", in_channels=1).eval()
    x = torch.randn(2, 1, 12, 12)
    names = ["conv1", "bn1", "stem", "maxpool", "layer1.0.conv1", "layer1.0.act", "layer1.0.conv2", "layer1.0.act#2", "layer1.0"]
    acts = stage_activations(model, x, names)
    assert list(acts) == names
    blk = model.layer1[0]
    with torch.no_grad():
        conv1 = model.conv1(x)
        bn1 = model.bn1(conv1)
        stem = model.maxpool(F.relu(bn1))
        relu1 = F.relu(blk.bn1(blk.conv1(stem)))
        conv2 = blk.conv2(relu1)
        block = F.relu(blk.bn2(conv2) + stem)
    # conv1 before its norm, bn1 before the in-place activation that follows it
    torch.testing.assert_close(acts["conv1"], conv1)
    torch.testing.assert_close(acts["bn1"], bn1)
    assert not (acts["bn1"] >= 0).all()
    torch.testing.assert_close(acts["stem"], stem)
    torch.testing.assert_close(acts["maxpool"], stem)
    torch.testing.assert_close(acts["layer1.0.conv1"], blk.conv1(stem).detach())
    torch.testing.assert_close(acts["layer1.0.conv2"], conv2)
    # the block's one activation module runs twice: its name gives the first call, #2 the second
    torch.testing.assert_close(acts["layer1.0.act"], relu1)
    torch.testing.assert_close(acts["layer1.0.act#2"], block)
    torch.testing.assert_close(acts["layer1.0"], block)
    assert not torch.equal(acts["layer1.0.act"], acts["layer1.0.act#2"])
    # a stage and its module name at once: one hook, both filled
    both = stage_activations(model, x, ["layer2", "layer2.0", "layer2.0.act#1"])
    torch.testing.assert_close(both["layer2"], both["layer2.0"])
    with pytest.raises(ValueError, match=r"layer 'layer1.0.act#3': layer1.0.act runs 2 time\(s\) per forward pass "
                                         r"\(allowed: layer1.0.act, layer1.0.act#2\)"):
        stage_activations(model, x, ["layer1.0.act#3"])


def test_unknown_layer_names_the_closest_and_how_to_list_them():
    model = create_model("resnet8", in_channels=1)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError) as e:
        stage_activations(model, x, ["layer1.0.conv3"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown layer 'layer1.0.conv3'; did you mean 'layer1.0.conv")
    assert "stages stem, layer1, layer2, layer3" in msg and "resnetlab activations RUN --list-layers" in msg
    # torchvision names the activation relu; here it is act
    with pytest.raises(ValueError, match=r"unknown layer 'layer1.0.relu'; did you mean 'layer1.0.act'"):
        stage_activations(model, x, ["layer1.0.relu"])
    with pytest.raises(ValueError, match=r"unknown layer 'relu'; did you mean 'act'"):
        stage_activations(model, x, ["relu"])


def test_cli_activations_of_module_names(digits_run, tmp_path, capsys):
    run, _, _ = digits_run
    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(2).random((8, 8)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "m.png"
    argv = ["activations", str(run), str(img), "--channels", "4", "--layers"]
    assert main([*argv, "conv1", "layer1.0.conv1", "layer1.0.act", "layer1.0.act#2", "layer2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 1000
    assert main([*argv, "layer1.0.conv3", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown layer 'layer1.0.conv3'; did you mean") and "\n" not in err
    assert "--list-layers" in err
    assert main([*argv, "fc", "--out", str(tmp_path / "x.png")]) == 2  # the classifier gives (1, 10): no maps
    assert "error: layer 'fc' gives (1, 10), not feature maps (1, C, H, W)" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_activations_image_may_follow_an_option(digits_run, tmp_path, capsys):
    # IMAGE is an optional positional (not needed with --list-layers): argparse took it only right
    # after the run folder, and `activations RUN --which best img.png` said "unrecognized arguments"
    run, _, _ = digits_run
    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(3).random((8, 8)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "late.png"
    assert main(["activations", str(run), "--which", "best", "--channels", "2", str(img), "--layers", "layer1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 1000
    assert main(["activations", str(run), "--which", "best", str(img), str(img)]) == 2  # still one image
    assert "unrecognized arguments" in capsys.readouterr().err
    # after --layers, which takes every word up to the next option: the image was taken for a layer
    # name ("needs an IMAGE"); an existing file at the end of the list is the image
    after = tmp_path / "after.png"
    assert main(["activations", str(run), "--layers", "input", "layer1", str(img), "--out", str(after)]) == 0
    assert capsys.readouterr().out.strip() == str(after) and after.stat().st_size > 1000
    assert main(["activations", str(run), "--layers", str(img), "--out", str(tmp_path / "only.png")]) == 0  # the stages
    assert main(["activations", str(run), "--layers", "layer1", str(tmp_path / "missing.png")]) == 2
    assert "needs an IMAGE" in capsys.readouterr().err


def test_list_layers_gives_every_drawable_name_in_forward_order_with_its_shape(digits_run):
    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.explain import list_layers

    run, _, _ = digits_run
    rows = list_layers(run)
    names = [r["name"] for r in rows]
    assert names[:5] == ["input", "conv1", "bn1", "act", "maxpool"] and rows[0]["shape"] == (1, 8, 8)
    assert [r["stage"] for r in rows if r["stage"]] == ["stem"] and rows[4]["stage"] == "stem"
    # a block's layers, the activation's second call, then the block and its stage
    i = names.index("layer1.0.conv1")
    assert names[i:i + 8] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.act", "layer1.0.conv2", "layer1.0.bn2",
                              "layer1.0.act#2", "layer1.0", "layer1"]
    assert "fc" not in names and "drop" not in names and names[-1] == "avgpool"  # (1, 10) and (1, 64): no maps
    assert {r["module"] for r in rows} >= {"input", "Conv2d", "ReLU", "BasicBlock", "Sequential"}
    # every listed name is accepted, with the listed shape
    model = load_checkpoint(run).model
    acts = stage_activations(model, torch.zeros(1, 1, 8, 8), names)
    assert {n: tuple(a.shape[1:]) for n, a in acts.items()} == {r["name"]: r["shape"] for r in rows}


def test_cli_list_layers_needs_no_image(digits_run, capsys):
    run, _, _ = digits_run
    capsys.readouterr()
    assert main(["activations", str(run), "--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(1, 8, 8) input" in lines[0]
    rows = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines[1:]}
    assert rows["conv1"].startswith("(16, 8, 8)") and "Conv2d" in rows["conv1"]
    assert "layer1.0.act#2" in rows and "normalized image" in rows["input"]
    # every name --layers takes is a row of its own: stem too (it was only a note on maxpool's row)
    assert rows["stem"].split()[0] == rows["maxpool"].split()[0] and rows["stem"].endswith("stage stem: the output of maxpool")
    assert list(rows).index("stem") == list(rows).index("maxpool") + 1
    assert main(["activations", str(run)]) == 2  # neither an image nor --list-layers
    err = capsys.readouterr().err.strip()
    assert err == ("error: resnetlab activations needs an IMAGE file or --index N (an image of the run's --split) to draw "
                   "(or --list-layers to list the layer names)")


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """An (untrained) resnet8 on 3-channel 8x8 images, with a mean and std per channel."""
    args = {"num_classes": 2, "in_channels": 3}
    torch.manual_seed(0)
    model = create_model("resnet8", **args).eval()
    run = tmp_path_factory.mktemp("runs") / "rgb"
    meta = {"arch": "resnet8", "arch_args": args, "classes": ["a", "b"], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
            "input_size": [3, 8, 8], "metrics": {}, "epoch": 1, "step": 1, "dataset": "synthetic", "config": {"seed": 0}}
    ck.save_checkpoint(run / "checkpoints" / "best", model, meta)
    return run


def test_activations_input_row_shows_the_normalized_channels_in_order(rgb_run, tmp_path, monkeypatch):
    # report 003's "layer 0": the input split into its channels, each its own map
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", figs.append)
    rng = np.random.default_rng(0)
    # R darkest, B brightest: ordered by mean activation the row would read B, G, R
    pixels = np.stack([rng.integers(lo, lo + 40, (8, 8)) for lo in (10, 100, 200)], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    activation_maps(rgb_run, tmp_path / "rgb.png", out=tmp_path / "a.png", layers=["input", "conv1"], max_channels=16)
    fig = figs[0]
    axes = np.array(fig.axes).reshape(2, 17)  # rows x (image + 16 channels)
    assert axes[0][0].get_title() == "input\n(3, 8, 8)" and axes[1][0].get_title() == "conv1\n(16, 8, 8)"
    assert [ax.get_title() for ax in axes[0][1:4]] == ["ch 0 R", "ch 1 G", "ch 2 B"]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    for c in range(3):
        np.testing.assert_allclose(np.asarray(axes[0][1 + c].get_images()[0].get_array()), expected[c].numpy(), atol=1e-5)
    assert not any(ax.get_images() for ax in axes[0][4:])  # three channels, three maps
    assert all(ax.get_images() for ax in axes[1][1:])  # conv1: its 16 most active channels
    close(fig)


def test_activation_maps_converts_rgb_with_notice(digits_run, tmp_path, caplog, capsys):
    run, _, _ = digits_run
    img = tmp_path / "rgb.png"
    Image.fromarray((np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)).save(img)
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        path = activation_maps(run, img, layers=["stem", "layer3"], max_channels=4)
    assert path == run / "explain" / "activations_rgb.png" and path.stat().st_size > 1000
    assert "converted 1 image(s) to 1 channel(s) (RGB: 1)" in caplog.text
    with Image.open(path) as im:
        assert im.size[0] > 100
    with pytest.raises(ValueError, match="unknown layer 'layer5'"):
        activation_maps(run, img, layers=["layer5"])
    rc = main(["activations", str(run), str(img), "--out", str(tmp_path / "a.png"), "--layers", "layer1", "layer2"])
    assert rc == 0
    rc = main(["activations", str(run), str(img), "--out", str(tmp_path / "a.png")])  # exists: refused
    assert rc == 2
    rc = main(["activations", str(run), str(img), "--out", str(tmp_path / "a.png"), "--overwrite"])
    assert rc == 0 and (tmp_path / "a.png").exists()
    # no suffix: matplotlib writes a.png, so that is the file the refusal protects and the path printed
    before = (tmp_path / "a.png").read_bytes()
    capsys.readouterr()
    assert main(["activations", str(run), str(img), "--out", str(tmp_path / "a"), "--layers", "layer1"]) == 2
    assert "a.png already exists" in capsys.readouterr().err and (tmp_path / "a.png").read_bytes() == before
    assert main(["activations", str(run), str(img), "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "b.png") and (tmp_path / "b.png").exists()
    rc = main(["activations", str(run), str(tmp_path / "missing.png")])
    assert rc == 2


def test_activations_predict_as_the_run_evaluates_and_last_gets_its_own_folder(digits_run, tmp_path, caplog):
    import re
    import shutil

    from resnetlab.predict import predict

    src, _, _ = digits_run
    run = tmp_path / "run"
    shutil.copytree(src / "checkpoints" / "best", run / "checkpoints" / "best")
    shutil.copytree(src / "checkpoints" / "best", run / "checkpoints" / "last")
    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(3).random((8, 8)) * 255).astype(np.uint8)).save(img)

    def logged_prob(**kw):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="resnetlab"):
            path = activation_maps(run, img, layers=["layer1"], **kw)
        return path, float(re.search(r"predicted \S+, ([0-9.]+);", caplog.text).group(1))

    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"] = {"tta_flip": True}
    meta_path.write_text(json.dumps(meta))
    _, prob = logged_prob()
    assert prob == pytest.approx(predict(run, [img], top_k=1)[0]["top"][0]["prob"], abs=1e-4)
    assert prob != pytest.approx(predict(run, [img], top_k=1, tta_flip=False)[0]["top"][0]["prob"], abs=1e-4)
    # --which last writes beside explain's explain-last/, not over the best checkpoint's figure
    path, _ = logged_prob(which="last")
    assert path == run / "explain-last" / "activations_d.png"


def test_activations_default_output_is_not_replaced_silently(digits_run, tmp_path, capsys):
    # two images with the same name from different folders map to the same default figure:
    # the second is refused (the first figure kept) unless --overwrite says to replace it
    run, _, _ = digits_run
    for sub, seed in (("a", 0), ("b", 1)):
        (tmp_path / sub).mkdir()
        pixels = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / sub / "same.png")
    default = run / "explain" / "activations_same.png"
    default.unlink(missing_ok=True)
    assert main(["activations", str(run), str(tmp_path / "a" / "same.png"), "--layers", "layer1"]) == 0
    assert capsys.readouterr().out.strip() == str(default)
    first = default.read_bytes()
    assert main(["activations", str(run), str(tmp_path / "b" / "same.png"), "--layers", "layer1"]) == 2
    err = capsys.readouterr().err
    assert f"{default} already exists; use --overwrite" in err and "Traceback" not in err
    assert default.read_bytes() == first
    assert main(["activations", str(run), str(tmp_path / "b" / "same.png"), "--layers", "layer1", "--overwrite"]) == 0
    assert default.read_bytes() != first
    # the Python function keeps matplotlib's habit and replaces unless told otherwise
    assert activation_maps(run, tmp_path / "a" / "same.png", layers=["layer1"]) == default
    with pytest.raises(ResnetlabError, match="already exists"):
        activation_maps(run, tmp_path / "a" / "same.png", layers=["layer1"], overwrite=False)


def test_activations_default_names_keep_letters_of_any_script(digits_run, tmp_path, capsys):
    # 猫.png and 狗.png both became activations_class.png (the second refused as "already exists")
    run, _, _ = digits_run
    pixels = (np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)
    names = {"猫.png": "activations_猫.png", "狗.png": "activations_狗.png", "photo 0 été.png": "activations_photo-0-été.png",
             "猫" * 80 + ".png": "activations_" + "猫" * 33 + ".png"}  # 240 bytes: cut to 100 (99, whole characters)
    for name, figure in names.items():
        Image.fromarray(pixels).save(tmp_path / name)
        (run / "explain" / figure).unlink(missing_ok=True)
        assert main(["activations", str(run), str(tmp_path / name), "--layers", "layer1"]) == 0
        assert capsys.readouterr().out.strip() == str(run / "explain" / figure)


# -- runs whose evaluation crops: the maps explain the input the prediction was made on ----------


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory):
    """An (untrained) resnet8 on digits whose evaluation center-crops the 8x8 images to 6x6."""
    s = load_dataset("digits", val_fraction=0.1, seed=0)
    args = {"num_classes": 10, "in_channels": 1}
    torch.manual_seed(0)
    model = create_model("resnet8", **args).eval()
    run = tmp_path_factory.mktemp("runs") / "cropped"
    meta = {"arch": "resnet8", "arch_args": args, "classes": s.classes, "mean": s.mean, "std": s.std,
            "input_size": [1, 6, 6], "data_shape": [1, 8, 8], "eval_transforms": ["center-crop:size=6"],
            "metrics": {}, "epoch": 1, "step": 1, "dataset": "digits",
            "config": {"seed": 0, "augment": ["center-crop:size=6"],
                       "data": {"name": "digits", "root": None, "image_size": None, "val_fraction": 0.1,
                                "subset": None, "download": False}}}  # fmt: skip
    ck.save_checkpoint(run / "checkpoints" / "best", model, meta)
    return run


def test_explain_maps_use_the_evaluation_crop(cropped_run, monkeypatch):
    import resnetlab.explain as ex

    seen = []
    real = ex._attribution_maps

    def spy(model, x, *a, **kw):
        seen.append(tuple(x.shape[1:]))
        return real(model, x, *a, **kw)

    monkeypatch.setattr(ex, "_attribution_maps", spy)
    explain(cropped_run, method="gradcam", n_per_class=1, n_pairs=0, n_top_loss=1, device="cpu")
    assert seen and set(seen) == {(1, 6, 6)}  # the 6x6 center crop the predictions saw, not the 8x8 image


def test_activation_maps_see_the_file_as_predict_does(cropped_run, tmp_path, monkeypatch):
    import resnetlab.data.images as images
    from resnetlab.predict import predict

    fed = []
    real = images.preprocess

    def spy(*a, **kw):
        out = real(*a, **kw)
        fed.append(out.contiguous())
        return out

    monkeypatch.setattr(images, "preprocess", spy)
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(1).random((24, 20)) * 255).astype(np.uint8)).save(img)
    activation_maps(cropped_run, img, layers=["stem"], out=tmp_path / "a.png")
    predict(cropped_run, [img])
    # loaded at the run's 8x8, then center-cropped to 6x6: not the whole file squashed to 6x6
    assert len(fed) == 2 and fed[0].shape == fed[1].shape == (1, 1, 6, 6)
    assert torch.equal(fed[0], fed[1])


@pytest.mark.parametrize("cols", [1, 2, 8])
def test_grid_title_fits_the_figure_whatever_the_column_count(tmp_path, monkeypatch, cols):
    import matplotlib.pyplot as plt

    from resnetlab import explain

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    cell = {"image": np.zeros((8, 8, 3)), "title": "x"}
    title = "most confused pairs (true→pred): CAM of the prediction, then of the true class, on the validation split"
    explain._draw_grid([[cell] * cols], tmp_path / "g.png", title)
    fig = figs[0]
    renderer = fig.canvas.get_renderer()
    box, page = fig.texts[0].get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1  # no character off the page
    assert fig.texts[0].get_text().replace("\n", " ") == title


def test_a_rerun_that_draws_fewer_figures_leaves_none_of_the_earlier_ones(digits_run, tmp_path):
    # explain --pairs 0 (or a checkpoint with no mistakes) after an earlier explain kept the old
    # confused_pairs.png and top_losses.png beside the new summary, which lists neither
    run, _, _ = digits_run
    out = tmp_path / "ex"
    argv = ["explain", str(run), "--n", "1", "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--pairs", "1", "--top-loss", "2"]) == 0
    assert (out / "confused_pairs.png").is_file() and (out / "top_losses.png").is_file()
    (out / "notes.txt").write_text("mine")
    assert main([*argv, "--pairs", "0", "--top-loss", "0"]) == 2  # a folder with other files: refused, kept
    assert (out / "top_losses.png").is_file()
    (out / "notes.txt").unlink()
    assert main([*argv, "--pairs", "0", "--top-loss", "0"]) == 0
    files = json.loads((out / "summary.json").read_text())["files"]
    assert "confused_pairs" not in files and "top_losses" not in files
    assert not (out / "confused_pairs.png").exists() and not (out / "top_losses.png").exists()
    assert sorted(p.name for p in out.glob("gallery_*.png")) == sorted(g.rsplit("/", 1)[-1] for g in files["galleries"])


@pytest.mark.parametrize("tta", [False, True])
def test_explain_of_a_flip_tta_run_maps_the_image_and_its_mirror(digits_run, tmp_path, monkeypatch, tta):
    # under flip TTA the prediction averages the image and its mirror, and the heat map was of the
    # image alone; now it averages the two maps (the mirror's flipped back)
    import shutil

    import resnetlab.explain as ex

    src, _, _ = digits_run
    run = tmp_path / "run"
    shutil.copytree(src / "checkpoints" / "best", run / "checkpoints" / "best")
    meta_path = run / "checkpoints" / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"] = {"tta_flip": tta}
    meta_path.write_text(json.dumps(meta))
    inputs, shown = [], []

    def ramp_maps(model, x, targets, *args, **kw):  # a map that is not its own mirror: x**2 along the width
        inputs.append(x.clone())
        w = x.shape[-1]
        return np.broadcast_to((np.arange(w, dtype=np.float32) / (w - 1)) ** 2, (len(x), x.shape[-2], w)).copy()

    real_overlay = ex.overlay
    monkeypatch.setattr(ex, "_attribution_maps", ramp_maps)
    monkeypatch.setattr(ex, "overlay", lambda img, hm: shown.append(hm) or real_overlay(img, hm))
    summary = explain(run, n_per_class=1, n_pairs=0, n_top_loss=0)
    assert summary["tta_flip"] is tta and shown
    if tta:  # the second call is on the mirrored images; the average is symmetric, min 0, max 1
        assert len(inputs) % 2 == 0 and torch.equal(inputs[1], torch.flip(inputs[0], dims=(3,)))
        for hm in shown:
            np.testing.assert_allclose(hm, hm[:, ::-1], atol=1e-6)
            assert hm.min() == pytest.approx(0) and hm.max() == pytest.approx(1)
        assert "averaged over the image and its mirror" in (run / "report_sections" / "explain.md").read_text()
    else:
        assert all(not torch.equal(b, torch.flip(a, dims=(3,))) for a, b in zip(inputs, inputs[1:]))
        assert not np.allclose(shown[0], shown[0][:, ::-1])


def test_galleries_of_an_image_folder_name_the_files_and_leave_no_blank_rows(tmp_path, monkeypatch):
    # a gallery titled its images "#13" (a position in the split: which photo was that?) and
    # drew a blank half figure for a class without correct (or incorrect) predictions
    from pathlib import Path

    from _eval_runs import fresh_checkpoint_run, make_image_folder

    import resnetlab.explain as ex

    folder = make_image_folder(tmp_path / "shapes")
    run = fresh_checkpoint_run(tmp_path, {"name": f"imagefolder:{folder}", "image_size": 16})
    drawn = {}
    draw = ex._draw_grid

    def spy(cells, path, title, *a, **k):
        drawn[Path(path).name] = (cells, title)
        return draw(cells, path, title, *a, **k)

    monkeypatch.setattr(ex, "_draw_grid", spy)
    s = explain(run, n_per_class=2, n_pairs=0, n_top_loss=0, device="cpu")
    one_sided = 0
    for g, path in zip(s["galleries"], s["files"]["galleries"]):
        cells, title = drawn[Path(path).name]
        shown = g["correct"] + g["incorrect"]
        assert all(row and row != [None] for row in cells) and len(cells) == 2 * bool(g["correct"]) + 2 * bool(g["incorrect"])
        one_sided += len(cells) == 2
        assert (f": correct ({g['n_correct']})" in title) == bool(g["correct"])
        assert (f"incorrect ({g['n_incorrect']})" in title) == bool(g["incorrect"])
        photos = [row for k, row in enumerate(cells) if k % 2 == 0]  # image rows; the maps follow each
        for it, c in zip(shown, [c for row in photos for c in row]):
            p = Path(it["path"])
            assert p.is_file() and p.parent.name == g["class_name"] and c["title"] == p.name
    assert one_sided  # an untrained model: some class has only mistakes (or none)


def test_cli_activations_of_an_image_of_the_runs_own_dataset(digits_run, tmp_path, capsys, monkeypatch, caplog):
    # report 003 drew the activations of a CIFAR-10 test image (a car); CIFAR-10 is stored as pickled
    # arrays, so there was no image file to pass: --index N draws image N of --split
    import resnetlab.explain as ex

    run, _, _ = digits_run
    seen = []
    real = ex.stage_activations
    monkeypatch.setattr(ex, "stage_activations", lambda model, x, layers=None: seen.append(x.clone()) or real(model, x, layers))
    out = tmp_path / "t7.png"
    assert main(["activations", str(run), "--index", "7", "--channels", "2", "--layers", "input", "layer1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 1000
    s = load_dataset("digits", val_fraction=0.1, seed=0)
    expect = preprocess(s.test.images[7:8], s.mean, s.std, channels_last=False)
    assert torch.equal(seen[0], expect)  # the very image evaluation scored as test index 7
    monkeypatch.setattr(logging.getLogger("resnetlab"), "propagate", True)  # the CLI calls above turned it off
    with caplog.at_level(logging.INFO, logger="resnetlab"):  # the log line (and the title) name the image and its label
        activation_maps(run, index=7, layers=["layer1"], max_channels=2, out=tmp_path / "lib.png")
    assert f"activation maps of test[7], label {s.classes[int(s.test.targets[7])]} (predicted " in caplog.text
    # the default name says which image it is; --split picks another split
    assert main(["activations", str(run), "--index", "0", "--split", "val", "--channels", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("explain/activations_val-0.png")
    assert torch.equal(seen[-1], preprocess(s.val.images[0:1], s.mean, s.std, channels_last=False))
    # one image: both, neither, or an index outside the split are one-line errors
    n = len(s.test)
    assert main(["activations", str(run), "--index", str(n), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the dataset's log line
    assert err == f"error: --index {n} is outside the test split of digits (0 .. {n - 1})" and not (tmp_path / "x.png").exists()
    img = tmp_path / "d.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert main(["activations", str(run), str(img), "--index", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["activations", str(run)]) == 2
    assert "needs an IMAGE file or --index N" in capsys.readouterr().err
    assert main(["activations", str(run), "--index", "-1"]) == 2
    capsys.readouterr()
    # --split and --data-root choose the --index image: with a file they were ignored without a word
    for opt in (["--split", "val"], ["--data-root", str(tmp_path)]):
        assert main(["activations", str(run), str(img), *opt, "--out", str(tmp_path / "f.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {opt[0]} chooses the image for --index N; the file {img} is drawn as it is: drop {opt[0]} "
                       "or use --index") and not (tmp_path / "f.png").exists()


def test_a_last_stage_of_1x1_maps_is_not_the_default_cam_layer(caplog):
    # ResNet-18's layer4 is 1x1 at 32x32: its Grad-CAM is one value per image, and every heat
    # map of explain's galleries was a flat colour without a word
    from resnetlab.explain import cam_layer, stage_sizes

    torch.manual_seed(1)  # an untrained net whose layer3 CAMs of these 2 images are not all negative (all-zero maps)
    model = create_model("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert stage_sizes(model, x) == {"stem": (8, 8), "layer1": (8, 8), "layer2": (4, 4), "layer3": (2, 2), "layer4": (1, 1)}
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        assert cam_layer(model, x) == "layer3"
    assert "layer4's maps are 1x1 at a 32x32 input (a uniform heat map): the CAM looks at layer3 (2x2) instead" in caplog.text
    maps = attribution_maps(model, x, [0, 1])
    assert maps.shape == (2, 32, 32) and all(m.std() > 0.05 for m in maps)
    np.testing.assert_array_equal(maps, attribution_maps(model, x, [0, 1], layer="layer3"))
    # asked for by name: kept, with a warning naming a layer that has pixels
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        flat = attribution_maps(model, x, [0, 1], layer="layer4")
    assert float(flat.std()) == 0.0
    assert "layer4's maps are 1x1 at a 32x32 input: its heat map is uniform (one value per image); choose a layer " \
           "with more pixels (--layer layer3: 2x2)" in caplog.text
    # at 64x64 the last stage has 2x2 maps and stays the default, silently
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        assert cam_layer(model, torch.randn(1, 3, 64, 64)) == "layer4"
    assert not caplog.records
    assert model.training is False and cam_layer(model.train(), x) == "layer3" and model.training
