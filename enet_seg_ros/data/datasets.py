"""Segmentation datasets: CamVid (SegNet layout) and Cityscapes (leftImg8bit + gtFine).

Both yield ``(image uint8 HxWx3 RGB, label uint8 HxW in train ids)`` pairs; augmentation and
normalisation live in :mod:`enet_seg_ros.data.transforms`. Discovery checks the whole dataset
before any training starts and reports the first offending files.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from .labels import CAMVID, CITYSCAPES, LabelSpec

_T = TypeVar("_T")
_R = TypeVar("_R")


def map_decoding(fn: Callable[[_T], _R], items: Sequence[_T], max_workers: int = 8) -> Iterator[_R]:
    """``fn`` over ``items``, results in order, on up to ``max_workers`` threads.

    For file decoding: OpenCV's imread / resize release the GIL, so a 16-core GPU host decodes
    CamVid's 468 frames in a few seconds instead of ~15 s on one thread.
    """
    workers = max(1, min(max_workers, os.cpu_count() or 1, len(items)))
    if workers == 1:
        yield from (fn(x) for x in items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
Pair = Tuple[Path, Path]


class DatasetError(ValueError):
    """The dataset on disk is incomplete or inconsistent."""


def _fail(problem: str, files: Sequence[object]) -> None:
    shown = ", ".join(str(f) for f in list(files)[:5])
    more = " (and {} more)".format(len(files) - 5) if len(files) > 5 else ""
    raise DatasetError("{}: {}{}".format(problem, shown, more))


def camvid_pairs(root: os.PathLike, split: str) -> List[Pair]:
    """CamVid SegNet layout: ``<root>/<split>/X.png`` with ``<root>/<split>annot/X.png``."""
    root = Path(root)
    image_dir, label_dir = root / split, root / (split + "annot")
    if not image_dir.is_dir():
        raise DatasetError("CamVid split folder not found: {}".format(image_dir))
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DatasetError("no images in {}".format(image_dir))
    labels = [label_dir / (p.stem + ".png") for p in images]
    missing = [str(lab) for lab in labels if not lab.is_file()]
    if missing:
        _fail("missing CamVid label files", missing)
    return list(zip(images, labels))


def cityscapes_pairs(root: os.PathLike, split: str) -> List[Pair]:
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``."""
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DatasetError("Cityscapes image folder not found: {}".format(image_dir))
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError("no *_leftImg8bit.png under {}".format(image_dir))
    pairs, missing = [], []
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / img.parent.name / (stem + "_gtFine_labelIds.png")
        (pairs if label.is_file() else missing).append((img, label) if label.is_file() else str(label))
    if missing:
        _fail("missing Cityscapes label files", missing)
    return pairs


def read_image_rgb(path: os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; clear error for unreadable files."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError("cannot read image {}".format(path))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: os.PathLike) -> np.ndarray:
    """Read a single-channel uint8 label PNG."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError("cannot read label {}".format(path))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError("label {} must be single-channel uint8, got shape {} {}".format(path, label.shape, label.dtype))
    return label


class SegmentationDataset:
    """A list of (image, label) files plus the label spec that maps label values to train ids.

    Args:
        pairs: (image path, label path) pairs.
        spec: label spec (maps dataset ids to train ids; unknown ids become ignore).
        cache: keep decoded frames in memory (CamVid fits easily: ~200 MB).
    """

    def __init__(self, pairs: Sequence[Pair], spec: LabelSpec, cache: bool = False) -> None:
        if not pairs:
            raise DatasetError("empty dataset")
        self.pairs = list(pairs)
        self.spec = spec
        self._cache: Optional[List[Optional[Tuple[np.ndarray, np.ndarray]]]] = [None] * len(pairs) if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Decoded (RGB image, train-id label) of one frame."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        image_path, label_path = self.pairs[index]
        image, label = read_image_rgb(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError("size mismatch: {} is {} but {} is {}".format(
                image_path, image.shape[:2], label_path, label.shape))
        item = (image, self.spec.to_train_ids(label))
        if self._cache is not None:
            self._cache[index] = item
        return item

    def clear_cache(self) -> None:
        """Free the decoded frames kept by ``cache=True`` (e.g. once copied into a FrameStore)."""
        if self._cache is not None:
            self._cache = [None] * len(self.pairs)

    def check(self, max_files: Optional[int] = None) -> None:
        """Read every label (and image header) once; raise listing the first bad files.

        Checks: readable files, image/label size match, label values known to the spec.
        """
        lut_known = np.zeros(256, dtype=bool)
        lut_known[list(self.spec.valid_ids)] = True
        # Problem kind -> offending files; the first non-empty kind, in this order, is raised.
        unreadable, size, value = "unreadable files", "image/label size mismatch", \
            "unknown label values for {}".format(self.spec.dataset)
        problems: Dict[str, List[str]] = {unreadable: [], size: [], value: []}

        def inspect(pair: Pair) -> Optional[Tuple[str, str]]:
            image_path, label_path = pair
            try:
                label = read_label(label_path)
                image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
                if image is None:
                    raise DatasetError("cannot read image {}".format(image_path))
            except DatasetError as exc:
                return unreadable, str(exc)
            if image.shape[:2] != label.shape:
                return size, "{} ({} vs label {})".format(image_path, image.shape[:2], label.shape)
            values = np.unique(label)
            unknown = values[~lut_known[values]]
            if unknown.size:
                return value, "{} (values {})".format(label_path, unknown.tolist()[:5])
            return None

        for problem in map_decoding(inspect, self.pairs[:max_files]):
            if problem is not None:
                problems[problem[0]].append(problem[1])
        for kind, files in problems.items():
            if files:
                _fail(kind, files)


def build_dataset(name: str, root: os.PathLike, split: str, cache: bool = False) -> SegmentationDataset:
    """Dataset ``name`` (``camvid`` or ``cityscapes``) for ``split`` under ``root``."""
    name = name.lower()
    if name == "camvid":
        return SegmentationDataset(camvid_pairs(root, split), CAMVID, cache=cache)
    if name == "cityscapes":
        return SegmentationDataset(cityscapes_pairs(root, split), CITYSCAPES, cache=cache)
    raise DatasetError("unknown dataset {!r}; expected camvid or cityscapes".format(name))
