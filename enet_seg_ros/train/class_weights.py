"""Class weights for the loss, computed once from the training labels and cached."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np


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
    """Class weights of ``kind`` (``enet``, ``median_freq`` or ``none``), cached by label file list.

    The histogram (the expensive part) is cached in ``cache_dir`` under a hash of the label
    paths and sizes, so every run on the same data reuses it.
    """
    if kind == "none":
        return None
    if kind not in ("enet", "median_freq"):
        raise ValueError("unknown class weighting {!r}".format(kind))
    digest = hashlib.sha256()
    for p in label_paths:
        digest.update(str(p).encode())
        digest.update(str(Path(p).stat().st_size).encode())
    cache = Path(cache_dir) / "class_hist_{}_{}.json".format(num_classes, digest.hexdigest()[:16])
    if cache.is_file():
        data = json.loads(cache.read_text())
        counts, with_class = np.array(data["counts"]), np.array(data["image_pixels_with_class"])
    else:
        counts, with_class = class_histograms(len(label_paths), num_classes, load_label)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"counts": counts.tolist(), "image_pixels_with_class": with_class.tolist()}))
    weights = enet_weights(counts, c) if kind == "enet" else median_frequency_weights(counts, with_class)
    return [float(w) for w in weights]
