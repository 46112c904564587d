"""eval_node with real rclpy: pairing, counting, reports, signals, and the live chain vs eval-bag.

The live chain replays a generated bag with the project's image_source (camera frames and the
ground-truth topic, recorded stamps, reliable QoS, 4 Hz) through seg_node and eval_node in one
process; the metrics eval_node writes must equal ``enet-seg eval-bag`` on the same bag.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bag_fixtures import START_NS, assert_same_metrics, make_camvid_folder, make_weights, read_json, run_cli

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "enet_camvid_tiny.safetensors")


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _params(**values):
    return [Parameter(k, value=v) for k, v in values.items()]


def _spin_until(executor, done, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if done():
            return True
        executor.spin_once(timeout_sec=0.05)
    return done()


def test_live_chain_equals_eval_bag(weights, tmp_path, context):
    from enet_seg_ros.engine import Segmenter
    from enet_seg_ros.ros.eval_node import EvalNode
    from enet_seg_ros.ros.image_source import ImageSource
    from enet_seg_ros.ros.seg_node import SegNode

    images, labels, _ = make_camvid_folder(tmp_path / "data", n=8)
    bag = tmp_path / "bag"
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels, "--out", bag,
                    "--start-ns", START_NS, "--no-progress"]) == 0
    offline = tmp_path / "offline"
    assert run_cli(["eval-bag", bag, "--weights", weights, "--backend", "torch", "--threads", 1, "--out", offline,
                    "--no-progress"]) == 0

    reliable = dict(qos_reliability="reliable", qos_depth=10)
    live = tmp_path / "live"
    evaluator = EvalNode(context=context, parameter_overrides=_params(
        weights=str(weights), output_dir=str(live), exit_after_frames=8, **reliable))
    seg = SegNode(segmenter=Segmenter(str(weights), backend="torch", threads=1), context=context,
                  parameter_overrides=_params(**reliable))
    replay = dict(reliable, source=str(bag), rate_hz=4.0, wait_for_subscribers=1, wait_timeout_s=20.0)
    camera = ImageSource(context=context, parameter_overrides=_params(
        bag_topic="/camera/image_raw", topic="/camera/image_raw", publish_camera_info=False, **replay))
    gt = ImageSource(context=context, cli_args=["--ros-args", "-r", "__node:=gt_source"],
                      parameter_overrides=_params(bag_topic="/camera/labels_gt", topic="/camera/labels_gt",
                                                  publish_camera_info=False, **replay))
    nodes = [evaluator, seg, camera, gt]
    executor = SingleThreadedExecutor(context=context)
    for node in nodes:
        executor.add_node(node)
    try:
        camera.start()
        gt.start()
        finished = _spin_until(executor, evaluator.finished.is_set, 90.0)
        assert finished, "eval_node scored {} of 8 frames (seg_node dropped {})".format(
            evaluator.stats.scored, seg.stats.dropped if hasattr(seg.stats, "dropped") else "?")
        report = evaluator.stop()
    finally:
        for node in (camera, gt, seg):
            node.stop()
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
    assert report == live / "report.md"
    live_metrics, offline_metrics = read_json(live / "metrics.json"), read_json(offline / "metrics.json")
    assert live_metrics["frames"] == offline_metrics["frames"] == 8
    assert live_metrics["frames_without_gt"] == 0 and live_metrics["gt_without_frame"] == 0
    assert live_metrics["model"] == offline_metrics["model"]
    assert live_metrics["backend"] == offline_metrics["backend"] == seg.backend_name  # from /diagnostics
    assert_same_metrics(live_metrics, offline_metrics, keys=("miou", "pixel_accuracy", "mean_class_accuracy",
                                                             "pixels"))
    assert live_metrics["class_accuracy"] == offline_metrics["class_accuracy"]


def test_stamp_pairer_resolves_every_item_once():
    from enet_seg_ros.evaluate.pairing import GT, INSTANCES, MAIN, StampPairer

    p = StampPairer(with_instances=True, capacity=2)
    assert p.add(GT, 1, "g1") == [] and p.add(MAIN, 1, "m1") == []
    done = p.add(INSTANCES, 1, "i1")
    assert [(r.stamp_ns, r.kind, r.main, r.gt, r.instances) for r in done] == [(1, "paired", "m1", "g1", "i1")]
    assert p.add(MAIN, 2, "m2") == [] and p.add(GT, 2, "g2") == []  # waits for instances
    assert p.add(MAIN, 2, "m2 again") == [] and p.duplicate_count == 1
    assert p.add(MAIN, 3, "m3") == []
    evicted = p.add(GT, 4, "g4")  # 3 pending > capacity 2: the oldest (2) is resolved as it stands
    assert [(r.stamp_ns, r.kind, r.main, r.instances) for r in evicted] == [(2, "paired", "m2", None)]
    rest = p.flush()
    assert [(r.stamp_ns, r.kind) for r in rest] == [(3, "no_gt"), (4, "no_frame")] and len(p) == 0


def _probe(context, node, labels_topic: str):
    """A publisher node for labels / ground truth and a ~/miou listener, matched with ``node``."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32

    from enet_seg_ros.ros.qos import image_qos

    pub = rclpy.create_node("test_publisher", context=context)
    qos = image_qos("reliable", 50)
    p_labels = pub.create_publisher(Image, labels_topic, qos)
    p_gt = pub.create_publisher(Image, "/camera/labels_gt", qos)
    mious = []
    pub.create_subscription(Float32, "/eval_node/miou", lambda m: mious.append(m.data), 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(pub)
    assert _spin_until(executor, lambda: p_labels.get_subscription_count() and p_gt.get_subscription_count() and
                       pub.count_publishers("/eval_node/miou"), 10.0)
    return pub, p_labels, p_gt, mious, executor


def test_eval_node_pairs_counts_and_publishes_miou(weights, tmp_path, context):
    """Hand-published labels / ground truth: out-of-order arrival, missing partners, bad frames."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from enet_seg_ros.evaluate import make_evaluator
    from enet_seg_ros.ros.eval_node import EvalNode
    from enet_seg_ros.io.image_conv import array_to_image

    out = tmp_path / "out"
    node = EvalNode(context=context, parameter_overrides=_params(
        weights=str(weights), output_dir=str(out), qos_reliability="reliable", max_pending=4))
    pub, p_labels, p_gt, mious, executor = _probe(context, node, "/seg_node/labels")

    rng = np.random.default_rng(3)
    expected = make_evaluator("camvid")

    def header(i):
        return Header(stamp=Time(sec=50, nanosec=i), frame_id="camera")

    for i in range(6):
        pred = rng.integers(0, 11, (12, 16)).astype(np.uint8)
        gt = rng.integers(0, 12, (12, 16)).astype(np.uint8)
        pred[0, 0] = 255  # "not seen" by the network: a miss, as offline
        expected.add(np.where(pred == 255, 11, pred), gt)
        if i % 2:  # ground truth first for odd frames
            p_gt.publish(array_to_image(gt, "mono8", header(i)))
            p_labels.publish(array_to_image(pred, "mono8", header(i)))
        else:
            p_labels.publish(array_to_image(pred, "mono8", header(i)))
            p_gt.publish(array_to_image(gt, "mono8", header(i)))
    p_labels.publish(array_to_image(np.zeros((12, 16), np.uint8), "mono8", header(100)))  # never gets GT
    p_gt.publish(array_to_image(np.zeros((12, 16), np.uint8), "mono8", header(101)))  # never gets labels
    p_labels.publish(array_to_image(np.zeros((12, 16), np.uint8), "mono8", header(102)))  # GT of another size
    p_gt.publish(array_to_image(np.zeros((6, 16), np.uint8), "mono8", header(102)))
    bad = np.zeros((12, 16), np.uint8)
    bad[3, 3] = 42
    p_labels.publish(array_to_image(np.zeros((12, 16), np.uint8), "mono8", header(103)))  # unknown GT id
    p_gt.publish(array_to_image(bad, "mono8", header(103)))
    p_labels.publish(array_to_image(np.zeros((12, 16, 3), np.uint8), "rgb8", header(104)))  # not mono8
    p_gt.publish(array_to_image(np.zeros((12, 16), np.uint8), "mono8", header(104)))
    assert _spin_until(executor, lambda: node.stats.skipped_count == 3 and len(mious) == 6, 15.0), \
        (node.stats.skipped, mious)
    node.stop()
    executor.remove_node(node)
    executor.remove_node(pub)
    node.destroy_node()
    pub.destroy_node()

    metrics = read_json(out / "metrics.json")
    assert_same_metrics(metrics, expected.result())
    assert metrics["frames"] == 6 and metrics["frames_without_gt"] == 1 and metrics["gt_without_frame"] == 1
    assert metrics["frames_skipped"] == 3
    reasons = " | ".join(s["reason"] for s in metrics["skipped"])
    assert "ground truth is 16x6 but the frame is 16x12" in reasons and "resize_gt" in reasons
    assert "unknown label ids [42]" in reasons and "stamp 50.000000103" in reasons
    assert "encoding 'rgb8', expected mono8" in reasons
    assert abs(mious[-1] - metrics["miou"]) < 1e-6  # Float32
    # Stamps from 1970 are not live: no latency; no seg_node on /diagnostics: no backend.
    assert metrics["latency_ms"]["p50"] is None and metrics["backend"] is None


def test_eval_node_reports_seg_node_backend_and_live_latency(weights, tmp_path, context):
    """Live stamps give a camera-to-labels latency; the backend comes from seg_node's /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from std_msgs.msg import Header

    from enet_seg_ros.ros.eval_node import EvalNode
    from enet_seg_ros.io.image_conv import array_to_image
    from enet_seg_ros.ros.qos import diagnostics_qos

    out = tmp_path / "out"
    node = EvalNode(context=context, parameter_overrides=_params(
        weights=str(weights), output_dir=str(out), qos_reliability="reliable", labels_topic="/front/seg/labels"))
    pub, p_labels, p_gt, mious, executor = _probe(context, node, "/front/seg/labels")
    p_diag = pub.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
    assert _spin_until(executor, p_diag.get_subscription_count, 10.0)

    def status(name, backend):
        return DiagnosticStatus(name=name, hardware_id=backend, values=[KeyValue(key="backend", value=backend)])

    # Another camera's seg_node first, then the one whose labels are evaluated.
    p_diag.publish(DiagnosticArray(status=[status("/rear/seg: segmentation", "torch")]))
    p_diag.publish(DiagnosticArray(status=[status("/front/seg: segmentation", "onnxruntime"),
                                           status("/front/camera: driver", "v4l2")]))
    delay_s = 0.05
    for i in range(4):
        stamp = pub.get_clock().now().to_msg()
        time.sleep(delay_s)  # the labels leave "seg_node" at least delay_s after the camera stamp
        labels = np.full((12, 16), 3, np.uint8)
        p_labels.publish(array_to_image(labels, "mono8", Header(stamp=stamp, frame_id="camera")))
        p_gt.publish(array_to_image(labels, "mono8", Header(stamp=stamp, frame_id="camera")))
    assert _spin_until(executor, lambda: len(mious) == 4 and node.backend == "onnxruntime", 15.0), \
        (mious, node.backend)
    node.stop()
    for n in (node, pub):
        executor.remove_node(n)
        n.destroy_node()

    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 4 and metrics["backend"] == "onnxruntime"
    latency = metrics["latency_ms"]
    assert delay_s * 1000 <= latency["p50"] <= latency["max"] < 10_000
    assert "onnxruntime" in (out / "report.md").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_eval_node_process_writes_report_on_signal(weights, tmp_path, sig):
    out = tmp_path / "report"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "enet_seg_ros.ros.eval_node", "--ros-args",
                             "-p", "weights:={}".format(weights), "-p", "output_dir:={}".format(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "running; the report is written on exit" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "running" in line, "eval_node did not start spinning"
        time.sleep(0.5)  # the console prints a log line before its /rosout copy is published
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "Failed to publish" not in output, output
    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 0 and metrics["miou"] is None
    assert (out / "report.md").is_file()


def test_eval_node_bad_weights_is_a_startup_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "enet_seg_ros.ros.eval_node", "--ros-args",
                           "-p", "weights:={}".format(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 2
    assert "missing.safetensors: weights file not found" in proc.stdout + proc.stderr


def test_bag_eval_launch_file_is_valid():
    path = REPO / "launch" / "bag_eval.launch.py"
    tree = ast.parse(path.read_text(), str(path))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError:
        pytest.skip("launch / launch_ros are not installed here (ROS 2 machines have them)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bag_eval_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description() is not None
