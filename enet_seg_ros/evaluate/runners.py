"""Model-in-the-loop evaluation: ``eval-dir`` (labelled folders) and ``eval-bag`` (ROS 2 bags).

One pipeline (:class:`EvalPipeline`) serves both. Three stages overlap so that scoring costs
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

import csv
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.labels import LabelSpec

LOG = logging.getLogger(__name__)

UNKNOWN = 255  # enet_seg_ros.engine.UNKNOWN: pixels the network did not see (center_crop borders)
RESIZE_GT_CHOICES = ("nearest",)
MAX_LISTED = 20  # skipped frames listed one by one in the report
MAX_KEPT = 1000  # skipped frames kept with their reason for metrics.json (all are counted)
THROUGHPUT_FRAMES = 200  # most frames held decoded in memory for the bare-inference timing


# ------------------------------------------------------------------------------------ model <-> dataset
def check_model_matches(card: Any, spec: LabelSpec, weights: Any = "") -> None:
    """Refuse a model whose classes are not the dataset's train ids (the scores would be meaningless).

    The card may have one extra trailing "void" output (``card.ignore_index``), as some
    published checkpoints do.
    """
    real = card.num_classes - (1 if card.ignore_index is not None and card.ignore_index >= spec.num_classes else 0)
    if real != spec.num_classes:
        raise ValueError("model {}{} predicts {} classes but {} has {}; pass the matching --dataset".format(
            card.arch, " ({})".format(weights) if weights else "", card.num_classes, spec.dataset, spec.num_classes))
    names = [str(n).lower() for n in card.class_names[: spec.num_classes]]
    if names != [n.lower() for n in spec.class_names]:
        LOG.warning("model class names %s differ from %s's %s; scoring by class index", names, spec.dataset,
                    list(spec.class_names))


def prediction_lut(card: Any, spec: LabelSpec) -> np.ndarray:
    """256-entry uint8 table: model output value -> the evaluator's train id.

    Real classes map to themselves; the card's void output and :data:`UNKNOWN` become the
    dataset's ignore index ("no class", a miss). Other values are left as they are so the
    evaluator rejects them loudly.
    """
    lut = np.arange(256, dtype=np.uint8)
    if card.ignore_index is not None and 0 <= card.ignore_index < 256:
        lut[card.ignore_index] = spec.ignore_index
    lut[UNKNOWN] = spec.ignore_index
    return lut


def label_id_lut(spec: LabelSpec) -> np.ndarray:
    """256-entry uint8 table: train id -> dataset label id (for saved prediction PNGs)."""
    if spec.train_id_to_id is None:
        return np.arange(256, dtype=np.uint8)
    lut = np.zeros(256, dtype=np.uint8)  # void -> id 0 ("unlabeled")
    lut[: len(spec.train_id_to_id)] = np.asarray(spec.train_id_to_id, dtype=np.uint8)
    return lut


def model_description(card: Any, weights: Any, input_size: Optional[Sequence[int]] = None) -> str:
    """``enet camvid 480x360 (enet_camvid.safetensors)`` for reports (``input_size``: the one in use)."""
    size = "x".join(str(int(v)) for v in (input_size or card.input_size))
    return "{} {} {} ({})".format(card.arch, card.dataset or "", size, Path(str(weights)).name).replace("  ", " ")


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"WxH"`` -> ``(W, H)``; None stays None."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError("size must look like WIDTHxHEIGHT (e.g. 480x360), got {!r}".format(text)) from None
    if min(w, h) < 8 or max(w, h) > 8192:
        raise ValueError("size {}x{} out of range (8..8192)".format(w, h))
    return w, h


# ------------------------------------------------------------------------------------ pipeline
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


def decode_ahead(jobs: Iterable[Job], workers: int = 2, depth: int = 8) -> Iterator[EvalItem]:
    """Run decode jobs on ``workers`` threads, at most ``depth`` ahead; results in job order.

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


def measure_bare(bag: Any, image: Any, segmenter: Any, limit: int = THROUGHPUT_FRAMES) -> float:
    """:func:`bare_throughput` over the first ``limit`` decodable frames of a bag topic."""
    from .bag_io import decode_frame

    frames: List[Tuple[np.ndarray, str]] = []
    for m in bag.messages([image.topic]):
        if len(frames) >= limit:
            break
        if m.error is None:
            try:
                frames.append(decode_frame(m.msg, m.msgtype))
            except ValueError:
                continue
    if not frames:
        return 0.0
    start = time.perf_counter()
    for pixels, order in frames:
        segmenter.segment(pixels, channel_order=order)
    return len(frames) / (time.perf_counter() - start)


def record_throughput(stats: EvalStats, bare_runs: Sequence[float], bare_frames: Optional[int] = None) -> None:
    """Put eval vs bare-inference rates into ``stats.extra["throughput"]`` and print them.

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
    print("throughput: evaluation {:.1f} fps, bare inference {:.1f} fps ({})".format(
        stats.fps, bare_fps, "n/a" if ratio is None else "{:.2f}x".format(ratio)))


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
    from .report import write_report

    result = dict(evaluator.result())
    result["frames_skipped"] = stats.skipped_count
    result["skipped"] = [{"frame": n, "reason": r} for n, r in stats.skipped]
    result.update(stats.extra)
    return write_report(Path(out_dir), result, evaluator.confusion, evaluator.class_names,
                        frames_without_gt=stats.without_gt, model=model, backend=backend,
                        latencies_ms=stats.latencies_ms, inputs=inputs, notes=stats_notes(stats), title=title)


def print_summary(result: Dict[str, Any], stats: EvalStats, report: Path) -> None:
    """One line of headline numbers, then the report path."""
    def pct(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else "{:.2f}%".format(100 * value)

    parts = ["mIoU {}".format(pct("miou"))]
    if "iiou" in result:
        parts += ["iIoU {}".format(pct("iiou")), "category IoU {}".format(pct("category_iou"))]
    parts += ["pixel acc {}".format(pct("pixel_accuracy")), "{} frames scored".format(stats.scored)]
    if stats.without_gt:
        parts.append("{} without ground truth".format(stats.without_gt))
    if stats.skipped_count:
        parts.append("{} skipped".format(stats.skipped_count))
    parts.append("{:.1f} fps".format(stats.fps))
    print("  ".join(parts))
    print("report: {}".format(report))


# ------------------------------------------------------------------------------------ model loading
@dataclass
class LoadedModel:
    """A segmenter with what the evaluation needs to know about it."""

    segmenter: Any
    card: Any
    spec: LabelSpec
    pred_lut: np.ndarray
    description: str


def load_for_dataset(weights: Optional[str], dataset: Optional[str], backend: str = "auto",
                     input_size: Optional[Tuple[int, int]] = None, device: Optional[str] = None,
                     threads: Optional[int] = None, strict: bool = False) -> LoadedModel:
    """Read the card (cheap), check it against the dataset, then build the segmenter.

    ``dataset`` None means the card's dataset; ``weights`` None means the shipped default model.
    ``strict``: an explicit ``backend`` that cannot start raises instead of falling back.
    """
    from ..data.labels import get_label_spec
    from ..weights import read_card, resolve_weights

    path = resolve_weights(weights)
    card = read_card(path)  # WeightsError (a ValueError) naming the file
    name = dataset or card.dataset
    if not name:
        raise ValueError("the model card of {} names no dataset; pass --dataset".format(path))
    spec = get_label_spec(name)
    check_model_matches(card, spec, path)
    from ..engine import Segmenter

    segmenter = Segmenter(str(path), backend=backend or "auto", device=device, input_size=input_size,
                          threads=threads, strict=strict)
    return LoadedModel(segmenter, card, spec, prediction_lut(card, spec),
                       model_description(card, path, segmenter.input_size))


# ------------------------------------------------------------------------------------ eval-dir
def folder_jobs(frames: Sequence[Any], with_instances: bool) -> Iterator[Job]:
    """One decode job per :class:`~enet_seg_ros.evaluate.folders.LabelledFrame`."""
    for f in frames:
        yield functools.partial(_load_folder_frame, f, with_instances)


def _load_folder_frame(f: Any, with_instances: bool) -> EvalItem:
    from .folders import read_bgr, read_instance_ids, read_label_ids

    name = str(f.image_path)
    try:
        image = read_bgr(f.image_path)  # the segmenter takes BGR as is: no channel copy
    except ValueError as exc:
        return EvalItem(name=name, stem=f.key, error=str(exc))
    gt = inst = None
    if f.label_path is not None:
        gt = read_label_ids(f.label_path)
        if with_instances and f.instance_path is not None:
            inst = read_instance_ids(f.instance_path)
    return EvalItem(name=name, stem=f.key, image=image, channel_order="bgr", gt=gt, instances=inst,
                    gt_name=str(f.label_path) if f.label_path else "")


# ------------------------------------------------------------------------------------ eval-bag
@dataclass(frozen=True)
class IndexRow:
    """One row of an index CSV: the label (and optional instance) file of a stamp."""

    stamp_ns: int
    label_path: Path
    instance_path: Optional[Path]
    line: int


def read_index(csv_path: Path, labels_dir: Path) -> Dict[int, IndexRow]:
    """Parse ``stamp_ns,label_path[,instance_path]`` rows (paths relative to ``labels_dir``).

    A header row, blank lines and ``#`` comments are allowed. Raises ``ValueError`` naming the
    file and line for a malformed row or a repeated stamp, ``FileNotFoundError`` for a label
    file that does not exist.
    """
    csv_path, labels_dir = Path(csv_path), Path(labels_dir)
    if not csv_path.is_file():
        raise FileNotFoundError("index CSV not found: {}".format(csv_path))
    if not labels_dir.is_dir():
        raise FileNotFoundError("label folder not found: {}".format(labels_dir))
    rows: Dict[int, IndexRow] = {}
    with csv_path.open(newline="") as fh:
        for line_no, fields in enumerate(csv.reader(fh), 1):
            fields = [f.strip() for f in fields]
            if not fields or not fields[0] or fields[0].startswith("#"):
                continue
            where = "{}:{}".format(csv_path, line_no)
            try:
                stamp = int(fields[0])
            except ValueError:
                if not rows and line_no == 1:
                    continue  # header
                raise ValueError("{}: stamp_ns must be an integer (ns since the epoch), got {!r}".format(
                    where, fields[0])) from None
            if len(fields) < 2 or not fields[1]:
                raise ValueError("{}: expected stamp_ns,label_path[,instance_path]".format(where))
            if stamp in rows:
                raise ValueError("{}: stamp {} already listed on line {}".format(where, stamp, rows[stamp].line))
            label = labels_dir / fields[1]
            if not label.is_file():
                raise FileNotFoundError("{}: label file not found: {}".format(where, label))
            inst = labels_dir / fields[2] if len(fields) > 2 and fields[2] else None
            if inst is not None and not inst.is_file():
                raise FileNotFoundError("{}: instance file not found: {}".format(where, inst))
            if inst is None and label.name.endswith("_gtFine_labelIds.png"):
                sibling = label.with_name(label.name[: -len("_labelIds.png")] + "_instanceIds.png")
                inst = sibling if sibling.is_file() else None
            rows[stamp] = IndexRow(stamp, label, inst, line_no)
    if not rows:
        raise ValueError("{}: no rows (expected stamp_ns,label_path)".format(csv_path))
    return rows


def stamp_stem(stamp_ns: int) -> str:
    """``1700000000_050000000``: a file-name-safe stamp."""
    return "{}_{:09d}".format(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)


class BagFrames:
    """The frames of a bag as decode jobs, paired with ground truth by header stamp.

    Iterating yields one job per camera message (call it to decode the frame and its ground
    truth). Ground truth comes from the bag (``gt_topic`` [+ ``instances_topic``]) or from an
    index (:func:`read_index`). Once every job has run, ``gt_without_frame`` lists the stamps
    of ground truth that scored nothing (no frame with that stamp, or its frame undecodable).
    """

    def __init__(self, bag: Any, image_topic: str, image_type: str, *, gt_topic: Optional[str] = None,
                 instances_topic: Optional[str] = None, index: Optional[Dict[int, IndexRow]] = None,
                 with_instances: bool = True, capacity: int = 32) -> None:
        if (gt_topic is None) == (index is None):
            raise ValueError("give exactly one ground-truth source: a GT topic or an index")
        self.bag = bag
        self.image_topic, self.image_type = image_topic, image_type
        self.gt_topic, self.instances_topic = gt_topic, instances_topic
        self.index = index
        self.with_instances = with_instances
        self.capacity = capacity
        self.gt_without_frame: List[int] = []  # appended by the feeder and by decode jobs
        self.duplicates: List[Tuple[int, str]] = []  # examples of (stamp, topic) seen twice
        self.duplicate_count = 0

    def __iter__(self) -> Iterator[Job]:
        if self.index is not None:
            return self._with_index()
        return self._with_topics()

    # -- decoding (worker threads) ----------------------------------------------------------
    def _frame_item(self, m: Any) -> EvalItem:
        from .bag_io import decode_frame

        where = m.where(self.bag.path)
        stamp = m.stamp_ns if m.stamp_ns is not None else m.timestamp
        if m.error is not None:
            return EvalItem(name=where, stem=stamp_stem(stamp), error=m.error)
        try:
            image, order = decode_frame(m.msg, m.msgtype)
        except ValueError as exc:
            return EvalItem(name=where, stem=stamp_stem(stamp), error=str(exc))
        return EvalItem(name=where, stem=stamp_stem(stamp), image=image, channel_order=order)

    def _label(self, m: Any, what: str, encodings: Sequence[str]) -> np.ndarray:
        from .bag_io import BagError, decode_label

        if m.error is not None:
            raise BagError("{} message unreadable ({}): {}".format(what, m.where(self.bag.path), m.error))
        try:
            return decode_label(m.msg, m.msgtype, encodings)
        except ValueError as exc:
            raise BagError("{} unusable ({}): {}".format(what, m.where(self.bag.path), exc)) from None

    def _decode_with_topics(self, frame: Any, gt: Any, inst: Any) -> EvalItem:
        item = self._frame_item(frame)
        if gt is None:
            return item
        if item.error is not None:
            self.gt_without_frame.append(gt.stamp_ns)  # its frame is skipped: the label scores nothing
            return item
        item.gt = self._label(gt, "ground truth", ("mono8",))
        item.gt_name = gt.where(self.bag.path)
        if inst is not None:
            item.instances = self._label(inst, "instance image", ("mono16", "mono8"))
        return item

    def _decode_with_index(self, frame: Any, row: Optional[IndexRow]) -> EvalItem:
        from .folders import read_instance_ids, read_label_ids

        item = self._frame_item(frame)
        if row is None:
            return item
        if item.error is not None:
            self.gt_without_frame.append(row.stamp_ns)
            return item
        item.gt = read_label_ids(row.label_path)
        item.gt_name = "{} (index line {}, stamp {})".format(row.label_path, row.line, stamp_stem(row.stamp_ns))
        if self.with_instances and row.instance_path is not None:
            item.instances = read_instance_ids(row.instance_path)
        return item

    # -- pairing (feeder thread) ------------------------------------------------------------
    def _with_topics(self) -> Iterator[Job]:
        from .pairing import GT, INSTANCES, MAIN, StampPairer

        use_inst = self.with_instances and self.instances_topic is not None
        pairer = StampPairer(with_instances=use_inst, capacity=self.capacity)
        stream_of = {self.image_topic: MAIN, self.gt_topic: GT}
        if use_inst:
            stream_of[self.instances_topic] = INSTANCES
        for m in self.bag.messages(list(stream_of)):
            stream = stream_of[m.topic]
            if m.error is not None:
                if stream == MAIN:  # corrupt camera frame: reported and skipped
                    yield functools.partial(self._decode_with_topics, m, None, None)
                    continue
                self._label(m, "ground truth", ())  # raises, naming bag/topic/stamp
            for resolved in pairer.add(stream, m.stamp_ns, m):
                yield from self._resolved(resolved)
        for resolved in pairer.flush():
            yield from self._resolved(resolved)
        topic_of = {stream: topic for topic, stream in stream_of.items()}
        self.duplicates = [(stamp, topic_of[stream]) for stamp, stream in pairer.duplicates]
        self.duplicate_count = pairer.duplicate_count

    def _resolved(self, r: Any) -> Iterator[Job]:
        if r.kind == "no_frame":
            self.gt_without_frame.append(r.stamp_ns)
            return
        yield functools.partial(self._decode_with_topics, r.main, r.gt, r.instances)

    def _with_index(self) -> Iterator[Job]:
        assert self.index is not None
        used = set()
        for m in self.bag.messages([self.image_topic]):
            row = self.index.get(m.stamp_ns) if m.stamp_ns is not None else None
            if row is not None and row.stamp_ns in used:
                self.duplicate_count += 1  # a label scores one frame only
                if len(self.duplicates) < MAX_LISTED:
                    self.duplicates.append((row.stamp_ns, self.image_topic))
                row = None
            if row is not None:
                used.add(row.stamp_ns)
            yield functools.partial(self._decode_with_index, m, row)
        self.gt_without_frame.extend(sorted(set(self.index) - used))
