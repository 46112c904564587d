"""ERFNet (Romera, Alvarez, Bergasa, Arroyo 2017), built as its Table I.

Encoder (layers 1-16): downsampler 3->16, downsampler 16->64, 5 x non-bottleneck-1D(64)
with dropout 0.03, downsampler 64->128, 2 x non-bottleneck-1D(128) dilated 2, 4, 8, 16 with
dropout 0.3. Decoder (layers 17-23): 3x3 transposed conv 128->64, 2 x non-bt-1D(64),
transposed conv 64->16, 2 x non-bt-1D(16), and a 2x2 transposed conv to the classes.

For the authors' two-stage training the encoder has its own 1x1 classifier at 1/8
resolution (``encoder_only = True``); it is unused by the full network.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .common import SegmentationNet

_BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """3x3 stride-2 conv with ``out - in`` filters concatenated with a 2x2 max pool, then BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError("downsampler needs out_channels > in_channels")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # The BN spans conv and pool channels, so it cannot be folded into the conv alone.
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorised 3x3 convs (3x1 then 1x3); the second pair is dilated.

    3x1, ReLU, 1x3, BN, ReLU, 3x1 (dilated), ReLU, 1x3 (dilated), BN, dropout, + input, ReLU.
    """

    fuse_pairs = (("conv1x3_1", "bn1"), ("conv1x3_2", "bn2"))

    def __init__(self, channels: int, dropout: float, dilation: int = 1) -> None:
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        # Identity when p == 0 keeps the exported graph free of no-op dropout nodes.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed conv (exact 2x upsampling) + BN + ReLU."""

    fuse_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.relu(self.bn(self.conv(x)))


class ERFNetEncoder(nn.Module):
    """Layers 1-16 of Table I, plus a 1x1 classifier used only for encoder-only training."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: List[nn.Module] = [DownsamplerBlock(in_channels, 16), DownsamplerBlock(16, 64)]
        layers += [NonBottleneck1D(64, 0.03, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            layers += [NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16)]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(128, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.layers(x)


class ERFNetDecoder(nn.Module):
    """Layers 17-23 of Table I."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            UpsamplerBlock(128, 64), NonBottleneck1D(64, 0.0), NonBottleneck1D(64, 0.0),
            UpsamplerBlock(64, 16), NonBottleneck1D(16, 0.0), NonBottleneck1D(16, 0.0),
        )
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.output_conv(self.layers(x))


class ERFNet(SegmentationNet):
    """ERFNet for ``num_classes`` outputs (2.06M parameters with 20 classes).

    Args:
        num_classes: output classes.
        in_channels: input image channels.
    """

    size_multiple = 8
    encoder_stride = 8
    output_layer = "decoder.output_conv"

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes)
        self.encoder = ERFNetEncoder(num_classes, in_channels)
        self.decoder = ERFNetDecoder(num_classes)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        features = self.encoder(x)
        if self.encoder_only:
            return self.encoder.classifier(features)
        return self.decoder(features)


def erfnet(num_classes: int, **options) -> ERFNet:
    """Build ERFNet (see :class:`ERFNet` for options)."""
    return ERFNet(num_classes, **options)
