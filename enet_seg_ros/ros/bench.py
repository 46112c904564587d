"""Benchmarks of the ROS 2 side (numbers go to BENCHMARKS.md, never asserted by tests).

    python -m enet_seg_ros.ros.bench qos  [--rates 10,30] [--frames 100]
    python -m enet_seg_ros.ros.bench node [--weights W] [--seconds 15]

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

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .qos import image_qos


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    return env


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def machine() -> str:
    """One line describing this machine for the benchmark tables."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "{} ({} CPUs, load {:.1f}), Python {}, {}".format(
        platform.processor() or platform.machine(), os.cpu_count(), load, platform.python_version(),
        time.strftime("%Y-%m-%d"))


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


def _spawn(module: str, params: Dict[str, object], env) -> subprocess.Popen:
    args = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        args += ["-p", "{}:={}".format(k, v)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_ready(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "ready:" in line:
            # Keep reading the child's log so a full pipe never blocks it.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return
        if not line and proc.poll() is not None:
            raise RuntimeError("process exited before it was ready")
    raise RuntimeError("process not ready after {:.0f} s".format(timeout))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_qos(rates: Sequence[float], frames: int, size: str = "640x360") -> List[Dict[str, object]]:
    """Delivered fraction and latency of raw frames, best effort vs reliable, per rate."""
    from sensor_msgs.msg import Image

    from .runner import wait_until

    env = _env()
    rows = []
    for rate in rates:
        for reliability in ("best_effort", "reliable"):
            probe = _Probe()
            topic = "/bench_{}_{}/image_raw".format(reliability, int(rate))
            got = probe.listen(Image, topic, reliability)
            src = _spawn("enet_seg_ros.ros.image_source", {
                "source": "synthetic:{}:30".format(size), "loop": "true", "max_frames": frames, "rate_hz": float(rate),
                "topic": topic, "qos_reliability": reliability, "wait_for_subscribers": 1,
                "publish_camera_info": "false"}, env)
            src.wait(timeout=frames / rate + 120)
            wait_until(lambda: False, 1.0)
            probe.close()
            lat = [1000 * (t - s) for t, s in got]
            rows.append({"rate_hz": rate, "reliability": reliability, "sent": frames, "received": len(got),
                         "delivered_pct": round(100.0 * len(got) / frames, 1),
                         "latency_p50_ms": round(_pct(lat, 50), 2),
                         "latency_p95_ms": round(_pct(lat, 95), 2),
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
    from ..engine import Segmenter
    from ..io.scenes import render_scene

    frames = [render_scene(i, 640, 360)[0] for i in range(10)]
    seg = Segmenter(weights, backend=backend, confidence=True)
    _segment_loop(seg, frames, 2.0)
    print(json.dumps({"ready": True, "backend": seg.backend_name, "model_input": list(seg.input_size)}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "run":
            break
        times = _segment_loop(seg, frames, float(parts[1]))
        print(json.dumps({"fps": len(times) / sum(times), "p50_ms": 1000 * _pct(times, 50), "n": len(times)}),
              flush=True)
    seg.close()
    return 0


class _Bare:
    """The bare-loop process (see :func:`bare_worker`)."""

    def __init__(self, weights: str, backend: str, env) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "enet_seg_ros.ros.bench", "bare-worker", "--weights",
                                      weights, "--backend", backend], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self, seconds: float) -> Dict[str, float]:
        self.proc.stdin.write("run {}\n".format(seconds))
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def bench_node(weights: str, backend: str, seconds: float, rounds: int = 3) -> Dict[str, object]:
    """Node vs bare throughput (saturated, interleaved windows) and the node's added latency."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ..io.image_conv import array_to_image
    from ..io.scenes import render_scene
    from .runner import wait_until

    env = _env()
    frames = [render_scene(i, 640, 360)[0] for i in range(10)]
    msgs = [array_to_image(f, "rgb8", Header(frame_id="camera")) for f in frames]
    bare_proc = _Bare(weights, backend, env)
    probe = _Probe()
    labels = probe.listen(Image, "/seg_node/labels", "reliable", 5)
    for name in ("color", "overlay"):
        probe.listen(Image, "/seg_node/" + name, "reliable", 5)
    probe.collect(DiagnosticArray, "/seg_node/class_stats", "reliable", 5)
    diags = probe.collect(DiagnosticArray, "/diagnostics", "reliable", 10)
    pub = probe.publisher(Image, "/camera/image_raw", "reliable", 1)
    node = _spawn("enet_seg_ros.ros.seg_node", {"weights": weights, "backend": backend}, env)
    counter = [0]

    def publish() -> float:
        """Publish the next frame stamped now; returns the stamp in seconds."""
        counter[0] += 1
        msg = msgs[counter[0] % len(msgs)]
        now = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        pub.publish(msg)
        return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec

    def node_values() -> Dict[str, float]:
        for arr in reversed(list(diags)):
            for status in arr.status:
                if status.name.endswith("seg_node: segmentation"):
                    return {kv.key: float(kv.value) for kv in status.values if kv.value.replace(".", "", 1).isdigit()}
        return {}

    def node_window() -> Dict[str, float]:
        """Saturate the node without flooding it: keep two frames ahead of its latest output.

        One frame is being segmented while the next waits in the node's buffer, so the
        worker never idles, and no CPU goes to frames that would only be dropped (a camera
        much faster than the model costs that extra in DDS, whatever the node does).
        """
        diags.clear()
        start = time.monotonic()
        n0 = len(labels)
        sent_stamps: List[float] = []
        while time.monotonic() - start < seconds:
            done = labels[-1][1] if len(labels) > n0 else -1.0
            if sum(1 for st in sent_stamps[-4:] if st > done + 1e-6) < 2:
                sent_stamps.append(publish())
            else:
                time.sleep(0.001)
        window = [t for t, _ in labels[n0:]]
        time.sleep(1.2)  # one more /diagnostics with this window's numbers
        steady = [t for t in window if t > window[0] + 0.5] if window else []
        fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else float("nan")
        return {"fps": fps, "sent": len(sent_stamps), **node_values()}

    result: Dict[str, object] = {"machine": machine(), "backend": bare_proc.info["backend"], "weights": weights,
                                 "model_input": bare_proc.info["model_input"], "frame": [640, 360],
                                 "window_s": seconds}
    rows = []
    try:
        _wait_ready(node)
        assert wait_until(lambda: pub.get_subscription_count() > 0, 60.0), "seg_node did not subscribe"
        assert wait_until(lambda: probe.node.count_publishers("/seg_node/overlay") > 0, 60.0)
        client = AsyncParameterClient(probe.node, "/seg_node")
        client.wait_for_services(timeout_sec=30.0)

        def outputs(all_on: bool) -> None:
            future = client.set_parameters([Parameter(k, value=all_on) for k in
                                            ("publish_color", "publish_overlay", "publish_stats")])
            wait_until(future.done, 20.0)

        time.sleep(2.0)  # the node's publishers match our subscriptions
        for r in range(rounds):
            bare_run = bare_proc.run(seconds)
            bare = bare_run["fps"]
            outputs(True)
            all_out = node_window()
            outputs(False)
            labels_only = node_window()
            rows.append({"bare_fps": bare, "bare_p50_ms": bare_run["p50_ms"],
                         "all_outputs": all_out, "labels_only": labels_only,
                         "ratio_all_pct": 100 * all_out["fps"] / bare,
                         "ratio_labels_pct": 100 * labels_only["fps"] / bare})
            print(json.dumps(rows[-1]), flush=True)
        # Unsaturated: one frame at a time, so nothing waits in the buffer.
        outputs(True)
        diags.clear()
        e2e = []
        start = time.monotonic()
        while time.monotonic() - start < 12.0:  # longer than the node's 10 s timing window
            n0 = len(labels)
            publish()
            if wait_until(lambda: len(labels) > n0, 10.0):
                t, stamp = labels[n0]
                e2e.append(1000 * (t - stamp))
            time.sleep(0.3)
        time.sleep(1.2)
        unsat = node_values()
        unsat.update(e2e_p50_ms=_pct(e2e, 50), e2e_p95_ms=_pct(e2e, 95), frames=len(e2e))
    finally:
        _stop(node)
        probe.close()
        bare_proc.close()
    result["rounds"] = rows
    result["unsaturated"] = unsat
    med = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    result["summary"] = {
        "bare_fps_median": med("bare_fps"),
        "node_vs_bare_all_outputs_pct_median": med("ratio_all_pct"),
        "node_vs_bare_labels_only_pct_median": med("ratio_labels_pct"),
        "node_added_work_ms_all_outputs": float(np.median([r["all_outputs"].get("work_p50_ms", np.nan)
                                                           - r["all_outputs"].get("inference_p50_ms", np.nan)
                                                           for r in rows])),
        "node_added_work_ms_labels_only": float(np.median([r["labels_only"].get("work_p50_ms", np.nan)
                                                           - r["labels_only"].get("inference_p50_ms", np.nan)
                                                           for r in rows])),
        "unsaturated_node_latency_p50_ms": unsat.get("latency_p50_ms"),
        "unsaturated_inference_p50_ms": unsat.get("inference_p50_ms"),
        "unsaturated_added_latency_ms": unsat.get("latency_p50_ms", np.nan) - unsat.get("inference_p50_ms", np.nan),
        "unsaturated_camera_to_labels_p50_ms": unsat["e2e_p50_ms"],
    }
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enet_seg_ros.ros.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("qos", help="best effort vs reliable transport of raw frames")
    q.add_argument("--rates", default="10", help="comma-separated publish rates in Hz")
    q.add_argument("--frames", type=int, default=100)
    q.add_argument("--size", default="640x360")
    n = sub.add_parser("node", help="seg_node vs bare Segmenter throughput and added latency")
    n.add_argument("--weights", default="", help="weights (default: the shipped model)")
    n.add_argument("--backend", default="auto")
    n.add_argument("--seconds", type=float, default=6.0, help="length of each measurement window")
    n.add_argument("--rounds", type=int, default=3, help="interleaved bare / node rounds")
    for p in (q, n):
        p.add_argument("--json", default="", help="also write the results to this file")
    w = sub.add_parser("bare-worker", help=argparse.SUPPRESS)
    w.add_argument("--weights", required=True)
    w.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    if args.what == "bare-worker":
        return bare_worker(args.weights, args.backend)
    if args.what == "qos":
        result: object = {"machine": machine(), "rows": bench_qos([float(r) for r in args.rates.split(",")],
                                                                  args.frames, args.size)}
    else:
        from ..weights import resolve_weights

        result = bench_node(str(resolve_weights(args.weights)), args.backend, args.seconds, args.rounds)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
