"""image_source: folders, videos, ROS 2 bags (raw and compressed) and synthetic frames,
published through real rclpy + DDS; timing, stamps, loop / max_frames, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from enet_seg_ros.io.image_conv import (array_to_compressed, array_to_image,  # noqa: E402
                                         compressed_to_color, image_to_array, image_to_rgb, rgb_to_bayer)
from enet_seg_ros.io.camera_info import nominal_camera_info  # noqa: E402
from enet_seg_ros.io.sources import SourceError, open_source, parse_synthetic  # noqa: E402
from enet_seg_ros.ros.image_source import ImageSource  # noqa: E402
from ros_harness import RosHarness, stamp_key, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1)


def _frames(n=3, w=64, h=48):
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _run_source(params, topic="/src_test/image_raw", msg_type=Image, timeout=30.0):
    """Run an image_source in-process until done; returns (node, images, infos, arrival times)."""
    params = dict(params)
    params.setdefault("topic", topic)
    params.setdefault("qos_reliability", "reliable")
    params.setdefault("qos_depth", 50)
    params.setdefault("wait_for_subscribers", 1)
    with RosHarness() as ros:
        arrivals = []
        images = ros.collect(msg_type, topic + ("/compressed" if msg_type is CompressedImage else ""))
        ros.probe.create_subscription(msg_type, topic + ("/compressed" if msg_type is CompressedImage else ""),
                                      lambda m: arrivals.append(time.monotonic()), ros.qos("reliable", 50))
        infos = ros.collect(CameraInfo, topic.rsplit("/", 1)[0] + "/camera_info")
        node = ros.add(ImageSource(context=ros.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()]))
        node.start()
        assert wait_until(node.done.is_set, timeout), "source did not finish"
        assert wait_until(lambda: len(images) >= node.published and len(infos) >= node.published, 10.0)
        return node, list(images), list(infos), arrivals


def test_folder_frames_are_published_in_name_order_with_stamps_and_camera_info(tmp_path):
    frames = _frames(3)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / "f{}.png".format(2 - i)), f[:, :, ::-1])  # names in reverse order
    (tmp_path / "notes.txt").write_text("not an image")
    node, images, infos, _ = _run_source({"source": str(tmp_path), "rate_hz": 50.0, "frame_id": "cam_left"})
    assert node.published == 3 and len(images) == 3
    for got, want in zip(images, reversed(frames)):  # f0.png is the last frame written
        assert got.encoding == "rgb8" and got.header.frame_id == "cam_left"
        assert np.array_equal(image_to_rgb(got), want)
    stamps = [stamp_key(m.header) for m in images]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert abs(time.time() * 1e9 - stamps[-1]) < 60e9  # stamped with the current time
    assert [stamp_key(i.header) for i in infos] == stamps
    assert (infos[0].width, infos[0].height, infos[0].k[0]) == (64, 48, 64.0)


def test_frames_published_as_a_raw_bayer_camera(tmp_path):
    frames = _frames(2)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / "f{}.png".format(i)), f[:, :, ::-1])
    node, images, _, _ = _run_source({"source": str(tmp_path), "rate_hz": 50.0, "encoding": "bayer_gbrg8"})
    assert node.published == 2
    for got, want in zip(images, frames):
        assert got.encoding == "bayer_gbrg8" and (got.width, got.height, got.step) == (64, 48, 64)
        assert np.array_equal(image_to_array(got), rgb_to_bayer(want, "gbrg"))


def test_video_frames_at_the_video_rate(tmp_path):
    path = tmp_path / "clip.avi"
    frames = [cv2.GaussianBlur(f, (7, 7), 0) for f in _frames(6)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    assert writer.isOpened()
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    source = open_source(str(path))
    assert source.own_rate_hz == pytest.approx(20.0)
    node, images, _, arrivals = _run_source({"source": str(path), "encoding": "bgr8"})
    assert len(images) == 6 and images[0].encoding == "bgr8"
    for got, want in zip(images, frames):
        assert np.abs(image_to_rgb(got).astype(int) - want).mean() < 12  # MJPG is lossy
    # 5 gaps of 50 ms: the lower bound proves pacing at the video rate; the upper one only
    # catches a stall (receive times stretch on a loaded machine).
    assert 0.15 <= arrivals[-1] - arrivals[0] <= 5.0


def _write_bag(path: Path, frames, stamps_s, receive_s):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    with Writer(path, version=9) as writer:
        raw = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        comp = writer.add_connection("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=store)
        info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        for f, stamp, recv in zip(frames, stamps_s, receive_s):
            header = Header(frame_id="bag_cam")
            header.stamp.sec, header.stamp.nanosec = int(stamp), int(round((stamp % 1) * 1e9))
            t = int(recv * 1e9)
            cam = nominal_camera_info(f.shape[1], f.shape[0])
            cam.header = header
            writer.write(info, t, serialize_message(cam))
            writer.write(raw, t, serialize_message(array_to_image(f, "rgb8", header)))
            writer.write(comp, t + 1, serialize_message(array_to_compressed(f, "rgb", "png", header=header)))


def test_bag_raw_and_compressed_topics_keep_recorded_headers_and_timing(tmp_path):
    frames = [cv2.GaussianBlur(f, (9, 9), 0) for f in _frames(4)]  # smooth: JPEG stays close
    stamps = [10.0, 10.1, 10.2, 10.3]
    bag = tmp_path / "drive"
    _write_bag(bag, frames, stamps, receive_s=[100.0, 100.15, 100.30, 100.45])
    source = open_source(str(bag))
    assert source.topic == "/cam/image_raw" and source.info_topic == "/cam/camera_info"

    node, images, infos, arrivals = _run_source({"source": str(bag)})
    assert [stamp_key(m.header) for m in images] == [int(round(s * 1e9)) for s in stamps]
    assert all(m.header.frame_id == "bag_cam" for m in images)
    for got, want in zip(images, frames):
        assert np.array_equal(image_to_rgb(got), want)
    assert [stamp_key(i.header) for i in infos] == [stamp_key(m.header) for m in images]
    # Recorded gaps 3 x 150 ms: the lower bound proves the bag timing is kept; the upper one only
    # catches a stall (receive times stretch on a loaded machine).
    assert 0.3 <= arrivals[-1] - arrivals[0] <= 5.0

    # The compressed topic is decoded to raw images (PNG: lossless), restamped on request.
    node, images, _, _ = _run_source({"source": str(bag), "bag_topic": "/cam/image_raw/compressed",
                                      "restamp": True, "rate_hz": 50.0})
    for got, want in zip(images, frames):
        assert np.array_equal(image_to_rgb(got), want)
    assert stamp_key(images[0].header) > 1e18  # now, not the recorded 10 s

    # And a raw topic can be republished compressed.
    node, images, _, _ = _run_source({"source": str(bag), "publish_compressed": True, "rate_hz": 50.0},
                                     msg_type=CompressedImage)
    assert len(images) == 4 and "jpeg" in images[0].format
    assert np.abs(compressed_to_color(images[0])[0][:, :, ::-1].astype(int) - frames[0]).mean() < 8


def test_synthetic_loop_stops_at_max_frames():
    node, images, infos, _ = _run_source({"source": "synthetic:64x48:3", "loop": True, "max_frames": 7,
                                          "rate_hz": 100.0})
    assert node.published == 7 and len(images) == 7
    pixels = [image_to_rgb(m) for m in images]
    assert np.array_equal(pixels[0], pixels[3]) and not np.array_equal(pixels[0], pixels[1])
    assert parse_synthetic("synthetic") == (640, 360, 100)


@pytest.mark.parametrize("spec,match", [
    ("", "parameter 'source' is empty"),
    ("/no/such/folder", "no such file or folder"),
    ("synthetic:big", "synthetic source must look like"),
])
def test_unusable_sources_are_clear_errors(spec, match):
    with pytest.raises(SourceError, match=match):
        open_source(spec)


def test_empty_folder_and_unknown_file_type(tmp_path):
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path))
    odd = tmp_path / "data.xyz"
    odd.write_text("?")
    with pytest.raises(SourceError, match="unknown source type"):
        open_source(str(odd))
    bad_bag = tmp_path / "broken.mcap"
    bad_bag.write_bytes(b"not a bag")
    with pytest.raises(SourceError, match="cannot open as a ROS 2 bag"):
        open_source(str(bad_bag))


def test_process_exit_codes(tmp_path):
    env = dict(os.environ)
    base = [sys.executable, "-m", "enet_seg_ros.ros.image_source", "--ros-args"]
    bad = subprocess.run(base + ["-p", "source:={}".format(tmp_path / "missing")], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr and "Traceback" not in bad.stderr
    done = subprocess.run(base + ["-p", "source:=synthetic:64x48:5", "-p", "rate_hz:=100.0"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "published 5 frames" in done.stderr
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "broken.png").write_bytes(b"not a png")
    nothing = subprocess.run(base + ["-p", "source:={}".format(unreadable)], capture_output=True, text=True,
                             timeout=60, env=env)
    assert nothing.returncode == 1 and "published no frames" in nothing.stderr, nothing.stderr
