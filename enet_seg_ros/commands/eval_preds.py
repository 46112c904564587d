"""``enet-seg eval-preds``: score prediction PNGs against ground truth, officially for Cityscapes.

Cityscapes: ``--gt`` holds ``*_gtFine_labelIds.png`` (+ ``*_gtFine_instanceIds.png`` for
iIoU), searched recursively; a prediction belongs to the frame whose
``<city>_<seq>_<frame>`` starts its file name. Predictions hold label ids (the official
submission format, e.g. ``*_labelIds.png``) or train ids (``*trainIds*`` names, or
``--pred-ids train``). CamVid: label PNGs and predictions share file names.
The scores equal ``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the eval-preds options."""
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of prediction PNGs")
    parser.add_argument("--gt", required=True, type=Path, metavar="DIR",
                        help="ground truth: gtFine (or gtFine/<split>) for Cityscapes, the label folder for CamVid")
    parser.add_argument("--dataset", default="cityscapes", choices=("cityscapes", "camvid"))
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="report folder")
    parser.add_argument("--pred-ids", default="auto", choices=("auto", "label", "train"),
                        help="Cityscapes ids in the prediction PNGs: label ids, train ids, or by name "
                             "(*trainIds* = train ids, otherwise label ids) (default: auto)")
    parser.add_argument("--pred-glob", default="*.png", metavar="PATTERN",
                        help="prediction file pattern, searched recursively (default: *.png)")
    parser.add_argument("--no-instances", action="store_true", help="skip iIoU (do not read instance PNGs)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="score only ground-truth frames that have a prediction (default: error)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding PNGs (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score the predictions and write metrics.json, report.md, confusion.png, class_iou.png."""
    from ..evaluate.report import write_evaluation

    if args.dataset == "cityscapes":
        pairs, evaluator, unmatched, notes = _plan_cityscapes(args)
    else:
        pairs, evaluator, unmatched, notes = _plan_camvid(args)
    _score(pairs, evaluator, args)
    if unmatched:
        notes.append("{} prediction file(s) had no ground truth and were not scored, e.g. {}".format(
            len(unmatched), ", ".join(p.name for p in unmatched[:3])))
        LOG.warning(notes[-1])
    paths = write_evaluation(args.out, evaluator, frames_without_gt=len(unmatched), model=None, backend=None,
                             inputs={"predictions": args.pred.resolve(), "ground truth": args.gt.resolve()},
                             notes=notes, title="Prediction evaluation ({})".format(args.dataset))
    _print_summary(evaluator.result(), paths["report"])
    return 0


# A pair: (frame name, prediction path, label path, instance path or None, predictions are label ids)
Pair = Tuple[str, Path, Path, Optional[Path], bool]


def _plan_cityscapes(args: argparse.Namespace):
    from ..evaluate.cityscapes import (CityscapesEvaluator, find_gt_frames, match_predictions,
                                       prediction_uses_label_ids)

    frames = find_gt_frames(args.gt)
    match = match_predictions(args.pred, [f.key for f in frames], args.pred_glob)
    notes: List[str] = []
    frames = _drop_missing(frames, match.missing, args, lambda f: f.key)
    use_instances = not args.no_instances
    if use_instances:
        without = [f for f in frames if f.instance_path is None]
        if len(without) == len(frames):
            use_instances = False
            notes.append("no *_gtFine_instanceIds.png files: iIoU not computed")
            LOG.warning(notes[-1])
        elif without:
            raise FileNotFoundError("instance file missing for {} of {} frames, e.g. {} (needed for iIoU; "
                                    "use --no-instances to skip iIoU)".format(
                                        len(without), len(frames),
                                        without[0].label_path.with_name(without[0].key + "_gtFine_instanceIds.png")))
    pairs: List[Pair] = []
    for f in frames:
        pred = match.matched[f.key]
        pairs.append((f.key, pred, f.label_path, f.instance_path if use_instances else None,
                      prediction_uses_label_ids(pred, args.pred_ids)))
    kinds = sorted({"label ids" if p[4] else "train ids" for p in pairs})
    notes.append("prediction values read as {}".format(" and ".join(kinds)))
    return pairs, CityscapesEvaluator(), match.unmatched, notes


def _plan_camvid(args: argparse.Namespace):
    from ..data.labels import get_label_spec
    from ..evaluate.cityscapes import is_visualisation, match_predictions
    from ..evaluate.metrics import Evaluator

    root = Path(args.gt)
    if not root.is_dir():
        raise FileNotFoundError("ground-truth folder not found: {}".format(root))
    labels = {p.stem: p for p in sorted(root.rglob("*.png")) if not is_visualisation(p)}
    if not labels:
        raise FileNotFoundError("no label PNGs under {}".format(root))
    match = match_predictions(args.pred, labels, args.pred_glob)
    keys = _drop_missing(sorted(labels), match.missing, args, lambda k: k)
    pairs: List[Pair] = [(k, match.matched[k], labels[k], None, False) for k in keys]
    return pairs, Evaluator(get_label_spec("camvid")), match.unmatched, []


def _drop_missing(items: List[T], missing: Sequence[str], args: argparse.Namespace, key: Callable[[T], str]):
    if missing:
        if not args.skip_missing or len(missing) == len(items):
            raise FileNotFoundError(
                "no prediction under {} for {} of {} ground-truth frames, e.g. {} (expected <frame>*.png{})".format(
                    args.pred, len(missing), len(items), ", ".join(missing[:3]),
                    "" if args.skip_missing else "; --skip-missing scores the others"))
        LOG.warning("%d ground-truth frames have no prediction and are skipped", len(missing))
    gone = set(missing)
    return [item for item in items if key(item) not in gone]


def _load(pair: Pair):
    from ..evaluate.cityscapes import read_label_png

    name, pred_path, label_path, inst_path, _ = pair
    pred = read_label_png(pred_path, "prediction")
    gt = read_label_png(label_path, "ground truth")
    inst = read_label_png(inst_path, "instance image") if inst_path is not None else None
    return pred, gt, inst


def _score(pairs: List[Pair], evaluator, args: argparse.Namespace) -> None:
    from tqdm import tqdm

    loaded = _prefetch(_load, pairs, max(1, int(args.workers)))
    with tqdm(total=len(pairs), unit="frame", desc="eval-preds", disable=args.no_progress) as bar:
        for pair, (pred, gt, inst) in zip(pairs, loaded):
            name, pred_path, label_path = pair[0], pair[1], pair[2]
            if pred.shape != gt.shape:
                raise ValueError("prediction {} is {}x{} but ground truth {} is {}x{}".format(
                    pred_path, pred.shape[1], pred.shape[0], label_path, gt.shape[1], gt.shape[0]))
            evaluator.add(pred, gt, inst, pred_is_label_ids=pair[4], name=str(pred_path))
            bar.update(1)


def _prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order, with at most ``2 * workers`` results decoded ahead."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: Deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _print_summary(result, report: Path) -> None:
    def pct(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else "{:.2f}%".format(100 * value)

    parts = ["mIoU {}".format(pct("miou"))]
    if "iiou" in result:
        parts += ["iIoU {}".format(pct("iiou")), "category IoU {}".format(pct("category_iou")),
                  "category iIoU {}".format(pct("category_iiou"))]
    parts += ["pixel acc {}".format(pct("pixel_accuracy")), "{} frames".format(result.get("frames"))]
    print("  ".join(parts))
    print("report: {}".format(report))
