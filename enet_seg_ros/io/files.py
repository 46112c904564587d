"""File kinds the package reads: image, video and bag suffixes, and image listing."""
from __future__ import annotations

from pathlib import Path
from typing import List

#: Image files read by every folder reader (image_source, eval-dir, int8 calibration, bench).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BAG_SUFFIXES = (".db3", ".mcap")


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix is one of :data:`IMAGE_SUFFIXES` (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(folder: Path, recursive: bool = False) -> List[Path]:
    """The image files of ``folder`` (or its whole tree), sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image_file(p))
