"""``seg_node``: camera images in; labels, colour, overlay, masks, confidence, stats and diagnostics out.

Topics (``~`` is the node's private namespace, e.g. ``/seg_node`` or ``/<ns>/seg_node``):

- in: ``image_topic`` (``sensor_msgs/Image``) or ``<image_topic>/compressed``
  (``sensor_msgs/CompressedImage``) with ``compressed: true``; ``output_resolution: model``
  also reads the sibling ``camera_info``.
- out: ``~/labels`` (``mono8`` class ids), ``~/color`` (``rgb8``), ``~/overlay`` (``rgb8``),
  ``~/color/compressed`` and ``~/overlay/compressed`` (``sensor_msgs/CompressedImage`` JPEG,
  image_transport naming), ``~/confidence`` (``mono8``, 255 x max softmax probability),
  ``~/mask`` (``mono8``, 255 where the label is one of ``mask_classes``), ``~/class_stats``
  (``diagnostic_msgs/DiagnosticArray``, one status per class), ``~/camera_info`` (with
  ``output_resolution: model``), and ``/diagnostics`` every ``diagnostics_period_s``. Every
  per-frame output carries the input image's header.

Lifecycle (``rclpy.lifecycle``): configure loads the model and builds the backend; activate
subscribes and starts the workers; deactivate unsubscribes and joins the workers (the model
stays loaded, nothing runs); cleanup unloads the model; shutdown works from every state. With
``autostart: true`` (default) the node configures and activates itself at start-up, so
``ros2 run`` behaves like a plain node; ``autostart: false`` waits for a lifecycle manager.

Threading: the subscription callback only stores the newest message in a one-slot buffer
(an unprocessed older message is dropped and counted); an inference worker decodes,
segments and publishes the labels, and hands the other outputs to an output worker that
runs beside the next inference. So latency does not grow with the input rate, memory stays
flat, and the extras cost the frame rate almost nothing. Every output but ``~/labels`` is
computed only when someone subscribes (or ``force_outputs``).
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..engine import parse_size
from ..engine.preprocess import POLICIES, to_model_input
from ..engine.registry import backend_choices
from ..io.camera_info import scale_camera_info
from ..io.image_conv import (DEFAULT_MAX_PIXELS, ImageFormatError, array_to_compressed, array_to_image,
                             compressed_to_color, image_to_color, message_summary)
from ..io.topics import sibling_topic
from .diagnostics import NodeStats, Throttle, key_values
from .params import ParamSpec, declare_all, required_topic_problem, spec_table, validate_updates
from .qos import RELIABILITY_CHOICES, diagnostics_qos, image_qos
from .runner import run_node

NODE_NAME = "seg_node"
PRECISION_CHOICES = ("", "auto", "fp32", "fp16", "bf16", "int8")


def _check_input_size(value) -> Optional[str]:
    """The engine's size parser decides (one limit for every way of giving a size)."""
    size = list(value)
    if size == [0, 0]:
        return None
    try:
        parse_size(size)
    except ValueError as exc:
        return "must be [width, height] or [0, 0] for the model card's size ({})".format(exc)
    return None


def _check_names(value) -> Optional[str]:
    names = list(value or [])
    if any(not isinstance(n, str) or not n.strip() for n in names):
        return "must be a list of class names (non-empty strings)"
    return None


PARAMS: Tuple[ParamSpec, ...] = (
    # Lifecycle and model: read at start-up (the model at configure).
    ParamSpec("autostart", True, "configure and activate at start-up (false: start unconfigured and wait for a "
              "lifecycle manager, e.g. ros2 lifecycle set /seg_node configure)"),
    ParamSpec("weights", "", "weights file (.safetensors with model card) or shipped model name (enet_camvid, erfnet_camvid, espnet_camvid); empty: the shipped default model"),
    ParamSpec("backend", "auto", "inference backend", choices=backend_choices()),
    ParamSpec("backend_strict", False, "an explicitly asked backend that cannot start is an error (exit code 2 "
              "with autostart) instead of a fallback along the auto chain"),
    ParamSpec("torch_compile", False, "torch backend: torch.compile the inference graph (inductor), replayed as a "
              "CUDA graph on a GPU: the fastest torch-CUDA path measured (ENet 1280x720 fp16 1.86 ms on an H200); "
              "a one-off compile at start (10-60 s; needs a C++ compiler on CPU), uncompiled with a warning if "
              "it fails; other backends ignore it"),
    ParamSpec("device", "", "backend device (e.g. cpu, cuda, cuda:0); empty: the backend's default"),
    ParamSpec("precision", "auto", "auto: the fastest precision the model card validated for the backend (else "
              "its default); fp32, fp16, bf16 or int8 where the backend supports it; empty: the backend's default",
              choices=PRECISION_CHOICES),
    ParamSpec("input_size", [0, 0], "network input [width, height]; [0, 0]: the model card's size",
              check=_check_input_size, constraints="[0, 0] or [width, height] within the engine's size limits"),
    ParamSpec("resize_policy", "", "camera image -> network input: stretch, letterbox or center_crop; "
              "empty: the model card's policy", choices=("",) + POLICIES),
    ParamSpec("confidence", True, "compute the per-pixel max softmax probability in the inference graph (for "
              "~/confidence, mask_min_confidence and ~/class_stats mean_confidence; a few % of CPU inference time)"),
    ParamSpec("output_resolution", "camera", "camera: outputs at the camera's size; model: at the network's size "
              "(and a scaled CameraInfo on ~/camera_info)", choices=("camera", "model")),
    # Input.
    ParamSpec("image_topic", "/camera/image_raw",
              "input image topic (CameraInfo is read from its sibling camera_info)", check=required_topic_problem),
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
    ParamSpec("publish_color", True, "publish ~/color and ~/color/compressed (when subscribed)", read_only=False),
    ParamSpec("publish_overlay", True, "publish ~/overlay and ~/overlay/compressed (when subscribed)",
              read_only=False),
    ParamSpec("publish_stats", True, "publish ~/class_stats (when subscribed)", read_only=False),
    ParamSpec("force_outputs", False, "compute enabled outputs even when nobody subscribes", read_only=False),
    ParamSpec("max_rate_hz", 0.0, "most frames segmented per second; 0 = as fast as possible", read_only=False,
              value_range=(0.0, 1000.0)),
    ParamSpec("mask_classes", [], "class names (see the class_names parameter) that are 255 in ~/mask, e.g. "
              "[Road, Sidewalk] for a drivable-area costmap layer; empty: ~/mask is all 0", read_only=False,
              check=_check_names, constraints="names from the class_names parameter"),
    ParamSpec("mask_min_confidence", 0.0, "~/mask pixels whose confidence is below this are 0 (needs confidence: "
              "true when > 0)", read_only=False, value_range=(0.0, 1.0)),
    ParamSpec("jpeg_quality", 80, "JPEG quality of ~/color/compressed and ~/overlay/compressed", read_only=False,
              value_range=(1, 100)),
)
PARAM_TABLE = spec_table(PARAMS)

# Outputs besides ~/labels: name -> (publisher attribute, on/off parameter or None).
OUTPUTS: Dict[str, Tuple[str, Optional[str]]] = {
    "color": ("pub_color", "publish_color"),
    "color/compressed": ("pub_color_jpeg", "publish_color"),
    "overlay": ("pub_overlay", "publish_overlay"),
    "overlay/compressed": ("pub_overlay_jpeg", "publish_overlay"),
    "class_stats": ("pub_stats", "publish_stats"),
    "confidence": ("pub_confidence", None),
    "mask": ("pub_mask", None),
}


def _problem_key(text: str) -> str:
    """Throttle key for an error text: numbers removed, so 'data has 10 bytes' == 'data has 12 bytes'."""
    return re.sub(r"\d+", "#", text)[:120]


def build_segmenter(cfg: Dict[str, Any]):
    """Create the :class:`enet_seg_ros.engine.Segmenter` the parameters ask for.

    Raises a start-up error (ValueError / FileNotFoundError / RuntimeError) with a clear
    message for a missing weights file, an unknown backend, a strict backend that cannot
    start (``BackendUnavailable``, a RuntimeError), etc.
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
        strict=bool(cfg["backend_strict"]),
        compile=bool(cfg["torch_compile"]),
    )


def mask_problem(names: Sequence[str], class_names: Sequence[str]) -> Optional[str]:
    """Why ``names`` is not a valid ``mask_classes`` value for a model with ``class_names``, or None."""
    unknown = [n for n in names if n not in class_names]
    if unknown:
        return "mask_classes: unknown class name(s) {}; valid names: {}".format(unknown, list(class_names))
    return None


def mask_lut(names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """A (256,) uint8 table: label id -> 255 for the named classes, 0 otherwise (UNKNOWN too)."""
    lut = np.zeros(256, np.uint8)
    lut[[class_names.index(n) for n in names]] = 255
    return lut


def class_mask(labels: np.ndarray, lut: np.ndarray, confidence: Optional[np.ndarray] = None,
               min_confidence: float = 0.0) -> np.ndarray:
    """``~/mask`` pixels: ``lut[labels]``, and 0 where ``confidence < min_confidence`` (when > 0)."""
    mask = lut[labels]
    if min_confidence > 0.0 and confidence is not None:
        mask[confidence < min_confidence] = 0
    return mask


def confidence_mono8(confidence: np.ndarray) -> np.ndarray:
    """Max softmax probability in [0, 1] -> ``mono8`` (255 x probability, rounded)."""
    return np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)


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

    def wake(self) -> None:
        """Make a waiting ``take`` look at its due time again (it changed: ``max_rate_hz``)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Wake and release every waiting ``take`` (they return None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class FrameJob:
    """A segmented frame handed from the inference worker to the output worker."""

    result: Any  # engine.Result
    image: np.ndarray
    order: str
    header: Any
    wanted: FrozenSet[str]  # OUTPUTS names (+ "camera_info") to publish
    received: float  # monotonic time the message arrived
    inference_s: float
    work_s: float  # from taking the frame to publishing its labels


class SegNode(LifecycleNode):
    """The segmentation node (see the module docstring).

    Args:
        node_name: node name (default ``seg_node``).
        segmenter: an already built Segmenter to use at the first configure (tests, benchmarks).
        **kwargs: ``rclpy`` node arguments (``context``, ``parameter_overrides``, ``cli_args``...).

    Raises (with ``autostart``): the configure error (bad weights, unknown / strict backend...).
    """

    def __init__(self, node_name: str = NODE_NAME, segmenter=None, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.segmenter = None
        self._given_segmenter = segmenter
        self.stats = NodeStats()
        self._throttle = Throttle(5.0)
        self._last_error = ""
        self._configure_error: Optional[BaseException] = None
        self._activate_error: Optional[BaseException] = None
        self._qos_problem = ""
        self._autostarting = False
        self._stopping = True
        self._stopped_logged = False
        self._last_start = 0.0
        self._camera_info: Optional[CameraInfo] = None
        self._mask_lut = np.zeros(256, np.uint8)
        self._frames = self._jobs = None
        self._workers: List[threading.Thread] = []
        self._worker = self._output_worker = None
        self.sub = self._info_sub = None
        self.pub_labels = self.pub_info = self.pub_diag = None
        for attr, _ in OUTPUTS.values():
            setattr(self, attr, None)
        self._timer = None
        # Everything destroy_node needs exists before anything can fail (rclpy destroys the
        # context's nodes at shutdown, also one whose parameters were refused).
        self.cfg = declare_all(self, PARAMS)
        self._output = "model" if self.cfg["output_resolution"] == "model" else "input"
        topic = self.cfg["image_topic"]
        self._input_topic = topic + "/compressed" if self.cfg["compressed"] else topic
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        if self.cfg["autostart"]:
            self._autostart()
        else:
            self.get_logger().info("unconfigured, waiting for a lifecycle manager (ros2 lifecycle set {} "
                                   "configure)".format(self.get_fully_qualified_name()))

    def _autostart(self) -> None:
        self._autostarting = True
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise self._configure_error or RuntimeError("configure failed")
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError("activate failed: {}".format(self._activate_error or "see the log"))
        finally:
            self._autostarting = False

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, build the backend and create the publishers."""
        try:
            self._load_model()
        except Exception as exc:  # a bad model or backend: stay unconfigured, say why
            self._configure_error = exc
            self._unload_model()
            if not self._autostarting:  # with autostart the process reports it once, as a fatal error
                self.get_logger().error("configure failed: {}".format(exc))
            return TransitionCallbackReturn.FAILURE
        self._create_publishers()
        self.get_logger().info("configured: model {} ({}), backend {} ({}, {}): {}".format(
            self.model_name, self.segmenter_input_text(), self.backend_name, self.segmenter.device,
            self.segmenter.precision, self.selection_reason))
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, start the workers and subscribe."""
        result = super().on_activate(state)  # lifecycle publishers first, then frames may come
        try:
            self.stats.restart_rates()  # rates count from now, not over the inactive time
            self._start_workers()
            self._subscribe()
        except Exception as exc:  # roll back to a clean inactive node and say why
            self._deactivate()
            super().on_deactivate(state)
            self._activate_error = exc
            if not self._autostarting:
                self.get_logger().error("activate failed: {}".format(exc))
            return TransitionCallbackReturn.FAILURE
        self._timer.reset()
        self.get_logger().info("ready: model {} ({}), backend {} ({}, {}), input {} -> outputs on {}/*".format(
            self.model_name, self.segmenter_input_text(), self.backend_name, self.segmenter.device,
            self.segmenter.precision, self._input_topic, self.get_fully_qualified_name()))
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and join the workers; the model stays loaded and nothing runs."""
        self._deactivate()
        self.get_logger().info("deactivated: {} frames processed so far; model kept loaded".format(
            self.stats.processed))
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and unload the model."""
        self._destroy_publishers()
        self._unload_model()
        self.get_logger().info("cleaned up: model unloaded")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop, then release everything."""
        self._deactivate()
        self._destroy_publishers()
        self._unload_model()
        self.get_logger().info("shut down")
        return super().on_shutdown(state)

    def _load_model(self) -> None:
        segmenter, self._given_segmenter = self._given_segmenter, None
        self.segmenter = segmenter if segmenter is not None else build_segmenter(self.cfg)
        names = self.segmenter.class_names
        reason = mask_problem(self.cfg["mask_classes"], names)
        if reason:
            raise ValueError("invalid parameter " + reason)
        if self.cfg["mask_min_confidence"] > 0 and not self.segmenter.confidence:
            raise ValueError("invalid parameter mask_min_confidence: needs confidence: true")
        self._mask_lut = mask_lut(self.cfg["mask_classes"], names)
        self._declare_model_info()

    def _unload_model(self) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
        self.segmenter = None

    def _create_publishers(self) -> None:
        qos = image_qos("reliable", self.cfg["qos_depth"])  # serves reliable and best-effort subscribers
        self.pub_labels = self.create_lifecycle_publisher(Image, "~/labels", qos)
        for name, (attr, _) in OUTPUTS.items():
            msg_type = DiagnosticArray if name == "class_stats" else \
                CompressedImage if name.endswith("/compressed") else Image
            setattr(self, attr, self.create_lifecycle_publisher(msg_type, "~/" + name, qos))
        if self.cfg["output_resolution"] == "model":
            self.pub_info = self.create_lifecycle_publisher(CameraInfo, "~/camera_info", qos)
        self.pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._timer = self.create_timer(self.cfg["diagnostics_period_s"], self._publish_diagnostics)
        self._timer.cancel()  # runs only while active

    def _destroy_publishers(self) -> None:
        for attr in ["pub_labels", "pub_info", "pub_diag"] + [a for a, _ in OUTPUTS.values()]:
            pub = getattr(self, attr)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, attr, None)
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _subscribe(self) -> None:
        qos_in = image_qos(self.cfg["qos_reliability"], self.cfg["qos_depth"])
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if self.cfg["compressed"]:
            self._decode = lambda msg: compressed_to_color(msg, self.cfg["max_image_pixels"])
            msg_type = CompressedImage
        else:
            self._decode = lambda msg: image_to_color(msg, self.cfg["max_image_pixels"])
            msg_type = Image
        self.sub = self.create_subscription(msg_type, self._input_topic, self._on_image, qos_in,
                                            event_callbacks=events)
        if self.pub_info is not None:
            # Best effort receives from reliable and best-effort camera drivers alike.
            self._info_sub = self.create_subscription(
                CameraInfo, sibling_topic(self.cfg["image_topic"], "camera_info"), self._on_camera_info,
                image_qos("best_effort", 1))

    def _start_workers(self) -> None:
        self._stopping = False
        self._stopped_logged = False
        self._frames = LatestSlot()  # (message, receive time)
        self._jobs = LatestSlot()  # FrameJob whose extra outputs are still to be published
        self._workers = [threading.Thread(target=self._work, name="seg_worker", daemon=True),
                         threading.Thread(target=self._publish_extras, name="seg_outputs", daemon=True)]
        self._worker, self._output_worker = self._workers
        for thread in self._workers:
            thread.start()

    def _deactivate(self) -> bool:
        """Unsubscribe, stop the timer and join the workers (idempotent); True if a worker is still alive."""
        for attr in ("sub", "_info_sub"):
            sub = getattr(self, attr)
            if sub is not None:
                self.destroy_subscription(sub)
                setattr(self, attr, None)
        if self._timer is not None:
            self._timer.cancel()
        self._stopping = True
        for slot in (self._frames, self._jobs):
            if slot is not None:
                slot.close()
        for thread in self._workers:
            if thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout=30.0)
        return any(thread.is_alive() for thread in self._workers)

    @property
    def state_label(self) -> str:
        """The lifecycle state: ``unconfigured``, ``inactive``, ``active`` or ``finalized``."""
        return str(self._state_machine.current_state[1])

    # -- model information --------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return str(getattr(self.segmenter, "backend_name", "?"))

    @property
    def selection_reason(self) -> str:
        """Why this backend and precision run (the Segmenter's selection reason)."""
        return str(getattr(self.segmenter, "selection_reason", "") or "as asked")

    @property
    def model_name(self) -> str:
        card = self.segmenter.card
        return "{} {}".format(card.arch, card.dataset or "").strip()

    def segmenter_input_text(self) -> str:
        w, h = self.segmenter.input_size
        return "{}x{} {}".format(w, h, self.segmenter.resize_policy)

    def _declare_model_info(self) -> None:
        """Class names, palette and model facts as read-only parameters (never overridden).

        Declared at the first configure; ``weights`` and the backend settings are read-only, so a
        later configure loads the same model.
        """
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
            if not self.has_parameter(name):
                self.declare_parameter(name, value, ParameterDescriptor(description=text, read_only=True),
                                       ignore_override=True)

    # -- parameters -------------------------------------------------------------------
    def _validate_parameters(self, params) -> SetParametersResult:
        updates = [(p.name, p.value) for p in params]
        reason = validate_updates(PARAM_TABLE, updates)
        if not reason and self.segmenter is not None:  # checks that need the loaded model
            for name, value in updates:
                if name == "mask_classes":
                    reason = mask_problem(list(value or []), self.segmenter.class_names)
                elif name == "mask_min_confidence" and value > 0 and not self.segmenter.confidence:
                    reason = "mask_min_confidence needs confidence: true (set at start-up)"
                if reason:
                    break
        return SetParametersResult(successful=not reason, reason=reason or "")

    def _apply_parameters(self, params) -> None:
        for p in params:
            if p.name in PARAM_TABLE:
                self.cfg[p.name] = list(p.value or []) if p.name == "mask_classes" else p.value
                if p.name == "mask_classes" and self.segmenter is not None:
                    self._mask_lut = mask_lut(self.cfg["mask_classes"], self.segmenter.class_names)
                if p.name == "max_rate_hz" and self._frames is not None:
                    self._frames.wake()  # a waiting frame is due by the new rate, not the old one
                self.get_logger().info("parameter {} = {}".format(p.name, p.value))

    # -- input ------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        received = time.monotonic()
        self.stats.on_received()
        self._qos_problem = ""  # images arrive: whatever QoS mismatch there was, this one matches
        frames = self._frames
        if frames is not None and frames.put((msg, received)) is not None:
            if self.cfg["max_rate_hz"] > 0 and received < self._due():
                self.stats.on_skipped()  # held back by max_rate_hz, as asked
            else:
                self.stats.on_dropped()  # the worker was busy: overload

    def _on_camera_info(self, msg) -> None:
        self._camera_info = msg

    def _on_incompatible_qos(self, info) -> None:
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).replace("RMW_QOS_POLICY_", "")
        hint = " (the camera publishes best effort: set qos_reliability: best_effort)" \
            if "RELIABILITY" in policy and self.cfg["qos_reliability"] == "reliable" else ""
        self._qos_problem = "a publisher on {} offers an incompatible {} policy, its images are not received{}".format(
            self._input_topic, policy, hint)
        self._report("incompatible QoS", self._qos_problem, warning=True)

    # -- workers --------------------------------------------------------------------
    def _due(self) -> float:
        rate = self.cfg["max_rate_hz"]
        return self._last_start + 1.0 / rate if rate > 0 else 0.0

    def _work(self) -> None:
        """Inference worker: newest frame -> labels (published here) -> extras job."""
        frames = self._frames
        while True:
            item = frames.take(self._due)
            if item is None:
                return
            self._last_start = time.monotonic()
            self._guarded(self._process, item, "processing failed")

    def _publish_extras(self) -> None:
        """Output worker: the outputs besides the labels, beside the next frame's inference."""
        jobs = self._jobs
        while True:
            job = jobs.take()
            if job is None:
                return
            self._guarded(self._extras, (job,), "publishing outputs failed")

    def _guarded(self, work: Callable, args, what: str) -> None:
        """Run one frame's work; an error is counted and reported, never kills the worker."""
        try:
            work(*args)
        except Exception as exc:
            if self._stopping or not self.context.ok():
                return  # deactivating / shutting down: publishers may already be gone
            self.stats.on_error()
            self._report(what, "{}: {}".format(type(exc).__name__, exc))

    def _report(self, what: str, text: str, warning: bool = False) -> None:
        """Remember a problem for /diagnostics and log it, throttled per kind of problem."""
        self._last_error = "{}: {}".format(what, text)
        ok, suppressed = self._throttle.allow(_problem_key(what + text))
        if ok:
            line = self._last_error + (" ({} similar suppressed)".format(suppressed) if suppressed else "")
            (self.get_logger().warning if warning else self.get_logger().error)(line)

    def _wanted(self, publisher, toggle: Optional[str]) -> bool:
        """Whether an output is enabled and someone listens (or ``force_outputs``)."""
        return (toggle is None or self.cfg[toggle]) and \
            (self.cfg["force_outputs"] or publisher.get_subscription_count() > 0)

    def _wanted_outputs(self) -> FrozenSet[str]:
        wanted = {name for name, (attr, toggle) in OUTPUTS.items() if self._wanted(getattr(self, attr), toggle)}
        if self.pub_info is not None:
            wanted.add("camera_info")
        return frozenset(wanted)

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
        if self._stopping:
            return
        self.pub_labels.publish(array_to_image(out.labels, "mono8", msg.header))
        labelled = time.monotonic()
        job = FrameJob(out, image, order, msg.header, self._wanted_outputs(), received, inference, labelled - taken)
        if not job.wanted:
            self.stats.on_processed(labelled - received, inference, job.work_s)
            return
        skipped = self._jobs.put(job)
        if skipped is not None:  # the output worker fell a whole frame behind: its extras are skipped
            self.stats.on_processed(labelled - skipped.received, skipped.inference_s, skipped.work_s)

    def _extras(self, job: FrameJob) -> None:
        out, header, wanted = job.result, job.header, job.wanted
        if wanted & {"color", "color/compressed"}:
            self._publish_view(out.color(), "color", header, wanted)
        if wanted & {"overlay", "overlay/compressed"}:
            self._publish_view(self._overlay(out, job.image, job.order), "overlay", header, wanted)
        if "class_stats" in wanted:
            self.pub_stats.publish(self._stats_message(out, header))
        if "confidence" in wanted:
            self._publish_confidence(out, header)
        if "mask" in wanted:
            mask = class_mask(out.labels, self._mask_lut, out.confidence, self.cfg["mask_min_confidence"])
            self.pub_mask.publish(array_to_image(mask, "mono8", header))
        if "camera_info" in wanted:
            self._publish_camera_info(out, job.image.shape[1], job.image.shape[0], header)
        self.stats.on_processed(time.monotonic() - job.received, job.inference_s, job.work_s)

    def _publish_view(self, rgb: np.ndarray, name: str, header, wanted: FrozenSet[str]) -> None:
        """An RGB view on ``~/<name>`` and/or as JPEG on ``~/<name>/compressed``."""
        if name in wanted:
            getattr(self, OUTPUTS[name][0]).publish(array_to_image(rgb, "rgb8", header))
        if name + "/compressed" in wanted:
            getattr(self, OUTPUTS[name + "/compressed"][0]).publish(
                array_to_compressed(rgb, "rgb", "jpeg", self.cfg["jpeg_quality"], header))

    def _publish_confidence(self, out, header) -> None:
        if out.confidence is None:
            self._report("no confidence", "~/confidence has a subscriber but the node runs with confidence: false",
                         warning=True)
            return
        self.pub_confidence.publish(array_to_image(confidence_mono8(out.confidence), "mono8", header))

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
        if self.segmenter is None or self.pub_diag is None:
            return
        snap = self.stats.snapshot()
        status = DiagnosticStatus(name="{}: segmentation".format(self.get_fully_qualified_name()),
                                  hardware_id=self.backend_name)
        if self.stats.received == 0:
            status.level, status.message = DiagnosticStatus.WARN, "no images received on {}".format(
                self._input_topic)
        elif snap["input_rate_hz"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, "input stopped"
        else:
            status.level, status.message = DiagnosticStatus.OK, "{:.1f} Hz in, {:.1f} Hz out".format(
                snap["input_rate_hz"], snap["output_rate_hz"])
        if self._qos_problem:  # lasts until images arrive, unlike one-off problems
            status.level = max(status.level, DiagnosticStatus.WARN)
            status.message += "; incompatible QoS: " + self._qos_problem
        if self._last_error and not self._last_error.startswith("incompatible QoS"):
            status.level = max(status.level, DiagnosticStatus.WARN)
            status.message += "; last problem: " + self._last_error
        self._last_error = ""
        values = dict(snap)
        values.update(backend=self.backend_name, precision=self.segmenter.precision,
                      device=self.segmenter.device, selection=self.selection_reason, model=self.model_name,
                      input_topic=self._input_topic, output_resolution=self.cfg["output_resolution"])
        status.values = key_values(values)
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    # -- shutdown ---------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the workers after their current frame and join them (idempotent)."""
        alive = self._deactivate()
        if self._stopped_logged:
            return
        self._stopped_logged = True
        text = "stopped: {} frames processed, {} dropped, {} bad, worker {}".format(
            self.stats.processed, self.stats.dropped, self.stats.bad_frames,
            "still running" if alive else "joined")
        if self.context.ok():
            self.get_logger().info(text)
        else:  # after SIGINT / SIGTERM the rosout publisher is gone; plain stderr
            print("[INFO] [{}]: {}".format(self.get_name(), text), file=sys.stderr, flush=True)

    def destroy_node(self) -> None:
        self.stop()
        if self.segmenter is not None:  # release the backend; the facts (backend_name...) stay readable
            self.segmenter.close()
        super().destroy_node()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``seg_node``, ``ros2 run enet_seg_ros seg_node``); returns the exit code."""
    return run_node(NODE_NAME, SegNode, lambda node, executor: None, argv)


if __name__ == "__main__":
    sys.exit(main())
