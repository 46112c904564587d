"""Helpers shared by the benchmarks: synthetic street frames, child processes (a private ROS 2
domain, nodes with parameters, clean stops) and percentiles. The machine description is
:func:`enet_seg_ros.bench.machine.machine_line`."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import numpy as np

from ..io.scenes import render_scene


def street_frames(count: int = 10, width: int = 640, height: int = 360) -> List[np.ndarray]:
    """``count`` distinct synthetic RGB street frames (:func:`enet_seg_ros.io.scenes.render_scene`)."""
    return [render_scene(i, width, height)[0] for i in range(count)]


def bench_env() -> Dict[str, str]:
    """The environment of this process and its children: one random ROS domain on localhost only.

    Set here too, so this process's own rclpy context joins the same domain.
    """
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    return env


def python_module(module: str, args: List[str], env: Dict[str, str], **popen: Any) -> subprocess.Popen:
    """``python -m module args...`` with this interpreter."""
    return subprocess.Popen([sys.executable, "-m", module] + list(args), text=True, env=env, **popen)


def spawn_node(module: str, params: Dict[str, object], env: Dict[str, str]) -> subprocess.Popen:
    """A node process (``python -m module --ros-args -p k:=v ...``); its log is on ``stderr``."""
    args = ["--ros-args"]
    for k, v in params.items():
        args += ["-p", "{}:={}".format(k, v)]
    return python_module(module, args, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Read the node's log until it says ``ready:``, then keep draining it so a full pipe never blocks it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "ready:" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return
        if not line and proc.poll() is not None:
            raise RuntimeError("process exited before it was ready")
    raise RuntimeError("process not ready after {:.0f} s".format(timeout))


def stop(proc: subprocess.Popen) -> None:
    """SIGINT (a node's clean shutdown), then kill after 20 s."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values, q: float) -> float:
    """``q``-th percentile of ``values`` (NaN for none)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")
