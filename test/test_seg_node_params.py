"""seg_node parameters: descriptors, runtime updates through the real parameter service,
bad start-up parameters and signals (as real subprocesses), and the pure helpers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("onnxruntime")

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from enet_seg_ros.engine import Segmenter  # noqa: E402
from enet_seg_ros.ros.diagnostics import NodeStats, Throttle  # noqa: E402
from enet_seg_ros.io.image_conv import array_to_image  # noqa: E402
from enet_seg_ros.ros.params import ParamSpec, validate_updates  # noqa: E402
from enet_seg_ros.io.scenes import render_scene  # noqa: E402
from enet_seg_ros.ros.seg_node import PARAM_TABLE, PARAMS, SegNode  # noqa: E402
from ros_harness import RosHarness, stamp_key, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAME = render_scene(5, 320, 240)[0]


@pytest.fixture(scope="module")
def weights(small_enet_weights: Path) -> Path:
    return small_enet_weights


def _node_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_node(*ros_args: str, timeout: float = 120.0):
    cmd = [sys.executable, "-m", "enet_seg_ros.ros.seg_node", "--ros-args", *ros_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_node_env(), cwd=str(REPO))


# -- start-up failures: one clear error, exit code != 0 ------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["-p", "weights:=/nonexistent/model.safetensors"], "/nonexistent/model.safetensors: weights file not found"),
    (["-p", "backend:=warp_drive"], "backend must be one of ['auto', 'torch', 'onnxruntime', 'openvino', 'tensorrt'], got 'warp_drive'"),
    (["-p", "overlay_alpha:=2.5"], "overlay_alpha"),
    (["-p", "qos_reliability:=sometimes"], "qos_reliability must be one of"),
    (["-p", "output_resolution:=huge"], "output_resolution must be one of"),
    (["-p", "overlay_alpha:=opaque"], "parameter 'overlay_alpha' has the wrong type"),
    (["-p", "input_size:=[100]"], "input_size: must be [width, height]"),
    (["-p", "mask_classes:=[Road, Spaceship]"], "unknown class name(s) ['Spaceship']; valid names: ['Sky', "),
    (["-p", "image_topic:=/cam/image raw"], "image_topic: not a valid topic name"),
    (["-p", "image_topic:=''"], "image_topic: must name a topic"),
])
def test_bad_startup_parameters_exit_with_one_clear_error(weights, args, expected):
    if not any(a.startswith("weights:=") for a in args):
        args = ["-p", "weights:={}".format(weights)] + args
    proc = _run_node(*args)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("[FATAL]") == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_cleanly(weights, sig):
    cmd = [sys.executable, "-m", "enet_seg_ros.ros.seg_node", "--ros-args", "-p", "weights:={}".format(weights),
           "-r", "__node:=seg_sig"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_node_env(),
                            cwd=str(REPO))
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "ready:" in line or not line:
            break
    assert any("ready:" in line for line in lines), "".join(lines)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=30)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "worker joined" in err


# -- YAML file and runtime updates (in-process node, real parameter service) ---------------
def test_params_file_is_loaded_and_model_facts_are_read_only_parameters(weights):
    import yaml

    config = yaml.safe_load((REPO / "config" / "seg.yaml").read_text())["/**/seg_node"]["ros__parameters"]
    with RosHarness() as ros:
        node = ros.add(SegNode(context=ros.context, namespace="yaml_test", cli_args=[
            "--ros-args", "--params-file", str(REPO / "config" / "seg.yaml"), "-p", "weights:={}".format(weights),
            "-p", "overlay_alpha:=0.25"]))
        for name, value in config.items():
            got = node.get_parameter(name).value
            if name == "weights":
                assert got == str(weights)
            elif name == "overlay_alpha":
                assert got == 0.25  # the command line wins over the file
            else:
                assert list(got) == list(value) if isinstance(value, list) else got == value, name
        card = node.segmenter.card
        assert list(node.get_parameter("class_names").value) == list(card.class_names)
        assert list(node.get_parameter("palette").value) == [c for rgb in card.palette for c in rgb]
        desc = node.describe_parameter("palette")
        assert desc.read_only
        assert node.describe_parameter("weights").read_only
        alpha = node.describe_parameter("overlay_alpha")
        assert not alpha.read_only and alpha.description
        assert (alpha.floating_point_range[0].from_value, alpha.floating_point_range[0].to_value) == (0.0, 1.0)


def _set(client, **values):
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    assert wait_until(future.done, 20.0), "set_parameters timed out"
    return future.result().results


def test_runtime_updates_take_effect_and_invalid_ones_are_rejected(weights):
    reference = Segmenter(str(weights))
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name="seg_rt", context=ros.context, parameter_overrides=[
            Parameter("weights", value=str(weights)), Parameter("image_topic", value="/rt/image_raw"),
            Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=5)]))
        labels = ros.collect(Image, "/seg_rt/labels")
        color = ros.collect(Image, "/seg_rt/color")
        overlay = ros.collect(Image, "/seg_rt/overlay")
        pub = ros.publisher(Image, "/rt/image_raw")
        assert ros.wait_matched(pub) and ros.wait_matched(node.pub_color) and ros.wait_matched(node.pub_overlay)
        client = AsyncParameterClient(ros.probe, "/seg_rt")
        assert client.wait_for_services(timeout_sec=20.0)
        counter = [0]

        def send(*expect) -> int:
            counter[0] += 1
            header = Header(frame_id="cam")
            header.stamp.sec = 2000 + counter[0]
            pub.publish(array_to_image(FRAME, "rgb8", header))
            key = stamp_key(header)
            assert wait_until(lambda: any(stamp_key(m.header) == key for m in labels), 20.0)
            # Colour / overlay follow the labels from the output thread: wait for the expected ones,
            # then a little longer so an output that must be absent would have arrived with them.
            assert wait_until(lambda: all(find(b, key) is not None for b in expect), 20.0)
            time.sleep(0.2)
            return key

        def find(bucket, key):
            return next((m for m in list(bucket) if stamp_key(m.header) == key), None)

        ref = reference.segment(FRAME)
        # overlay_alpha: accepted values change the overlay, invalid ones are refused with a reason.
        (ok,) = _set(client, overlay_alpha=0.2)
        assert ok.successful
        key = send(overlay)
        got = np.frombuffer(find(overlay, key).data, np.uint8).reshape(FRAME.shape)
        assert np.abs(got.astype(int) - ref.overlay(FRAME, 0.2)).max() <= 1
        (bad,) = _set(client, overlay_alpha=1.5)
        assert not bad.successful and bad.reason
        assert node.get_parameter("overlay_alpha").value == 0.2
        # Publish toggles.
        (ok,) = _set(client, publish_color=False)
        assert ok.successful
        key = send(overlay)
        assert find(color, key) is None and find(overlay, key) is not None
        assert all(r.successful for r in _set(client, publish_color=True, publish_overlay=False))
        key = send(color)
        assert find(color, key) is not None and find(overlay, key) is None
        # Wrong types and read-only parameters are refused.
        (bad,) = _set(client, publish_color="yes")
        assert not bad.successful
        for name, value in (("weights", "/tmp/other.safetensors"), ("class_names", ["a"]),
                            ("qos_reliability", "reliable"), ("output_resolution", "model")):
            (bad,) = _set(client, **{name: value})
            assert not bad.successful and bad.reason, name
        (bad,) = _set(client, max_rate_hz=-1.0)
        assert not bad.successful
        # max_rate_hz limits the segmentation rate: 20 frames at 20 Hz, at most ~2 per second through.
        (ok,) = _set(client, max_rate_hz=2.0)
        assert ok.successful
        before = node.stats.processed
        started = time.monotonic()
        for i in range(20):
            header = Header(frame_id="cam")
            header.stamp.sec = 3000 + i
            pub.publish(array_to_image(FRAME, "rgb8", header))
            time.sleep(0.05)
        time.sleep(0.6)
        # At most 2 per second of the time the frames actually took to send (slower when loaded).
        elapsed = time.monotonic() - started
        assert 1 <= node.stats.processed - before <= 2.0 * elapsed + 1
        assert node.stats.skipped >= 10  # held back as asked (not overload: dropped_frames)


def test_lowering_max_rate_releases_the_waiting_frame_and_skips_are_not_drops(weights):
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name="seg_rate", context=ros.context, parameter_overrides=[
            Parameter("weights", value=str(weights)), Parameter("image_topic", value="/rate/image_raw"),
            Parameter("max_rate_hz", value=0.02)]))
        labels = ros.collect(Image, "/seg_rate/labels")
        pub = ros.publisher(Image, "/rate/image_raw")
        assert ros.wait_matched(pub)

        def send(sec: int) -> None:
            header = Header(frame_id="cam")
            header.stamp.sec = sec
            pub.publish(array_to_image(FRAME, "rgb8", header))

        send(1)  # the first frame is due at once; the next one 50 s later
        assert wait_until(lambda: len(labels) == 1, 20.0)
        for sec in range(2, 7):
            send(sec)
            time.sleep(0.05)
        assert wait_until(lambda: node.stats.received == 6, 20.0)
        time.sleep(0.3)
        assert len(labels) == 1 and node.stats.skipped >= 1 and node.stats.dropped == 0  # asked for, not overload
        assert node.set_parameters([Parameter("max_rate_hz", value=0.0)])[0].successful
        # The waiting (newest) frame goes out now, not when the old 50 s deadline passes.
        assert wait_until(lambda: len(labels) == 2, 5.0)
        assert labels[-1].header.stamp.sec == 6


def test_extras_are_computed_only_for_subscribers_unless_forced(weights):
    with RosHarness() as ros:
        node = ros.add(SegNode(node_name="seg_lazy", context=ros.context, parameter_overrides=[
            Parameter("weights", value=str(weights)), Parameter("image_topic", value="/lazy/image_raw")]))
        assert not node._wanted(node.pub_overlay, "publish_overlay")  # nobody listens: not computed
        ros.collect(Image, "/seg_lazy/overlay")
        assert ros.wait_matched(node.pub_overlay)
        assert node._wanted(node.pub_overlay, "publish_overlay") and not node._wanted(node.pub_color, "publish_color")
        node.set_parameters([Parameter("force_outputs", value=True)])
        assert node._wanted(node.pub_color, "publish_color")


# -- pure helpers ----------------------------------------------------------------------------
def test_every_parameter_is_documented_and_validated():
    assert len(PARAM_TABLE) == len(PARAMS)
    for spec in PARAMS:
        assert spec.description, spec.name
        assert spec.problem(spec.default) is None, spec.name
    assert PARAM_TABLE["overlay_alpha"].problem(1.01)
    assert PARAM_TABLE["resize_policy"].problem("squash")
    assert PARAM_TABLE["input_size"].problem([4, 4]) and PARAM_TABLE["input_size"].problem([640, 360]) is None
    reason = validate_updates(PARAM_TABLE, [("overlay_alpha", 0.3), ("weights", "x")])
    assert "weights is read-only" in reason
    assert validate_updates(PARAM_TABLE, [("overlay_alpha", 0.3), ("use_sim_time", True)]) is None
    assert ParamSpec("n", 1, "d", value_range=(0, 5)).problem(7) == "n must be in [0, 5], got 7"


def test_node_stats_rates_percentiles_and_counters():
    stats = NodeStats(window=4, window_s=10.0)
    stats.snapshot(now=100.0)
    for i, latency in enumerate((0.010, 0.020, 0.030, 0.040, 0.050)):  # the window keeps the last 4
        stats.on_received()
        stats.on_processed(latency, inference_s=latency / 2, work_s=latency * 0.75, now=100.0 + 0.1 * i)
    stats.on_received()
    stats.on_dropped()
    stats.on_bad_frame()
    snap = stats.snapshot(now=102.0)
    assert snap["input_rate_hz"] == pytest.approx(3.0) and snap["output_rate_hz"] == pytest.approx(2.5)
    assert snap["latency_max_ms"] == pytest.approx(50.0) and snap["latency_p50_ms"] == pytest.approx(35.0)
    assert snap["inference_p50_ms"] == pytest.approx(17.5) and snap["work_p50_ms"] == pytest.approx(26.25)
    assert (snap["dropped_frames"], snap["bad_frames"], snap["frames_received"]) == (1, 1, 6)
    later = stats.snapshot(now=103.0)
    assert later["input_rate_hz"] == 0.0 and later["latency_p50_ms"] == pytest.approx(35.0)
    # Frames held back by max_rate_hz are counted apart from frames lost to overload.
    stats.on_skipped(3)
    assert stats.snapshot(now=103.5)["skipped_frames"] == 3 and stats.dropped == 1
    # After an idle spell (deactivated), rates count from the restart, not over the idle time.
    stats.restart_rates(now=200.0)
    for i in range(10):
        stats.on_received()
    assert stats.snapshot(now=201.0)["input_rate_hz"] == pytest.approx(10.0)
    # Timings older than window_s leave the window: percentiles describe the node now.
    stale = stats.snapshot(now=111.0)
    assert stale["latency_p50_ms"] != stale["latency_p50_ms"] and stale["frames_processed"] == 5


def test_throttle_is_per_problem_and_counts_suppressed():
    throttle = Throttle(period_s=5.0)
    assert throttle.allow("a", now=0.0) == (True, 0)
    assert throttle.allow("a", now=1.0) == (False, 0)
    assert throttle.allow("b", now=1.5) == (True, 0)
    assert throttle.allow("a", now=2.0) == (False, 0)
    assert throttle.allow("a", now=6.0) == (True, 2)
