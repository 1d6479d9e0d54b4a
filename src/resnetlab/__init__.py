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
    if name in _SUBMODULES:  # `resnetlab.models` after a bare `import resnetlab`, as with torchvision
        import importlib

        return importlib.import_module(f"resnetlab.{name}")
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


_SUBMODULES = ("bench", "checkpoint", "config", "data", "errors", "evaluate", "explain", "export", "fold", "metrics",
               "models", "norms", "optim", "predict", "report", "runtime", "study", "trainer", "transfer")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
