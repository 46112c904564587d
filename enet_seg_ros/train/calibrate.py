"""Per-class logit offsets fitted after training, for the best mean IoU.

A network trained with class-weighted cross-entropy (ENet's ``1 / ln(c + p)`` weights) learns
roughly ``log p(class | pixel) + log w_class``: it over-predicts the rare classes it was told to
value (on CamVid val the shipped ENet labelled 5x more pixels pedestrian than there are) and
each such false positive costs another class IoU. Adding one constant per class to the logits
before the argmax moves those decision boundaries without touching the features.

The offsets are fitted on **training** frames (or frames held out of train), never on the split
that is reported, by coordinate ascent on the mean IoU of a pixel sample: for one class at a
time, every candidate offset is scored at once from a single histogram (see
:func:`_best_offset_for_class`), so a fit over millions of pixels takes seconds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

log = logging.getLogger("enet_seg_ros.train")

#: Offsets tried around the current one for a class, in logit units, per round.
DEFAULT_STEPS = np.round(np.arange(-3.0, 3.0001, 0.1), 6)


@dataclass
class OffsetFit:
    """Result of :func:`fit_logit_offsets`."""

    offsets: List[float]
    miou_before: float  # mean IoU of the pixel sample without offsets
    miou_after: float  # ... with them
    rounds: int
    pixels: int


def mean_iou(cm: np.ndarray) -> np.ndarray:
    """Mean IoU of one ``(C, C)`` confusion matrix or of a stack ``(..., C, C)`` (rows = ground truth).

    Classes absent from both ground truth and prediction count as IoU 0 here: the sample is fixed
    during a fit, so that only shifts every candidate by the same amount.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    union = cm.sum(-1) + cm.sum(-2) - tp
    return (tp / np.maximum(union, 1)).mean(-1)


def _best_offset_for_class(logits: np.ndarray, gt: np.ndarray, offsets: np.ndarray, c: int,
                           steps: np.ndarray) -> Tuple[float, float]:
    """Best ``offsets[c] + step`` over ``steps`` (ascending, containing 0); returns (offset, mIoU).

    With the other offsets fixed, a pixel is labelled ``c`` iff its margin
    ``logit_c + offset_c - max_{k != c}(logit_k + offset_k)`` plus the step is positive, and
    otherwise keeps its best other class. So each pixel is binned by the first step that flips
    it to ``c``; a cumulative sum over bins then gives the confusion matrix of every step.
    """
    n = logits.shape[1]
    adjusted = logits + offsets
    own = adjusted[:, c].copy()
    adjusted[:, c] = -np.inf
    other = adjusted.argmax(1)
    margin = own - adjusted[np.arange(len(other)), other]
    first = np.searchsorted(steps, -margin, side="right")  # steps[j] > -margin  <=>  j >= first
    table = np.bincount((first * n + gt) * n + other, minlength=(len(steps) + 1) * n * n)
    table = table.reshape(len(steps) + 1, n, n)
    to_c = np.cumsum(table, axis=0)[:-1]  # [j]: (gt, other) counts of the pixels labelled c at step j
    keep = table.sum(0)[None] - to_c
    cms = keep.copy()
    cms[:, :, c] += to_c.sum(2)
    scores = mean_iou(cms)
    j = int(np.argmax(scores))
    return float(offsets[c] + steps[j]), float(scores[j])


def fit_logit_offsets(logits: np.ndarray, gt: np.ndarray, steps: Optional[Sequence[float]] = None,
                      max_rounds: int = 6, min_gain: float = 1e-4) -> OffsetFit:
    """Per-class logit offsets that maximise the mean IoU of a pixel sample.

    Args:
        logits: ``(N, C)`` float32 logits of ``N`` sampled pixels.
        gt: ``(N,)`` ground-truth class ids in ``0..C-1`` (ignored pixels removed beforehand).
        steps: offset changes tried per class and round (must contain 0); default -3..3 by 0.1.
        max_rounds: passes over the classes; stops early when a pass gains less than ``min_gain``.

    Offsets are shifted to mean 0 (adding a constant to every logit changes nothing).
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    gt = np.asarray(gt, dtype=np.int64)
    if logits.ndim != 2 or gt.shape != (logits.shape[0],):
        raise ValueError("logits must be (N, C) and gt (N,), got {} and {}".format(logits.shape, gt.shape))
    n = logits.shape[1]
    if gt.size == 0:
        raise ValueError("no labelled pixels to fit logit offsets on")
    if gt.min() < 0 or gt.max() >= n:
        raise ValueError("gt holds ids outside 0..{} (ignored pixels must be removed first)".format(n - 1))
    steps = np.sort(np.asarray(DEFAULT_STEPS if steps is None else steps, dtype=np.float64))
    if not np.any(steps == 0):
        raise ValueError("steps must contain 0 (keep the current offset)")
    offsets = np.zeros(n, dtype=np.float32)
    cm0 = np.bincount(gt * n + logits.argmax(1), minlength=n * n).reshape(n, n)
    before = current = float(mean_iou(cm0))
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        start = current
        for c in range(n):
            value, score = _best_offset_for_class(logits, gt, offsets, c, steps)
            if score > current:
                offsets[c], current = value, score
        if current - start < min_gain:
            break
    offsets -= offsets.mean()
    return OffsetFit([float(v) for v in offsets], before, current, rounds, int(gt.size))


@torch.inference_mode()
def sample_logits(model: torch.nn.Module, frames: Iterable[Tuple[torch.Tensor, np.ndarray]],
                  num_classes: int, stride: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """Logits and ground truth of every ``stride``-th pixel (both axes) of labelled frames.

    Args:
        model: network in eval mode; its logits beyond ``num_classes`` (e.g. a void output) are
            dropped. Its own ``logit_offset``, if any, is applied: clear it to sample raw logits.
        frames: ``(input (1, 3, H, W) tensor, label (H, W) array in class ids)`` pairs; label
            values outside ``0..num_classes-1`` are ignored.
        num_classes: real classes.
        stride: pixel sub-sampling (3: one pixel in 9; neighbours carry little extra information).
    """
    chunks, labels = [], []
    device = next(model.parameters()).device
    for x, label in frames:
        out = model(x.to(device))[0, :num_classes].float()
        out = out[:, stride // 2::stride, stride // 2::stride]
        lab = np.asarray(label)[stride // 2::stride, stride // 2::stride].astype(np.int64)
        keep = (lab >= 0) & (lab < num_classes)
        chunks.append(out.permute(1, 2, 0).cpu().numpy()[keep])
        labels.append(lab[keep])
    if not chunks:
        raise ValueError("no frames to sample logits from")
    return np.concatenate(chunks), np.concatenate(labels)


def _frames(dataset, size: Tuple[int, int], norm) -> Iterable[Tuple[torch.Tensor, np.ndarray]]:
    """(normalised input, train-id label) of each frame, at the network size ``(W, H)``."""
    from ..data.datasets import map_decoding
    from ..data.transforms import normalize, resize_pair

    # Decoded on a few threads (uint8, in order), resized as the trainer's frame store does;
    # normalised here, one frame at a time.
    for image, label in map_decoding(lambda i: resize_pair(*dataset.load(i), size), range(len(dataset))):
        x = normalize(image, norm.channel_order, norm.mean, norm.std, norm.scale)
        yield torch.from_numpy(x)[None], label


@torch.inference_mode()
def score_dataset(model: torch.nn.Module, dataset, size: Tuple[int, int], norm, class_names: Sequence[str]):
    """Mean IoU etc. of ``model`` (fp32, as exported) over every frame of ``dataset``."""
    from ..evaluate.metrics import ConfusionMatrix

    n = len(class_names)
    device = next(model.parameters()).device
    cm = ConfusionMatrix(n)  # ground truth outside 0..n-1 (void) is skipped
    for x, label in _frames(dataset, size, norm):
        cm.update(model(x.to(device))[0, :n].argmax(0).cpu().numpy(), label)
    return cm.summary(list(class_names))


def calibrate_weights(weights: str, data_root: str, out: str, dataset: str = "camvid", split: str = "train",
                      stride: int = 3, score_split: Optional[str] = "val", threads: Optional[int] = None,
                      device: str = "cpu") -> dict:
    """Fit a model's per-class logit offsets on ``split`` and write calibrated weights to ``out``.

    The new card has ``options.logit_offset`` set, its ``metrics`` re-scored on ``score_split``
    (once, after the fit; the previous scores are kept under ``metrics.before_logit_offset``)
    with ``metrics.logit_offset`` saying what was fitted on what, and no ``precisions``
    records: int8 / bf16 must be validated again for the new decision rule
    (``enet-seg quantize --validate ... --record``).

    ``device``: where the network runs (``cpu``, ``cuda``...); the fit itself is numpy.
    Returns a summary (offsets, sample mIoU before/after, the new scores).
    """
    import time
    from dataclasses import replace
    from pathlib import Path

    from ..data.datasets import build_dataset
    from ..weights import load_model, resolve_weights, save_model

    if threads:
        torch.set_num_threads(threads)
    path = resolve_weights(weights)
    model, card = load_model(path)
    if card.dataset != dataset:
        raise ValueError("{} was trained on {!r}, not {!r}".format(path, card.dataset, dataset))
    classes = list(card.class_names)
    if model.num_classes != len(classes):
        raise ValueError("{} has {} outputs for {} classes: logit offsets need one output per class"
                         .format(path, model.num_classes, len(classes)))
    size = tuple(card.input_size)
    model.set_logit_offset(None)  # fit the raw decision rule, not one fitted before
    model.to(device)
    t0 = time.time()
    fit_set = build_dataset(dataset, data_root, split)
    logits, gt = sample_logits(model, _frames(fit_set, size, card.normalization), len(classes), stride)
    fit = fit_logit_offsets(logits, gt)
    log.info("logit offsets fitted on %s %s (%d frames, %d pixels): sample mIoU %.4f -> %.4f in %d rounds",
             dataset, split, len(fit_set), fit.pixels, fit.miou_before, fit.miou_after, fit.rounds)
    model.set_logit_offset(fit.offsets)
    metrics = dict(card.metrics)
    # Weights calibrated before keep their scores without offsets: those are still the "before".
    previous = metrics.get("before_logit_offset") or {
        k: v for k, v in metrics.items() if k.startswith("val_") or k == "split"}
    metrics["logit_offset"] = {
        "fitted_on": "{} {} ({} frames, one pixel in {} along each axis: {} pixels)".format(
            dataset, split, len(fit_set), stride, fit.pixels),
        "method": "per-class logit offsets, coordinate ascent on the sample's mean IoU (enet_seg_ros.train.calibrate)",
        "offsets": {c: round(v, 4) for c, v in zip(classes, fit.offsets)},
        "sample_miou_before": round(fit.miou_before, 5), "sample_miou_after": round(fit.miou_after, 5),
        "rounds": fit.rounds, "seconds": round(time.time() - t0, 1),
    }
    summary = {"offsets": fit.offsets, "sample_miou_before": fit.miou_before, "sample_miou_after": fit.miou_after}
    if score_split:
        scores = score_dataset(model, build_dataset(dataset, data_root, score_split), size, card.normalization, classes)
        metrics["before_logit_offset"] = previous
        metrics.update({"split": score_split, "val_miou": scores["miou"], "val_pixel_accuracy": scores["pixel_accuracy"],
                        "val_mean_class_accuracy": scores["mean_class_accuracy"], "val_class_iou": scores["class_iou"]})
        metrics["logit_offset"]["scored_on"] = "{} (scored once, after the fit; not used to fit)".format(score_split)
        summary["scores"] = {"before": previous.get("val_miou"), "after": scores["miou"]}
    new_card = replace(card, options=dict(card.options, logit_offset=True), metrics=metrics, precisions={})
    save_model(Path(out), model.cpu(), new_card)
    return summary
