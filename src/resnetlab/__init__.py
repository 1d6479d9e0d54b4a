"""resnetlab: build, train, evaluate, compare and explain ResNet image classifiers."""

__version__ = "0.1.0"

from resnetlab.models import create_model, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "list_models"]
