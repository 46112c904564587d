"""Benchmarks of the ROS 2 side (numbers go to BENCHMARKS.md, never asserted by tests).

    enet-seg bench qos  [--rates 10,30] [--frames 100]
    enet-seg bench node [--weights W] [--seconds 15]

This module drives nodes from outside, as a launch file would (it sits above ``ros/`` in the
layers), so it is the one place besides ``ros/`` that talks rclpy directly: a probe node that
listens, publishes and sets parameters.

``qos``: 640x360 rgb8 frames from an ``image_source`` process to a subscriber in this
process, best effort vs reliable (depth 1): delivered fraction and latency (publish stamp ->
arrival, same host clock).

``node``: bare ``Segmenter.segment`` throughput on 640x360 frames vs a ``seg_node`` process
fed faster than it can segment (reliable QoS, so the node is always busy), with all four
outputs and with only ``~/labels`` published, in interleaved windows (a shared machine's
load drifts, so each node window is compared with the bare window just before it); the
node's own per-frame timing (``segment`` time vs the frame's whole work, from
``/diagnostics``); and the latency the node adds to a frame when it is not saturated.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Sequence

import numpy as np

from ..engine import Segmenter
from ..io.image_conv import array_to_image
from ..ros.qos import image_qos
from ..ros.runner import wait_until
from .common import bench_env, percentile, python_module, spawn_node, stop, street_frames, wait_ready
from .machine import machine_line


class _Probe:
    """An rclpy node in its own context, spun on a thread, that records what arrives on some topics."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.node = Node("bench_probe_{}".format(os.getpid()), context=self.context)
        self.executor.add_node(self.node)
        self.arrivals: Dict[str, List] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._spin, name="bench_probe", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok() and not self._closing:
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - the context shut down under us: stop spinning
            pass

    def listen(self, msg_type, topic: str, reliability: str, depth: int = 1) -> List:
        """Record ``(arrival time, header stamp)`` of each message on ``topic``."""
        bucket = self.arrivals.setdefault(topic, [])
        self.node.create_subscription(
            msg_type, topic, lambda m: bucket.append((time.time(), m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec)),
            image_qos(reliability, depth))
        return bucket

    def collect(self, msg_type, topic: str, reliability: str, depth: int) -> List:
        """Keep every message on ``topic`` (returned list)."""
        bucket: List = []
        self.node.create_subscription(msg_type, topic, bucket.append, image_qos(reliability, depth))
        return bucket

    def publisher(self, msg_type, topic: str, reliability: str, depth: int):
        return self.node.create_publisher(msg_type, topic, image_qos(reliability, depth))

    def close(self) -> None:
        import rclpy

        self._closing = True
        self._thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def bench_qos(rates: Sequence[float], frames: int, size: str = "640x360") -> List[Dict[str, object]]:
    """Delivered fraction and latency of raw frames, best effort vs reliable, per rate."""
    from sensor_msgs.msg import Image

    env = bench_env()
    rows = []
    for rate in rates:
        for reliability in ("best_effort", "reliable"):
            probe = _Probe()
            topic = "/bench_{}_{}/image_raw".format(reliability, int(rate))
            got = probe.listen(Image, topic, reliability)
            src = spawn_node("enet_seg_ros.ros.image_source", {
                "source": "synthetic:{}:30".format(size), "loop": "true", "max_frames": frames, "rate_hz": float(rate),
                "topic": topic, "qos_reliability": reliability, "wait_for_subscribers": 1,
                "publish_camera_info": "false"}, env)
            src.wait(timeout=frames / rate + 120)
            wait_until(lambda: False, 1.0)
            probe.close()
            lat = [1000 * (t - s) for t, s in got]
            rows.append({"rate_hz": rate, "reliability": reliability, "sent": frames, "received": len(got),
                         "delivered_pct": round(100.0 * len(got) / frames, 1),
                         "latency_p50_ms": round(percentile(lat, 50), 2),
                         "latency_p95_ms": round(percentile(lat, 95), 2),
                         "latency_max_ms": round(max(lat), 2) if lat else float("nan")})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _segment_loop(seg, frames: Sequence[np.ndarray], seconds: float) -> List[float]:
    """Per-call times of ``seg.segment`` over ``seconds``."""
    times = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        t0 = time.perf_counter()
        seg.segment(frames[i % len(frames)])
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def bare_worker(weights: str, backend: str) -> int:
    """Serve ``run SECONDS`` lines on stdin with one JSON line of bare ``segment`` timings.

    The bare loop runs in its own process, like the node, so both see the same kind of
    scheduling on a shared machine (threads of one busy process compete differently).
    """
    frames = street_frames(10)
    seg = Segmenter(weights, backend=backend, confidence=True)
    _segment_loop(seg, frames, 2.0)
    print(json.dumps({"ready": True, "backend": seg.backend_name, "model_input": list(seg.input_size)}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "run":
            break
        times = _segment_loop(seg, frames, float(parts[1]))
        print(json.dumps({"fps": len(times) / sum(times), "p50_ms": 1000 * percentile(times, 50), "n": len(times)}),
              flush=True)
    seg.close()
    return 0


class _Bare:
    """The bare-loop process (see :func:`bare_worker`)."""

    def __init__(self, weights: str, backend: str, env) -> None:
        self.proc = python_module(__name__, ["bare-worker", "--weights", weights, "--backend", backend], env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, seconds: float) -> Dict[str, float]:
        self.proc.stdin.write("run {}\n".format(seconds))
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class _SegNodeUnderTest:
    """A ``seg_node`` process, fed and watched by a probe in this process."""

    def __init__(self, weights: str, backend: str, env: Dict[str, str], probe: _Probe) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        self.probe = probe
        self.msgs = [array_to_image(f, "rgb8", Header(frame_id="camera")) for f in street_frames(10)]
        self.labels = probe.listen(Image, "/seg_node/labels", "reliable", 5)
        for name in ("color", "overlay"):
            probe.listen(Image, "/seg_node/" + name, "reliable", 5)
        probe.collect(DiagnosticArray, "/seg_node/class_stats", "reliable", 5)
        self.diags = probe.collect(DiagnosticArray, "/diagnostics", "reliable", 10)
        self.pub = probe.publisher(Image, "/camera/image_raw", "reliable", 1)
        self.proc = spawn_node("enet_seg_ros.ros.seg_node", {"weights": weights, "backend": backend}, env)
        self.client = None
        self._count = 0

    def wait_ready(self) -> None:
        """The node loaded its model, subscribed, and serves its parameters."""
        from rclpy.parameter_client import AsyncParameterClient

        wait_ready(self.proc)
        assert wait_until(lambda: self.pub.get_subscription_count() > 0, 60.0), "seg_node did not subscribe"
        assert wait_until(lambda: self.probe.node.count_publishers("/seg_node/overlay") > 0, 60.0)
        self.client = AsyncParameterClient(self.probe.node, "/seg_node")
        self.client.wait_for_services(timeout_sec=30.0)
        time.sleep(2.0)  # the node's publishers match our subscriptions

    def outputs(self, all_on: bool) -> None:
        """Switch ``~/color``, ``~/overlay`` and ``~/class_stats`` on or off."""
        from rclpy.parameter import Parameter

        future = self.client.set_parameters([Parameter(k, value=all_on) for k in
                                             ("publish_color", "publish_overlay", "publish_stats")])
        wait_until(future.done, 20.0)

    def publish(self) -> float:
        """Publish the next frame stamped now; returns the stamp in seconds."""
        self._count += 1
        msg = self.msgs[self._count % len(self.msgs)]
        now = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        self.pub.publish(msg)
        return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec

    def values(self) -> Dict[str, float]:
        """The numeric values of the node's latest ``segmentation`` status on ``/diagnostics``."""
        for arr in reversed(list(self.diags)):
            for status in arr.status:
                if status.name.endswith("seg_node: segmentation"):
                    return {kv.key: float(kv.value) for kv in status.values if kv.value.replace(".", "", 1).isdigit()}
        return {}

    def saturated_window(self, seconds: float) -> Dict[str, float]:
        """Saturate the node without flooding it: keep two frames ahead of its latest output.

        One frame is being segmented while the next waits in the node's buffer, so the
        worker never idles, and no CPU goes to frames that would only be dropped (a camera
        much faster than the model costs that extra in DDS, whatever the node does).
        """
        labels = self.labels
        self.diags.clear()
        start = time.monotonic()
        n0 = len(labels)
        sent_stamps: List[float] = []
        while time.monotonic() - start < seconds:
            done = labels[-1][1] if len(labels) > n0 else -1.0
            if sum(1 for st in sent_stamps[-4:] if st > done + 1e-6) < 2:
                sent_stamps.append(self.publish())
            else:
                time.sleep(0.001)
        window = [t for t, _ in labels[n0:]]
        time.sleep(1.2)  # one more /diagnostics with this window's numbers
        steady = [t for t in window if t > window[0] + 0.5] if window else []
        fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else float("nan")
        return {"fps": fps, "sent": len(sent_stamps), **self.values()}

    def unsaturated(self, seconds: float = 12.0) -> Dict[str, float]:
        """One frame at a time, so nothing waits in the buffer: the node's own latency and camera-to-labels."""
        self.outputs(True)
        self.diags.clear()
        e2e = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:  # longer than the node's 10 s timing window
            n0 = len(self.labels)
            self.publish()
            if wait_until(lambda: len(self.labels) > n0, 10.0):
                t, stamp = self.labels[n0]
                e2e.append(1000 * (t - stamp))
            time.sleep(0.3)
        time.sleep(1.2)
        values = self.values()
        values.update(e2e_p50_ms=percentile(e2e, 50), e2e_p95_ms=percentile(e2e, 95), frames=len(e2e))
        return values


def _interleaved_rounds(node: _SegNodeUnderTest, bare: _Bare, seconds: float, rounds: int) -> List[Dict]:
    """Bare, node with all outputs, node with labels only: each node window beside the bare one before it."""
    rows = []
    for _ in range(rounds):
        bare_run = bare.run(seconds)
        node.outputs(True)
        all_out = node.saturated_window(seconds)
        node.outputs(False)
        labels_only = node.saturated_window(seconds)
        rows.append({"bare_fps": bare_run["fps"], "bare_p50_ms": bare_run["p50_ms"],
                     "all_outputs": all_out, "labels_only": labels_only,
                     "ratio_all_pct": 100 * all_out["fps"] / bare_run["fps"],
                     "ratio_labels_pct": 100 * labels_only["fps"] / bare_run["fps"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _node_summary(rows: List[Dict], unsat: Dict[str, float]) -> Dict[str, object]:
    """Medians over the rounds and the unsaturated latencies."""
    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    def added_work(which: str) -> float:
        return float(np.median([r[which].get("work_p50_ms", np.nan) - r[which].get("inference_p50_ms", np.nan)
                                for r in rows]))

    return {
        "bare_fps_median": med("bare_fps"),
        "node_vs_bare_all_outputs_pct_median": med("ratio_all_pct"),
        "node_vs_bare_labels_only_pct_median": med("ratio_labels_pct"),
        "node_added_work_ms_all_outputs": added_work("all_outputs"),
        "node_added_work_ms_labels_only": added_work("labels_only"),
        "unsaturated_node_latency_p50_ms": unsat.get("latency_p50_ms"),
        "unsaturated_inference_p50_ms": unsat.get("inference_p50_ms"),
        "unsaturated_added_latency_ms": unsat.get("latency_p50_ms", np.nan) - unsat.get("inference_p50_ms", np.nan),
        "unsaturated_camera_to_labels_p50_ms": unsat["e2e_p50_ms"],
    }


def bench_node(weights: str, backend: str, seconds: float, rounds: int = 3) -> Dict[str, object]:
    """Node vs bare throughput (saturated, interleaved windows) and the node's added latency."""
    env = bench_env()
    bare = _Bare(weights, backend, env)
    probe = _Probe()
    node = _SegNodeUnderTest(weights, backend, env, probe)
    result: Dict[str, object] = {"machine": machine_line(), "backend": bare.info["backend"], "weights": weights,
                                 "model_input": bare.info["model_input"], "frame": [640, 360], "window_s": seconds}
    try:
        node.wait_ready()
        rows = _interleaved_rounds(node, bare, seconds, rounds)
        unsat = node.unsaturated()
    finally:
        stop(node.proc)
        probe.close()
        bare.close()
    result.update(rounds=rows, unsaturated=unsat, summary=_node_summary(rows, unsat))
    return result


if __name__ == "__main__":  # the bare-loop child of bench_node: ``python -m enet_seg_ros.bench.ros_bench bare-worker``
    import argparse

    _parser = argparse.ArgumentParser(description="bare Segmenter loop for enet-seg bench node (internal)")
    _parser.add_argument("what", choices=("bare-worker",))
    _parser.add_argument("--weights", required=True)
    _parser.add_argument("--backend", default="auto")
    _args = _parser.parse_args()
    sys.exit(bare_worker(_args.weights, _args.backend))
