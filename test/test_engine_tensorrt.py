"""TensorRT backend: cache keying and stale / corrupt engine detection (no GPU needed),
plus a real engine build that runs only where TensorRT and a GPU exist."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from enet_seg_ros.engine.backends.tensorrt_backend import (ENGINE_SUFFIX, engine_env, engine_fields, fetch_engine,
                                                           tensorrt_status)
from enet_seg_ros.engine.cache import ArtifactCache
from enet_seg_ros.engine.registry import create_backend

MAGIC = b"ENGINE:"


def _deserialize(data: bytes):
    """Stand-in for trt.Runtime.deserialize_cuda_engine: None for bytes it does not accept."""
    return data[len(MAGIC):].decode() if data.startswith(MAGIC) else None


@pytest.fixture()
def cache(tmp_path):
    return ArtifactCache(tmp_path, "tensorrt")


def test_engine_key_covers_weights_size_precision_and_calibration():
    base = engine_fields("a" * 64, "enet", (1280, 720), "fp16")
    variants = [
        engine_fields("b" * 64, "enet", (1280, 720), "fp16"),
        engine_fields("a" * 64, "enet", (640, 360), "fp16"),
        engine_fields("a" * 64, "enet", (1280, 720), "fp32"),
        engine_fields("a" * 64, "enet", (1280, 720), "int8", calibration="c1"),
        engine_fields("a" * 64, "enet", (1280, 720), "int8", calibration="c2"),
    ]
    store = ArtifactCache("/nonexistent", "tensorrt")
    names = {store.paths(f, ENGINE_SUFFIX)[0].name for f in [base] + variants}
    assert len(names) == 6
    assert store.paths(base, ENGINE_SUFFIX)[0].name.startswith("enet-1280x720-fp16_")


def test_cached_engine_is_loaded_when_everything_matches(cache):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    engine, reason = fetch_engine(cache, fields, env, _deserialize)
    assert engine == "net" and reason == ""


@pytest.mark.parametrize("change", [
    {"tensorrt": "10.4.0"},                       # TensorRT upgraded
    {"gpu": "NVIDIA GeForce RTX 4090"},           # copied to another GPU
    {"compute_capability": "8.9"},
])
def test_stale_engine_from_other_tensorrt_or_gpu_is_rebuilt(cache, change):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    engine, reason = fetch_engine(cache, fields, dict(env, **change), _deserialize)
    assert engine is None and "different environment" in reason
    assert not path.exists(), "a stale engine is deleted so it is rebuilt, never trusted"


def test_corrupt_or_undeserialisable_engine_is_rebuilt(cache):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    path.write_bytes(MAGIC + b"nXt")  # bit rot: digest mismatch
    engine, reason = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "hash mismatch" in reason and not path.exists()

    # Bytes whose digest matches but that TensorRT refuses (e.g. truncated at build time).
    path = cache.store(fields, ENGINE_SUFFIX, b"garbage", env)
    engine, reason = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "deserialize" in reason and not path.exists()

    # Missing sidecar (crash between artefact and sidecar write).
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    path.with_name(path.name + ".json").unlink()
    engine, reason = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "sidecar" in reason


def test_sidecar_records_what_the_engine_was_built_for(cache):
    fields = engine_fields("a" * 64, "espnet", (1024, 512), "int8", calibration="abc")
    env = engine_env("8.6.2", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"x", env)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["env"] == {"tensorrt": "8.6.2", "gpu": "Orin", "compute_capability": "8.7"}
    assert meta["fields"]["calibration"] == "abc" and meta["fields"]["size"] == "1024x512"


def test_tensorrt_is_skipped_cleanly_without_a_gpu(tmp_path):
    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is available here; covered by the GPU test")
    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine.source import load_source
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    card = ModelCard.for_dataset("enet", get_label_spec("camvid"), [64, 48])
    source = load_source((build_model("enet", 11), card))
    with pytest.raises(RuntimeError, match="tensorrt-cuda: "):
        create_backend(source, (64, 48), backend="tensorrt", strict=True, cache_dir=tmp_path)
    assert why


def test_real_tensorrt_engine_build_and_reuse(tmp_path):
    ok, why = tensorrt_status()
    if not ok:
        pytest.skip("TensorRT not usable here: " + why)
    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine import Segmenter
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_dataset("enet", get_label_spec("camvid"), [256, 128])
    model = build_model("enet", 11).eval()
    frame = (np.random.default_rng(0).random((128, 256, 3)) * 255).astype(np.uint8)
    ref = Segmenter((model, card), backend="torch", device="cpu", warmup=0).segment(frame).labels
    trt_seg = Segmenter((model, card), backend="tensorrt", precision="fp32", strict=True, cache_dir=tmp_path)
    assert np.mean(trt_seg.segment(frame).labels == ref) > 0.99
    engines = list((tmp_path / "tensorrt").glob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    Segmenter((model, card), backend="tensorrt", precision="fp32", strict=True, cache_dir=tmp_path)
    assert engines[0].stat().st_mtime_ns == mtime
