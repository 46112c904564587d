"""The model-in-the-loop evaluation pipeline behind ``eval-dir``, ``eval-bag`` and ``eval_node``.

One pipeline (:class:`EvalPipeline`) serves every front end (frame sources are in
:mod:`.frames`, the model side in :mod:`.model`, the calls in :mod:`.api`). Three stages overlap so that scoring costs
almost no throughput:

1. a reader thread walks the folder or bag (pairing frames with ground truth) and hands decode
   jobs (PNG / JPEG / bag messages) to a few worker threads that run ahead of the model;
2. the calling thread runs the model (its latency is what ``latency_ms`` reports);
3. a scoring thread maps predictions to the dataset's train ids, checks the ground truth,
   adds the frame to the evaluator and writes ``--save-predictions`` PNGs.

Rules (never a silent change in the numbers):

- a camera frame that cannot be decoded is reported (name, bag/topic/stamp) and skipped; it
  is counted in ``frames_skipped`` and listed in the report;
- a frame without ground truth is segmented and counted in ``frames_without_gt``;
- ground truth that is unreadable, of another size (unless ``resize_gt="nearest"``) or holds
  unknown label ids stops the evaluation with an error naming the frame: it means the wrong
  labels or the wrong dataset, and scoring around it would measure something else.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from ..data.labels import LabelSpec
from .report import write_report

LOG = logging.getLogger(__name__)

RESIZE_GT_CHOICES = ("nearest",)
MAX_LISTED = 20  # skipped frames listed one by one in the report
MAX_KEPT = 1000  # skipped frames kept with their reason for metrics.json (all are counted)
THROUGHPUT_FRAMES = 200  # most frames held decoded in memory for the bare-inference timing


# ------------------------------------------------------------------------------------ pipeline
def label_id_lut(spec: LabelSpec) -> np.ndarray:
    """256-entry uint8 table: train id -> dataset label id (for saved prediction PNGs)."""
    if spec.train_id_to_id is None:
        return np.arange(256, dtype=np.uint8)
    lut = np.zeros(256, dtype=np.uint8)  # void -> id 0 ("unlabeled")
    lut[: len(spec.train_id_to_id)] = np.asarray(spec.train_id_to_id, dtype=np.uint8)
    return lut


@dataclass
class EvalItem:
    """One frame for the pipeline (made by a decode job on a worker thread).

    ``error`` set means the frame could not be decoded: it is reported and skipped.
    """

    name: str  # where the frame comes from, for messages (file, or bag/topic/stamp)
    stem: str  # base name for saved predictions
    image: Optional[np.ndarray] = None
    channel_order: str = "rgb"
    gt: Optional[np.ndarray] = None
    instances: Optional[np.ndarray] = None
    gt_name: str = ""  # where the ground truth comes from
    error: Optional[str] = None


@dataclass
class EvalStats:
    """What happened during a run (everything the report needs besides the evaluator)."""

    segmented: int = 0
    scored: int = 0
    without_gt: int = 0
    skipped_count: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (frame, reason), the first MAX_KEPT
    latencies_ms: List[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    notes: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def skip(self, name: str, reason: str) -> None:
        """Count a frame that was not scored, keeping its reason (bounded memory for live use)."""
        self.skipped_count += 1
        if len(self.skipped) < MAX_KEPT:
            self.skipped.append((name, reason))

    @property
    def fps(self) -> float:
        """Frames segmented per second over the whole run (decode + inference + scoring)."""
        return self.segmented / self.elapsed_s if self.elapsed_s > 0 else 0.0


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


Job = Callable[[], EvalItem]  # decodes one frame (and its ground truth) when called
R = TypeVar("R")


def decode_ahead(jobs: Iterable[Callable[[], R]], workers: int = 2, depth: int = 8) -> Iterator[R]:
    """Run decode jobs on ``workers`` threads, at most ``depth`` ahead; results in job order.

    The one read-ahead helper of the package (frames, ground truth, prediction PNGs).

    ``jobs`` itself (bag reading, pairing) is iterated on one feeder thread, so the caller's
    thread only runs the model. Exceptions (from the iteration or a job) re-raise here.
    """
    from concurrent.futures import ThreadPoolExecutor

    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="eval_decode")

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for job in jobs:
                if not put(pool.submit(job)):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    feeder = threading.Thread(target=feed, name="eval_reader", daemon=True)
    feeder.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item.result()
    finally:
        stop.set()
        feeder.join(timeout=10.0)
        pool.shutdown(wait=True, cancel_futures=True)


class EvalPipeline:
    """Segment frames, score them on a worker thread, optionally save the predictions.

    Args:
        segmenter: an :class:`enet_seg_ros.engine.Segmenter` (``segment(image, channel_order)``).
        evaluator: from :func:`enet_seg_ros.evaluate.make_evaluator`.
        pred_lut: model output -> train id table (:func:`prediction_lut`).
        resize_gt: ``None`` (a ground truth of another size is an error) or ``"nearest"``.
        resize_hint: how the user enables ``resize_gt`` (named in the size error).
        save_dir: folder for ``<stem>_labelIds.png`` / ``<stem>_color.png`` (None: not saved).
        spec: label spec (palette and id mapping for saved predictions).
    """

    def __init__(self, segmenter: Any, evaluator: Any, pred_lut: np.ndarray, *, spec: LabelSpec,
                 resize_gt: Optional[str] = None, save_dir: Optional[Path] = None,
                 resize_hint: str = "pass --resize-gt nearest") -> None:
        if resize_gt not in (None,) + RESIZE_GT_CHOICES:
            raise ValueError("resize_gt must be None or one of {}, got {!r}".format(list(RESIZE_GT_CHOICES), resize_gt))
        self.segmenter = segmenter
        self.evaluator = evaluator
        self.pred_lut = np.asarray(pred_lut, dtype=np.uint8)
        self.spec = spec
        self.resize_gt = resize_gt
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.resize_hint = resize_hint
        self._id_lut = label_id_lut(spec)
        self._palette = spec.palette_array()

    # -- scoring (worker thread) ------------------------------------------------------------
    def score(self, item: EvalItem, labels: np.ndarray, stats: EvalStats) -> None:
        """Score one segmented frame (and save its prediction); raises ValueError for bad ground truth."""
        import cv2

        pred = np.take(self.pred_lut, labels)
        if self.save_dir is not None:
            self._save(item.stem, pred)
        if item.gt is None:
            stats.without_gt += 1
            return
        gt, inst = item.gt, item.instances
        where = item.gt_name or item.name
        if gt.ndim != 2:
            raise ValueError("ground truth must be a single-channel label image, got shape {} ({})".format(
                gt.shape, where))
        if gt.shape != pred.shape:
            if self.resize_gt != "nearest":
                raise ValueError("ground truth is {}x{} but the frame is {}x{} ({}); {} to resize the ground "
                                 "truth".format(gt.shape[1], gt.shape[0], pred.shape[1], pred.shape[0], where,
                                                self.resize_hint))
            size = (pred.shape[1], pred.shape[0])
            gt = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)
            if inst is not None:
                inst = cv2.resize(inst, size, interpolation=cv2.INTER_NEAREST)
        self.evaluator.add(pred, gt, inst, name=where)  # unknown ids: ValueError naming the frame
        stats.scored += 1

    def _save(self, stem: str, pred: np.ndarray) -> None:
        import cv2

        assert self.save_dir is not None
        ok1 = cv2.imwrite(str(self.save_dir / (stem + "_labelIds.png")), np.take(self._id_lut, pred))
        color = np.take(self._palette, pred, axis=0)
        ok2 = cv2.imwrite(str(self.save_dir / (stem + "_color.png")), np.ascontiguousarray(color[:, :, ::-1]))
        if not (ok1 and ok2):
            raise RuntimeError("cannot write prediction PNGs for {} into {}".format(stem, self.save_dir))

    # -- the run ------------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], total: Optional[int] = None, desc: str = "eval",
            progress: bool = True, workers: int = 2) -> EvalStats:
        """Decode (``workers`` threads), segment and score every job's frame; returns :class:`EvalStats`.

        ``total`` (frames expected) drives the progress bar's ETA.
        """
        from tqdm import tqdm

        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        stats = EvalStats()
        work: "queue.Queue[Any]" = queue.Queue(maxsize=8)
        failure: List[BaseException] = []

        def scorer() -> None:
            while True:
                job = work.get()
                if job is _END:
                    return
                if failure:
                    continue  # drain after an error so the producer never blocks
                try:
                    self.score(job[0], job[1], stats)
                except BaseException as exc:
                    failure.append(exc)

        thread = threading.Thread(target=scorer, name="eval_scorer", daemon=True)
        thread.start()
        start = time.perf_counter()
        bar = tqdm(total=total, unit="frame", desc=desc, disable=not progress, dynamic_ncols=True)
        items = decode_ahead(jobs, workers)
        try:
            for item in items:
                if failure:
                    break
                if item.error is not None:
                    stats.skip(item.name, item.error)
                    LOG.warning("frame skipped: %s: %s", item.name, item.error)
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                result = self.segmenter.segment(item.image, channel_order=item.channel_order)
                stats.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                stats.segmented += 1
                work.put((item, result.labels))
                bar.update(1)
        finally:
            items.close()  # stops the reader and the decode workers now, also after an error
            work.put(_END)
            thread.join()
            bar.close()
        stats.elapsed_s = time.perf_counter() - start
        if failure:
            raise failure[0]
        return stats


def bare_throughput(segmenter: Any, images: Sequence[np.ndarray], channel_order: str = "rgb") -> float:
    """Frames per second of ``segment`` alone over decoded ``images`` (no reading, no scoring)."""
    if not images:
        return 0.0
    start = time.perf_counter()
    for image in images:
        segmenter.segment(image, channel_order=channel_order)
    return len(images) / (time.perf_counter() - start)


def record_throughput(stats: EvalStats, bare_runs: Sequence[float], bare_frames: Optional[int] = None) -> None:
    """Put eval vs bare-inference rates into ``stats.extra["throughput"]`` (see :func:`throughput_line`).

    ``bare_runs`` are bare-inference rates (e.g. timed before and after the evaluation); their
    time-weighted mean (harmonic mean of the rates) is the reference.
    """
    runs = [float(r) for r in bare_runs if r > 0]
    bare_fps = len(runs) / sum(1.0 / r for r in runs) if runs else 0.0
    ratio = stats.fps / bare_fps if bare_fps else None
    stats.extra["throughput"] = {"eval_fps": stats.fps, "bare_inference_fps": bare_fps, "ratio": ratio,
                                 "bare_runs_fps": runs,
                                 "bare_frames": bare_frames if bare_frames is not None else min(
                                     stats.segmented, THROUGHPUT_FRAMES)}


def throughput_line(stats: EvalStats) -> Optional[str]:
    """``throughput: evaluation 30.1 fps, bare inference 31.0 fps (0.97x)``; None when not measured."""
    t = stats.extra.get("throughput")
    if t is None:
        return None
    return "throughput: evaluation {:.1f} fps, bare inference {:.1f} fps ({})".format(
        t["eval_fps"], t["bare_inference_fps"], "n/a" if t["ratio"] is None else "{:.2f}x".format(t["ratio"]))


def stats_notes(stats: EvalStats) -> List[str]:
    """Report lines for skipped frames and frames without ground truth."""
    notes = list(stats.notes)
    if stats.skipped_count:
        notes.append("{} frame(s) were skipped (not scored):".format(stats.skipped_count))
        for name, reason in stats.skipped[:MAX_LISTED]:
            notes.append("skipped {}: {}".format(name, reason))
        if stats.skipped_count > MAX_LISTED:
            notes.append("... and {} more skipped frames".format(stats.skipped_count - MAX_LISTED))
    if stats.without_gt:
        notes.append("{} frame(s) had no ground truth: segmented, not scored".format(stats.without_gt))
    return notes


def write_outputs(out_dir: Path, evaluator: Any, stats: EvalStats, *, model: str, backend: str,
                  inputs: Dict[str, Any], title: str) -> Dict[str, Path]:
    """metrics.json (+ ``frames_skipped``, ``skipped`` and ``extra``), report.md and the plots."""
    result = dict(evaluator.result())
    result["frames_skipped"] = stats.skipped_count
    result["skipped"] = [{"frame": n, "reason": r} for n, r in stats.skipped]
    result.update(stats.extra)
    return write_report(Path(out_dir), result, evaluator.confusion, evaluator.class_names,
                        frames_without_gt=stats.without_gt, model=model, backend=backend,
                        latencies_ms=stats.latencies_ms, inputs=inputs, notes=stats_notes(stats), title=title)


