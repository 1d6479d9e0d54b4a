"""Fixtures of the fault tests: one uninterrupted reference run shared by the whole session."""

from __future__ import annotations

import pytest

from resnetlab.config import load_config
from resnetlab.trainer import train

from ._helpers import TINY


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The tiny run trained once without interruption (in this process, one thread)."""
    run = tmp_path_factory.mktemp("faults-ref") / "ref"
    train(load_config(None, TINY), run, progress=False)
    return run
