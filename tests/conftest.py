"""Shared test set-up: two torch threads (the CI box has 2 cores), fixed seeds, helpers."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.is_dir(), reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist; .ci/run installs it)"
)

# The suite runs on 2 cores; more threads only oversubscribe them.
SUITE_THREADS = 2
torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The benchmark functions and scripts set torch's thread count for the rest of the process
    (that is what ``--threads`` means there); put the suite's count back after every test, so
    the tests after them do not run at 1 thread."""
    yield
    if torch.get_num_threads() != SUITE_THREADS:
        torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so a failure reproduces."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_resnetlab_logger():
    """A CLI test calls ``setup_logging``, which gives the "resnetlab" logger its own stderr
    handler and turns propagation off; caplog (on the root logger) then sees nothing in the tests
    after it. pytest >= 9.2 also captures non-propagating loggers, older ones (the test extra
    allows 7.4) do not, so put the logger back after every test."""
    log = logging.getLogger("resnetlab")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


@pytest.fixture
def rng() -> torch.Generator:
    """A private generator for tests that want random data independent of model init."""
    return torch.Generator().manual_seed(1234)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute elementwise difference, as a float (for readable assert messages)."""
    return (a.detach().double() - b.detach().double()).abs().max().item()


def write_png_folder(root: Path, n: int = 40, side: int = 16, classes: int = 2) -> str:
    """``n`` RGB PNGs of ``side`` x ``side`` pixels in ``classes`` class folders (class-dependent
    brightness plus noise); returns the dataset name ``imagefolder:ROOT``."""
    from PIL import Image

    rng = np.random.default_rng(5)
    for j in range(n):
        c = j % classes
        arr = (np.full((side, side, 3), 60 * c, np.uint8) + rng.integers(0, 120, (side, side, 3), dtype=np.uint8))
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / f"c{c}" / f"{j:03d}.png")
    return f"imagefolder:{root}"
