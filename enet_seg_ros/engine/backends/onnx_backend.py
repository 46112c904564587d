"""ONNX Runtime backend: the inference graph exported once per (weights, size, variant) and cached.

The cached file is verified against its sidecar digest before use; a corrupt or foreign file
(or one ONNX Runtime refuses to load) is deleted and re-exported, never trusted.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from ..cache import GRAPH_FORMAT, ArtifactCache
from ..export import export_onnx_bytes
from ..graph import INPUT_NAME
from ..source import ModelSource
from ..registry import BackendEntry, register_backend
from .base import Backend, BackendUnavailable, check_forced_failure

LOG = logging.getLogger(__name__)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_providers() -> List[str]:
    """Execution providers this onnxruntime build offers ([] when onnxruntime is missing)."""
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:
        return []


def ort_gpu_available() -> bool:
    """True when a CUDA or TensorRT execution provider is compiled in."""
    return any(p in ort_providers() for p in GPU_PROVIDERS)


def onnx_fields(source: ModelSource, input_size: Tuple[int, int], output: str, with_confidence: bool,
                argmax: str = "native") -> Dict[str, str]:
    """Cache key of the fp32 inference graph (also read by the OpenVINO backend)."""
    variant = output + ("+conf" if with_confidence and output == "labels" else "")
    if argmax != "native" and output == "labels":
        variant += "+argmax-" + argmax
    return {"arch": source.arch, "size": "{}x{}".format(*input_size), "weights_sha256": source.sha256,
            "variant": variant, "precision": "fp32", "graph_format": GRAPH_FORMAT}


def fp32_onnx(cache: ArtifactCache, source: ModelSource, input_size: Tuple[int, int], output: str = "labels",
              with_confidence: bool = False, argmax: str = "native") -> Path:
    """The cached fp32 inference graph, exported (and stored) when missing, stale or corrupt."""
    fields = onnx_fields(source, input_size, output, with_confidence, argmax)
    path = cache.find(fields, ".onnx", "ONNX for {}".format(source.arch))
    if path is not None:
        return path
    return cache.store(fields, ".onnx", export_onnx_bytes(source, input_size, output=output,
                                                          with_confidence=with_confidence, argmax=argmax))


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with full graph optimisation (incl. NCHWc layouts) and configurable threads.

    Args:
        source: network + card.
        input_size: (width, height).
        device: ``cpu`` or ``cuda``; ``None`` picks CUDA when a GPU provider exists.
        precision: ``fp32`` (default) or ``int8`` (the static Q/DQ graph of :mod:`..quantize`,
            calibrated on ``calibration`` or found in the cache through ``int8``, the model
            card's validated record). On GPU, ``fp16`` enables the TensorRT provider's fp16.
        threads: intra-op threads (``None``/0: one per physical core).
        spin: let idle intra-op threads busy-wait between kernels. Off by default: on a CPU
            shared with a camera driver and other ROS nodes, spinning threads steal their cycles
            and, when the cores are oversubscribed, made inference 2-3x slower here.
        cache_dir: artefact cache root (default ``$ENET_SEG_CACHE`` or ``~/.cache/enet_seg_ros``).
        calibration: folder of images for int8; ``calibration_limit`` images are used.
        int8: the model card's ``precisions["int8"]`` record (calibration digest, settings).
        output / with_confidence: graph outputs.
    """

    name = "onnxruntime"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, threads: Optional[int] = None, cache_dir=None,
                 calibration=None, calibration_limit: int = 32, output: str = "labels",
                 int8: Optional[dict] = None,
                 with_confidence: bool = False, fail_backends: Optional[Set[str]] = None,
                 resize_policy: str = "stretch", optimization: str = "all", spin: bool = False,
                 **_unused) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed ({})".format(exc)) from None
        device = device or ("cuda" if ort_gpu_available() else "cpu")
        check_forced_failure(self.name, device, fail_backends)
        on_gpu = device.startswith("cuda")
        providers = self._providers(ort, device)
        precision = precision or "fp32"
        if precision not in ("fp32", "int8", "fp16"):
            raise BackendUnavailable("onnxruntime has no {} mode".format(precision))
        if precision == "fp16" and "TensorrtExecutionProvider" not in [p if isinstance(p, str) else p[0]
                                                                       for p in providers]:
            raise BackendUnavailable("onnxruntime fp16 needs the TensorRT execution provider")
        if precision == "int8" and on_gpu:
            raise BackendUnavailable("onnxruntime int8 is a CPU mode here (use the tensorrt backend on GPU)")
        if precision == "int8":
            from ..quantize import Int8Request, QuantSettings

            # int8: calibration images, or the calibration digest + settings of a validated
            # record in the model card (the graph is then found in the cache).
            record = int8 or {}
            self._int8 = Int8Request(calibration, record.get("calibration_digest"), calibration_limit,
                                     QuantSettings.from_dict(record.get("quantization")),
                                     qparams=record.get("activation_qparams"))
            self._int8_digest = self._int8.digest()  # raises BackendUnavailable without either
        self._ort = ort
        self.device, self.precision, self.input_size = device, precision, (int(input_size[0]), int(input_size[1]))
        self.cache = ArtifactCache(cache_dir, "onnx")
        self.fields = dict(onnx_fields(source, self.input_size, output, with_confidence), precision="fp32")
        if precision == "int8":
            from ..quantize import int8_fields

            self.fields = int8_fields(source, self.input_size, output, with_confidence, "native", "full",
                                      self._int8_digest, self._int8.settings, resize_policy)
        self._build_args = dict(source=source, output=output, with_confidence=with_confidence,
                                calibration=calibration, calibration_limit=calibration_limit,
                                resize_policy=resize_policy)
        self.threads = int(threads or 0)
        self.optimization = optimization
        self.spin = bool(spin)
        self.session = self._open(providers)
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        active = self.session.get_providers()
        if on_gpu and not any(p in active for p in GPU_PROVIDERS):
            raise BackendUnavailable("onnxruntime could not start a GPU provider (active: {})".format(active))
        self.details = {"providers": ",".join(p.replace("ExecutionProvider", "") for p in active),
                        "threads": self.threads or "auto", "spin": self.spin, "onnx": self.path.name}

    # -- building -----------------------------------------------------------------------
    def _providers(self, ort, device: str) -> list:
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            gpu = [p for p in GPU_PROVIDERS if p in available]
            if not gpu:
                raise BackendUnavailable("onnxruntime has no CUDA/TensorRT execution provider (available: {})".format(
                    available))
            index = int(device.split(":")[1]) if ":" in device else 0
            out: list = []
            for p in gpu:
                opts: Dict[str, object] = {"device_id": index}
                if p == "TensorrtExecutionProvider":
                    # The TensorRT provider keeps its own engine cache next to our ONNX cache.
                    opts.update({"trt_engine_cache_enable": True, "trt_fp16_enable": True,
                                 "trt_engine_cache_path": str(self._trt_cache_dir())})
                out.append((p, opts))
            return out + ["CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _trt_cache_dir(self) -> Path:
        from ..cache import cache_dir

        path = cache_dir() / "ort_trt"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _ensure_onnx(self) -> Path:
        path = self.cache.find(self.fields, ".onnx", "ONNX for {}".format(self.fields["arch"]))
        return path if path is not None else self._build()

    def _build(self) -> Path:
        args = self._build_args
        source: ModelSource = args["source"]
        LOG.info("exporting %s %s to ONNX (%s) into %s", source.arch, self.fields["size"], self.fields["precision"],
                 self.cache.root)
        if self.fields["precision"] == "fp32":
            return fp32_onnx(self.cache, source, self.input_size, args["output"], args["with_confidence"])
        from ..quantize import int8_onnx

        return int8_onnx(self.cache, source, self.input_size, self._int8, args["output"], args["with_confidence"],
                         resize_policy=args["resize_policy"])

    def _session_options(self):
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }[self.optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only: the NCHWc notice is noise for users
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return so

    def _open(self, providers):
        path = self._ensure_onnx()
        try:
            session = self._ort.InferenceSession(str(path), self._session_options(), providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/InvalidProtobuf types
            # A file that verifies but does not load (e.g. written by a broken exporter run):
            # rebuild once; a second failure is a real error and propagates.
            LOG.warning("ONNX Runtime could not load cached %s (%s); rebuilding", path.name,
                        str(exc).splitlines()[0][:200])
            self.cache.discard(self.fields, ".onnx")
            path = self._build()
            session = self._ort.InferenceSession(str(path), self._session_options(), providers=providers)
        self.path = path
        return session

    # -- running ------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        out = self.session.run(list(self.outputs), {INPUT_NAME: batch})
        return dict(zip(self.outputs, out))

    def close(self) -> None:  # noqa: D102
        self.session = None


def _probe(device: str) -> Optional[str]:
    providers = ort_providers()
    if not providers:
        return "onnxruntime not installed"
    if device == "cuda" and not any(p in providers for p in GPU_PROVIDERS):
        return "no CUDA/TensorRT execution provider in this onnxruntime build"
    return None


register_backend(BackendEntry(
    name="onnxruntime", devices=("cuda", "cpu"), probe=_probe, factory=lambda: OnnxRuntimeBackend,
    precisions={"cpu": ("int8", "fp32"), "cuda": ("fp16", "fp32")},
    summary="ONNX Runtime (CPU fp32 / int8 Q/DQ; CUDA or TensorRT execution providers)"))

__all__ = ["OnnxRuntimeBackend", "fp32_onnx", "onnx_fields", "ort_providers", "ort_gpu_available"]
