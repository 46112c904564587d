"""ONNX export of the inference graph and ONNX Runtime int8 quantisation.

Two graph flavours are exported:

- ``full`` (default, used by the ONNX Runtime backend and ``enet-seg export``): the
  :class:`~enet_seg_ros.engine.graph.InferenceGraph`, uint8 NHWC ``image`` in, uint8
  ``labels`` (+ ``confidence``) out, the model card in the ONNX metadata.
- ``network`` (used to build TensorRT engines): the bare network, float32 NCHW normalised
  ``input`` in, ``logits`` out, static batch 1; normalisation and argmax run in torch on the GPU.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..nets import fold_batchnorm, split_concat_norms
from .graph import INPUT_NAME, InferenceGraph
from .source import ModelSource

LOG = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
OPSET = 17
CARD_METADATA_KEY = "enet_seg_ros.card"


def legacy_exporter_kwargs(export_fn=None) -> dict:
    """Keyword arguments that select the TorchScript (legacy) ONNX exporter on this torch.

    ``torch.onnx.export`` gained its ``dynamo`` parameter in torch 2.5 (the torch 2.5 ONNX docs:
    "PyTorch 2.5.0 or newer is required" for ``dynamo=True``; 2.5's ``torch/onnx/utils.py``
    signature adds ``dynamo: bool = False`` after ``autograd_inlining``) and defaults it to
    ``True`` from torch 2.9. Before 2.5 the signature ends at ``autograd_inlining`` with no
    ``**kwargs``, so ``dynamo=False`` is a ``TypeError`` there; NVIDIA's JetPack 6 torch wheels
    include such versions (its "PyTorch for Jetson" page: 2.1-2.3 for JetPack 6.0, 2.4 beside
    2.5 and 2.6rc1 for JetPack 6.1 / 6.2).
    So ``dynamo=False`` is passed only where the signature has it; without the parameter the
    legacy exporter is the only one.
    """
    import inspect

    import torch

    fn = export_fn if export_fn is not None else torch.onnx.export
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a C-implemented or wrapped callable: assume the old API
        return {}
    return {"dynamo": False} if "dynamo" in params else {}


def export_onnx_bytes(source: ModelSource, input_size: Tuple[int, int], flavour: str = "full",
                      output: str = "labels", with_confidence: bool = False, dynamic_batch: bool = True,
                      argmax: str = "native", half: bool = False, device: Optional[str] = None) -> bytes:
    """Serialized ONNX (opset 17, legacy tracer) of the network's inference form (BN folded into the
    convolutions, ESPNet's BN + PReLU on concatenations applied per part: :mod:`..nets.fold`); see
    the module docstring.

    ``argmax`` picks the spelling of the in-graph argmax (``full`` flavour; see ``graph.py``).
    ``half`` (``network`` flavour only): weights, input and logits in float16, traced on
    ``device`` (a CUDA device: fp16 convolutions need one on older torch). TensorRT 11 builds
    fp16 engines only from such a typed graph (its ``BuilderFlag.FP16`` is gone).
    """
    import onnx
    import torch

    w, h = int(input_size[0]), int(input_size[1])
    model = split_concat_norms(fold_batchnorm(source.fresh_model()))
    if half and flavour != "network":
        raise ValueError("half=True exports the 'network' flavour only")
    if flavour == "full":
        module = InferenceGraph(model, source.card, output=output, with_confidence=with_confidence,
                                argmax=argmax).eval()
        example = torch.zeros(1, h, w, 3, dtype=torch.uint8)
        input_names, output_names = [INPUT_NAME], module.output_names()
    elif flavour == "network":
        dtype = torch.float16 if half else torch.float32
        module = model.to(device=device or "cpu", dtype=dtype).eval()
        example = torch.zeros(1, 3, h, w, dtype=dtype, device=device or "cpu")
        input_names, output_names = ["input"], ["logits"]
        dynamic_batch = False
    else:
        raise ValueError("unknown ONNX flavour {!r}".format(flavour))
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in input_names + output_names}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python ints from shapes (static per export, by design).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, opset_version=OPSET, **legacy_exporter_kwargs(),
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    proto = remove_noop_slices(onnx.load_from_string(buf.getvalue()))
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, source.card.to_json()
    entry = proto.metadata_props.add()
    entry.key, entry.value = "enet_seg_ros.weights_sha256", source.sha256
    proto.producer_name = "enet_seg_ros"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def remove_noop_slices(proto):
    """Drop ``Slice`` nodes whose output has exactly the input's shape.

    The networks crop their padded output back to the input size (``out[:, :, :h, :w]``); for
    sizes that need no padding that crop is a free view in torch but a full copy of the logits
    in ONNX Runtime (~2 x 3 ms at 640x360 with 20 classes). Shapes come from ONNX shape
    inference (symbolic batch dims compare by name), so only provable no-ops are removed.
    """
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    consts = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    graph_outputs = {o.name for o in proto.graph.output}
    rename = {}
    keep = []
    for node in proto.graph.node:
        src = shapes.get(node.input[0]) if node.op_type == "Slice" else None
        dst = shapes.get(node.output[0]) if node.op_type == "Slice" else None
        steps = consts.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if (src is not None and src == dst and None not in src and node.output[0] not in graph_outputs
                and (steps is None or all(int(v) == 1 for v in steps.ravel()))):
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        keep.append(node)
    if not rename:
        return proto
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # Constants that only fed the removed slices go too (ONNX Runtime warns about them).
    used = {name for node in keep for name in node.input} | graph_outputs
    keep = [n for n in keep if n.op_type != "Constant" or any(o in used for o in n.output)]
    unused = [init for init in proto.graph.initializer if init.name not in used]
    for init in unused:
        proto.graph.initializer.remove(init)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def read_onnx_card(path: PathLike):
    """The model card stored in an exported ONNX file's metadata (``None`` if absent)."""
    import onnx

    from ..weights import ModelCard

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    return None


def quantize_int8(fp32_onnx: PathLike, out_path: PathLike, frames: Sequence[np.ndarray],
                  op_types: Optional[Sequence[str]] = None) -> None:
    """Static int8 Q/DQ quantisation of a ``full`` graph (kept name; see :func:`.quantize.quantize_qdq`)."""
    from .quantize import INT8_OPS, QuantSettings, quantize_qdq

    quantize_qdq(fp32_onnx, out_path, frames, QuantSettings(op_types=tuple(op_types or INT8_OPS)))

