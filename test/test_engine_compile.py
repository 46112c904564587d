"""Opt-in ``torch.compile`` path of the torch backend (slow to compile: kept in its own file)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from enet_seg_ros.data.labels import get_label_spec
from enet_seg_ros.engine import Segmenter
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard

torch.set_num_threads(2)


@pytest.mark.timeout(300)
def test_compiled_torch_backend_matches_eager():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile needs a C++ compiler")
    torch.manual_seed(0)
    model = build_model("espnet", 11).eval()
    card = ModelCard.for_dataset("espnet", get_label_spec("camvid"), [96, 64])
    frame = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    plain = Segmenter((model, card), backend="torch", warmup=0)
    compiled = Segmenter((model, card), backend="torch", compile=True, confidence=False, warmup=0)
    assert compiled.backend.details.get("compiled") is True
    a, b = plain.segment(frame).labels, compiled.segment(frame).labels
    assert a.shape == b.shape == (64, 96)
    assert np.mean(a == b) >= 0.999
    # Several compiled Segmenters share dynamo's per-process cache: the backend makes room so
    # the ninth compiled model (bench: 3 nets x 2 precisions x sizes) is not silently run eager.
    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 0))
    assert limit >= 64


@pytest.mark.timeout(300)
def test_seg_node_torch_compile_parameter():
    """seg_node's ``torch_compile`` reaches the torch backend (compiled, same labels) and is
    ignored by the other backends."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile needs a C++ compiler")
    from enet_seg_ros.ros.seg_node import PARAMS, build_segmenter

    cfg = {spec.name: spec.default for spec in PARAMS}
    cfg.update(weights="espnet_camvid", backend="torch", input_size=[96, 64], confidence=False)
    frame = (np.random.default_rng(1).random((64, 96, 3)) * 255).astype(np.uint8)
    plain = build_segmenter(cfg)
    assert not plain.backend.details.get("compiled")
    compiled = build_segmenter(dict(cfg, torch_compile=True))
    assert compiled.backend.details.get("compiled") is True
    assert np.mean(plain.segment(frame).labels == compiled.segment(frame).labels) >= 0.999
    other = build_segmenter(dict(cfg, torch_compile=True, backend="onnxruntime", backend_strict=True))
    assert other.backend_name == "onnxruntime" and other.segment(frame).labels.shape == (64, 96)
