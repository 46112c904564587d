"""Inference engine: :class:`Segmenter` on torch, ONNX Runtime, OpenVINO or TensorRT backends.

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
from .select import AUTO_CHAIN, BACKENDS, create_backend
from .source import ModelSource, load_source

__all__ = ["Segmenter", "Result", "Geometry", "Preprocess", "plan", "POLICIES", "UNKNOWN", "Backend", "BackendUnavailable",
           "BACKENDS", "AUTO_CHAIN", "create_backend", "ModelSource", "load_source", "parse_size"]
