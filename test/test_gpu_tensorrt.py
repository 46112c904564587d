"""TensorRT engines built and run for real: needs an NVIDIA GPU, torch CUDA and the tensorrt
package (torch2trt for its tests); skips elsewhere naming what is missing.

Never run yet (no GPU with TensorRT was available while writing it): see README, Jetson.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from enet_seg_ros.engine import Segmenter
from enet_seg_ros.engine.backends.tensorrt_backend import ENGINE_SUFFIX, have_torch2trt, tensorrt_status
from model_fixtures import shipped_model, street_frames

_OK, _WHY = tensorrt_status()
pytestmark = pytest.mark.skipif(not _OK, reason="TensorRT not usable here: {}".format(_WHY))
ARCHS = ("enet", "erfnet", "espnet")
SIZE = (256, 128)


def _model(arch: str, bilinear: bool = False):
    return shipped_model(arch, SIZE, bilinear)


def _frames(n: int = 3, size=SIZE) -> list:
    return street_frames(size, n)


def _trt(model, card, cache, **kw):
    return Segmenter((model, card), backend="tensorrt", strict=True, cache_dir=cache, **kw)


def _engines(cache):
    return sorted((cache / "tensorrt").glob("*" + ENGINE_SUFFIX))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision,floor", [("fp32", 0.99), ("fp16", 0.97)])
def test_labels_agree_with_torch_cuda(tmp_path, arch, precision, floor):
    model, card = _model(arch)
    frames = _frames()
    ref = Segmenter((model, card), backend="torch", device="cuda", precision="fp32", cuda_graphs=False)
    seg = _trt(model, card, tmp_path, precision=precision)
    assert seg.backend.builder == "onnx" and seg.backend.details["cached"] is False
    for f in frames:
        assert np.mean(seg.segment(f).labels == ref.segment(f).labels) >= floor


def test_builder_recorded_and_reported_on_cache_hits(tmp_path):
    import json

    model, card = _model("espnet")
    first = _trt(model, card, tmp_path, precision="fp32")
    (engine,) = _engines(tmp_path)
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert meta["info"]["builder"] == first.backend.builder == "onnx"
    assert meta["env"]["gpu"] == torch.cuda.get_device_name(0)
    mtime = engine.stat().st_mtime_ns
    again = _trt(model, card, tmp_path, precision="fp32")
    assert again.backend.details["cached"] is True and again.backend.builder == "onnx"
    assert engine.stat().st_mtime_ns == mtime


@pytest.mark.skipif(not have_torch2trt(), reason="torch2trt not installed")
def test_torch2trt_failure_midway_falls_back_to_onnx_and_leaves_torch_unpatched(tmp_path, monkeypatch):
    import torch.nn.functional as F
    import torch2trt.torch2trt as t2t

    originals = {name: getattr(F, name) for name in ("conv2d", "max_pool2d", "interpolate", "prelu")}
    original_cat = torch.cat
    converter = next(c for c in t2t.CONVERTERS.values() if c["qual_name"].endswith("conv_transpose2d"))

    def broken(ctx):
        raise RuntimeError("converter exploded midway")

    monkeypatch.setitem(converter, "converter", broken)
    model, card = _model("espnet")
    seg = _trt(model, card, tmp_path, precision="fp32", builder="torch2trt")
    assert seg.backend.builder == "onnx"
    assert all(getattr(F, n) is f for n, f in originals.items()) and torch.cat is original_cat
    ref = Segmenter((model, card), backend="torch", device="cuda", precision="fp32")
    frame = _frames(1)[0]
    assert np.mean(seg.segment(frame).labels == ref.segment(frame).labels) >= 0.99


@pytest.mark.skipif(not have_torch2trt(), reason="torch2trt not installed")
def test_torch2trt_is_refused_for_archs_it_misconverts(tmp_path):
    model, card = _model("enet")
    seg = _trt(model, card, tmp_path, precision="fp32", builder="torch2trt")
    assert seg.backend.builder == "onnx"


def test_int8_from_a_qdq_onnx_graph(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from enet_seg_ros.engine.export import export_onnx_bytes
    from enet_seg_ros.engine.source import load_source

    model, card = _model("enet")
    source = load_source((model, card))
    fp32 = tmp_path / "net.onnx"
    fp32.write_bytes(export_onnx_bytes(source, SIZE, flavour="network"))
    norm = card.normalization
    mean = np.array(norm.mean, np.float32).reshape(1, 3, 1, 1)
    factor = np.array([norm.scale / s for s in norm.std], np.float32).reshape(1, 3, 1, 1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": (f.transpose(2, 0, 1)[None].astype(np.float32) - mean) * factor}
                               for f in _frames(4)])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "net.qdq.onnx"
    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    seg = _trt(model, card, tmp_path / "cache", precision="int8", qdq_onnx=qdq)
    assert seg.precision == "int8" and seg.backend.builder == "onnx"
    assert seg.backend.fields["calibration"].startswith("qdq:")
    ref = Segmenter((model, card), backend="torch", device="cuda", precision="fp32")
    frame = _frames(1)[0]
    assert np.mean(seg.segment(frame).labels == ref.segment(frame).labels) >= 0.9


def test_logits_batch_slices_equal_single_frames(tmp_path):
    model, card = _model("erfnet", bilinear=True)
    frames = _frames(3)
    seg = _trt(model, card, tmp_path, precision="fp32", confidence=True)
    batch = seg.segment_batch(frames)
    for f, b in zip(frames, batch):
        one = seg.segment(f)
        assert np.array_equal(one.labels, b.labels)
        np.testing.assert_allclose(one.confidence, b.confidence, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(batch[0].labels, batch[-1].labels)


def test_confidence_output_matches_torch(tmp_path):
    model, card = _model("enet")
    frame = _frames(1)[0]
    ref = Segmenter((model, card), backend="torch", device="cuda", precision="fp32", confidence=True)
    seg = _trt(model, card, tmp_path, precision="fp32", confidence=True)
    got, want = seg.segment(frame), ref.segment(frame)
    assert got.confidence.dtype == np.float32 and got.confidence.shape == frame.shape[:2]
    same = got.labels == want.labels
    np.testing.assert_allclose(got.confidence[same], want.confidence[same], atol=2e-2)


def test_stale_or_corrupt_engine_is_rebuilt(tmp_path):
    model, card = _model("espnet")
    frame = _frames(1)[0]
    want = _trt(model, card, tmp_path, precision="fp32").segment(frame).labels
    (engine,) = _engines(tmp_path)
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])  # truncated
    seg = _trt(model, card, tmp_path, precision="fp32")
    assert seg.backend.details["cached"] is False
    assert np.array_equal(seg.segment(frame).labels, want)


def test_engine_io_dtypes_and_shapes(tmp_path):
    model, card = _model("enet")
    w, h = SIZE
    for precision in ("fp32", "fp16"):
        runner = _trt(model, card, tmp_path, precision=precision).backend._runner
        assert runner.in_shape == (1, 3, h, w) and runner.out_shape == (1, card.num_classes, h, w)
        assert runner.in_dtype in (torch.float32, torch.float16) and runner.out_dtype.is_floating_point
        with pytest.raises(ValueError, match="engine input"):
            runner(torch.zeros(1, 3, h + 1, w, device="cuda"))
        with pytest.raises(ValueError, match="engine input"):
            runner(torch.zeros(1, 3, h, w, device="cuda", dtype=torch.int32))


def test_engine_runs_on_a_non_default_stream(tmp_path):
    model, card = _model("enet")
    seg = _trt(model, card, tmp_path, precision="fp16")
    assert seg.backend._stream.cuda_stream != torch.cuda.default_stream().cuda_stream
    frame = _frames(1)[0]
    ref = seg.segment(frame).labels
    with torch.cuda.stream(torch.cuda.Stream()):
        assert np.array_equal(seg.segment(frame).labels, ref)


def test_two_threads_segmenting_at_once(tmp_path):
    model, card = _model("enet")
    frames = _frames(4)
    seg = _trt(model, card, tmp_path, precision="fp16")
    expected = [seg.segment(f).labels for f in frames]
    errors = []

    def work(k):
        for _ in range(10):
            for i in (k, k + 2):
                if not np.array_equal(seg.segment(frames[i]).labels, expected[i]):
                    errors.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def test_exported_engine_loads_in_a_fresh_runtime(tmp_path):
    from enet_seg_ros.weights import save_model

    model, card = _model("espnet")
    weights = save_model(tmp_path / "espnet.safetensors", model, card)
    out = tmp_path / "espnet.engine"
    env = {"ENET_SEG_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "enet_seg_ros.cli", "export", "--weights", str(weights), "--format",
                          "tensorrt", "--precision", "fp16", "--out", str(out)], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=600)
    assert run.returncode == 0, run.stderr
    code = ("import sys, tensorrt as trt; rt = trt.Runtime(trt.Logger(trt.Logger.WARNING)); "
            "e = rt.deserialize_cuda_engine(open(sys.argv[1], 'rb').read()); "
            "print(e.num_io_tensors, [e.get_tensor_name(i) for i in range(e.num_io_tensors)])")
    fresh = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert "2 ['input', 'logits']" in fresh.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_builds_and_runs_there(tmp_path):
    model, card = _model("enet")
    seg = _trt(model, card, tmp_path, precision="fp32", device="cuda:1")
    assert seg.device == "cuda:1" and seg.backend._runner.out.device == torch.device("cuda", 1)
    assert seg.backend.env["gpu"] == torch.cuda.get_device_name(1)
    frame = _frames(1)[0]
    ref = Segmenter((model, card), backend="torch", device="cuda:1", precision="fp32")
    assert np.mean(seg.segment(frame).labels == ref.segment(frame).labels) >= 0.99


def test_int8_from_calibration_images_goes_through_the_qdq_quantiser(tmp_path):
    """Without an explicit Q/DQ file, the quantiser of `enet-seg quantize` makes the graph."""
    import cv2

    calib = tmp_path / "calib"
    calib.mkdir()
    for i, frame in enumerate(_frames(4)):
        cv2.imwrite(str(calib / "f{}.png".format(i)), frame[..., ::-1])
    model, card = _model("espnet")
    seg = _trt(model, card, tmp_path / "cache", precision="int8", calibration=calib)
    assert seg.precision == "int8" and seg.backend.fields["calibration"].startswith("calib:")
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx")), "the Q/DQ graph is cached"
    ref = Segmenter((model, card), backend="torch", device="cuda", precision="fp32")
    frame = _frames(1)[0]
    assert np.mean(seg.segment(frame).labels == ref.segment(frame).labels) >= 0.9
