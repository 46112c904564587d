"""``image_source`` node: camera frames from a folder, a video, a ROS 2 bag or a synthetic scene.

Publishes ``sensor_msgs/Image`` on ``topic`` (default ``/camera/image_raw``; or
``sensor_msgs/CompressedImage`` on ``<topic>/compressed`` with ``publish_compressed``) and a
matching ``sensor_msgs/CameraInfo`` on the sibling ``camera_info`` topic, at ``rate_hz`` or
at the source's own timing (bag receive times, video FPS). Used by the demo, the tests and
for bag replay where ``ros2 bag play`` is not available.

Sources (parameter ``source``, opened by :func:`enet_seg_ros.io.sources.open_source`):

- a folder of images (png, jpg, bmp, tif, webp...; sorted by name),
- a video file (anything OpenCV's FFmpeg reads),
- a ROS 2 bag folder or ``.db3`` / ``.mcap`` file (read with ``rosbags``; raw ``Image`` or
  ``CompressedImage`` topics, chosen with ``bag_topic`` or the first image topic),
- ``synthetic[:WxH[:N]]``: N (default 100) generated street frames (see :mod:`enet_seg_ros.io.scenes`).

Files are stamped with the publish time and ``frame_id``; bag messages keep their recorded
header unless ``restamp`` is set. ``max_frames`` and ``loop`` bound the stream and the node
exits when it is done (code 0; 1 when the source failed or nothing could be published), unless
``exit_when_done`` is false.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ..io.camera_info import nominal_camera_info
from ..io.image_conv import (BAYER_PATTERNS, array_to_compressed, array_to_image, bayer_pattern, compressed_to_color,
                             image_to_color, rgb_to_bayer)
from ..io.sources import DEFAULT_FOLDER_RATE_HZ, SourceFrame, open_source
from ..io.topics import CAMERA_INFO_TYPE, COMPRESSED_TYPE, IMAGE_TOPIC, IMAGE_TYPE, sibling_topic
from .params import ParamSpec, declare_all, required_topic_problem, topic_name_problem
from .qos import RELIABILITY_CHOICES, image_qos
from .runner import run_node

# (bayer_*: what a raw colour camera driver publishes, to test a pipeline without one)
RAW_OUT_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8") + tuple("bayer_{}8".format(p) for p in BAYER_PATTERNS)

PARAMS: Tuple[ParamSpec, ...] = (
    ParamSpec("source", "", "image folder, video file, ROS 2 bag, or synthetic[:WxH[:N]]"),
    ParamSpec("topic", IMAGE_TOPIC, "image topic to publish (CompressedImage goes to <topic>/compressed)",
              check=required_topic_problem),
    ParamSpec("frame_id", "", "header.frame_id for file frames (and bag frames when set); empty: 'camera' / recorded"),
    ParamSpec("rate_hz", 0.0, "publish rate; 0 = the source's own timing (bag times, video FPS; 10 Hz for folders)",
              value_range=(0.0, 1000.0)),
    ParamSpec("loop", False, "start again at the end of the source"),
    ParamSpec("max_frames", 0, "stop after this many frames (0 = no limit)", value_range=(0, 2 ** 31 - 1)),
    ParamSpec("exit_when_done", True, "exit the node (code 0) after the last frame"),
    ParamSpec("encoding", "rgb8", "encoding of raw frames made from files", choices=RAW_OUT_ENCODINGS),
    ParamSpec("publish_compressed", False, "publish sensor_msgs/CompressedImage (JPEG) on <topic>/compressed"),
    ParamSpec("jpeg_quality", 90, "JPEG quality for publish_compressed", value_range=(1, 100)),
    ParamSpec("publish_camera_info", True, "publish CameraInfo on the sibling camera_info topic "
              "(the bag's, else a nominal pinhole)"),
    ParamSpec("bag_topic", "", "image topic to read from a bag (empty: the first image topic)",
              check=topic_name_problem),
    ParamSpec("restamp", False, "stamp bag frames with the publish time instead of their recorded header"),
    ParamSpec("qos_reliability", "reliable", "reliability of the publishers (reliable also serves best-effort "
              "subscribers)", choices=RELIABILITY_CHOICES),
    ParamSpec("qos_depth", 1, "history depth of the publishers", value_range=(1, 1000)),
    ParamSpec("wait_for_subscribers", 0, "wait until this many subscribers are matched before the first frame",
              value_range=(0, 1000)),
    ParamSpec("wait_timeout_s", 10.0, "give up waiting for subscribers after this long (then publish anyway)",
              value_range=(0.0, 3600.0)),
)


_MSG_CLASSES = {IMAGE_TYPE: Image, COMPRESSED_TYPE: CompressedImage, CAMERA_INFO_TYPE: CameraInfo}


def _deserialize(raw: bytes, msgtype: str):
    """Bag CDR bytes as an rclpy message, ready to publish."""
    return deserialize_message(bytes(raw), _MSG_CLASSES[msgtype])


class ImageSource(Node):
    """Publishes frames from a :class:`~enet_seg_ros.io.sources.FrameSource` on a worker thread.

    Create it after ``rclpy.init`` (or with a ``context``); ``start()`` publishes.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("image_source", **kwargs)
        self.cfg = declare_all(self, PARAMS)
        self.source = open_source(self.cfg["source"], self.cfg["bag_topic"],
                                  on_warning=lambda text: self.get_logger().warning(text),
                                  deserialize=_deserialize)
        qos = image_qos(self.cfg["qos_reliability"], self.cfg["qos_depth"])
        topic = self.cfg["topic"]
        if self.cfg["publish_compressed"]:
            self.pub = self.create_publisher(CompressedImage, topic + "/compressed", qos)
        else:
            self.pub = self.create_publisher(Image, topic, qos)
        self.info_pub = None
        if self.cfg["publish_camera_info"]:
            self.info_pub = self.create_publisher(CameraInfo, sibling_topic(topic, "camera_info"), qos)
        self.published = 0
        self._compressed_size: Optional[Tuple[int, int]] = None
        self.done = threading.Event()
        self.failed = ""  # why publishing ended early, if it did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image_source", daemon=True)
        self.get_logger().info("publishing {} on {}{}".format(
            self.source.description, self.pub.topic_name,
            " at {:.1f} Hz".format(self.cfg["rate_hz"]) if self.cfg["rate_hz"] > 0 else " at source timing"))

    def start(self) -> None:
        """Start publishing (on a thread; :attr:`done` is set at the end)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing and join the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    # -- publishing thread ------------------------------------------------------------
    def _wait_for_subscribers(self) -> None:
        want = self.cfg["wait_for_subscribers"]
        deadline = time.monotonic() + self.cfg["wait_timeout_s"]
        while want and self.pub.get_subscription_count() < want and not self._stop.is_set():
            if time.monotonic() > deadline:
                self.get_logger().warning("only {} of {} subscribers after {:.0f} s; publishing anyway".format(
                    self.pub.get_subscription_count(), want, self.cfg["wait_timeout_s"]))
                return
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
            self._publish_all()
        except Exception as exc:  # a source failing mid-way: report it and end cleanly
            if not self._stop.is_set() and self.context.ok():
                self.failed = "source failed: {}".format(exc)
                self.get_logger().error(self.failed)
        finally:
            self.done.set()

    def _publish_all(self) -> None:
        rate = self.cfg["rate_hz"]
        own_rate = self.source.own_rate_hz or DEFAULT_FOLDER_RATE_HZ
        max_frames = self.cfg["max_frames"]
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            # Bag timing: frame k is due at pass_start + (its time - the pass's first time).
            pass_start, first_time = time.monotonic(), None
            produced = False
            for frame in self.source.frames():
                if self._stop.is_set() or (max_frames and n >= max_frames):
                    return
                produced = True
                if rate > 0:
                    due = start + n / rate
                elif self.source.own_rate_hz is None and frame.time_s is not None:
                    first_time = frame.time_s if first_time is None else first_time
                    due = pass_start + (frame.time_s - first_time)
                else:
                    due = start + n / own_rate
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                try:
                    self._publish(frame)
                except ValueError as exc:  # e.g. a corrupt compressed frame in a bag
                    self.get_logger().warning("frame {} skipped: {}".format(frame.index, exc))
                n += 1
            if not self.cfg["loop"] or not produced:
                return

    def _publish(self, frame: SourceFrame) -> None:
        cfg = self.cfg
        now = self.get_clock().now().to_msg()
        if frame.message is not None:
            msg = frame.message
            if cfg["restamp"]:
                msg.header.stamp = now
            if cfg["frame_id"]:
                msg.header.frame_id = cfg["frame_id"]
            if cfg["publish_compressed"] and isinstance(msg, Image):
                pixels, order = image_to_color(msg)
                msg = array_to_compressed(pixels, order, "jpeg", cfg["jpeg_quality"], header=msg.header)
            elif not cfg["publish_compressed"] and isinstance(msg, CompressedImage):
                pixels, order = compressed_to_color(msg)
                msg = array_to_image(np.ascontiguousarray(pixels[:, :, ::-1]), "rgb8", header=msg.header)
            header = msg.header
            raw = msg if isinstance(msg, Image) else frame.message
            size = (raw.width, raw.height) if isinstance(raw, Image) else None
        else:
            header = Header(stamp=now, frame_id=cfg["frame_id"] or "camera")
            pixels = frame.pixels
            if cfg["publish_compressed"]:
                msg = array_to_compressed(pixels, "rgb", "jpeg", cfg["jpeg_quality"], header=header)
            else:
                msg = array_to_image(*_encode(pixels, cfg["encoding"]), header=header)
            size = (pixels.shape[1], pixels.shape[0])
        self.pub.publish(msg)
        self.published += 1
        if self.info_pub is not None:
            info = frame.camera_info
            if info is None:
                if size is None:  # a compressed bag frame: decode once to learn the size
                    size = self._compressed_size or compressed_to_color(frame.message)[0].shape[1::-1]
                    self._compressed_size = size
                info = nominal_camera_info(*size)
            info.header = header
            self.info_pub.publish(info)



def _encode(rgb: np.ndarray, encoding: str) -> Tuple[np.ndarray, str]:
    """RGB pixels in one of :data:`RAW_OUT_ENCODINGS`."""
    import cv2

    if encoding == "rgb8":
        return rgb, encoding
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[:, :, ::-1]), encoding
    if encoding == "rgba8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA), encoding
    if encoding == "bgra8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA), encoding
    if encoding == "mono8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), encoding
    pattern = bayer_pattern(encoding)
    if pattern is not None:
        return rgb_to_bayer(rgb, pattern), encoding
    raise ValueError("unsupported output encoding {!r}".format(encoding))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``image_source``, ``ros2 run enet_seg_ros image_source``); returns the exit code."""
    def spin(node, executor) -> Optional[int]:
        node.start()
        while not node.done.is_set():
            executor.spin_once(timeout_sec=0.1)
        if node.published == 0 and not node.failed:  # (a failure mid-way was logged where it happened)
            node.failed = "published no frames: nothing in the source could be read"
            node.get_logger().error(node.failed)
        elif not node.failed:
            node.get_logger().info("published {} frames".format(node.published))
        if not node.cfg["exit_when_done"]:
            return None
        return 1 if node.failed else 0

    return run_node("image_source", ImageSource, spin, argv)


if __name__ == "__main__":
    sys.exit(main())
