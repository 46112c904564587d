"""``enet-seg eval-preds``: score prediction PNGs against ground truth, officially for Cityscapes.

Cityscapes: ``--gt`` holds ``*_gtFine_labelIds.png`` (+ ``*_gtFine_instanceIds.png`` for
iIoU), searched recursively; a prediction belongs to the frame whose
``<city>_<seq>_<frame>`` starts its file name. Predictions hold label ids (the official
submission format, e.g. ``*_labelIds.png``) or train ids (``*trainIds*`` names, or
``--pred-ids train``). CamVid: label PNGs and predictions share file names.
The scores equal ``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``
(see :mod:`enet_seg_ros.evaluate.predictions`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from .common_args import count_arg, output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval-preds options."""
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of prediction PNGs")
    parser.add_argument("--gt", required=True, type=Path, metavar="DIR",
                        help="ground truth: gtFine (or gtFine/<split>) for Cityscapes, the label folder for CamVid")
    parser.add_argument("--dataset", default="cityscapes", choices=("cityscapes", "camvid"))
    parser.add_argument("--out", required=True, type=output_dir, metavar="DIR", help="report folder")
    parser.add_argument("--pred-ids", default="auto", choices=("auto", "label", "train"),
                        help="Cityscapes ids in the prediction PNGs: label ids, train ids, or by name "
                             "(*trainIds* and predict's *_labels.png = train ids, otherwise label ids) "
                             "(default: auto)")
    parser.add_argument("--pred-glob", default="*.png", metavar="PATTERN",
                        help="prediction file pattern, searched recursively (default: *.png)")
    parser.add_argument("--no-instances", action="store_true", help="skip iIoU (do not read instance PNGs)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="score only ground-truth frames that have a prediction (default: error)")
    parser.add_argument("--workers", type=count_arg(1), default=min(4, os.cpu_count() or 1),
                        help="threads decoding PNGs (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the predictions and write metrics.json, report.md, confusion.png, class_iou.png."""
    from ..evaluate.api import evaluate_predictions

    evaluation = evaluate_predictions(args.pred, args.gt, args.out, dataset=args.dataset, pred_ids=args.pred_ids,
                                      pred_glob=args.pred_glob, with_instances=not args.no_instances,
                                      skip_missing=args.skip_missing, workers=args.workers,
                                      progress=not args.no_progress)
    print("\n".join(evaluation.summary()))
    return 0
