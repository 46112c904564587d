"""Score prediction PNGs against ground truth (``eval-preds``), officially for Cityscapes.

Cityscapes: ``gt`` holds ``*_gtFine_labelIds.png`` (+ ``*_gtFine_instanceIds.png`` for
iIoU), searched recursively; a prediction belongs to the frame whose
``<city>_<seq>_<frame>`` starts its file name. Predictions hold label ids (the official
submission format, e.g. ``*_labelIds.png``) or train ids (``*trainIds*`` names, or
``pred_ids="train"``). CamVid: label PNGs and predictions share file names.
The scores equal ``cityscapesscripts``' ``evalPixelLevelSemanticLabeling``.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from ..data.labels import get_label_spec
from .cityscapes import (CityscapesEvaluator, find_gt_frames, is_visualisation, match_predictions,
                         prediction_uses_label_ids, read_label_png)
from .metrics import Evaluator
from .pipeline import decode_ahead

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# A pair: (frame name, prediction path, label path, instance path or None, predictions are label ids)
Pair = Tuple[str, Path, Path, Optional[Path], bool]


def score_predictions(pred: Path, gt: Path, *, dataset: str = "cityscapes", pred_ids: str = "auto",
                      pred_glob: str = "*.png", with_instances: bool = True, skip_missing: bool = False,
                      workers: int = 4, progress: bool = True) -> Tuple[Any, List[Path], List[str]]:
    """Pair and score every prediction; returns ``(evaluator, unmatched prediction files, notes)``."""
    if dataset not in ("cityscapes", "camvid"):
        raise ValueError("dataset must be cityscapes or camvid, got {!r}".format(dataset))
    if pred_ids not in ("auto", "label", "train"):
        raise ValueError("pred_ids must be auto, label or train, got {!r}".format(pred_ids))
    if dataset == "cityscapes":
        pairs, evaluator, unmatched, notes = _plan_cityscapes(pred, gt, pred_ids, pred_glob, with_instances,
                                                              skip_missing)
    else:
        pairs, evaluator, unmatched, notes = _plan_camvid(pred, gt, pred_glob, skip_missing)
    _score(pairs, evaluator, workers, progress)
    return evaluator, unmatched, notes


def _plan_cityscapes(pred: Path, gt: Path, pred_ids: str, pred_glob: str, with_instances: bool, skip_missing: bool):
    frames = find_gt_frames(gt)
    match = match_predictions(pred, [f.key for f in frames], pred_glob)
    notes: List[str] = []
    frames = _drop_missing(frames, match.missing, pred, skip_missing, lambda f: f.key)
    use_instances = with_instances
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
        path = match.matched[f.key]
        pairs.append((f.key, path, f.label_path, f.instance_path if use_instances else None,
                      prediction_uses_label_ids(path, pred_ids)))
    kinds = sorted({"label ids" if p[4] else "train ids" for p in pairs})
    notes.append("prediction values read as {}".format(" and ".join(kinds)))
    return pairs, CityscapesEvaluator(), match.unmatched, notes


def _plan_camvid(pred: Path, gt: Path, pred_glob: str, skip_missing: bool):
    root = Path(gt)
    if not root.is_dir():
        raise FileNotFoundError("ground-truth folder not found: {}".format(root))
    labels = {p.stem: p for p in sorted(root.rglob("*.png")) if not is_visualisation(p)}
    if not labels:
        raise FileNotFoundError("no label PNGs under {}".format(root))
    match = match_predictions(pred, labels, pred_glob)
    keys = _drop_missing(sorted(labels), match.missing, pred, skip_missing, lambda k: k)
    pairs: List[Pair] = [(k, match.matched[k], labels[k], None, False) for k in keys]
    return pairs, Evaluator(get_label_spec("camvid")), match.unmatched, []


def _drop_missing(items: List[T], missing: Sequence[str], pred: Path, skip_missing: bool,
                  key: Callable[[T], str]) -> List[T]:
    if missing:
        if not skip_missing or len(missing) == len(items):
            raise FileNotFoundError(
                "no prediction under {} for {} of {} ground-truth frames, e.g. {} (expected <frame>*.png{})".format(
                    pred, len(missing), len(items), ", ".join(missing[:3]),
                    "" if skip_missing else "; --skip-missing scores the others"))
        LOG.warning("%d ground-truth frames have no prediction and are skipped", len(missing))
    gone = set(missing)
    return [item for item in items if key(item) not in gone]


def _load(pair: Pair):
    _, pred_path, label_path, inst_path, _ = pair
    pred = read_label_png(pred_path, "prediction")
    gt = read_label_png(label_path, "ground truth")
    inst = read_label_png(inst_path, "instance image") if inst_path is not None else None
    return pred, gt, inst


def _score(pairs: List[Pair], evaluator: Any, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    workers = max(1, int(workers))
    loaded = decode_ahead((functools.partial(_load, p) for p in pairs), workers, depth=2 * workers)
    try:
        with tqdm(total=len(pairs), unit="frame", desc="eval-preds", disable=not progress) as bar:
            for pair, (pred, gt, inst) in zip(pairs, loaded):
                _, pred_path, label_path = pair[0], pair[1], pair[2]
                if pred.shape != gt.shape:
                    raise ValueError("prediction {} is {}x{} but ground truth {} is {}x{}".format(
                        pred_path, pred.shape[1], pred.shape[0], label_path, gt.shape[1], gt.shape[0]))
                evaluator.add(pred, gt, inst, pred_is_label_ids=pair[4], name=str(pred_path))
                bar.update(1)
    finally:
        loaded.close()  # stops the readers now, also after an error
