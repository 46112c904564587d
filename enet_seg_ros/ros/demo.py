"""``make demo``: a real street sequence -> seg_node -> overlays and live mIoU, over real DDS.

By default replays the CamVid sequence shipped with the package (``demo/camvid_val_seq``, a
bag with frames and ground truth): ``image_source`` (frames) -> ``seg_node`` -> ``eval_node``
(against a second ``image_source`` replaying the ground truth), each its own process as
``ros2 launch`` would run them. This process watches the topics, prints the output rate,
the latency (a frame's arrival here to its overlay's arrival here) and the live mIoU, and
writes overlay PNGs, ``contact_sheet.png`` (input | overlay | ground truth),
``summary.json`` and eval_node's report (``eval/``) to ``--out``.

    python -m enet_seg_ros.ros.demo --out out/demo
    python -m enet_seg_ros.ros.demo --source synthetic --frames 60     # generated street scenes
    python -m enet_seg_ros.ros.demo --source /data/drive.mp4 --frames 200 --rate 15

A bag written by ``enet-seg make-bag`` is scored too (its ``/camera/labels_gt``). The demo
talks on its own DDS domain, restricted to this host, unless ``ROS_DOMAIN_ID`` /
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.registry import backend_choices
from .runner import wait_until

ROOT = Path(__file__).resolve().parents[2]
# Fast DDS profile with a shared-memory segment that holds whole camera frames.
FASTDDS_PROFILE = ROOT / "config" / "fastdds_shm.xml"
DEMO_BAG = "camvid_val_seq"
CAMERA_TOPIC = "/camera/image_raw"
GT_TOPIC = "/camera/labels_gt"
SYNTHETIC_FRAMES = 60


def demo_bag_path() -> Path:
    """The shipped demo bag: the ROS share directory (colcon install), else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("enet_seg_ros")) / "demo" / DEMO_BAG
        if installed.is_dir():
            return installed
    except Exception:  # noqa: BLE001 - not installed with ament (pip / source tree)
        pass
    return ROOT / "demo" / DEMO_BAG


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m enet_seg_ros.ros.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="", help="demo (default: the shipped CamVid bag), synthetic[:WxH], "
                        "or an image folder, video or ROS 2 bag")
    parser.add_argument("--out", default="out/demo", help="folder for PNGs, logs, the eval report and summary.json")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames to publish (default: the whole bag once; 60 for other sources)")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz (default 10)")
    parser.add_argument("--size", default="640x360", help="synthetic frame size WxH (default 640x360)")
    parser.add_argument("--weights", default="", help="weights file (default: the shipped model)")
    parser.add_argument("--backend", default="auto", choices=backend_choices(), help="seg_node backend")
    parser.add_argument("--precision", default="", help="seg_node precision (fp32, fp16, bf16, int8; default: the backend's)")
    parser.add_argument("--pngs", type=int, default=4, help="overlay PNGs and contact-sheet rows (default 4)")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if (args.frames is not None and args.frames < 1) or args.rate <= 0:
        parser.error("--frames must be >= 1 and --rate > 0")
    return args


# -- what to play ------------------------------------------------------------------------
@dataclass
class Plan:
    """The source as the demo plays it.

    Attributes:
        name: ``demo``, ``synthetic:WxH:N`` or the path given.
        spec: image_source's ``source`` parameter.
        frames: frames to publish (0: the whole bag once).
        bag_topic: camera topic in the bag ('' for other sources).
        scored: the bag holds ground truth on ``/camera/labels_gt`` (eval_node runs).
        total: frames that will be published (for picking the frames shown).
    """

    name: str
    spec: str
    frames: int
    bag_topic: str = ""
    scored: bool = False
    total: int = 0


def bag_topics(bag: Path) -> Dict[str, Tuple[str, int]]:
    """``{topic: (type, message count)}`` from a rosbag2 folder's metadata.yaml ({} if it has none)."""
    import yaml

    meta = bag / "metadata.yaml"
    if not meta.is_file():
        return {}
    info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
    return {t["topic_metadata"]["name"]: (t["topic_metadata"]["type"], int(t["message_count"]))
            for t in info["topics_with_message_count"]}


def plan_source(args: argparse.Namespace) -> Plan:
    """Decide what to play; raises ValueError for a missing path."""
    source = args.source or "demo"
    if source.split(":")[0] == "synthetic":
        size = source.split(":")[1] if ":" in source else args.size
        frames = args.frames or SYNTHETIC_FRAMES
        spec = "synthetic:{}:{}".format(size, min(frames, 100))
        return Plan(spec, spec, frames, total=frames)
    path = demo_bag_path() if source == "demo" else Path(source)
    if not path.exists():
        raise ValueError("--source {}: no such file or folder".format(path))
    topics = bag_topics(path) if path.is_dir() else {}
    if not topics:
        frames = args.frames or SYNTHETIC_FRAMES
        return Plan(source, str(path), frames, total=frames)
    camera = next((t for t in (CAMERA_TOPIC + "/compressed", CAMERA_TOPIC) if t in topics),
                  next((t for t, (kind, _) in topics.items() if t != GT_TOPIC and kind.startswith("sensor_msgs")), ""))
    count = topics.get(camera, ("", 0))[1]
    frames = min(args.frames, count) if args.frames else 0
    return Plan(source, str(path), frames, bag_topic=camera, scored=GT_TOPIC in topics, total=frames or count)


# -- child processes ---------------------------------------------------------------------
class _LogPump(threading.Thread):
    """Copies a child's stderr to a log file and remembers the lines (for readiness and errors)."""

    def __init__(self, proc: subprocess.Popen, path: Path, marker: str) -> None:
        super().__init__(daemon=True)
        self.proc, self.path, self.marker = proc, path, marker
        self.lines: List[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with open(self.path, "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip())
                if self.marker in line:
                    self.ready.set()

    def tail(self) -> str:
        return "\n  ".join(self.lines[-5:])


class Children:
    """The demo's node processes: started with parameters, stopped with SIGINT like ``ros2 launch``."""

    def __init__(self, out: Path, env: Dict[str, str]) -> None:
        self.out, self.env = out, env
        self.procs: Dict[str, Tuple[subprocess.Popen, _LogPump]] = {}

    def start(self, name: str, module: str, params: Dict[str, object], marker: str = "ready:") -> _LogPump:
        args = [sys.executable, "-m", "enet_seg_ros.ros." + module, "--ros-args", "-r", "__node:=" + name]
        for key, value in params.items():
            args += ["-p", "{}:={}".format(key, str(value).lower() if isinstance(value, bool) else value)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env)
        pump = _LogPump(proc, self.out / (name + ".log"), marker)
        pump.start()
        self.procs[name] = (proc, pump)
        return pump

    def wait_ready(self, name: str, deadline: float) -> bool:
        proc, pump = self.procs[name]
        while not pump.ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def running(self, name: str) -> bool:
        return self.procs[name][0].poll() is None

    def stop(self, name: str, timeout: float = 20.0) -> Optional[int]:
        proc = self.procs[name][0]
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        return proc.returncode

    def stop_all(self) -> Dict[str, Optional[int]]:
        return {name: self.stop(name) for name in list(self.procs)}


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


# -- the watching node -------------------------------------------------------------------
@dataclass
class Observed:
    """What the viewer saw, by frame stamp (ns); pixels kept only for the frames shown."""

    keep: FrozenSet[int]  # arrival indices of the frames shown (PNGs, contact sheet)
    inputs: Dict[int, float] = field(default_factory=dict)  # stamp -> arrival (monotonic)
    overlays: Dict[int, float] = field(default_factory=dict)
    shown: Dict[int, Dict[str, object]] = field(default_factory=dict)  # stamp -> {"input"/"overlay"/"gt": msg}
    order: List[int] = field(default_factory=list)  # input stamps in arrival order
    miou: Optional[float] = None
    scored_updates: int = 0
    diagnostics: Dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Viewer:
    """An rclpy node on a background thread that watches the camera, overlay, ground truth and mIoU."""

    def __init__(self, plan: Plan, keep: FrozenSet[int]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float32

        from .qos import image_qos

        self.seen = Observed(keep=keep)
        rclpy.init(args=["demo"])
        self.node = Node("demo_viewer")
        qos = image_qos("reliable", 10)
        # image_source publishes raw frames (it decodes a bag's JPEGs), as a camera driver would.
        self.node.create_subscription(Image, CAMERA_TOPIC, self._on_input, qos)
        self.node.create_subscription(Image, "/seg_node/overlay", self._on_overlay, qos)
        if plan.scored:
            self.node.create_subscription(Image, GT_TOPIC, self._on_gt, qos)
            self.node.create_subscription(Float32, "/eval_node/miou", self._on_miou, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._spinning = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        import rclpy

        while self._spinning and rclpy.ok():
            rclpy.spin_once(self.node, timeout_sec=0.05)

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_input(self, msg) -> None:
        s, key = self.seen, self._stamp(msg)
        with s.lock:
            s.inputs[key] = time.monotonic()
            s.order.append(key)
            if len(s.order) - 1 in s.keep:
                s.shown[key] = {"input": msg}

    def _on_overlay(self, msg) -> None:
        self._keep(msg, "overlay")
        with self.seen.lock:
            self.seen.overlays[self._stamp(msg)] = time.monotonic()

    def _on_gt(self, msg) -> None:
        self._keep(msg, "gt")

    def _keep(self, msg, what: str) -> None:
        with self.seen.lock:
            slot = self.seen.shown.get(self._stamp(msg))
            if slot is not None:
                slot[what] = msg

    def _on_miou(self, msg) -> None:
        with self.seen.lock:
            self.seen.miou = float(msg.data)
            self.seen.scored_updates += 1

    def _on_diagnostics(self, arr) -> None:
        for status in arr.status:
            if status.name.endswith("seg_node: segmentation"):
                self.seen.diagnostics = {kv.key: kv.value for kv in status.values}

    def publishers(self, topic: str) -> int:
        return self.node.count_publishers(topic)

    def close(self) -> None:
        import rclpy

        self._spinning = False
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


# -- the run -----------------------------------------------------------------------------
def start_nodes(children: Children, plan: Plan, args: argparse.Namespace, weights: Path, out: Path) -> None:
    """seg_node, and eval_node when the source has ground truth."""
    seg = {"weights": weights, "backend": args.backend, "image_topic": CAMERA_TOPIC,
           "qos_reliability": "reliable", "qos_depth": 10}
    if args.precision:
        seg["precision"] = args.precision
    children.start("seg_node", "seg_node", seg)
    if plan.scored:
        children.start("eval_node", "eval_node", {
            "labels_topic": "/seg_node/labels", "gt_topic": GT_TOPIC, "weights": weights,
            "output_dir": out / "eval", "qos_reliability": "reliable", "gt_wait_for_labels": True,
            "metrics_period_s": 1.0}, marker="evaluating")


def start_sources(children: Children, plan: Plan, args: argparse.Namespace) -> None:
    """The camera replay (+ the ground-truth replay); each waits for its two subscribers."""
    common = {"source": plan.spec, "rate_hz": float(args.rate), "max_frames": plan.frames,
              "qos_reliability": "reliable", "qos_depth": 10, "wait_for_subscribers": 2, "wait_timeout_s": 60.0}
    camera = dict(common, topic=CAMERA_TOPIC, loop=not plan.bag_topic)
    if plan.bag_topic:
        camera["bag_topic"] = plan.bag_topic
    children.start("camera_source", "image_source", camera)
    if plan.scored:  # subscribers: eval_node (after its first prediction) and the viewer
        children.start("gt_source", "image_source", dict(common, topic=GT_TOPIC, bag_topic=GT_TOPIC,
                                                         publish_camera_info=False))


def play(children: Children, viewer: Viewer, plan: Plan, deadline: float) -> int:
    """Wait for the sources to finish, printing progress; returns 0 or 2 (a source failed)."""
    last_print = time.monotonic()
    sources = [n for n in ("camera_source", "gt_source") if n in children.procs]
    while any(children.running(n) for n in sources) and time.monotonic() < deadline:
        time.sleep(0.1)
        if time.monotonic() - last_print >= 2.0:
            last_print = time.monotonic()
            seen = viewer.seen
            print("demo: {} frames in, {} overlays{}".format(
                len(seen.inputs), len(seen.overlays),
                ", live mIoU {:.1f}%".format(100 * seen.miou) if seen.miou is not None else ""), flush=True)
    code = 0
    for name in sources:
        proc, pump = children.procs[name]
        if proc.poll() is None or proc.returncode != 0:
            print("demo: error: {} failed:\n  {}".format(name, pump.tail()), file=sys.stderr)
            code = 2
    # Let the last frames through (and their scores), then seg_node's diagnostics that count them.
    seen = viewer.seen
    wait_until(lambda: (not seen.overlays or time.monotonic() - max(seen.overlays.values()) > 1.5)
               and (not plan.scored or seen.scored_updates > 0), 15.0, period=0.1)
    wait_until(lambda: int(seen.diagnostics.get("frames_processed", -1)) >= len(seen.overlays), 5.0, period=0.1)
    if plan.scored:  # eval_node publishes ~/miou once per scored frame: the last one is the final score
        wait_until(lambda: seen.scored_updates >= len(seen.overlays), 10.0, period=0.1)
    return code


def nodes_ready(children: Children, viewer: Viewer, t_start: float, deadline: float) -> bool:
    """Wait for every node's start-up line and for the viewer to see seg_node; prints why not."""
    for name in children.procs:
        if not children.wait_ready(name, deadline):
            print("demo: error: {} did not start:\n  {}".format(name, children.procs[name][1].tail()), file=sys.stderr)
            return False
    print("demo: nodes ready after {:.1f} s".format(time.monotonic() - t_start), flush=True)
    if not wait_until(lambda: viewer.publishers("/seg_node/overlay") > 0, 60.0):
        print("demo: error: DDS discovery failed (no /seg_node/overlay publisher seen)", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    from ..weights import WeightsError, read_card, resolve_weights

    try:
        weights = resolve_weights(args.weights)
        card = read_card(weights)
        plan = plan_source(args)
    except WeightsError as exc:
        print("demo: error: {}\n  The default model models/enet_camvid.safetensors ships with the package; if it is "
              "missing, train it (enet-seg train ...) or pass --weights PATH.".format(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print("demo: error: {}".format(exc), file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = demo_environment()
    print("demo: model {} ({} {}x{}), source {} ({}), {} at {:g} Hz, ROS_DOMAIN_ID={}".format(
        weights, card.arch, card.input_size[0], card.input_size[1], plan.name, plan.spec,
        "{} frames".format(plan.frames) if plan.frames else "every frame", args.rate, env["ROS_DOMAIN_ID"]),
        flush=True)
    t_start = time.monotonic()
    deadline = t_start + args.timeout
    children = Children(out, env)
    start_nodes(children, plan, args, weights, out)
    shown = np.linspace(0, max(plan.total, 1) - 1, num=max(1, min(args.pngs, max(plan.total, 1))))
    viewer = Viewer(plan, frozenset(shown.round().astype(int).tolist()))
    try:
        if not nodes_ready(children, viewer, t_start, deadline):
            return 2
        start_sources(children, plan, args)
        code = play(children, viewer, plan, deadline)
    finally:
        viewer.close()
        codes = children.stop_all()
    if codes.get("seg_node") not in (0, None):
        print("demo: warning: seg_node exited with code {} (see {})".format(codes["seg_node"], out / "seg_node.log"),
              file=sys.stderr)
    return report(args, out, plan, viewer.seen, code)


# -- results -----------------------------------------------------------------------------
def timing(seen: Observed) -> Optional[Dict[str, object]]:
    """Output rate and latency (frame arrival -> overlay arrival in this process), or None if < 2 overlays."""
    matched = [(seen.inputs[k], t) for k, t in seen.overlays.items() if k in seen.inputs]
    if len(matched) < 2:
        return None
    arrivals = np.sort([t for _, t in matched])
    latency_ms = np.array([t - t_in for t_in, t in matched]) * 1000.0
    return {"fps": (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9),
            "latency": {"p50": round(float(np.percentile(latency_ms, 50)), 1),
                        "p95": round(float(np.percentile(latency_ms, 95)), 1),
                        "max": round(float(latency_ms.max()), 1)}}


def _rgb(msg) -> np.ndarray:
    from ..io.image_conv import compressed_to_color, image_to_rgb

    if hasattr(msg, "encoding"):
        return image_to_rgb(msg)
    image, order = compressed_to_color(msg)
    return image[:, :, ::-1] if order == "bgr" else image


def write_images(out: Path, seen: Observed, palette: Sequence[Sequence[int]]) -> Tuple[List[str], Optional[str]]:
    """Overlay PNGs and ``contact_sheet.png`` (rows: input | overlay | ground truth when known)."""
    import cv2

    from ..io.image_conv import image_to_array

    lut = np.zeros((256, 3), np.uint8)  # dataset label values -> colours; unlabelled black
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    overlays, rows = [], []
    for key in seen.order:
        slot = seen.shown.get(key)
        if slot is None or "overlay" not in slot:
            continue
        index = seen.order.index(key)
        overlay = _rgb(slot["overlay"])
        path = out / "overlay_{:03d}.png".format(index)
        cv2.imwrite(str(path), overlay[:, :, ::-1])
        overlays.append(str(path))
        h, w = overlay.shape[:2]
        cells = [cv2.resize(_rgb(slot["input"]), (w, h)), overlay]
        if "gt" in slot:
            cells.append(cv2.resize(lut[image_to_array(slot["gt"])], (w, h), interpolation=cv2.INTER_NEAREST))
        rows.append(np.concatenate(cells, axis=1))
    if not rows:
        return overlays, None
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    sheet_path = out / "contact_sheet.png"
    cv2.imwrite(str(sheet_path), sheet[:, :, ::-1])
    return overlays, str(sheet_path)


def report(args: argparse.Namespace, out: Path, plan: Plan, seen: Observed, code: int) -> int:
    """Print and write the results (``summary.json``); returns the exit code."""
    from ..weights import read_card, resolve_weights

    measured = timing(seen)
    if measured is None:
        print("demo: error: {} overlays received; see {}/seg_node.log".format(len(seen.overlays), out),
              file=sys.stderr)
        return 2
    overlays, sheet = write_images(out, seen, read_card(resolve_weights(args.weights)).palette)
    node = seen.diagnostics
    summary = {
        "source": plan.name, "source_path": plan.spec, "frames_published": len(seen.inputs),
        "overlays_received": len(seen.overlays), "output_fps": round(measured["fps"], 2), "camera_rate_hz": args.rate,
        "latency_ms_camera_to_overlay": measured["latency"],
        "miou": None if seen.miou is None else round(seen.miou, 4),
        "eval_report": str(out / "eval" / "report.md") if plan.scored else None,
        "seg_node": node, "overlays": overlays, "contact_sheet": sheet,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("demo: {} of {} frames segmented, {:.1f} fps out (camera {:g} Hz); latency camera->overlay p50 {:.0f} ms, "
          "p95 {:.0f} ms; node: backend {}, dropped {}, latency p50 {} ms".format(
              len(seen.overlays), len(seen.inputs), measured["fps"], args.rate, measured["latency"]["p50"],
              measured["latency"]["p95"], node.get("backend", "?"), node.get("dropped_frames", "?"),
              node.get("latency_p50_ms", "?")))
    if node.get("selection"):
        print("demo: seg_node runs {} {}: {}".format(node.get("backend"), node.get("precision"), node["selection"]))
    if seen.miou is not None:
        print("demo: live mIoU {:.1f}% (eval_node, {} scored updates); report {}".format(
            100 * seen.miou, seen.scored_updates, summary["eval_report"]))
    print("demo: wrote {} overlay PNGs, {} and summary.json to {}".format(
        len(overlays), "contact_sheet.png" if sheet else "no contact sheet", out))
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
