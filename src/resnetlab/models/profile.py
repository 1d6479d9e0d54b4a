"""Parameter and FLOP counts (forward FLOPs through ``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models.registry import create_model, list_models, model_info


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """Forward FLOPs (a multiply-add counts 2) for one batch of ``input_size`` (C, H, W) images."""
    device = next(model.parameters()).device
    x = torch.zeros((batch_size, *input_size), device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def describe_models(pattern: str | None = None) -> list[dict]:
    """One row per registered model: ``name``, ``params``, ``flops``, ``input_size``.

    Built on the meta device, so even ResNet-1202 costs no memory or compute.
    """
    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        with torch.device("meta"):
            model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "flops": count_flops(model, info.input_size),
                "input_size": list(info.input_size),
                "family": info.family,
                "description": info.doc,
            }
        )
    return rows
