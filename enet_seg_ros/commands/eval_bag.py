"""``enet-seg eval-bag``: replay a ROS 2 bag through a model and score it against ground truth.

Reads raw ``sensor_msgs/Image`` or ``CompressedImage`` frames (detected from the topic type)
from a sqlite3 or mcap bag with ``rosbags`` (no ROS installation needed), pairs each frame
with ground truth by header stamp, and writes metrics.json, report.md, confusion.png and
class_iou.png to ``--out``. Ground truth comes from the bag (``--gt-topic``, default
``/camera/labels_gt``, ``mono8`` label ids; plus ``/camera/instances_gt`` ``mono16`` for
Cityscapes iIoU when present, as ``make-bag`` writes them) or, for bags labelled after
recording, from label files listed in an index CSV (``--labels DIR --index CSV`` with rows
``stamp_ns,label_path[,instance_path]``, paths relative to ``--labels``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io.topics import INSTANCES_TOPIC as DEFAULT_INSTANCES_TOPIC
from ..io.topics import LABELS_TOPIC as DEFAULT_GT_TOPIC
from .common_args import add_report_arguments, add_segmenter_arguments, model_options, run_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval-bag options."""
    parser.add_argument("bag", type=Path, metavar="BAG", help="rosbag2 folder (or its .db3 / .mcap file)")
    add_segmenter_arguments(parser)
    parser.add_argument("--dataset", default=None, choices=("cityscapes", "camvid"),
                        help="label ids of the ground truth (default: the model card's dataset)")
    parser.add_argument("--image-topic", default=None, metavar="T",
                        help="camera topic, raw or compressed (default: /camera/image_raw or its /compressed)")
    gt = parser.add_argument_group("ground truth (one of)")
    gt.add_argument("--gt-topic", default=None, metavar="T",
                    help="mono8 label-id topic in the bag (default {})".format(DEFAULT_GT_TOPIC))
    gt.add_argument("--labels", type=Path, default=None, metavar="DIR", help="label files folder (with --index)")
    gt.add_argument("--index", type=Path, default=None, metavar="CSV",
                    help="rows stamp_ns,label_path[,instance_path] (paths relative to --labels)")
    parser.add_argument("--instances-topic", default=None, metavar="T",
                        help="mono16 instance-id topic for Cityscapes iIoU (default {} when present)".format(
                            DEFAULT_INSTANCES_TOPIC))
    parser.add_argument("--no-instances", action="store_true", help="do not read instance images (no iIoU)")
    add_report_arguments(parser, "<stamp>")

def run(args: argparse.Namespace) -> int:
    """Evaluate the bag; returns 0 (errors raise with a message naming bag / topic / stamp)."""
    from ..evaluate.api import evaluate_bag

    evaluation = evaluate_bag(args.bag, args.out, model_options(args), run_options(args), dataset=args.dataset,
                              image_topic=args.image_topic, gt_topic=args.gt_topic,
                              instances_topic=args.instances_topic, labels=args.labels, index=args.index,
                              with_instances=not args.no_instances)
    print("\n".join(evaluation.summary()))
    return 0
