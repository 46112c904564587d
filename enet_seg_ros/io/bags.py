"""ROS 2 bags without ROS: write and read camera frames and label images with ``rosbags``.

Bags are rosbag2 folders (``metadata.yaml`` + one ``.db3`` or ``.mcap`` file), readable by
``ros2 bag`` and by the project's ``image_source``. Messages are ``sensor_msgs/msg/Image``
(raw) and ``sensor_msgs/msg/CompressedImage`` (JPEG / PNG), serialised as CDR.

Every problem becomes a :class:`BagError` that names the bag and, where it applies, the topic
and the header stamp: a bag that cannot be opened (truncated, not a bag), a missing topic
(the message lists the topics that exist), a storage error in the middle of the file. A single
message that cannot be deserialised or decoded is not fatal: :meth:`BagReader.messages`
yields it with ``error`` set, so callers report and skip that frame.

Pixels are converted with :mod:`enet_seg_ros.io.image_conv` (pure numpy / OpenCV), so the same
rules apply to bags and to live topics. :class:`BagReader` serves both the evaluators (messages
deserialised by ``rosbags``) and ``image_source`` (which passes rclpy's deserialiser, so it can
publish what it reads).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .image_conv import RAW_ENCODINGS, compressed_to_color, encode_compressed, raw_to_array, to_color
from .topics import COMPRESSED_TYPE, IMAGE_TOPIC, IMAGE_TYPE, IMAGE_TYPES, looks_like_gt

LOG = logging.getLogger(__name__)

STORAGES = ("sqlite3", "mcap")
BAG_VERSION = 9  # rosbag2 metadata version written (Jazzy / Kilted)
DEFAULT_FRAME_ID = "camera"

PathLike = Union[str, Path]
#: ``deserialize(cdr_bytes, msgtype) -> message``; the default is ``rosbags``' own.
Deserializer = Callable[[bytes, str], Any]


class BagError(ValueError):
    """A bag cannot be read or written as asked (the text names the bag, topic and stamp)."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.LATEST)


# ------------------------------------------------------------------------------------ stamps
def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# builtin_interfaces/Time keeps whole seconds in an int32: the first stamp it cannot hold.
HEADER_STAMP_LIMIT_NS = 2 ** 31 * 1_000_000_000


def format_stamp(stamp_ns: int) -> str:
    """``sec.nanosec`` text for messages (``1700000000.050000000``)."""
    return "{}.{:09d}".format(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)


# ------------------------------------------------------------------------------------ writing
class BagWriter:
    """Write image messages to a new rosbag2 folder.

    Usage::

        with BagWriter(out_dir, storage="mcap") as bag:
            bag.write_image("/camera/image_raw", rgb, "rgb8", stamp_ns)
            bag.write_compressed("/camera/image_raw/compressed", rgb, stamp_ns)
            bag.write_image("/camera/labels_gt", label_ids, "mono8", stamp_ns)

    The bag timestamp (receive time) of each message equals its header stamp.
    """

    def __init__(self, path: PathLike, storage: str = "sqlite3") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError("storage must be one of {}, got {!r}".format(list(STORAGES), storage))
        self.path = Path(path)
        if self.path.exists():
            raise BagError("{} already exists; choose a new bag folder or remove it".format(self.path))
        if not self.path.parent.is_dir():
            raise FileNotFoundError("parent folder of the bag does not exist: {}".format(self.path.parent))
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._ts = _typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugin)
        self._connections: Dict[str, Any] = {}
        self.counts: Dict[str, int] = {}

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._writer.close()

    def _connection(self, topic: str, msgtype: str):
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._ts)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError("{}: topic {} already holds {}, cannot add {}".format(
                self.path, topic, conn.msgtype, msgtype))
        return conn

    def _header(self, stamp_ns: int, frame_id: str):
        if not 0 <= int(stamp_ns) < HEADER_STAMP_LIMIT_NS:
            raise ValueError("stamp {} ns does not fit a ROS 2 header (int32 seconds): it must lie in [0, {})".format(
                stamp_ns, HEADER_STAMP_LIMIT_NS))
        t = self._ts.types
        stamp = t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                 nanosec=int(stamp_ns % 1_000_000_000))
        return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def write_message(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Write a ``rosbags`` message object (see :meth:`image_message`) at ``stamp_ns``."""
        conn = self._connection(topic, msg.__msgtype__)
        self._writer.write(conn, int(stamp_ns), self._ts.serialize_cdr(msg, msg.__msgtype__))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_bytes(self, topic: str, msgtype: str, data: bytes, stamp_ns: int) -> None:
        """Write already serialised CDR bytes (e.g. to build deliberately broken test bags)."""
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def image_message(self, pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = DEFAULT_FRAME_ID):
        """A ``sensor_msgs/msg/Image`` (little-endian, packed rows) holding ``pixels``."""
        if encoding not in RAW_ENCODINGS:
            raise ValueError("unsupported encoding {!r}".format(encoding))
        channels, depth = RAW_ENCODINGS[encoding]
        dtype = np.dtype("<u2") if depth == 2 else np.dtype(np.uint8)
        if not isinstance(pixels, np.ndarray) or pixels.size == 0:
            raise ValueError("{} image: expected a non-empty numpy array, got {}".format(
                encoding, getattr(pixels, "shape", type(pixels).__name__)))
        ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and pixels.shape[2] == channels)
        if not ok or pixels.dtype.kind != "u" or pixels.dtype.itemsize != depth:
            raise ValueError("array {} {} does not match encoding {!r}".format(pixels.shape, pixels.dtype, encoding))
        data = np.frombuffer(np.ascontiguousarray(pixels, dtype=dtype).tobytes(), dtype=np.uint8)
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        return self._ts.types[IMAGE_TYPE](
            header=self._header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
            is_bigendian=0, step=width * channels * depth, data=data)

    def write_image(self, topic: str, pixels: np.ndarray, encoding: str, stamp_ns: int,
                    frame_id: str = DEFAULT_FRAME_ID) -> None:
        """Write a raw image (``rgb8``, ``bgr8``, ``mono8``, ``mono16``...)."""
        self.write_message(topic, self.image_message(pixels, encoding, stamp_ns, frame_id), stamp_ns)

    def write_compressed(self, topic: str, rgb: np.ndarray, stamp_ns: int, frame_id: str = DEFAULT_FRAME_ID,
                         fmt: str = "jpeg", quality: int = 95) -> None:
        """Write an RGB frame as a ``CompressedImage`` the way image_transport does (BGR data)."""
        data, fmt_text = encode_compressed(rgb, "rgb", fmt, quality)
        msg = self._ts.types[COMPRESSED_TYPE](
            header=self._header(stamp_ns, frame_id), format=fmt_text, data=np.frombuffer(data, dtype=np.uint8))
        self.write_message(topic, msg, stamp_ns)


# ------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag."""

    topic: str
    msgtype: str
    count: int


@dataclass
class BagMessage:
    """One message read from a bag.

    ``msg`` is the deserialised ``rosbags`` message, or ``None`` with ``error`` saying why it
    could not be deserialised. ``stamp_ns`` is the header stamp when there is one, else the
    bag timestamp.
    """

    topic: str
    msgtype: str
    timestamp: int  # bag (receive) time, ns
    index: int  # position of the message within its topic
    msg: Any = None
    stamp_ns: Optional[int] = None
    error: Optional[str] = None

    def where(self, bag: Path) -> str:
        """``bag <path> topic <t> stamp <s>`` for messages."""
        stamp = self.stamp_ns if self.stamp_ns is not None else self.timestamp
        return "bag {} topic {} stamp {} (message {})".format(bag, self.topic, format_stamp(stamp), self.index)


def _resolve_bag(path: PathLike) -> Path:
    """A rosbag2 folder; a ``.db3`` / ``.mcap`` file inside one stands for its folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError("bag not found: {}".format(path))
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


class BagReader:
    """Read messages of some topics of a bag (sqlite3 or mcap), in bag-time order.

    Usage::

        with BagReader(path) as bag:
            image_topic = bag.require("/camera/image_raw", IMAGE_TYPES)
            for m in bag.messages([image_topic]):
                ...

    ``deserialize`` (``(cdr_bytes, msgtype) -> message``) replaces ``rosbags``' deserialiser,
    e.g. with rclpy's so that the messages can be published as they are.
    """

    def __init__(self, path: PathLike, deserialize: Optional[Deserializer] = None) -> None:
        self.path = _resolve_bag(path)
        self._deserialize = deserialize
        self._reader = None
        self.topics: Dict[str, TopicInfo] = {}

    def __enter__(self) -> "BagReader":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        """Open the bag; raises :class:`BagError` for anything that is not a readable ROS 2 bag."""
        from rosbags.highlevel import AnyReader

        try:
            reader = AnyReader([self.path], default_typestore=_typestore())
            reader.open()
        except Exception as exc:  # rosbags / sqlite / mcap raise their own types for every kind of bad bag
            raise BagError("cannot open bag {}: {} (truncated, corrupt or not a ROS 2 bag?)".format(
                self.path, exc)) from None
        if not reader.is2:
            reader.close()
            raise BagError("{} is a ROS 1 bag; convert it with rosbags-convert".format(self.path))
        self._reader = reader
        counts: Dict[str, TopicInfo] = {}
        for conn in reader.connections:
            prev = counts.get(conn.topic)
            n = (prev.count if prev else 0) + int(conn.msgcount)
            counts[conn.topic] = TopicInfo(conn.topic, conn.msgtype, n)
        self.topics = counts

    def close(self) -> None:
        """Close the underlying files (idempotent)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def describe_topics(self) -> str:
        """``/a (sensor_msgs/msg/Image, 8 msgs), ...`` for error messages."""
        if not self.topics:
            return "(none)"
        return ", ".join("{} ({}, {} msgs)".format(t.topic, t.msgtype, t.count) for t in
                         sorted(self.topics.values(), key=lambda t: t.topic))

    def require(self, topic: str, types: Sequence[str], what: str = "topic") -> TopicInfo:
        """The topic's info; :class:`BagError` listing the bag's topics when it is absent or of another type."""
        info = self.topics.get(topic)
        if info is None:
            raise BagError("{} {} not found in bag {}; topics in the bag: {}".format(
                what, topic, self.path, self.describe_topics()))
        if info.msgtype not in types:
            raise BagError("{} {} in bag {} is {}, expected {}".format(
                what, topic, self.path, info.msgtype, " or ".join(types)))
        return info

    def find_image_topic(self, preferred: str = IMAGE_TOPIC) -> TopicInfo:
        """The camera topic: ``preferred`` or its ``/compressed`` sibling, else the only image topic."""
        for name in (preferred, preferred + "/compressed"):
            info = self.topics.get(name)
            if info is not None and info.msgtype in IMAGE_TYPES:
                return info
        images = [t for t in self.topics.values() if t.msgtype in IMAGE_TYPES and not looks_like_gt(t.topic)]
        if len(images) == 1:
            return images[0]
        raise BagError("no image topic {} in bag {}; pick one with --image-topic; topics in the bag: {}".format(
            preferred, self.path, self.describe_topics()))

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Messages of ``topics`` in bag-time order, deserialised.

        A message that cannot be deserialised is yielded with ``error`` set; a storage error
        (corrupt database page, truncated chunk) raises :class:`BagError` naming the topic and
        the last good stamp.
        """
        if self._reader is None:
            raise RuntimeError("BagReader is not open")
        if isinstance(topics, str):
            raise TypeError("topics is a list of topic names, got the string {!r}".format(topics))
        wanted = set(topics)
        conns = [c for c in self._reader.connections if c.topic in wanted]
        if not conns:
            return  # rosbags reads an empty connection list as "every topic"
        index: Dict[str, int] = {}
        last: Optional[BagMessage] = None
        it = self._reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # storage-level corruption: the rest of the bag is unreadable
                after = "after {}".format(last.where(self.path)) if last else "before the first message"
                raise BagError("bag {} is corrupt or truncated: reading topics {} failed {}: {}".format(
                    self.path, sorted(wanted), after, exc)) from None
            conn, timestamp, raw = item
            i = index.get(conn.topic, 0)
            index[conn.topic] = i + 1
            out = BagMessage(conn.topic, conn.msgtype, int(timestamp), i)
            try:
                out.msg = (self._deserialize or self._reader.deserialize)(raw, conn.msgtype)
                header = getattr(out.msg, "header", None)
                out.stamp_ns = stamp_to_ns(header.stamp) if header is not None else int(timestamp)
            except Exception as exc:  # corrupt CDR: this message only
                out.msg = None
                out.error = "cannot deserialise {} ({} bytes): {}".format(conn.msgtype, len(raw), exc)
            last = out
            yield out


# ------------------------------------------------------------------------------------ pixels
def decode_frame(msg: Any, msgtype: str) -> Tuple[np.ndarray, str]:
    """A camera message as ``(HxWx3 uint8, "rgb" | "bgr")``.

    Raises :class:`enet_seg_ros.io.image_conv.ImageFormatError` (a ValueError) for malformed
    or undecodable data.
    """
    if msgtype == COMPRESSED_TYPE:
        return compressed_to_color(msg)
    if msgtype != IMAGE_TYPE:
        raise ValueError("{} is not an image message type".format(msgtype))
    pixels = raw_to_array(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
    return to_color(msg.encoding, pixels)


def decode_frame_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """A camera message as contiguous RGB uint8."""
    pixels, order = decode_frame(msg, msgtype)
    return np.ascontiguousarray(pixels[:, :, ::-1] if order == "bgr" else pixels)


def decode_label(msg: Any, msgtype: str = IMAGE_TYPE, encodings: Sequence[str] = ("mono8", "mono16")) -> np.ndarray:
    """A label / instance image message as ``(H, W)`` ids (uint8 for mono8, uint16 for mono16).

    Label images must be lossless raw ``Image`` messages with one channel; anything else is a
    ValueError naming the encoding.
    """
    if msgtype != IMAGE_TYPE:
        raise ValueError("label images must be raw sensor_msgs/msg/Image (lossless), got {}".format(msgtype))
    if msg.encoding not in encodings:
        raise ValueError("label image encoding is {!r}, expected {}".format(msg.encoding, " or ".join(encodings)))
    return np.array(raw_to_array(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data))


def list_topics(path: PathLike) -> List[TopicInfo]:
    """The topics of a bag (opens and closes it)."""
    with BagReader(path) as bag:
        return sorted(bag.topics.values(), key=lambda t: t.topic)
