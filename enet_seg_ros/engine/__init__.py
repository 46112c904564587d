"""Inference engine: :class:`Segmenter` on torch, ONNX Runtime, OpenVINO or TensorRT backends (:mod:`.registry`).

>>> from enet_seg_ros.engine import Segmenter
>>> seg = Segmenter("models/enet_camvid.safetensors", backend="auto")   # doctest: +SKIP
>>> result = seg.segment(rgb_frame)                                      # doctest: +SKIP
>>> result.labels, result.color(), result.overlay(rgb_frame, 0.5)        # doctest: +SKIP
"""
from __future__ import annotations

from .backends.base import Backend, BackendUnavailable
from .preprocess import POLICIES, UNKNOWN, Geometry, Preprocess, plan
from .result import Result
from .segmenter import Segmenter, parse_size
from .registry import AUTO_CHAIN, BACKENDS, backend_choices, create_backend, get_backend, list_backends, probe_all
from .source import ModelSource, load_source

__all__ = ["Segmenter", "Result", "Geometry", "Preprocess", "plan", "POLICIES", "UNKNOWN", "Backend",
           "BackendUnavailable", "BACKENDS", "AUTO_CHAIN", "create_backend", "list_backends", "backend_choices",
           "get_backend", "probe_all", "ModelSource", "load_source", "parse_size"]
