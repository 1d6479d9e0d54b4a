"""resnetlab: build, train, evaluate, compare and explain ResNet image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name: str):
    # Lazy (PEP 562): `import resnetlab` does not import torch, so the command line can set the
    # OpenMP environment before torch loads its OpenMP runtime (see resnetlab.cli).
    if name in ("create_model", "list_models"):
        from resnetlab import models

        return getattr(models, name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
