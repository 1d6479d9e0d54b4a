"""Datasets by name: on-disk formats, image folders, splits, subsets, errors."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_fmnist, write_png_folder

from resnetlab.data import DATASET_NAMES, build_loader, load_dataset, load_images, preprocess, stratified_split
from resnetlab.data.datasets import open_cache
from resnetlab.errors import DataError



# ---------------------------------------------------------------------------------------------
# Fixtures writing the exact on-disk formats
# ---------------------------------------------------------------------------------------------
def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, bad_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in np.arange(per_batch) % 10]
        if bad_label and i == 3:
            y[0] = 10
        _pickle(base / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y, "data": x,
                                            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]})
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    _pickle(base / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in np.arange(test) % 10], "data": xt})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(base / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return np.concatenate(xs), np.array(ys)


def write_cifar100(root: Path, train: int = 300, test: int = 100) -> None:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", train), ("test", test)):
        _pickle(base / split, {"filenames": [f"{j}.png" for j in range(n)], "batch_label": split,
                               "fine_labels": [int(v) for v in np.arange(n) % 100],
                               "coarse_labels": [int(v) for v in np.arange(n) % 20],
                               "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    _pickle(base / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 200, n_test: int = 50) -> np.ndarray:
    d = root / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    _idx(d / "train-images-idx3-ubyte.gz", xtr)
    _idx(d / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    _idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return xtr


def _save(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str | None = None) -> None:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)


def write_imagefolder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 10, size=(20, 24)) -> list[str]:
    """RGB JPEG/PNG images, plus grayscale, RGBA and CMYK ones and four bad files."""
    rng = np.random.default_rng(3)
    for ci, c in enumerate(classes):
        for j in range(per_class):
            arr = np.full((*size, 3), 40 * ci, dtype=np.uint8) + rng.integers(0, 30, (*size, 3), dtype=np.uint8)
            _save(root / c / f"{j:03d}.{'png' if j % 2 else 'jpg'}", arr)
    _save(root / "cat" / "gray.png", rng.integers(0, 256, size, dtype=np.uint8))
    _save(root / "dog" / "rgba.png", rng.integers(0, 256, (*size, 4), dtype=np.uint8))
    _save(root / "owl" / "cmyk.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8), mode="CMYK")
    _save(root / "owl" / "odd.bmp", rng.integers(0, 256, (*size, 3), dtype=np.uint8))  # torchvision can't: Pillow does
    bad = [root / "cat" / "corrupt.jpg", root / "dog" / "empty.png", root / "owl" / "notes.txt", root / "cat" / "truncated.jpg"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image\n")
    full = root / "cat" / "000.jpg"
    bad[3].write_bytes(full.read_bytes()[:-40])  # header intact, scan data cut short
    return sorted(str(b) for b in bad)


# ---------------------------------------------------------------------------------------------
# CIFAR / MNIST formats
# ---------------------------------------------------------------------------------------------
def test_cifar10_on_disk_format(tmp_path):
    x, y = write_cifar10(tmp_path)
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    assert s.classes[:3] == ["airplane", "automobile", "bird"] and s.num_classes == 10
    assert s.image_shape == (3, 32, 32)
    assert len(s.train) == 100 and len(s.test) == 30 and len(s.val) == 0
    # Row-major (3, 32, 32) decoding of the 3072-byte rows, batches in order 1..5.
    assert torch.equal(s.train.images, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
    assert s.train.targets.tolist() == y.tolist()
    ref = torch.from_numpy(x.reshape(-1, 3, 32, 32)).double().div(255)
    assert np.allclose(s.mean, ref.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(s.std, ref.transpose(0, 1).reshape(3, -1).std(dim=1, unbiased=False).tolist(), atol=1e-9)


def test_cifar100_on_disk_format_and_env_root(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path))
    s = load_dataset("cifar100", val_fraction=0.0)
    assert s.num_classes == 100 and s.classes[7] == "fine7"
    assert len(s.train) == 300 and len(s.test) == 100
    assert torch.bincount(s.train.targets).tolist() == [3] * 100
    # the 20 superclasses of the same files (torchvision reads only the fine labels)
    coarse = load_dataset("cifar-100-coarse", val_fraction=0.0)
    assert coarse.name == "cifar-100-coarse" and coarse.num_classes == 20 and coarse.classes[7] == "coarse7"
    assert torch.equal(coarse.train.images, s.train.images) and torch.equal(coarse.train.targets, s.train.targets % 20)
    assert torch.equal(coarse.test.targets, torch.arange(100) % 20)


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", root=tmp_path / "nope")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    write_cifar10(tmp_path, bad_label=True)
    with pytest.raises(DataError, match="labels out of range"):
        load_dataset("cifar10", root=tmp_path)


def test_mnist_gz_idx(tmp_path):
    x = write_mnist(tmp_path)
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert s.image_shape == (1, 28, 28) and len(s.train) == 200 and len(s.test) == 50
    assert torch.equal(s.train.images[:, 0], torch.from_numpy(x))
    assert s.classes == [str(i) for i in range(10)]


def test_mnist_files_come_from_one_folder_never_a_mix(tmp_path):
    # a complete set in torchvision's MNIST/raw, an incomplete one in <root>/mnist: the loader used
    # to take each file from the first folder that had it, mixing the two sets
    x = write_mnist(tmp_path / "tv")
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "tv" / "mnist").rename(tmp_path / "MNIST" / "raw")
    write_mnist(tmp_path, n_train=30)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert len(s.train) == 200 and torch.equal(s.train.images[:, 0], torch.from_numpy(x))


@needs_fmnist
def test_mnist_files_in_the_bare_root_do_not_shadow_the_system_fashion_mnist(tmp_path):
    write_mnist(tmp_path)
    for f in (tmp_path / "mnist").iterdir():
        f.rename(tmp_path / f.name)  # MNIST files directly in the data root
    assert len(load_dataset("mnist", root=tmp_path, val_fraction=0.0).train) == 200  # taken for mnist
    assert len(load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.0).train) == 60_000  # not for fashion


def test_an_incomplete_fashion_mnist_of_the_users_is_an_error_not_the_system_copy(tmp_path, monkeypatch, caplog):
    # 3 of the 4 files under --data-root: the system's 60,000 images were used in their place, silently
    import logging

    system = tmp_path / "system"
    write_mnist(system, n_train=40)
    monkeypatch.setattr("resnetlab.data.datasets.SYSTEM_FASHION_MNIST", str(system / "mnist"))
    mine = tmp_path / "mine"
    write_mnist(mine, n_train=30)
    (mine / "mnist").rename(mine / "fashion-mnist")
    (mine / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=re.escape(f"fashion-mnist: {mine / 'fashion-mnist'} holds 3 of its 4 IDX files but no "
                                                  f"t10k-images-idx3-ubyte[.gz]")):  # fmt: skip
        load_dataset("fashion-mnist", root=mine)
    # none of the user's: the system copy, said in a log line (also after a load with the log
    # silenced, as --smoke's probe of the dataset is: the line was then never said)
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_dataset("fashion-mnist", root=tmp_path / "empty", val_fraction=0.0)
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        s = load_dataset("fashion-mnist", root=tmp_path / "empty", val_fraction=0.0)
    assert len(s.train) == 40
    assert f"fashion-mnist: using the system copy in {system / 'mnist'} (Debian's dataset-fashion-mnist; none under" in caplog.text
    caplog.clear()  # said once per process (the report reads the dataset again: it was said twice per run)
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        load_dataset("fashion-mnist", root=tmp_path / "empty", val_fraction=0.0)
    assert "using the system copy" not in caplog.text


@needs_fmnist
def test_fashion_mnist_real_files(tmp_path):
    s = load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.1, seed=0)
    assert len(s.train) + len(s.val) == 60_000 and len(s.test) == 10_000
    assert len(s.val) == 6_000 and s.num_classes == 10 and s.classes[9] == "Ankle boot"
    # Stratified hold-out: exactly 600 per class (the train pool has 6,000 of each).
    assert torch.bincount(s.val.targets).tolist() == [600] * 10
    assert torch.bincount(s.test.targets).tolist() == [1000] * 10
    assert 0.27 < s.mean[0] < 0.30 and 0.34 < s.std[0] < 0.37  # the published statistics


# ---------------------------------------------------------------------------------------------
# digits, synthetic, splits, subset
# ---------------------------------------------------------------------------------------------
def test_digits_fixed_test_split_and_stratified_val():
    a = load_dataset("digits", val_fraction=0.2, seed=0)
    b = load_dataset("digits", val_fraction=0.2, seed=1)
    assert a.image_shape == (1, 8, 8) and len(a.test) == 360 and a.num_classes == 10
    assert int(a.train.images.max()) == 255
    # The test split does not depend on the seed; the validation split does.
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.val.targets, b.val.targets) or not torch.equal(a.val.images, b.val.images)
    pool = torch.bincount(torch.cat([a.train.targets, a.val.targets]), minlength=10).double()
    val = torch.bincount(a.val.targets, minlength=10).double()
    assert torch.all((val - 0.2 * pool).abs() <= 1.0), (val, pool)
    assert len(a.val) == round(0.2 * (len(a.train) + len(a.val)) + 0.5) or abs(len(a.val) - 0.2 * pool.sum()) <= 1


def test_subset_count_and_fraction_stratified():
    s = load_dataset("synthetic:3x16x16:10:1000", subset=200, val_fraction=0.1, seed=3)
    assert len(s.train) + len(s.val) == 200
    assert torch.bincount(torch.cat([s.train.targets, s.val.targets])).tolist() == [20] * 10
    f = load_dataset("synthetic:3x16x16:10:1000", subset=0.5, val_fraction=0.0)
    assert len(f.train) == 500 and torch.bincount(f.train.targets).tolist() == [50] * 10
    assert len(load_dataset("synthetic:3x16x16:10:1000", subset=300.0, val_fraction=0).train) == 300
    assert len(f.test) == 200  # never reduced
    with pytest.raises(DataError, match="subset"):
        load_dataset("synthetic:3x16x16:10:1000", subset=5000)
    with pytest.raises(DataError, match="subset"):
        load_dataset("synthetic:3x16x16:10:1000", subset=-0.5)


def test_stratified_split_proportions():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    keep, held = stratified_split(y, 0.1, seed=0)
    assert np.bincount(y[held]).tolist() == [10, 5, 3, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 200


def test_synthetic_deterministic_and_configurable():
    a = load_dataset("synthetic:1x12x10:4:100", val_fraction=0)
    b = load_dataset("synthetic:1x12x10:4:100", val_fraction=0)
    assert a.image_shape == (1, 12, 10) and a.num_classes == 4 and len(a.train) == 100 and len(a.test) == 20
    assert torch.equal(a.train.images, b.train.images)
    # Classes differ on average (a learnable signal), images within a class vary.
    means = torch.stack([a.train.images[a.train.targets == k].float().mean(0) for k in range(4)])
    assert (means[0] - means[1]).abs().mean() > 5
    with pytest.raises(DataError, match="synthetic"):
        load_dataset("synthetic:3x32")
    # a typo of a zero or two was a MemoryError (or the machine swapping) before any message
    with pytest.raises(DataError, match=r"synthetic spec '3x2240x2240:10:50000' would hold 841.1 GiB of images .* at most 16 GiB"):
        load_dataset("synthetic:3x2240x2240:10:50000")


def test_resize_on_load():
    s = load_dataset("digits", image_size=16, val_fraction=0.1)
    assert s.image_shape == (1, 16, 16) and s.train.images.shape[1:] == (1, 16, 16)
    assert s.test.images.shape[1:] == (1, 16, 16) and s.val.images.shape[1:] == (1, 16, 16)


def test_unknown_dataset_and_bad_args():
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        load_dataset("cifar-1O")
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(DataError, match="image_size"):
        load_dataset("digits", image_size=0)
    assert set(DATASET_NAMES) >= {"cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "imagefolder", "synthetic"}


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------
def test_imagefolder_skips_bad_files_with_one_warning(tmp_path, caplog):
    bad = write_imagefolder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=16, val_fraction=0.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4" in warnings[0].getMessage()
    for b in bad:
        assert b in warnings[0].getMessage()
    assert sorted(s.skipped) == bad
    assert s.classes == ["cat", "dog", "owl"] and s.image_shape == (3, 16, 16)
    # 34 readable images (30 + gray, RGBA, CMYK, BMP), 20 % held out as test, stratified.
    assert len(s.train) + len(s.test) == 34 and len(s.test) == 7
    assert s.train.paths is not None and all(Path(p).exists() for p in s.train.paths)
    # Grayscale was converted to 3 equal channels.
    gray = str(tmp_path / "imgs" / "cat" / "gray.png")
    split = s.train if gray in s.train.paths else s.test
    g = split.images[split.paths.index(gray)].int()
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2]) and g.float().std() > 0
    # Class brightness survives the resize: owl (80 + noise) is brighter than cat (0 + noise).
    means = [s.train.images[s.train.targets == k].float().mean().item() for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_imagefolder_train_val_test_subfolders_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c in ("a", "b"):
            for j in range(n):
                _save(tmp_path / split / c / f"{j}.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    s = load_dataset(f"imagefolder:{tmp_path}", image_size=8, val_fraction=0.5)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 6)  # val/ wins over val_fraction
    assert s.image_shape == (1, 8, 8)  # every image grayscale -> one channel


def test_imagefolder_errors(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    _save(tmp_path / "one" / "only" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="single class"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")
    (tmp_path / "two" / "a").mkdir(parents=True)
    (tmp_path / "two" / "b").mkdir(parents=True)
    _save(tmp_path / "two" / "a" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="empty class folder.*b"):
        load_dataset(f"imagefolder:{tmp_path / 'two'}")
    (tmp_path / "two" / "b" / "junk.txt").write_text("x")
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path / 'two'}")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'none'}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_val_or_test_without_train_is_refused(tmp_path):
    # val/ and test/ name splits: without train/ they were taken as two classes "test" and "val"
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        for c in ("a", "b"):
            _save(tmp_path / split / c / "0.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    with pytest.raises(DataError, match=r"has val/ and test/ but no train/ sub-folder; put the training images in .*/train/<class>/"):
        load_dataset(f"imagefolder:{tmp_path}")



def test_imagefolder_valid_and_validation_name_the_validation_split(tmp_path, caplog):
    # Kaggle-style datasets ship valid/: it was ignored without a word and 20% of train/ became the test split
    import logging

    rng = np.random.default_rng(0)
    counts = {"train": 6, "valid": 3, "test": 2, "notes": 1}
    for split, n in counts.items():
        for c in ("a", "b"):
            for j in range(n):
                _save(tmp_path / "ds" / split / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 6, 4)
    assert all("/valid/" in p for p in s.val.paths) and all("/test/" in p for p in s.test.paths)
    assert "ignoring folder(s) notes/ beside train/" in caplog.text  # a folder no split reads is named
    (tmp_path / "ds" / "valid").rename(tmp_path / "ds" / "validation")
    assert len(load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6).val) == 6
    (tmp_path / "ds" / "val").mkdir()
    with pytest.raises(DataError, match=r"has val/ and validation/: keep one validation folder"):
        load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6)


def test_a_class_named_train_in_a_flat_folder_is_a_class(tmp_path, caplog):
    # CIFAR-100 exported to folders has a class "train": the folder was read as a train/ split,
    # bus/ and car/ were ignored, and the run stopped at "has no class sub-folders"
    import logging

    rng = np.random.default_rng(0)
    for c in ("bus", "car", "train"):
        for j in range(5):
            _save(tmp_path / "flat" / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    s = load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=6, val_fraction=0.25)
    assert s.classes == ["bus", "car", "train"] and len(s.train) + len(s.val) + len(s.test) == 15
    for name in ("test", "Val"):  # so are test/ and val/ of images, without a train/ split (they were refused)
        (tmp_path / "flat" / "train").rename(tmp_path / "flat" / name)
        assert load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=6, val_fraction=0.25).classes == sorted(["bus", "car", name])
        (tmp_path / "flat" / name).rename(tmp_path / "flat" / "train")
    # a train/ split with class folders beside class folders: the ignored ones say how many images they hold
    for c in ("steam", "electric"):
        for j in range(5):
            _save(tmp_path / "mixed" / "train" / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    _save(tmp_path / "mixed" / "bus" / "0.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        assert load_dataset(f"imagefolder:{tmp_path / 'mixed'}", image_size=6, val_fraction=0.25).classes == ["electric", "steam"]
    assert "ignoring folder(s) bus/ (1 images) beside train/" in caplog.text
    assert "if they are classes, move them into train/<class>/" in caplog.text


@pytest.mark.parametrize("layout", ["unlabelled", "empty", "empty class folders"])
def test_a_test_or_val_folder_without_class_folders_is_not_a_split(tmp_path, caplog, layout):
    # Kaggle ships test/ as unlabelled images: it was a 0-image test split, and train failed after
    # its last epoch ("has no 'test' split"); an empty val/ turned validation off without a word
    import logging

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for j in range(10):
            _save(tmp_path / "train" / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    (tmp_path / "test").mkdir()
    (tmp_path / "val").mkdir()
    if layout == "unlabelled":
        for j in range(3):
            _save(tmp_path / "test" / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    if layout == "empty class folders":
        for split in ("val", "test"):
            for c in ("a", "b"):
                (tmp_path / split / c).mkdir()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(f"imagefolder:{tmp_path}", image_size=6, val_fraction=0.25)
    assert len(s.test) == 4 and s.test.held_out and len(s.val) == 4 and len(s.train) == 12  # held out of train/, as without the folders
    said = {"unlabelled": "test/ has 3 image(s) directly in it and no class sub-folders (unlabelled?)", "empty": "test/ has nothing in it",
            "empty class folders": "test/ has class folders (a, b) with no files in them"}  # fmt: skip
    assert said[layout] in caplog.text
    val = "val/ has class folders (a, b) with no files in them" if layout == "empty class folders" else "val/ has nothing in it"
    assert f"{val}; it is not used as the validation split: data.val_fraction of train/ is held out instead" in caplog.text


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_so_a_phone_photo_is_seen_upright(tmp_path, fmt):
    # a phone stores a portrait photo as landscape pixels plus Orientation=6: it was read sideways
    # (torchvision's ImageFolder reads it so), and predicted as another class than the same picture
    from PIL import Image

    from resnetlab.data.images import read_image

    upright = np.zeros((24, 16, 3), np.uint8)
    upright[:6] = (255, 255, 255)  # a white band along the top edge, as the photo is displayed
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # the sensor's landscape pixels
    stored.save(tmp_path / f"phone.{fmt.lower()}", format=fmt, exif=exif, **({"quality": 100} if fmt != "PNG" else {}))
    img = read_image(tmp_path / f"phone.{fmt.lower()}", channels=3)
    assert tuple(img.shape) == (3, 24, 16)  # portrait, as displayed
    assert img[:, :6].float().mean() > 200 and img[:, 8:].float().mean() < 50  # the band is on top
    if fmt != "JPEG":  # malformed EXIF that Pillow cannot parse: the pixels as stored, not an unreadable file
        stored.save(tmp_path / f"bad.{fmt.lower()}", format=fmt, exif=b"Exif\x00\x00" + bytes(range(40)))
        assert tuple(read_image(tmp_path / f"bad.{fmt.lower()}", channels=3).shape) == (3, 16, 24)


def test_a_float_tiff_in_0_to_1_is_scaled_not_black(tmp_path):
    # mode F (32-bit float) with values in 0..1 decoded all black: the run trained at chance
    from PIL import Image

    from resnetlab.data.images import read_image

    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(a, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(a * 200, mode="F").save(tmp_path / "bytes.tif")
    Image.fromarray(np.where(a > 0.5, np.nan, a * 4000), mode="F").save(tmp_path / "wide.tif")
    unit = read_image(tmp_path / "unit.tif", channels=1)[0]
    assert int(unit.min()) == 0 and int(unit.max()) == 255 and int(unit[4, 0]) == round(32 / 63 * 255)
    assert int(read_image(tmp_path / "bytes.tif", channels=1)[0].max()) == 200  # 0..255 values kept
    wide = read_image(tmp_path / "wide.tif", channels=1)[0]  # beyond 255: from the image's maximum; NaN black
    assert int(wide[3, 7]) == 255 and int(wide[7, 7]) == 0
    over = a.copy()
    over[0, 0] = 1.02  # a 0..1 image with a little overshoot was read as 0..255: black
    Image.fromarray(over, mode="F").save(tmp_path / "over.tif")
    o = read_image(tmp_path / "over.tif", channels=1)[0]
    assert int(o[0, 0]) == 255 and int(o[4, 0]) == round(32 / 63 * 255)


def test_flat_training_images_and_an_unused_cache_are_warned_about(tmp_path, caplog):
    # images that decode to one value (float TIFFs clipped to black, before decoder 3) trained at
    # chance with nothing said; data.cache on a dataset held in memory did nothing, silently
    for c in ("a", "b"):
        for j in range(5):
            _save(tmp_path / "flat" / c / f"{j}.png", np.full((6, 6), 7, np.uint8))
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=6, val_fraction=0.25, cache=True)
    assert "every training image is (nearly) one flat value (pixel std 1e-06 of 1 in every channel, mean 0.027)" in caplog.text
    assert "data.cache applies to image folders that stream from disk; imagefolder:" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):  # evaluate's load (the run's normalization): not again
        load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=6, val_fraction=0.25, cache=True, normalization=([0.5], [0.5]))
    assert "data.cache" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_dataset("digits", val_fraction=0.1)
    assert caplog.text == ""


def test_a_class_spelt_in_another_unicode_form_is_named_as_such(tmp_path):
    # "café" from macOS (NFD) beside "café" (NFC): "test/ has classes ['café'] that train/ lacks",
    # two names that look the same
    import unicodedata

    rng = np.random.default_rng(0)
    for split, name in (("train", "café"), ("train", "tea"), ("test", unicodedata.normalize("NFD", "café")), ("test", "tea")):
        for j in range(4):
            _save(tmp_path / split / name / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    nfd = unicodedata.normalize("NFD", "café")
    with pytest.raises(DataError, match=re.escape(f"test/ has classes [{nfd!r}] that train/ lacks ({nfd!r} is spelt as in train/ but in another Unicode form")):
        load_dataset(f"imagefolder:{tmp_path}", image_size=6)


def test_a_corrupt_png_is_skipped_not_a_crash_of_the_process(tmp_path):
    # torchvision's libpng decoder segfaulted on corrupt PNG data (one flipped byte): train,
    # evaluate and predict died with exit 139 and no file named. Run in a child process, so a
    # crash fails this test instead of killing the suite.
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for j in range(5):
            _save(tmp_path / "ds" / c / f"{j}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    good = (tmp_path / "ds" / "a" / "0.png").read_bytes()
    bad = bytearray(good)
    bad[good.index(b"IDAT") + 4 + 100] ^= 0xFF  # inside the compressed pixels, header intact
    (tmp_path / "ds" / "a" / "flipped.png").write_bytes(bytes(bad))
    code = (
        "import sys; from resnetlab.data import load_dataset; from resnetlab.data.images import load_images\n"
        f"s = load_dataset('imagefolder:{tmp_path / 'ds'}', image_size=16, val_fraction=0)\n"
        "try:\n"
        f"    load_images(['{tmp_path / 'ds' / 'a' / 'flipped.png'}'], 16)\n"
        "except Exception as exc:\n"
        "    err = type(exc).__name__\n"
        "print(len(s.train) + len(s.test), s.skipped, err)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
    assert r.stdout.split()[0] == "10" and "flipped.png" in r.stdout and r.stdout.split()[-1] == "DataError"  # named, one line

def test_hidden_folders_inside_a_class_are_left_out_by_training_and_predict(tmp_path):
    from resnetlab.predict import collect_image_files

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for j in range(3):
            _save(tmp_path / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    hidden = [tmp_path / "a" / ".thumbs" / "t.png", tmp_path / "b" / ".ipynb_checkpoints" / "x" / "c.png", tmp_path / "a" / ".h.png"]
    for h in hidden:
        _save(h, rng.integers(0, 256, (6, 6), dtype=np.uint8))
    s = load_dataset(f"imagefolder:{tmp_path}", image_size=6, val_fraction=0.0)
    assert len(s.train) + len(s.test) == 6
    assert not {str(h) for h in hidden} & set(s.train.paths + s.test.paths)
    walked = collect_image_files([tmp_path])
    assert len(walked) == 6 and not set(hidden) & set(walked)
    assert collect_image_files([hidden[0]]) == [hidden[0]]  # a file named explicitly is kept


def test_relative_imagefolder_path_is_recorded_absolute(tmp_path, monkeypatch):
    # a run's config.yaml must find its images from any directory (evaluate, explain, resume)
    from resnetlab.config import config_from_dict

    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data": {"name": "imagefolder:shapes/../shapes"}})
    assert cfg.data.name == f"imagefolder:{tmp_path / 'shapes'}"
    assert config_from_dict({"data": {"name": "fashion-mnist"}}).data.name == "fashion-mnist"


def test_imagefolder_streaming_with_cache_matches_in_memory(tmp_path, caplog):
    write_imagefolder(tmp_path / "imgs", per_class=8)
    name = f"imagefolder:{tmp_path / 'imgs'}"
    mem = load_dataset(name, image_size=12, val_fraction=0.0)
    big = load_dataset(name, image_size=12, val_fraction=0.0, stream_threshold_gb=1e-9, cache=tmp_path / "cache")
    assert not big.train.in_memory and big.train.cache and big.train.images is None
    # The header pass cannot see truncation: the truncated JPEG is still listed while streaming.
    assert len(big.train) + len(big.test) == len(mem.train) + len(mem.test) + 1
    ref = {p: mem.train.images[i] for i, p in enumerate(mem.train.paths)}
    ref.update({p: mem.test.images[i] for i, p in enumerate(mem.test.paths)})
    assert any(p.endswith("truncated.jpg") for p in big.train.paths)  # the seeded split puts it in train
    # the same images in each split: the truncated file takes part in the in-memory draw too, then
    # leaves (the in-memory split used to be drawn without it: other test images than streaming's)
    assert mem.test.paths == big.test.paths and torch.equal(mem.test.targets, big.test.targets)
    assert mem.train.paths == [p for p in big.train.paths if not p.endswith("truncated.jpg")]
    with_val = [load_dataset(name, image_size=12, val_fraction=0.3, seed=4, **kw) for kw in ({}, {"stream_threshold_gb": 1e-9})]
    for split in ("train", "val", "test"):
        a, b = (getattr(d, split).paths for d in with_val)
        assert a == [p for p in b if not p.endswith("truncated.jpg")], split
    dl = build_loader(big.train, batch_size=8, train=False, num_workers=2)
    for epoch in range(2):  # epoch 0 fills the memory-mapped cache (2 worker processes), epoch 1 reads it
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="resnetlab"):
            seen = 0
            for x, y, idx in dl.iter_epoch(epoch):
                assert x.shape[1:] == (3, 12, 12)
                for k, i in enumerate(idx.tolist()):
                    assert torch.equal((x[k] * 255).round().to(torch.uint8), ref[big.train.paths[i]]), big.train.paths[i]
                    assert int(y[k]) == int(big.train.targets[i])
                seen += len(idx)
        assert seen == len(big.train) - 1
        warned = [r.getMessage() for r in caplog.records if "truncated.jpg" in r.getMessage()]
        assert len(warned) == int(epoch == 0)  # the loader warns once per file, not per epoch
    flags, _ = open_cache(big.train.cache, big.image_shape)
    assert int(flags.sum()) == seen  # every decodable training image was cached (the test split's rows not yet)


def _stream_pixels(tmp_path, name):
    s = load_dataset(name, image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9, cache=tmp_path / "cache")
    dl = build_loader(s.train, batch_size=64, train=False, num_workers=0, mean=[0.0] * 3, std=[1.0] * 3)
    x, _, idx = next(iter(dl.iter_epoch(0)))
    return s.train, {s.train.paths[i]: float(x[k].mean()) * 255 for k, i in enumerate(idx.tolist())}


def test_the_stream_cache_never_serves_stale_or_blank_pixels(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for j in range(3):
            _save(root / c / f"{j}.png", np.full((8, 8, 3), 10, np.uint8))
    name = f"imagefolder:{root}"
    train, first = _stream_pixels(tmp_path, name)
    assert all(abs(v - 10) < 0.5 for v in first.values())  # decoded and cached
    cached = train.cache
    # the cache file lost: made again, not a cache of zeros (flags and pixels are one file)
    os.remove(cached)
    _, again = _stream_pixels(tmp_path, name)
    assert all(abs(v - 10) < 0.5 for v in again.values())
    # files rewritten in place with other pixels (same names, same sizes): a fresh cache
    time.sleep(0.01)
    for p in root.rglob("*.png"):
        _save(p, np.full((8, 8, 3), 200, np.uint8))
    train2, changed = _stream_pixels(tmp_path, name)
    assert train2.cache != cached and all(abs(v - 200) < 0.5 for v in changed.values())



def test_the_stream_cache_is_keyed_on_the_decoder(monkeypatch):
    # a cache of pixels an earlier decoder made (before a fix, another Pillow) was read back
    # while predict decoded the same files anew
    import PIL

    from resnetlab.data import images
    from resnetlab.data.datasets import cache_file_for

    args = (["a/0.png", "b/0.png"], (3, 8, 8), "/cache", "/data/imgs")
    first = cache_file_for(*args)
    assert cache_file_for(*args) == first
    monkeypatch.setattr(images, "DECODER_VERSION", images.DECODER_VERSION + 1)
    assert cache_file_for(*args) != first
    monkeypatch.undo()
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    assert cache_file_for(*args) != first


@pytest.mark.parametrize("failure", ["full-disk", "read-only"])
def test_a_stream_cache_that_cannot_be_made_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog, failure):
    # The cache was a sparse file written through a memmap: a full disk killed the run with
    # SIGBUS (exit 135, no checkpoint), a read-only folder with "[Errno 30] Read-only file system".
    import errno

    name = write_png_folder(tmp_path / "imgs")
    reserved = []
    if failure == "full-disk":
        def fallocate(fd, offset, length):
            reserved.append(length)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "posix_fallocate", fallocate)
        why = "No space left on device"
    else:
        def mkdir(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

        monkeypatch.setattr(Path, "mkdir", mkdir)
        why = "Read-only file system"
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(name, image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9, cache=tmp_path / "cache")
        dl = build_loader(s.train, batch_size=8, train=False, num_workers=0)
        n = sum(len(idx) for _, _, idx in dl.iter_epoch(0))
    assert s.train.cache is None and n == len(s.train)  # decoded without the cache
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and f"image cache folder {tmp_path / 'cache'} is not used ({why}" in warned[0]
    assert reserved == ([16 + 40 * (1 + 3 * 8 * 8)] if failure == "full-disk" else [])  # header, flags, pixels
    assert not list(tmp_path.joinpath("cache").glob("*"))  # no half-made file left behind


def test_the_stream_cache_reserves_its_blocks_up_front(tmp_path, monkeypatch):
    reserved = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (reserved.append(n), real(fd, off, n))[1])
    name = write_png_folder(tmp_path / "imgs")
    s = load_dataset(name, image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9, cache=tmp_path / "cache")
    build_loader(s.train, batch_size=8, train=False, num_workers=0)
    size = 16 + 40 * (1 + 3 * 8 * 8)  # header, a flag and the pixels of every image of the folder
    assert reserved == [size] and os.path.getsize(s.train.cache) == size
    assert os.stat(s.train.cache).st_blocks * 512 >= size  # allocated, not sparse


def test_one_stream_cache_serves_every_split_and_seed_and_stale_ones_are_removed(tmp_path, caplog):
    # The cache was keyed per split and per seed (a 3-seed study kept 3 copies) and never pruned.
    name = write_png_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    mem = load_dataset(name, image_size=8, val_fraction=0.25, seed=0)
    ref = {p: mem.train.images[i] for i, p in enumerate(mem.train.paths)}
    ref.update({p: mem.val.images[i] for i, p in enumerate(mem.val.paths)})
    ref.update({p: mem.test.images[i] for i, p in enumerate(mem.test.paths)})
    kw = dict(image_size=8, val_fraction=0.25, subset=28, stream_threshold_gb=1e-9, cache=cache)
    seeds = [load_dataset(name, seed=0, **{**kw, "subset": None})] + [load_dataset(name, seed=seed, **kw) for seed in (1, 2)]
    assert {s.cache for d in seeds for s in (d.train, d.val, d.test)} == {seeds[0].train.cache}
    assert [p.name for p in cache.iterdir()] == [os.path.basename(seeds[0].train.cache)]
    assert sorted(seeds[1].train.paths) != sorted(seeds[2].train.paths)  # other subsets and splits, one cache
    # seed 0's splits fill the cache; with the files gone, seed 1's splits read every image from it
    for split in ("train", "val", "test"):
        list(build_loader(getattr(seeds[0], split), 8, train=False, num_workers=0).iter_epoch(0))
    assert int(open_cache(seeds[0].train.cache, (3, 8, 8))[0].sum()) == 40
    moved = tmp_path / "moved"
    os.rename(tmp_path / "imgs", moved)
    try:
        for split in ("train", "val", "test"):
            part = getattr(seeds[1], split)
            served = 0
            for x, _, idx in build_loader(part, 8, train=False, num_workers=1).iter_epoch(0):
                for k, i in enumerate(idx.tolist()):
                    assert torch.equal((x[k] * 255).round().to(torch.uint8), ref[part.paths[i]])
                served += len(idx)
            assert served == len(part)  # none had to be decoded (the files are gone)
    finally:
        os.rename(moved, tmp_path / "imgs")
    # another image size, another image folder: caches of their own, kept
    other = write_png_folder(tmp_path / "other", n=8)
    kept = {load_dataset(name, seed=0, **{**kw, "image_size": 6}).train.cache,
            load_dataset(other, seed=0, **{**kw, "subset": None}).train.cache}  # fmt: skip
    # the folder changed: a new cache, and the old listing's is removed (and said so)
    running = build_loader(seeds[2].train, 8, train=False, num_workers=0)  # a run still on the old listing
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs" / "c0" / "new.png")
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        new = load_dataset(name, seed=0, **kw).train.cache
    assert new != seeds[0].train.cache
    assert sorted(str(p) for p in cache.iterdir()) == sorted({new, *kept})
    assert any(f"removed 1 stale image cache file(s) of {tmp_path / 'imgs'}" in r.getMessage()
               and os.path.basename(seeds[0].train.cache) in r.getMessage() for r in caplog.records)  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        assert sum(len(idx) for _, _, idx in running.iter_epoch(0)) == len(seeds[2].train)  # decoded instead
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"image cache {seeds[2].train.cache} could not be opened"]


def test_streaming_mean_std_leave_out_undecodable_files_and_are_not_estimated_for_a_checkpoint(tmp_path, monkeypatch):
    # Undecodable files counted as black images in the streaming estimate; evaluate and explain
    # decoded up to 2,000 images for an estimate they never used (they take the checkpoint's).
    import resnetlab.data.datasets as ds
    from resnetlab.config import load_config
    from resnetlab.data import read_image
    from resnetlab.data.datasets import _channel_stats
    from resnetlab.evaluate import load_splits_for

    name = write_png_folder(tmp_path / "imgs")
    whole = (tmp_path / "imgs" / "c0" / "000.png").read_bytes()
    for j in range(4):  # headers read, pixels do not: listed when streaming
        (tmp_path / "imgs" / f"c{j % 2}" / f"bad{j}.png").write_bytes(whole[: len(whole) // 2])
    s = load_dataset(name, image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9)
    good = [p for p in s.train.paths if "bad" not in p]
    assert len(good) < len(s.train)
    expected = _channel_stats(torch.stack([read_image(p, channels=3, size=(8, 8)) for p in good]))
    assert np.allclose(s.mean, expected[0], rtol=1e-12) and np.allclose(s.std, expected[1], rtol=1e-12)

    decoded = []
    monkeypatch.setattr(ds, "read_image", lambda *a, **k: decoded.append(a) or read_image(*a, **k))
    cfg = load_config(None, [f"data.name={name}", "data.image_size=8", "data.stream_threshold_gb=1e-9"])
    meta = {"config": cfg.model_dump(mode="json"), "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    splits = load_splits_for(meta)
    assert not splits.train.in_memory and decoded == []  # nothing decoded to load the dataset
    assert (splits.mean, splits.std) == (meta["mean"], meta["std"])
    with pytest.raises(DataError, match=r"^the given normalization has 1 mean and 1 std values but imagefolder:.* has 3 "
                                        r"channel\(s\) \(allowed: one of each per channel; a checkpoint of other images\?\)$"):
        load_splits_for({**meta, "mean": [0.5], "std": [0.5]})


# ---------------------------------------------------------------------------------------------
# Predict helpers
# ---------------------------------------------------------------------------------------------
def test_load_images_converts_channels_and_preprocess(tmp_path, caplog):
    _save(tmp_path / "g.png", np.full((10, 20), 200, np.uint8))
    _save(tmp_path / "c.jpg", np.full((30, 30, 3), 100, np.uint8))
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        x = load_images([tmp_path / "g.png", tmp_path / "c.jpg"], size=8, channels=3)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8
    assert int(x[0].min()) == 200 and int(x[0].max()) == 200
    # one line for the batch, not one per file (noisy on a large folder)
    assert [r.getMessage() for r in caplog.records if "converted" in r.getMessage()] == ["converted 1 image(s) to 3 channel(s) (L: 1)"]
    y = preprocess(x, mean=[0.5] * 3, std=[0.25] * 3)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y[0], torch.full((3, 8, 8), (200 / 255 - 0.5) / 0.25))
    with pytest.raises(DataError, match="does not exist"):
        load_images([tmp_path / "nope.png"], size=8)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read image"):
        load_images([tmp_path / "bad.jpg"], size=8)
    with pytest.raises(DataError, match="channels"):
        preprocess(x, mean=[0.5], std=[0.5])
    # a float batch in [0, 1] on the target device: normalized into a new tensor, the caller's kept
    raw = torch.full((1, 3, 2, 2), 0.5)
    assert torch.allclose(preprocess(raw, mean=[0.1] * 3, std=[0.5] * 3, device="cpu"), torch.full((1, 3, 2, 2), 0.8))
    assert torch.equal(raw, torch.full((1, 3, 2, 2), 0.5))


def test_16_bit_gray_in_mode_i_is_scaled_as_16_bits_not_stretched(tmp_path):
    """Pillow opens a 16-bit PGM (and, before 10.3, a 16-bit PNG) as mode "I": it was stretched to
    its own maximum, so a dark image (0..1000 of 65535) decoded white, unlike the same pixels
    in a 16-bit PNG opened as "I;16"."""
    from resnetlab.data import read_image

    ramp = np.linspace(0, 1000, 8 * 12).reshape(8, 12).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "dark.png")  # mode I;16
    (tmp_path / "dark.pgm").write_bytes(b"P5\n12 8\n65535\n" + ramp.astype(">u2").tobytes())
    Image.fromarray(ramp.astype(np.int32), mode="I").save(tmp_path / "dark.tif")  # 32-bit, 16-bit values
    with Image.open(tmp_path / "dark.pgm") as im:
        assert im.mode == "I"
    expected = torch.from_numpy(np.rint(ramp * (255 / 65535)).astype(np.uint8)).unsqueeze(0)
    for name in ("dark.png", "dark.pgm", "dark.tif"):
        assert torch.equal(read_image(tmp_path / name, channels=1), expected), name  # max 4, not 255
    wide = (ramp.astype(np.int32) * 200)  # beyond 16 bits: scaled from the image's own maximum
    Image.fromarray(wide, mode="I").save(tmp_path / "wide.tif")
    assert int(read_image(tmp_path / "wide.tif", channels=1).max()) == 255


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:  # stands in for the network: writes the archive's extracted layout
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = load_dataset("cifar10", root=tmp_path / "new", download=True, val_fraction=0.0)
    assert calls == [(str(tmp_path / "new"), True)] and len(s.train) == 100
    load_dataset("cifar10", root=tmp_path / "new", download=True)  # present now: no second download
    assert len(calls) == 1


def test_subset_follows_the_seed_and_may_keep_the_whole_pool():
    name = "synthetic:3x16x16:10:1000"
    a = load_dataset(name, subset=200, val_fraction=0, seed=0).train
    b = load_dataset(name, subset=200, val_fraction=0, seed=1).train
    assert len(a) == len(b) == 200 and not torch.equal(a.images, b.images)  # the seed picks the images
    full = load_dataset(name, val_fraction=0).train
    for whole in (1.0, len(full)):  # the whole pool: a share of 1 or the pool's size
        assert len(load_dataset(name, subset=whole, val_fraction=0).train) == len(full)


def test_a_failed_download_is_one_line_naming_the_dataset_and_a_smoke_run_falls_back(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    from resnetlab.config import load_config, smoke_fallback

    tried = []

    class Offline:
        def __init__(self, root, train=True, download=False):
            tried.append(download)
            # torchvision's own message spans lines: the URLs it tried, then the cause
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    monkeypatch.setattr("resnetlab.data.datasets.SYSTEM_FASHION_MNIST", str(tmp_path / "none"))
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path / "new", download=True)
    msg = str(info.value)
    assert msg.startswith(f"fashion-mnist: download into {str(tmp_path / 'new')!r} failed (") and "\n" not in msg
    assert "Name or service not known" in msg and "check the network, or copy the files there" in msg
    # without download: the hint says where the option works
    with pytest.raises(DataError, match=r"download it with data.download=true \(resnetlab train \.\.\. --set data.download=true\)"):
        load_dataset("fashion-mnist", root=tmp_path / "new")
    # --smoke with download=true tries the download (it did not), then falls back to synthetic data
    cfg = smoke_fallback(load_config(None, ["data.name=fashion-mnist", f"data.root={tmp_path / 'new'}", "data.download=true"]))
    assert cfg.data.name.startswith("synthetic:1x28x28:10:") and cfg.data.download is False
    assert tried == [True, True]


def test_an_image_over_pillows_pixel_limit_is_a_named_bad_file(tmp_path, monkeypatch, caplog):
    # PIL's DecompressionBombError is not an OSError: predict on a folder aborted on one huge photo
    from PIL import Image

    from resnetlab.data.images import load_images

    _save(tmp_path / "big.png", np.zeros((16, 16, 3), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 256 pixels > 2 x the limit: an error, not a warning
    with pytest.raises(DataError, match=r"cannot read image .*big\.png.*exceeds limit"):
        load_images([tmp_path / "big.png"], 16)
    # in a class folder it was one of the "unreadable" files, with no reason given
    for c in ("a", "b"):
        for j in range(4):
            _save(tmp_path / "ds" / c / f"{j}.png", np.zeros((6, 6), dtype=np.uint8) + j)  # under the limit below
    (tmp_path / "big.png").rename(tmp_path / "ds" / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=8, val_fraction=0.25)
    assert len(s.train) + len(s.val) + len(s.test) == 8
    assert re.search(r"big\.png is skipped: Image size \(256 pixels\) exceeds limit of 80 pixels", caplog.text)


def test_channel_stats_are_exact_over_chunks():
    # integer sums per chunk (the float64 copy of up to 8,192 images took ~17x their size)
    from resnetlab.data.datasets import _channel_stats

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    ref = x.double().div(255)
    mean, std = _channel_stats(x, chunk_bytes=5000)  # chunks of 1 image: the sums carry over exactly
    np.testing.assert_allclose(mean, ref.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(dim=(0, 2, 3), correction=0).numpy(), rtol=1e-10)


def test_file_and_class_names_that_are_not_utf8_train_evaluate_and_report(tmp_path, capsys):
    # names from another system's disk (Latin-1 bytes): training ran to the end, then writing
    # predictions.csv failed ("surrogates not allowed"), leaving no report; figures failed too
    import csv
    import json

    from resnetlab.cli import main

    root = os.fsencode(tmp_path / "d")
    rng = np.random.default_rng(0)
    for c in (b"chat_\xe9", b"dog"):
        for j in range(8):
            _save(Path(os.fsdecode(os.path.join(root, c, b"caf\xe9_%d.png" % j))), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    run = tmp_path / "run"
    args = ["train", "--data", f"imagefolder:{tmp_path / 'd'}", "--model", "resnet8", "--image-size", "16", "--epochs", "1",
            "--out", str(run), "--set", "data.val_fraction=0.2", "--set", "train.batch_size=4", "--quiet"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["classes"] == ["chat_\\xe9", "dog"]  # the byte escaped in the name shown
    with open(run / "eval" / "test" / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(os.path.isfile(r["path"]) for r in rows)  # the paths are the files' own bytes
    assert "xe9" in (run / "report.md").read_text()  # its per-class table names the class
    assert main(["predict", str(run), os.fsdecode(os.path.join(root, b"dog"))]) == 0
    assert capsys.readouterr().out.count("caf") == 8


def test_a_data_root_the_dataset_does_not_read_is_named_in_a_warning(tmp_path, caplog):
    # train --data digits --data-root DIR (or synthetic, or imagefolder:PATH) ignored DIR without a word
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_dataset("digits", root=tmp_path / "somewhere", val_fraction=0.1, seed=0)
    assert f"data root {tmp_path / 'somewhere'} is not used for the data: digits reads scikit-learn's bundled set (a data root is only searched" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        load_dataset("synthetic:1x8x8:2:20", val_fraction=0.1, seed=0)
    assert "data root" not in caplog.text
    # a smoke run that swaps a missing dataset for a synthetic one drops the root with it
    from resnetlab.config import load_config, smoke_config, smoke_fallback

    cfg = smoke_fallback(smoke_config(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"])))
    assert cfg.data.name.startswith("synthetic:") and cfg.data.root is None


def test_a_killed_writers_temporary_cache_file_is_removed_and_a_live_ones_kept(tmp_path, caplog):
    # a kill during the cache's allocation left <cache>.u8.<pid>.tmp, the full size, for good
    name = write_png_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    kw = dict(image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9, cache=cache)
    first = load_dataset(name, **kw).train.cache
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    left = Path(f"{first}.{dead}.tmp")  # the name _allocate gives it; its process has exited
    live = Path(f"{first}.{os.getpid()}.tmp")  # a writer still at work
    foreign = cache / "other-12345678-3x8x8-abc.u8.1.tmp"  # another folder's: not this prefix
    for p in (left, live, foreign):
        p.write_bytes(b"\0" * 100)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs" / "c0" / "new.png")  # a new listing
    with caplog.at_level(logging.INFO, logger="resnetlab"):
        new = load_dataset(name, **kw).train.cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(Path(p).name for p in (new, live, foreign))
    assert left.name in caplog.text and os.path.basename(first) in caplog.text


def test_imagefolder_split_folders_match_in_any_case(tmp_path):
    # Train/ Validation/ Test/ (a Windows or Kaggle export) were read as three classes named
    # "Test", "Train" and "Validation", and trained without a word
    rng = np.random.default_rng(0)
    for split, n in {"Train": 6, "Validation": 3, "TEST": 2}.items():
        for c in ("a", "b"):
            for j in range(n):
                _save(tmp_path / "ds" / split / c / f"{j}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    s = load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6)
    assert s.classes == ["a", "b"]
    assert (len(s.train), len(s.val), len(s.test)) == (12, 6, 4)
    assert all("/Validation/" in p for p in s.val.paths) and all("/TEST/" in p for p in s.test.paths)
    (tmp_path / "ds" / "train").mkdir()
    if not (tmp_path / "ds" / "Train").samefile(tmp_path / "ds" / "train"):  # a case-sensitive file system
        with pytest.raises(DataError, match=r"has Train/ and train/: keep one train folder"):
            load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6)


def test_a_class_with_a_single_image_is_named_with_what_helps(tmp_path):
    # the error told to "raise data.subset or data.val_fraction", which cannot help a class of one
    # image, and did not say which class it was
    rng = np.random.default_rng(0)
    for split, counts in {"train": {"cat": 12, "dog": 12, "rare bird": 1}, "test": {"cat": 2, "dog": 2, "rare bird": 1}}.items():
        for c, n in counts.items():
            for j in range(n):
                _save(tmp_path / "ds" / split / c / f"{j}.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    # the validation hold-out from train/ cannot split a class of one image
    with pytest.raises(DataError, match=r"class\(es\) 'rare bird' have a single image here .*set data.val_fraction=0") as e:
        load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6)
    assert "raise data.subset" not in str(e.value)
    s = load_dataset(f"imagefolder:{tmp_path / 'ds'}", image_size=6, val_fraction=0)
    assert (len(s.train), len(s.val), len(s.test)) == (25, 0, 5)
    # without test/, the test hold-out cannot either
    with pytest.raises(DataError, match=r"'rare bird' have a single image here .*train/<class>/ and test/<class>/"):
        load_dataset(f"imagefolder:{tmp_path / 'ds' / 'train'}", image_size=6, val_fraction=0)


def test_images_beside_the_class_folders_are_named_in_a_warning(tmp_path, caplog):
    # photos/cat/, photos/dog/ and a few photos loose in photos/: they trained as no class, silently
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for j in range(5):
            _save(tmp_path / c / f"{j}.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    for name in ("loose1.jpg", "loose2.PNG"):
        _save(tmp_path / name, rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), fmt="PNG")
    (tmp_path / "labels.csv").write_text("a,b\n")  # not an image: no warning for it
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="resnetlab"):
        s = load_dataset(f"imagefolder:{tmp_path}", image_size=6, val_fraction=0)
    assert len(s.train) + len(s.val) + len(s.test) == 10
    assert "ignoring 2 image(s) beside the class folders (loose1.jpg, loose2.PNG)" in caplog.text
    assert "labels.csv" not in caplog.text and ".hidden" not in caplog.text


# ---------------------------------------------------------------------------------------------
# The on-disk formats: pixel layout, and damaged or partial copies
# ---------------------------------------------------------------------------------------------
def test_cifar_pixel_layout_and_python3_bytes_keys(tmp_path):
    # rows are 1,024 red, green, blue bytes, each plane 32x32 row-major; a pickle written by
    # Python 3 with bytes keys and bytes names reads as the Python-2 archive does
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    row = np.zeros(3072, np.uint8)
    row[0], row[1024 + 31], row[2048 + 32 * 31] = 200, 150, 100  # R(0,0), G(0,31), B(31,0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(base / f, {b"data": np.tile(row, (10, 1)), b"labels": list(range(10))})
    _pickle(base / "batches.meta", {b"label_names": [n.encode() for n in "abcdefghij"]})
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    x = s.train.images[0].int()
    assert (x[0, 0, 0], x[1, 0, 31], x[2, 31, 0], x.sum()) == (200, 150, 100, 450)
    assert s.classes == list("abcdefghij") and len(s.train) == 50 and len(s.test) == 10


@pytest.mark.parametrize("damage", ["truncated", "empty", "too-few-labels", "meta-without-names"])
def test_a_damaged_cifar_file_is_one_line_naming_it(tmp_path, damage):
    # pickle's own words ("pickle data was truncated", "Ran out of input", KeyError 'label_names')
    # named neither the file nor the fix
    write_cifar10(tmp_path)
    base = tmp_path / "cifar-10-batches-py"
    bad = base / ("batches.meta" if damage == "meta-without-names" else "data_batch_3")
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:1000])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "too-few-labels":
        _pickle(bad, {"data": np.zeros((20, 3072), np.uint8), "labels": [0] * 19})
    else:
        _pickle(bad, {"num_cases_per_batch": 20})
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path)
    msg = str(info.value)
    assert repr(str(bad)) in msg and "\n" not in msg


def test_a_partial_cifar_folder_names_the_fix_and_download_fetches_it_again(tmp_path, monkeypatch):
    import torchvision

    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()  # an interrupted copy
    with pytest.raises(DataError, match=r"missing file .*data_batch_4.* data\.download=true"):
        load_dataset("cifar10", root=tmp_path)
    calls = []

    class FakeCIFAR10:  # torchvision checks every file and extracts the archive again
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            shutil.rmtree(Path(root) / "cifar-10-batches-py")
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = load_dataset("cifar10", root=tmp_path, download=True, val_fraction=0.0)
    assert calls == [(str(tmp_path), True)] and len(s.train) == 100


@pytest.mark.parametrize("damage", ["truncated-gz", "wrong-magic", "labels-file-holds-images", "header-cut", "label-12"])
def test_a_damaged_idx_file_is_one_line_naming_it(tmp_path, damage):
    write_mnist(tmp_path)
    d = tmp_path / "mnist"
    images, labels = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    bad = images
    if damage == "truncated-gz":  # was EOFError "Compressed file ended before the end-of-stream marker"
        images.write_bytes(images.read_bytes()[:500])
    elif damage == "wrong-magic":
        _idx(images, np.zeros((200, 28, 28)))
        images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + gzip.decompress(images.read_bytes())[4:]))
    elif damage == "labels-file-holds-images":  # was silently read as labels 0..255
        shutil.copy(images, labels)
        bad = labels
    elif damage == "header-cut":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (200).to_bytes(4, "big")))
    else:
        _idx(labels, np.full(200, 12))
        bad = labels
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert repr(str(bad)) in msg and "\n" not in msg


def test_idx_files_are_read_by_content_not_by_suffix(tmp_path):
    # torchvision's raw/ folder has both the .gz and the extracted files; a copy may be gzip
    # without the .gz name (or extracted with it): the magic decides, not the name
    x = write_mnist(tmp_path)
    d = tmp_path / "mnist"
    for f in list(d.iterdir()):
        f.rename(d / f.name.removesuffix(".gz"))  # gzip content under the raw name
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert torch.equal(s.train.images[:, 0], torch.from_numpy(x))


def test_not_found_says_where_an_implicit_data_root_came_from(tmp_path, monkeypatch):
    # "cifar10 not found: expected '~/.cache/resnetlab/cifar-10-batches-py'" left a user who set
    # no root to guess why that folder, and how to name another
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"cifar-10-batches-py' \(the data root from \$RESNETLAB_DATA; pass --data-root"):
        load_dataset("cifar10")
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"is not a directory \(the data root from \$RESNETLAB_DATA"):
        load_dataset("mnist")
    monkeypatch.delenv("RESNETLAB_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"in .*mnist, .*MNIST/raw, .*resnetlab \(the default data root; .*\$RESNETLAB_DATA"):
        load_dataset("mnist")
    with pytest.raises(DataError) as info:  # a given root needs no such note
        load_dataset("cifar10", root=tmp_path)
    assert "data root" not in str(info.value).split("not found")[1].split(";")[0]


def test_a_synthetic_set_too_small_to_split_names_its_spec_not_files():
    # "add images to them" is no advice for a synthetic set, whose images per class are its N
    with pytest.raises(DataError, match=r"a larger N in 'synthetic:CxHxW:CLASSES:N', or set data.val_fraction=0"):
        load_dataset("synthetic:3x8x8:10:10", val_fraction=0.1)


def test_an_in_memory_image_folder_is_held_once_not_copied_by_the_loader(tmp_path):
    # The folder was decoded into a list, stacked (two copies at the peak) and stored NCHW; the
    # in-memory loader then made its own NHWC copy, so the run held the images twice throughout.
    name = write_png_folder(tmp_path / "imgs", n=24, side=12)
    s = load_dataset(name, image_size=8, val_fraction=0.25)
    assert s.train.images.is_contiguous(memory_format=torch.channels_last)
    dl = build_loader(s.train, 4, train=True, mean=s.mean, std=s.std)
    assert dl.images.data_ptr() == s.train.images.data_ptr()  # the split's own storage
    flat = load_dataset(name, image_size=8, val_fraction=0.25, stream_threshold_gb=1e-9)
    ref = build_loader(flat.train, 4, train=True, mean=flat.mean, std=flat.std)
    for (a, ya, ia), (b, yb, ib) in zip(dl.iter_epoch(1), ref.iter_epoch(1)):  # same pixels as streamed
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(a, b)


def test_the_streaming_mean_std_sample_is_decoded_in_small_batches(tmp_path, monkeypatch):
    # Up to 2,000 images were decoded into one list and stacked (0.8 GB at 256 px) to be summed.
    import resnetlab.data.datasets as ds

    name = write_png_folder(tmp_path / "imgs", n=30, side=12)
    s = load_dataset(name, image_size=8, val_fraction=0.0, stream_threshold_gb=1e-9)
    batches = [len(b) for b in ds._decodable_sample(s.train, 2000, chunk=4)]
    assert batches and max(batches) <= 4 and sum(batches) == len(s.train)
    exact = ds._channel_stats(s.train.get(torch.arange(len(s.train))))
    assert np.allclose(s.mean, exact[0], rtol=1e-12) and np.allclose(s.std, exact[1], rtol=1e-12)


def test_image_folder_files_keep_their_aspect_shorter_side_resized_then_center_cropped(tmp_path):
    # docs/CONFIG.md (data.image_size) and the image-folder recipes: not a squash to the square.
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 12:68] = 255  # white but for the sides, which the crop cuts off (a squash keeps them)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for j in range(10):
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{j}.jpg", quality=95)
    s = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=20, val_fraction=0.0)
    x = s.train.images[0].int()
    assert x.shape == (3, 20, 20) and int(x.min()) > 240  # a squash would show the black sides
    assert torch.equal(load_images([s.train.paths[0]], size=20, channels=3)[0], s.train.images[0])  # predict's decode


@pytest.mark.parametrize("subset", [5, 0.005])
def test_a_subset_smaller_than_the_class_count_says_so(subset):
    # the error spoke of a stratified hold-out and of raising data.val_fraction, which cannot help
    with pytest.raises(DataError) as info:
        load_dataset("digits", subset=subset, val_fraction=0.0)
    msg = str(info.value)
    assert msg.startswith(f"data.subset={subset!r} keeps {5 if subset == 5 else 7} image(s), fewer than the 10 classes: "
                          f"a stratified subset needs one image of each class (allowed: 10..1437 images")  # fmt: skip
    assert ("a fraction of at least 0.00696" in msg) == isinstance(subset, float) and "val_fraction" not in msg
    assert len(load_dataset("digits", subset=10, val_fraction=0.0).train) == 10


def test_an_in_memory_folder_decodes_only_the_images_its_splits_hold(tmp_path, monkeypatch):
    # --subset 6 of a 60-image folder decoded all 60 before drawing the 6
    import resnetlab.data.datasets as ds

    name = write_png_folder(tmp_path / "imgs", n=60, classes=3)
    decoded = []
    real = ds.read_image
    monkeypatch.setattr(ds, "read_image", lambda p, *a, **k: decoded.append(p) or real(p, *a, **k))
    s = load_dataset(name, image_size=8, subset=6, val_fraction=0.0)
    assert (len(s.train), len(s.test)) == (6, 12) and s.train.in_memory and s.test.in_memory
    assert sorted(decoded) == sorted(s.train.paths + s.test.paths)  # 18 files, each once
    full = load_dataset(name, image_size=8, val_fraction=0.0)
    assert s.test.paths == full.test.paths and set(s.train.paths) <= set(full.train.paths)
    i = full.train.paths.index(s.train.paths[0])
    assert torch.equal(s.train.images[0], full.train.images[i])
