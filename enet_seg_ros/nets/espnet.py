"""ESPNet and ESPNet-C (Mehta, Rastegari, Caspi, Shapiro, Hajishirzi 2018), Fig. 1 and Fig. 4.

ESP module: a 1x1 (3x3 stride-2 when downsampling) conv reduces to ``N/K`` maps, ``K = 5``
parallel 3x3 convs with dilation 1, 2, 4, 8, 16 resample them, hierarchical feature fusion
(HFF) adds the dilated outputs cumulatively before concatenation, a residual connection is
added when input and output shapes match, then BN + PReLU.

ESPNet-C (the encoder, Fig. 4c): 3x3 stride-2 conv to 16 maps; at each level the image
downsampled by average pooling is concatenated (input reinforcement); a strided ESP module
plus ``alpha2 = p`` ESP modules at 1/4 and a strided ESP module plus ``alpha3 = q`` ESP
modules at 1/8; a 1x1 conv gives class maps at 1/8.

ESPNet (Fig. 4d) adds the light-weight decoder: the 1/8 class maps are upsampled by a 2x2
transposed conv, concatenated with a 1x1 projection of the level-2 features to class maps,
fused by an ESP module, upsampled again, concatenated with the level-1 features, merged by a
3x3 conv and upsampled to full resolution by a last 2x2 transposed conv.

Layer shapes, bias-free convs, BN epsilon 1e-3 and the average-pooling input projection
follow the authors' published models, so their checkpoints load through
:mod:`enet_seg_ros.nets.espnet_reference`.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import SegmentationNet

_BN_EPS = 1e-3
DILATIONS = (1, 2, 4, 8, 16)  # K = 5 branches


def bn_prelu_cat(bn: nn.BatchNorm2d, act: nn.PReLU, parts: Sequence[torch.Tensor],
                 residual: Optional[torch.Tensor] = None, split: bool = False) -> torch.Tensor:
    """``act(bn(cat(parts) [+ residual]))``, the pattern every ESPNet concatenation ends in.

    With ``split`` (inference only: eval-mode BN and PReLU are per channel, so the result is the
    same) the BN and PReLU are applied to each part before the concatenation, and the residual
    is added part by part. An exported graph then has every BN + PReLU right after the op that
    made its part, where OpenVINO / oneDNN fuse them into the convolution, instead of layout
    reorders around a float BN on the concatenation (ESPNet int8 about 10 % faster under the
    AVX2 limit, BENCHMARKS.md). Set by :func:`~enet_seg_ros.nets.fold.split_concat_norms`.
    """
    if not split or bn.training:
        y = torch.cat(list(parts), dim=1)
        if residual is not None:
            y = y + residual
        return act(bn(y))
    out, start = [], 0
    for part in parts:
        stop = start + int(part.shape[1])  # static at export: the tracer records the slice bounds
        if residual is not None:
            part = part + residual[:, start:stop]
        y = F.batch_norm(part, bn.running_mean[start:stop], bn.running_var[start:stop], bn.weight[start:stop],
                         bn.bias[start:stop], False, 0.0, bn.eps)
        slope = act.weight if act.weight.numel() == 1 else act.weight[start:stop]
        out.append(F.prelu(y, slope))
        start = stop
    return torch.cat(out, dim=1)


class ConvBNPReLU(nn.Module):
    """Bias-free ``k x k`` conv, BN, per-channel PReLU."""

    fuse_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    """BN + PReLU applied to concatenated features (:meth:`cat`)."""

    split_norm = False  # see bn_prelu_cat

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.act(self.bn(x))

    def cat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(parts, 1))``, per part when :attr:`split_norm` is set."""
        return bn_prelu_cat(self.bn, self.act, parts, split=self.split_norm)


class ESPModule(nn.Module):
    """Efficient spatial pyramid module (Fig. 1b with HFF).

    Args:
        in_channels: input maps.
        out_channels: output maps ``N``; the first (dilation 1) branch takes the rounding
            remainder so the concatenation has exactly ``N`` maps.
        stride: 2 for the strided (downsampling) ESP module, whose reduction is a 3x3 conv.
        residual: add the input to the fused maps; default when shapes allow it.
    """

    split_norm = False  # see bn_prelu_cat

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 residual: Optional[bool] = None, dilations: Sequence[int] = DILATIONS) -> None:
        super().__init__()
        k = len(dilations)
        n = out_channels // k
        n1 = out_channels - (k - 1) * n
        if n < 1:
            raise ValueError("ESP module needs out_channels >= {}, got {}".format(k, out_channels))
        can_add = stride == 1 and in_channels == out_channels
        if residual is None:
            residual = can_add
        elif residual and not can_add:
            raise ValueError("residual ESP module needs stride 1 and in_channels == out_channels")
        self.residual = residual
        if stride == 1:
            self.reduce = nn.Conv2d(in_channels, n, 1, bias=False)
        else:
            self.reduce = nn.Conv2d(in_channels, n, 3, stride=stride, padding=1, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n1 if i == 0 else n, 3, padding=d, dilation=d, bias=False)
            for i, d in enumerate(dilations))
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        reduced = self.reduce(x)
        outs = [branch(reduced) for branch in self.branches]
        # HFF: add each larger-dilation output to the running sum (removes gridding artefacts).
        fused: List[torch.Tensor] = [outs[0]]
        acc = outs[1]
        fused.append(acc)
        for out in outs[2:]:
            acc = acc + out
            fused.append(acc)
        return bn_prelu_cat(self.bn, self.act, fused, x if self.residual else None, split=self.split_norm)


class EncoderFeatures(NamedTuple):
    """Intermediate ESPNet-C maps the decoder reuses."""

    level1: torch.Tensor  # 16 maps at 1/2
    level1_cat: torch.Tensor  # BN-PReLU(level1 ++ image/2): 16 + 3 maps at 1/2
    level2_cat: torch.Tensor  # 64 + 64 + 3 maps at 1/4
    level3_cat: torch.Tensor  # 128 + 128 maps at 1/8


class ESPNetEncoder(nn.Module):
    """ESPNet-C body with input reinforcement; :meth:`forward` returns 1/8 class maps."""

    def __init__(self, num_classes: int, p: int = 2, q: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        if p < 1 or q < 1:
            raise ValueError("ESPNet needs p >= 1 and q >= 1, got p={} q={}".format(p, q))
        c = in_channels
        self.level1 = ConvBNPReLU(c, 16, 3, stride=2)
        # Input reinforcement: the image average-pooled to each level's resolution.
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.b1 = BNPReLU(16 + c)
        self.level2_0 = ESPModule(16 + c, 64, stride=2)
        self.level2 = nn.Sequential(*[ESPModule(64, 64) for _ in range(p)])
        self.b2 = BNPReLU(128 + c)
        self.level3_0 = ESPModule(128 + c, 128, stride=2)
        self.level3 = nn.Sequential(*[ESPModule(128, 128) for _ in range(q)])
        self.b3 = BNPReLU(256)
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=False)

    def features(self, x: torch.Tensor) -> EncoderFeatures:
        """Level outputs for an input whose height and width are multiples of 8."""
        image2 = self.pool(x)
        image4 = self.pool(image2)
        level1 = self.level1(x)
        level1_cat = self.b1.cat([level1, image2])
        down2 = self.level2_0(level1_cat)
        level2_cat = self.b2.cat([self.level2(down2), down2, image4])
        down3 = self.level3_0(level2_cat)
        level3_cat = self.b3.cat([down3, self.level3(down3)])
        return EncoderFeatures(level1, level1_cat, level2_cat, level3_cat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.classifier(self.features(x).level3_cat)


class ESPNetC(SegmentationNet):
    """ESPNet-C: the encoder alone; class maps at 1/8, bilinearly upsampled to the input size.

    With ``encoder_only = True`` the raw 1/8 class maps are returned (how it is trained).

    Args:
        num_classes: output classes.
        p: ESP modules at level 2 (alpha2).
        q: ESP modules at level 3 (alpha3).
    """

    size_multiple = 8
    encoder_stride = 8
    output_layer = "encoder.classifier"

    def __init__(self, num_classes: int, p: int = 2, q: int = 8, in_channels: int = 3) -> None:
        super().__init__(num_classes)
        self.encoder = ESPNetEncoder(num_classes, p, q, in_channels)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits = self.encoder(x)
        if self.encoder_only:
            return logits
        return F.interpolate(logits, size=(int(x.shape[-2]), int(x.shape[-1])), mode="bilinear",
                             align_corners=False)


class ESPNet(SegmentationNet):
    """ESPNet: ESPNet-C plus the light-weight decoder (0.36M parameters with 20 classes).

    Args:
        num_classes: output classes.
        p: ESP modules at level 2 (alpha2).
        q: ESP modules at level 3 (alpha3).
        decoder_concat_input: the last merge takes the level-1 features concatenated with the
            half-resolution image (the encoder's BN-PReLU'd 16 + 3 maps, as the published CamVid
            model) instead of the 16 level-1 maps alone (the published Cityscapes model).
    """

    size_multiple = 8
    encoder_stride = 8
    output_layer = "classifier"

    def __init__(self, num_classes: int, p: int = 2, q: int = 8, decoder_concat_input: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__(num_classes)
        c = num_classes
        if c < len(DILATIONS):
            raise ValueError("ESPNet's decoder splits the class maps over {} ESP branches: num_classes must be "
                             ">= {} (got {}); use espnet_c for fewer classes".format(len(DILATIONS), len(DILATIONS), c))
        self.decoder_concat_input = bool(decoder_concat_input)
        self.encoder = ESPNetEncoder(num_classes, p, q, in_channels)
        self.l3_bn = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.up_l3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.level2_classifier = nn.Conv2d(128 + in_channels, c, 1, bias=False)
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c), ESPModule(2 * c, c, residual=False))
        # Flat (conv, BN, PReLU) so that fold_batchnorm finds the pair.
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False),
                                   nn.BatchNorm2d(c, eps=_BN_EPS), nn.PReLU(c))
        level1_channels = 16 + in_channels if self.decoder_concat_input else 16
        self.level1_fuse = ConvBNPReLU(level1_channels + c, c, 3)
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        f = self.encoder.features(x)
        level3 = self.encoder.classifier(f.level3_cat)
        if self.encoder_only:
            return level3
        up3 = self.up_l3(self.l3_bn(level3))  # 1/4
        level2 = self.level2_classifier(f.level2_cat)
        combine_norm, combine_esp = self.combine_l2_l3
        up2 = self.up_l2(combine_esp(combine_norm.cat([level2, up3])))  # 1/2
        level1 = f.level1_cat if self.decoder_concat_input else f.level1
        return self.classifier(self.level1_fuse(torch.cat([up2, level1], dim=1)))


def espnet(num_classes: int, **options) -> ESPNet:
    """Build ESPNet (see :class:`ESPNet` for options)."""
    return ESPNet(num_classes, **options)


def espnet_c(num_classes: int, **options) -> ESPNetC:
    """Build ESPNet-C (see :class:`ESPNetC` for options)."""
    return ESPNetC(num_classes, **options)
