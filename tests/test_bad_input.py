"""Bad input through the real CLI: every case ends in ONE ``error: ...`` line naming the problem,
exit code 2, no traceback (unless ``--debug``), and nothing already saved is lost.

The cases are the table of docs/RELIABILITY.md (same ids). Each runs ``resnetlab.cli.main``
in this process with ``capsys``; a few also run as a subprocess to check the real exit code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main

QUIET = ["--set", "output.evaluate_test=false", "--set", "output.report=false", "--set", "output.tensorboard=false",
         "--set", "train.num_threads=1"]  # fmt: skip
TINY = ["train", "-q", "--model", "resnet8", "--subset", "200", "--epochs", "1", "--batch-size", "16", *QUIET]


def _onnx_file(c) -> str:
    path = c.tmp / "model.onnx"
    path.write_bytes(b"\x08\x07")  # what an ONNX file starts with; its content is never read
    return str(path)


def _pt_file(c) -> str:
    path = c.tmp / "model.pt"
    path.write_bytes(b"PK\x03\x04")  # what a TorchScript (zip) file starts with; its content is never read
    return str(path)


def _png(path: Path, mode: str = "RGB", size: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode == "I;16":  # via L: the same pixels, and Pillow < 10 (pillow>=9.5 is allowed) has no RGB -> I;16
        im = im.convert("L")
    im.convert(mode).save(path)
    return path


def _image_folder(root: Path, n: int = 10, classes=("a", "b")) -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / c / f"{i}.png", seed=k * n + i)  # the same images in every process
    return root


def _without_cuda(argv: list[str]) -> list[str]:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    return argv


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run (digits, resnet8) that bad commands must leave untouched."""
    run = tmp_path_factory.mktemp("bad-input") / "good run ü"
    assert main([*TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def ctx(tmp_path, good_run):
    class Ctx:
        tmp = tmp_path
        run = good_run
        file = tmp_path / "a file.txt"
        img = _png(tmp_path / "img.png")
        empty = tmp_path / "empty"

    Ctx.file.write_text("not an image, not a folder\n")
    Ctx.empty.mkdir()
    return Ctx


def _imgf(ctx, make) -> str:
    root = _image_folder(ctx.tmp / "imgs")
    make(root)
    return f"imagefolder:{root}"


def _truncate_all(folder: Path) -> None:
    for p in folder.iterdir():
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])


def _yaml(ctx, text: str) -> str:
    p = ctx.tmp / "recipe.yaml"
    p.write_text(text)
    return str(p)


def _foreign_ckpt(ctx) -> str:
    d = ctx.tmp / "foreign"
    shutil.copytree(ctx.run / "checkpoints" / "best", d)
    (d / "meta.json").write_text('{"format": "timm-checkpoint/2", "arch": "x", "arch_args": {}}')
    return str(d)


def _truncated_ckpt(ctx) -> str:
    d = ctx.tmp / "truncated"
    shutil.copytree(ctx.run / "checkpoints" / "best", d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    return str(d)


def _img_train(spec: str, *extra: str) -> list[str]:
    return ["train", "-q", "--model", "resnet8", "--data", spec, "--image-size", "12", "--batch-size", "4", "--epochs", "1",
            *QUIET, *extra]  # fmt: skip


# id -> (argv builder, fragments the single error line must contain). Ids match RELIABILITY.md.
CASES = {
    # -- config ----------------------------------------------------------------------------------
    "key typo": (lambda c: [*TINY, "--set", "optim.lrr=0.1"], ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"]),
    "section typo": (lambda c: [*TINY, "--set", "optm.lr=0.1"], ["unknown config key 'optm'", "did you mean 'optim'?"]),
    "recipe key typo": (lambda c: ["train", "-c", _yaml(c, "trian:\n  epochs: 3\n")], ["unknown config key 'trian'", "did you mean 'train'?"]),
    "wrong type": (lambda c: [*TINY, "--set", "train.epochs=abc"], ["config train.epochs", "valid integer", "'abc'"]),
    "out of range": (lambda c: [*TINY, "--set", "optim.lr=-1"], ["config optim.lr", "greater than 0", "-1"]),
    "list for a number": (lambda c: [*TINY, "--set", "optim.lr=[1, 2]"], ["config optim.lr", "[1, 2]"]),
    "section is a value": (lambda c: [*TINY, "--set", "model=resnet8"], ["config model", "'resnet8'"]),
    "YAML syntax error": (lambda c: ["train", "-c", _yaml(c, "model:\n  name: resnet8\n   norm: bn\n")], ["is not valid YAML at line 3"]),
    "recipe not a mapping": (lambda c: ["train", "-c", _yaml(c, "- a\n- b\n")], ["must hold a mapping of sections, got list"]),
    "recipe missing": (lambda c: ["train", "-c", str(c.tmp / "nope.yaml")], ["config file not found"]),
    "override without =": (lambda c: ["train", "--set", "optim.lr"], ["override 'optim.lr' must look like section.key=value"]),
    # -- unknown names ---------------------------------------------------------------------------
    "unknown model": (lambda c: ["train", "--model", "resnet9000"], ["unknown model 'resnet9000'", "did you mean", "(allowed: resnet8, resnet14"]),
    "unknown norm": (lambda c: ["train", "--norm", "bnn"], ["model.norm (--norm): unknown norm 'bnn'", "did you mean 'bn'", "allowed:"]),
    "unknown device": (lambda c: [*TINY, "--device", "bogus", "--out", str(c.tmp / "never")], ["train.device (--device): unknown device 'bogus'", "allowed: auto, cpu, cuda"]),
    "config is a folder": (lambda c: ["train", "--config", str(c.tmp)], ["is a folder; give a YAML recipe file"]),
    "depth of a fixed-depth model": (lambda c: ["train", "--set", "model.depth=14"], ["model.depth applies only to model.name=resnet_cifar"]),
    "groups without group norm": (lambda c: ["train", "--norm", "bn", "--set", "model.groups=4"], ["model.groups applies only to norm gn"]),
    "report of a file": (lambda c: ["report", str(c.img)], ["is a file; give a run folder"]),
    "activations of a folder": (lambda c: ["activations", str(c.run), str(c.empty)], ["is a folder; give an image file"]),
    "head dropout without a head": (lambda c: ["train", "--set", "model.head_dropout=0.3"], ["model.head_dropout applies between the layers of an MLP head", "model.dropout"]),
    "momentum cycle upside down": (lambda c: ["train", "--set", "schedule.base_momentum=0.99"], ["schedule.base_momentum=0.99 must be <= schedule.max_momentum=0.95"]),
    "progressive resizing in one epoch": (lambda c: [*TINY, "--set", "data.image_size=16", "--set", "train.progressive_resize.start_size=8", "--out", str(c.tmp / "pr1")],
                                          ["train.progressive_resize needs at least 2 epochs"]),  # fmt: skip
    "milestone fraction above 1": (lambda c: ["train", "--schedule", "multistep", "--set", "schedule.milestones=[1.5]"],
                                   ["schedule.milestones are fractions of training in (0, 1]"]),  # fmt: skip
    "zero-width head layer": (lambda c: ["train", "--set", "model.head=[0]"], ["model.head.0", "greater than 0"]),
    "unknown dataset": (lambda c: ["train", "--data", "cifar11"], ["unknown dataset 'cifar11'", "did you mean 'cifar10'", "allowed:"]),
    "unknown augmentation": (lambda c: ["train", "--aug", "flipp"], ["unknown augmentation 'flipp'", "did you mean 'flip'", "allowed:"]),
    "unknown augmentation parameter": (lambda c: ["train", "--aug", "crop:paddin=2"], ["'crop' has no parameter 'paddin'", "'padding'"]),
    "unknown optimizer": (lambda c: ["train", "--optimizer", "sgdd"], ["config optim.name (--optimizer):", "'sgd', 'adam' or 'adamw'", "'sgdd'"]),
    "unknown schedule": (lambda c: ["train", "--schedule", "cosin"], ["config schedule.name (--schedule):", "'cosine'", "'cosin'"]),
    "cuda without a GPU": (lambda c: _without_cuda([*TINY, "--device", "cuda", "--out", str(c.tmp / "r")]), ["train.device='cuda'", "not available", "allowed"]),
    # -- impossible combinations -----------------------------------------------------------------
    "batch size 1 with BatchNorm": (lambda c: [*TINY, "--batch-size", "1"], ["train.batch_size=1 (--batch-size) cannot", "norm bn/bin", "gn/ln/in"]),
    "crop larger than the image": (lambda c: [*TINY, "--aug", "crop:size=64", "--out", str(c.tmp / "r")], ["'crop': size=64 is larger than the image 8x8"]),
    "center-crop larger than the image": (lambda c: [*TINY, "--aug", "center-crop:size=9", "--out", str(c.tmp / "r")], ["'center-crop': size=9 is larger than the image 8x8"]),
    "batch larger than the data": (lambda c: [*TINY, "--batch-size", "1000", "--out", str(c.tmp / "r")], ["train.batch_size=1000 (--batch-size) is larger than the training split (180 images)"]),
    "image size too small": (lambda c: ["train", "--image-size", "2"], ["config data.image_size (--image-size):", "greater than or equal to 4"]),
    # -- image folders ---------------------------------------------------------------------------
    "zero-byte images": (lambda c: _img_train(_imgf(c, lambda r: [p.write_bytes(b"") for p in (r / "b").iterdir()]), "--out", str(c.tmp / "r")),
                         ["class folder(s) b have no readable images"]),  # fmt: skip
    "truncated images": (lambda c: _img_train(_imgf(c, lambda r: _truncate_all(r / "b")), "--out", str(c.tmp / "r")), ["class folder(s) b have no readable images"]),
    "non-image files": (lambda c: _img_train(_imgf(c, lambda r: [p.write_text("hello") for p in (r / "a").iterdir()]), "--out", str(c.tmp / "r")),
                        ["class folder(s) a have no readable images"]),  # fmt: skip
    "one class only": (lambda c: _img_train(f"imagefolder:{_image_folder(c.tmp / 'one', classes=('a',))}"), ["single class 'a'", "at least 2"]),
    "empty class folder": (lambda c: _img_train(_imgf(c, lambda r: (r / "c").mkdir())), ["empty class folder(s) c"]),
    "no class folders": (lambda c: _img_train(f"imagefolder:{_png(c.empty / 'loose.png').parent}"), ["has no class sub-folders"]),
    "dataset root is a file": (lambda c: _img_train(f"imagefolder:{c.file}"), ["does not exist or is not a directory"]),
    "dataset root missing": (lambda c: _img_train(f"imagefolder:{c.tmp / 'nowhere'}"), ["does not exist or is not a directory"]),
    "data root is a file": (lambda c: ["train", "-q", "--data", "mnist", "--data-root", str(c.file)], ["data root", "is not a directory"]),
    # -- output folders --------------------------------------------------------------------------
    "output under a regular file": (lambda c: [*TINY, "--out", str(c.file / "run")], ["output folder", "is not writable (Not a directory)", "--out"]),
    "output is an existing file": (lambda c: [*TINY, "--out", str(c.file)], ["output folder", "is an existing file, not a folder", "--out"]),
    "existing run without --resume": (lambda c: [*TINY, "--out", str(c.run)], ["already holds a run", "use --resume"]),
    "run name a path": (lambda c: [*TINY, "--name", "../x"], ["name (--name): a run name is one non-empty folder name under output.dir", "got '../x'", "use --out PATH"]),
    "bad config on an existing run with --overwrite": (lambda c: [*TINY, "--out", str(c.run), "--overwrite", "--norm", "bnn"], ["unknown norm 'bnn'"]),
    # -- checkpoints and runs --------------------------------------------------------------------
    "resume a folder that is not a run": (lambda c: ["train", "--resume", str(c.tmp)], ["is not a run folder (no config.yaml)"]),
    "resume a missing folder": (lambda c: ["train", "--resume", str(c.tmp / "nope")], ["is not a run folder"]),
    # it said "RUN/config.yaml is not a run folder (no config.yaml)"
    "resume a file": (lambda c: ["train", "--resume", _yaml(c, "a: 1\n")], ["recipe.yaml is a file, not a run folder (give the folder that holds config.yaml)"]),
    "run name empty": (lambda c: [*TINY, "--name", ""], ["name (--name): a run name is one non-empty folder name", "got ''"]),
    "run name too long": (lambda c: [*TINY, "--name", "x" * 300], ["name (--name): a run name is a folder name of at most 200 bytes, got 300"]),
    # an OSError with a file name: "[Errno 36] File name too long: '...'" named neither clearly
    "output path too long": (lambda c: [*TINY, "--out", str(c.tmp / ("y" * 300) / "r")], ["cannot use ", "yyy/r (File name too long)"]),
    "resume with other options": (lambda c: ["train", "--resume", str(c.run), "--epochs", "2", "--set", "optim.lr=0.5"],
                                  ["takes no other options (got --epochs, --set optim.lr=0.5)"]),  # fmt: skip
    "missing checkpoint": (lambda c: ["predict", str(c.tmp / "nope"), str(c.img)], ["checkpoint or run folder not found"]),
    "foreign checkpoint": (lambda c: ["predict", _foreign_ckpt(c), str(c.img)], ["is not a resnetlab checkpoint", "'timm-checkpoint/2'"]),
    "truncated checkpoint": (lambda c: ["predict", _truncated_ckpt(c), str(c.img)], ["checkpoint weights are corrupt or truncated"]),
    "a file as checkpoint": (lambda c: ["evaluate", str(c.file)], ["is not a resnetlab checkpoint"]),
    "an ONNX file without --backend onnx": (lambda c: ["predict", _onnx_file(c), str(c.img)],
                                            ["is not a resnetlab checkpoint", "an exported ONNX file is read by resnetlab predict --backend onnx"]),  # fmt: skip
    "a TorchScript file without --backend torchscript": (lambda c: ["predict", _pt_file(c), str(c.img)],
                                                         ["is not a resnetlab checkpoint", "read by resnetlab predict --backend torchscript"]),  # fmt: skip
    # a file named for the other format: predict and users take the suffix at its word
    "export onnx named .pt": (lambda c: ["export", str(c.run), "--format", "onnx", "--out", str(c.tmp / "m.pt")],
                              ["--out m.pt names a TorchScript file, and --format is onnx; use a .onnx name"]),  # fmt: skip
    "export torchscript named .onnx": (lambda c: ["export", str(c.run), "--format", "torchscript", "--out", str(c.tmp / "m.onnx")],
                                       ["--out m.onnx names an ONNX file"]),  # fmt: skip
    "export under a regular file": (lambda c: ["export", str(c.run), "--format", "torchscript", "--out", str(c.file / "m.pt")],
                                    ["cannot write", "a file.txt/m.pt: ", "a file.txt is a file, not a folder"]),  # fmt: skip
    # a figure's --out that is a folder: the figure was written beside it, as FOLDER.png
    "activations out a folder": (lambda c: ["activations", str(c.run), str(c.img), "--out", str(c.empty)], ["is a folder; give the figure's file name"]),
    "augment-preview out a folder": (lambda c: ["augment-preview", "--data", "digits", "--aug", "flip", "--out", str(c.empty), "--overwrite"],
                                     ["is a folder; give the figure's file name"]),  # fmt: skip
    # evaluate / explain --out a folder of other files: files of their names there were replaced
    "evaluate out a run folder": (lambda c: ["evaluate", str(c.run), "--out", str(c.run)], ["holds files evaluate does not write (checkpoints, config.yaml,"]),
    "explain out a run folder": (lambda c: ["explain", str(c.run), "--out", str(c.run)], ["holds files explain does not write (checkpoints, config.yaml,"]),
    # --which picks from a run folder; with one checkpoint it was ignored (evaluate wrote best's eval/test)
    "which of a checkpoint folder": (lambda c: ["evaluate", str(c.run / "checkpoints" / "best"), "--which", "last"],
                                     ["--which last picks a checkpoint of a run folder", "checkpoints/best is one checkpoint already"]),  # fmt: skip
    "which of a weights file": (lambda c: ["predict", str(c.run / "checkpoints" / "best" / "model.safetensors"), str(c.img), "--which", "last"],
                                ["--which last picks a checkpoint of a run folder", "leave --which out"]),  # fmt: skip
    # -- predict / explain -----------------------------------------------------------------------
    "predict a non-image": (lambda c: ["predict", str(c.run), str(c.file)], ["cannot read image", "a file.txt"]),
    "predict a missing image": (lambda c: ["predict", str(c.run), str(c.tmp / "none.png")], ["does not exist"]),
    "predict an empty folder": (lambda c: ["predict", str(c.run), str(c.empty)], ["no image files in directory"]),
    "predict top-k 0": (lambda c: ["predict", str(c.run), str(c.img), "--top-k", "0"], ["argument --top-k: must be an integer >= 1, got '0'"]),
    # integer flags name the flag typed, not the library's parameter (n_per_class, max_channels, ...)
    "explain n 0": (lambda c: ["explain", str(c.run), "--n", "0"], ["resnetlab explain: argument --n: must be an integer >= 1, got '0'"]),
    "explain pairs -1": (lambda c: ["explain", str(c.run), "--pairs", "-1"], ["argument --pairs: must be an integer >= 0, got '-1'"]),
    "activations channels 0": (lambda c: ["activations", str(c.run), str(c.img), "--channels", "0"], ["argument --channels: must be an integer >= 1, got '0'"]),
    "evaluate batch size 0": (lambda c: ["evaluate", str(c.run), "--batch-size", "0"], ["argument --batch-size: must be an integer >= 1, got '0'"]),
    "study seeds 0": (lambda c: ["study", str(c.file), "--seeds", "0"], ["argument --seeds: must be an integer >= 1, got '0'"]),
    "image size not a number": (lambda c: ["train", "--image-size", "big"], ["argument --image-size: must be an integer >= 1, got 'big'"]),
    "train epochs 0": (lambda c: ["train", "--epochs", "0"], ["resnetlab train: argument --epochs: must be an integer >= 1, got '0'"]),
    "instance norm of a 1x1 map": (lambda c: [*TINY, "--model", "resnet18", "--set", "model.norm=in", "--out", str(c.tmp / "in")],
                                   ["instance norm needs more than one value per channel, got a 1x1 feature map", "larger data.image_size"]),
    "explain unknown layer": (lambda c: ["explain", str(c.run), "--layer", "layer9", "--out", str(c.tmp / "ex")], ["unknown layer 'layer9'", "allowed: layer1, layer2, layer3, stem"]),
    # -- the command line itself (argparse) ------------------------------------------------------
    "unknown option": (lambda c: ["train", "--epochz", "3"], ["resnetlab train: unrecognized arguments: --epochz 3", "see: resnetlab train --help"]),
    "invalid choice": (lambda c: ["predict", str(c.run), str(c.img), "--backend", "onnxx"], ["argument --backend: invalid choice: 'onnxx'", "choose from"]),
    "unknown command": (lambda c: ["trian"], ["argument COMMAND: invalid choice: 'trian'"]),
    "activations index outside the split": (lambda c: ["activations", str(c.run), "--index", "100000", "--out", str(c.tmp / "x.png")],
                                            ["--index 100000 is outside the test split of digits (0 .. 359)"]),
    "activations image and index": (lambda c: ["activations", str(c.run), str(c.img), "--index", "0"], ["draws one image", "not both"]),
    "study pretrained source missing": (lambda c: ["study", _yaml(c, "base: {model: {name: resnet8}, data: {name: digits}}\n"
                                                                  "grid: {model.pretrained: [nope/src]}\n"), "--out", str(c.tmp / "st")],
                                        ["model.pretrained 'nope/src' does not exist", "train or copy the source run there first"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_error_line_and_loses_nothing(case, ctx, capsys):
    build, fragments = CASES[case]
    argv = build(ctx)
    capsys.readouterr()
    before = _digest(ctx.run)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err  # the last line, exactly one
    for frag in fragments:
        assert frag in errors[0], (frag, errors[0])
    assert _digest(ctx.run) == before  # the finished run is untouched
    assert not (ctx.tmp / "never").exists()  # a run that failed to start leaves no empty folder


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_case_ids_are_unique():
    """A repeated key in the CASES literal silently drops the first case (it happened once)."""
    import ast

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    (cases,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "CASES"]
    keys = [k.value for k in cases.keys]
    assert len(keys) == len(set(keys)), sorted({k for k in keys if keys.count(k) > 1})
    assert len(keys) == len(CASES)


def test_debug_shows_the_traceback_and_still_one_error_line(capsys):
    assert main(["--debug", "train", "--model", "resnet9000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: model.name (--model): unknown model 'resnet9000'")
    # --debug after the subcommand works too
    assert main(["train", "--model", "resnet9000", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["train", "--set", "optim.lrr=1"], pytest.param(["predict", "/nonexistent/run", "x.png"], marks=pytest.mark.slow)],
    ids=["config", "predict"],
)
def test_real_exit_code_and_stderr_of_the_installed_command(tmp_path, argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stdout == ""
    r = subprocess.run([sys.executable, "-m", "resnetlab", "--debug", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr


# -- inputs that are accepted (with a warning where something is skipped) ---------------------------
def test_mixed_bad_files_are_skipped_with_one_warning_naming_them(tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs")
    (root / "a" / "0.png").write_bytes(b"")  # zero-byte
    (root / "a" / "notes.txt").write_text("hello")  # not an image
    data = (root / "b" / "0.png").read_bytes()
    (root / "b" / "0.png").write_bytes(data[: len(data) // 2])  # truncated
    argv = _img_train(f"imagefolder:{root}", "--out", str(tmp_path / "r"))
    argv.remove("-q")  # the warning and the dataset line are INFO/WARNING logs
    assert main(argv) == 0
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if ln.startswith("skipped")]
    assert len(warn) == 1 and warn[0].startswith("skipped 3 unreadable file(s)")
    for name in ("a/0.png", "a/notes.txt", "b/0.png"):
        assert str(root / name) in warn[0]
    assert ": 12 train / 2 val / 4 test, 2 classes" in err  # the 18 readable images are all used


def test_grayscale_cmyk_rgba_and_palette_images_are_converted(tmp_path, capsys):
    root = tmp_path / "modes"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, mode in enumerate(["L", "RGBA", "CMYK", "P", "RGB", "LA", "I;16", "1"]):
            ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
            _png(root / c / f"{i}.{ext}", mode=mode, seed=i + (c == "b") * 10)
    assert main(_img_train(f"imagefolder:{root}", "--out", str(tmp_path / "r"), "--set", "data.val_fraction=0")) == 0
    from resnetlab.data import load_dataset

    s = load_dataset(f"imagefolder:{root}", image_size=12, val_fraction=0)
    assert s.image_shape == (3, 12, 12) and len(s.train) + len(s.test) == 16  # none skipped
    modes = set()
    for split in (s.train, s.test):
        for img, path in zip(split.images, split.paths):
            got = img.permute(1, 2, 0).numpy()
            with Image.open(path) as im:
                mode = im.mode
                if mode == "I;16":  # 16-bit gray is scaled to 8 bits (Pillow's convert would clip)
                    ref = np.rint(np.asarray(im, dtype=np.float64) * (255 / 65535)).astype(np.uint8)[..., None].repeat(3, 2)
                else:  # every other mode is decoded as Pillow converts it to RGB
                    ref = np.asarray(im.convert("RGB"))
            np.testing.assert_array_equal(got, ref, err_msg=path)
            if mode == "1":
                assert set(np.unique(got)) <= {0, 255}  # bilevel stays black and white
            modes.add(mode)
    assert modes == {"L", "RGBA", "CMYK", "P", "RGB", "LA", "I;16", "1"}


def test_symlink_loops_neither_hang_nor_duplicate_images(tmp_path):
    from resnetlab.data import load_dataset
    from resnetlab.predict import collect_image_files

    root = _image_folder(tmp_path / "loops")
    os.symlink(root, root / "a" / "up")  # a directory loop: a/up/a/up/...
    os.symlink(root / "b" / "y.png", root / "b" / "x.png")  # a file loop x -> y -> x
    os.symlink(root / "b" / "x.png", root / "b" / "y.png")
    s = load_dataset(f"imagefolder:{root}", image_size=12, val_fraction=0)
    assert len(s.train) + len(s.test) == 20
    assert len(collect_image_files([root])) == 20


def test_linked_folders_and_extensionless_images_are_read_by_training_and_predict_alike(tmp_path):
    # a class's linked sub-folder (images kept on another disk) was left out by both without a
    # word (torchvision's ImageFolder follows it); predict on a folder skipped the extensionless
    # images training read by their header
    from resnetlab.data import load_dataset
    from resnetlab.predict import collect_image_files

    root = _image_folder(tmp_path / "data")
    extra = _image_folder(tmp_path / "elsewhere", n=5, classes=("more",)) / "more"
    os.symlink(extra, root / "b" / "more")  # 5 more images of b, outside the dataset
    os.symlink(root / "a", root / "b" / "same")  # into the dataset itself: not followed (duplicates of a)
    os.symlink(tmp_path, root / "a" / "top")  # a folder holding the dataset: not followed (a loop)
    split = _image_folder(tmp_path / "split" / "train")
    _image_folder(tmp_path / "split" / "val", n=3)
    os.symlink(tmp_path / "split" / "val" / "a", split / "b" / "leak")  # train/ into val/: would train on val images
    s = load_dataset(f"imagefolder:{tmp_path / 'split'}", image_size=12)
    assert len(s.val) == 6 and not any("leak" in p for p in s.train.paths + s.test.paths)
    shutil.copy(root / "a" / "0.png", root / "a" / "scan_01")
    s = load_dataset(f"imagefolder:{root}", image_size=12, val_fraction=0)
    files = sorted(s.train.paths + s.test.paths)
    assert len(files) == 26 and sum("/b/more/" in f for f in files) == 5 and any(f.endswith("scan_01") for f in files)
    assert sorted(map(str, collect_image_files([root]))) == files
    (root / "a" / "notes.txt").write_text("not an image")
    assert len(collect_image_files([root / "a"])) == 11  # the header decides, not the name


def test_paths_with_spaces_and_unicode_work_end_to_end(tmp_path, capsys):
    root = _image_folder(tmp_path / "my data ñ 类", classes=("chat noir", "狗"))
    run = tmp_path / "runs ü" / "exp 1"
    assert main(_img_train(f"imagefolder:{root}", "--out", str(run))) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(root / "狗"), "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert len(res) == 10 and {t["class"] for r in res for t in r["top"]} == {"chat noir", "狗"}


def test_read_only_output_folder(tmp_path, capsys):
    """Root ignores permission bits, so a read-only tmpfs is used there (EROFS binds root too)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
        mounted = r.returncode == 0
        if not mounted:
            pytest.skip("running as root and cannot mount a read-only tmpfs: permission bits would not block writes")
    else:
        ro.chmod(0o555)
    try:
        assert main([*TINY, "--out", str(ro / "run")]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(f"error: output folder {ro / 'run'} is not writable (Read-only file system)"
                                                       if mounted else f"error: output folder {ro / 'run'} is not writable")  # fmt: skip
        assert "Traceback" not in err
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def test_a_run_folder_in_use_by_another_process_is_refused(good_run, tmp_path, capsys):
    """Two trains or resumes of one folder both exited 0: metrics.csv got every row twice and each
    overwrote the other's checkpoints. The second is refused while the first holds the lock."""
    import fcntl
    import shutil

    run = tmp_path / "busy"
    shutil.copytree(good_run, run)
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text().splitlines()[0] + "\n")  # unfinished: resumable
    before = _digest(run)
    with open(run / ".run.lock", "a") as held:  # what the other process holds while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for argv in (["train", "--resume", str(run)], [*TINY, "--out", str(run), "--overwrite"]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert err == (f"error: run folder {run} is in use by another resnetlab process (a train, a --resume or a "
                           "study's cell); wait for it to end, or stop it, and run this again")
    assert _digest(run) == before
    fresh = tmp_path / "fresh"
    assert main([*TINY, "--out", str(fresh)]) == 0  # released: the lock file alone is not "a folder of other files"
    assert main(["train", "--resume", str(run)]) == 0


def test_resume_of_a_read_only_run_folder_is_one_line(tmp_path, capsys):
    """It failed in tensorboard's writer thread: a bytes path, then a 40-line traceback."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs and remount it read-only")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        run = mnt / "run"
        assert main([*TINY, "--out", str(run)]) == 0
        lines = (run / "metrics.csv").read_text().splitlines()
        (run / "metrics.csv").write_text(lines[0] + "\n")  # as if stopped before its first epoch ended
        before = _digest(run)
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0
        capsys.readouterr()
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (f"error: run folder {run} is not writable (Read-only file system); a resume "
                                                "writes its checkpoints and metrics there: make it writable")
        assert "Traceback" not in err and _digest(run) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- the config loader never raises anything but a one-line ConfigError -----------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resnetlab.config import config_from_dict, config_keys, load_config  # noqa: E402
from resnetlab.errors import ConfigError  # noqa: E402

_KEYS = config_keys()
_SECTIONS = sorted({k.split(".")[0] for k in _KEYS})
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=12), st.sampled_from(["resnet8", "bn", "sgd", "cosine", "crop", "flip:p=2", "crop:padding=-1"]))  # fmt: skip
_values = st.recursive(_scalars, lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(st.text(max_size=6), ch, max_size=3)), max_leaves=8)
_names = st.one_of(st.sampled_from(_SECTIONS + [k.split(".")[-1] for k in _KEYS]), st.text(max_size=8))
_configs = st.dictionaries(_names, st.one_of(_values, st.dictionaries(st.sampled_from([k.split(".")[-1] for k in _KEYS]) | st.text(max_size=6), _values, max_size=4)), max_size=5)


def _check_one_line(exc: ConfigError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg.strip(), msg


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs)
def test_fuzz_config_dicts_raise_only_one_line_config_errors(data):
    try:
        config_from_dict(data)
    except ConfigError as exc:
        _check_one_line(exc)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS) | st.text(max_size=10), st.text(max_size=16)), max_size=4))
def test_fuzz_overrides_raise_only_one_line_config_errors(pairs):
    try:
        load_config(None, [f"{k}={v}" for k, v in pairs])
    except ConfigError as exc:
        _check_one_line(exc)


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=200))
def test_fuzz_yaml_files_raise_only_one_line_config_errors(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "r.yaml"
    p.write_text(text)
    try:
        load_config(p)
    except ConfigError as exc:
        _check_one_line(exc)


def test_16_bit_and_animated_images_load_as_8_bit_single_frames(tmp_path):
    """A 16-bit PNG among 8-bit ones crashed the dataset stack (uint16), a 16-bit TIFF clipped to
    white, an animated GIF decoded to a 4-D tensor: each is now one uint8 (C, H, W) image."""

    from resnetlab.data import load_dataset
    from resnetlab.data.images import load_images
    from resnetlab.predict import predict

    ramp = (np.arange(24 * 20).reshape(24, 20) * 136).astype(np.uint16)  # 0 .. 65144
    root = tmp_path / "bits"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _png(root / c / f"{i}.png", mode="RGB", seed=i)
        Image.fromarray(ramp).save(root / c / "deep.png")
        Image.fromarray(ramp).save(root / c / "deep.tif")
        frames = [Image.fromarray(np.full((24, 20, 3), v, np.uint8)) for v in (40, 120, 220)]
        frames[0].save(root / c / "anim.gif", save_all=True, append_images=frames[1:])
    s = load_dataset(f"imagefolder:{root}", image_size=12, val_fraction=0)
    assert s.image_shape == (3, 12, 12) and len(s.train) + len(s.test) == 12  # none skipped
    for gray in (1, 3):
        x = load_images([root / "a" / "deep.png", root / "a" / "deep.tif", root / "a" / "anim.gif"], size=(24, 20), channels=gray)
        assert x.dtype == torch.uint8 and x.shape == (3, gray, 24, 20)
        expected = ramp.astype(np.float64).mean() * 255 / 65535  # scaled, not clipped to 255
        assert abs(float(x[0].float().mean()) - expected) < 1.0 and abs(float(x[1].float().mean()) - expected) < 1.0
        assert abs(float(x[2].float().mean()) - 40) < 1.5  # the first frame
    run = tmp_path / "r"
    assert main(_img_train(f"imagefolder:{root}", "--out", str(run), "--set", "data.val_fraction=0")) == 0
    assert len(predict(run, [root / "a"])) == 6  # every file of the folder, none skipped


def test_quiet_and_debug_are_options_not_words_picked_out_of_argv(tmp_path, capsys, monkeypatch):
    # -q was removed from argv wherever it stood: a run folder named "-q" given after `--`
    # vanished and the command complained that RUN_DIR was missing
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--", "-q"]) == 2
    assert capsys.readouterr().err.strip() == "error: run folder not found: -q"
    assert main(["report", "nothere", "-q", "--debug"]) == 2  # still options after the command
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_before_the_command_runs_is_one_line(monkeypatch, capsys):
    """Ctrl-C while the parser was built (the first second of any command) printed a traceback."""
    import resnetlab.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_sigterm_outside_the_training_loop_says_so_and_exits_143(tmp_path):
    """SIGTERM during a command's work outside the trainer's handling (evaluation after the last
    epoch, a study's report, here a benchmark) killed the process without a word."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "bench", "--model", "resnet8", "--steps", "100000",
                             "--repeats", "1", "--warmup", "0", "--matmul-size", "64", "--input-size", "1x8x8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)" and "Traceback" not in err


def test_an_unknown_freeze_until_layer_is_said_before_the_data_loads(tmp_path, capsys):
    """It came after the dataset's log line (and after a folder of photos had loaded)."""
    capsys.readouterr()
    argv = ["train", "--model", "resnet20", "--data", "digits", "--freeze-until", "layer9", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("error: model.freeze_until (--freeze-until): unknown layer 'layer9'; did you mean 'layer3' or 'layer2' or 'layer1'? "
                   "(allowed: layer1, layer2, layer3, stem)\n") and not (tmp_path / "r").exists()
    assert main([*argv[:-2], "--freeze-until", "99", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("error: model.freeze_until (--freeze-until): freeze_until count must be in 0..")


@pytest.mark.parametrize("argv,line", [
    # the flag is named where the message is about its key, not wherever the key's name appears
    (["--seed", "1", "--set", "sed=1"], "error: unknown config key 'sed'; did you mean 'seed' or 'schedule'?"),
    (["--lr", "0.1", "--set", "optim.lrr=1"], "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    # a --set of the same key came later and set the value: it is not the flag's
    (["--batch-size", "4", "--set", "train.batch_size=abc"], "error: config train.batch_size: Input should be a valid integer"),
    (["--epochs", "1", "--set", "schedule.warmup_epochs=2"], "error: schedule.warmup_epochs=2.0 covers the whole run (train.epochs=1):"),
    (["--lr", "-1"], "error: config optim.lr (--lr): Input should be greater than 0"),
])
def test_a_flag_is_named_only_where_the_error_is_about_its_key(capsys, argv, line):
    capsys.readouterr()
    assert main(["train", "--data", "digits", *argv]) == 2
    assert capsys.readouterr().err.startswith(line)


def test_a_signal_after_training_says_how_to_finish_the_run(tmp_path, monkeypatch, capsys):
    """SIGTERM during the test evaluation or the report printed only "terminated (SIGTERM)"; the
    checkpoint is saved and --resume finishes the run."""
    import resnetlab.cli as cli
    import resnetlab.trainer as trainer

    run = tmp_path / "r"

    def killed_after_training(cfg, run_dir, **kw):
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("{}")
        raise cli.Terminated

    monkeypatch.setattr(trainer, "train", killed_after_training)
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--out", str(run)]) == 143
    out, err = capsys.readouterr()
    assert out == f"interrupted after training: `resnetlab train --resume {run}` finishes the run\n"
    assert err.endswith("terminated (SIGTERM)\n")
