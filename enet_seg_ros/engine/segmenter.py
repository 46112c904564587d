"""The Segmenter: one object from camera frame to labels, on the fastest backend available."""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backends.base import Backend
from .preprocess import (POLICIES, UNKNOWN, Geometry, check_channel_order, check_image, logits_to_input_resolution,
                         pad_colour, plan, to_input_resolution, to_model_input)
from .result import Result, palette_lut
from .registry import create_backend
from .quantize import validated_precisions
from .source import load_source
from ..weights import LABEL_UPSAMPLINGS

LOG = logging.getLogger(__name__)
OUTPUT_RESOLUTIONS = ("input", "model")
PRECISIONS = (None, "auto", "fp32", "fp16", "bf16", "int8")


def parse_size(size: Union[str, Sequence[int]]) -> Tuple[int, int]:
    """``"640x360"`` or ``(640, 360)`` -> ``(640, 360)``; raises ``ValueError`` for anything else."""
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        if len(parts) != 2:
            raise ValueError("size must look like WIDTHxHEIGHT (e.g. 640x360), got {!r}".format(size))
        try:
            size = (int(parts[0]), int(parts[1]))
        except ValueError:
            raise ValueError("size must look like WIDTHxHEIGHT (e.g. 640x360), got {!r}".format(size)) from None
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError("size must be (width, height), got {!r}".format(size)) from None
    if w < 8 or h < 8 or w > 16384 or h > 16384:
        raise ValueError("network input size must be between 8 and 16384 pixels per side, got {}x{}".format(w, h))
    return w, h


def selection_reason(backend: Backend, requested_backend: str, requested_precision: Optional[str]) -> str:
    """One sentence: which backend / precision runs and why (for logs, /diagnostics, demo, doctor)."""
    if requested_backend == "auto":
        why_backend = "first usable backend of the auto chain"
    elif backend.name == requested_backend:
        why_backend = "requested"
    else:
        why_backend = "fallback: {} could not start".format(requested_backend)
    skipped = ["{} ({})".format(k, v.split(";")[0][:80]) for k, v in backend.skipped.items()]
    if skipped:
        why_backend += "; skipped " + ", ".join(skipped)
    record = backend.selection.get("validated") if backend.selection else None
    if requested_precision == "auto":
        measured = backend.selection.get("measured") if backend.selection else None
        if record:
            checked = record.get("backends", {}).get(backend.name, {})
            why_precision = "validated in the model card: mIoU drop {:.2f} pt, label agreement {:.2%} vs fp32 over " \
                            "{} val frames".format(checked.get("miou_drop_pt", float("nan")),
                                                   checked.get("agreement_vs_fp32", float("nan")),
                                                   record.get("val_frames", "?"))
        elif measured:
            why_precision = "the backend's default: faster here than the validated lossy precisions"
        else:
            why_precision = "the backend's default: no validated lossy precision for this model on {} {}".format(
                backend.name, backend.device)
        if measured:
            from .autoprobe import describe

            why_precision = "{}; {}".format(describe(measured), why_precision)
        elif record:
            why_precision += "; static order (not measured)"
    elif requested_precision is None:
        why_precision = "the backend's default"
    else:
        why_precision = "requested"
    return "{} on {} ({}); precision {} ({})".format(backend.name, backend.device, why_backend, backend.precision,
                                                     why_precision)


class Segmenter:
    """Semantic segmentation of camera frames.

    >>> seg = Segmenter("models/enet_camvid.safetensors")          # doctest: +SKIP
    >>> result = seg.segment(frame_rgb)                              # doctest: +SKIP
    >>> result.labels.shape == frame_rgb.shape[:2]                   # doctest: +SKIP

    Args:
        weights: path to a ``.safetensors`` weights file, or a loaded ``(model, card)`` pair.
        backend: ``auto`` (the registry's chain: TensorRT > ONNX Runtime GPU > torch CUDA >
            OpenVINO (x86) > ONNX Runtime CPU > torch CPU) or a name of
            :func:`~enet_seg_ros.engine.registry.list_backends`. An explicit backend that fails
            falls back along the auto chain with a warning unless ``strict=True``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``None``: best available).
        precision: ``auto`` (default): the fastest precision the model card has a validated
            accuracy record for on the chosen backend (``enet-seg quantize --validate
            --record``), else the backend's default; ``None``: the backend's default (fp16 for
            TensorRT / torch CUDA, fp32 on CPU); or ``fp32``, ``fp16``, ``bf16``, ``int8``.
            When the backend has several candidates (validated lossy precisions and its default),
            the first start times each on this machine and keeps the fastest; the measurement is
            cached (see :mod:`.autoprobe`; ``auto_probe=False`` or ``$ENET_SEG_AUTO_PROBE=0``:
            the registry's static order). :attr:`selection_reason` says what was picked and why.
        input_size: network input (width, height) or ``"WxH"``; default: the card's.
        resize_policy: ``stretch``, ``letterbox`` or ``center_crop``; default: the card's.
        confidence: also compute the per-pixel max softmax probability (costs ~5-10% on CPU).
        threads: CPU threads for the backend (``None``: backend default, one per core).
        cache_dir: exported ONNX / TensorRT engine cache (default ``$ENET_SEG_CACHE`` or
            ``~/.cache/enet_seg_ros``).
        calibration: folder of images for int8 calibration.
        strict: raise instead of falling back when the explicit backend fails.
        warmup: inference runs at construction, so the first frame is not slow.
        **backend_options: passed to the backend (e.g. ``channels_last`` for torch). Test /
            diagnostic hook: ``$ENET_SEG_FAIL_BACKENDS`` (see :mod:`.registry`).

    ``segment()`` is thread-safe: preprocessing runs in the caller's thread, the backend call
    is serialised by a lock.
    """

    def __init__(self, weights, backend: str = "auto", device: Optional[str] = None,
                 precision: Optional[str] = "auto", input_size=None, *, resize_policy: Optional[str] = None,
                 confidence: bool = False, threads: Optional[int] = None, cache_dir=None, calibration=None,
                 strict: bool = False, warmup: int = 2,
                 **backend_options: Any) -> None:
        if precision not in PRECISIONS:
            raise ValueError("precision must be one of {}, got {!r}".format(PRECISIONS[1:], precision))
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise ValueError("threads must be a whole number >= 1 (None: the backend's default), got {!r}".format(
                threads))
        self._closed = False
        self.source = load_source(weights)
        card = self.card = self.source.card
        self.input_size: Tuple[int, int] = parse_size(input_size if input_size is not None else card.input_size)
        self.resize_policy = resize_policy or card.resize_policy or "stretch"
        if self.resize_policy not in POLICIES:
            raise ValueError("unknown resize policy {!r}; expected one of {}".format(self.resize_policy, POLICIES))
        if card.label_upsampling not in LABEL_UPSAMPLINGS:
            raise ValueError("model card label_upsampling must be 'nearest' or 'bilinear', got {!r}".format(
                card.label_upsampling))
        # Nearest-neighbour resize of labels (default) lets the graph return uint8 labels;
        # a card asking for bilinear logits upsampling needs the logits on the host.
        self._graph_output = "logits" if card.label_upsampling == "bilinear" else "labels"
        self.confidence = bool(confidence)
        validated = validated_precisions(self.source) if precision in ("auto", "int8") else {}
        if "int8" in validated:
            backend_options.setdefault("int8", validated["int8"])
        elif (card.precisions or {}).get("int8") and calibration is None:
            # An int8 graph built by `enet-seg quantize` is found through the record, validated or not.
            backend_options.setdefault("int8", card.precisions["int8"])
        self._backend: Backend = create_backend(
            self.source, self.input_size, backend=backend, device=device, precision=precision, strict=strict,
            threads=threads, cache_dir=cache_dir, calibration=calibration, output=self._graph_output,
            with_confidence=self.confidence, resize_policy=self.resize_policy,
            validated=validated if precision == "auto" else {}, **backend_options)
        self.selection_reason: str = selection_reason(self._backend, backend, precision)
        self._model_order = card.normalization.channel_order
        self._fill = pad_colour(card.normalization.mean)
        self._lut = palette_lut(card.palette)
        self._geometries: Dict[Tuple[int, int], Geometry] = {}
        self._lock = threading.Lock()
        for _ in range(max(0, int(warmup))):
            w, h = self.input_size
            self._infer(np.zeros((1, h, w, 3), np.uint8))

    # -- facts ----------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The backend instance (details, skipped candidates)."""
        return self._backend

    @property
    def backend_name(self) -> str:
        """The backend's registry name: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``."""
        return self._backend.name

    @property
    def device(self) -> str:
        """Device the backend runs on."""
        return self._backend.device

    @property
    def precision(self) -> str:
        """Precision the backend runs at."""
        return self._backend.precision

    @property
    def class_names(self) -> List[str]:
        """Class name per label id."""
        return list(self.card.class_names)

    @property
    def palette(self) -> List[List[int]]:
        """RGB colour per label id."""
        return [list(c) for c in self.card.palette]

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.card.num_classes

    def info(self) -> Dict[str, Any]:
        """Facts for logs and diagnostics."""
        return {"arch": self.card.arch, "backend": self.backend_name, "device": self.device,
                "precision": self.precision, "input_size": list(self.input_size),
                "resize_policy": self.resize_policy, "details": dict(self._backend.details),
                "skipped": dict(self._backend.skipped), "selection_reason": self.selection_reason}

    def geometry_for(self, width: int, height: int) -> Geometry:
        """The frame <-> model mapping for frames of ``width`` x ``height`` (cached)."""
        key = (int(width), int(height))
        geometry = self._geometries.get(key)
        if geometry is None:
            geometry = plan(key, self.input_size, self.resize_policy)
            if len(self._geometries) < 64:  # cameras have one size; do not grow without bound
                self._geometries[key] = geometry
        return geometry

    # -- inference ------------------------------------------------------------------------
    def segment(self, image: np.ndarray, channel_order: str = "rgb", output: str = "input") -> Result:
        """Segment one (H, W, 3) uint8 frame.

        Args:
            image: C-contiguous (H, W, 3) uint8 array; any size (huge frames are downscaled
                for the network and the labels come back at full size).
            channel_order: the image's channel order, ``rgb`` or ``bgr``.
            output: ``input`` (labels at the frame's resolution) or ``model`` (at the network
                resolution; see ``Result.geometry`` for the mapping).

        Raises:
            ValueError: bad image (dtype, shape, channels, empty, non-contiguous) or arguments.
        """
        return self.segment_batch([image], channel_order, output)[0]

    def segment_batch(self, images: Sequence[np.ndarray], channel_order: str = "rgb",
                      output: str = "input") -> List[Result]:
        """Segment several frames in one backend call per ``max_batch`` (see :meth:`segment`)."""
        order = check_channel_order(channel_order)
        if output not in OUTPUT_RESOLUTIONS:
            raise ValueError("output must be one of {}, got {!r}".format(OUTPUT_RESOLUTIONS, output))
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("segment_batch takes a sequence of (H, W, 3) images; use segment() for one")
        if len(images) == 0:
            return []
        w, h = self.input_size
        batch = np.empty((len(images), h, w, 3), np.uint8)
        geometries = []
        swap = order != self._model_order
        for i, image in enumerate(images):
            check_image(image, "image" if len(images) == 1 else "image {}".format(i))
            geometry = self.geometry_for(image.shape[1], image.shape[0])
            to_model_input(image, geometry, swap, self._fill, out=batch[i])
            geometries.append(geometry)
        step = self._backend.max_batch or len(images)
        outs: Dict[str, List[np.ndarray]] = {}
        for start in range(0, len(images), step):
            for name, arr in self._infer(batch[start:start + step]).items():
                outs.setdefault(name, []).append(arr)
        merged = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in outs.items()}
        return [self._result(merged, i, geometries[i], output) for i in range(len(images))]

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Segmenter was closed (its backend released); make a new one")
            return self._backend.infer(batch)

    def _result(self, outs: Dict[str, np.ndarray], i: int, geometry: Geometry, output: str) -> Result:
        if "logits" in outs:
            logits = outs["logits"][i]
            if output == "input":
                labels, conf = logits_to_input_resolution(logits, geometry)
            else:
                peak = logits.max(axis=0, keepdims=True)
                labels = logits.argmax(axis=0).astype(np.uint8)
                conf = (1.0 / np.exp(logits - peak).sum(axis=0)).astype(np.float32)
            return Result(labels, conf if self.confidence else None, geometry, output, self.card.class_names, self._lut)
        labels = outs["labels"][i]
        conf = outs["confidence"][i] if "confidence" in outs else None
        if output == "input":
            labels = to_input_resolution(labels, geometry, UNKNOWN)
            if conf is not None:
                conf = to_input_resolution(conf, geometry, 0.0)
        return Result(labels, conf, geometry, output, self.card.class_names, self._lut)

    def close(self) -> None:
        """Release the backend; segmenting afterwards raises RuntimeError."""
        with self._lock:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Segmenter({} {}x{}, {})".format(self.card.arch, self.input_size[0], self.input_size[1],
                                                self._backend.describe())
