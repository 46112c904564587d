"""``enet-seg eval-dir``: run a model over a labelled image folder and score it.

CamVid (SegNet layout): ``--images`` and ``--labels`` hold the same file names. Cityscapes:
``--images leftImg8bit/<split>`` and ``--labels gtFine/<split>`` (searched recursively;
``*_gtFine_instanceIds.png`` give iIoU). Writes metrics.json, report.md, confusion.png and
class_iou.png to ``--out``. ``--throughput`` also times the bare model on the same frames
(decoded in memory beforehand) and records both rates in metrics.json.
"""
from __future__ import annotations

import argparse
import logging

from .common_args import add_dataset_folder_arguments, add_report_arguments, add_segmenter_arguments

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval-dir options."""
    add_dataset_folder_arguments(parser)
    add_segmenter_arguments(parser)
    parser.add_argument("--no-instances", action="store_true", help="Cityscapes: skip iIoU")
    add_report_arguments(parser, "<name>")


def run(args: argparse.Namespace) -> int:
    """Evaluate the folder; returns 0."""
    from ..evaluate import make_evaluator
    from ..evaluate.folders import find_labelled_frames, read_bgr
    from ..evaluate.runners import (THROUGHPUT_FRAMES, EvalPipeline, bare_throughput, folder_jobs, load_for_dataset,
                                    parse_size, print_summary, record_throughput, write_outputs)

    frames, orphans = find_labelled_frames(args.dataset, args.images, args.labels)
    model = load_for_dataset(args.weights, args.dataset, args.backend, parse_size(args.size),
                             args.device, args.threads, strict=args.strict)
    with_instances = args.dataset == "cityscapes" and not args.no_instances
    evaluator = make_evaluator(model.spec)
    pipeline = EvalPipeline(model.segmenter, evaluator, model.pred_lut, spec=model.spec, resize_gt=args.resize_gt,
                            save_dir=args.out / "predictions" if args.save_predictions else None)
    images = [read_bgr(f.image_path) for f in frames[:THROUGHPUT_FRAMES]] if args.throughput else []
    # Bare inference timed before and after the evaluation, so load drifts on the machine cancel.
    bare = [bare_throughput(model.segmenter, images, "bgr")] if images else []
    stats = pipeline.run(folder_jobs(frames, with_instances), total=len(frames), desc="eval-dir",
                         progress=not args.no_progress, workers=args.workers)
    if images:
        bare.append(bare_throughput(model.segmenter, images, "bgr"))
        del images
    if stats.scored == 0:
        raise ValueError("no frame under {} could be scored ({} skipped)".format(args.images, stats.skipped_count))
    if orphans:
        stats.notes.append("{} label file(s) match no image (not scored), e.g. {}".format(len(orphans), orphans[0]))
        LOG.warning(stats.notes[-1])
    if with_instances and 0 < evaluator.instance_frames < evaluator.frames:
        stats.notes.append("instance files exist for only {} of {} frames: iIoU not reported".format(
            evaluator.instance_frames, evaluator.frames))
    if bare:
        record_throughput(stats, bare, min(len(frames), THROUGHPUT_FRAMES))
    paths = write_outputs(args.out, evaluator, stats, model=model.description,
                          backend=str(model.segmenter.backend_name),
                          inputs={"images": args.images.resolve(), "labels": args.labels.resolve()},
                          title="Folder evaluation ({})".format(args.dataset))
    print_summary(evaluator.result(), stats, paths["report"])
    return 0
