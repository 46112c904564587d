"""Backend selection: explicit choice or the ``auto`` chain with logged fallbacks.

``auto`` tries, in order: TensorRT (GPU) > ONNX Runtime GPU > torch CUDA > ONNX Runtime CPU >
torch CPU. OpenVINO (CPU, often the fastest there: BENCHMARKS.md) is chosen explicitly, never by
``auto``: loaded into a process that also trains with PyTorch it crashed that process (SIGSEGV,
reproduced here with OpenVINO 2026.4 + torch 2.13), so it only runs where it is asked for.
Candidates that cannot run here are skipped with the reason logged; a candidate that fails
while initialising is logged as a warning and the next one is tried, so a broken accelerator
stack degrades to CPU inference instead of crashing the caller.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

from .backends.base import Backend, BackendUnavailable

LOG = logging.getLogger(__name__)
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
AUTO_CHAIN: Tuple[Tuple[str, str], ...] = (
    ("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"), ("onnxruntime", "cpu"), ("torch", "cpu"))


def _factory(name: str) -> Callable[..., Backend]:
    if name == "torch":
        from .backends.torch_backend import TorchBackend

        return TorchBackend
    if name == "onnxruntime":
        from .backends.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "tensorrt":
        from .backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend
    if name == "openvino":
        from .backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend
    raise ValueError("unknown backend {!r}; expected auto or one of {}".format(name, BACKENDS))


def precheck(name: str, device: str) -> Optional[str]:
    """Why ``name`` on ``device`` cannot run here (cheap checks, nothing built), or ``None``."""
    if name == "tensorrt":
        from .backends.tensorrt_backend import tensorrt_status

        ok, why = tensorrt_status()
        return None if ok else why
    if name == "onnxruntime":
        from .backends.onnx_backend import GPU_PROVIDERS, ort_providers

        providers = ort_providers()
        if not providers:
            return "onnxruntime not installed"
        if device == "cuda" and not any(p in providers for p in GPU_PROVIDERS):
            return "no CUDA/TensorRT execution provider in this onnxruntime build"
        return None
    if name == "openvino":
        if device != "cpu":
            return "the openvino backend runs on the CPU only"
        from .backends.openvino_backend import openvino_status

        ok, why = openvino_status()
        return None if ok else why
    if name == "torch":
        from .backends.torch_backend import cuda_available

        if device == "cuda" and not cuda_available():
            return "CUDA not available to torch"
        return None
    return "unknown backend"


def chain_for(backend: str, device: Optional[str]) -> List[Tuple[str, str]]:
    """The (backend, device) candidates for a request, most preferred first."""
    kind = device.split(":")[0] if device else None
    if kind not in (None, "cpu", "cuda"):
        raise ValueError("device must be cpu, cuda or cuda:N, got {!r}".format(device))
    if backend == "auto":
        return [(b, device if device and d == kind else d) for b, d in AUTO_CHAIN if kind is None or d == kind]
    if backend not in BACKENDS:
        raise ValueError("unknown backend {!r}; expected auto or one of {}".format(backend, BACKENDS))
    if device:
        return [(backend, device)]
    if backend == "tensorrt":
        return [("tensorrt", "cuda")]
    if backend == "openvino":
        return [("openvino", "cpu")]
    # Explicit backend without a device: its GPU flavour when usable, else CPU.
    return [(backend, "cuda"), (backend, "cpu")]


def create_backend(source, input_size, backend: str = "auto", device: Optional[str] = None,
                   precision: Optional[str] = None, strict: bool = False, **options) -> Backend:
    """Build the best backend for the request.

    Args:
        source: :class:`~enet_seg_ros.engine.source.ModelSource`.
        input_size: (width, height) of the network input.
        backend: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: restrict to ``cpu`` / ``cuda`` / ``cuda:N``.
        precision: requested precision; candidates that lack it are skipped.
        strict: with an explicit backend, raise instead of falling back to the ``auto`` chain.
        **options: backend options (threads, cache_dir, calibration, with_confidence...).

    Raises:
        RuntimeError: no candidate could be initialised (the message lists every reason).
    """
    candidates = chain_for(backend, device)
    if backend != "auto" and not strict:
        # An explicit choice that fails still leaves the camera running on the next best backend.
        candidates += [c for c in chain_for("auto", device) if c not in candidates]
    reasons: Dict[str, str] = {}
    for name, dev in candidates:
        label = "{}-{}".format(name, dev)
        why = precheck(name, dev.split(":")[0])
        if why:
            reasons[label] = why
            LOG.debug("backend %s skipped: %s", label, why)
            continue
        try:
            instance = _factory(name)(source, input_size, device=dev, precision=precision, **options)
        except BackendUnavailable as exc:
            reasons[label] = str(exc)
            LOG.debug("backend %s skipped: %s", label, exc)
            continue
        except Exception as exc:  # a real initialisation failure: warn and fall back
            reasons[label] = "failed: {}: {}".format(exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
            LOG.warning("backend %s failed to initialise (%s); trying the next one", label, reasons[label])
            continue
        skipped = "; ".join("{}: {}".format(k, v) for k, v in reasons.items())
        LOG.info("inference backend: %s%s", instance.describe(), " (skipped {})".format(skipped) if skipped else "")
        instance.skipped = dict(reasons)
        return instance
    raise RuntimeError("no inference backend could be initialised for backend={!r} device={!r} precision={!r}: {}".format(
        backend, device, precision, "; ".join("{}: {}".format(k, v) for k, v in reasons.items())))
