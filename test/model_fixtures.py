"""Helpers shared by the model and engine tests."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from enet_seg_ros.data.labels import CAMVID
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, save_model


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN statistics/affine and PReLU slopes non-trivial values (fresh ones are identities),
    so folding / export bugs would show; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def make_test_weights(path: Path, arch: str = "enet", input_size=(160, 120), seed: int = 0) -> Path:
    """Save a randomly initialised small CamVid model (fast, independent of shipped weights)."""
    torch.manual_seed(seed)
    model = build_model(arch, len(CAMVID.class_names))
    return save_model(path, model, ModelCard.for_dataset(arch, CAMVID, list(input_size)))


def shipped_model(arch: str, size, bilinear: bool = False):
    """A shipped CamVid model (trained: its labels are not near-ties as with random weights), in
    eval mode, with its card set to input ``size`` (and bilinear label upsampling if asked)."""
    import dataclasses

    from enet_seg_ros.weights import REPO_MODELS_DIR, load_model

    card_changes = {"input_size": list(size)}
    if bilinear:
        card_changes["label_upsampling"] = "bilinear"
    model, card = load_model(REPO_MODELS_DIR / "{}_camvid.safetensors".format(arch))
    return model.eval(), dataclasses.replace(card, **card_changes)


def street_frames(size, n: int = 3) -> list:
    """Street-like RGB frames (sky, buildings, road, boxes, noise) of ``size``, one seed each."""
    from enet_seg_ros.bench.runner import synthetic_frame

    return [synthetic_frame(size[0], size[1], seed=i) for i in range(n)]
