"""``eval_node``: live evaluation of ``seg_node``'s labels against a ground-truth topic.

Subscribes to predicted labels (``labels_topic``, default ``/seg_node/labels``, ``mono8`` as
``seg_node`` publishes them) and ground truth (``gt_topic``, default ``/camera/labels_gt``,
``mono8`` dataset label ids; optionally ``instances_topic`` ``mono16`` for Cityscapes iIoU),
pairs them by header stamp in a bounded buffer (:class:`enet_seg_ros.evaluate.pairing.StampPairer`,
the same pairing as ``enet-seg eval-bag``) and accumulates the same metrics with the same
evaluator. Outputs:

- ``~/miou`` (``std_msgs/Float32``): the running mean IoU (fraction in [0, 1]) after every
  scored frame;
- ``~/metrics`` (``diagnostic_msgs/DiagnosticArray``) every ``metrics_period_s``: mean IoU,
  pixel accuracy, frame counts and per-class IoU as key/values;
- on shutdown (SIGINT / SIGTERM, ``exit_after_frames`` reached, or ``idle_timeout_s`` without
  messages), ``output_dir`` gets metrics.json, report.md, confusion.png and class_iou.png, as
  ``eval-bag`` writes them.

A frame whose ground truth never comes counts in ``frames_without_gt``; ground truth whose
prediction never comes (e.g. dropped by ``seg_node``) in ``gt_without_frame``; a pair that
cannot be scored (other size without ``resize_gt: nearest``, unknown label ids, bad encoding)
is logged with its stamp and listed in the report as skipped. The report names the backend
``seg_node`` announces on ``/diagnostics`` (the status of the node whose namespace holds
``labels_topic``) and, when the stamps are live (camera time, not a bag's recorded time), the
pipeline latency: camera stamp to the labels' arrival here. Nothing changes the numbers
silently. QoS: ``best_effort`` (default) receives from reliable and best-effort publishers;
``reliable`` receives only from reliable publishers but never loses a message on the wire.
With ``gt_wait_for_labels`` the ground truth is subscribed only once the first prediction
arrives, so a ground-truth replayer that waits for a subscriber (``image_source
wait_for_subscribers:=1``, as ``launch/bag_eval.launch.py`` runs it) starts in step with the
camera replay instead of running ahead while seg_node loads its model.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float32

from ..evaluate import make_evaluator
from ..evaluate.pairing import GT, INSTANCES, MAIN, StampPairer
from ..evaluate.model import card_for_dataset, model_description, prediction_lut
from ..evaluate.pipeline import EvalItem, EvalPipeline, EvalStats, write_outputs
from ..io.bags import format_stamp, stamp_to_ns
from ..io.image_conv import image_to_array
from ..io.topics import LABELS_TOPIC
from .diagnostics import Throttle, key_values
from .params import ParamSpec, declare_all, required_topic_problem, topic_name_problem
from .qos import RELIABILITY_CHOICES, diagnostics_qos, image_qos
from .runner import run_node

NODE_NAME = "eval_node"

PARAMS: Tuple[ParamSpec, ...] = (
    ParamSpec("labels_topic", "/seg_node/labels", "predicted labels (mono8 class ids, seg_node's ~/labels)",
              check=required_topic_problem),
    ParamSpec("gt_topic", LABELS_TOPIC, "ground truth (mono8 dataset label ids)", check=required_topic_problem),
    ParamSpec("instances_topic", "", "Cityscapes instance ids (mono16) for iIoU; empty: no iIoU",
              check=topic_name_problem),
    ParamSpec("weights", "", "weights file whose model card describes the labels; empty: the shipped default model"),
    ParamSpec("dataset", "", "label ids of the ground truth (camvid, cityscapes); empty: the model card's",
              choices=("", "camvid", "cityscapes")),
    ParamSpec("resize_gt", "", "ground truth of another size: '' = reject the frame, 'nearest' = resize it",
              choices=("", "nearest")),
    ParamSpec("gt_wait_for_labels", False, "subscribe to the ground truth only once the first prediction arrived, "
              "so a ground-truth replayer that waits for subscribers starts in step with the camera replay"),
    ParamSpec("output_dir", "eval_report", "report folder written on shutdown"),
    ParamSpec("qos_reliability", "best_effort", "reliability of the subscriptions", choices=RELIABILITY_CHOICES),
    ParamSpec("qos_depth", 10, "history depth of the subscriptions", value_range=(1, 1000)),
    ParamSpec("max_pending", 30, "most stamps waiting for their partner before the oldest is resolved unpaired",
              value_range=(1, 10000)),
    ParamSpec("metrics_period_s", 1.0, "period of ~/metrics messages", value_range=(0.1, 3600.0)),
    ParamSpec("exit_after_frames", 0, "write the report and exit after this many scored frames (0: never)",
              value_range=(0, 2 ** 31 - 1)),
    ParamSpec("idle_timeout_s", 0.0, "write the report and exit after this long without messages once "
              "the first one came (0: never)", value_range=(0.0, 86400.0)),
)


# Labels older than this on arrival are not from a live camera (e.g. a bag replayed with its
# recorded stamps): no latency is recorded for them.
LIVE_STAMP_MAX_AGE_MS = 10_000.0
MAX_LATENCIES = 1_000_000  # bounded memory on a long live run (~8 MB)


class EvalNode(Node):
    """Pairs predictions with ground truth and scores them (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.cfg = declare_all(self, PARAMS)
        weights, card, self.spec = card_for_dataset(self.cfg["weights"], self.cfg["dataset"],
                                                    "set the 'dataset' parameter")
        self.model = model_description(card, weights)
        self.evaluator = make_evaluator(self.spec)
        # The scoring rules are the offline pipeline's (same LUT, size checks, evaluator).
        self._scorer = EvalPipeline(None, self.evaluator, prediction_lut(card, self.spec), spec=self.spec,
                                    resize_gt=self.cfg["resize_gt"] or None,
                                    resize_hint="set the parameter resize_gt to 'nearest'")
        self.stats = EvalStats()
        self.gt_without_frame = 0
        self._with_instances = bool(self.cfg["instances_topic"]) and self.spec.dataset == "cityscapes"
        self.pairer = StampPairer(with_instances=self._with_instances, capacity=self.cfg["max_pending"])
        self._lock = threading.Lock()
        self._throttle = Throttle(5.0)
        self._last_message = 0.0
        self.finished = threading.Event()
        self._stopped = False

        self._qos = image_qos(self.cfg["qos_reliability"], self.cfg["qos_depth"])
        self.sub_labels = self.create_subscription(
            Image, self.cfg["labels_topic"], lambda m: self._on_message(MAIN, m), self._qos)
        self.sub_gt = None
        if not self.cfg["gt_wait_for_labels"]:
            self._subscribe_gt()
        if self.cfg["instances_topic"] and not self._with_instances:
            self.get_logger().warning("instances_topic ignored: {} has no instance metrics".format(self.spec.dataset))
        self.gt_topic = self.resolve_topic_name(self.cfg["gt_topic"])
        # seg_node names its status "<node>: segmentation"; its labels are "<node>/labels".
        self._seg_status = "{}: segmentation".format(self.sub_labels.topic_name.rsplit("/", 1)[0] or "/")
        self.backend: Optional[str] = None
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, diagnostics_qos())
        self.pub_miou = self.create_publisher(Float32, "~/miou", diagnostics_qos())
        self.pub_metrics = self.create_publisher(DiagnosticArray, "~/metrics", diagnostics_qos())
        self.create_timer(self.cfg["metrics_period_s"], self._on_timer)
        if self.cfg["idle_timeout_s"] > 0:
            self.create_timer(min(0.5, self.cfg["idle_timeout_s"]), self._check_idle)
        self.get_logger().info("evaluating {} against {} ({}, model {}); report -> {}".format(
            self.sub_labels.topic_name, self.gt_topic, self.spec.dataset, self.model, self.cfg["output_dir"]))

    # -- input ------------------------------------------------------------------------
    def _subscribe_gt(self) -> None:
        self.sub_gt = self.create_subscription(Image, self.cfg["gt_topic"], lambda m: self._on_message(GT, m),
                                               self._qos)
        if self._with_instances:
            self.create_subscription(Image, self.cfg["instances_topic"],
                                     lambda m: self._on_message(INSTANCES, m), self._qos)

    def _on_message(self, stream: str, msg: Any) -> None:
        self._last_message = time.monotonic()
        if self.sub_gt is None:
            self._subscribe_gt()  # gt_wait_for_labels: the first prediction arrived
        stamp = stamp_to_ns(msg.header.stamp)
        age_ms = (self.get_clock().now().nanoseconds - stamp) * 1e-6 if stream == MAIN else -1.0
        with self._lock:
            if self._stopped:
                return
            # Only live stamps measure latency; a replayed bag's recorded stamps are hours old.
            if 0.0 <= age_ms < LIVE_STAMP_MAX_AGE_MS and len(self.stats.latencies_ms) < MAX_LATENCIES:
                self.stats.latencies_ms.append(age_ms)
            for resolved in self.pairer.add(stream, stamp, msg):
                self._handle(resolved)
        if self.cfg["exit_after_frames"] and self.stats.scored >= self.cfg["exit_after_frames"]:
            self.finished.set()

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if not status.name.endswith(": segmentation"):
                continue
            # Prefer the node that publishes our labels topic; else the only seg_node seen.
            if status.name == self._seg_status or self.backend is None:
                values = {kv.key: kv.value for kv in status.values}
                self.backend = values.get("backend") or status.hardware_id or None

    def _where(self, topic: str, stamp: int) -> str:
        return "topic {} stamp {}".format(topic, format_stamp(stamp))

    def _decode(self, msg: Any, encodings: Sequence[str], topic: str, stamp: int) -> Optional[np.ndarray]:
        try:
            if msg.encoding not in encodings:
                raise ValueError("encoding {!r}, expected {}".format(msg.encoding, " or ".join(encodings)))
            return np.array(image_to_array(msg))
        except ValueError as exc:
            self._reject(self._where(topic, stamp), str(exc))
            return None

    def _reject(self, where: str, reason: str) -> None:
        self.stats.skip(where, reason)
        ok, suppressed = self._throttle.allow(reason[:40])
        if ok:
            more = " ({} similar suppressed)".format(suppressed) if suppressed else ""
            text = reason if where in reason else "{}: {}".format(where, reason)
            self.get_logger().error("frame not scored: {}{}".format(text, more))

    def _handle(self, r: Any) -> None:
        """Score / count one resolved stamp (caller holds the lock)."""
        if r.kind == "no_frame":
            self.gt_without_frame += 1
            return
        if r.kind == "no_gt":
            self.stats.without_gt += 1
            return
        labels_topic, gt_topic = self.sub_labels.topic_name, self.gt_topic
        pred = self._decode(r.main, ("mono8",), labels_topic, r.stamp_ns)
        gt = self._decode(r.gt, ("mono8",), gt_topic, r.stamp_ns) if pred is not None else None
        inst = None
        if gt is not None and r.instances is not None:
            inst = self._decode(r.instances, ("mono16",), self.cfg["instances_topic"], r.stamp_ns)
            if inst is None:
                return
        if pred is None or gt is None:
            return
        where = self._where(gt_topic, r.stamp_ns)
        item = EvalItem(name=self._where(labels_topic, r.stamp_ns), stem="", gt=gt, instances=inst,
                        gt_name=where)
        try:
            self._scorer.score(item, pred, self.stats)
        except ValueError as exc:  # wrong size, unknown ids: this frame only, never the node
            self._reject(where, str(exc))
            return
        self.pub_miou.publish(Float32(data=float(self._miou())))

    def _miou(self) -> float:
        value = self.evaluator.result().get("miou")
        return float("nan") if value is None else float(value)

    # -- timers -----------------------------------------------------------------------
    def _on_timer(self) -> None:
        with self._lock:
            result = self.evaluator.result()
            counts = {"frames": self.stats.scored, "frames_without_gt": self.stats.without_gt,
                      "gt_without_frame": self.gt_without_frame, "frames_skipped": self.stats.skipped_count,
                      "pending": len(self.pairer)}
        values: Dict[str, object] = {"miou": _num(result.get("miou")),
                                     "pixel_accuracy": _num(result.get("pixel_accuracy"))}
        values.update(counts)
        values.update({"iou/" + k: _num(v) for k, v in (result.get("class_iou") or {}).items()})
        status = DiagnosticStatus(name="{}: evaluation".format(self.get_fully_qualified_name()),
                                  hardware_id=self.model, values=key_values(values))
        if counts["frames"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, "no frame scored yet"
        else:
            status.level = DiagnosticStatus.WARN if counts["frames_skipped"] else DiagnosticStatus.OK
            status.message = "mIoU {:.2f}% over {} frames".format(100 * values["miou"], counts["frames"])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_metrics.publish(arr)

    def _check_idle(self) -> None:
        if self._last_message and time.monotonic() - self._last_message > self.cfg["idle_timeout_s"]:
            self.finished.set()

    # -- shutdown ---------------------------------------------------------------------
    def stop(self) -> Optional[Path]:
        """Resolve pending stamps and write the report (idempotent); returns the report path."""
        with self._lock:
            if self._stopped:
                return None
            self._stopped = True
            for resolved in self.pairer.flush():
                self._handle(resolved)
        return self.write_report()

    def write_report(self) -> Optional[Path]:
        """Write metrics.json / report.md / plots for what was scored so far."""
        out = Path(self.cfg["output_dir"])
        with self._lock:
            self.stats.extra["gt_without_frame"] = self.gt_without_frame
            if self.pairer.duplicate_count:
                self.stats.notes = ["{} repeated stamp(s) ignored for pairing, e.g. {} on {}".format(
                    self.pairer.duplicate_count, format_stamp(self.pairer.duplicates[0][0]),
                    {MAIN: self.sub_labels.topic_name, GT: self.gt_topic}.get(
                        self.pairer.duplicates[0][1], self.cfg["instances_topic"]))]
            try:
                paths = write_outputs(out, self.evaluator, self.stats, model=self.model, backend=self.backend,
                                      inputs={"labels topic": self.sub_labels.topic_name,
                                              "ground-truth topic": self.gt_topic},
                                      title="Live evaluation ({})".format(self.spec.dataset))
            except OSError as exc:
                self._log("error", "cannot write the report to {}: {}".format(out, exc))
                return None
        self._log("info", "{} frames scored ({} without ground truth, {} ground truth without frame, "
                          "{} skipped), mIoU {:.2f}%; report {}".format(
                              self.stats.scored, self.stats.without_gt, self.gt_without_frame,
                              self.stats.skipped_count, 100 * self._miou(), paths["report"]))
        return paths["report"]

    def _log(self, level: str, text: str) -> None:
        """Log through rclpy while the context lives; after a signal shut it down, to stderr."""
        if self.context.ok():
            getattr(self.get_logger(), level)(text)
        else:
            print("[{}] [{}]: {}".format(level.upper(), self.get_name(), text), file=sys.stderr)



def _num(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``eval_node``, ``ros2 run enet_seg_ros eval_node``); returns the exit code."""
    def spin(node: Any, executor: Any) -> Optional[int]:
        node.get_logger().info("running; the report is written on exit (Ctrl-C, SIGTERM{})".format(
            ", after {} frames".format(node.cfg["exit_after_frames"]) if node.cfg["exit_after_frames"] else ""))
        while not node.finished.is_set() and node.context.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception:  # noqa: BLE001 - rclpy raises RCLError when a signal lands mid-call
                if node.context.ok():
                    raise
        return 0

    return run_node(NODE_NAME, EvalNode, spin, argv)


if __name__ == "__main__":
    sys.exit(main())
