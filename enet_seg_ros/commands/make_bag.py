"""``enet-seg make-bag``: a ROS 2 bag of camera frames with their ground truth in the same bag.

Topics (every message stamped ``start + i / rate``, ``frame_id`` ``camera``, bag time = stamp):

- ``/camera/image_raw`` (``sensor_msgs/Image`` ``rgb8``), or with ``--compressed``
  ``/camera/image_raw/compressed`` (``sensor_msgs/CompressedImage``, JPEG);
- ``/camera/labels_gt``: ``mono8`` dataset label ids (Cityscapes ``*_gtFine_labelIds``,
  CamVid label values), same stamp as the frame;
- ``/camera/instances_gt``: ``mono16`` ``*_gtFine_instanceIds`` (Cityscapes, when the files exist).

Frames without a label file are written without ground truth (a warning counts them), which
``eval-bag`` reports as ``frames_without_gt``. The writing is
:func:`enet_seg_ros.evaluate.dataset_bag.write_dataset_bag`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io.topics import COMPRESSED_IMAGE_TOPIC
from .common_args import add_dataset_folder_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the make-bag options."""
    add_dataset_folder_arguments(parser, images_help="camera frames: ")
    parser.add_argument("--out", required=True, type=Path, metavar="BAG", help="new bag folder to create")
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"),
                        help="bag storage (default sqlite3)")
    parser.add_argument("--compressed", action="store_true",
                        help="write frames as sensor_msgs/CompressedImage (JPEG) on {}".format(COMPRESSED_IMAGE_TOPIC))
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="frame rate of the stamps (default 10)")
    parser.add_argument("--jpeg-quality", type=int, default=95, metavar="Q", help="JPEG quality with --compressed")
    parser.add_argument("--start-ns", type=int, default=None, metavar="NS",
                        help="stamp of the first frame in ns since the epoch (default: now, whole seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the bag; returns 0."""
    from ..evaluate.dataset_bag import write_dataset_bag
    from ..io.bags import format_stamp

    bag = write_dataset_bag(args.dataset, args.images, args.labels, args.out, storage=args.storage,
                            compressed=args.compressed, rate_hz=args.rate, jpeg_quality=args.jpeg_quality,
                            start_ns=args.start_ns, progress=not args.no_progress)
    print("wrote {} ({}): {}; stamps {} .. {}".format(
        bag.path, bag.storage, ", ".join("{} x{}".format(t, n) for t, n in sorted(bag.counts.items())),
        format_stamp(bag.first_stamp_ns), format_stamp(bag.last_stamp_ns)))
    return 0
