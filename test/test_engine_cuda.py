"""torch-CUDA backend (the fast path without TensorRT): fp16, channels_last, CUDA graphs,
pinned overlapped upload / download on the backend's own streams.

Runs wherever torch sees a CUDA device (TensorRT not needed); skips elsewhere naming what is
missing. Labels are compared with the torch CPU fp32 reference on a real-looking frame.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from enet_seg_ros.engine import Segmenter
from model_fixtures import shipped_model, street_frames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")
ARCHS = ("enet", "erfnet", "espnet")
SIZE = (320, 192)


def _model(arch: str, bilinear: bool = False):
    return shipped_model(arch, SIZE, bilinear)


def _frames(n: int = 3, size=SIZE) -> list:
    return street_frames(size, n)


def _cpu_labels(model, card, frames):
    seg = Segmenter((model, card), backend="torch", device="cpu", precision="fp32", warmup=0)
    return [seg.segment(f, output="model").labels for f in frames]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision,floor", [("fp32", 0.99), ("fp16", 0.97)])
def test_cuda_labels_agree_with_cpu_fp32(arch, precision, floor):
    model, card = _model(arch)
    frames = _frames()
    ref = _cpu_labels(model, card, frames)
    for graphs in (True, False):
        seg = Segmenter((model, card), backend="torch", device="cuda", precision=precision, strict=True,
                        cuda_graphs=graphs)
        assert seg.backend.details["cuda_graphs"] is graphs
        assert seg.backend.details["channels_last"] is True
        got = [r.labels for r in seg.segment_batch(frames, output="model")]
        for g, r in zip(got, ref):
            assert np.mean(g == r) >= floor, (arch, precision, graphs)
        seg.close()


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_cudnn_benchmark_is_scoped_and_labels_match_heuristics(graphs):
    """cuDNN benchmark mode (default on CUDA) leaves the process-wide flag as it found it and gives
    the labels that heuristically chosen algorithms give."""
    model, card = _model("erfnet")
    frames = _frames(2)
    before = torch.backends.cudnn.benchmark
    tuned = Segmenter((model, card), backend="torch", device="cuda", precision="fp16", cuda_graphs=graphs)
    plain = Segmenter((model, card), backend="torch", device="cuda", precision="fp16", cuda_graphs=graphs,
                      cudnn_benchmark=False)
    assert tuned.backend.details["cudnn_benchmark"] is True and plain.backend.details["cudnn_benchmark"] is False
    for f in frames:
        assert np.mean(tuned.segment(f, output="model").labels == plain.segment(f, output="model").labels) >= 0.995
    assert torch.backends.cudnn.benchmark is before
    tuned.close()
    plain.close()


def test_graph_replay_equals_eager_and_batches_equal_single_frames():
    model, card = _model("enet")
    frames = _frames(5)
    eager = Segmenter((model, card), backend="torch", device="cuda", precision="fp16", cuda_graphs=False)
    graphs = Segmenter((model, card), backend="torch", device="cuda", precision="fp16", cuda_graphs=True,
                       confidence=True)
    singles = [graphs.segment(f, output="model") for f in frames]
    batch = graphs.segment_batch(frames, output="model")  # two pipeline slots, 5 frames: order kept
    for s, b, f in zip(singles, batch, frames):
        assert np.array_equal(s.labels, b.labels) and np.array_equal(s.confidence, b.confidence)
        # Same weights and kernels; allow a handful of argmax ties to fall either way.
        assert np.mean(eager.segment(f, output="model").labels == s.labels) >= 0.999
        assert s.confidence.dtype == np.float32 and 0.0 < s.confidence.min() <= s.confidence.max() <= 1.0


def test_logits_batch_slices_equal_single_frames():
    model, card = _model("erfnet", bilinear=True)
    frames = _frames(3)
    seg = Segmenter((model, card), backend="torch", device="cuda", precision="fp32", confidence=True)
    batch = seg.segment_batch(frames)
    for f, b in zip(frames, batch):
        one = seg.segment(f)
        assert np.array_equal(one.labels, b.labels)
        np.testing.assert_allclose(one.confidence, b.confidence, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(batch[0].labels, batch[-1].labels), "frames differ, so must their labels"


def test_backend_runs_on_its_own_streams_not_the_default_one():
    model, card = _model("espnet")
    seg = Segmenter((model, card), backend="torch", device="cuda", warmup=1)
    pipe = seg.backend._pipeline
    default = torch.cuda.default_stream()
    for s in (pipe.upload, pipe.compute, pipe.download):
        assert s.cuda_stream != default.cuda_stream
    frame = _frames(1)[0]
    ref = seg.segment(frame).labels
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # a caller on another current stream gets the same labels
        assert np.array_equal(seg.segment(frame).labels, ref)


def test_two_threads_segmenting_at_once_get_their_own_results():
    model, card = _model("enet")
    frames = _frames(4)
    seg = Segmenter((model, card), backend="torch", device="cuda", precision="fp16")
    expected = [seg.segment(f).labels for f in frames]
    errors, done = [], []

    def work(k: int) -> None:
        try:
            for _ in range(10):
                for i in (k, k + 2):
                    if not np.array_equal(seg.segment(frames[i]).labels, expected[i]):
                        errors.append((k, i))
            done.append(k)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(done) == [0, 1]


def test_bad_batch_is_a_clear_error():
    model, card = _model("enet")
    seg = Segmenter((model, card), backend="torch", device="cuda")
    w, h = SIZE
    with pytest.raises(ValueError, match="uint8"):
        seg.backend.infer(np.zeros((1, h, w, 3), np.float32))
    with pytest.raises(ValueError, match="expected"):
        seg.backend.infer(np.zeros((1, h + 1, w, 3), np.uint8))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_is_used_when_asked():
    model, card = _model("enet")
    seg = Segmenter((model, card), backend="torch", device="cuda:1", strict=True)
    assert next(seg.backend.graph.model.parameters()).device == torch.device("cuda", 1)
    assert seg.backend._pipeline.device == torch.device("cuda", 1)
    frame = _frames(1)[0]
    ref = _cpu_labels(model, card, [frame])[0]
    assert np.mean(seg.segment(frame, output="model").labels == ref) >= 0.97
