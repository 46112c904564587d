"""OpenVINO backend (Intel CPUs): the cached ONNX inference graph, compiled for the CPU.

OpenVINO fuses convolution epilogues (BN, PReLU, adds, concats) into its CPU kernels and, on
CPUs with AVX512-BF16 / AMX, runs bf16 on the matrix units. Measured here (2-core Xeon with AMX,
640x360, run E in BENCHMARKS.md): ESPNet 34 ms fp32 / 19 ms bf16 vs 61 ms in ONNX Runtime.

OpenVINO picks bf16 by itself on AMX CPUs when no precision is asked for; this backend always
sets the inference precision, so ``fp32`` really is fp32 and bf16 stays opt-in (lossy).

Each batch size gets its own static-shape compiled model (batch 1 at start-up, others on first
use): with a fixed shape OpenVINO plans memory and picks kernels once, 10-20 % faster than the
dynamic-batch graph here. The graph spells its argmax as a compare chain (``argmax="compare"``,
same labels), which OpenVINO fuses into one kernel instead of a slow channel-strided TopK.

``auto`` picks it on x86 CPUs (before ONNX Runtime), except in a process that has loaded the
trainer: an earlier session saw PyTorch training die with SIGSEGV after OpenVINO had been loaded
in the same process (OpenVINO 2026.4, torch 2.13). With OpenVINO 2026.4.1 that no longer
reproduces here, in child processes: OpenVINO fp32 / bf16 (AMX) inference followed by training
with and without fork()ed DataLoader workers, torch.compile, DDP, and the whole test suite with
OpenVINO preloaded all pass. Without a reproducer the cause is unconfirmed, so training
processes still only get OpenVINO when they ask for it by name; inference processes
(``seg_node``, ``predict``, ``eval-*``, ``bench``, the demo) get it by default.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

import numpy as np

from ..cache import ArtifactCache
from ..cpu import cap_allows, isa_cap
from ..source import ModelSource
from ..registry import BackendEntry, register_backend
from .base import Backend, BackendUnavailable, check_forced_failure
from .onnx_backend import fp32_onnx

# int8: the Q/DQ graph; OpenVINO runs the quantised convolutions in int8 and the rest in f32.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
MAX_BATCH = 8
COMPILED_KEPT = 3  # compiled batch sizes kept in memory (least recently used dropped first)


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
        precision: ``fp32`` (default), ``bf16`` (CPUs with AVX512-BF16 / AMX; lossy) or ``int8``
            (the Q/DQ graph of :mod:`..quantize`; see the ONNX Runtime backend for
            ``calibration`` / ``int8``).
        threads: inference threads (``None``/0: OpenVINO's choice, one per physical core).
        cache_dir: artefact cache root; compiled blobs go to ``<root>/openvino`` so later starts
            skip compilation.
        output / with_confidence: graph outputs.
    """

    name = "openvino"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, threads: Optional[int] = None, cache_dir=None,
                 output: str = "labels", with_confidence: bool = False, fail_backends: Optional[Set[str]] = None,
                 calibration=None, calibration_limit: int = 32, int8: Optional[dict] = None,
                 resize_policy: str = "stretch", **_unused) -> None:
        super().__init__()
        device = device or "cpu"
        check_forced_failure(self.name, device, fail_backends)
        if not device.startswith("cpu"):
            raise BackendUnavailable("the openvino backend runs on the CPU only (use tensorrt on NVIDIA GPUs)")
        ov, core = _cpu_core()
        precision = precision or "fp32"
        if precision not in PRECISION_HINTS:
            raise BackendUnavailable("openvino has no {} mode here (fp32, bf16 or int8)".format(precision))
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailable("openvino bf16 needs AVX512-BF16 or AMX, which this CPU lacks")
        cap = isa_cap()
        if precision == "bf16" and not cap_allows(cap, "bf16"):
            # OpenVINO still lists BF16 under the cap, then fails to compile: say why instead.
            raise BackendUnavailable("openvino bf16 needs AVX512-BF16 or AMX, hidden by ONEDNN_MAX_CPU_ISA={}".format(cap))
        self.device, self.precision = "cpu", precision
        self.input_size = (int(input_size[0]), int(input_size[1]))
        cache = ArtifactCache(cache_dir, "onnx")
        if precision == "int8":
            from ..quantize import Int8Request, QuantSettings, int8_onnx

            record = int8 or {}
            request = Int8Request(calibration, record.get("calibration_digest"), calibration_limit,
                                  QuantSettings.from_dict(record.get("quantization")),
                                  qparams=record.get("activation_qparams"))
            self.path: Path = int8_onnx(cache, source, self.input_size, request, output, with_confidence,
                                        argmax="compare", resize_policy=resize_policy)
        else:
            self.path = fp32_onnx(cache, source, self.input_size, output, with_confidence, argmax="compare")
        blob_dir = cache.root.parent / "openvino"
        blob_dir.mkdir(parents=True, exist_ok=True)
        config: Dict[str, object] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                                     "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(blob_dir)}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.max_batch = MAX_BATCH
        self._core, self._config = core, config
        self._model = core.read_model(str(self.path))  # parsed once; each batch size compiles a clone
        self._compiled: "OrderedDict[int, tuple]" = OrderedDict()
        compiled, _ = self._compiled_for(1)
        self.outputs = tuple(port.get_any_name() for port in compiled.outputs)
        self.details = {"openvino": ov.get_version().split("-")[0], "threads": threads or "auto",
                        "onnx": self.path.name}

    def _compiled_for(self, batch_size: int):
        """``(compiled model, infer request)`` for a static batch size, compiled on first use."""
        entry = self._compiled.get(batch_size)
        if entry is None:
            model = self._model.clone()
            width, height = self.input_size
            model.reshape({0: [batch_size, height, width, 3]})
            compiled = self._core.compile_model(model, "CPU", self._config)
            entry = (compiled, compiled.create_infer_request())
            self._compiled[batch_size] = entry
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(batch_size)
        return entry

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        if not 1 <= batch.shape[0] <= MAX_BATCH:
            raise ValueError("openvino backend takes batches of 1 to {} frames, got {}".format(MAX_BATCH, batch.shape[0]))
        compiled, request = self._compiled_for(batch.shape[0])
        results = request.infer({0: batch})
        # The request reuses its output buffers on the next call: hand out copies.
        return {name: np.array(results[port], copy=True) for name, port in zip(self.outputs, compiled.outputs)}

    def close(self) -> None:  # noqa: D102
        self._compiled.clear()
        self._model = None


def _probe(device: str) -> Optional[str]:
    ok, why = openvino_status()
    return None if ok else why


# Loaded by processes that train (enet-seg train, test suites): auto leaves OpenVINO to others.
TRAINING_MODULE = "enet_seg_ros.train.trainer"


def _auto_probe(device: str) -> Optional[str]:
    import sys

    from ..registry import is_x86

    if not is_x86():
        return "auto uses OpenVINO on x86 CPUs only"
    if TRAINING_MODULE in sys.modules:
        # Kept out of training processes only (see the module docstring); explicit use still works.
        return "auto keeps OpenVINO out of processes that train with PyTorch"
    return None


register_backend(BackendEntry(
    name="openvino", devices=("cpu",), probe=_probe, factory=lambda: OpenVinoBackend,
    precisions={"cpu": ("int8", "bf16", "fp32")}, auto_probe=_auto_probe,
    summary="OpenVINO on x86 CPUs (fp32, bf16 on AVX512-BF16/AMX, int8 Q/DQ)"))

__all__ = ["OpenVinoBackend", "openvino_status"]
