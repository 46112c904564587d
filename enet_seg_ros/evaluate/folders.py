"""Labelled image folders: pair camera frames with their label (and instance) files.

- CamVid (SegNet layout): ``--images`` and ``--labels`` hold the same file names; an image
  ``0001TP_008550.png`` (or ``.jpg``) pairs with the label ``0001TP_008550.png``.
- Cityscapes: ``--images`` is ``leftImg8bit/<split>`` (``<city>/<key>_leftImg8bit.png``) and
  ``--labels`` is ``gtFine/<split>`` (``<key>_gtFine_labelIds.png`` + ``_instanceIds.png``),
  both searched recursively; ``<key>`` is ``<city>_<seq>_<frame>``.

Also the pixel readers shared by make-bag and eval-dir (RGB frames, label ids, instance ids).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..io.files import IMAGE_SUFFIXES

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
DATASETS = ("camvid", "cityscapes")


@dataclass(frozen=True)
class LabelledFrame:
    """One camera frame and its ground truth (``label_path`` is None when there is none)."""

    key: str
    image_path: Path
    label_path: Optional[Path] = None
    instance_path: Optional[Path] = None


def find_labelled_frames(dataset: str, images_dir: Path, labels_dir: Path) -> Tuple[List[LabelledFrame], List[Path]]:
    """Frames of a labelled folder in name order, and label files that match no frame.

    Frames without a label file are returned with ``label_path`` None (callers decide whether
    that is allowed). Raises ``FileNotFoundError`` for a missing folder, no images, or no
    frame with a label at all (the message says which names were expected), ``ValueError``
    for two files with the same key.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, folder in (("image", images_dir), ("label", labels_dir)):
        if not folder.is_dir():
            raise FileNotFoundError("{} folder not found: {}".format(what, folder))
    if dataset == "cityscapes":
        images, labels, instances = _cityscapes_files(images_dir, labels_dir)
        expected = "<key>_gtFine_labelIds.png under {} for <key>_leftImg8bit.png".format(labels_dir)
    elif dataset == "camvid":
        images = _by_key({}, images_dir, IMAGE_SUFFIXES, "image")
        labels = _by_key({}, labels_dir, (".png",), "label")
        instances: Dict[str, Path] = {}
        expected = "label PNGs in {} with the image file names".format(labels_dir)
    else:
        raise ValueError("unknown dataset {!r}; expected one of {}".format(dataset, list(DATASETS)))
    if not images:
        raise FileNotFoundError("no images under {} ({})".format(
            images_dir, "*" + CITYSCAPES_IMAGE_SUFFIX if dataset == "cityscapes" else ", ".join(IMAGE_SUFFIXES)))
    frames = [LabelledFrame(k, images[k], labels.get(k), instances.get(k) if k in labels else None)
              for k in sorted(images)]
    if not any(f.label_path for f in frames):
        raise FileNotFoundError("none of the {} images under {} has a label file (expected {})".format(
            len(frames), images_dir, expected))
    orphans = [labels[k] for k in sorted(set(labels) - set(images))]
    return frames, orphans


def _by_key(out: Dict[str, Path], folder: Path, suffixes: Tuple[str, ...], what: str,
            strip: str = "") -> Dict[str, Path]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        name = path.name
        if strip:
            if not name.endswith(strip):
                continue
            key = name[: -len(strip)]
        else:
            key = path.stem
        if key in out:
            raise ValueError("two {} files for {}: {} and {}".format(what, key, out[key], path))
        out[key] = path
    return out


def _cityscapes_files(images_dir: Path, labels_dir: Path):
    from .cityscapes import find_gt_frames

    images = _by_key({}, images_dir, (".png",), "image", strip=CITYSCAPES_IMAGE_SUFFIX)
    try:
        gt = find_gt_frames(labels_dir)
    except FileNotFoundError:
        gt = []
    labels = {f.key: f.label_path for f in gt}
    instances = {f.key: f.instance_path for f in gt if f.instance_path is not None}
    return images, labels, instances


# ------------------------------------------------------------------------------------ pixels
def read_bgr(path: Path) -> np.ndarray:
    """An image file as OpenCV's BGR uint8 (no channel copy); ``ValueError`` naming the file when unreadable."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError("image not found: {}".format(path))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("cannot decode image {} (corrupt or unsupported)".format(path))
    return bgr


def read_rgb(path: Path) -> np.ndarray:
    """An image file as contiguous RGB uint8; ``ValueError`` naming the file when unreadable."""
    return np.ascontiguousarray(read_bgr(path)[:, :, ::-1])


def read_label_ids(path: Path) -> np.ndarray:
    """A label PNG as uint8 dataset label ids; ``ValueError`` naming the file for other content."""
    from .cityscapes import read_label_png

    array = read_label_png(path, "label image")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("label image {} has values outside 0..255 (min {}, max {})".format(
                path, array.min(), array.max()))
        array = array.astype(np.uint8)
    return array


def read_instance_ids(path: Path) -> np.ndarray:
    """A ``*_gtFine_instanceIds.png`` as uint16 (Cityscapes ids reach 33999)."""
    from .cityscapes import read_label_png

    array = read_label_png(path, "instance image")
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError("instance image {} has values outside 0..65535".format(path))
    return array.astype(np.uint16, copy=False)
