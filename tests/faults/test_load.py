"""Under load: ``predict`` over 10,000 images keeps memory bounded, leaks no file handles and
gives the same answers as small batches; a study with ``--jobs 2`` is in test_study_faults.py.

Peak RSS is read from GNU time (``/usr/bin/time -v``), the way docs/RELIABILITY.md states it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.predict import predict

from ._helpers import TINY, set_args


def _make_pngs(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` 8x8 grayscale PNGs in 10 class-like sub-folders (digits-sized, so decoding is cheap)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    for i in range(n):
        d = folder / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(d / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("load") / "run"
    assert main(["train", "-q", "--out", str(run), *set_args(TINY), "--set", "train.epochs=1"]) == 0
    return run


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_predict_leaks_no_file_handles_and_batches_do_not_change_answers(tmp_path, model_run):
    images = _make_pngs(tmp_path / "imgs", 600)
    predict(model_run, [images / "c0"], batch_size=64)  # warm-up: imports, lazily opened libraries
    before = _open_fds()
    big = predict(model_run, [images], batch_size=256)
    for _ in range(3):
        predict(model_run, [images], batch_size=97)
    assert _open_fds() == before
    one = predict(model_run, [images / "c3"], batch_size=1)
    by_path = {r["path"]: r for r in big}
    assert len(big) == 600 and len(one) == 60
    for r in one:
        ref = by_path[r["path"]]["top"]
        assert [t["class"] for t in r["top"]] == [t["class"] for t in ref]
        assert np.allclose([t["prob"] for t in r["top"]], [t["prob"] for t in ref], atol=1e-6)


def _peak_rss_mb(cmd: list[str], stdout) -> float:
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=stdout, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return kb / 1024


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("/usr/bin/time") is None, reason="GNU time is not installed")
def test_predict_over_10000_images_has_bounded_memory_and_equals_small_batches(tmp_path, model_run):
    images = _make_pngs(tmp_path / "imgs", 10_000)
    small = _make_pngs(tmp_path / "small", 1_000, seed=1)
    base = [sys.executable, "-m", "resnetlab", "predict", str(model_run), "--json", "--device", "cpu", "--batch-size", "256"]
    with open(tmp_path / "10k.json", "w") as f:
        peak_10k = _peak_rss_mb([*base, str(images)], f)
    with open(tmp_path / "1k.json", "w") as f:
        peak_1k = _peak_rss_mb([*base, str(small)], f)
    print(f"\npeak RSS: predict 10,000 images {peak_10k:.0f} MB; 1,000 images {peak_1k:.0f} MB")
    # Files are decoded batch by batch: ten times the images may not cost more than the
    # results themselves (a few MB of JSON-able dicts), far from 10x.
    assert peak_10k < peak_1k + 64, (peak_10k, peak_1k)
    results = json.loads((tmp_path / "10k.json").read_text())
    assert len(results) == 10_000
    # The same answers as small batches in this process (a sample of 500 files).
    sample = [r["path"] for r in results[::20]]
    again = predict(model_run, sample, batch_size=7)
    for r, a in zip(results[::20], again):
        assert r["path"] == a["path"] and [t["class"] for t in r["top"]] == [t["class"] for t in a["top"]]
        assert np.allclose([t["prob"] for t in r["top"]], [t["prob"] for t in a["top"]], atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("/usr/bin/time") is None, reason="GNU time is not installed")
def test_study_with_two_jobs_peak_memory(tmp_path):
    from .test_study_faults import _study

    out = tmp_path / "study"
    peak = _peak_rss_mb([sys.executable, "-m", "resnetlab", "study", str(_study(tmp_path)), "--out", str(out), "--jobs", "2", "-q"],
                        subprocess.DEVNULL)  # fmt: skip
    print(f"\npeak RSS of the largest process of `study --jobs 2`: {peak:.0f} MB")
    assert peak < 1536  # `import torch` alone is ~630 MB here; a tiny digits run adds a few hundred
    assert (out / "results.csv").is_file()
