"""seg_node as a managed node and its new outputs, with real rclpy + DDS.

- Lifecycle transitions through the real ``~/get_state`` / ``~/change_state`` services from a
  client node: nothing is subscribed, computed or published while inactive, the model stays
  loaded until cleanup, shutdown works from any state, a failed configure keeps the node up.
- ``~/confidence``, ``~/mask`` (pixel-exact with ``~/labels``), ``~/color/compressed`` and
  ``~/overlay/compressed``; bad runtime values are refused with a reason and the node keeps running.
- ``backend_strict``: an explicit backend that cannot start (TensorRT, absent here) is exit code 2.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("rclpy")
pytest.importorskip("onnxruntime")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from enet_seg_ros.engine import Segmenter  # noqa: E402
from enet_seg_ros.io.image_conv import array_to_image  # noqa: E402
from enet_seg_ros.io.scenes import render_scene  # noqa: E402
from enet_seg_ros.ros.seg_node import SegNode, confidence_mono8  # noqa: E402
from ros_harness import RosHarness, stamp_key, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
W, H = 320, 240
FRAMES = [render_scene(20 + i, W, H)[0] for i in range(3)]


@pytest.fixture(scope="module")
def weights(small_enet_weights: Path) -> Path:
    return small_enet_weights


def _header(sec: int) -> Header:
    header = Header(frame_id="cam")
    header.stamp.sec = sec
    return header


def _find(bucket, key):
    return next((m for m in list(bucket) if stamp_key(m.header) == key), None)


def _pixels(msg, channels: int = 1) -> np.ndarray:
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return np.frombuffer(msg.data, np.uint8).reshape(shape)


def _call(ros: RosHarness, client, request):
    assert client.wait_for_service(timeout_sec=30.0), "service {} not available".format(client.srv_name)
    future = client.call_async(request)
    assert wait_until(future.done, 60.0), "{} did not answer".format(client.srv_name)
    return future.result()


class Lifecycle:
    """A client of a node's real lifecycle services."""

    def __init__(self, ros: RosHarness, node_name: str) -> None:
        self.ros = ros
        self.get = ros.probe.create_client(GetState, "/{}/get_state".format(node_name))
        self.change = ros.probe.create_client(ChangeState, "/{}/change_state".format(node_name))

    def state(self) -> str:
        return _call(self.ros, self.get, GetState.Request()).current_state.label

    def set(self, transition_id: int) -> bool:
        return _call(self.ros, self.change, ChangeState.Request(transition=Transition(id=transition_id))).success


def test_lifecycle_transitions_through_the_services(weights):
    name, topic = "seg_lc", "/lc/image_raw"
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name=name, context=ros.context, parameter_overrides=[
            Parameter("autostart", value=False), Parameter("weights", value=str(weights)),
            Parameter("image_topic", value=topic), Parameter("qos_reliability", value="reliable")]))
        life = Lifecycle(ros, name)
        labels = ros.collect(Image, "/{}/labels".format(name))
        seen = ros.collect(Image, topic)  # positive control: the frame really went out
        pub = ros.publisher(Image, topic)
        sent = [0]

        def send() -> int:
            sent[0] += 1
            header = _header(4000 + sent[0])
            pub.publish(array_to_image(FRAMES[0], "rgb8", header))
            return stamp_key(header)

        def segmented(key) -> bool:
            return wait_until(lambda: _find(labels, key) is not None, 30.0)

        def idle_frame_is_ignored() -> None:
            """A frame published while inactive reaches the topic but not the node."""
            assert wait_until(lambda: pub.get_subscription_count() == 1, 30.0)  # only the control
            received = node.stats.received
            key = send()
            assert wait_until(lambda: _find(seen, key) is not None, 30.0)
            assert node.stats.received == received and _find(labels, key) is None
            assert not any(t.is_alive() for t in node._workers)

        assert life.state() == "unconfigured" and node.segmenter is None
        assert ros.probe.count_publishers("/{}/labels".format(name)) == 0
        idle_frame_is_ignored()

        assert life.set(Transition.TRANSITION_CONFIGURE) and life.state() == "inactive"
        segmenter = node.segmenter
        assert segmenter is not None and ros.wait_publishers("/{}/labels".format(name))
        assert list(node.get_parameter("class_names").value) == segmenter.class_names
        idle_frame_is_ignored()

        assert life.set(Transition.TRANSITION_ACTIVATE) and life.state() == "active"
        assert ros.wait_matched(pub, 2) and segmented(send())

        assert life.set(Transition.TRANSITION_DEACTIVATE) and life.state() == "inactive"
        assert node.segmenter is segmenter  # kept loaded
        idle_frame_is_ignored()

        assert life.set(Transition.TRANSITION_CLEANUP) and life.state() == "unconfigured"
        assert node.segmenter is None
        assert wait_until(lambda: ros.probe.count_publishers("/{}/labels".format(name)) == 0, 30.0)

        # Again from scratch, then shutdown straight from active.
        assert life.set(Transition.TRANSITION_CONFIGURE) and life.set(Transition.TRANSITION_ACTIVATE)
        assert ros.wait_matched(pub, 2) and segmented(send())
        assert life.set(Transition.TRANSITION_ACTIVE_SHUTDOWN) and life.state() == "finalized"
        assert node.segmenter is None and not any(t.is_alive() for t in node._workers)
        # An impossible transition is refused, the node still answers.
        assert not life.set(Transition.TRANSITION_ACTIVATE) and life.state() == "finalized"


def test_failed_configure_keeps_the_node_up_and_unconfigured(weights, tmp_path):
    with RosHarness() as ros:
        ros.add(SegNode(node_name="seg_lc_bad", context=ros.context, parameter_overrides=[
            Parameter("autostart", value=False), Parameter("weights", value=str(tmp_path / "missing.safetensors"))]))
        unknown_mask = ros.add(SegNode(node_name="seg_lc_mask", context=ros.context, parameter_overrides=[
            Parameter("autostart", value=False), Parameter("weights", value=str(weights)),
            Parameter("mask_classes", value=["Road", "Spaceship"])]))
        for name in ("seg_lc_bad", "seg_lc_mask"):
            life = Lifecycle(ros, name)
            assert not life.set(Transition.TRANSITION_CONFIGURE)
            assert life.state() == "unconfigured"
        assert "Spaceship" in str(unknown_mask._configure_error) and "Sidewalk" in str(unknown_mask._configure_error)
        state = _call(ros, Lifecycle(ros, "seg_lc_bad").get, GetState.Request()).current_state
        assert state.id == State.PRIMARY_STATE_UNCONFIGURED
        assert Lifecycle(ros, "seg_lc_bad").set(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        # Mend the value while unconfigured, configure, then shut down from inactive.
        assert unknown_mask.set_parameters([Parameter("mask_classes", value=["Road"])])[0].successful
        life = Lifecycle(ros, "seg_lc_mask")
        assert life.set(Transition.TRANSITION_CONFIGURE) and life.state() == "inactive"
        assert unknown_mask._mask_lut[names_index(unknown_mask, "Road")] == 255
        assert life.set(Transition.TRANSITION_INACTIVE_SHUTDOWN) and life.state() == "finalized"
        assert unknown_mask.segmenter is None


def test_failed_activate_rolls_back_to_a_clean_inactive_node(weights, monkeypatch):
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name="seg_lc_act", context=ros.context, parameter_overrides=[
            Parameter("autostart", value=False), Parameter("weights", value=str(weights)),
            Parameter("image_topic", value="/act/image_raw")]))
        life = Lifecycle(ros, "seg_lc_act")
        assert life.set(Transition.TRANSITION_CONFIGURE)

        def refused() -> None:
            raise RuntimeError("subscription refused")

        monkeypatch.setattr(node, "_subscribe", refused)
        assert not life.set(Transition.TRANSITION_ACTIVATE)
        # Back to inactive, as a failed activate should be: no workers, no subscription, model kept.
        assert life.state() == "inactive" and node.segmenter is not None
        assert node.sub is None and not any(t.is_alive() for t in node._workers)
        assert "subscription refused" in str(node._activate_error)
        monkeypatch.undo()
        assert life.set(Transition.TRANSITION_ACTIVATE) and life.state() == "active"
        assert ros.probe.count_publishers("/seg_lc_act/labels") == 1
        labels = ros.collect(Image, "/seg_lc_act/labels")
        pub = ros.publisher(Image, "/act/image_raw")
        assert ros.wait_matched(pub)
        pub.publish(array_to_image(FRAMES[0], "rgb8", Header(frame_id="cam")))
        assert wait_until(lambda: len(labels) == 1, 20.0)


def names_index(node, name: str) -> int:
    return list(node.get_parameter("class_names").value).index(name)


def test_confidence_mask_and_compressed_outputs(weights):
    name, topic = "seg_out", "/out/image_raw"
    reference = Segmenter(str(weights), confidence=True)
    ref0 = reference.segment(FRAMES[0])
    names = reference.class_names
    # Two classes the random model does predict, so the mask has both values.
    present = [names[i] for i in np.argsort(-np.bincount(ref0.labels.ravel(), minlength=256))[:2]]
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name=name, context=ros.context, parameter_overrides=[
            Parameter("weights", value=str(weights)), Parameter("image_topic", value=topic),
            Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=5),
            Parameter("mask_classes", value=present), Parameter("jpeg_quality", value=95)]))
        out = {k: ros.collect(Image, "/{}/{}".format(name, k)) for k in ("labels", "confidence", "mask", "color")}
        jpeg = {k: ros.collect(CompressedImage, "/{}/{}/compressed".format(name, k)) for k in ("color", "overlay")}
        for pub_ in (node.pub_confidence, node.pub_mask, node.pub_color, node.pub_color_jpeg, node.pub_overlay_jpeg):
            assert ros.wait_matched(pub_)
        assert node.pub_overlay.get_subscription_count() == 0  # raw overlay not asked for: not computed
        pub = ros.publisher(Image, topic)
        assert ros.wait_matched(pub)
        client = AsyncParameterClient(ros.probe, "/" + name)
        assert client.wait_for_services(timeout_sec=30.0)

        def send(i: int):
            header = _header(5000 + i)
            pub.publish(array_to_image(FRAMES[i], "rgb8", header))
            key = stamp_key(header)
            buckets = list(out.values()) + list(jpeg.values())
            assert wait_until(lambda: all(_find(b, key) is not None for b in buckets), 30.0)
            return {k: _find(b, key) for k, b in list(out.items()) + [(k + "_jpeg", b) for k, b in jpeg.items()]}

        def set_params(**values):
            future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
            assert wait_until(future.done, 30.0)
            return future.result().results

        got = send(0)
        labels = _pixels(got["labels"])
        assert np.array_equal(labels, ref0.labels)
        ids = [names.index(n) for n in present]
        expected_mask = np.where(np.isin(labels, ids), 255, 0).astype(np.uint8)
        assert np.array_equal(_pixels(got["mask"]), expected_mask)  # pixel-exact with ~/labels
        assert 0 < (expected_mask > 0).mean() < 1
        conf = _pixels(got["confidence"]).astype(int)
        assert got["confidence"].encoding == "mono8" and conf.shape == (H, W)
        assert np.abs(conf - confidence_mono8(ref0.confidence)).max() <= 1
        assert conf.min() >= 255 // len(names) - 1  # a max softmax probability is >= 1 / classes
        for key in ("color_jpeg", "overlay_jpeg"):
            msg = got[key]
            assert "jpeg" in msg.format and msg.header.frame_id == "cam"
            decoded = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
            assert decoded.shape == (H, W, 3)
        # The JPEG is ~/color at jpeg_quality (same encoder, same bytes).
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(_pixels(got["color"], 3)[:, :, ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok and bytes(got["color_jpeg"].data) == encoded.tobytes()

        # Runtime: confidence threshold and another class list.
        assert all(r.successful for r in set_params(mask_min_confidence=0.5, mask_classes=present[:1]))
        ref1 = reference.segment(FRAMES[1])
        got = send(1)
        labels = _pixels(got["labels"])
        expected = (labels == ids[0]) & (ref1.confidence >= 0.5)
        assert np.array_equal(_pixels(got["mask"]) > 0, expected)

        # Bad values are refused with a reason; the node keeps its values and keeps running.
        (bad,) = set_params(mask_classes=["Road", "Spaceship"])
        assert not bad.successful and "Spaceship" in bad.reason and "valid names" in bad.reason
        assert "Sidewalk" in bad.reason
        for values in (dict(jpeg_quality=0), dict(mask_min_confidence=1.5), dict(mask_classes=[""]),
                       dict(jpeg_quality="high")):
            (bad,) = set_params(**values)
            assert not bad.successful, values
        assert list(node.get_parameter("mask_classes").value) == present[:1]
        assert node.get_parameter("jpeg_quality").value == 95
        got = send(2)
        assert np.array_equal(_pixels(got["labels"]), reference.segment(FRAMES[2]).labels)


def test_strict_backend_that_cannot_start_exits_2(weights):
    cmd = [sys.executable, "-m", "enet_seg_ros.ros.seg_node", "--ros-args", "-p", "weights:={}".format(weights),
           "-p", "backend:=tensorrt", "-p", "backend_strict:=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ), cwd=str(REPO))
    if proc.returncode == 0 or "ready:" in proc.stderr:
        pytest.skip("TensorRT can start here")
    assert proc.returncode == 2, proc.stderr
    fatal = [line for line in proc.stderr.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and "tensorrt" in fatal[0], proc.stderr
    assert "Traceback" not in proc.stderr
