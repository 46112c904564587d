"""Metric overhead benchmark: ms per frame of the evaluators on synthetic full-size frames.

``enet-seg bench metrics [--size 2048x1024] [--frames 20]`` prints a markdown table (machine +
date) for BENCHMARKS.md. Frames are structured Cityscapes-like scenes with
instances and a 20 % noisy prediction, so every code path (histogram, instance sums) runs.
"""
from __future__ import annotations

import time
from typing import Callable, List, Tuple

import numpy as np

from ..data.labels import CITYSCAPES
from ..evaluate.cityscapes import CityscapesEvaluator
from ..evaluate.metrics import ConfusionMatrix
from .machine import machine_line


def synthetic_frame(rng: np.random.Generator, width: int, height: int,
                    instances: int = 40) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train-id prediction, label-id ground truth, instance ids) of one street-like scene."""
    gt = np.empty((height, width), np.uint8)
    for i, label in enumerate((23, 11, 21, 8, 7)):  # sky, building, vegetation, sidewalk, road bands
        gt[i * height // 5:(i + 1) * height // 5] = label
    inst = gt.astype(np.int32)
    for j in range(instances):
        label = int(rng.choice([24, 25, 26, 26, 26, 27, 28, 33]))
        h, w = int(rng.integers(20, height // 4)), int(rng.integers(20, width // 6))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        gt[y:y + h, x:x + w] = label
        inst[y:y + h, x:x + w] = label * 1000 + j
    pred = CITYSCAPES.lut()[gt]
    noise = rng.random(gt.shape) < 0.2
    pred[noise] = rng.integers(0, CITYSCAPES.num_classes, int(noise.sum()))
    return pred, gt, inst.astype(np.uint16)


def _time_per_call(fn: Callable[[int], None], calls: int) -> float:
    fn(0)  # warm-up (allocations, lazy imports)
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1000.0


def run(width: int, height: int, frames: int, seed: int = 0) -> List[Tuple[str, float]]:
    """Per-frame milliseconds of each evaluation path."""
    rng = np.random.default_rng(seed)
    data = [synthetic_frame(rng, width, height) for _ in range(min(frames, 4))]
    pick = lambda i: data[i % len(data)]  # noqa: E731
    cm = ConfusionMatrix(CITYSCAPES.num_classes, CITYSCAPES.ignore_index)
    train_gt = [CITYSCAPES.lut()[gt] for _, gt, _ in data]
    ev_plain = CityscapesEvaluator()
    ev_inst = CityscapesEvaluator()
    rows = [
        ("ConfusionMatrix.update (train ids)", _time_per_call(lambda i: cm.update(pick(i)[0], train_gt[i % len(data)]),
                                                             frames)),
        ("CityscapesEvaluator.add, no instances", _time_per_call(lambda i: ev_plain.add(pick(i)[0], pick(i)[1]),
                                                                 frames)),
        ("CityscapesEvaluator.add with instances (iIoU)", _time_per_call(
            lambda i: ev_inst.add(pick(i)[0], pick(i)[1], pick(i)[2]), frames)),
        ("CityscapesEvaluator.result()", _time_per_call(lambda i: ev_inst.result(), frames)),
    ]
    return rows


def to_markdown(rows: List[Tuple[str, float]], width: int, height: int, frames: int) -> str:
    """The BENCHMARKS.md table, headed by the machine line."""
    lines = ["Metric overhead, {}x{}, {} frames, numpy {}, {}".format(width, height, frames, np.__version__,
                                                                      machine_line()),
             "", "| Path | ms / frame |", "|---|---:|"]
    lines += ["| {} | {:.2f} |".format(name, ms) for name, ms in rows]
    return "\n".join(lines)
