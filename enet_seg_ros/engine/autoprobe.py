"""``precision="auto"`` by measurement: time the validated candidates once, cache the winner.

Which precision is fastest depends on the model and the CPU, not on a fixed order: on the AMX
Xeon of BENCHMARKS.md run G, OpenVINO int8 beat bf16 for ERFNet (23.6 vs 38.1 ms) but lost for
ESPNet (37.2 vs 27.1 ms). So when a backend has more than one candidate (its validated lossy
precisions and its default), the first start builds each, times a few batch-1 inferences of an
image-like frame and keeps the fastest. The result is stored in the artefact cache
(``<cache>/autoprobe``) under everything the timing depends on: the weights digest, backend,
device, input size, graph outputs, threads, the candidates and their records, the CPU (model
name, flags, ``ONEDNN_MAX_CPU_ISA``, core count) and the runtime versions; a later start with
the same key builds only the winner. ``$ENET_SEG_AUTO_PROBE=0`` (or the backend option
``auto_probe=False``) skips measuring and uses the registry's static order (fastest first as
measured in BENCHMARKS.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .cache import ArtifactCache
from .cpu import CPUINFO, ISA_CAP_ENV, cpu_flags, cpu_model_name

LOG = logging.getLogger(__name__)
PROBE_ENV = "ENET_SEG_AUTO_PROBE"
PROBE_FORMAT = 2  # 2: image-like probe frame (1: a blank frame)
PROBE_WARMUP = 2
PROBE_RUNS = 5


def probe_enabled(option: Optional[bool] = None) -> bool:
    """Whether ``auto`` measures: ``option`` when given, else ``$ENET_SEG_AUTO_PROBE`` (default on)."""
    if option is not None:
        return bool(option)
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "off", "false", "no", "static")


def cpu_signature(cpuinfo: str = CPUINFO) -> Dict[str, Any]:
    """What the CPU timing depends on: model name, a digest of the flags, the oneDNN ISA cap, cores."""
    flags = " ".join(sorted(cpu_flags(cpuinfo)))
    return {"model": cpu_model_name(cpuinfo), "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "onednn_max_cpu_isa": os.environ.get(ISA_CAP_ENV, ""), "cpus": os.cpu_count(),
            "machine": platform.machine()}


def runtime_versions() -> Dict[str, str]:
    """Installed versions of the inference runtimes (a new runtime may change the winner)."""
    from importlib import metadata

    out = {}
    for name in ("onnxruntime", "openvino", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def probe_fields(weights_digest: str, backend: str, device: str, input_size: Tuple[int, int],
                 candidates: Dict[str, Optional[Dict[str, Any]]], options: Dict[str, Any],
                 arch: str = "") -> Dict[str, Any]:
    """Cache key of one measured choice.

    ``candidates`` maps each precision tried (``default`` for the backend's default) to its
    validated record (``None`` for the default); a record enters the key through its
    calibration digest and settings, so re-quantising with other settings measures again.
    """
    recs = {name: None if rec is None else {"calibration_digest": rec.get("calibration_digest"),
                                            "quantization": rec.get("quantization"),
                                            "cpu_int8_class": rec.get("cpu_int8_class")}
            for name, rec in sorted(candidates.items())}
    return {"arch": arch, "kind": "auto-precision", "format": PROBE_FORMAT, "weights_sha256": weights_digest,
            "backend": backend,
            "device": device, "size": "{}x{}".format(*input_size), "output": options.get("output", "labels"),
            "with_confidence": bool(options.get("with_confidence")), "threads": options.get("threads"),
            "candidates": recs, "cpu": cpu_signature(), "versions": runtime_versions()}


def cached_choice(cache: ArtifactCache, fields: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The stored measurement for ``fields`` (``{"choice", "ms", ...}``), else ``None``.

    A measurement in which a candidate could not be built is not reused: what failed then may
    build now (an int8 graph whose calibration images were missing, a runtime installed since),
    and a stale choice would keep the node off its fastest precision for good.
    """
    path = cache.find(fields, ".json", "auto precision probe")
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("choice") not in fields["candidates"] or data.get("failed"):
        return None
    return data


def probe_frame(input_size: Tuple[int, int]) -> np.ndarray:
    """A (1, H, W, 3) uint8 frame with image-like content (gradients + noise, fixed seed), so no
    candidate is timed on a degenerate input (measured here, a blank frame and this one time
    within 10 % of each other on OpenVINO fp32 / bf16 / int8)."""
    width, height = input_size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 255 // max(width + height - 2, 1)], axis=-1)
    noise = np.random.default_rng(0).integers(-40, 41, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)[None]


def time_backend(instance, input_size: Tuple[int, int], runs: int = PROBE_RUNS, warmup: int = PROBE_WARMUP) -> float:
    """Median wall time (ms) of ``runs`` batch-1 inferences of :func:`probe_frame` after ``warmup`` ones."""
    frame = probe_frame(input_size)
    for _ in range(warmup):
        instance.infer(frame)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        instance.infer(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def choose_fastest(built: Dict[str, Any], input_size: Tuple[int, int],
                   timer: Callable[[Any, Tuple[int, int]], float] = time_backend) -> Tuple[str, Dict[str, float]]:
    """``(name, {name: ms})``: time every built backend (interleaved, best of two rounds) and pick the fastest.

    Ties go to the earlier candidate (the static order), so the choice never favours a lossy
    precision that is not faster.
    """
    ms: Dict[str, float] = {}
    for _ in range(2):  # two interleaved rounds: a burst of other load hits both candidates alike
        for name, instance in built.items():
            t = timer(instance, input_size)
            ms[name] = min(ms.get(name, t), t)
    order = list(built)
    best = min(order, key=lambda n: (ms[n], order.index(n)))
    return best, {k: round(v, 3) for k, v in ms.items()}


def store_choice(cache: ArtifactCache, fields: Dict[str, Any], choice: str, ms: Dict[str, float],
                 failed: Sequence[str] = ()) -> None:
    """Keep a measurement so later starts with the same key skip it."""
    data = {"choice": choice, "ms": ms, "failed": list(failed), "runs": PROBE_RUNS,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        cache.store(fields, ".json", json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError as exc:  # a read-only cache must not stop the camera: measure again next start
        LOG.warning("could not cache the precision-auto measurement in %s (%s)", cache.root, exc)


def describe(measured: Dict[str, Any]) -> str:
    """One phrase for the selection reason: what was measured, and whether it came from the cache."""
    ms = measured.get("ms") or {}
    times = ", ".join("{} {:.1f} ms".format(k, v) for k, v in sorted(ms.items(), key=lambda kv: kv[1]))
    how = "measured at the first start, cached" if measured.get("cached") else "measured now"
    return "fastest of the validated candidates ({}; median of {} batch-1 runs on this CPU, {})".format(
        times, measured.get("runs", PROBE_RUNS), how)


__all__ = ["PROBE_ENV", "probe_enabled", "cpu_signature", "probe_fields", "cached_choice", "choose_fastest",
           "store_choice", "time_backend", "describe"]
