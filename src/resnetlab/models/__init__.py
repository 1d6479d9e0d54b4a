"""ResNet models built from scratch, and their registry."""

from resnetlab.models import zoo as _zoo  # noqa: F401  (registers the builders)
from resnetlab.models.registry import create_model, list_models, model_info, register_model
from resnetlab.models.resnet import BasicBlock, Bottleneck, ResNet, TwoConvBottleneck

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "TwoConvBottleneck", "create_model", "list_models", "model_info", "register_model"]
