"""Segmenter + backends: parity, caching, fallback, bad input, geometry, results, threads."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from enet_seg_ros.data.labels import get_label_spec
from enet_seg_ros.engine import UNKNOWN, Segmenter, plan
from enet_seg_ros.engine.backends.base import FAIL_ENV
from enet_seg_ros.engine.preprocess import to_input_resolution, to_model_input
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, Normalization, save_model
from model_fixtures import randomize

torch.set_num_threads(1)  # 2 shared cores: more threads only oversubscribe them
REPO = Path(__file__).resolve().parents[1]


def _camvid_card(arch: str, size=(96, 64), **kwargs) -> ModelCard:
    norm = Normalization(channel_order="bgr", mean=[110.3, 108.4, 105.0], std=[72.1, 72.7, 69.9], scale=1 / 255.0)
    return ModelCard.for_dataset(arch, get_label_spec("camvid"), list(size), normalization=norm, **kwargs)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    """A random ENet (11 CamVid classes, 96x64 input, BGR normalisation) saved as safetensors."""
    torch.manual_seed(0)
    model = randomize(build_model("enet", 11))
    return save_model(tmp_path_factory.mktemp("w") / "enet_small.safetensors", model, _camvid_card("enet"))


def _frame(h=64, w=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    return np.ascontiguousarray(img)


# -- backend parity on a real CamVid frame -------------------------------------------------------

def _parity_weights(tmp_path: Path, espnet_reference_dir: Path) -> Path:
    shipped = REPO / "models" / "enet_camvid.safetensors"
    if shipped.is_file():
        return shipped
    ckpt = espnet_reference_dir / "camvid" / "espnet_p_2_q_8_camvid.pth"
    try:
        from enet_seg_ros.nets.espnet_reference import load_reference, make_card
    except ImportError:
        ckpt = None
    if ckpt is not None and ckpt.is_file():
        model, info = load_reference(ckpt)
        return save_model(tmp_path / "espnet_camvid.safetensors", model, make_card(info, "camvid", ckpt))
    torch.manual_seed(0)
    return save_model(tmp_path / "enet_random.safetensors", randomize(build_model("enet", 11)),
                      _camvid_card("enet", (480, 360)))


def test_torch_and_onnxruntime_agree_on_a_camvid_frame(tmp_path, cache, camvid_root, espnet_reference):
    weights = _parity_weights(tmp_path, espnet_reference)
    frame_bgr = cv2.imread(str(sorted((camvid_root / "val").glob("*.png"))[0]), cv2.IMREAD_COLOR)
    results = {}
    for backend in ("torch", "onnxruntime"):  # OpenVINO: test_engine_openvino.py (its own process)
        # fp32 asked: the shipped card's validated int8 would otherwise be a candidate of auto here.
        seg = Segmenter(weights, backend=backend, device="cpu", precision="fp32", strict=True, confidence=True,
                        warmup=0)
        assert seg.backend_name == backend and seg.precision == "fp32"
        results[backend] = seg.segment(frame_bgr, channel_order="bgr")
    a, b = results["torch"], results["onnxruntime"]
    assert a.labels.shape == b.labels.shape == frame_bgr.shape[:2]
    agree = float(np.mean(a.labels == b.labels))
    assert agree >= 0.999, "torch vs onnxruntime labels agree on only {:.4%} of pixels".format(agree)
    # fp32 kernels differ (oneDNN vs MLAS): softmax confidences agree to float noise almost
    # everywhere; a handful of pixels near decision ties may differ by a few 1e-3.
    diff = np.abs(a.confidence - b.confidence)
    assert float(np.quantile(diff, 0.999)) < 1e-3
    assert float(diff.max()) < 1e-2
    # A real model on a real frame predicts several classes, not a constant map.
    assert len(a.present_classes()) >= 3


# -- ONNX cache: hit, corrupt file, unloadable file --------------------------------------------------

def _onnx_files(cache: Path):
    return sorted((cache / "onnx").glob("*.onnx"))


def test_onnx_cache_hit_then_rebuild_when_corrupt(small_weights, cache, caplog):
    frame = _frame()
    caplog.set_level(logging.INFO, logger="enet_seg_ros")
    first = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    expected = first.segment(frame).labels
    files = _onnx_files(cache)
    assert len(files) == 1 and "exporting" in caplog.text
    mtime = files[0].stat().st_mtime_ns

    caplog.clear()
    second = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    assert "exporting" not in caplog.text, "a valid cache entry must be reused"
    assert files[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.segment(frame).labels, expected)

    # Truncate the cached graph: the digest check catches it and the graph is re-exported.
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    caplog.clear()
    third = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    assert "corrupt" in caplog.text and "exporting" in caplog.text
    assert files[0].read_bytes() == data
    np.testing.assert_array_equal(third.segment(frame).labels, expected)


def test_onnx_cache_rebuilds_a_file_onnxruntime_cannot_load(small_weights, cache, caplog):
    import json

    from enet_seg_ros.engine.cache import sha256_file

    Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    path = _onnx_files(cache)[0]
    good = path.read_bytes()
    # Garbage whose sidecar digest matches: only ONNX Runtime itself can tell it is broken.
    path.write_bytes(b"not an onnx graph" * 10)
    meta_path = path.with_name(path.name + ".json")
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = sha256_file(path)
    meta_path.write_text(json.dumps(meta))
    caplog.set_level(logging.WARNING, logger="enet_seg_ros")
    seg = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    assert seg.backend_name == "onnxruntime"
    assert "could not load" in caplog.text
    assert path.read_bytes() == good


def test_cache_key_separates_weights_sizes_and_variants(small_weights, tmp_path, cache):
    Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0, input_size=(64, 48))
    Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0, confidence=True)
    torch.manual_seed(1)
    other = save_model(tmp_path / "other.safetensors", randomize(build_model("enet", 11), seed=1),
                       _camvid_card("enet"))
    Segmenter(other, backend="onnxruntime", strict=True, warmup=0)
    assert len(_onnx_files(cache)) == 4


# -- fallback chain -----------------------------------------------------------------------------------

def test_auto_picks_the_first_usable_cpu_backend_and_logs_skips(small_weights, cache, caplog):
    from enet_seg_ros.engine.registry import probe

    caplog.set_level(logging.INFO, logger="enet_seg_ros")
    seg = Segmenter(small_weights, backend="auto", warmup=0)
    if torch.cuda.is_available():
        pytest.skip("this test describes the CPU-only chain")
    # OpenVINO (x86, installed) comes before ONNX Runtime in the auto chain.
    expected = "openvino" if probe("openvino", "cpu", for_auto=True) is None else "onnxruntime"
    assert seg.backend_name == expected and seg.device == "cpu"
    assert "tensorrt-cuda" in seg.backend.skipped and "torch-cuda" in seg.backend.skipped
    assert "inference backend: " + expected in caplog.text
    assert seg.selection_reason.startswith(expected + " on cpu (first usable backend of the auto chain")


def test_fallback_when_a_backend_is_forced_to_fail(small_weights, cache, caplog, monkeypatch):
    frame = _frame()
    reference = Segmenter(small_weights, backend="torch", strict=True, warmup=0).segment(frame).labels
    caplog.set_level(logging.WARNING, logger="enet_seg_ros")
    monkeypatch.setenv(FAIL_ENV, "onnxruntime,openvino")
    seg = Segmenter(small_weights, backend="auto", warmup=0)
    assert seg.backend_name == "torch"
    assert "onnxruntime-cpu failed to initialise" in caplog.text
    np.testing.assert_array_equal(seg.segment(frame).labels, reference)
    # An explicit choice falls back too (not strict).
    assert Segmenter(small_weights, backend="onnxruntime", warmup=0).backend_name == "torch"
    with pytest.raises(RuntimeError, match="forced to fail"):
        Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    monkeypatch.setenv(FAIL_ENV, "onnxruntime,openvino,torch")
    with pytest.raises(RuntimeError, match="no inference backend"):
        Segmenter(small_weights, backend="auto", warmup=0)


def test_fallback_on_a_real_failure_unwritable_cache(small_weights, tmp_path, monkeypatch, caplog):
    # The cache "directory" is a regular file: exporting the ONNX graph really fails.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("ENET_SEG_CACHE", str(blocker / "cache"))
    caplog.set_level(logging.WARNING, logger="enet_seg_ros")
    seg = Segmenter(small_weights, backend="auto", device="cpu", warmup=0)
    assert seg.backend_name == "torch"
    assert "onnxruntime-cpu failed to initialise" in caplog.text
    assert seg.segment(_frame()).labels.shape == (64, 96)


def test_unavailable_precision_is_skipped_not_crashed(small_weights, cache):
    # fp16 exists on no CPU backend: the error lists every candidate's reason.
    with pytest.raises(RuntimeError, match="torch-cpu: torch fp16 needs CUDA"):
        Segmenter(small_weights, backend="auto", precision="fp16", device="cpu", warmup=0)
    with pytest.raises(RuntimeError, match="calibration"):
        Segmenter(small_weights, backend="onnxruntime", precision="int8", device="cpu", strict=True, warmup=0)


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("image, message", [
    (np.zeros((64, 96, 3), np.float32), "dtype uint8"),
    (np.zeros((64, 96), np.uint8), "shape"),
    (np.zeros((64, 96, 4), np.uint8), "3 colour channels"),
    (np.zeros((0, 96, 3), np.uint8), "empty"),
    (np.zeros((64, 96 * 2, 3), np.uint8)[:, ::2], "C-contiguous"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_raise_clear_value_errors(small_weights, cache, image, message):
    seg = Segmenter(small_weights, backend="torch", warmup=0)
    with pytest.raises(ValueError, match=message):
        seg.segment(image)


def test_bad_arguments(small_weights, cache):
    seg = Segmenter(small_weights, backend="torch", warmup=0)
    with pytest.raises(ValueError, match="channel_order"):
        seg.segment(_frame(), channel_order="rgba")
    with pytest.raises(ValueError, match="output"):
        seg.segment(_frame(), output="camera")
    with pytest.raises(ValueError, match="resize policy"):
        Segmenter(small_weights, backend="torch", resize_policy="squash", warmup=0)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        Segmenter(small_weights, backend="torch", input_size="640by360", warmup=0)
    with pytest.raises(ValueError, match="precision must be"):
        Segmenter(small_weights, backend="torch", precision="fp8", warmup=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter(small_weights, backend="coreml", warmup=0)
    with pytest.raises(ValueError, match="weights file not found"):
        Segmenter(small_weights.with_name("missing.safetensors"))


def test_huge_frame_is_downscaled_and_labels_come_back_full_size(small_weights, cache):
    seg = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    big = cv2.resize(_frame(), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    full = seg.segment(big)
    model = seg.segment(big, output="model")
    assert full.labels.shape == (3000, 4000) and model.labels.shape == (64, 96)
    # Full-size labels are exactly the model labels mapped back nearest-neighbour.
    np.testing.assert_array_equal(full.labels, cv2.resize(model.labels, (4000, 3000),
                                                          interpolation=cv2.INTER_NEAREST_EXACT))
    assert full.geometry.scale == pytest.approx((96 / 4000, 64 / 3000))


# -- geometry ------------------------------------------------------------------------------------------

def test_stretch_letterbox_crop_map_back_exactly():
    # Stretch by 2: every model pixel becomes a 2x2 block.
    g = plan((192, 128), (96, 64), "stretch")
    model_labels = np.arange(96 * 64, dtype=np.int32).reshape(64, 96) % 11
    back = to_input_resolution(model_labels.astype(np.uint8), g, UNKNOWN)
    np.testing.assert_array_equal(back, np.repeat(np.repeat(model_labels, 2, 0), 2, 1))

    # Letterbox: 100x50 frame into 64x64 -> 64x32 content pasted at y=16; the pad is dropped.
    g = plan((100, 50), (64, 64), "letterbox")
    assert g.resized_size == (64, 32) and g.paste == (0, 16) and g.offset == (0.0, 16.0)
    labels = np.full((64, 64), 7, np.uint8)
    labels[16:48] = 1
    back = to_input_resolution(labels, g, UNKNOWN)
    assert back.shape == (50, 100) and np.all(back == 1)
    frame = np.full((50, 100, 3), 200, np.uint8)
    x = to_model_input(frame, g, swap_rb=False, fill=(10, 20, 30))
    assert np.all(x[:16] == (10, 20, 30)) and np.all(x[16:48] == 200) and np.all(x[48:] == (10, 20, 30))

    # Centre crop: 100x50 frame, 64x64 model -> 128x64 resize, window at x=32; sides unknown.
    g = plan((100, 50), (64, 64), "center_crop")
    assert g.resized_size == (128, 64) and g.crop == (32, 0) and g.offset == (-32.0, 0.0)
    back = to_input_resolution(np.ones((64, 64), np.uint8), g, UNKNOWN)
    assert back.shape == (50, 100)
    assert np.all(back[:, :25] == UNKNOWN) and np.all(back[:, 25:75] == 1) and np.all(back[:, 75:] == UNKNOWN)
    x0, _ = g.to_model(25.0, 0.0)
    assert x0 == pytest.approx(0.0) and g.to_input(*g.to_model(33.0, 7.0)) == pytest.approx((33.0, 7.0))


def test_model_intrinsics_follow_the_geometry():
    k = [[500.0, 0.0, 319.5], [0.0, 500.0, 179.5], [0.0, 0.0, 1.0]]
    g = plan((640, 360), (320, 180), "stretch")
    km = g.model_intrinsics(k)
    assert km[0, 0] == pytest.approx(250.0) and km[1, 1] == pytest.approx(250.0)
    # The optical centre of the frame is the centre of the model image.
    assert km[0, 2] == pytest.approx(159.5) and km[1, 2] == pytest.approx(89.5)
    g = plan((640, 360), (360, 360), "center_crop")  # 640x360 -> crop 140 px each side
    km = g.model_intrinsics(k)
    assert km[0, 2] == pytest.approx(319.5 - 140) and km[0, 0] == pytest.approx(500.0)


def test_letterbox_and_center_crop_policies_run_end_to_end(small_weights, cache):
    frame = _frame(60, 160)
    for policy in ("letterbox", "center_crop"):
        seg = Segmenter(small_weights, backend="onnxruntime", strict=True, resize_policy=policy, warmup=0)
        res = seg.segment(frame)
        assert res.labels.shape == (60, 160) and res.geometry.policy == policy
        if policy == "center_crop":
            assert (res.labels == UNKNOWN).any() and (res.labels != UNKNOWN).any()
        else:
            assert not (res.labels == UNKNOWN).any()


# -- results, channel order, batches, threads --------------------------------------------------------

def test_result_colour_overlay_and_stats(small_weights, cache):
    seg = Segmenter(small_weights, backend="torch", confidence=True, warmup=0)
    frame = _frame()
    res = seg.segment(frame)
    color = res.color()
    assert res._colors() is res._colors(), "colour is computed once and cached"
    assert color is not res.color() and np.array_equal(color, res.color()), "each caller gets its own copy"
    palette = np.asarray(seg.palette, np.uint8)
    np.testing.assert_array_equal(color, palette[res.labels])
    over = res.overlay(frame, 0.25)
    expected = np.clip(np.round(0.75 * frame.astype(np.float64) + 0.25 * color), 0, 255)
    assert np.abs(over.astype(np.int16) - expected).max() <= 1
    stats = res.class_stats()
    assert list(stats) == seg.class_names
    assert sum(s["pixels"] for s in stats.values()) == res.labels.size
    assert sum(s["fraction"] for s in stats.values()) == pytest.approx(1.0)
    top = max(stats.values(), key=lambda s: s["pixels"])
    mask = res.labels == top["id"]
    assert top["mean_confidence"] == pytest.approx(float(res.confidence[mask].mean()), rel=1e-5)
    assert np.all((res.confidence > 1.0 / 11 - 1e-6) & (res.confidence <= 1.0 + 1e-6))
    with pytest.raises(ValueError, match="labels are"):
        res.overlay(_frame(32, 48), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        res.overlay(frame, 1.5)


def test_channel_order_rgb_and_bgr_give_the_same_labels(small_weights, cache):
    seg = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    rgb = _frame(seed=3)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(seg.segment(rgb, "rgb").labels, seg.segment(bgr, "bgr").labels)
    assert not np.array_equal(seg.segment(rgb, "rgb").labels, seg.segment(bgr, "rgb").labels)


def test_segment_batch_matches_single_frames(small_weights, cache):
    seg = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    frames = [_frame(seed=i) for i in range(3)] + [_frame(120, 200, seed=9)]
    batch = seg.segment_batch(frames)
    for f, r in zip(frames, batch):
        np.testing.assert_array_equal(r.labels, seg.segment(f).labels)
        assert r.labels.shape == f.shape[:2]
    assert seg.segment_batch([]) == []


def test_segment_is_thread_safe(small_weights, cache):
    seg = Segmenter(small_weights, backend="onnxruntime", strict=True, warmup=0)
    frames = [_frame(seed=i) for i in range(4)]
    expected = [seg.segment(f).labels for f in frames]
    errors = []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                np.testing.assert_array_equal(seg.segment(frames[k]).labels, expected[k])
        except Exception as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_model_and_card_pair_and_bilinear_upsampling(cache):
    torch.manual_seed(0)
    model = randomize(build_model("enet", 11))
    card = _camvid_card("enet", (64, 48), label_upsampling="bilinear")
    seg = Segmenter((model, card), backend="torch", warmup=0)
    frame = _frame(96, 128)
    res = seg.segment(frame)
    assert res.labels.shape == (96, 128) and res.labels.max() < 11
    # Same as upsampling the logits with torch (bilinear, half-pixel centres) then argmax.
    batch = cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA)[None, ..., ::-1].copy()  # card is BGR
    logits = torch.from_numpy(seg.backend.infer(batch)["logits"])
    ref = torch.nn.functional.interpolate(logits, size=(96, 128), mode="bilinear", align_corners=False)
    assert np.mean(res.labels == ref.argmax(1)[0].numpy()) > 0.995


def test_torch_bf16_mode_if_the_cpu_supports_it(small_weights, cache):
    from enet_seg_ros.engine.cpu import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("CPU has no AVX512-BF16 / AMX")
    frame = _frame()
    ref = Segmenter(small_weights, backend="torch", warmup=0).segment(frame).labels
    got = Segmenter(small_weights, backend="torch", precision="bf16", strict=True, warmup=0).segment(frame).labels
    assert np.mean(got == ref) > 0.8  # lossy; real agreement on CamVid is measured by the benchmark
