"""TensorRT backend: engines built by the TensorRT ONNX parser (or, opt-in, torch2trt), cached and verified.

Engines are cached per (weights SHA-256, input size, precision, int8 source, builder setting,
environment digest). The environment digest (TensorRT version + GPU name + compute capability)
is part of the file name, so two GPUs or two TensorRT installs sharing one cache folder keep
separate engines instead of deleting each other's; the sidecar records the same facts in
clear plus the builder that really made the engine. An engine is written to the cache only
after TensorRT has deserialised it; a corrupt file or bytes TensorRT refuses are rebuilt.

Builders (``builder=``):

- ``onnx`` (default): the ``tensorrt`` package's ONNX parser on the exported ``network`` ONNX
  flavour. Works for every architecture here.
- ``torch2trt``: NVIDIA-AI-IOT/torch2trt's converters, used only for the architectures in
  ``torch2trt_archs`` (default :data:`TORCH2TRT_ARCHS`) and never for those it is known to
  mis-convert (:data:`TORCH2TRT_BROKEN`). Any failure, or labels that disagree with torch,
  falls back to the ONNX parser; torch functions torch2trt patched are restored either way.

Precisions: ``fp32``; ``fp16`` (TensorRT <= 10: the ``FP16`` builder flag on an fp32 graph;
TensorRT 11, which removed that flag and made every network strongly typed: an fp16 ONNX
graph); ``int8`` only from a Q/DQ ONNX graph of the ``network`` flavour (explicit
quantisation, the one int8 route TensorRT 11 has left; it removed implicit calibration):
``qdq_onnx=PATH``, or the graph :func:`enet_seg_ros.engine.quantize.int8_onnx` makes (and
caches) from ``calibration=DIR`` or the model card's validated int8 record.

Normalisation and argmax run in torch on the GPU around the engine (uint8 frames go up, uint8
labels come back), on a CUDA stream the backend owns, inside ``torch.cuda.device(dev)``. The
engine has a static batch of 1; batches run frame by frame.

What this relies on (read in NVIDIA/TensorRT ``python/src/infer`` at tags v10.3.0 and v11.1,
and NVIDIA-AI-IOT/torch2trt master; nothing here has run on a GPU yet):

- v11.1 ``pyCore.cpp``: ``BuilderFlag`` has no ``FP16`` / ``INT8`` / ``BF16``, ``IBuilderConfig``
  no ``int8_calibrator``, ``pyInt8.cpp`` (the calibrator classes) is gone, and
  ``NetworkDefinitionCreationFlag`` has only ``STRONGLY_TYPED`` ("Deprecated: always enabled");
  v10.3.0 still has all of them (``EXPLICIT_BATCH`` deprecated). Hence feature tests with
  ``hasattr``, never version-string comparisons.
- v10.3.0 ``pyCoreDoc.h`` (``execute_async_v3``): "Using default stream may lead to performance
  issues due to additional cudaDeviceSynchronize() calls ... Please use non-default stream".
- ``pyFoundationalTypes.cpp``: ``DataType`` FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL, UINT8
  (+ FP8, INT4, FP4...) in both tags; mapped by enum name in :data:`TRT_TO_TORCH`.
- ``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` /
  ``get_tensor_shape`` / ``get_tensor_dtype`` and ``IExecutionContext.set_tensor_address`` /
  ``execute_async_v3`` exist in both tags.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from ..cache import GRAPH_FORMAT, ArtifactCache, sha256_file
from ..source import ModelSource
from ..registry import BackendEntry, register_backend
from .base import Backend, BackendUnavailable, check_forced_failure

LOG = logging.getLogger(__name__)
ENGINE_SUFFIX = ".engine"
BUILDERS = ("onnx", "torch2trt")

# Architectures torch2trt is asked to convert when ``builder="torch2trt"`` (opt-in).
TORCH2TRT_ARCHS = ("espnet", "espnet_c")

# Known torch2trt mis-conversions (torch2trt master, converters/native_converters.py):
# - ENet: ``F.max_pool2d(x, 2)`` leaves ``stride=None``, which the pooling converter turns into
#   ``(None, None)`` for ``stride_nd``; the ``F.pad`` converter calls ``network.add_padding``
#   (gone from pyGraph.cpp since TensorRT 10.0; only ``add_padding_nd`` remains) and reads only
#   ``pad[0:4]``, dropping the channel padding of ENet's shortcut.
# - ERFNet: the transposed-conv converter takes ``weight.shape[0]`` (in_channels for
#   ConvTranspose weights) as the output channel count and never reads ``output_padding``
#   (torch2trt issue #734); ERFNet's upsamplers use ``output_padding=1`` and in != out.
TORCH2TRT_BROKEN = {
    "enet": "torch2trt mis-converts max_pool2d(stride=None) and channel F.pad (add_padding, removed in TRT 10)",
    "erfnet": "torch2trt's conv_transpose converter uses in_channels as output maps and ignores output_padding",
}

# TensorRT DataType enum names -> torch dtype names (pyFoundationalTypes.cpp, v10.3.0 / v11.1).
TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


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


def torch_dtype_name(trt_dtype: Any) -> str:
    """The torch dtype name for a TensorRT ``DataType`` (by enum name); ``ValueError`` if unmapped."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in TRT_TO_TORCH:
        raise ValueError("TensorRT data type {} has no torch equivalent here".format(name))
    return TRT_TO_TORCH[name]


def choose_builder(arch: str, builder: Optional[str], torch2trt_archs: Optional[Iterable[str]] = None,
                   torch2trt_installed: bool = False) -> Tuple[str, str]:
    """(builder to use, why not torch2trt or ``""``) for an architecture.

    The ONNX parser is the default; torch2trt only where asked for, listed for ``arch`` and
    not known to mis-convert it.
    """
    builder = builder or "onnx"
    if builder not in BUILDERS:
        raise ValueError("TensorRT builder must be one of {}, got {!r}".format(BUILDERS, builder))
    if builder == "onnx":
        return "onnx", ""
    archs = tuple(TORCH2TRT_ARCHS if torch2trt_archs is None else torch2trt_archs)
    if arch in TORCH2TRT_BROKEN:
        return "onnx", TORCH2TRT_BROKEN[arch]
    if arch not in archs:
        return "onnx", "torch2trt not enabled for {} (torch2trt_archs={})".format(arch, list(archs))
    if not torch2trt_installed:
        return "onnx", "torch2trt not installed"
    return "torch2trt", ""


def env_digest(env: Dict[str, Any]) -> str:
    """Short digest of an engine's environment (part of the cache key)."""
    return hashlib.sha256(json.dumps(env, sort_keys=True, default=str).encode()).hexdigest()[:12]


def engine_fields(sha256: str, arch: str, input_size: Tuple[int, int], precision: str,
                  calibration: Optional[str] = None, env: Optional[Dict[str, Any]] = None,
                  builder: str = "onnx") -> Dict[str, Any]:
    """What an engine is built *from* and *for*: names the cache entry.

    ``calibration``: int8 source id (calibration-folder digest or Q/DQ ONNX hash). ``env``:
    :func:`engine_env` of this machine; its digest keeps engines of different TensorRT
    versions / GPUs apart in one shared cache folder.
    """
    fields: Dict[str, Any] = {"arch": arch, "size": "{}x{}".format(int(input_size[0]), int(input_size[1])),
                              "precision": precision, "weights_sha256": sha256, "graph_format": GRAPH_FORMAT,
                              "builder": builder}
    if precision == "int8":
        fields["calibration"] = calibration or "none"
    if env is not None:
        fields["env"] = env_digest(env)
    return fields


def engine_env(trt_version: str, gpu_name: str, capability: Tuple[int, int]) -> Dict[str, Any]:
    """What an engine is only valid *for*: the TensorRT version and the GPU.

    TensorRT engines are not portable across TensorRT versions or GPU models.
    """
    return {"tensorrt": str(trt_version), "gpu": str(gpu_name), "compute_capability": "{}.{}".format(*capability)}


def fetch_engine(cache: ArtifactCache, fields: Dict[str, Any], env: Dict[str, Any],
                 deserialize: Callable[[bytes], Any]) -> Tuple[Any, str, Dict[str, Any]]:
    """Load a cached engine through ``deserialize(bytes) -> engine or None``.

    Returns ``(engine, "", info)`` (``info``: the sidecar's record, e.g. ``{"builder": ...}``)
    or ``(None, reason, {})``. A stale entry, a corrupt file or bytes TensorRT refuses are
    deleted so the caller rebuilds them.
    """
    path, reason = cache.lookup(fields, ENGINE_SUFFIX, env)
    if path is None:
        if reason != "missing":
            cache.discard(fields, ENGINE_SUFFIX)
        return None, reason, {}
    try:
        engine = deserialize(path.read_bytes())
    except Exception as exc:  # TensorRT raises or returns None depending on version
        engine, reason = None, "TensorRT could not deserialize it ({})".format(exc)
    else:
        reason = "" if engine is not None else "TensorRT could not deserialize it"
    if engine is None:
        cache.discard(fields, ENGINE_SUFFIX)
        return None, reason, {}
    return engine, "", cache.read_info(fields, ENGINE_SUFFIX)


def store_engine(cache: ArtifactCache, fields: Dict[str, Any], env: Dict[str, Any], data: bytes,
                 deserialize: Callable[[bytes], Any], builder: str) -> Any:
    """Deserialise freshly built ``data`` and only then cache it (sidecar records ``builder``).

    Raises ``RuntimeError`` (nothing cached) when TensorRT cannot load its own engine.
    """
    try:
        engine = deserialize(data)
    except Exception as exc:
        raise RuntimeError("TensorRT could not deserialize the engine it just built ({})".format(exc)) from exc
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it just built")
    cache.store(fields, ENGINE_SUFFIX, data, env, info={"builder": builder})
    return engine


def check_qdq_onnx(path: Any, input_size: Tuple[int, int]) -> str:
    """Validate a Q/DQ ONNX for the TensorRT int8 build; returns its SHA-256.

    It must be the ``network`` flavour (one float input ``input`` of shape 1x3xHxW, one output
    ``logits``) with QuantizeLinear / DequantizeLinear nodes that TensorRT's ONNX parser takes:
    onnx-tensorrt's ``docs/operators.md`` (10.x) lists Q/DQ for INT8, FP8 and INT4 with zero
    points that "must be zero" - so no int32 (quantised bias) DequantizeLinear and no uint8 /
    asymmetric activations. Raises ``ValueError`` naming what is wrong.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise ValueError("{}: Q/DQ ONNX not found".format(path))
    proto = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise ValueError("{}: no QuantizeLinear/DequantizeLinear nodes; not a Q/DQ graph".format(path))
    inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != "input" or [o.name for o in proto.graph.output] != ["logits"]:
        raise ValueError("{}: TensorRT int8 needs the 'network' flavour (input 'input' -> output 'logits'), "
                         "got inputs {} outputs {}".format(path, [i.name for i in inputs],
                                                          [o.name for o in proto.graph.output]))
    inits = {init.name: init for init in proto.graph.initializer}
    quantized = {onnx.TensorProto.INT8, getattr(onnx.TensorProto, "FLOAT8E4M3FN", -1),
                 getattr(onnx.TensorProto, "INT4", -2)}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and zero.data_type not in quantized:
            raise ValueError("{}: {} {} uses {} zero points; TensorRT takes INT8 / FP8 / INT4 Q/DQ only (unquantised "
                             "biases, symmetric int8 activations)".format(
                                 path, node.op_type, node.name or node.output[0],
                                 onnx.TensorProto.DataType.Name(zero.data_type)))
        if zero is not None and numpy_helper.to_array(zero).any():
            raise ValueError("{}: {} {} has a non-zero zero point; TensorRT needs symmetric quantisation".format(
                path, node.op_type, node.name or node.output[0]))
        data = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is not None and data.data_type not in quantized:
            raise ValueError("{}: DequantizeLinear {} of a {} tensor; TensorRT takes INT8 / FP8 / INT4 only".format(
                path, node.name or node.output[0], onnx.TensorProto.DataType.Name(data.data_type)))
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    w, h = int(input_size[0]), int(input_size[1])
    if dims[1:] != [3, h, w] or dims[0] not in (1, "batch"):
        raise ValueError("{}: input shape {} does not match 1x3x{}x{}".format(path, dims, h, w))
    return sha256_file(path)


class TensorRTBackend(Backend):
    """TensorRT engine on a CUDA device (see module docstring).

    Args:
        precision: ``fp16`` (default), ``fp32`` or ``int8`` (needs ``qdq_onnx``, ``calibration``
            images or an ``int8`` model-card record; see the module docstring).
        workspace_mb: builder workspace limit, set explicitly for both builders.
        builder: ``onnx`` (default) or ``torch2trt`` (opt-in; see :func:`choose_builder`).
        torch2trt_archs: architectures torch2trt may convert (default :data:`TORCH2TRT_ARCHS`).
        qdq_onnx: Q/DQ ONNX (``network`` flavour) for int8.
        int8: the model card's validated int8 record (calibration digest + quantisation
            settings), passed by the Segmenter; finds the cached Q/DQ graph without images.
    """

    name = "tensorrt"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, cache_dir=None, calibration=None, calibration_limit: int = 32,
                 output: str = "labels", with_confidence: bool = False, fail_backends: Optional[Set[str]] = None,
                 resize_policy: str = "stretch", workspace_mb: int = 1024, builder: Optional[str] = None,
                 torch2trt_archs: Optional[Iterable[str]] = None, qdq_onnx=None,
                 int8: Optional[Dict[str, Any]] = None, **_unused) -> None:
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
        self._trt, self._torch = trt, torch
        # Feature tests (TensorRT 11 removed these; see module docstring).
        self._weak_precision = hasattr(trt.BuilderFlag, "FP16")
        index = torch.device(device).index
        self.device = "cuda:{}".format(torch.cuda.current_device() if index is None else index)
        dev = self._dev = torch.device(self.device)
        if dev.index >= torch.cuda.device_count():
            raise BackendUnavailable("tensorrt: {} does not exist ({} CUDA device(s))".format(
                self.device, torch.cuda.device_count()))
        self.precision, self.input_size = precision, (int(input_size[0]), int(input_size[1]))
        self.output, self.with_confidence = output, bool(with_confidence) and output == "labels"
        self.outputs = ("logits",) if output == "logits" else (("labels", "confidence") if self.with_confidence
                                                               else ("labels",))
        self.max_batch = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._source, self._card = source, source.card
        self._resize_policy, self._workspace = resize_policy, int(workspace_mb) << 20
        self._cache_dir = cache_dir
        self._qdq = Path(qdq_onnx) if qdq_onnx is not None else None
        self._int8_request = None
        int8_id = None
        if precision == "int8":
            if self._qdq is not None:
                int8_id = "qdq:" + check_qdq_onnx(self._qdq, self.input_size)[:16]
            else:
                from ..quantize import Int8Request, QuantSettings

                record = int8 or {}
                self._int8_request = Int8Request(calibration, record.get("calibration_digest"), calibration_limit,
                                                 QuantSettings.from_dict(record.get("quantization")))
                # digest() raises BackendUnavailable without images or a record.
                int8_id = "calib:{}:{}".format(self._int8_request.digest(), self._int8_request.settings.digest())
        self.builder, why_not = choose_builder(source.arch, builder, torch2trt_archs, have_torch2trt())
        if builder == "torch2trt" and why_not:
            LOG.warning("tensorrt: not using torch2trt for %s (%s); using the ONNX parser", source.arch, why_not)
        if self.precision == "int8":
            self.builder = "onnx"  # int8 comes from a Q/DQ ONNX graph only
        self.env = engine_env(trt.__version__, torch.cuda.get_device_name(dev), torch.cuda.get_device_capability(dev))
        # The key names the *requested* builder; the sidecar records the one that really built it.
        self.fields = engine_fields(source.sha256, source.arch, self.input_size, precision, int8_id, self.env,
                                    builder=self.builder)
        self.cache = ArtifactCache(cache_dir, "tensorrt")
        self._lock = threading.Lock()
        with torch.cuda.device(dev):
            runtime = trt.Runtime(self._logger)
            engine, reason, info = fetch_engine(self.cache, self.fields, self.env, runtime.deserialize_cuda_engine)
            if engine is None:
                if reason != "missing":
                    LOG.warning("cached TensorRT engine is stale or corrupt (%s); rebuilding", reason)
                data = self._build()
                engine = store_engine(self.cache, self.fields, self.env, data, runtime.deserialize_cuda_engine,
                                      self.builder)
                self.cached = False
            else:
                self.builder = str(info.get("builder", "unknown"))
                self.cached = True
            self._runtime = runtime
            self._stream = torch.cuda.Stream(device=dev)
            self._runner = EngineRunner(engine, trt, torch, dev, self.input_size)
            norm = self._card.normalization
            self._mean = torch.tensor(norm.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
            self._factor = torch.tensor([norm.scale / s for s in norm.std], dtype=torch.float32,
                                        device=dev).view(1, 3, 1, 1)
        self.details = {"tensorrt": trt.__version__, "builder": self.builder, "gpu": self.env["gpu"],
                        "cached": self.cached}

    # -- building -----------------------------------------------------------------------
    def _build(self) -> bytes:
        LOG.info("building TensorRT %s engine for %s %s (%s builder); this takes a while once", self.precision,
                 self._source.arch, self.fields["size"], self.builder)
        if self.builder == "torch2trt":
            try:
                return self._build_torch2trt()
            except Exception as exc:  # unsupported op, converter bug, build failure, disagreement
                LOG.warning("torch2trt could not convert %s (%s); building from ONNX with the TensorRT parser instead",
                            self._source.arch, str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__)
                self.builder = "onnx"
        return self._build_onnx()

    def _config(self, builder) -> Any:
        """A builder config with the workspace and precision flags set explicitly."""
        trt = self._trt
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        if self._weak_precision and self.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if self._weak_precision and self.precision == "int8":
            # A Q/DQ graph on TensorRT <= 10 also needs the INT8 flag in a weakly typed network
            # (no calibrator: the Q/DQ scales are the quantisation).
            config.set_flag(trt.BuilderFlag.INT8)
        return config

    def _network_flags(self) -> int:
        trt = self._trt
        if not self._weak_precision:
            return 0  # TensorRT 11: every network is strongly typed; no creation flags left
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
            return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        return 0

    def _build_torch2trt(self) -> bytes:
        """torch2trt's converters fill a network we create; we own the config and the build.

        torch2trt's ``torch2trt()`` sets the workspace only for TensorRT < 10 (it compares
        versions) and picks its int8 calibration algorithm by comparing version *strings*
        (``dataset_calibrator.py``: ``trt.__version__ >= '5.1'``, False for "10.x"), so its
        network population (``ConversionContext``) is used with our own builder config, and
        int8 never goes through torch2trt (it comes from Q/DQ ONNX graphs).
        """
        from torch2trt.torch2trt import ConversionContext

        from ...nets import fold_batchnorm

        torch, trt = self._torch, self._trt
        if self.precision == "int8":
            raise RuntimeError("int8 engines come from Q/DQ ONNX graphs, not torch2trt")
        w, h = self.input_size
        dtype = torch.float16 if (not self._weak_precision and self.precision == "fp16") else torch.float32
        model = fold_batchnorm(self._source.fresh_model()).to(self._dev, dtype).eval()
        example = torch.zeros(1, 3, h, w, device=self._dev, dtype=dtype)
        builder = trt.Builder(self._logger)
        network = builder.create_network(self._network_flags())
        # The config exists before conversion: torch2trt's NetworkWrapper calls
        # builder_config.set_device_type() on every layer it adds.
        config = self._config(builder)
        # Keys torch2trt's converters read from torch2trt_kwargs (torch2trt.py: ConversionContext,
        # NetworkWrapper, set_layer_precision asserts fp16_mode / int8_mode). Layer precisions stay
        # unset (False): precision comes from our builder config, or the typed graph on TRT 11.
        kwargs = {"module": model, "device_types": {}, "default_device_type": trt.DeviceType.GPU,
                  "gpu_fallback": False, "fp16_mode": False, "int8_mode": False}
        with restore_torch_functions(), torch.no_grad():
            with ConversionContext(network, torch2trt_kwargs=kwargs, builder_config=config,
                                   logger=self._logger) as ctx:
                ctx.add_inputs([example], ["input"], dynamic_axes=[[]])
                out = model(example)
                if not hasattr(out, "_trt"):
                    raise RuntimeError("torch2trt produced no TensorRT tensor for the output (unconverted op)")
                ctx.mark_outputs([out], ["logits"])
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT engine build from the torch2trt network failed")
        data = bytes(serialized)
        self._check_engine(data, model, dtype)
        return data

    def _check_engine(self, data: bytes, model, dtype) -> None:
        """torch2trt turns tensors of ops it cannot convert into constants and only warns:
        compare the engine's labels with torch's on a ramp image."""
        torch = self._torch
        w, h = self.input_size
        engine = self._trt.Runtime(self._logger).deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("torch2trt engine does not deserialize")
        runner = EngineRunner(engine, self._trt, torch, self._dev, self.input_size)
        ramp = torch.linspace(-2.0, 2.0, w, device=self._dev).view(1, 1, 1, w).expand(1, 3, h, w).contiguous()
        with torch.no_grad():
            ref = model(ramp.to(dtype)).float().argmax(1)
            stream = torch.cuda.Stream(device=self._dev)
            with torch.cuda.stream(stream):
                got = runner(ramp).float().argmax(1)
            stream.synchronize()
        agree = float((got == ref).float().mean())
        if agree < 0.9:
            raise RuntimeError("torch2trt engine disagrees with torch on {:.1%} of pixels".format(1 - agree))

    def _qdq_graph(self) -> Path:
        """The Q/DQ ONNX to build int8 from: the given one, or i13's quantiser's (cached) graph."""
        if self._qdq is not None:
            return self._qdq
        from ..quantize import int8_onnx

        path = int8_onnx(ArtifactCache(self._cache_dir, "onnx"), self._source, self.input_size, self._int8_request,
                         flavour="network", resize_policy=self._resize_policy)
        check_qdq_onnx(path, self.input_size)
        return path

    def _build_onnx(self) -> bytes:
        from ..export import export_onnx_bytes

        trt = self._trt
        if self.precision == "int8":
            onnx_bytes = self._qdq_graph().read_bytes()
        else:
            # TensorRT 11 is strongly typed: fp16 comes from an fp16 graph, not a builder flag.
            half = self.precision == "fp16" and not self._weak_precision
            onnx_bytes = export_onnx_bytes(self._source, self.input_size, flavour="network", half=half,
                                           device=self.device if half else None)
        builder = trt.Builder(self._logger)
        network = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT ONNX parser failed: {}".format("; ".join(errors[:3])))
        serialized = builder.build_serialized_network(network, self._config(builder))
        if serialized is None:
            raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
        return bytes(serialized)

    # -- running ------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        torch = self._torch
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (self.input_size[1], self.input_size[0], 3):
            raise ValueError("tensorrt backend expects (N, {}, {}, 3) uint8, got {} {}".format(
                self.input_size[1], self.input_size[0], batch.dtype, batch.shape))
        results: Dict[str, List[Any]] = {name: [] for name in self.outputs}
        with self._lock, torch.inference_mode(), torch.cuda.device(self._dev), torch.cuda.stream(self._stream):
            frames = torch.from_numpy(batch).to(self._dev)
            for frame in frames:  # static batch-1 engine
                x = ((frame.permute(2, 0, 1).float().unsqueeze(0) - self._mean) * self._factor).contiguous()
                logits = self._runner(x)
                if self.output == "logits":
                    # copy=True: the runner's output buffer is reused by the next frame
                    # (``.float()`` of an fp32 tensor would return that same buffer).
                    results["logits"].append(logits.to(torch.float32, copy=True))
                    continue
                logits = logits.float()
                results["labels"].append(logits.argmax(1).to(torch.uint8))
                if self.with_confidence:
                    peak = logits.amax(1, keepdim=True)
                    results["confidence"].append(torch.reciprocal(torch.exp(logits - peak).sum(1)))
            out = {k: torch.cat(v).cpu().numpy() for k, v in results.items()}  # .cpu() syncs our stream
        return out

    def close(self) -> None:  # noqa: D102
        self._runner = None


class EngineRunner:
    """Run a one-input / one-output engine on torch CUDA tensors (TensorRT >= 8.5 named-tensor API).

    The engine's I/O shapes and dtypes are read once and checked: the input must be 1x3xHxW
    at the backend's size; an input of another floating dtype is cast to the engine's, and
    the call is enqueued on torch's *current* stream (the backend makes that its own stream).
    """

    def __init__(self, engine, trt, torch, device, input_size: Tuple[int, int]) -> None:
        self.engine, self.torch, self.device = engine, torch, device
        if not hasattr(engine, "num_io_tensors"):
            raise RuntimeError("TensorRT < 8.5 (no named I/O tensors) is not supported")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outs) != 1:
            raise RuntimeError("expected an engine with one input and one output, got {} / {}".format(inputs, outs))
        self.input_name, self.output_name = inputs[0], outs[0]
        self.in_shape = tuple(engine.get_tensor_shape(self.input_name))
        self.out_shape = tuple(engine.get_tensor_shape(self.output_name))
        w, h = int(input_size[0]), int(input_size[1])
        if self.in_shape != (1, 3, h, w):
            raise RuntimeError("engine input {} has shape {}, expected (1, 3, {}, {})".format(
                self.input_name, self.in_shape, h, w))
        if len(self.out_shape) != 4 or self.out_shape[0] != 1 or tuple(self.out_shape[2:]) != (h, w):
            raise RuntimeError("engine output {} has shape {}, expected (1, C, {}, {})".format(
                self.output_name, self.out_shape, h, w))
        self.in_dtype = getattr(torch, torch_dtype_name(engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = getattr(torch, torch_dtype_name(engine.get_tensor_dtype(self.output_name)))
        if not self.in_dtype.is_floating_point or not self.out_dtype.is_floating_point:
            raise RuntimeError("engine I/O must be floating point, got {} -> {}".format(self.in_dtype, self.out_dtype))
        self.out = torch.empty(self.out_shape, dtype=self.out_dtype, device=device)

    def __call__(self, x):
        torch = self.torch
        if tuple(x.shape) != self.in_shape:
            raise ValueError("engine input must be {}, got {}".format(self.in_shape, tuple(x.shape)))
        if x.dtype != self.in_dtype:
            if not x.dtype.is_floating_point:
                raise ValueError("engine input must be {}, got {}".format(self.in_dtype, x.dtype))
            x = x.to(self.in_dtype)
        x = x.contiguous()
        stream = torch.cuda.current_stream(self.device)
        self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
        self.context.set_tensor_address(self.output_name, int(self.out.data_ptr()))
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return self.out


class restore_torch_functions:
    """Snapshot the public callables of ``torch``, ``torch.nn.functional`` and ``torch.Tensor``
    and put back any that differ on exit.

    torch2trt converts by monkey-patching these (``ConversionHook`` / ``ConversionContext``,
    which also sets ``torch.Tensor.size`` and ``torch.Tensor.__getattribute__``); its
    ``__exit__`` restores them, but a failure inside its ``__enter__`` would leave them patched
    for the rest of the process. Attributes new on ``torch.Tensor`` / ``torch.nn.functional``
    are removed again (``torch`` itself gains attributes by lazy imports, so only changed ones
    are put back there). ``restored`` lists what was undone, for tests and the log.
    """

    def __init__(self) -> None:
        import torch
        import torch.nn.functional as F

        self._targets = [(torch, False), (F, True), (torch.Tensor, True)]  # (namespace, drop new names)
        self._saved: List[Dict[str, Any]] = []
        self.restored: List[str] = []

    def __enter__(self) -> "restore_torch_functions":
        self._saved = [dict(vars(t)) for t, _ in self._targets]
        return self

    def __exit__(self, *exc) -> None:
        for (target, drop_new), saved in zip(self._targets, self._saved):
            now = dict(vars(target))
            label = getattr(target, "__name__", str(target))
            if label == "Tensor":
                label = "torch.Tensor"
            for name, value in saved.items():
                if now.get(name) is not value:
                    setattr(target, name, value)
                    self.restored.append("{}.{}".format(label, name))
            if drop_new:
                for name in set(now) - set(saved):
                    delattr(target, name)
                    self.restored.append("{}.{} (removed)".format(label, name))
        if self.restored:
            LOG.warning("restored %d torch function(s) left patched by torch2trt: %s", len(self.restored),
                        ", ".join(self.restored[:5]))


def _probe(device: str) -> Optional[str]:
    ok, why = tensorrt_status()
    return None if ok else why


register_backend(BackendEntry(
    name="tensorrt", devices=("cuda",), probe=_probe, factory=lambda: TensorRTBackend,
    precisions={"cuda": ("int8", "fp16", "fp32")},
    summary="TensorRT engines on NVIDIA GPUs (fp16 default, fp32, int8)"))
