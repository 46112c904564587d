"""Cityscapes pixel-level scores exactly as ``cityscapesscripts`` computes them, plus file discovery.

The official ``evalPixelLevelSemanticLabeling`` works in *label-id* space: a 34 x 34
confusion matrix over every label id (ignored ones included), from which

* class IoU = TP / (TP + FP + FN), where FN is the whole ground-truth row (so predicting a void
  id is a miss) and FP counts only rows of labels that are not ``ignoreInEval``;
* class iIoU replaces TP and FN with sums over ground-truth *instances* (instance ids > 1000 in
  ``*_gtFine_instanceIds.png``; label id = instance id // 1000) weighted by
  ``avgClassSize[class] / instance size``, where ``avgClassSize`` is the script's fixed
  table of average instance sizes (not the sizes of the evaluated data); FP stays unweighted;
* category IoU / iIoU do the same over the labels of a category; for category iIoU a pixel
  of a "human" or "vehicle" instance is a hit when predicted as *any* label id of the category,
  ignored ones such as caravan and trailer included, and those ids also count as false
  positives; category IoU uses only the evaluated labels;
* averages skip NaN (a class absent from ground truth and never predicted on evaluated pixels).

:class:`CityscapesEvaluator` keeps that label-id matrix (one ``bincount`` per frame through
:func:`~enet_seg_ros.evaluate.metrics.joint_histogram`) and the weighted instance sums, so
predictions in either train ids or label ids give the official numbers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data.labels import CITYSCAPES, CITYSCAPES_TABLE, LabelSpec
from .metrics import ConfusionMatrix, check_pair, joint_histogram, nanmean

# ``avgClassSize`` of cityscapesscripts' evalPixelLevelSemanticLabeling (pixels per instance,
# measured by the dataset authors): the reference size that weights each instance in iIoU.
OFFICIAL_AVG_CLASS_SIZE: Dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

NUM_IDS = 1 + max(label.id for label in CITYSCAPES_TABLE)  # 34: label ids 0..33
INSTANCE_OFFSET = 1000  # instance id = label id * 1000 + instance number
GT_LABEL_SUFFIX = "_gtFine_labelIds.png"
GT_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_VISUAL_SUFFIXES = ("color", "colour", "overlay")
_GT_MARKERS = ("_gtfine_", "_gtcoarse_")


class _Tables:
    """Per-label-id lookup tables derived once from the official label table."""

    def __init__(self, spec: LabelSpec) -> None:
        labels = [label for label in CITYSCAPES_TABLE if label.id >= 0]
        self.name = [""] * NUM_IDS
        self.ignored = np.ones(NUM_IDS, dtype=bool)
        self.has_instances = np.zeros(NUM_IDS, dtype=bool)
        self.category_names: List[str] = list(dict.fromkeys(label.category for label in labels))
        self.category = np.zeros(NUM_IDS, dtype=np.int64)  # index into category_names
        for label in labels:
            self.name[label.id] = label.name
            self.ignored[label.id] = label.ignore_in_eval
            self.has_instances[label.id] = label.has_instances
            self.category[label.id] = self.category_names.index(label.category)
        # Evaluated ids in train-id order: row/column order of the train-id confusion matrix.
        self.eval_ids = np.asarray(spec.train_id_to_id, dtype=np.int64)
        # A category takes part in iIoU only if every one of its labels has instances.
        self.category_has_instances = np.array([
            all(l.has_instances for l in labels if self.category_names[self.category[l.id]] == cat)
            for cat in self.category_names])
        self.category_ids = [np.flatnonzero(self.category == c) for c in range(len(self.category_names))]
        # Predicted value -> label id (-1: invalid), for train-id and label-id predictions.
        self.train_to_id = np.full(256, -1, dtype=np.int64)
        self.train_to_id[np.arange(len(self.eval_ids))] = self.eval_ids
        self.train_to_id[spec.ignore_index] = 0  # "no class" = the void id "unlabeled"
        self.id_to_id = np.full(256, -1, dtype=np.int64)
        self.id_to_id[:NUM_IDS] = np.arange(NUM_IDS)


@dataclass
class _InstanceSums:
    """Per label id and per category: instance TP / FN pixels, raw and size-weighted."""

    tp: np.ndarray = field(default_factory=lambda: np.zeros(NUM_IDS, dtype=np.int64))
    fn: np.ndarray = field(default_factory=lambda: np.zeros(NUM_IDS, dtype=np.int64))
    tp_w: np.ndarray = field(default_factory=lambda: np.zeros(NUM_IDS))
    fn_w: np.ndarray = field(default_factory=lambda: np.zeros(NUM_IDS))

    def add(self, index: np.ndarray, tp: np.ndarray, fn: np.ndarray, weight: np.ndarray) -> None:
        np.add.at(self.tp, index, tp)
        np.add.at(self.fn, index, fn)
        np.add.at(self.tp_w, index, tp * weight)
        np.add.at(self.fn_w, index, fn * weight)

    def merge(self, other: "_InstanceSums") -> None:
        for name in ("tp", "fn", "tp_w", "fn_w"):
            getattr(self, name)[:] += getattr(other, name)


class CityscapesEvaluator:
    """Cityscapes metrics equal to ``cityscapesscripts`` (IoU, iIoU, category IoU / iIoU).

    Usage::

        ev = CityscapesEvaluator()
        for pred, gt_ids, inst in frames:
            ev.add(pred, gt_ids, inst)      # pred: train ids; gt/inst: gtFine label / instance ids
        metrics = ev.result()

    Args:
        avg_class_size: reference instance size per class name for iIoU weighting; default the
            official table :data:`OFFICIAL_AVG_CLASS_SIZE`.
        spec: label spec (class names and train ids); the Cityscapes spec by default.
    """

    def __init__(self, avg_class_size: Optional[Mapping[str, float]] = None,
                 spec: LabelSpec = CITYSCAPES) -> None:
        self.spec = spec
        self._t = _Tables(spec)
        sizes = dict(OFFICIAL_AVG_CLASS_SIZE if avg_class_size is None else avg_class_size)
        self._avg_size = np.full(NUM_IDS, np.nan)
        for label_id in np.flatnonzero(self._t.has_instances & ~self._t.ignored):
            name = self._t.name[label_id]
            if name not in sizes:
                raise ValueError("avg_class_size has no entry for instance class {!r}".format(name))
            self._avg_size[label_id] = float(sizes[name])
        self.id_matrix = np.zeros((NUM_IDS, NUM_IDS), dtype=np.int64)  # rows GT id, cols predicted id
        self.class_instances = _InstanceSums()
        self.category_instances = _InstanceSums()
        self.frames = 0
        self.instance_frames = 0

    @property
    def class_names(self) -> Sequence[str]:
        """Class names in train-id order."""
        return self.spec.class_names

    @property
    def confusion(self) -> ConfusionMatrix:
        """The train-id confusion matrix (19 x 19) with predicted void ids as misses."""
        e = self._t.eval_ids
        sub = self.id_matrix[np.ix_(e, e)]
        missed = self.id_matrix[e].sum(1) - sub.sum(1)
        return ConfusionMatrix.from_counts(sub, missed, self.spec.ignore_index)

    # ------------------------------------------------------------------------------------ adding
    def add(self, pred: np.ndarray, gt_label_image: np.ndarray, instance_image: Optional[np.ndarray] = None,
            pred_is_label_ids: bool = False, name: Optional[str] = None) -> None:
        """Score one frame.

        Args:
            pred: (H, W) predicted train ids (0..18; 255 = no class), or label ids 0..33 with
                ``pred_is_label_ids`` (the official submission format).
            gt_label_image: (H, W) ``*_gtFine_labelIds`` ids (0..33; others are an error).
            instance_image: (H, W) ``*_gtFine_instanceIds`` ids, for iIoU; frames without it
                still count for IoU, but iIoU is reported only when every frame had one.
            name: frame name used in error messages.
        """
        where = " ({})".format(name) if name else ""
        pred8, gt8 = check_pair(pred, gt_label_image, where)
        to_id = self._t.id_to_id if pred_is_label_ids else self._t.train_to_id
        hist = joint_histogram(gt8, pred8)
        bad = np.flatnonzero((to_id < 0) & (hist.sum(0) > 0)).tolist()
        if bad:
            kind = "label ids (valid: 0..{})".format(NUM_IDS - 1) if pred_is_label_ids else \
                "train ids (valid: 0..{} and {})".format(self.spec.num_classes - 1, self.spec.ignore_index)
            raise ValueError("prediction has unknown {}: {}{}".format(kind, bad, where))
        bad = np.flatnonzero(hist[NUM_IDS:].sum(1) > 0)
        if bad.size:
            raise ValueError("ground truth has unknown label ids {} (valid: 0..{}){}".format(
                (bad + NUM_IDS).tolist(), NUM_IDS - 1, where))
        inst = None
        if instance_image is not None:
            inst = self._check_instances(instance_image, gt8.shape, where)
        # Fold the predicted values (train or label ids) into label-id columns.
        used = np.flatnonzero(to_id >= 0)
        frame = np.zeros_like(self.id_matrix)
        np.add.at(frame, (slice(None), to_id[used]), hist[:NUM_IDS, used])
        if inst is not None:
            self._add_instances(inst, pred8, to_id, where)
            self.instance_frames += 1
        self.id_matrix += frame
        self.frames += 1

    def _check_instances(self, instance_image: np.ndarray, shape: Tuple[int, ...], where: str) -> np.ndarray:
        inst = np.asarray(instance_image)
        if inst.dtype.kind not in "iu":
            raise ValueError("instance image must hold integer ids, got dtype {}{}".format(inst.dtype, where))
        if inst.shape != shape:
            raise ValueError("instance image shape {} != ground truth shape {}{}".format(inst.shape, shape, where))
        return inst

    def _add_instances(self, inst: np.ndarray, pred8: np.ndarray, to_id: np.ndarray, where: str) -> None:
        selected = inst > INSTANCE_OFFSET  # strictly greater, as the official script
        if not selected.any():
            return
        ids = inst[selected]
        lo, hi = int(ids.min()), int(ids.max())
        if hi >= NUM_IDS * INSTANCE_OFFSET:
            raise ValueError("instance image has ids of unknown label ids: {}{}".format(
                np.unique(ids[ids >= NUM_IDS * INSTANCE_OFFSET] // INSTANCE_OFFSET).tolist(), where))
        # One joint histogram (instance id, predicted label id) over the instance pixels; sizes,
        # hits and category hits per instance are then sums over that small table.
        code = ids.astype(np.intp)
        code -= lo
        code *= NUM_IDS
        code += to_id.astype(np.uint8)[pred8[selected]]  # values validated by the caller
        table = np.bincount(code, minlength=(hi - lo + 1) * NUM_IDS).reshape(-1, NUM_IDS)
        size = table.sum(1)
        rows = np.flatnonzero(size)
        table, size = table[rows], size[rows]
        inst_ids = rows + lo
        label = inst_ids // INSTANCE_OFFSET
        keep = ~self._t.ignored[label]
        bad = keep & ~self._t.has_instances[label]
        if bad.any():
            raise ValueError("instance image has instance ids {} of classes without instances ({}){}".format(
                inst_ids[bad][:10].tolist(), sorted({self._t.name[i] for i in label[bad]}), where))
        table, size, label = table[keep], size[keep], label[keep]
        category = self._t.category[label]
        tp = table[np.arange(len(label)), label]
        # A category hit: predicted as any label id of the instance's category (ignored ones too).
        ctp = (table * (self._t.category[None, :] == category[:, None])).sum(1)
        weight = self._avg_size[label] / size.astype(np.float64)
        self.class_instances.add(label, tp, size - tp, weight)
        part = self._t.category_has_instances[category]
        self.category_instances.add(category[part], ctp[part], (size - ctp)[part], weight[part])

    def merge(self, other: "CityscapesEvaluator") -> None:
        """Add another evaluator's counts (same weighting table assumed)."""
        self.id_matrix += other.id_matrix
        self.class_instances.merge(other.class_instances)
        self.category_instances.merge(other.category_instances)
        self.frames += other.frames
        self.instance_frames += other.instance_frames

    # ----------------------------------------------------------------------------------- scores
    def result(self) -> Dict[str, object]:
        """The metrics dict (fractions; ``None`` for NaN).

        Keys: ``dataset``, ``miou``, ``class_iou``, ``pixel_accuracy``, ``mean_class_accuracy``,
        ``class_accuracy``, ``pixels``, ``frames``, ``instance_frames``, ``iiou`` (mean of
        ``class_iiou`` over the 8 instance classes), ``class_iiou``, ``category_iou`` and
        ``category_iiou`` (means over categories), ``per_category_iou``, ``per_category_iiou``.
        """
        t = self._t
        m = self.id_matrix
        out: Dict[str, object] = {"dataset": "cityscapes"}
        out.update(self.confusion.summary(self.spec.class_names))
        out["frames"] = self.frames
        out["instance_frames"] = self.instance_frames
        with_instances = self.frames > 0 and self.instance_frames == self.frames

        evaluated = ~t.ignored
        # FP of a label: predicted as it on pixels of any *other evaluated* ground-truth label.
        fp = m[evaluated].sum(0) - np.where(evaluated, np.diag(m), 0)
        class_iiou: Dict[str, Optional[float]] = {}
        for label_id in t.eval_ids:
            if not t.has_instances[label_id]:
                continue
            score = _ratio(self.class_instances.tp_w[label_id], fp[label_id], self.class_instances.fn_w[label_id])
            class_iiou[t.name[label_id]] = score if with_instances else None
        cat_iou: Dict[str, Optional[float]] = {}
        cat_iiou: Dict[str, Optional[float]] = {}
        for c, cat in enumerate(t.category_names):
            if cat not in self.spec.category_names:  # "void": NaN in the official script too
                continue
            ids = t.category_ids[c]
            scored = ids[evaluated[ids]]
            other_rows = np.flatnonzero(evaluated & (t.category != c))
            tp = m[np.ix_(scored, scored)].sum()
            cat_iou[cat] = _ratio(tp, m[np.ix_(other_rows, scored)].sum(), m[scored].sum() - tp)
            if t.category_has_instances[c] and with_instances:
                cat_iiou[cat] = _ratio(self.category_instances.tp_w[c], m[np.ix_(other_rows, ids)].sum(),
                                       self.category_instances.fn_w[c])
            else:
                cat_iiou[cat] = None
        out["iiou"] = _mean(class_iiou.values())
        out["class_iiou"] = class_iiou
        out["category_iou"] = _mean(cat_iou.values())
        out["category_iiou"] = _mean(cat_iiou.values())
        out["per_category_iou"] = cat_iou
        out["per_category_iiou"] = cat_iiou
        return out


def _ratio(tp: float, fp: float, fn: float) -> Optional[float]:
    denom = float(tp) + float(fp) + float(fn)
    return float(tp) / denom if denom > 0 else None


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    return nanmean(np.array([np.nan if v is None else v for v in values], dtype=np.float64))


# ------------------------------------------------------------------------------------ files
@dataclass(frozen=True)
class GtFrame:
    """One ground-truth frame: ``key`` is ``<city>_<seq>_<frame>``."""

    key: str
    label_path: Path
    instance_path: Optional[Path] = None


@dataclass
class PredictionMatch:
    """Prediction files paired with ground-truth keys."""

    matched: Dict[str, Path]
    unmatched: List[Path]  # prediction files that no ground truth frame claims
    missing: List[str]  # ground-truth keys without a prediction


def find_gt_frames(gt_dir: Path, label_suffix: str = GT_LABEL_SUFFIX,
                   instance_suffix: Optional[str] = GT_INSTANCE_SUFFIX) -> List[GtFrame]:
    """All ``*<label_suffix>`` files under ``gt_dir`` (recursively), with their instance files.

    The key is the file name without the suffix (``frankfurt_000000_000294``). Raises
    ``FileNotFoundError`` when the folder or any label file is missing, ``ValueError`` when
    two files share a key.
    """
    root = Path(gt_dir)
    if not root.is_dir():
        raise FileNotFoundError("ground-truth folder not found: {}".format(root))
    frames: Dict[str, GtFrame] = {}
    for path in sorted(root.rglob("*" + label_suffix)):
        key = path.name[: -len(label_suffix)]
        if key in frames:
            raise ValueError("two ground-truth files for {}: {} and {}".format(key, frames[key].label_path, path))
        inst = None
        if instance_suffix:
            candidate = path.with_name(key + instance_suffix)
            inst = candidate if candidate.is_file() else None
        frames[key] = GtFrame(key, path, inst)
    if not frames:
        raise FileNotFoundError("no *{} files under {}".format(label_suffix, root))
    return [frames[k] for k in sorted(frames)]


def is_visualisation(path: Path) -> bool:
    """Colour / overlay renderings and ground-truth files are never predictions."""
    stem = Path(path).stem.lower()
    return stem.endswith(_VISUAL_SUFFIXES) or any(m in stem + "_" for m in _GT_MARKERS)


def match_predictions(pred_dir: Path, keys: Iterable[str], pattern: str = "*.png") -> PredictionMatch:
    """Pair prediction files under ``pred_dir`` (recursive ``pattern``) with ground-truth keys.

    A file belongs to the key that is the longest ``_``-separated prefix of its stem, so
    ``frankfurt_000000_000294_leftImg8bit.png`` or ``..._labelIds.png`` match the key
    ``frankfurt_000000_000294`` (the official ``<city>_<seq>_<frame>*.png`` rule) and CamVid's
    ``0001TP_008550.png`` matches itself. Colour / overlay images are skipped. Two files for one
    key raise ``ValueError`` naming both.
    """
    root = Path(pred_dir)
    if not root.is_dir():
        raise FileNotFoundError("prediction folder not found: {}".format(root))
    wanted = set(keys)
    matched: Dict[str, Path] = {}
    unmatched: List[Path] = []
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        if is_visualisation(path):
            continue
        key = _key_of(path.stem, wanted)
        if key is None:
            unmatched.append(path)
        elif key in matched:
            raise ValueError("several predictions for {}: {} and {} (select one with --pred-glob)".format(
                key, matched[key], path))
        else:
            matched[key] = path
    missing = sorted(wanted - set(matched))
    return PredictionMatch(matched, unmatched, missing)


def _key_of(stem: str, keys: set) -> Optional[str]:
    parts = stem.split("_")
    for end in range(len(parts), 0, -1):
        candidate = "_".join(parts[:end])
        if candidate in keys:
            return candidate
    return None


_TRAIN_ID_NAME = re.compile(r"train_?ids?", re.IGNORECASE)
# What ``enet-seg predict`` writes per image: the network's class ids (train ids for a
# Cityscapes model) and, for Cityscapes models, the official label ids.
PREDICTION_CLASS_IDS_SUFFIX = "_labels.png"
PREDICTION_LABEL_IDS_SUFFIX = "_labelIds.png"


def prediction_uses_label_ids(path: Path, mode: str = "auto") -> bool:
    """Whether a prediction file holds label ids (``mode`` ``label``) or train ids (``train``).

    ``auto`` decides by name: ``*trainIds*`` and ``enet-seg predict``'s ``*_labels.png`` mean
    train ids; anything else (``*_labelIds.png``, the official submission format) label ids.
    """
    if mode == "label":
        return True
    if mode == "train":
        return False
    if mode != "auto":
        raise ValueError("prediction id mode must be auto, label or train, got {!r}".format(mode))
    name = Path(path).name
    return _TRAIN_ID_NAME.search(name) is None and not name.endswith(PREDICTION_CLASS_IDS_SUFFIX)


def read_label_png(path: Path, what: str = "label image") -> np.ndarray:
    """Read a single-channel label PNG as stored (palette indices, 8- or 16-bit values).

    Uses Pillow, as the official scripts do, so palette PNGs give their indices.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the file.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError("{} not found: {}".format(what, path))
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.array(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError("cannot read {} {}: {}".format(what, path, exc)) from None
    if array.ndim != 2:
        raise ValueError("{} {} has {} channels (mode {}); expected a single-channel label PNG".format(
            what, path, array.shape[2] if array.ndim == 3 else array.shape, mode))
    if array.dtype.kind not in "iu":
        raise ValueError("{} {} is mode {}; expected 8- or 16-bit ids".format(what, path, mode))
    return array
