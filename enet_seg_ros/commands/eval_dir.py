"""``enet-seg eval-dir``: run a model over a labelled image folder and score it.

CamVid (SegNet layout): ``--images`` and ``--labels`` hold the same file names. Cityscapes:
``--images leftImg8bit/<split>`` and ``--labels gtFine/<split>`` (searched recursively;
``*_gtFine_instanceIds.png`` give iIoU). Writes metrics.json, report.md, confusion.png and
class_iou.png to ``--out``. ``--throughput`` also times the bare model on the same frames
(decoded in memory beforehand) and records both rates in metrics.json. ``--lighting KIND=FACTOR``
scores the model on the same frames under other light (brightness, contrast or saturation scaled
as the training's ``--color-jitter`` does it); the report says so.
"""
from __future__ import annotations

import argparse

from .common_args import (add_dataset_folder_arguments, add_report_arguments, add_segmenter_arguments,
                          lighting_arg, model_options, run_options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval-dir options."""
    add_dataset_folder_arguments(parser)
    add_segmenter_arguments(parser)
    parser.add_argument("--no-instances", action="store_true", help="Cityscapes: skip iIoU")
    parser.add_argument("--lighting", type=lighting_arg, default=None, metavar="KIND=FACTOR",
                        help="robustness run: scale every image's brightness, contrast or saturation by FACTOR "
                             "before inference (e.g. contrast=0.6), as --color-jitter does in training")
    add_report_arguments(parser, "<name>")


def run(args: argparse.Namespace) -> int:
    """Evaluate the folder; returns 0."""
    from ..evaluate.api import evaluate_folder

    evaluation = evaluate_folder(args.dataset, args.images, args.labels, args.out, model_options(args),
                                 run_options(args), with_instances=not args.no_instances)
    print("\n".join(evaluation.summary()))
    return 0
