"""Pieces shared by every network: size padding, the encoder-only switch and the logit offset."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

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

    :attr:`logit_offset` is ``None`` (the papers' networks) or, once
    :meth:`set_logit_offset` is called, a per-class constant added to the full-resolution
    logits: a decision rule fitted after training (``enet_seg_ros.train.calibrate``), saved
    with the weights as a buffer and exported with the graph.
    """

    logit_offset: Optional[torch.Tensor]

    size_multiple: int = 8
    encoder_stride: int = 8
    #: Submodule path of the convolution whose outputs are the logits (only cropping or bilinear
    #: resizing after it), so inference can fold ``logit_offset`` into its bias.
    output_layer: str = ""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1, got {}".format(num_classes))
        self.num_classes = num_classes
        self.encoder_only = False
        self.register_buffer("logit_offset", None)

    def set_logit_offset(self, offsets: Optional[Sequence[float]]) -> None:
        """Add ``offsets[c]`` to class ``c``'s logits from now on (``None`` removes the buffer)."""
        if offsets is None:
            self.logit_offset = None
            return
        values = torch.as_tensor(offsets, dtype=torch.float32).flatten()
        if values.numel() != self.num_classes or not torch.isfinite(values).all():
            raise ValueError("logit offset needs {} finite values, got {}".format(self.num_classes, list(values.shape)))
        device = next((p.device for p in self.parameters()), values.device)
        self.logit_offset = values.to(device)

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
        out = out[:, :, :height, :width]
        if self.logit_offset is not None:
            out = out + self.logit_offset.view(1, -1, 1, 1).to(out.dtype)
        return out

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on a size-multiple input; returns full-resolution (or encoder) logits."""
        raise NotImplementedError


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
