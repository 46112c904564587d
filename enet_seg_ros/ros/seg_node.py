"""``seg_node``: camera images in; labels, colour, overlay, per-class stats and diagnostics out.

Topics (``~`` is the node's private namespace, e.g. ``/seg_node`` or ``/<ns>/seg_node``):

- in: ``image_topic`` (``sensor_msgs/Image``) or ``<image_topic>/compressed``
  (``sensor_msgs/CompressedImage``) with ``compressed: true``; ``output_resolution: model``
  also reads the sibling ``camera_info``.
- out: ``~/labels`` (``mono8`` class ids), ``~/color`` (``rgb8``), ``~/overlay`` (``rgb8``),
  ``~/class_stats`` (``diagnostic_msgs/DiagnosticArray``, one status per class),
  ``~/camera_info`` (with ``output_resolution: model``), and ``/diagnostics`` every
  ``diagnostics_period_s``. Every per-frame output carries the input image's header.

Threading: the subscription callback only stores the newest message in a one-slot buffer
(an unprocessed older message is dropped and counted); an inference worker decodes,
segments and publishes the labels, and hands colour / overlay / stats to an output worker
that runs beside the next inference. So latency does not grow with the input rate, memory
stays flat, and the extras cost the frame rate almost nothing. Colour, overlay and stats
are computed only when someone subscribes (or ``force_outputs``).
"""
from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .diagnostics import NodeStats, Throttle, key_values
from ..io.image_conv import DEFAULT_MAX_PIXELS, ImageFormatError, message_summary
from .params import ParamSpec, declare_all, spec_table, validate_updates
from .qos import RELIABILITY_CHOICES
from .runner import lazy_class, run_node

NODE_NAME = "seg_node"
RESIZE_POLICIES = ("stretch", "letterbox", "center_crop")


def _check_input_size(value) -> Optional[str]:
    size = list(value)
    if size == [0, 0]:
        return None
    if len(size) != 2 or min(size) < 8 or max(size) > 8192:
        return "must be [width, height] with 8 <= each <= 8192, or [0, 0] for the model card's size"
    return None


PARAMS: Tuple[ParamSpec, ...] = (
    # Model and backend: read at start-up.
    ParamSpec("weights", "", "weights file (.safetensors with model card) or shipped model name (enet_camvid, erfnet_camvid, espnet_camvid); empty: the shipped default model"),
    ParamSpec("backend", "auto", "inference backend (auto, torch, onnxruntime, openvino, tensorrt)"),
    ParamSpec("device", "", "backend device (e.g. cpu, cuda, cuda:0); empty: the backend's default"),
    ParamSpec("precision", "", "fp32, fp16, bf16 or int8 where the backend supports it; empty: the backend's default"),
    ParamSpec("input_size", [0, 0], "network input [width, height]; [0, 0]: the model card's size",
              check=_check_input_size, constraints="[0, 0] or two integers in [8, 8192]"),
    ParamSpec("resize_policy", "", "camera image -> network input: stretch, letterbox or center_crop; "
              "empty: the model card's policy", choices=("",) + RESIZE_POLICIES),
    ParamSpec("confidence", True, "compute per-pixel confidence for ~/class_stats mean_confidence "
              "(costs a few % of CPU inference time)"),
    ParamSpec("output_resolution", "camera", "camera: outputs at the camera's size; model: at the network's size "
              "(and a scaled CameraInfo on ~/camera_info)", choices=("camera", "model")),
    # Input.
    ParamSpec("image_topic", "/camera/image_raw",
              "input image topic (CameraInfo is read from its sibling camera_info)"),
    ParamSpec("compressed", False, "subscribe to sensor_msgs/CompressedImage on <image_topic>/compressed"),
    ParamSpec("qos_reliability", "reliable", "reliability of the image subscription: reliable (whole frames; "
              "needs a reliable camera publisher) or best_effort (sensor-data profile; also takes best-effort "
              "cameras, but large raw frames lose UDP fragments). Outputs are always reliable",
              choices=RELIABILITY_CHOICES),
    ParamSpec("qos_depth", 1, "history depth of the image subscription and the output publishers",
              value_range=(1, 1000)),
    ParamSpec("max_image_pixels", DEFAULT_MAX_PIXELS, "frames with more pixels are rejected as corrupt",
              value_range=(1, 2 ** 31 - 1)),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics messages", value_range=(0.1, 60.0)),
    # Outputs: may change at run time.
    ParamSpec("overlay_alpha", 0.5, "opacity of the class colours in ~/overlay", read_only=False,
              value_range=(0.0, 1.0)),
    ParamSpec("publish_color", True, "publish ~/color (when subscribed)", read_only=False),
    ParamSpec("publish_overlay", True, "publish ~/overlay (when subscribed)", read_only=False),
    ParamSpec("publish_stats", True, "publish ~/class_stats (when subscribed)", read_only=False),
    ParamSpec("force_outputs", False, "compute enabled outputs even when nobody subscribes", read_only=False),
    ParamSpec("max_rate_hz", 0.0, "most frames segmented per second; 0 = as fast as possible", read_only=False,
              value_range=(0.0, 1000.0)),
)
PARAM_TABLE = spec_table(PARAMS)


def _problem_key(text: str) -> str:
    """Throttle key for an error text: numbers removed, so 'data has 10 bytes' == 'data has 12 bytes'."""
    return re.sub(r"\d+", "#", text)[:120]


def build_segmenter(cfg: Dict[str, Any]):
    """Create the :class:`enet_seg_ros.engine.Segmenter` the parameters ask for.

    Raises a start-up error (ValueError / FileNotFoundError / RuntimeError) with a clear
    message for a missing weights file, an unknown backend, etc.
    """
    from ..engine import Segmenter
    from ..weights import resolve_weights

    weights = str(resolve_weights(cfg["weights"]))
    size = list(cfg["input_size"])
    return Segmenter(
        weights,
        backend=cfg["backend"] or "auto",
        device=cfg["device"] or None,
        precision=cfg["precision"] or None,
        input_size=None if size == [0, 0] else (int(size[0]), int(size[1])),
        resize_policy=cfg["resize_policy"] or None,
        confidence=bool(cfg["confidence"]),
    )


class LatestSlot:
    """A one-item buffer between threads: ``put`` replaces what is waiting, ``take`` blocks.

    Used twice: subscription -> inference worker (an unprocessed older frame is dropped)
    and inference worker -> output worker (colour / overlay / stats of the previous frame).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> Any:
        """Store ``item``; returns the unconsumed item it replaced (or None)."""
        with self._cond:
            old, self._item = self._item, item
            self._cond.notify()
            return old

    def take(self, not_before: Callable[[], float] = lambda: 0.0) -> Any:
        """Wait for an item and until ``not_before()`` (monotonic time); None once closed.

        While waiting for the due time newer items keep replacing the stored one, so the
        newest is taken (that is how ``max_rate_hz`` skips frames).
        """
        with self._cond:
            while not self._closed:
                if self._item is not None:
                    wait = not_before() - time.monotonic()
                    if wait <= 0:
                        item, self._item = self._item, None
                        return item
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def close(self) -> None:
        """Wake and release every waiting ``take`` (they return None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _make_node_class():
    """Build the Node subclass lazily so importing this module does not need rclpy."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from ..engine.preprocess import to_model_input
    from ..io.camera_info import scale_camera_info
    from ..io.image_conv import array_to_image, compressed_to_color, image_to_color
    from ..io.topics import sibling_topic
    from .qos import diagnostics_qos, image_qos

    class SegNode(Node):
        """The segmentation node (see the module docstring)."""

        def __init__(self, segmenter=None, node_name: str = NODE_NAME, **kwargs) -> None:
            super().__init__(node_name, **kwargs)
            self.cfg = declare_all(self, PARAMS)
            # The model is loaded before any topic exists, so a bad model never half-starts.
            self.segmenter = segmenter if segmenter is not None else build_segmenter(self.cfg)
            self._output = "model" if self.cfg["output_resolution"] == "model" else "input"
            self._declare_model_info()
            self.stats = NodeStats()
            self._throttle = Throttle(5.0)
            self._last_error = ""
            self._frames = LatestSlot()  # (message, receive time)
            self._jobs = LatestSlot()  # frames whose extra outputs are still to be published
            self._stopping = False
            self._last_start = 0.0
            self._camera_info: Optional[CameraInfo] = None

            qos_in = image_qos(self.cfg["qos_reliability"], self.cfg["qos_depth"])
            # Reliable publishers serve reliable and best-effort subscribers alike.
            qos = image_qos("reliable", self.cfg["qos_depth"])
            topic = self.cfg["image_topic"]
            events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
            if self.cfg["compressed"]:
                self._decode = lambda msg: compressed_to_color(msg, self.cfg["max_image_pixels"])
                self.sub = self.create_subscription(CompressedImage, topic + "/compressed", self._on_image, qos_in,
                                                    event_callbacks=events)
            else:
                self._decode = lambda msg: image_to_color(msg, self.cfg["max_image_pixels"])
                self.sub = self.create_subscription(Image, topic, self._on_image, qos_in, event_callbacks=events)
            self.pub_labels = self.create_publisher(Image, "~/labels", qos)
            self.pub_color = self.create_publisher(Image, "~/color", qos)
            self.pub_overlay = self.create_publisher(Image, "~/overlay", qos)
            self.pub_stats = self.create_publisher(DiagnosticArray, "~/class_stats", qos)
            self.pub_info = None
            if self.cfg["output_resolution"] == "model":
                # Best effort receives from reliable and best-effort camera drivers alike.
                self.create_subscription(CameraInfo, sibling_topic(topic, "camera_info"), self._on_camera_info,
                                         image_qos("best_effort", 1))
                self.pub_info = self.create_publisher(CameraInfo, "~/camera_info", qos)
            self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
            self.create_timer(self.cfg["diagnostics_period_s"], self._publish_diagnostics)
            self.add_on_set_parameters_callback(self._validate_parameters)
            self.add_post_set_parameters_callback(self._apply_parameters)

            self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)
            self._output_worker = threading.Thread(target=self._publish_extras, name="seg_outputs", daemon=True)
            self._worker.start()
            self._output_worker.start()
            self.get_logger().info("ready: model {} ({}), backend {} ({}, {}), input {} -> outputs on {}/*".format(
                self.model_name, self.segmenter_input_text(), self.backend_name, self.segmenter.device,
                self.segmenter.precision, self.sub.topic_name, self.get_fully_qualified_name()))

        # -- model information --------------------------------------------------------------
        @property
        def backend_name(self) -> str:
            return str(getattr(self.segmenter, "backend_name", "?"))

        @property
        def model_name(self) -> str:
            card = self.segmenter.card
            return "{} {}".format(card.arch, card.dataset or "").strip()

        def segmenter_input_text(self) -> str:
            w, h = self.segmenter.input_size
            return "{}x{} {}".format(w, h, self.segmenter.resize_policy)

        def _declare_model_info(self) -> None:
            """Class names, palette and model facts as read-only parameters (never overridden)."""
            names = [str(n) for n in self.segmenter.class_names]
            palette = [int(c) for rgb in self.segmenter.palette for c in rgb]
            w, h = self.segmenter.input_size
            info = (
                ("class_names", names, "class name of each label id (read-only, from the model card)"),
                ("palette", palette, "RGB colour of each label id, flattened r,g,b,... (read-only)"),
                ("model", self.model_name, "architecture and dataset of the loaded model (read-only)"),
                ("model_input_size", [int(w), int(h)], "network input [width, height] in use (read-only)"),
                ("backend_name", self.backend_name, "inference backend in use (read-only)"),
                ("model_resize_policy", str(self.segmenter.resize_policy), "resize policy in use (read-only)"),
            )
            for name, value, text in info:
                self.declare_parameter(name, value, ParameterDescriptor(description=text, read_only=True),
                                       ignore_override=True)

        # -- parameters -------------------------------------------------------------------
        def _validate_parameters(self, params) -> SetParametersResult:
            reason = validate_updates(PARAM_TABLE, [(p.name, p.value) for p in params])
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            return SetParametersResult(successful=True)

        def _apply_parameters(self, params) -> None:
            for p in params:
                if p.name in PARAM_TABLE:
                    self.cfg[p.name] = p.value
                    self.get_logger().info("parameter {} = {}".format(p.name, p.value))

        # -- input ------------------------------------------------------------------------
        def _on_image(self, msg) -> None:
            received = time.monotonic()
            self.stats.on_received()
            if self._frames.put((msg, received)) is not None:
                self.stats.on_dropped()

        def _on_camera_info(self, msg) -> None:
            self._camera_info = msg

        def _on_incompatible_qos(self, info) -> None:
            policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).replace("RMW_QOS_POLICY_", "")
            hint = " (the camera publishes best effort: set qos_reliability: best_effort)" \
                if "RELIABILITY" in policy and self.cfg["qos_reliability"] == "reliable" else ""
            self._report("incompatible QoS", "a publisher on {} offers an incompatible {} policy, its images are "
                         "not received{}".format(self.sub.topic_name, policy, hint), warning=True)

        # -- workers --------------------------------------------------------------------
        def _due(self) -> float:
            rate = self.cfg["max_rate_hz"]
            return self._last_start + 1.0 / rate if rate > 0 else 0.0

        def _work(self) -> None:
            """Inference worker: newest frame -> labels (published here) -> extras job."""
            while True:
                item = self._frames.take(self._due)
                if item is None:
                    return
                self._last_start = time.monotonic()
                try:
                    self._process(*item)
                except Exception as exc:  # never let one frame kill the worker
                    if self._stopping or not self.context.ok():
                        return  # shutting down: publishers are already invalid
                    self.stats.on_error()
                    self._report("processing failed", "{}: {}".format(type(exc).__name__, exc))

        def _publish_extras(self) -> None:
            """Output worker: colour, overlay, stats, camera_info of a segmented frame.

            Runs beside the inference worker, so the next frame's inference does not wait
            for them (they need a small fraction of an inference's time).
            """
            while True:
                job = self._jobs.take()
                if job is None:
                    return
                try:
                    self._extras(job)
                except Exception as exc:
                    if self._stopping or not self.context.ok():
                        return
                    self.stats.on_error()
                    self._report("publishing outputs failed", "{}: {}".format(type(exc).__name__, exc))

        def _report(self, what: str, text: str, warning: bool = False) -> None:
            """Remember a problem for /diagnostics and log it, throttled per kind of problem."""
            self._last_error = "{}: {}".format(what, text)
            ok, suppressed = self._throttle.allow(_problem_key(what + text))
            if ok:
                line = self._last_error + (" ({} similar suppressed)".format(suppressed) if suppressed else "")
                (self.get_logger().warning if warning else self.get_logger().error)(line)

        def _wanted(self, publisher, toggle: str) -> bool:
            return self.cfg[toggle] and (self.cfg["force_outputs"] or publisher.get_subscription_count() > 0)

        def _process(self, msg, received: float) -> None:
            taken = time.monotonic()
            try:
                image, order = self._decode(msg)
            except ImageFormatError as exc:
                self.stats.on_bad_frame()
                self._report("bad frame skipped", "{} ({})".format(exc, message_summary(msg)))
                return
            t0 = time.monotonic()
            out = self.segmenter.segment(image, channel_order=order, output=self._output)
            inference = time.monotonic() - t0
            header = msg.header
            if self._stopping:
                return
            self.pub_labels.publish(array_to_image(out.labels, "mono8", header))
            labelled = time.monotonic()
            wanted = (self._wanted(self.pub_color, "publish_color"), self._wanted(self.pub_overlay, "publish_overlay"),
                      self._wanted(self.pub_stats, "publish_stats"), self.pub_info is not None)
            job = (out, image, order, header, wanted, received, inference, labelled - taken, msg)
            if not any(wanted):
                self.stats.on_processed(labelled - received, inference, labelled - taken)
                return
            skipped = self._jobs.put(job)
            if skipped is not None:  # the output worker fell a whole frame behind: its extras are skipped
                self.stats.on_processed(labelled - skipped[5], skipped[6], skipped[7])

        def _extras(self, job) -> None:
            out, image, order, header, wanted, received, inference, work, _msg = job
            want_color, want_overlay, want_stats, want_info = wanted
            if want_color:
                self.pub_color.publish(array_to_image(out.color(), "rgb8", header))
            if want_overlay:
                self.pub_overlay.publish(array_to_image(self._overlay(out, image, order), "rgb8", header))
            if want_stats:
                self.pub_stats.publish(self._stats_message(out, header))
            if want_info:
                self._publish_camera_info(out, image.shape[1], image.shape[0], header)
            self.stats.on_processed(time.monotonic() - received, inference, work)

        def _overlay(self, out, image: np.ndarray, order: str) -> np.ndarray:
            """RGB overlay at the output resolution (the camera frame resized like the network input)."""
            alpha = self.cfg["overlay_alpha"]
            if self._output == "model":
                return out.overlay(to_model_input(image, out.geometry, swap_rb=order == "bgr"), alpha, "rgb")
            blended = out.overlay(image, alpha, order)
            return blended if order == "rgb" else np.ascontiguousarray(blended[:, :, ::-1])

        def _stats_message(self, out, header) -> DiagnosticArray:
            arr = DiagnosticArray(header=header)
            for name, st in out.class_stats().items():
                conf = st["mean_confidence"]
                arr.status.append(DiagnosticStatus(
                    level=DiagnosticStatus.OK, name=name, hardware_id=self.model_name,
                    values=key_values({"pixels": int(st["pixels"]), "fraction": "{:.6f}".format(st["fraction"]),
                                       "mean_confidence": "n/a" if conf is None else "{:.4f}".format(conf)})))
            return arr

        def _publish_camera_info(self, out, cam_w: int, cam_h: int, header) -> None:
            info = self._camera_info
            if info is None:
                self._report("no camera_info", "nothing received on {} yet; ~/camera_info not published".format(
                    sibling_topic(self.cfg["image_topic"], "camera_info")))
                return
            if (info.width, info.height) != (cam_w, cam_h):
                self._report("camera_info size mismatch", "CameraInfo is {}x{} but images are {}x{}".format(
                    info.width, info.height, cam_w, cam_h))
                return
            (sx, sy), (ox, oy) = out.geometry.scale, out.geometry.offset
            scaled = scale_camera_info(info, out.labels.shape[1], out.labels.shape[0], sx, sy, ox, oy)
            scaled.header = header
            self.pub_info.publish(scaled)

        # -- diagnostics ------------------------------------------------------------------
        def _publish_diagnostics(self) -> None:
            snap = self.stats.snapshot()
            status = DiagnosticStatus(name="{}: segmentation".format(self.get_fully_qualified_name()),
                                      hardware_id=self.backend_name)
            if self.stats.received == 0:
                status.level, status.message = DiagnosticStatus.WARN, "no images received on {}".format(
                    self.sub.topic_name)
            elif snap["input_rate_hz"] == 0:
                status.level, status.message = DiagnosticStatus.WARN, "input stopped"
            else:
                status.level, status.message = DiagnosticStatus.OK, "{:.1f} Hz in, {:.1f} Hz out".format(
                    snap["input_rate_hz"], snap["output_rate_hz"])
            if self._last_error:
                status.level = max(status.level, DiagnosticStatus.WARN)
                status.message += "; last problem: " + self._last_error
                self._last_error = ""
            values = dict(snap)
            values.update(backend=self.backend_name, precision=self.segmenter.precision,
                          device=self.segmenter.device, model=self.model_name,
                          input_topic=self.sub.topic_name, output_resolution=self.cfg["output_resolution"])
            status.values = key_values(values)
            arr = DiagnosticArray(status=[status])
            arr.header.stamp = self.get_clock().now().to_msg()
            self.pub_diag.publish(arr)

        # -- shutdown ---------------------------------------------------------------------
        def stop(self) -> None:
            """Stop the worker after its current frame and join it (idempotent)."""
            already = self._stopping
            self._stopping = True
            self._frames.close()
            self._jobs.close()
            for thread in (self._worker, self._output_worker):
                if thread.is_alive() and threading.current_thread() is not thread:
                    thread.join(timeout=30.0)
            if not already:
                alive = self._worker.is_alive() or self._output_worker.is_alive()
                text = "stopped: {} frames processed, {} dropped, {} bad, worker {}".format(
                    self.stats.processed, self.stats.dropped, self.stats.bad_frames,
                    "still running" if alive else "joined")
                if self.context.ok():
                    self.get_logger().info(text)
                else:  # after SIGINT / SIGTERM the rosout publisher is gone; plain stderr
                    print("[INFO] [{}]: {}".format(self.get_name(), text), file=sys.stderr, flush=True)

        def destroy_node(self) -> None:
            self.stop()
            super().destroy_node()

    return SegNode


_node_class = lazy_class(_make_node_class)


def SegNode(*args, **kwargs):  # noqa: N802 - reads like the class it builds
    """Create a segmentation node (see :func:`_make_node_class`); rclpy must be initialised."""
    return _node_class()(*args, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``seg_node``, ``ros2 run enet_seg_ros seg_node``); returns the exit code."""
    return run_node(NODE_NAME, SegNode, lambda node, executor: None, argv)


if __name__ == "__main__":
    sys.exit(main())
