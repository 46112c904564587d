"""Class weights for the loss, computed once from the training labels and cached."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

log = logging.getLogger("enet_seg_ros.train")


def class_histograms(num_labels: int, num_classes: int, load_label: Callable[[int], np.ndarray]):
    """Pixel counts per class and, per class, the pixel count of the images containing it."""
    counts = np.zeros(num_classes, dtype=np.int64)
    image_pixels_with_class = np.zeros(num_classes, dtype=np.int64)
    for i in range(num_labels):
        label = load_label(i)
        hist = np.bincount(label.reshape(-1), minlength=256)[:num_classes]
        counts += hist
        image_pixels_with_class += (hist > 0) * label.size
    return counts, image_pixels_with_class


def enet_weights(counts: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet weighting ``1 / ln(c + p_class)`` with ``p_class`` the class' pixel frequency."""
    p = counts / max(1, counts.sum())
    return (1.0 / np.log(c + p)).astype(np.float32)


def median_frequency_weights(counts: np.ndarray, image_pixels_with_class: np.ndarray) -> np.ndarray:
    """SegNet's median frequency balancing: ``median(freq) / freq(c)`` (absent classes get 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(image_pixels_with_class > 0, counts / np.maximum(image_pixels_with_class, 1), 0.0)
    present = freq[freq > 0]
    median = np.median(present) if present.size else 1.0
    with np.errstate(divide="ignore"):
        return np.where(freq > 0, median / np.maximum(freq, 1e-12), 0.0).astype(np.float32)


def cached_class_weights(kind: str, label_paths: Sequence[Path], num_classes: int,
                         load_label: Callable[[int], np.ndarray], cache_dir: Path, c: float = 1.02) -> Optional[List[float]]:
    """Class weights of ``kind`` (``enet``, ``median_freq`` or ``none``), cached by label files.

    The histogram (the expensive part: decoding every label) is cached in ``cache_dir`` under a
    hash of the label paths and their bytes, so every run on the same data reuses it and any
    edited, added or removed label file gives a new cache entry.
    """
    if kind == "none":
        return None
    if kind not in ("enet", "median_freq"):
        raise ValueError("unknown class weighting {!r}".format(kind))
    cache = Path(cache_dir) / "class_hist_{}_{}.json".format(num_classes, label_digest(label_paths))
    cached = _read_histogram(cache, num_classes)
    if cached is not None:
        counts, with_class = cached
    else:
        counts, with_class = class_histograms(len(label_paths), num_classes, load_label)
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: DDP ranks compute this concurrently and may read while another writes.
        tmp = cache.with_name("{}.{}.tmp".format(cache.name, os.getpid()))
        tmp.write_text(json.dumps({"counts": counts.tolist(), "image_pixels_with_class": with_class.tolist()}))
        os.replace(tmp, cache)
    weights = enet_weights(counts, c) if kind == "enet" else median_frequency_weights(counts, with_class)
    return [float(w) for w in weights]


def label_digest(label_paths: Sequence[Path]) -> str:
    """Short hash of the label file names and contents (reading bytes is cheap next to decoding)."""
    digest = hashlib.sha256()
    for p in label_paths:
        digest.update(str(p).encode())
        digest.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return digest.hexdigest()[:16]


def _read_histogram(cache: Path, num_classes: int):
    """(counts, image_pixels_with_class) from a cache file, or None when absent or unusable."""
    if not cache.is_file():
        return None
    try:
        data = json.loads(cache.read_text())
        counts = np.asarray(data["counts"], dtype=np.int64)
        with_class = np.asarray(data["image_pixels_with_class"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable class histogram cache %s (%s)", cache, exc)
        return None
    if counts.shape != (num_classes,) or with_class.shape != (num_classes,):
        log.warning("ignoring class histogram cache %s: wrong number of classes", cache)
        return None
    return counts, with_class
