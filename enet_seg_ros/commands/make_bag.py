"""``enet-seg make-bag``: a ROS 2 bag of camera frames with their ground truth in the same bag.

Topics (every message stamped ``start + i / rate``, ``frame_id`` ``camera``, bag time = stamp):

- ``/camera/image_raw`` (``sensor_msgs/Image`` ``rgb8``), or with ``--compressed``
  ``/camera/image_raw/compressed`` (``sensor_msgs/CompressedImage``, JPEG);
- ``/camera/labels_gt``: ``mono8`` dataset label ids (Cityscapes ``*_gtFine_labelIds``,
  CamVid label values), same stamp as the frame;
- ``/camera/instances_gt``: ``mono16`` ``*_gtFine_instanceIds`` (Cityscapes, when the files exist).

Frames without a label file are written without ground truth (a warning counts them), which
``eval-bag`` reports as ``frames_without_gt``.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from ..io.topics import COMPRESSED_SUFFIX, IMAGE_TOPIC, INSTANCES_TOPIC, LABELS_TOPIC
from .common_args import add_dataset_folder_arguments

LOG = logging.getLogger(__name__)

COMPRESSED_TOPIC = IMAGE_TOPIC + COMPRESSED_SUFFIX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the make-bag options."""
    add_dataset_folder_arguments(parser, images_help="camera frames: ")
    parser.add_argument("--out", required=True, type=Path, metavar="BAG", help="new bag folder to create")
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"),
                        help="bag storage (default sqlite3)")
    parser.add_argument("--compressed", action="store_true",
                        help="write frames as sensor_msgs/CompressedImage (JPEG) on {}".format(COMPRESSED_TOPIC))
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="frame rate of the stamps (default 10)")
    parser.add_argument("--jpeg-quality", type=int, default=95, metavar="Q", help="JPEG quality with --compressed")
    parser.add_argument("--start-ns", type=int, default=None, metavar="NS",
                        help="stamp of the first frame in ns since the epoch (default: now, whole seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the bag; returns 0."""
    from tqdm import tqdm

    from ..io.bags import BagWriter, format_stamp
    from ..evaluate.folders import find_labelled_frames, read_instance_ids, read_label_ids, read_rgb

    if not 0 < args.rate <= 1e6:
        raise ValueError("--rate must be in (0, 1e6] Hz, got {}".format(args.rate))
    if not 1 <= args.jpeg_quality <= 100:
        raise ValueError("--jpeg-quality must be in 1..100, got {}".format(args.jpeg_quality))
    frames, orphans = find_labelled_frames(args.dataset, args.images, args.labels)
    unlabelled = [f for f in frames if f.label_path is None]
    if unlabelled:
        LOG.warning("%d of %d frames have no label file and are written without ground truth, e.g. %s",
                    len(unlabelled), len(frames), unlabelled[0].image_path)
    if orphans:
        LOG.warning("%d label files match no image and are not written, e.g. %s", len(orphans), orphans[0])
    start = args.start_ns if args.start_ns is not None else int(time.time()) * 1_000_000_000
    period_ns = 1e9 / args.rate
    out = Path(args.out)
    bag = BagWriter(out, storage=args.storage)  # refuses an existing path: never overwrites
    try:
        with bag:
            for i, frame in enumerate(tqdm(frames, unit="frame", desc="make-bag", disable=args.no_progress)):
                stamp = start + int(round(i * period_ns))
                rgb = read_rgb(frame.image_path)
                if args.compressed:
                    bag.write_compressed(COMPRESSED_TOPIC, rgb, stamp, quality=args.jpeg_quality)
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
    last = start + int(round((len(frames) - 1) * period_ns))
    print("wrote {} ({}): {}; stamps {} .. {}".format(
        out, args.storage, ", ".join("{} x{}".format(t, n) for t, n in sorted(bag.counts.items())),
        format_stamp(start), format_stamp(last)))
    return 0
