"""``image_source`` node: camera frames from a folder, a video, a ROS 2 bag or a synthetic scene.

Publishes ``sensor_msgs/Image`` on ``topic`` (default ``/camera/image_raw``; or
``sensor_msgs/CompressedImage`` on ``<topic>/compressed`` with ``publish_compressed``) and a
matching ``sensor_msgs/CameraInfo`` on the sibling ``camera_info`` topic, at ``rate_hz`` or
at the source's own timing (bag receive times, video FPS). Used by the demo, the tests and
for bag replay where ``ros2 bag play`` is not available.

Sources (parameter ``source``):

- a folder of images (png, jpg, bmp, tif, webp...; sorted by name),
- a video file (anything OpenCV's FFmpeg reads),
- a ROS 2 bag folder or ``.db3`` / ``.mcap`` file (read with ``rosbags``; raw ``Image`` or
  ``CompressedImage`` topics, chosen with ``bag_topic`` or the first image topic),
- ``synthetic[:WxH[:N]]``: N (default 100) generated street frames (see :mod:`.scenes`).

Files are stamped with the publish time and ``frame_id``; bag messages keep their recorded
header unless ``restamp`` is set. ``max_frames`` and ``loop`` bound the stream and the node
exits (code 0) when it is done, unless ``exit_when_done`` is false.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .params import ParamSpec, declare_all
from .qos import RELIABILITY_CHOICES
from .runner import lazy_class, run_node

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BAG_SUFFIXES = (".db3", ".mcap")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEFAULT_FOLDER_RATE_HZ = 10.0
SYNTHETIC_CYCLE = 30  # distinct synthetic frames rendered (then cycled), bounds memory


class SourceError(ValueError):
    """A source path or option is unusable (the text names it and the problem)."""


@dataclass
class SourceFrame:
    """One frame from a source.

    Exactly one of ``pixels`` (RGB uint8 from files) or ``message`` (an rclpy ``Image`` /
    ``CompressedImage`` from a bag) is set. ``time_s`` is the source's own clock (bag receive
    time, video position), used for source timing.
    """

    index: int
    time_s: Optional[float] = None
    pixels: Optional[np.ndarray] = None
    message: Optional[object] = None
    camera_info: Optional[object] = None
    name: str = ""


class FrameSource:
    """Base class: ``frames()`` yields :class:`SourceFrame` once through the source."""

    #: frames per second of the source's own timing (None: timing comes from ``time_s``).
    own_rate_hz: Optional[float] = DEFAULT_FOLDER_RATE_HZ
    description = ""

    def frames(self) -> Iterator[SourceFrame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release files / readers."""


class FolderSource(FrameSource):
    """Image files in a folder, sorted by name; unreadable files are reported and skipped."""

    def __init__(self, folder: Path, on_warning=print) -> None:
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise SourceError("{}: no image files ({})".format(folder, ", ".join(IMAGE_SUFFIXES)))
        self.on_warning = on_warning
        self.description = "{} images in {}".format(len(self.files), folder)

    def frames(self) -> Iterator[SourceFrame]:
        import cv2

        for i, path in enumerate(self.files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                self.on_warning("{}: not a readable image, skipped".format(path))
                continue
            yield SourceFrame(index=i, pixels=np.ascontiguousarray(bgr[:, :, ::-1]), name=path.name)


class VideoSource(FrameSource):
    """A video file decoded with OpenCV (FFmpeg); timing from its FPS."""

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise SourceError("{}: OpenCV cannot open this video".format(path))
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        self.own_rate_hz = float(fps) if fps and 0 < fps < 1000 else DEFAULT_FOLDER_RATE_HZ
        self.description = "video {} ({:.1f} fps)".format(path, self.own_rate_hz)

    def frames(self) -> Iterator[SourceFrame]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield SourceFrame(index=i, time_s=i / self.own_rate_hz, pixels=np.ascontiguousarray(bgr[:, :, ::-1]))
                i += 1
        finally:
            cap.release()


class SyntheticSource(FrameSource):
    """Generated street frames (:func:`enet_seg_ros.ros.scenes.render_scene`)."""

    def __init__(self, width: int = 640, height: int = 360, count: int = 100) -> None:
        if width < 32 or height < 32 or count < 1:
            raise SourceError("synthetic source needs width, height >= 32 and N >= 1")
        self.width, self.height, self.count = width, height, count
        self._cache: List[np.ndarray] = []
        self.description = "{} synthetic {}x{} street frames".format(count, width, height)

    def frames(self) -> Iterator[SourceFrame]:
        from .scenes import render_scene

        for i in range(self.count):
            k = i % SYNTHETIC_CYCLE
            if k == len(self._cache):
                self._cache.append(render_scene(k, self.width, self.height)[0])
            yield SourceFrame(index=i, pixels=self._cache[k], name="synthetic_{:04d}".format(i))


class BagSource(FrameSource):
    """Image or CompressedImage messages of one topic of a ROS 2 bag, in recorded order.

    Messages are CDR bytes in the bag and are deserialised straight into rclpy messages. A
    ``CameraInfo`` topic next to the image topic (``.../camera_info``) is attached to frames.
    """

    own_rate_hz = None

    def __init__(self, path: Path, topic: str = "") -> None:
        from rosbags.highlevel import AnyReader

        self.path = path
        try:
            reader = AnyReader([path])
            reader.open()
        except Exception as exc:  # rosbags raises its own error types for every kind of bad bag
            raise SourceError("{}: cannot open as a ROS 2 bag ({})".format(path, exc)) from None
        try:
            if not reader.is2:
                raise SourceError("{}: ROS 1 bags are not supported (convert with rosbags-convert)".format(path))
            images = {c.topic: c.msgtype for c in reader.connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)}
            if not images:
                raise SourceError("{}: no sensor_msgs/Image or CompressedImage topic".format(path))
            if topic:
                if topic not in images:
                    raise SourceError("{}: topic {!r} not found; image topics: {}".format(path, topic, sorted(images)))
            else:  # prefer raw images, then the first name
                topic = sorted(images, key=lambda t: (images[t] != IMAGE_TYPE, t))[0]
            self.topic, self.msgtype = topic, images[topic]
            base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
            info_topic = base.rsplit("/", 1)[0] + "/camera_info" if "/" in base else "camera_info"
            self.info_topic = info_topic if any(
                c.topic == info_topic and c.msgtype == CAMERA_INFO_TYPE for c in reader.connections) else None
            self.count = sum(c.msgcount for c in reader.connections if c.topic == topic)
        finally:
            reader.close()
        self.description = "bag {} topic {} ({} messages{})".format(
            path, self.topic, self.count, ", camera_info " + self.info_topic if self.info_topic else "")

    def frames(self) -> Iterator[SourceFrame]:
        from rclpy.serialization import deserialize_message
        from rosbags.highlevel import AnyReader
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        msg_class = Image if self.msgtype == IMAGE_TYPE else CompressedImage
        with AnyReader([self.path]) as reader:
            wanted = [c for c in reader.connections if c.topic in (self.topic, self.info_topic)]
            info = None
            i = 0
            for conn, timestamp, raw in reader.messages(connections=wanted):
                if conn.topic == self.info_topic:
                    info = deserialize_message(bytes(raw), CameraInfo)
                    continue
                try:
                    msg = deserialize_message(bytes(raw), msg_class)
                except Exception as exc:  # corrupt CDR in the bag: report, keep going
                    raise SourceError("{}: message {} on {} cannot be deserialised ({})".format(
                        self.path, i, self.topic, exc)) from None
                yield SourceFrame(index=i, time_s=timestamp * 1e-9, message=msg, camera_info=info)
                i += 1


def parse_synthetic(spec: str) -> Tuple[int, int, int]:
    """``synthetic[:WxH[:N]]`` -> ``(width, height, count)``."""
    parts = spec.split(":")
    width, height, count = 640, 360, 100
    try:
        if len(parts) > 1 and parts[1]:
            w, h = parts[1].lower().split("x")
            width, height = int(w), int(h)
        if len(parts) > 2 and parts[2]:
            count = int(parts[2])
        if len(parts) > 3:
            raise ValueError(spec)
    except ValueError:
        raise SourceError("synthetic source must look like synthetic[:WIDTHxHEIGHT[:N]], got {!r}".format(
            spec)) from None
    return width, height, count


def open_source(spec: str, bag_topic: str = "", on_warning=print) -> FrameSource:
    """Open ``spec`` (folder, video, bag or ``synthetic...``); raises :class:`SourceError`."""
    if not spec:
        raise SourceError("parameter 'source' is empty: give an image folder, a video, a bag or 'synthetic'")
    if spec.split(":")[0] == "synthetic":
        return SyntheticSource(*parse_synthetic(spec))
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError("{}: no such file or folder".format(path))
    is_bag = path.suffix.lower() in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").is_file())
    if is_bag:
        return BagSource(path, bag_topic)
    if path.is_dir():
        return FolderSource(path, on_warning)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError("{}: a single image; put it in a folder (the source publishes a folder)".format(path))
    raise SourceError("{}: unknown source type (expected an image folder, a video {}, a bag or 'synthetic')".format(
        path, "/".join(VIDEO_SUFFIXES)))


def sibling_topic(image_topic: str, name: str) -> str:
    """``/camera/image_raw`` -> ``/camera/<name>`` (the image_transport convention)."""
    return image_topic.rsplit("/", 1)[0] + "/" + name if "/" in image_topic else name


def nominal_camera_info(width: int, height: int):
    """A pinhole ``CameraInfo`` (no distortion, ~53 deg horizontal field of view)."""
    from sensor_msgs.msg import CameraInfo

    f = float(width)
    cx, cy = width / 2.0, height / 2.0
    info = CameraInfo()
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


RAW_OUT_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

PARAMS: Tuple[ParamSpec, ...] = (
    ParamSpec("source", "", "image folder, video file, ROS 2 bag, or synthetic[:WxH[:N]]"),
    ParamSpec("topic", "/camera/image_raw", "image topic to publish (CompressedImage goes to <topic>/compressed)"),
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
    ParamSpec("bag_topic", "", "image topic to read from a bag (empty: the first image topic)"),
    ParamSpec("restamp", False, "stamp bag frames with the publish time instead of their recorded header"),
    ParamSpec("qos_reliability", "reliable", "reliability of the publishers (reliable also serves best-effort "
              "subscribers)", choices=RELIABILITY_CHOICES),
    ParamSpec("qos_depth", 1, "history depth of the publishers", value_range=(1, 1000)),
    ParamSpec("wait_for_subscribers", 0, "wait until this many subscribers are matched before the first frame",
              value_range=(0, 1000)),
    ParamSpec("wait_timeout_s", 10.0, "give up waiting for subscribers after this long (then publish anyway)",
              value_range=(0.0, 3600.0)),
)


def _make_node_class():
    """Build the Node subclass lazily so importing this module does not need rclpy."""
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image

    from .image_conv import array_to_compressed, array_to_image, compressed_to_color
    from .qos import image_qos

    class ImageSource(Node):
        """Publishes frames from a :class:`FrameSource` on a worker thread."""

        def __init__(self, **kwargs) -> None:
            super().__init__("image_source", **kwargs)
            self.cfg = declare_all(self, PARAMS)
            self.source = open_source(self.cfg["source"], self.cfg["bag_topic"],
                                      on_warning=lambda text: self.get_logger().warning(text))
            qos = image_qos(self.cfg["qos_reliability"], self.cfg["qos_depth"])
            topic = self.cfg["topic"]
            if self.cfg["publish_compressed"]:
                self.pub = self.create_publisher(CompressedImage, topic + "/compressed", qos)
            else:
                self.pub = self.create_publisher(Image, topic, qos)
            self.info_pub = None
            if self.cfg["publish_camera_info"]:
                from sensor_msgs.msg import CameraInfo

                self.info_pub = self.create_publisher(CameraInfo, sibling_topic(topic, "camera_info"), qos)
            self.published = 0
            self._compressed_size: Optional[Tuple[int, int]] = None
            self.done = threading.Event()
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
                    self.get_logger().error("source failed: {}".format(exc))
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
                    from .image_conv import image_to_color

                    pixels, order = image_to_color(msg)
                    msg = array_to_compressed(pixels, order, "jpeg", cfg["jpeg_quality"], header=msg.header)
                elif not cfg["publish_compressed"] and isinstance(msg, CompressedImage):
                    pixels, order = compressed_to_color(msg)
                    msg = array_to_image(np.ascontiguousarray(pixels[:, :, ::-1]), "rgb8", header=msg.header)
                header = msg.header
                raw = msg if isinstance(msg, Image) else frame.message
                size = (raw.width, raw.height) if isinstance(raw, Image) else None
            else:
                from std_msgs.msg import Header

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

    return ImageSource


_node_class = lazy_class(_make_node_class)


def ImageSource(*args, **kwargs):  # noqa: N802 - reads like the class it builds
    """Create an ``image_source`` node (rclpy must be initialised); ``start()`` publishes."""
    return _node_class()(*args, **kwargs)


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
    raise ValueError("unsupported output encoding {!r}".format(encoding))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``image_source``, ``ros2 run enet_seg_ros image_source``); returns the exit code."""
    def spin(node, executor) -> Optional[int]:
        node.start()
        while not node.done.is_set():
            executor.spin_once(timeout_sec=0.1)
        node.get_logger().info("published {} frames".format(node.published))
        return 0 if node.cfg["exit_when_done"] else None

    return run_node("image_source", ImageSource, spin, argv)


if __name__ == "__main__":
    sys.exit(main())
