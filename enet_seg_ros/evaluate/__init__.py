"""Evaluation: confusion-matrix metrics (Cityscapes-exact), reports, bag and folder scoring.

The calls the commands make are in :mod:`.api` (``evaluate_folder``, ``evaluate_bag``,
``evaluate_predictions``); under them: :mod:`.pipeline` (decode ahead, segment, score),
:mod:`.frames` (folder and bag frame sources, stamp pairing), :mod:`.model` (model card vs
dataset, segmenter loading), :mod:`.predictions` (prediction PNGs), :mod:`.report`;
:mod:`.dataset_bag` writes a labelled folder as a bag (``make-bag``).

Every evaluation front end (eval-preds, eval-dir, eval-bag, eval_node) uses one evaluator::

    ev = make_evaluator("cityscapes")            # or "camvid" / a LabelSpec
    ev.add(pred_train_ids, gt_label_image, instance_image=None)   # per frame
    metrics = ev.result()                         # dict, NaN as None
    write_evaluation(out_dir, ev, frames_without_gt=..., model=..., backend=..., latencies_ms=[...])
"""
from __future__ import annotations

from typing import Union

from ..data.labels import LabelSpec, get_label_spec
from .cityscapes import CityscapesEvaluator
from .metrics import ConfusionMatrix, Evaluator
from .report import write_evaluation, write_report

AnyEvaluator = Union[Evaluator, CityscapesEvaluator]


def make_evaluator(dataset: Union[str, LabelSpec]) -> AnyEvaluator:
    """The evaluator of a dataset: Cityscapes-exact (IoU, iIoU, categories) or plain confusion metrics."""
    spec = get_label_spec(dataset) if isinstance(dataset, str) else dataset
    if spec.dataset == "cityscapes":
        return CityscapesEvaluator(spec=spec)
    return Evaluator(spec)


__all__ = ["ConfusionMatrix", "Evaluator", "CityscapesEvaluator", "make_evaluator", "write_report",
           "write_evaluation", "AnyEvaluator"]
