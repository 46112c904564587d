"""Write a labelled folder (CamVid or Cityscapes layout) as a ROS 2 bag of camera frames and
ground truth (``enet-seg make-bag``), so ``eval-bag``, ``image_source`` and ``eval_node`` can
replay it: frames on ``/camera/image_raw`` (or ``.../compressed``), label ids on
``/camera/labels_gt`` (``mono8``), Cityscapes instance ids on ``/camera/instances_gt``
(``mono16``), all of a frame with the same header stamp."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

from ..io.bags import HEADER_STAMP_LIMIT_NS, BagWriter
from ..io.topics import COMPRESSED_IMAGE_TOPIC, IMAGE_TOPIC, INSTANCES_TOPIC, LABELS_TOPIC
from .folders import find_labelled_frames, read_instance_ids, read_label_ids, read_rgb

LOG = logging.getLogger(__name__)


@dataclass
class WrittenBag:
    """What :func:`write_dataset_bag` wrote: message counts per topic and the first / last stamps."""

    path: Path
    storage: str
    counts: Dict[str, int]
    first_stamp_ns: int
    last_stamp_ns: int


def write_dataset_bag(dataset: str, images: Union[str, Path], labels: Union[str, Path], out: Union[str, Path], *,
                      storage: str = "sqlite3", compressed: bool = False, rate_hz: float = 10.0,
                      jpeg_quality: int = 95, start_ns: Optional[int] = None, progress: bool = True) -> WrittenBag:
    """Write the bag (a new folder ``out``; a half-written one is removed on any error).

    Frames are stamped ``start_ns + i / rate_hz`` (default start: now, whole seconds).
    """
    from tqdm import tqdm

    if not 0 < rate_hz <= 1e6:
        raise ValueError("--rate must be in (0, 1e6] Hz, got {}".format(rate_hz))
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("--jpeg-quality must be in 1..100, got {}".format(jpeg_quality))
    frames, orphans = find_labelled_frames(dataset, Path(images), Path(labels))
    unlabelled = [f for f in frames if f.label_path is None]
    if unlabelled:
        LOG.warning("%d of %d frames have no label file and are written without ground truth, e.g. %s",
                    len(unlabelled), len(frames), unlabelled[0].image_path)
    if orphans:
        LOG.warning("%d label files match no image and are not written, e.g. %s", len(orphans), orphans[0])
    start = start_ns if start_ns is not None else int(time.time()) * 1_000_000_000
    period_ns = 1e9 / rate_hz
    last = start + int(round(max(len(frames) - 1, 0) * period_ns))
    if start < 0 or last >= HEADER_STAMP_LIMIT_NS:
        # A ROS 2 header stamp holds whole seconds as int32: nothing before the epoch or after 2038.
        raise ValueError("--start-ns {} gives stamps {} .. {} ns; every stamp must lie in [0, {}) ns (a ROS 2 "
                         "header's int32 seconds)".format(start, start, last, HEADER_STAMP_LIMIT_NS))
    out = Path(out)
    bag = BagWriter(out, storage=storage)  # refuses an existing path: never overwrites
    try:
        with bag:
            for i, frame in enumerate(tqdm(frames, unit="frame", desc="make-bag", disable=not progress)):
                stamp = start + int(round(i * period_ns))
                rgb = read_rgb(frame.image_path)
                if compressed:
                    bag.write_compressed(COMPRESSED_IMAGE_TOPIC, rgb, stamp, quality=jpeg_quality)
                else:
                    bag.write_image(IMAGE_TOPIC, rgb, "rgb8", stamp)
                if frame.label_path is not None:
                    bag.write_image(LABELS_TOPIC, read_label_ids(frame.label_path), "mono8", stamp)
                if frame.instance_path is not None:
                    bag.write_image(INSTANCES_TOPIC, read_instance_ids(frame.instance_path), "mono16", stamp)
    except BaseException:
        # A half-written bag would later be scored as if complete: remove the folder we created.
        shutil.rmtree(out, ignore_errors=True)
        raise
    return WrittenBag(out, storage, dict(bag.counts), start, start + int(round((len(frames) - 1) * period_ns)))
