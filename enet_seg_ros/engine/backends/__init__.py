"""Inference backends behind one interface (:class:`~enet_seg_ros.engine.backends.base.Backend`).

Each backend module imports its library lazily, so a missing TensorRT or onnxruntime only
disables that backend.
"""
