"""ENet (Paszke, Chaurasia, Kim, Culurciello 2016), built as its Table 1 and Fig. 1/2.

Encoder: initial block, stage 1 (downsampling bottleneck + 4 regular, dropout 0.01),
stages 2 and 3 (regular, dilated 2/4/8/16, asymmetric 5, dropout 0.1; stage 2 starts with a
downsampling bottleneck). Decoder: stages 4 and 5 with upsampling bottlenecks that max-unpool
with the encoder's pooling indices, then a bare 2x2 full (transposed) convolution.

Max-unpooling is written as a one-hot scatter over each 2x2 window (``pixel_shuffle``), so the
ONNX graph has no MaxUnpool and no MaxPool-with-indices (TensorRT supports neither) while the
result equals ``nn.MaxPool2d(2, return_indices=True)`` + ``nn.MaxUnpool2d(2)``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import SegmentationNet


def max_pool2x2_with_argmax(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """2x2 / stride-2 max pooling that also returns the window-local argmax (0..3, in x's dtype).

    The argmax picks the first maximum in row-major order within each window, the same
    tie-break as ``nn.MaxPool2d``. Height and width must be even.
    """
    # Native pooling plus three comparisons on strided views: 3-7x faster on CPU than a
    # reduction over unshuffled windows, and only MaxPool/Slice/Equal/Cast/Mul/Add in ONNX and
    # TensorRT. The index stays in x's dtype (0..3 are exact even in bf16/fp16): no int64
    # tensors, which made the graph 20% slower in ONNX Runtime.
    pooled = F.max_pool2d(x, 2)
    top_left, top_right, bottom_left = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2]
    not_tl = (top_left != pooled).to(x.dtype)
    not_tr = (top_right != pooled).to(x.dtype)
    not_bl = (bottom_left != pooled).to(x.dtype)
    # 0 if top-left is the max, else 1 if top-right, else 2 if bottom-left, else 3.
    return pooled, not_tl * (1 + not_tr * (1 + not_bl))


def max_unpool2x2(x: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`max_pool2x2_with_argmax`: place each value at its argmax, zeros elsewhere.

    Equal to ``nn.MaxUnpool2d(2)`` given the flat indices of the same pooling.
    """
    n, c, h, w = x.shape
    slots = torch.arange(4, device=x.device, dtype=argmax.dtype).view(1, 1, 4, 1, 1)
    onehot = (argmax.unsqueeze(2) == slots).to(x.dtype)
    return F.pixel_shuffle((x.unsqueeze(2) * onehot).reshape(n, c * 4, h, w), 2)


def local_to_flat_indices(argmax: torch.Tensor, in_width: int) -> torch.Tensor:
    """Convert window-local argmax (0..3) to ``nn.MaxPool2d``'s flat indices (for tests/interop)."""
    h, w = argmax.shape[-2:]
    argmax = argmax.long()
    rows = torch.arange(h, device=argmax.device).view(h, 1) * 2 + argmax // 2
    cols = torch.arange(w, device=argmax.device).view(1, w) * 2 + argmax % 2
    return rows * in_width + cols


class InitialBlock(nn.Module):
    """3x3 stride-2 conv with 13 filters concatenated with a 2x2 max pool of the input: 16 maps."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _conv_bn_act(conv: nn.Module, channels: int, act: nn.Module) -> List[nn.Module]:
    return [conv, nn.BatchNorm2d(channels, eps=1e-3), act]


class Bottleneck(nn.Module):
    """ENet bottleneck (Fig. 2b): 1x1 projection, main conv, 1x1 expansion, spatial dropout.

    ``kind`` is ``regular``, ``dilated``, ``asymmetric`` or ``downsampling``. The projections
    have no biases (Sec. 4); the main conv keeps its bias as in the paper's implementation.
    Downsampling replaces the first 1x1 projection by a 2x2 stride-2 conv and the shortcut
    becomes a max pool whose channels are zero-padded; its argmax is returned for unpooling.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "regular", dilation: int = 1,
                 dropout: float = 0.1, reduction: int = 4, activation: str = "prelu") -> None:
        super().__init__()
        if kind not in ("regular", "dilated", "asymmetric", "downsampling"):
            raise ValueError("unknown bottleneck kind {!r}".format(kind))
        self.kind = kind
        self.pad_channels = out_channels - in_channels
        mid = in_channels // reduction

        def act(ch: int) -> nn.Module:
            return nn.PReLU(ch) if activation == "prelu" else nn.ReLU(inplace=True)

        if kind == "downsampling":
            project = nn.Conv2d(in_channels, mid, 2, stride=2, bias=False)
        else:
            project = nn.Conv2d(in_channels, mid, 1, bias=False)
        if kind == "asymmetric":
            main: List[nn.Module] = [nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                                     nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=True)]
        else:
            main = [nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=True)]
        layers: List[nn.Module] = _conv_bn_act(project, mid, act(mid))
        layers += main + [nn.BatchNorm2d(mid, eps=1e-3), act(mid)]
        layers += [nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels, eps=1e-3),
                   nn.Dropout2d(dropout)]
        self.ext = nn.Sequential(*layers)
        self.out_act = act(out_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: D102
        argmax = None
        shortcut = x
        if self.kind == "downsampling":
            shortcut, argmax = max_pool2x2_with_argmax(x)
            if self.pad_channels:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad_channels))
        return self.out_act(self.ext(x) + shortcut), argmax


class UpsamplingBottleneck(nn.Module):
    """Decoder bottleneck: shortcut = 1x1 conv + BN then max-unpool; branch uses a 3x3 transposed conv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1, reduction: int = 4,
                 activation: str = "relu") -> None:
        super().__init__()
        mid = in_channels // reduction

        def act(ch: int) -> nn.Module:
            return nn.PReLU(ch) if activation == "prelu" else nn.ReLU(inplace=True)

        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels, eps=1e-3))
        self.ext = nn.Sequential(
            *_conv_bn_act(nn.Conv2d(in_channels, mid, 1, bias=False), mid, act(mid)),
            *_conv_bn_act(nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=True),
                          mid, act(mid)),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.Dropout2d(dropout),
        )
        self.out_act = act(out_channels)

    def forward(self, x: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.out_act(self.ext(x) + max_unpool2x2(self.shortcut(x), argmax))


# (name, kind, dilation) of the repeated part of stages 2 and 3 (Table 1).
_STAGE23: Tuple[Tuple[str, str, int], ...] = (
    ("1", "regular", 1), ("2", "dilated", 2), ("3", "asymmetric", 1), ("4", "dilated", 4),
    ("5", "regular", 1), ("6", "dilated", 8), ("7", "asymmetric", 1), ("8", "dilated", 16),
)


class ENet(SegmentationNet):
    """ENet for ``num_classes`` outputs (0.36M parameters with 20 classes).

    Args:
        num_classes: output classes.
        decoder_activation: ``relu`` (the authors' implementation) or ``prelu``.
    """

    size_multiple = 8
    encoder_stride = 8
    output_layer = "fullconv"

    def __init__(self, num_classes: int, decoder_activation: str = "relu") -> None:
        super().__init__(num_classes)
        self.initial = InitialBlock(3, 16)
        # Stage 1: dropout 0.01.
        self.bottleneck1_0 = Bottleneck(16, 64, "downsampling", dropout=0.01)
        self.stage1 = nn.ModuleList(Bottleneck(64, 64, dropout=0.01) for _ in range(4))
        # Stages 2 and 3: dropout 0.1.
        self.bottleneck2_0 = Bottleneck(64, 128, "downsampling", dropout=0.1)
        self.stage2 = nn.ModuleList(Bottleneck(128, 128, k, d, dropout=0.1) for _, k, d in _STAGE23)
        self.stage3 = nn.ModuleList(Bottleneck(128, 128, k, d, dropout=0.1) for _, k, d in _STAGE23)
        # Encoder-only head for two-stage training (1x1 conv to classes at 1/8 resolution).
        self.encoder_head = nn.Conv2d(128, num_classes, 1)
        # Decoder (stages 4 and 5).
        self.bottleneck4_0 = UpsamplingBottleneck(128, 64, activation=decoder_activation)
        self.stage4 = nn.ModuleList(Bottleneck(64, 64, activation=decoder_activation) for _ in range(2))
        self.bottleneck5_0 = UpsamplingBottleneck(64, 16, activation=decoder_activation)
        self.stage5 = nn.ModuleList(Bottleneck(16, 16, activation=decoder_activation) for _ in range(1))
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=False)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features (1/8) and the two pooling argmaxes for the decoder."""
        x = self.initial(x)
        x, argmax1 = self.bottleneck1_0(x)
        for block in self.stage1:
            x = block(x)[0]
        x, argmax2 = self.bottleneck2_0(x)
        for block in self.stage2:
            x = block(x)[0]
        for block in self.stage3:
            x = block(x)[0]
        return x, argmax1, argmax2

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x, argmax1, argmax2 = self.encode(x)
        if self.encoder_only:
            return self.encoder_head(x)
        x = self.bottleneck4_0(x, argmax2)
        for block in self.stage4:
            x = block(x)[0]
        x = self.bottleneck5_0(x, argmax1)
        for block in self.stage5:
            x = block(x)[0]
        return self.fullconv(x)


def enet(num_classes: int, **options) -> ENet:
    """Build ENet (see :class:`ENet` for options)."""
    return ENet(num_classes, **options)
