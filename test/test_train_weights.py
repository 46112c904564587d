"""Class weights: ENet ``1/ln(c + p)`` and SegNet median-frequency weights against hand computations,
and the histogram cache (reused across runs, invalidated when label files change, robust to damage)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

from enet_seg_ros.train.class_weights import (
    cached_class_weights,
    class_histograms,
    enet_weights,
    median_frequency_weights,
)

IGNORE = 11  # CamVid "Unlabelled"; class_histograms only counts values < num_classes
NUM_CLASSES = 11


def _labels() -> List[np.ndarray]:
    """Two 4x5 label maps. A: 10 x class 0, 6 x class 1, 4 ignored. B: 4 x class 0, 12 x class 2, 4 ignored."""
    a = np.array([[0] * 5, [0] * 5, [1] * 5, [1, IGNORE, IGNORE, IGNORE, IGNORE]], np.uint8)
    b = np.array([[2] * 5, [2] * 5, [2, 2, 0, 0, 0], [0, IGNORE, IGNORE, IGNORE, IGNORE]], np.uint8)
    assert ((a == 0).sum(), (a == 1).sum(), (a == IGNORE).sum()) == (10, 6, 4)
    assert ((b == 0).sum(), (b == 2).sum(), (b == IGNORE).sum()) == (4, 12, 4)
    return [a, b]


def test_histograms_by_hand():
    labels = _labels()
    counts, with_class = class_histograms(2, NUM_CLASSES, lambda i: labels[i])
    assert counts.tolist() == [14, 6, 12] + [0] * 8
    # class 0 is in both 20-pixel frames, class 1 only in A, class 2 only in B
    assert with_class.tolist() == [40, 20, 20] + [0] * 8


def test_enet_weights_by_hand():
    counts = np.array([14, 6, 12] + [0] * 8)
    w = enet_weights(counts, c=1.02)
    # p = 14/32, 6/32, 12/32; absent classes get 1 / ln(1.02)
    expected = [1 / math.log(1.02 + 0.4375), 1 / math.log(1.02 + 0.1875), 1 / math.log(1.02 + 0.375)]
    np.testing.assert_allclose(w[:3], expected, rtol=1e-6)
    np.testing.assert_allclose(w[3:], 1 / math.log(1.02), rtol=1e-6)
    assert w.dtype == np.float32
    # ERFNet / ESPNet's c = 1.10 bounds the weights more tightly (max 1 / ln 1.10 = 10.49)
    w110 = enet_weights(counts, c=1.10)
    np.testing.assert_allclose(w110[1], 1 / math.log(1.10 + 0.1875), rtol=1e-6)
    assert w110.max() == pytest.approx(1 / math.log(1.10), rel=1e-6)


def test_median_frequency_by_hand():
    counts = np.array([14, 6, 12] + [0] * 8)
    with_class = np.array([40, 20, 20] + [0] * 8)
    w = median_frequency_weights(counts, with_class)
    # freq = 14/40 = 0.35, 6/20 = 0.3, 12/20 = 0.6; median 0.35
    np.testing.assert_allclose(w[:3], [1.0, 0.35 / 0.3, 0.35 / 0.6], rtol=1e-6)
    assert (w[3:] == 0).all()  # absent classes get no weight


def _write_labels(folder: Path, labels: List[np.ndarray]) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, lab in enumerate(labels):
        p = folder / "frame_{}.png".format(i)
        # Uncompressed PNG: the byte size depends only on the dimensions, so a content change
        # keeps the file size (a cache keyed on sizes would miss it).
        assert cv2.imwrite(str(p), lab, [cv2.IMWRITE_PNG_COMPRESSION, 0])
        paths.append(p)
    return paths


class _Loader:
    """Reads label files and counts how often it was asked (histogram recomputations)."""

    def __init__(self, paths: List[Path]) -> None:
        self.paths, self.calls = paths, 0

    def __call__(self, i: int) -> np.ndarray:
        self.calls += 1
        return cv2.imread(str(self.paths[i]), cv2.IMREAD_UNCHANGED)


def test_cache_reused_and_invalidated(tmp_path):
    paths = _write_labels(tmp_path / "labels", _labels())
    cache_dir = tmp_path / "cache"
    loader = _Loader(paths)
    first = cached_class_weights("enet", paths, NUM_CLASSES, loader, cache_dir, c=1.02)
    assert loader.calls == 2
    np.testing.assert_allclose(first[:3], [1 / math.log(1.02 + p) for p in (0.4375, 0.1875, 0.375)], rtol=1e-6)
    files = list(cache_dir.glob("class_hist_*.json"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    cached = json.loads(files[0].read_text())
    assert cached["counts"][:3] == [14, 6, 12]

    # Second run (and the other weighting kind): served from the cache, labels never decoded.
    def must_not_load(i):
        raise AssertionError("histogram recomputed although cached")

    assert cached_class_weights("enet", paths, NUM_CLASSES, must_not_load, cache_dir, c=1.02) == first
    median = cached_class_weights("median_freq", paths, NUM_CLASSES, must_not_load, cache_dir)
    np.testing.assert_allclose(median[:3], [1.0, 0.35 / 0.3, 0.35 / 0.6], rtol=1e-6)

    # The cache file really is what is read: edited counts change the weights.
    cached["counts"][1] = 14
    files[0].write_text(json.dumps(cached))
    edited = cached_class_weights("enet", paths, NUM_CLASSES, must_not_load, cache_dir, c=1.02)
    assert edited[1] == pytest.approx(edited[0]) and edited[1] != pytest.approx(first[1])

    # A changed label file (same byte size) gives a new cache entry and fresh counts.
    size = paths[1].stat().st_size
    changed = _labels()
    changed[1][changed[1] == 2] = 1  # class 2 -> class 1 in frame B
    _write_labels(tmp_path / "labels", changed)
    assert paths[1].stat().st_size == size
    loader2 = _Loader(paths)
    after = cached_class_weights("enet", paths, NUM_CLASSES, loader2, cache_dir, c=1.02)
    assert loader2.calls == 2
    assert len(list(cache_dir.glob("class_hist_*.json"))) == 2
    np.testing.assert_allclose(after[:3], [1 / math.log(1.02 + 14 / 32), 1 / math.log(1.02 + 18 / 32),
                                           1 / math.log(1.02)], rtol=1e-6)

    # A label file added to the list is another data set: another entry.
    extra = _write_labels(tmp_path / "more", [_labels()[0]])
    loader3 = _Loader(paths + extra)
    cached_class_weights("enet", paths + extra, NUM_CLASSES, loader3, cache_dir)
    assert loader3.calls == 3


def test_damaged_cache_is_recomputed(tmp_path, caplog):
    paths = _write_labels(tmp_path / "labels", _labels())
    cache_dir = tmp_path / "cache"
    good = cached_class_weights("enet", paths, NUM_CLASSES, _Loader(paths), cache_dir)
    cache = next(cache_dir.glob("class_hist_*.json"))
    for damage in ("{not json", json.dumps({"counts": [1, 2]}), json.dumps({"counts": [1] * 11})):
        cache.write_text(damage)
        loader = _Loader(paths)
        assert cached_class_weights("enet", paths, NUM_CLASSES, loader, cache_dir) == good
        assert loader.calls == 2
    assert "ignoring" in caplog.text


def test_weighting_kinds(tmp_path):
    paths = _write_labels(tmp_path / "labels", _labels())
    assert cached_class_weights("none", paths, NUM_CLASSES, _Loader(paths), tmp_path / "c") is None
    with pytest.raises(ValueError, match="unknown class weighting"):
        cached_class_weights("inverse", paths, NUM_CLASSES, _Loader(paths), tmp_path / "c")
