"""Frame sources of an evaluation: decode jobs for a labelled folder and for a ROS 2 bag
(frames paired with ground truth by header stamp, from GT topics or an index CSV)."""
from __future__ import annotations

import csv
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.transforms import shift_lighting
from ..io.bags import BagError, decode_frame, decode_label
from .folders import read_bgr, read_instance_ids, read_label_ids
from .pairing import GT, INSTANCES, MAIN, StampPairer
from .pipeline import MAX_LISTED, THROUGHPUT_FRAMES, EvalItem, Job


def folder_jobs(frames: Sequence[Any], with_instances: bool,
                lighting: Optional[Tuple[str, float]] = None) -> Iterator[Job]:
    """One decode job per :class:`~enet_seg_ros.evaluate.folders.LabelledFrame`.

    ``lighting``: ``(kind, factor)`` of :func:`~enet_seg_ros.data.transforms.shift_lighting`
    applied to every decoded image (robustness runs); None leaves the images as they are.
    """
    for f in frames:
        yield functools.partial(_load_folder_frame, f, with_instances, lighting)


def _load_folder_frame(f: Any, with_instances: bool, lighting: Optional[Tuple[str, float]] = None) -> EvalItem:
    name = str(f.image_path)
    try:
        image = read_bgr(f.image_path)  # the segmenter takes BGR as is: no channel copy
    except ValueError as exc:
        return EvalItem(name=name, stem=f.key, error=str(exc))
    if lighting is not None:
        image = shift_lighting(image, lighting[0], lighting[1], channel_order="bgr")
    gt = inst = None
    if f.label_path is not None:
        gt = read_label_ids(f.label_path)
        if with_instances and f.instance_path is not None:
            inst = read_instance_ids(f.instance_path)
    return EvalItem(name=name, stem=f.key, image=image, channel_order="bgr", gt=gt, instances=inst,
                    gt_name=str(f.label_path) if f.label_path else "")


# ------------------------------------------------------------------------------------ bags
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


def measure_bare(bag: Any, image: Any, segmenter: Any, limit: int = THROUGHPUT_FRAMES) -> float:
    """:func:`bare_throughput` over the first ``limit`` decodable frames of a bag topic."""
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


