"""Network inputs and per-pixel loss weights of training batches, on the training device."""
from __future__ import annotations

from typing import Optional

import torch

from ..engine.preprocess import Preprocess


class BatchNormalizer:
    """Float RGB frames (B, 3, H, W) in 0..255 -> the network input ``pre`` prescribes, on ``device``.

    The same ``(x[order] - mean) * factor`` as the inference graph (``factor`` from
    :attr:`Preprocess.factor`), laid out in ``memory_format``.
    """

    def __init__(self, pre: Preprocess, device: torch.device, memory_format: torch.memory_format) -> None:
        self.swap = pre.swap_rb("rgb")
        self.mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.factor = torch.from_numpy(pre.factor).to(device).view(1, 3, 1, 1)
        self.memory_format = memory_format

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.flip(1) if self.swap else rgb
        return ((x - self.mean) * self.factor).contiguous(memory_format=self.memory_format)


def pixel_weights(target: torch.Tensor, class_weights: Optional[torch.Tensor], ignore_index: int) -> torch.Tensor:
    """Each pixel's loss weight (B, H, W), float: its class's weight (1 without weighting), 0 where ignored."""
    valid = target != ignore_index
    if class_weights is None:
        return valid.to(torch.float32)
    # A product with the mask, not boolean indexing: no data-dependent shape (compiles whole).
    return class_weights[target.clamp(max=class_weights.numel() - 1)] * valid
