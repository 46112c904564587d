"""Pieces shared by every network: size padding and the encoder-only switch."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationNet(nn.Module):
    """Base class: accepts any input size and returns logits at exactly that size.

    Subclasses implement :meth:`forward_padded` for inputs whose height and width are
    multiples of :attr:`size_multiple`, and set :attr:`encoder_stride` (the encoder output's
    downsampling factor). With ``encoder_only = True`` the network returns the encoder's
    class map (used for the first stage of two-stage training) at
    ``ceil(H / encoder_stride), ceil(W / encoder_stride)``.
    """

    size_multiple: int = 8
    encoder_stride: int = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1, got {}".format(num_classes))
        self.num_classes = num_classes
        self.encoder_only = False

    def padding_for(self, height: int, width: int) -> Tuple[int, int]:
        """(bottom, right) zero padding that makes the size a multiple of ``size_multiple``."""
        m = self.size_multiple
        return (-height) % m, (-width) % m

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        height, width = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = self.padding_for(height, width)
        if pad_h or pad_w:
            # Shapes are static per export, so this is a trace-time constant, not a tensor branch.
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out = self.forward_padded(x)
        if self.encoder_only:
            s = self.encoder_stride
            return out[:, :, : -(-height // s), : -(-width // s)]
        return out[:, :, :height, :width]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on a size-multiple input; returns full-resolution (or encoder) logits."""
        raise NotImplementedError


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
