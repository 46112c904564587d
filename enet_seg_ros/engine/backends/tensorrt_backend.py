"""TensorRT backend: torch2trt (or the TensorRT ONNX parser) engines, cached and verified.

Engines are built once per (weights SHA-256, input size, precision, calibration) and cached;
the sidecar also records the TensorRT version and the GPU (name + compute capability) the
engine was built for. An engine from another TensorRT version or GPU, a corrupt file, or bytes
TensorRT refuses to deserialise are rebuilt, never trusted.

Builders, in order of preference:

1. ``torch2trt`` (NVIDIA-AI-IOT/torch2trt), converting the BN-folded network directly;
2. the ``tensorrt`` package's ONNX parser on the exported ``network`` ONNX flavour (used when
   torch2trt is not installed or cannot convert one of the network's ops).

Normalisation and argmax run in torch on the GPU around the engine (uint8 frames go up, uint8
labels come back), so the engine holds only the network. The engine has a static batch of 1;
batches are run frame by frame.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from ..cache import GRAPH_FORMAT, ArtifactCache
from ..source import ModelSource
from ..registry import BackendEntry, register_backend
from .base import Backend, BackendUnavailable, check_forced_failure

LOG = logging.getLogger(__name__)
ENGINE_SUFFIX = ".engine"


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason): TensorRT needs a CUDA device plus the ``tensorrt`` package."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
    except Exception as exc:  # broken CUDA runtime
        return False, "torch CUDA check failed ({})".format(exc)
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return False, "tensorrt Python package not installed ({})".format(exc.__class__.__name__)
    return True, ""


def have_torch2trt() -> bool:
    """True when torch2trt imports."""
    try:
        import torch2trt  # noqa: F401

        return True
    except Exception:
        return False


def engine_fields(sha256: str, arch: str, input_size: Tuple[int, int], precision: str,
                  calibration: Optional[str] = None) -> Dict[str, Any]:
    """What an engine is built *from* (names the cache entry)."""
    fields: Dict[str, Any] = {"arch": arch, "size": "{}x{}".format(int(input_size[0]), int(input_size[1])),
                              "precision": precision, "weights_sha256": sha256, "graph_format": GRAPH_FORMAT}
    if precision == "int8":
        fields["calibration"] = calibration or "none"
    return fields


def engine_env(trt_version: str, gpu_name: str, capability: Tuple[int, int]) -> Dict[str, Any]:
    """What an engine is only valid *for*: the TensorRT version and the GPU.

    TensorRT engines are not portable across TensorRT versions or GPU models; recording them
    lets the cache detect a stale engine after an upgrade or on another device.
    """
    return {"tensorrt": str(trt_version), "gpu": str(gpu_name), "compute_capability": "{}.{}".format(*capability)}


def fetch_engine(cache: ArtifactCache, fields: Dict[str, Any], env: Dict[str, Any], deserialize) -> Tuple[Any, str]:
    """Load a cached engine through ``deserialize(bytes) -> engine or None``.

    Returns ``(engine, "")`` or ``(None, reason)``. A stale entry (other TensorRT / GPU),
    a corrupt file or bytes TensorRT refuses are deleted so the caller rebuilds them.
    """
    path, reason = cache.lookup(fields, ENGINE_SUFFIX, env)
    if path is None:
        if reason != "missing":
            cache.discard(fields, ENGINE_SUFFIX)
        return None, reason
    try:
        engine = deserialize(path.read_bytes())
    except Exception as exc:  # TensorRT raises or returns None depending on version
        engine, reason = None, "TensorRT could not deserialize it ({})".format(exc)
    else:
        reason = "" if engine is not None else "TensorRT could not deserialize it"
    if engine is None:
        cache.discard(fields, ENGINE_SUFFIX)
    return engine, reason


class TensorRTBackend(Backend):
    """TensorRT engine on a CUDA device (see module docstring).

    Args:
        precision: ``fp16`` (default), ``fp32`` or ``int8`` (needs ``calibration``, a folder of
            training images; fp16 kernels are allowed alongside int8).
        workspace_mb: builder workspace.
    """

    name = "tensorrt"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, cache_dir=None, calibration=None, calibration_limit: int = 32,
                 output: str = "labels", with_confidence: bool = False, fail_backends: Optional[Set[str]] = None,
                 resize_policy: str = "stretch", workspace_mb: int = 1024, builder: Optional[str] = None,
                 **_unused) -> None:
        super().__init__()
        device = device or "cuda"
        check_forced_failure(self.name, device, fail_backends)
        if not device.startswith("cuda"):
            raise BackendUnavailable("tensorrt runs on CUDA devices only (device={!r})".format(device))
        ok, why = tensorrt_status()
        if not ok:
            raise BackendUnavailable("tensorrt: " + why)
        import tensorrt as trt
        import torch

        precision = precision or "fp16"
        if precision not in ("fp16", "fp32", "int8"):
            raise BackendUnavailable("tensorrt has no {} mode".format(precision))
        if precision == "int8" and calibration is None:
            raise BackendUnavailable("tensorrt int8 needs calibration images (calibration=DIR / --calib DIR)")
        self._trt, self._torch = trt, torch
        self.device = device if ":" in device else "cuda:{}".format(torch.cuda.current_device())
        self.precision, self.input_size = precision, (int(input_size[0]), int(input_size[1]))
        self.output, self.with_confidence = output, bool(with_confidence) and output == "labels"
        self.outputs = ("logits",) if output == "logits" else (("labels", "confidence") if self.with_confidence
                                                               else ("labels",))
        self.max_batch = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._source, self._card = source, source.card
        self._calibration, self._calibration_limit = calibration, calibration_limit
        self._resize_policy, self._workspace = resize_policy, int(workspace_mb) << 20
        dev = torch.device(self.device)
        calib_id = None
        if precision == "int8":
            from ..calib import calibration_digest

            calib_id = calibration_digest(calibration, calibration_limit)
        self.builder = builder or ("torch2trt" if have_torch2trt() else "onnx")
        self.fields = engine_fields(source.sha256, source.arch, self.input_size, precision, calib_id)
        self.env = engine_env(trt.__version__, torch.cuda.get_device_name(dev), torch.cuda.get_device_capability(dev))
        self.cache = ArtifactCache(cache_dir, "tensorrt")
        runtime = trt.Runtime(self._logger)
        engine, reason = fetch_engine(self.cache, self.fields, self.env, runtime.deserialize_cuda_engine)
        if engine is None:
            if reason != "missing":
                LOG.warning("cached TensorRT engine is stale or corrupt (%s); rebuilding", reason)
            data = self._build()
            self.cache.store(self.fields, ENGINE_SUFFIX, data, self.env)
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine it just built")
        self._runner = _EngineRunner(engine, trt, torch, dev)
        norm = self._card.normalization
        self._mean = torch.tensor(norm.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self._factor = torch.tensor([norm.scale / s for s in norm.std], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self.details = {"tensorrt": trt.__version__, "builder": self.builder, "gpu": self.env["gpu"]}

    # -- building -----------------------------------------------------------------------
    def _calibration_tensors(self) -> List[Any]:
        from ..calib import calibration_frames
        from ..preprocess import pad_colour

        torch = self._torch
        norm = self._card.normalization
        frames = calibration_frames(self._calibration, self.input_size, self._resize_policy, norm.channel_order,
                                    pad_colour(norm.mean), self._calibration_limit)
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(3, 1, 1)
        factor = torch.tensor([norm.scale / s for s in norm.std], dtype=torch.float32).view(3, 1, 1)
        return [((torch.from_numpy(f).permute(2, 0, 1).float() - mean) * factor).contiguous().to(self.device)
                for f in frames]

    def _build(self) -> bytes:
        LOG.info("building TensorRT %s engine for %s %s (%s); this takes a while once", self.precision,
                 self._source.arch, self.fields["size"], self.builder)
        calib = self._calibration_tensors() if self.precision == "int8" else None
        if self.builder == "torch2trt":
            try:
                return self._build_torch2trt(calib)
            except Exception as exc:  # unsupported op in torch2trt's converters, build failure...
                LOG.warning("torch2trt could not convert %s (%s); building from ONNX with the TensorRT parser instead",
                            self._source.arch, str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__)
                self.builder = "onnx"
        return self._build_onnx(calib)

    def _build_torch2trt(self, calib) -> bytes:
        from torch2trt import torch2trt

        from ...nets import fold_batchnorm

        torch = self._torch
        w, h = self.input_size
        model = fold_batchnorm(self._source.fresh_model()).to(self.device).eval()
        example = torch.zeros(1, 3, h, w, device=self.device)
        kwargs: Dict[str, Any] = dict(input_names=["input"], output_names=["logits"], max_workspace_size=self._workspace,
                                      fp16_mode=self.precision in ("fp16", "int8"))
        if calib is not None:
            # torch2trt's calibrator takes a dataset whose items are lists of un-batched inputs.
            kwargs.update(int8_mode=True, int8_calib_dataset=[[t] for t in calib])
        with torch.no_grad():
            module = torch2trt(model, [example], **kwargs)
            engine = module.engine
            if engine is None:
                raise RuntimeError("torch2trt returned no engine")
            self._check_conversion(model, module)
        return bytes(engine.serialize())

    def _check_conversion(self, model, module) -> None:
        """torch2trt silently skips ops it lacks converters for; compare labels on a ramp image."""
        torch = self._torch
        w, h = self.input_size
        ramp = torch.linspace(-2.0, 2.0, w, device=self.device).view(1, 1, 1, w).expand(1, 3, h, w).contiguous()
        ref = model(ramp).argmax(1)
        got = module(ramp)
        got = got[0] if isinstance(got, (list, tuple)) else got
        agree = float((got.float().argmax(1) == ref).float().mean())
        if agree < 0.9:
            raise RuntimeError("torch2trt engine disagrees with torch on {:.1%} of pixels".format(1 - agree))

    def _build_onnx(self, calib) -> bytes:
        from ..export import export_onnx_bytes

        trt = self._trt
        onnx_bytes = export_onnx_bytes(self._source, self.input_size, flavour="network")
        builder = trt.Builder(self._logger)
        flags = 0
        major = int(trt.__version__.split(".")[0])
        if major < 10:  # explicit batch is the only mode (and the flag deprecated) from TensorRT 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT ONNX parser failed: {}".format("; ".join(errors[:3])))
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        else:  # TensorRT < 8.4
            config.max_workspace_size = self._workspace
        if self.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _make_calibrator(trt, calib)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
        return bytes(serialized)

    # -- running ------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        torch = self._torch
        results: Dict[str, List[Any]] = {name: [] for name in self.outputs}
        with torch.inference_mode():
            frames = torch.from_numpy(batch).to(self.device, non_blocking=False)
            for frame in frames:  # static batch-1 engine
                x = ((frame.permute(2, 0, 1).float().unsqueeze(0) - self._mean) * self._factor).contiguous()
                logits = self._runner(x).float()
                if self.output == "logits":
                    results["logits"].append(logits)
                    continue
                results["labels"].append(logits.argmax(1).to(torch.uint8))
                if self.with_confidence:
                    peak = logits.amax(1, keepdim=True)
                    results["confidence"].append(torch.reciprocal(torch.exp(logits - peak).sum(1)))
            return {k: torch.cat(v).cpu().numpy() for k, v in results.items()}

    def close(self) -> None:  # noqa: D102
        self._runner = None


class _EngineRunner:
    """Run a single-input / single-output engine on torch CUDA tensors (TensorRT 8.x and 10.x APIs)."""

    def __init__(self, engine, trt, torch, device) -> None:
        self.engine, self.torch, self.device = engine, torch, device
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (GPU memory?)")
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int8: torch.int8}
        if hasattr(engine, "num_io_tensors"):  # TensorRT >= 8.5: named I/O tensors
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outs = [n for n in names if n not in self.inputs]
            self.v3 = hasattr(self.context, "execute_async_v3")
            out_shape = tuple(engine.get_tensor_shape(outs[0]))
            out_dtype = dtypes[engine.get_tensor_dtype(outs[0])]
        else:  # TensorRT 8.0 - 8.4: binding indices
            self.v3 = False
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            self.inputs = [n for i, n in enumerate(names) if engine.binding_is_input(i)]
            outs = [n for n in names if n not in self.inputs]
            idx = engine.get_binding_index(outs[0])
            out_shape = tuple(engine.get_binding_shape(idx))
            out_dtype = dtypes[engine.get_binding_dtype(idx)]
        if len(self.inputs) != 1 or len(outs) != 1:
            raise RuntimeError("expected an engine with one input and one output, got {} / {}".format(
                self.inputs, outs))
        self.names = names
        self.output_name = outs[0]
        self.out = torch.empty(out_shape, dtype=out_dtype, device=device)

    def __call__(self, x):
        stream = self.torch.cuda.current_stream(self.device)
        if self.v3:
            self.context.set_tensor_address(self.inputs[0], int(x.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(self.out.data_ptr()))
            ok = self.context.execute_async_v3(stream.cuda_stream)
        else:
            bindings = [0] * len(self.names)
            bindings[self.names.index(self.inputs[0])] = int(x.data_ptr())
            bindings[self.names.index(self.output_name)] = int(self.out.data_ptr())
            ok = self.context.execute_async_v2(bindings, stream.cuda_stream)
        if not ok:
            raise RuntimeError("TensorRT execution failed")
        return self.out


def _make_calibrator(trt, tensors):
    """An entropy calibrator feeding preprocessed CUDA tensors (1 frame per batch) to the builder."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.tensors, self.index = tensors, 0

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # noqa: D401 - TensorRT callback
            if self.index >= len(self.tensors):
                return None
            t = self.tensors[self.index].unsqueeze(0).contiguous()
            self.keep = t  # keep alive until the next call
            self.index += 1
            return [int(t.data_ptr())]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return Calibrator()


def _probe(device: str) -> Optional[str]:
    ok, why = tensorrt_status()
    return None if ok else why


register_backend(BackendEntry(
    name="tensorrt", devices=("cuda",), probe=_probe, factory=lambda: TensorRTBackend,
    precisions={"cuda": ("int8", "fp16", "fp32")},
    summary="TensorRT engines on NVIDIA GPUs (fp16 default, fp32, int8)"))
