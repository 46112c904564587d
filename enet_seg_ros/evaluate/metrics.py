"""Confusion-matrix metrics: IoU per class, mean IoU, pixel and mean class accuracy."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` int64 confusion matrix (rows = ground truth).

    Pixels whose ground truth is ``ignore_index`` (or outside ``[0, num_classes)``) are skipped.
    Predictions outside ``[0, num_classes)`` are an error: they would silently change the numbers.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one prediction / ground-truth pair of the same shape (any integer dtype)."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError("prediction shape {} != ground truth shape {}".format(pred.shape, gt.shape))
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        valid = (gt >= 0) & (gt < self.num_classes)
        if self.ignore_index is not None:
            valid &= gt != self.ignore_index
        gt, pred = gt[valid], pred[valid]
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError("prediction has class ids outside [0, {})".format(self.num_classes))
        n = self.num_classes
        self.matrix += np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another accumulator's counts (e.g. from a worker process)."""
        self.matrix += other.matrix

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def summary(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """``miou``, ``class_iou``, ``pixel_accuracy``, ``mean_class_accuracy`` (fractions, NaN-aware)."""
        iou = self.iou()
        tp = np.diag(self.matrix).astype(np.float64)
        gt_count = self.matrix.sum(1)
        total = self.matrix.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            class_acc = np.where(gt_count > 0, tp / np.maximum(gt_count, 1), np.nan)
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "miou": _nanmean(iou),
            "class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "mean_class_accuracy": _nanmean(class_acc),
        }


def _nanmean(values: np.ndarray) -> Optional[float]:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None
