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
import logging
from pathlib import Path

from .common_args import add_report_arguments, add_segmenter_arguments

LOG = logging.getLogger(__name__)

DEFAULT_GT_TOPIC = "/camera/labels_gt"
DEFAULT_INSTANCES_TOPIC = "/camera/instances_gt"


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
    from ..evaluate import make_evaluator
    from ..evaluate.bag_io import IMAGE_TYPE, IMAGE_TYPES, BagReader, format_stamp
    from ..evaluate.runners import (BagFrames, EvalPipeline, load_for_dataset, measure_bare, parse_size,
                                    print_summary, read_index, record_throughput, write_outputs)

    use_index = args.labels is not None or args.index is not None
    if use_index and (args.labels is None or args.index is None):
        raise ValueError("--labels and --index go together (label folder + stamp_ns,label_path CSV)")
    if use_index and args.gt_topic:
        raise ValueError("give either --gt-topic or --labels/--index, not both")
    index = read_index(args.index, args.labels) if use_index else None

    with BagReader(args.bag) as bag:
        # Check the topics before loading the model: a wrong topic fails in a second.
        image = bag.require(args.image_topic, IMAGE_TYPES, "image topic") if args.image_topic \
            else bag.find_image_topic()
        gt_topic = inst_topic = None
        if not use_index:
            gt_topic = bag.require(args.gt_topic or DEFAULT_GT_TOPIC, (IMAGE_TYPE,), "ground-truth topic").topic
            if args.instances_topic and not args.no_instances:
                inst_topic = bag.require(args.instances_topic, (IMAGE_TYPE,), "instance topic").topic
            elif not args.no_instances and DEFAULT_INSTANCES_TOPIC in bag.topics:
                inst_topic = DEFAULT_INSTANCES_TOPIC
        model = load_for_dataset(args.weights, args.dataset, args.backend, parse_size(args.size),
                                 args.device, args.threads, strict=args.strict)
        with_instances = model.spec.dataset == "cityscapes" and not args.no_instances
        if inst_topic and not with_instances:
            LOG.info("%s present but %s has no instance metrics: not read", inst_topic, model.spec.dataset)
        evaluator = make_evaluator(model.spec)
        save_dir = args.out / "predictions" if args.save_predictions else None
        pipeline = EvalPipeline(model.segmenter, evaluator, model.pred_lut, spec=model.spec,
                                resize_gt=args.resize_gt, save_dir=save_dir)
        frames = BagFrames(bag, image.topic, image.msgtype, gt_topic=gt_topic,
                           instances_topic=inst_topic if with_instances else None, index=index,
                           with_instances=with_instances)
        # Bare inference timed before and after the evaluation, so load drifts on the machine cancel.
        bare = [measure_bare(bag, image, model.segmenter)] if args.throughput else []
        stats = pipeline.run(frames, total=image.count, desc="eval-bag", progress=not args.no_progress,
                             workers=args.workers)
        if bare:
            bare.append(measure_bare(bag, image, model.segmenter))

    if stats.segmented == 0:
        raise ValueError("no frame of {} topic {} could be decoded ({} skipped); nothing to score".format(
            args.bag, image.topic, stats.skipped_count))
    if stats.scored == 0:
        raise ValueError("none of the {} frames on {} in {} has ground truth with the same header stamp ({}); "
                         "check the GT topic / index stamps".format(
                             stats.segmented, image.topic, args.bag,
                             "index {}".format(args.index) if use_index else "topic {}".format(gt_topic)))
    if frames.gt_without_frame:
        stats.notes.append("{} ground-truth stamp(s) matched no decodable frame, e.g. {}".format(
            len(frames.gt_without_frame), format_stamp(frames.gt_without_frame[0])))
    if frames.duplicate_count:
        stats.notes.append("{} repeated stamp(s) on a topic (later copies ignored for pairing), e.g. {} on {}".format(
            frames.duplicate_count, format_stamp(frames.duplicates[0][0]), frames.duplicates[0][1]))
    for note in stats.notes:
        LOG.warning(note)
    stats.extra["gt_without_frame"] = len(frames.gt_without_frame)
    if bare:
        record_throughput(stats, bare)
    inputs = {"bag": Path(args.bag).resolve(), "image topic": "{} ({})".format(image.topic, image.msgtype)}
    if use_index:
        inputs.update({"index": args.index.resolve(), "labels": args.labels.resolve()})
    else:
        inputs["ground-truth topic"] = gt_topic
        if inst_topic and with_instances:
            inputs["instance topic"] = inst_topic
    paths = write_outputs(args.out, evaluator, stats, model=model.description,
                          backend=str(model.segmenter.backend_name), inputs=inputs,
                          title="Bag evaluation ({})".format(model.spec.dataset))
    print_summary(evaluator.result(), stats, paths["report"])
    return 0
