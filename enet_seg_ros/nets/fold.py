"""Inference forms of a network: BatchNorm folded into the preceding convolution, a logit offset into
the output layer, BatchNorm on a concatenation applied per part."""
from __future__ import annotations

import copy
from typing import Iterator, Tuple

import torch
from torch import nn

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _fold_into(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    weight = conv.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1:
            raise ValueError("cannot fold BN into a grouped transposed conv")
        weight = weight * scale.view(1, -1, 1, 1)  # (in, out, kh, kw)
    else:
        weight = weight * scale.view(-1, 1, 1, 1)  # (out, in/groups, kh, kw)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight = nn.Parameter(weight)
    conv.bias = nn.Parameter(bias * scale + shift)


def _pairs(module: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """(parent, conv_name, bn_name) for every directly consecutive conv -> BN pair.

    Sequential containers are scanned automatically; other modules list their pairs in a
    ``fuse_pairs`` attribute of (conv attribute, bn attribute) names.
    """
    for parent in module.modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(parent._modules[a], _CONVS) and isinstance(parent._modules[b], nn.BatchNorm2d):
                    yield parent, a, b
        for conv_name, bn_name in getattr(parent, "fuse_pairs", ()):
            yield parent, conv_name, bn_name


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return an eval-mode copy of ``model`` with each BN folded into its conv (BN removed, or Identity where it is a named attribute).

    A network's ``logit_offset`` (see ``SegmentationNet``) is folded too, into the bias of its
    ``output_layer``: a separate Add after the last convolution cost OpenVINO's int8 graphs
    10 ms per 480x360 frame (measured, BENCHMARKS.md), a bias costs nothing.

    Outputs are equal to the unfolded model in eval mode up to float rounding; the folded
    model has fewer modules and runs faster. BNs that follow no convolution are kept.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        for parent, conv_name, bn_name in list(_pairs(model)):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, _CONVS):
                _fold_into(conv, bn)
                if isinstance(parent, nn.Sequential):
                    del parent._modules[bn_name]  # Sequential runs whatever children remain
                else:
                    setattr(parent, bn_name, nn.Identity())
        _fold_logit_offset(model)
    return model


def _fold_logit_offset(model: nn.Module) -> None:
    """Add ``model.logit_offset`` to the bias of ``model.output_layer`` and drop the offset."""
    offset = getattr(model, "logit_offset", None)
    path = getattr(model, "output_layer", "")
    if offset is None or not path:
        return
    layer = model.get_submodule(path)
    if not isinstance(layer, _CONVS) or layer.out_channels != offset.numel():
        raise ValueError("{}.{} is not a convolution with {} outputs: cannot fold the logit offset"
                         .format(type(model).__name__, path, offset.numel()))
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(offset)
    layer.bias = nn.Parameter(bias + offset.to(bias.dtype))
    model.logit_offset = None


def split_concat_norms(model: nn.Module) -> nn.Module:
    """Have every module with a ``split_norm`` switch (ESPNet's BN + PReLU after a concatenation)
    apply them per part before concatenating; returns ``model`` (changed in place).

    Same outputs in eval mode (BN and PReLU are per channel); faster where a runtime fuses each
    part's BN + PReLU into the convolution that made it (see ``espnet.bn_prelu_cat``). Training
    mode keeps the concatenated form.
    """
    for module in model.modules():
        if hasattr(type(module), "split_norm"):
            module.split_norm = True
    return model
