"""int8 post-training static quantisation into Q/DQ ONNX graphs (``onnxruntime.quantization``).

The fp32 inference graph (uint8 image in, labels out) is calibrated on real frames (CamVid
train) and rewritten with explicit ``QuantizeLinear`` / ``DequantizeLinear`` pairs: int8
per-channel symmetric weights, uint8 asymmetric activations, MinMax ranges. Normalisation and
the argmax stay in float. The same Q/DQ graph runs on ONNX Runtime (its int8 kernels: VNNI /
AMX-INT8 where present, AVX2 int8 otherwise) and OpenVINO (its low-precision transformations
fold the Q/DQ pairs into int8 convolutions). The ``network`` flavour (float NCHW in, logits
out, symmetric int8 activations as TensorRT wants them) is what the TensorRT backend builds
explicit-precision int8 engines from (:func:`int8_onnx` with ``flavour="network"``).

Every graph is cached like the fp32 exports (:class:`~enet_seg_ros.engine.cache.ArtifactCache`,
``<cache>/onnx``), keyed by weights digest, size, graph variant, calibration digest and the
quantisation settings, so a later start (or ``precision="auto"``) finds it without the
calibration images: :func:`int8_onnx` then needs only the calibration digest recorded in the
model card by ``enet-seg quantize --record``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backends.base import BackendUnavailable
from .cache import GRAPH_FORMAT, ArtifactCache
from .cpu import cpu_int8_class
from .graph import INPUT_NAME
from .source import ModelSource

LOG = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
# Ops whose int8 kernels pay off on x86 (VNNI / AMX / AVX2 int8); elementwise ops stay float.
INT8_OPS = ("Conv", "ConvTranspose")
DEFAULT_CALIBRATION_FRAMES = 32


@dataclass(frozen=True)
class QuantSettings:
    """How a graph is quantised (part of the cache key and of the model-card record).

    Attributes:
        per_channel: one weight scale per output channel (else per tensor).
        weight_symmetric: symmetric int8 weights (zero point 0).
        activation_symmetric: symmetric activations (int8, zero point 0; TensorRT needs it).
        calibrate: ``minmax``, ``percentile`` or ``entropy`` range estimation.
        op_types: op types to quantise.
        quantize_bias: int32 biases (ONNX Runtime / OpenVINO); the TensorRT flavour keeps float
            biases because onnx-tensorrt accepts only 8-bit (and smaller) Q/DQ.
        exclude: nodes left in float: ``first_conv`` / ``last_conv`` (the network's first and
            last convolution wherever they sit in the graph), node names or ``fnmatch`` patterns.
        weight_bits: 8 (int8 weights in [-127, 127]) or 7 (weights in [-64, 64], ONNX Runtime's
            ``reduce_range``, NNCF's ``overflow_fix``): x86 int8 kernels without VNNI multiply
            u8 activations by s8 weights pairwise and add each pair in 16 bits with saturation
            (``vpmaddubsw``); 255 * 127 * 2 overflows int16, 255 * 64 * 2 = 32640 does not, so
            a 7-bit graph computes the same integers with and without VNNI (CPU int8 class
            ``avx2`` as well as ``vnni``).
    """

    per_channel: bool = True
    weight_symmetric: bool = True
    activation_symmetric: bool = False
    calibrate: str = "minmax"
    op_types: Tuple[str, ...] = INT8_OPS
    exclude: Tuple[str, ...] = ()
    quantize_bias: bool = True
    weight_bits: int = 8

    def __post_init__(self) -> None:
        if self.weight_bits not in (7, 8):
            raise ValueError("weight_bits must be 8 or 7, got {!r}".format(self.weight_bits))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (lists for tuples).

        ``weight_bits`` appears only when it is not 8, so the cache keys and model-card records
        of graphs made before it existed stay what they were.
        """
        out = asdict(self)
        out["op_types"], out["exclude"] = list(self.op_types), list(self.exclude)
        if self.weight_bits == 8:
            del out["weight_bits"]
        return out

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "QuantSettings":
        """Inverse of :meth:`to_dict`; ``None`` / ``{}`` give the defaults."""
        data = dict(data or {})
        for key in ("op_types", "exclude"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Int8Request:
    """What identifies one int8 graph besides the model: calibration and settings."""

    calibration: Optional[PathLike] = None  # image folder (None: find a cached graph by digest)
    calibration_digest: Optional[str] = None  # digest of the frames (from the card record)
    limit: int = DEFAULT_CALIBRATION_FRAMES
    settings: QuantSettings = field(default_factory=QuantSettings)
    # The record's activation scales / zero points ({tensor: [scale, zero_point]}, see
    # activation_qparams): the validated graph is rebuilt from them where the images are not at hand.
    qparams: Optional[Dict[str, List[float]]] = None

    def digest(self) -> str:
        """The calibration digest (computed from the folder when one is given)."""
        if self.calibration is not None:
            from .calib import calibration_digest

            return calibration_digest(self.calibration, self.limit)
        if not self.calibration_digest:
            raise BackendUnavailable("int8 needs calibration images (calibration=DIR / --calib DIR) or a "
                                     "validated int8 record in the model card (enet-seg quantize --record)")
        return self.calibration_digest


def int8_fields(source: ModelSource, input_size: Tuple[int, int], output: str, with_confidence: bool,
                argmax: str, flavour: str, calib_digest: str, settings: QuantSettings,
                resize_policy: str) -> Dict[str, Any]:
    """Cache key of an int8 Q/DQ graph."""
    from .backends.onnx_backend import onnx_fields

    fields = dict(onnx_fields(source, input_size, output, with_confidence, argmax), precision="int8",
                  calibration=calib_digest, quant=settings.to_dict(), resize_policy=resize_policy)
    if flavour != "full":
        fields["variant"] = flavour
    fields["graph_format"] = GRAPH_FORMAT
    return fields


def int8_onnx(cache: ArtifactCache, source: ModelSource, input_size: Tuple[int, int], request: Int8Request,
              output: str = "labels", with_confidence: bool = False, argmax: str = "native",
              flavour: str = "full", resize_policy: str = "stretch") -> Path:
    """The cached int8 Q/DQ graph, built (calibrated) when missing.

    Calibration images come from ``request.calibration`` or, when only the digest is known
    (a model-card record), from the calibration store in the cache (:func:`calibration_images`).

    ``flavour``: ``full`` (uint8 image in, labels out; ONNX Runtime and OpenVINO) or
    ``network`` (float NCHW normalised input, logits out, symmetric int8 activations; TensorRT).

    Raises:
        BackendUnavailable: no cached graph and no calibration images to build one.
    """
    settings = request.settings
    if flavour == "network" and (not settings.activation_symmetric or settings.quantize_bias):
        settings = QuantSettings(**dict(settings.to_dict(), activation_symmetric=True, quantize_bias=False,
                                        op_types=settings.op_types, exclude=settings.exclude))
    digest = request.digest()
    fields = int8_fields(source, input_size, output, with_confidence, argmax, flavour, digest, settings,
                         resize_policy)
    path = cache.find(fields, ".onnx", "int8 ONNX for {}".format(source.arch))
    if path is not None:
        return path
    from .export import export_onnx_bytes

    overrides = None
    try:
        images = calibration_images(cache, request)
    except BackendUnavailable:
        if flavour != "full" or not request.qparams:
            raise
        # No images here (a fresh machine): the record's own activation ranges give the same graph;
        # the calibrator still wants one frame, whose ranges every override replaces.
        overrides = request.qparams
        images = [np.zeros((input_size[1], input_size[0], 3), np.uint8)]
    frames = model_frames(images, source, input_size, resize_policy)
    LOG.info("quantising %s %dx%d to int8 (%s, %s)", source.arch, input_size[0], input_size[1],
             "{} calibration frames".format(len(frames)) if overrides is None else
             "the model card's activation ranges", settings)
    fp32 = cache.temp_path(fields, ".fp32.onnx")
    tmp = cache.temp_path(fields, ".onnx")
    try:
        if flavour == "full":
            from .backends.onnx_backend import fp32_onnx

            fp32 = fp32_onnx(cache, source, input_size, output, with_confidence, argmax)
            inputs = frames
        else:
            fp32.write_bytes(export_onnx_bytes(source, input_size, flavour="network"))
            inputs = [normalise(f, source) for f in frames]
        quantize_qdq(fp32, tmp, inputs, settings, input_name=INPUT_NAME if flavour == "full" else "input",
                     overrides=overrides)
        return cache.commit(fields, ".onnx", tmp)
    finally:
        tmp.unlink(missing_ok=True)
        if flavour != "full":
            fp32.unlink(missing_ok=True)


def calibration_images(cache: ArtifactCache, request: Int8Request) -> List[np.ndarray]:
    """The calibration images (BGR, as read) from ``request.calibration``, else from the cache.

    Reading a folder also stores its images (compressed, keyed by the calibration digest) under
    ``<cache>/calib``: a later start can then quantise another graph variant or size (e.g. with
    the confidence output) with the very same calibration, without the dataset.

    Raises:
        BackendUnavailable: no folder given and nothing cached for the digest.
    """
    import io

    from .calib import calibration_files

    digest = request.digest()
    store = ArtifactCache(cache.root.parent, "calib")
    fields = {"calibration": digest, "format": 1}
    if request.calibration is not None:
        import cv2

        images = []
        for p in calibration_files(request.calibration, request.limit):
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError("{}: unreadable calibration image".format(p))
            images.append(bgr)
        if store.lookup(fields, ".npz")[0] is None:
            buf = io.BytesIO()
            np.savez_compressed(buf, *images)
            store.store(fields, ".npz", buf.getvalue())
        return images
    path, _ = store.lookup(fields, ".npz")
    if path is None:
        raise BackendUnavailable("int8: calibration images {} are not in the cache {}; quantise with "
                                 "`enet-seg quantize WEIGHTS --calib DIR` (or pass calibration=DIR)".format(
                                     digest, store.root))
    with np.load(str(path)) as data:
        return [data["arr_{}".format(i)] for i in range(len(data.files))]


def model_frames(images: Sequence[np.ndarray], source: ModelSource, input_size: Tuple[int, int],
                 resize_policy: str) -> List[np.ndarray]:
    """BGR images -> model-size uint8 frames in the model's channel order, as :class:`Segmenter` feeds them."""
    from .preprocess import pad_colour, plan, to_model_input

    norm = source.card.normalization
    fill = pad_colour(norm.mean)
    return [to_model_input(img, plan((img.shape[1], img.shape[0]), input_size, resize_policy),
                           swap_rb=norm.channel_order == "rgb", fill=fill) for img in images]


def normalise(frame: np.ndarray, source: ModelSource) -> np.ndarray:
    """(H, W, 3) uint8 model-order frame -> (3, H, W) float32 network input (as the graph does)."""
    norm = source.card.normalization
    factor = np.float32(norm.scale) / np.asarray(norm.std, np.float32)
    x = (frame.astype(np.float32) - np.asarray(norm.mean, np.float32)) * factor
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class _Reader:
    """ONNX Runtime calibration reader: one frame per batch."""

    def __init__(self, frames: Iterable[np.ndarray], input_name: str) -> None:
        self._frames = list(frames)
        self._name = input_name
        self._it: Iterator[np.ndarray] = iter(self._frames)

    def get_next(self):
        frame = next(self._it, None)
        return None if frame is None else {self._name: frame[None]}

    def rewind(self) -> None:  # some calibrators read the data twice
        self._it = iter(self._frames)


def conv_nodes(proto) -> List[str]:
    """Names of the Conv / ConvTranspose nodes in graph order."""
    return [n.name for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]


def resolve_exclusions(proto, exclude: Sequence[str]) -> List[str]:
    """Node names to keep in float: ``first_conv``, ``last_conv``, node names or ``fnmatch`` patterns
    (e.g. ``/model/bottleneck1_0/*``: a whole block)."""
    import fnmatch

    convs = conv_nodes(proto)
    names = [n.name for n in proto.graph.node]
    out: List[str] = []
    for item in exclude:
        if item == "first_conv" and convs:
            found = [convs[0]]
        elif item == "last_conv" and convs:
            found = [convs[-1]]
        else:
            found = [n for n in names if fnmatch.fnmatchcase(n, item)]
        if not found:
            raise ValueError("cannot exclude {!r} from quantisation: no such node (use first_conv, last_conv, "
                             "a node name or a pattern)".format(item))
        out.extend(f for f in found if f not in out)
    return out


def quantize_qdq(fp32_onnx: PathLike, out_path: PathLike, frames: Sequence[np.ndarray],
                 settings: QuantSettings = QuantSettings(), input_name: str = INPUT_NAME,
                 overrides: Optional[Dict[str, List[float]]] = None) -> None:
    """Static Q/DQ quantisation of ``fp32_onnx`` into ``out_path`` calibrated on ``frames``.

    ``frames`` are single graph inputs without the batch axis. Raises ``ValueError`` without frames.
    ``overrides``: ``{tensor: [scale, zero_point]}`` of every quantised activation (from
    :func:`activation_qparams` of a graph calibrated before); they replace what ``frames`` give,
    and a graph with an activation they do not name is refused (BackendUnavailable).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(frames):
        raise ValueError("int8 quantisation needs calibration frames (a folder of training images)")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if settings.calibrate not in methods:
        raise ValueError("calibrate must be one of {}, got {!r}".format(sorted(methods), settings.calibrate))
    out_path = Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        excluded = resolve_exclusions(onnx.load(str(pre), load_external_data=False), settings.exclude)
        activation = QuantType.QInt8 if settings.activation_symmetric else QuantType.QUInt8
        extra = {}
        if overrides is not None:
            zp_type = np.int8 if settings.activation_symmetric else np.uint8
            extra["TensorQuantOverrides"] = {
                name: [{"scale": np.array(sz[0], np.float32), "zero_point": np.array(sz[1], zp_type)}]
                for name, sz in overrides.items()}
        quantize_static(
            str(pre), str(out_path), _Reader(frames, input_name),
            quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            reduce_range=settings.weight_bits == 7,  # weights only in Q/DQ mode: [-64, 64]
            activation_type=activation, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(settings.op_types), nodes_to_exclude=excluded,
            calibrate_method=methods[settings.calibrate],
            extra_options=dict(extra, ActivationSymmetric=settings.activation_symmetric,
                               WeightSymmetric=settings.weight_symmetric, QuantizeBias=settings.quantize_bias),
        )
    finally:
        pre.unlink(missing_ok=True)
    dst = onnx.load(str(out_path))
    if overrides is not None:
        made = activation_qparams(dst)
        missing = sorted(set(made) - set(overrides))
        differ = sorted(k for k, v in made.items() if k in overrides
                        and v != [float(np.float32(overrides[k][0])), int(overrides[k][1])])
        if missing or differ:
            out_path.unlink(missing_ok=True)
            raise BackendUnavailable("int8: the model card's activation ranges do not cover this graph ({} "
                                     "activation(s) without one, {} not taken as given, e.g. {}); quantise with "
                                     "calibration images (--calib DIR)".format(len(missing), len(differ),
                                                                              (missing + differ)[:3]))
    # Keep the model card and weights digest of the fp32 graph in the int8 graph's metadata.
    src = onnx.load(str(fp32_onnx), load_external_data=False)
    have = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in have:
            entry = dst.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    entry = dst.metadata_props.add()
    entry.key, entry.value = "enet_seg_ros.quantization", repr(settings.to_dict())
    onnx.save(dst, str(out_path))


def activation_qparams(graph: Any) -> Dict[str, List[float]]:
    """``{tensor: [scale, zero_point]}`` of every activation a Q/DQ graph quantises (not its weights).

    ``graph``: a path or a loaded ``onnx.ModelProto``. With the settings, this is all a graph's
    calibration decided: kept in the model card's int8 record, it rebuilds the same graph without
    the calibration images (:func:`int8_onnx`).
    """
    import onnx
    from onnx import numpy_helper

    proto = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph))
    inits = {i.name: i for i in proto.graph.initializer}
    out: Dict[str, List[float]] = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zero = numpy_helper.to_array(inits[node.input[2]])
        if scale.size != 1:
            raise ValueError("{}: per-channel activation scales are not supported".format(node.input[0]))
        out[node.input[0]] = [float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0])]
    return out


def qdq_summary(path: PathLike) -> Dict[str, Any]:
    """Counts of Q/DQ nodes and per-channel weight scales in a quantised graph (for tests / reports)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = sum(1 for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == np.int8
                      and inits[n.input[1]].size > 1)
    weights = sum(1 for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == np.int8)
    return {"quantize_linear": len(q), "dequantize_linear": len(dq), "int8_weights": weights,
            "per_channel_weights": per_channel, "convs": len(conv_nodes(proto))}


__all__ = ["QuantSettings", "Int8Request", "int8_onnx", "int8_fields", "quantize_qdq", "qdq_summary", "INT8_OPS",
           "activation_qparams",
           "cpu_int8_class", "int8_records", "int8_record_for", "merge_int8_record", "validated_precisions"]


# -- validated records (model card ``precisions``) -------------------------------------------------
def tensor_digest(model) -> str:
    """SHA-256 over a network's state dict (names, shapes, bytes), independent of its card.

    Recorded with an accuracy-guard result so a record copied next to other weights (or left
    in a card whose tensors were replaced) is never trusted.
    """
    import hashlib

    from .source import hash_tensors

    return hash_tensors(hashlib.sha256(), model).hexdigest()


def int8_records(record: Any) -> List[Dict[str, Any]]:
    """Every per-CPU-class int8 record in a card's ``precisions["int8"]``.

    The card keeps one record per CPU int8 class: the top-level record (its ``cpu_int8_class``;
    records without one were made on ``vnni``) and the others under ``by_cpu_class``
    (``{"avx2": record}``), so a reader that only knows the top-level record still reads it.
    """
    if not isinstance(record, dict):
        return []
    out = [record]
    for cls, rec in sorted((record.get("by_cpu_class") or {}).items()):
        if isinstance(rec, dict):
            out.append(dict(rec, cpu_int8_class=rec.get("cpu_int8_class", cls)))
    return out


def int8_record_for(record: Any, cpu_class: str) -> Optional[Dict[str, Any]]:
    """The card's int8 record made on ``cpu_class`` (see :func:`int8_records`), else ``None``."""
    for rec in int8_records(record):
        if rec.get("cpu_int8_class", "vnni") == cpu_class:
            return rec
    return None


def merge_int8_record(existing: Any, new: Dict[str, Any]) -> Dict[str, Any]:
    """``precisions["int8"]`` after recording ``new``: it replaces the record of its CPU class only.

    The top-level record keeps its class (a card's first record, ``vnni`` for the shipped ones);
    a record of another class goes to ``by_cpu_class[class]``.
    """
    new = {k: v for k, v in new.items() if k != "by_cpu_class"}
    cls = new.get("cpu_int8_class", "vnni")
    if not isinstance(existing, dict) or existing.get("cpu_int8_class", "vnni") == cls:
        others = {k: v for k, v in ((existing or {}).get("by_cpu_class") or {}).items() if k != cls} \
            if isinstance(existing, dict) else {}
        return dict(new, by_cpu_class=others) if others else new
    merged = dict(existing)
    merged["by_cpu_class"] = dict(existing.get("by_cpu_class") or {}, **{cls: new})
    return merged


def validated_precisions(source: ModelSource) -> Dict[str, Dict[str, Any]]:
    """``{precision: record}`` of the card's accepted records that belong to these very tensors.

    A record counts when ``accepted`` is true, it names the backends it was checked on, its
    ``weights_digest`` equals :func:`tensor_digest` of the loaded network, it was validated on the
    graph format this version exports (``graph_format``, absent in records made before it was
    recorded: those count), and (for CPU int8) it
    was made on a CPU of this machine's int8 class (:func:`cpu_int8_class`; records without
    ``cpu_int8_class`` were all made on a VNNI CPU): the card's int8 record for this class is
    picked among its per-class records (:func:`int8_records`).
    """
    records = getattr(source.card, "precisions", None) or {}
    out: Dict[str, Dict[str, Any]] = {}
    digest = None
    for prec, record in records.items():
        if prec == "int8":
            here = cpu_int8_class()
            found = int8_record_for(record, here)
            if found is None:
                made_on = sorted({r.get("cpu_int8_class", "vnni") for r in int8_records(record)})
                LOG.info("model card's int8 records were validated on %s CPUs, this one is %s: not used by "
                         "precision 'auto' (validate here with enet-seg quantize --validate --record)",
                         "/".join(made_on), here)
                continue
            record = found
        if not isinstance(record, dict) or not record.get("accepted") or not record.get("backends"):
            continue
        if digest is None:
            digest = tensor_digest(source.model)
        if record.get("weights_digest") != digest:
            LOG.warning("model card's %s record was made for other weights (digest mismatch); ignoring it", prec)
            continue
        made_on = record.get("graph_format", GRAPH_FORMAT)
        if made_on != GRAPH_FORMAT:
            # The exported graph changed since the accuracy was checked: the record does not vouch for it.
            LOG.warning("model card's %s record was validated on exported graph format %s, this version exports "
                        "format %s; ignoring it (re-validate: enet-seg quantize --validate --record)", prec, made_on,
                        GRAPH_FORMAT)
            continue
        out[prec] = record
    return out


# Graph variants built ahead: (output, with_confidence, argmax); ONNX Runtime runs the native
# ArgMax, OpenVINO the compare chain. Others (e.g. seg_node's confidence output) are quantised on
# first use from the calibration images stored in the cache (same ranges, ~10-60 s once).
VARIANTS = (("labels", False, "native"), ("labels", False, "compare"))


def build_int8(source: ModelSource, sizes: Sequence[Tuple[int, int]], request: Int8Request,
               cache_dir=None, resize_policy: Optional[str] = None,
               variants: Sequence[Tuple[str, bool, str]] = VARIANTS) -> List[Path]:
    """Quantise (or find cached) the int8 graph of every variant at every size; returns the paths."""
    cache = ArtifactCache(cache_dir, "onnx")
    policy = resize_policy or source.card.resize_policy or "stretch"
    return [int8_onnx(cache, source, tuple(size), request, output, conf, argmax, resize_policy=policy)
            for size in sizes for output, conf, argmax in variants]
