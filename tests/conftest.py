"""Shared test set-up: two torch threads (the CI box has 2 cores), fixed seeds, helpers."""

from __future__ import annotations

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
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so a failure reproduces."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng() -> torch.Generator:
    """A private generator for tests that want random data independent of model init."""
    return torch.Generator().manual_seed(1234)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute elementwise difference, as a float (for readable assert messages)."""
    return (a.detach().double() - b.detach().double()).abs().max().item()
