"""OpenVINO backend (Intel CPUs): the same cached ONNX inference graph ONNX Runtime runs.

OpenVINO fuses convolution epilogues (BN, PReLU, adds, concats) into its CPU kernels and, on
CPUs with AVX512-BF16 / AMX, runs bf16 on the matrix units. Measured here (2-core Xeon with AMX,
640x360): ESPNet 41 ms fp32 / 25 ms bf16 vs 58 ms in ONNX Runtime (BENCHMARKS.md).

OpenVINO picks bf16 by itself on AMX CPUs when no precision is asked for; this backend always
sets the inference precision, so ``fp32`` really is fp32 and bf16 stays opt-in (lossy).

Only used when asked for (``backend="openvino"``), never by ``auto``: with OpenVINO 2026.4 and
torch 2.13 loaded in one process, later PyTorch training in that process died with SIGSEGV.
An inference-only process (``seg_node``, ``eval-*``, ``predict``) is not affected in our tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Set, Tuple

import numpy as np

from ..cache import ArtifactCache
from ..source import ModelSource
from .base import Backend, BackendUnavailable, check_forced_failure
from .onnx_backend import fp32_onnx

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _cpu_core():
    """``(openvino module, Core)`` with a CPU device; raises :class:`BackendUnavailable` why not."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable("openvino not installed ({})".format(exc)) from None
    try:
        core = ov.Core()
        has_cpu = "CPU" in core.available_devices
    except Exception as exc:  # broken plugin installation
        raise BackendUnavailable("OpenVINO failed to start: {}".format(
            str(exc).splitlines()[0] if str(exc) else exc)) from None
    if not has_cpu:
        raise BackendUnavailable("OpenVINO sees no CPU device")
    return ov, core


def openvino_status() -> Tuple[bool, str]:
    """``(True, version)`` when OpenVINO imports and sees a CPU, else ``(False, why)``."""
    try:
        ov, _ = _cpu_core()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, ov.get_version()


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU, latency-tuned, from the cached ONNX graph.

    Args:
        source: network + card.
        input_size: (width, height).
        device: ``cpu`` (the only device this backend drives).
        precision: ``fp32`` (default) or ``bf16`` (CPUs with AVX512-BF16 / AMX; lossy, opt-in).
        threads: inference threads (``None``/0: OpenVINO's choice, one per physical core).
        cache_dir: artefact cache root; compiled blobs go to ``<root>/openvino`` so later starts
            skip compilation.
        output / with_confidence: graph outputs.
    """

    name = "openvino"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, threads: Optional[int] = None, cache_dir=None,
                 output: str = "labels", with_confidence: bool = False, fail_backends: Optional[Set[str]] = None,
                 **_unused) -> None:
        super().__init__()
        device = device or "cpu"
        check_forced_failure(self.name, device, fail_backends)
        if not device.startswith("cpu"):
            raise BackendUnavailable("the openvino backend runs on the CPU only (use tensorrt on NVIDIA GPUs)")
        ov, core = _cpu_core()
        precision = precision or "fp32"
        if precision not in PRECISION_HINTS:
            raise BackendUnavailable("openvino has no {} mode here (fp32 or bf16)".format(precision))
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailable("openvino bf16 needs AVX512-BF16 or AMX, which this CPU lacks")
        self.device, self.precision = "cpu", precision
        self.input_size = (int(input_size[0]), int(input_size[1]))
        cache = ArtifactCache(cache_dir, "onnx")
        self.path: Path = fp32_onnx(cache, source, self.input_size, output, with_confidence)
        blob_dir = cache.root.parent / "openvino"
        blob_dir.mkdir(parents=True, exist_ok=True)
        config: Dict[str, object] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                                     "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(blob_dir)}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(str(self.path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.outputs = tuple(port.get_any_name() for port in self._compiled.outputs)
        self.details = {"openvino": ov.get_version().split("-")[0], "threads": threads or "auto",
                        "onnx": self.path.name}

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        results = self._request.infer({0: batch})
        # The request reuses its output buffers on the next call: hand out copies.
        return {name: np.array(results[port], copy=True) for name, port in zip(self.outputs, self._compiled.outputs)}

    def close(self) -> None:  # noqa: D102
        self._request = None
        self._compiled = None


__all__ = ["OpenVinoBackend", "openvino_status"]
