"""Multiply-add counting with forward hooks.

Convention: ``GFLOPs = 2 x multiply-adds / 1e9`` of the convolution, transposed convolution
and linear layers at the given input size (one multiply-add = 2 FLOPs). BatchNorm (folded at
inference), activations, pooling and additions are not counted: they are < 2% of the total
for these networks and are memory-bound anyway. This matches how the ENet / ESPNet papers
count (multiply-adds of the conv layers).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def count_macs(model: nn.Module, input_size: Tuple[int, int], batch: int = 1) -> int:
    """Multiply-adds of one forward pass on a (batch, 3, H, W) input of ``input_size`` (W, H)."""
    total = [0]

    def hook(module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.ConvTranspose2d):
            x = inputs[0]
            per_in = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += x.numel() * per_in
        elif isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * per_out
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(batch, 3, int(input_size[1]), int(input_size[0])))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0] // batch
