"""``enet-seg export``: ONNX round trip (full and network graphs, int8) and the TensorRT error path."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from enet_seg_ros.commands import export as export_cmd
from enet_seg_ros.data.labels import get_label_spec
from enet_seg_ros.engine import Segmenter
from enet_seg_ros.engine.backends.tensorrt_backend import tensorrt_status
from enet_seg_ros.engine.export import export_onnx_bytes, read_onnx_card
from enet_seg_ros.engine.graph import compare_argmax
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, Normalization, save_model

torch.set_num_threads(1)


def _export(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    return export_cmd.run(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("espnet", 12).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    norm = Normalization(channel_order="bgr", mean=[110.3, 108.4, 105.0], std=[72.1, 72.7, 69.9], scale=1 / 255.0)
    card = ModelCard.for_dataset("espnet", get_label_spec("camvid"), [96, 64], normalization=norm,
                                 extra_classes=("void",))
    return save_model(tmp_path_factory.mktemp("w") / "espnet.safetensors", model, card)


def _frame(seed=0):
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(cv2.resize(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8), (96, 64)))


def test_onnx_full_graph_round_trip(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("ENET_SEG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model.onnx"
    assert _export("--weights", str(weights), "--format", "onnx", "--out", str(out), "--confidence") == 0
    card = read_onnx_card(out)
    assert card.arch == "espnet" and card.num_classes == 12 and card.input_size == [96, 64]
    # ESPNet's BN + PReLU after each concatenation is exported per part (nets.split_concat_norms):
    # the network concatenates activated parts only (without it: conv and Add outputs).
    graph = onnx.load(str(out)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    concats = [n for n in graph.node if n.op_type == "Concat" and n.name.startswith("/model/")]
    assert len(concats) == 12 + 3 + 2 + 1  # ESP modules, encoder BN-PReLUs, decoder (ESP, BN-PReLU, last merge)
    assert {made_by[i] for n in concats for i in n.input} == {"PRelu"}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["labels", "confidence"]
    seg = Segmenter(weights, backend="torch", confidence=True, warmup=0)
    frames = [_frame(i) for i in range(2)]
    # The graph takes NHWC uint8 in the card's channel order (BGR here) and a dynamic batch.
    labels, conf = sess.run(None, {"image": np.stack([f[..., ::-1] for f in frames])})
    assert labels.dtype == np.uint8 and labels.shape == (2, 64, 96)
    for i, f in enumerate(frames):
        ref = seg.segment(f, "rgb", output="model")
        assert np.mean(labels[i] == ref.labels) >= 0.999
        assert np.abs(conf[i] - ref.confidence).max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compare_argmax_is_argmax_including_ties(dtype):
    # Few distinct values -> many ties, where a wrong tie-break would show.
    logits = torch.randint(-2, 3, (2, 12, 17, 23)).to(dtype)
    logits[0, :, 0, 0] = 1  # all classes tied: class 0 wins
    labels = compare_argmax(logits)
    assert labels.dtype == torch.uint8
    torch.testing.assert_close(labels, logits.argmax(dim=1).to(torch.uint8), rtol=0, atol=0)
    assert int(labels[0, 0, 0]) == 0


def test_compare_argmax_graph_gives_the_same_labels_in_onnx_runtime(weights):
    from enet_seg_ros.engine.source import load_source

    source = load_source(weights)
    native = ort.InferenceSession(export_onnx_bytes(source, (96, 64)), providers=["CPUExecutionProvider"])
    compare = ort.InferenceSession(export_onnx_bytes(source, (96, 64), argmax="compare", with_confidence=True),
                                   providers=["CPUExecutionProvider"])
    assert "ArgMax" not in {n.op_type for n in onnx.load_from_string(
        export_onnx_bytes(source, (96, 64), argmax="compare")).graph.node}
    batch = np.stack([_frame(i) for i in range(3)])
    np.testing.assert_array_equal(compare.run(None, {"image": batch})[0], native.run(None, {"image": batch})[0])
    with pytest.raises(ValueError, match="argmax must be one of"):
        export_onnx_bytes(source, (96, 64), argmax="topk")


def test_onnx_network_graph_round_trip(weights, tmp_path):
    out = tmp_path / "net.onnx"
    assert _export("--weights", str(weights), "--format", "onnx", "--graph", "network", "--size", "64x48",
                   "--out", str(out)) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input"]
    from enet_seg_ros.weights import load_model

    net, _ = load_model(weights)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 12, 48, 64) and np.abs(got - ref).max() < 1e-3


def test_onnx_int8_export_needs_and_uses_calibration(weights, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="--calib"):
        _export("--weights", str(weights), "--format", "onnx", "--precision", "int8", "--out", str(out))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        cv2.imwrite(str(calib / "{}.png".format(i)), _frame(10 + i))
    assert _export("--weights", str(weights), "--format", "onnx", "--precision", "int8", "--calib", str(calib),
                   "--out", str(out)) == 0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    labels = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"image": _frame(1)[None, ..., ::-1].copy()})[0]
    ref = Segmenter(weights, backend="torch", warmup=0).segment(_frame(1), output="model").labels
    assert labels.shape == (1, 64, 96) and np.mean(labels[0] == ref) > 0.5


def test_tensorrt_export_without_tensorrt_is_a_clear_error(weights, tmp_path):
    ok, _ = tensorrt_status()
    if ok:
        pytest.skip("TensorRT present: the real export is exercised by test_engine_tensorrt")
    with pytest.raises(RuntimeError, match="TensorRT export needs an NVIDIA GPU"):
        _export("--weights", str(weights), "--format", "tensorrt", "--out", str(tmp_path / "m.engine"))


def test_export_rejects_bad_requests(weights, tmp_path):
    with pytest.raises(ValueError, match="fp32 or int8"):
        _export("--weights", str(weights), "--format", "onnx", "--precision", "fp16", "--out", str(tmp_path / "a"))
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        _export("--weights", str(weights), "--format", "onnx", "--size", "big", "--out", str(tmp_path / "a"))
    with pytest.raises(ValueError, match="not found"):
        _export("--weights", str(tmp_path / "none.safetensors"), "--format", "onnx", "--out", str(tmp_path / "a"))
