"""``make demo``: camera frames -> seg_node -> overlays, measured end to end over real DDS.

Runs ``seg_node`` and ``image_source`` as separate processes (like ``ros2 launch`` would),
feeds N frames (generated street scenes by default, or ``--source`` images / video / bag),
receives the overlays in this process, and prints the measured output rate and latency.
A few overlay PNGs and a ``summary.json`` are written to ``--out``.

    python -m enet_seg_ros.ros.demo --out out/demo
    python -m enet_seg_ros.ros.demo --source /data/drive.mp4 --frames 200 --rate 15

The demo talks on its own DDS domain, restricted to this host, unless ``ROS_DOMAIN_ID`` /
``ROS_AUTOMATIC_DISCOVERY_RANGE`` are set, so it never mixes with a running robot; with
Fast DDS it uses ``config/fastdds_shm.xml`` unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is set.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

# Fast DDS profile with a shared-memory segment that holds whole camera frames.
FASTDDS_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm.xml"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m enet_seg_ros.ros.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="", help="image folder, video or ROS 2 bag (default: synthetic frames)")
    parser.add_argument("--out", default="out/demo", help="folder for overlay PNGs, logs and summary.json")
    parser.add_argument("--frames", type=int, default=60, help="frames to publish (default 60)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz (default 10)")
    parser.add_argument("--size", default="640x360", help="synthetic frame size WxH (default 640x360)")
    parser.add_argument("--weights", default="", help="weights file (default: the shipped model)")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime, openvino or tensorrt")
    parser.add_argument("--precision", default="", help="seg_node precision (fp32, fp16, bf16, int8; default: the backend's)")
    parser.add_argument("--pngs", type=int, default=4, help="overlay PNGs to write (default 4)")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rate <= 0:
        parser.error("--frames must be >= 1 and --rate > 0")
    return args


class _LogPump(threading.Thread):
    """Copies a child's stderr to a log file and remembers the lines (for 'ready' and errors)."""

    def __init__(self, proc: subprocess.Popen, path: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.path = proc, path
        self.lines: List[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with open(self.path, "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip())
                if "ready:" in line:
                    self.ready.set()


def _spawn(module: str, ros_args: List[str], log: Path, env) -> "tuple[subprocess.Popen, _LogPump]":
    cmd = [sys.executable, "-m", module, "--ros-args"] + ros_args
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    pump = _LogPump(proc, log)
    pump.start()
    return proc, pump


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> Optional[int]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


def demo_environment() -> Dict[str, str]:
    """Environment for the demo's processes (also applied to this one).

    Its own DDS domain on this host only, and, with Fast DDS, a shared-memory segment big
    enough for whole 640x360 rgb8 frames (the default 512 KB is not: such frames then go
    through UDP loopback in fragments; see BENCHMARKS.md). Variables already set win.
    """
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp" and FASTDDS_PROFILE.is_file():
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    env["PYTHONUNBUFFERED"] = "1"
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        if key in env:
            os.environ[key] = env[key]
    return env


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    from ..weights import WeightsError, read_card, resolve_weights

    try:
        weights = resolve_weights(args.weights)
        card = read_card(weights)
    except WeightsError as exc:
        print("demo: error: {}\n  The default model models/enet_camvid.safetensors ships with the package; if it is "
              "missing, train it (enet-seg train ...) or pass --weights PATH.".format(exc), file=sys.stderr)
        return 2
    source = args.source or "synthetic:{}:{}".format(args.size, min(args.frames, 100))
    if args.source and not Path(args.source).exists():
        print("demo: error: --source {}: no such file or folder".format(args.source), file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = demo_environment()
    print("demo: model {} ({} {}x{}), source {}, {} frames at {:g} Hz, ROS_DOMAIN_ID={}".format(
        weights, card.arch, card.input_size[0], card.input_size[1], source, args.frames, args.rate,
        env["ROS_DOMAIN_ID"]), flush=True)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from .qos import image_qos
    from .runner import wait_until

    t_start = time.monotonic()
    seg, seg_log = _spawn("enet_seg_ros.ros.seg_node", [
        "-p", "weights:={}".format(weights), "-p", "backend:={}".format(args.backend),
        *(["-p", "precision:={}".format(args.precision)] if args.precision else [])], out / "seg_node.log", env)
    src = None
    rclpy.init(args=["demo"])
    node = Node("demo_viewer")
    received = []  # (arrival wall time, stamp seconds, overlay message or None)
    diagnostics = []
    keep = set(np.linspace(0, args.frames - 1, num=max(1, min(args.pngs, args.frames))).round().astype(int).tolist())

    def on_overlay(msg) -> None:
        # Only the overlays that become PNGs are kept (memory stays flat for long runs).
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        received.append((time.time(), stamp, msg if len(received) in keep else None))

    node.create_subscription(Image, "/seg_node/overlay", on_overlay, image_qos("reliable", 5))
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.append(m), 10)
    spinning = threading.Event()
    spinning.set()

    def spin():
        while spinning.is_set() and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    code = 0
    try:
        while not seg_log.ready.wait(0.2):
            if seg.poll() is not None or time.monotonic() - t_start > args.timeout:
                print("demo: error: seg_node did not start:\n  " + "\n  ".join(seg_log.lines[-5:]), file=sys.stderr)
                return 2
        print("demo: seg_node ready after {:.1f} s".format(time.monotonic() - t_start), flush=True)
        if not wait_until(lambda: node.count_publishers("/seg_node/overlay") > 0, 60.0):
            print("demo: error: DDS discovery failed (no /seg_node/overlay publisher seen)", file=sys.stderr)
            return 2
        src, src_log = _spawn("enet_seg_ros.ros.image_source", [
            "-p", "source:={}".format(source), "-p", "rate_hz:={}".format(float(args.rate)),
            "-p", "max_frames:={}".format(args.frames), "-p", "loop:=true", "-p", "wait_for_subscribers:=1",
            "-p", "wait_timeout_s:=60.0"], out / "image_source.log", env)
        deadline = time.monotonic() + args.timeout
        while src.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if src.poll() is None or src.returncode != 0:
            print("demo: error: image_source failed:\n  " + "\n  ".join(src_log.lines[-5:]), file=sys.stderr)
            code = 2
        # Let the last frames through, then read the node's final diagnostics.
        wait_until(lambda: bool(received) and time.time() - received[-1][0] > 1.5, 10.0)
        time.sleep(1.2)
    finally:
        spinning.clear()
        spinner.join(timeout=5.0)
        seg_rc = _stop(seg)
        if src is not None:
            _stop(src)
        node.destroy_node()
        rclpy.try_shutdown()
    if seg_rc != 0:
        print("demo: warning: seg_node exited with code {} (see {})".format(seg_rc, out / "seg_node.log"),
              file=sys.stderr)
    return _report(args, out, source, received, diagnostics, code)


def _report(args, out: Path, source: str, received, diagnostics, code: int) -> int:
    import cv2

    from ..io.image_conv import image_to_rgb

    if len(received) < 2:
        print("demo: error: {} overlays received; see {}/seg_node.log".format(len(received), out), file=sys.stderr)
        return 2
    arrivals = np.array([r[0] for r in received])
    latency_ms = (arrivals - np.array([r[1] for r in received])) * 1000.0
    fps = (len(received) - 1) / max(arrivals[-1] - arrivals[0], 1e-9)
    node_values = {}
    for arr in diagnostics:
        for status in arr.status:
            if status.name.endswith("seg_node: segmentation"):
                node_values = {kv.key: kv.value for kv in status.values}
    written = []
    for i, (_, _, msg) in enumerate(received):
        if msg is not None:
            path = out / "overlay_{:03d}.png".format(i)
            cv2.imwrite(str(path), image_to_rgb(msg)[:, :, ::-1])
            written.append(str(path))
    summary = {
        "source": source, "frames_published": args.frames, "overlays_received": len(received),
        "output_fps": round(fps, 2), "camera_rate_hz": args.rate,
        "latency_ms_camera_to_overlay": {"p50": round(float(np.percentile(latency_ms, 50)), 1),
                                         "p95": round(float(np.percentile(latency_ms, 95)), 1),
                                         "max": round(float(latency_ms.max()), 1)},
        "seg_node": node_values, "overlays": written,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("demo: {} of {} frames segmented, {:.1f} fps out (camera {:g} Hz); latency camera->overlay p50 {:.0f} ms, "
          "p95 {:.0f} ms; node: backend {}, dropped {}, latency p50 {} ms".format(
              len(received), args.frames, fps, args.rate, summary["latency_ms_camera_to_overlay"]["p50"],
              summary["latency_ms_camera_to_overlay"]["p95"], node_values.get("backend", "?"),
              node_values.get("dropped_frames", "?"), node_values.get("latency_p50_ms", "?")))
    print("demo: wrote {} overlay PNGs and summary.json to {}".format(len(written), out))
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
