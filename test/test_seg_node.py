"""seg_node end to end with real rclpy + DDS: outputs, headers, labels equal to Segmenter.

Frames go through the node's real subscription (reliable QoS so every frame counts) and the
outputs are received by a separate node; the reference is a Segmenter on the same weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("onnxruntime")

from rclpy.parameter import Parameter  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from enet_seg_ros.engine import Segmenter  # noqa: E402
from enet_seg_ros.io.camera_info import project, scale_camera_info  # noqa: E402
from enet_seg_ros.io.image_conv import (  # noqa: E402
    array_to_compressed, array_to_image, compressed_to_color, image_to_color, rgb_to_bayer)
from enet_seg_ros.io.camera_info import nominal_camera_info  # noqa: E402
from enet_seg_ros.io.scenes import render_scene  # noqa: E402
from enet_seg_ros.ros.seg_node import SegNode  # noqa: E402
from ros_harness import RosHarness, stamp_key, wait_until  # noqa: E402

W, H = 640, 360
N_FRAMES = 30


@pytest.fixture(scope="module")
def weights(small_enet_weights: Path) -> Path:
    return small_enet_weights


@pytest.fixture(scope="module")
def reference(weights) -> Segmenter:
    return Segmenter(str(weights), confidence=True)


@pytest.fixture(scope="module")
def frames():
    return [render_scene(i, W, H)[0] for i in range(N_FRAMES)]


def _header(i: int) -> Header:
    header = Header(frame_id="cam_test")
    header.stamp.sec, header.stamp.nanosec = 1000 + i, 1000 * i + 7
    return header


def _start_node(ros: RosHarness, weights: Path, name: str, topic: str, **params) -> object:
    overrides = [Parameter("weights", value=str(weights)), Parameter("image_topic", value=topic),
                 Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=5)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(SegNode(node_name=name, context=ros.context, parameter_overrides=overrides))


def _collect_outputs(ros: RosHarness, node, name: str):
    out = {k: ros.collect(Image, "/{}/{}".format(name, k)) for k in ("labels", "color", "overlay")}
    out["class_stats"] = ros.collect(DiagnosticArray, "/{}/class_stats".format(name))
    # Colour / overlay / stats are only computed for subscribers: wait until ours are matched.
    for pub in (node.pub_labels, node.pub_color, node.pub_overlay, node.pub_stats):
        assert ros.wait_matched(pub), "output subscription not matched"
    return out


def _by_stamp(messages, key):
    return next((m for m in list(messages) if stamp_key(m.header) == key), None)


def _run_lockstep(ros, pub, out, msgs):
    """Publish each message after the previous one's four outputs arrived."""
    for msg in msgs:
        key = stamp_key(msg.header)
        pub.publish(msg)
        assert wait_until(lambda: all(_by_stamp(out[k], key) is not None for k in out), 30.0), \
            "outputs of frame {} missing: {}".format(key, {k: _by_stamp(v, key) is not None for k, v in out.items()})


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "bayer_rggb8", "compressed"])
def test_every_frame_gives_four_outputs_with_its_header(weights, reference, frames, encoding):
    name = "seg_e2e_" + encoding
    topic = "/e2e_{}/image_raw".format(encoding)
    with RosHarness() as ros:
        node = _start_node(ros, weights, name, topic, compressed=encoding == "compressed")
        out = _collect_outputs(ros, node, name)
        if encoding == "compressed":
            pub = ros.publisher(CompressedImage, topic + "/compressed")
            msgs = [array_to_compressed(f, "rgb", "jpeg", 90, header=_header(i)) for i, f in enumerate(frames)]
        elif encoding == "bayer_rggb8":  # a raw camera topic: the node demosaics
            pub = ros.publisher(Image, topic)
            msgs = [array_to_image(rgb_to_bayer(f, "rggb"), encoding, _header(i)) for i, f in enumerate(frames)]
        else:
            pub = ros.publisher(Image, topic)
            msgs = [array_to_image(np.ascontiguousarray(f if encoding == "rgb8" else f[:, :, ::-1]), encoding,
                                   _header(i)) for i, f in enumerate(frames)]
        diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
        assert ros.wait_matched(pub)
        _run_lockstep(ros, pub, out, msgs)
        assert node.stats.processed == N_FRAMES and node.stats.dropped == 0 and node.stats.bad_frames == 0
        mine = "/{}: segmentation".format(name)

        def final_diagnostics():  # the 1 Hz report that has seen every frame
            for d in list(diagnostics):
                for s in d.status:
                    values = {kv.key: kv.value for kv in s.values}
                    if s.name == mine and values.get("frames_processed") == str(N_FRAMES):
                        return values
            return None

        assert wait_until(lambda: final_diagnostics() is not None, 5.0)
    values = final_diagnostics()
    for key in ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p95_ms", "latency_max_ms",
                "dropped_frames", "bad_frames", "backend", "model"):
        assert key in values, key
    assert values["backend"] == reference.backend_name and values["model"] == "enet camvid"
    assert float(values["latency_p50_ms"]) > 0 and values["dropped_frames"] == "0"

    names = reference.class_names
    for i, (frame, msg) in enumerate(zip(frames, msgs)):
        key = stamp_key(msg.header)
        labels, color, overlay, stats = (_by_stamp(out[k], key) for k in ("labels", "color", "overlay", "class_stats"))
        for m in (labels, color, overlay, stats):
            assert m.header.frame_id == "cam_test"
        assert (labels.encoding, labels.width, labels.height) == ("mono8", W, H)
        assert (color.encoding, color.width, color.height) == ("rgb8", W, H)
        assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", W, H)
        # The reference sees exactly what the node saw (for JPEG: the decoded bytes; for Bayer:
        # the demosaiced frame, which stays close to the original).
        if encoding == "compressed":
            rgb = compressed_to_color(msg)[0][:, :, ::-1].copy()
        elif encoding == "bayer_rggb8":
            rgb, order = image_to_color(msg)
            assert order == "rgb" and np.abs(rgb.astype(int) - frame).mean() < 8
        else:
            rgb = frame
        ref = reference.segment(np.ascontiguousarray(rgb), channel_order="rgb")
        got_labels = np.frombuffer(labels.data, np.uint8).reshape(H, W)
        assert np.array_equal(got_labels, ref.labels), "frame {}: labels differ from Segmenter".format(i)
        assert np.array_equal(np.frombuffer(color.data, np.uint8).reshape(H, W, 3), ref.color())
        expected_overlay = ref.overlay(rgb, 0.5)
        assert np.abs(np.frombuffer(overlay.data, np.uint8).reshape(H, W, 3).astype(int) - expected_overlay).max() <= 1
        assert [s.name for s in stats.status] == names
        ref_stats = ref.class_stats()
        for status in stats.status:
            values = {kv.key: kv.value for kv in status.values}
            assert int(values["pixels"]) == ref_stats[status.name]["pixels"]
            assert abs(float(values["fraction"]) - ref_stats[status.name]["fraction"]) < 1e-5
            if ref_stats[status.name]["pixels"]:
                assert abs(float(values["mean_confidence"]) - ref_stats[status.name]["mean_confidence"]) < 1e-3


@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_model_resolution_outputs_and_scaled_camera_info(weights, frames, policy):
    name = "seg_model_" + policy
    topic = "/model_{}/image_raw".format(policy)
    reference = Segmenter(str(weights), resize_policy=policy)
    with RosHarness() as ros:
        node = _start_node(ros, weights, name, topic, output_resolution="model", resize_policy=policy,
                           publish_stats=False)
        out = _collect_outputs(ros, node, name)
        del out["class_stats"]
        infos = ros.collect(CameraInfo, "/{}/camera_info".format(name))
        info_pub = ros.publisher(CameraInfo, "/model_{}/camera_info".format(policy), reliability="best_effort")
        pub = ros.publisher(Image, topic)
        assert ros.wait_matched(pub) and ros.wait_matched(info_pub) and ros.wait_matched(node.pub_info)
        cam = nominal_camera_info(W, H)
        cam.k[0] = cam.p[0] = 500.0  # fx != fy so a swapped axis would show
        cam.header = _header(0)
        info_pub.publish(cam)
        assert wait_until(lambda: node._camera_info is not None, 10.0)
        msgs = [array_to_image(frames[i], "rgb8", _header(i)) for i in range(3)]
        _run_lockstep(ros, pub, out, msgs)
        assert wait_until(lambda: len(infos) >= 3, 10.0)

    mw, mh = reference.input_size
    for msg in msgs:
        key = stamp_key(msg.header)
        labels = _by_stamp(out["labels"], key)
        assert (labels.width, labels.height) == (mw, mh)
        ref = reference.segment(np.frombuffer(msg.data, np.uint8).reshape(H, W, 3).copy(), output="model")
        assert np.array_equal(np.frombuffer(labels.data, np.uint8).reshape(mh, mw), ref.labels)
        overlay = _by_stamp(out["overlay"], key)
        assert (overlay.width, overlay.height) == (mw, mh)
        info = _by_stamp(infos, key)
        assert info is not None and (info.width, info.height) == (mw, mh)
        # Same intrinsics as the engine's own geometry maths...
        assert np.allclose(np.reshape(info.k, (3, 3)), ref.geometry.model_intrinsics(np.reshape(cam.k, (3, 3))))
        # ...and a 3-D point lands where the camera pixel lands after the resize.
        u, v = project(cam, 0.7, -0.3, 4.0)
        mx, my = ref.geometry.to_model(u + 0.5, v + 0.5)
        assert np.allclose(project(info, 0.7, -0.3, 4.0), (mx - 0.5, my - 0.5), atol=1e-6)


def test_scaled_camera_info_matches_an_actual_resize():
    """A bright dot drawn at a projected point, resized like the network input, stays on the point."""
    import cv2

    cam = nominal_camera_info(640, 360)
    u, v = project(cam, 0.31, 0.12, 3.0)
    img = np.zeros((360, 640), np.float32)
    cv2.circle(img, (int(round(u * 16)), int(round(v * 16))), 6 * 16, 1.0, -1, lineType=cv2.LINE_AA, shift=4)
    small = cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA)
    scaled = scale_camera_info(cam, 160, 120, 160 / 640, 120 / 360)
    su, sv = project(scaled, 0.31, 0.12, 3.0)
    ys, xs = np.mgrid[0:120, 0:160]
    cu, cv_ = (small * xs).sum() / small.sum(), (small * ys).sum() / small.sum()
    assert abs(cu - su) < 0.05 and abs(cv_ - sv) < 0.05
    # image_proc's plain "cx * scale" would be off by (scale - 1) / 2 = 0.375 px here.
    assert abs(cam.k[2] * 160 / 640 - su) > 0.3 or abs(cam.k[5] * 120 / 360 - sv) > 0.3
