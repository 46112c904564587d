"""Confusion-matrix metrics: IoU per class, mean IoU, pixel and mean class accuracy.

Counting is one vectorised ``bincount`` per frame: ground-truth and prediction values (both
8-bit) are packed into one 16-bit code, histogrammed into a 256 x 256 table, and that small
table is folded into the class confusion matrix through lookup tables. The per-pixel work is
therefore the same whatever the label mapping (dataset ids, train ids, ignore handling).

:class:`Evaluator` wraps a :class:`ConfusionMatrix` with a dataset's label spec (ground truth
in dataset label ids, predictions in train ids); ``enet_seg_ros.evaluate.cityscapes`` adds the
Cityscapes instance and category scores with the same ``add`` / ``result`` interface.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.labels import LabelSpec

_NOT_A_CLASS = -1  # row map: this ground-truth value is skipped (ignore / void)
_INVALID = -2  # map: this value must not occur (unknown id): a data error


def as_label_image(image: np.ndarray, what: str = "label image") -> np.ndarray:
    """Return ``image`` as a uint8 array, refusing values that 8-bit label files cannot hold.

    Accepts any integer dtype (e.g. int64 from an ``argmax``) or a CPU tensor; floats, bools
    and values outside 0..255 raise ``ValueError`` naming ``what``.
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":
        raise ValueError("{} must hold integer ids, got dtype {}".format(what, array.dtype))
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError("{} has ids outside 0..255 (min {}, max {})".format(what, array.min(), array.max()))
    return array.astype(np.uint8)


def joint_histogram(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Counts of every ``(rows[i], cols[i])`` value pair of two uint8 arrays: a (256, 256) int64 table."""
    if rows.dtype != np.uint8 or cols.dtype != np.uint8:
        raise ValueError("joint_histogram needs uint8 arrays, got {} and {}".format(rows.dtype, cols.dtype))
    if rows.shape != cols.shape:
        raise ValueError("shape {} != shape {}".format(rows.shape, cols.shape))
    code = rows.astype(np.intp)
    code <<= 8
    code |= cols
    return np.bincount(code.ravel(), minlength=65536).reshape(256, 256)


def _values_present(counts: np.ndarray, mask: np.ndarray) -> List[int]:
    """Indices where ``mask`` is set and ``counts`` is non-zero (for error messages)."""
    return [int(v) for v in np.flatnonzero(mask & (counts > 0))]


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` int64 confusion matrix (rows = ground truth).

    Pixels whose ground truth is ``ignore_index`` (or outside ``[0, num_classes)``) are skipped.
    A prediction equal to ``ignore_index`` means "no class": it counts as a miss (a false
    negative of the ground-truth class, in :attr:`missed`) and as no class's false positive, as
    the official Cityscapes script does for predicted void ids. Any other prediction outside
    ``[0, num_classes)`` is an error: it would silently change the numbers.

    Attributes:
        matrix: ``(num_classes, num_classes)`` int64 counts, rows ground truth, columns prediction.
        missed: ``(num_classes,)`` int64 counts of pixels of each ground-truth class predicted as
            ``ignore_index``.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    @classmethod
    def from_counts(cls, matrix: np.ndarray, missed: Optional[np.ndarray] = None,
                    ignore_index: Optional[int] = None) -> "ConfusionMatrix":
        """Build from existing counts (e.g. a label-id matrix folded to train ids)."""
        matrix = np.asarray(matrix, dtype=np.int64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError("confusion matrix must be square, got shape {}".format(matrix.shape))
        cm = cls(matrix.shape[0], ignore_index)
        cm.matrix = matrix.copy()
        if missed is not None:
            cm.missed = np.asarray(missed, dtype=np.int64).reshape(cm.num_classes).copy()
        return cm

    # ---------------------------------------------------------------------------------- counting
    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one prediction / ground-truth pair of the same shape (any integer dtype)."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError("prediction shape {} != ground truth shape {}".format(pred.shape, gt.shape))
        if self.num_classes <= 256 and _fits_uint8(pred) and _fits_uint8(gt):
            self.add_histogram(joint_histogram(as_label_image(gt), as_label_image(pred)))
        else:
            self._update_wide(pred, gt)

    def add_histogram(self, hist: np.ndarray, row_map: Optional[np.ndarray] = None,
                      col_map: Optional[np.ndarray] = None) -> None:
        """Fold a value-pair histogram (rows = ground-truth values, columns = predicted values).

        ``row_map[v]`` / ``col_map[v]`` give the class of value ``v`` (``-1``: skip the row /
        count the column as a miss; ``-2``: the value is invalid and must not occur). Defaults:
        identity for values below ``num_classes``, ``ignore_index`` skipped (rows) or a miss
        (columns), everything else skipped (rows) or invalid (columns).
        """
        hist = np.asarray(hist, dtype=np.int64)
        rows_map = self._default_map(hist.shape[0], is_row=True) if row_map is None else np.asarray(row_map)
        cols_map = self._default_map(hist.shape[1], is_row=False) if col_map is None else np.asarray(col_map)
        bad_cols = _values_present(hist.sum(0), cols_map == _INVALID)
        if bad_cols:
            raise ValueError("prediction has class ids outside [0, {}): {}".format(self.num_classes, bad_cols))
        bad_rows = _values_present(hist.sum(1), rows_map == _INVALID)
        if bad_rows:
            raise ValueError("ground truth has unknown label ids {}".format(bad_rows))
        keep_rows = np.flatnonzero(rows_map >= 0)
        sub = hist[keep_rows]
        n = self.num_classes
        # Sum columns per class (and the "missed" column) with one bincount over the small table.
        col_target = np.where(cols_map >= 0, cols_map, n)
        code = (rows_map[keep_rows][:, None] * (n + 1) + col_target[None, :]).ravel()
        folded = np.bincount(code, weights=sub.ravel().astype(np.float64), minlength=n * (n + 1))
        folded = np.rint(folded).astype(np.int64).reshape(n, n + 1)  # exact: counts < 2**53
        self.matrix += folded[:, :n]
        self.missed += folded[:, n]

    def _default_map(self, size: int, is_row: bool) -> np.ndarray:
        values = np.arange(size)
        out = np.where(values < self.num_classes, values, _NOT_A_CLASS if is_row else _INVALID)
        if self.ignore_index is not None and 0 <= self.ignore_index < size:
            out[self.ignore_index] = _NOT_A_CLASS
        return out

    def _update_wide(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Direct path for class counts or ids beyond 8 bits."""
        if pred.dtype.kind not in "iu" or gt.dtype.kind not in "iu":
            raise ValueError("prediction and ground truth must be integer arrays, got {} and {}".format(
                pred.dtype, gt.dtype))
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        n = self.num_classes
        is_class = (pred >= 0) & (pred < n)
        is_void = pred == self.ignore_index if self.ignore_index is not None else np.zeros_like(is_class)
        if not np.all(is_class | is_void):
            bad = np.unique(pred[~(is_class | is_void)])[:10].tolist()
            raise ValueError("prediction has class ids outside [0, {}): {}".format(n, bad))
        valid = (gt >= 0) & (gt < n)
        if self.ignore_index is not None:
            valid &= gt != self.ignore_index
        gt, pred = gt[valid], np.where(is_class[valid], pred[valid], n)
        counts = np.bincount(gt * (n + 1) + pred, minlength=n * (n + 1)).reshape(n, n + 1)
        self.matrix += counts[:, :n]
        self.missed += counts[:, n]

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another accumulator's counts (e.g. from a worker process)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge {} classes into {}".format(other.num_classes, self.num_classes))
        self.matrix += other.matrix
        self.missed += other.missed

    # ---------------------------------------------------------------------------------- scores
    def ground_truth_counts(self) -> np.ndarray:
        """Pixels per ground-truth class (including those predicted as "no class")."""
        return self.matrix.sum(1) + self.missed

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.ground_truth_counts() + self.matrix.sum(0) - np.diag(self.matrix)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (TP / ground-truth pixels); NaN for classes absent from ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt_count = self.ground_truth_counts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt_count > 0, tp / np.maximum(gt_count, 1), np.nan)

    def summary(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """``miou``, ``class_iou``, ``pixel_accuracy``, ``mean_class_accuracy`` (fractions, NaN-aware).

        Also ``class_accuracy`` {name: recall} and ``pixels`` (evaluated pixel count). NaN
        scores are ``None``; means skip them (as the official Cityscapes script averages).
        """
        iou = self.iou()
        class_acc = self.class_accuracy()
        total = int(self.ground_truth_counts().sum())
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError("{} class names for {} classes".format(len(names), self.num_classes))
        return {
            "miou": nanmean(iou),
            "class_iou": _named(names, iou),
            "pixel_accuracy": float(np.trace(self.matrix) / total) if total else None,
            "mean_class_accuracy": nanmean(class_acc),
            "class_accuracy": _named(names, class_acc),
            "pixels": total,
        }


def _fits_uint8(array: np.ndarray) -> bool:
    if array.dtype == np.uint8:
        return True
    if array.dtype.kind not in "iu" or array.size == 0:
        return False
    return bool(array.min() >= 0 and array.max() <= 255)


def _named(names: Sequence[str], values: np.ndarray) -> Dict[str, Optional[float]]:
    return {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, values)}


def nanmean(values: np.ndarray) -> Optional[float]:
    """Mean over the non-NaN entries; ``None`` when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


_nanmean = nanmean  # backwards-compatible private name


class Evaluator:
    """Dataset-level evaluator: ground truth in dataset label ids, predictions in train ids.

    ``add(pred_train_ids, gt_label_image)`` per frame, ``result()`` for the metrics dict. Ground
    truth values that the dataset does not define (``spec.valid_ids``) are an error, as are
    predictions that are neither a class nor ``ignore_index`` (counted as a miss). The
    Cityscapes subclass-like :class:`~enet_seg_ros.evaluate.cityscapes.CityscapesEvaluator`
    has the same interface plus instance / category scores.
    """

    def __init__(self, spec: LabelSpec) -> None:
        self.spec = spec
        self.confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index)
        self.frames = 0
        valid_ids = tuple(getattr(spec, "valid_ids", ()) or ())
        lut = np.asarray(spec.id_to_train_id, dtype=np.int64)
        n = spec.num_classes
        known = np.zeros(256, dtype=bool)
        if valid_ids:
            known[list(valid_ids)] = True
        else:  # specs without an explicit id list: ids that map to a class, plus the ignore value
            known[lut < n] = True
            known[spec.ignore_index] = True
        self._gt_map = np.where(known, np.where(lut < n, lut, _NOT_A_CLASS), _INVALID)
        self._train_col_map = self.confusion._default_map(256, is_row=False)
        self._id_col_map = np.where(known, np.where(lut < n, lut, _NOT_A_CLASS), _INVALID)

    @property
    def class_names(self) -> Sequence[str]:
        """Class names in train-id order."""
        return self.spec.class_names

    def add(self, pred: np.ndarray, gt_label_image: np.ndarray, instance_image: Optional[np.ndarray] = None,
            pred_is_label_ids: bool = False, name: Optional[str] = None) -> None:
        """Score one frame. ``instance_image`` is accepted for interface parity and unused here.

        Args:
            pred: (H, W) predicted train ids (``ignore_index`` = no class), or dataset label ids
                with ``pred_is_label_ids``.
            gt_label_image: (H, W) ground truth in dataset label ids.
            name: frame name used in error messages.
        """
        where = " ({})".format(name) if name else ""
        pred8, gt8 = check_pair(pred, gt_label_image, where)
        col_map = self._id_col_map if pred_is_label_ids else self._train_col_map
        try:
            self.confusion.add_histogram(joint_histogram(gt8, pred8), self._gt_map, col_map)
        except ValueError as exc:
            raise ValueError("{}{}".format(exc, where)) from None
        self.frames += 1

    def merge(self, other: "Evaluator") -> None:
        """Add another evaluator's counts."""
        self.confusion.merge(other.confusion)
        self.frames += other.frames

    def result(self) -> Dict[str, object]:
        """Metrics dict: ``miou``, ``class_iou``, ``pixel_accuracy``, ``mean_class_accuracy``, ..."""
        out: Dict[str, object] = {"dataset": self.spec.dataset}
        out.update(self.confusion.summary(self.spec.class_names))
        out["frames"] = self.frames
        return out


def check_pair(pred: np.ndarray, gt: np.ndarray, where: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Validate a prediction / ground-truth pair: single-channel, same size, 8-bit ids."""
    pred8 = as_label_image(pred, "prediction" + where)
    gt8 = as_label_image(gt, "ground truth" + where)
    for what, array in (("prediction", pred8), ("ground truth", gt8)):
        if array.ndim != 2:
            raise ValueError("{} must be a single-channel (H, W) label image, got shape {}{}".format(
                what, array.shape, where))
    if pred8.shape != gt8.shape:
        raise ValueError("prediction size {} != ground truth size {}{}".format(_size(pred8), _size(gt8), where))
    return pred8, gt8


def _size(array: np.ndarray) -> str:
    return "{}x{}".format(array.shape[1], array.shape[0]) if array.ndim == 2 else str(array.shape)
