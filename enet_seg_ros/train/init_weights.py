"""Initialise a network from another one's weights (``enet-seg train --init``).

The init file may come from the same architecture built with other options, such as ESPNet
without and with ``decoder_concat_input`` (the published Cityscapes and CamVid decoders: the
second one's last merge takes three more input maps, the half-resolution image). A
convolution whose only difference is extra input channels at the end is *widened*: the old
kernel is copied into the leading channels and the new ones start at zero, so the new inputs
add nothing until training gives them weight. (For ESPNet the 16 level-1 maps then also arrive
through the encoder's BN-PReLU, so the start is close to, not equal to, the init network.) Any
other shape difference is an error that names the tensor.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn


def widen_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> List[str]:
    """Widen ``state``'s convolution kernels in place to ``model``'s input channels.

    Args:
        model: the network being initialised.
        state: the init network's state dict (modified in place).

    Returns:
        The names of the widened tensors.

    Raises:
        ValueError: a tensor's shape differs from the model's in any other way.
    """
    own = model.state_dict()
    widened = []
    for key, value in state.items():
        target = own.get(key)
        if target is None or target.shape == value.shape:
            continue
        module_name, _, leaf = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        plain_conv = (type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.groups == 1 and leaf == "weight")
        if (not plain_conv or value.ndim != target.ndim or value.shape[0] != target.shape[0]
                or value.shape[2:] != target.shape[2:] or value.shape[1] > target.shape[1]):
            raise ValueError("--init: {} has shape {} in the init weights but {} in this network; only a "
                             "convolution with extra input channels at the end can be widened (check --arch and "
                             "--option)".format(key, tuple(value.shape), tuple(target.shape)))
        grown = torch.zeros(target.shape, dtype=value.dtype)
        grown[:, :value.shape[1]] = value
        state[key] = grown
        widened.append(key)
    return widened
