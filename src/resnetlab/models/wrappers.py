"""Inference wrappers."""

from __future__ import annotations

import torch
from torch import nn


class FlipTTA(nn.Module):
    """Test-time augmentation: average the logits of an image and its horizontal mirror.

    Used for evaluation only (``train.tta_flip``); it selects nothing on the test set.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return 0.5 * (self.model(x) + self.model(torch.flip(x, dims=(3,))))
