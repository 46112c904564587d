"""Camera frame sources: an image folder, a video, a ROS 2 bag or generated street scenes.

:func:`open_source` turns a ``source`` text (the ``image_source`` parameter, the demo's
``--source``) into a :class:`FrameSource` whose ``frames()`` yields :class:`SourceFrame`:

- a folder of images (png, jpg, bmp, tif, webp...; sorted by name),
- a video file (anything OpenCV's FFmpeg reads),
- a ROS 2 bag folder or ``.db3`` / ``.mcap`` file (read with :class:`.bags.BagReader`; raw
  ``Image`` or ``CompressedImage`` topics, chosen by name or the first image topic),
- ``synthetic[:WxH[:N]]``: N (default 100) generated street frames (see :mod:`.scenes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from .bags import BagError, BagReader, Deserializer
from .files import BAG_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_images
from .scenes import render_scene
from .topics import CAMERA_INFO_TYPE, IMAGE_TYPE, IMAGE_TYPES, camera_info_topic

DEFAULT_FOLDER_RATE_HZ = 10.0
SYNTHETIC_CYCLE = 30  # distinct synthetic frames rendered (then cycled), bounds memory


class SourceError(ValueError):
    """A source path or option is unusable (the text names it and the problem)."""


@dataclass
class SourceFrame:
    """One frame from a source.

    Exactly one of ``pixels`` (RGB uint8 from files) or ``message`` (an ``Image`` /
    ``CompressedImage`` from a bag, as the bag's deserialiser made it) is set. ``time_s`` is
    the source's own clock (bag receive time, video position), used for source timing.
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

    def __init__(self, folder: Path, on_warning: Callable[[str], None] = print) -> None:
        self.files = list_images(folder)
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
    """Generated street frames (:func:`enet_seg_ros.io.scenes.render_scene`); each frame is rendered
    once and handed out read-only (frame ``i`` and ``i + SYNTHETIC_CYCLE`` are the same array)."""

    def __init__(self, width: int = 640, height: int = 360, count: int = 100) -> None:
        if width < 32 or height < 32 or count < 1:
            raise SourceError("synthetic source needs width, height >= 32 and N >= 1")
        self.width, self.height, self.count = width, height, count
        self._cache: List[np.ndarray] = []
        self.description = "{} synthetic {}x{} street frames".format(count, width, height)

    def frames(self) -> Iterator[SourceFrame]:
        for i in range(self.count):
            k = i % SYNTHETIC_CYCLE
            if k == len(self._cache):
                frame = render_scene(k, self.width, self.height)[0]
                frame.setflags(write=False)  # shared by every cycle: read-only, so no caller changes the next
                self._cache.append(frame)
            yield SourceFrame(index=i, pixels=self._cache[k], name="synthetic_{:04d}".format(i))


class BagSource(FrameSource):
    """Image or CompressedImage messages of one topic of a ROS 2 bag, in recorded order.

    A ``CameraInfo`` topic next to the image topic (``.../camera_info``) is attached to
    frames. ``deserialize`` makes the messages (``image_source`` passes rclpy's, so the
    frames can be published as they are; the default gives ``rosbags`` messages).
    """

    own_rate_hz = None

    def __init__(self, path: Path, topic: str = "", deserialize: Optional[Deserializer] = None) -> None:
        self.path = path
        self._deserialize = deserialize
        try:
            with BagReader(path) as bag:
                topics = bag.topics
        except (BagError, FileNotFoundError) as exc:
            raise SourceError("{}: cannot open as a ROS 2 bag ({})".format(path, exc)) from None
        images = {t.topic: t.msgtype for t in topics.values() if t.msgtype in IMAGE_TYPES}
        if not images:
            raise SourceError("{}: no sensor_msgs/Image or CompressedImage topic".format(path))
        if topic:
            if topic not in images:
                raise SourceError("{}: topic {!r} not found; image topics: {}".format(path, topic, sorted(images)))
        else:  # prefer raw images, then the first name
            topic = sorted(images, key=lambda t: (images[t] != IMAGE_TYPE, t))[0]
        self.topic, self.msgtype = topic, images[topic]
        info = topics.get(camera_info_topic(topic))
        self.info_topic = info.topic if info is not None and info.msgtype == CAMERA_INFO_TYPE else None
        self.count = topics[topic].count
        self.description = "bag {} topic {} ({} messages{})".format(
            path, self.topic, self.count, ", camera_info " + self.info_topic if self.info_topic else "")

    def frames(self) -> Iterator[SourceFrame]:
        with BagReader(self.path, deserialize=self._deserialize) as bag:
            info = None
            for m in bag.messages([t for t in (self.topic, self.info_topic) if t]):
                if m.error is not None:  # corrupt CDR in the bag: the stream ends here, named
                    raise SourceError("{}: message {} on {} {}".format(self.path, m.index, m.topic, m.error))
                if m.topic == self.info_topic:
                    info = m.msg
                    continue
                yield SourceFrame(index=m.index, time_s=m.timestamp * 1e-9, message=m.msg, camera_info=info)


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


def open_source(spec: str, bag_topic: str = "", on_warning: Callable[[str], None] = print,
                deserialize: Optional[Deserializer] = None) -> FrameSource:
    """Open ``spec`` (folder, video, bag or ``synthetic...``); raises :class:`SourceError`.

    ``deserialize`` makes bag messages (see :class:`BagSource`).
    """
    if not spec:
        raise SourceError("parameter 'source' is empty: give an image folder, a video, a bag or 'synthetic'")
    if spec.split(":")[0] == "synthetic":
        return SyntheticSource(*parse_synthetic(spec))
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError("{}: no such file or folder".format(path))
    is_bag = path.suffix.lower() in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").is_file())
    if is_bag:
        return BagSource(path, bag_topic, deserialize)
    if path.is_dir():
        return FolderSource(path, on_warning)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError("{}: a single image; put it in a folder (the source publishes a folder)".format(path))
    raise SourceError("{}: unknown source type (expected an image folder, a video {}, a bag or 'synthetic')".format(
        path, "/".join(VIDEO_SUFFIXES)))
