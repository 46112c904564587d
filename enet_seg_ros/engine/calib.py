"""Calibration frames for int8 modes: a folder of images -> model-size uint8 frames."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import List, Tuple, Union

import cv2
import numpy as np

from ..io.files import IMAGE_SUFFIXES
from .preprocess import plan, to_model_input

PathLike = Union[str, os.PathLike]


def calibration_files(folder: PathLike, limit: int = 32) -> List[Path]:
    """Up to ``limit`` image files of ``folder`` (recursively), evenly spread over the sorted list."""
    root = Path(folder)
    if limit < 1:
        raise ValueError("the number of calibration frames must be >= 1, got {}".format(limit))
    if not root.is_dir():
        raise FileNotFoundError("{}: calibration folder not found".format(root))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError("{}: no images ({}) for int8 calibration".format(root, ", ".join(IMAGE_SUFFIXES)))
    if len(files) > limit:
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in idx]
    return files


def calibration_digest(folder: PathLike, limit: int = 32) -> str:
    """A short digest of the chosen calibration files (names and sizes): part of cache keys."""
    digest = hashlib.sha256(str(limit).encode())
    for p in calibration_files(folder, limit):
        digest.update("{}:{}".format(p.name, p.stat().st_size).encode())
    return digest.hexdigest()[:16]


def calibration_frames(folder: PathLike, model_size: Tuple[int, int], policy: str, channel_order: str,
                       fill: Tuple[int, int, int] = (0, 0, 0), limit: int = 32) -> List[np.ndarray]:
    """Read and preprocess calibration images exactly as :class:`Segmenter` would.

    ``channel_order`` is the network's; ``fill`` the letterbox colour in that order.
    """
    frames = []
    for p in calibration_files(folder, limit):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("{}: unreadable calibration image".format(p))
        geometry = plan((bgr.shape[1], bgr.shape[0]), model_size, policy)
        frames.append(to_model_input(bgr, geometry, swap_rb=channel_order == "rgb", fill=fill))
    return frames
