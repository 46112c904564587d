"""The inference graph every backend runs: uint8 frames in, uint8 labels out.

Putting normalisation and argmax inside the graph means the host only copies uint8 images in
and uint8 labels out (4x less memory traffic than float tensors both ways), and the backend
(ONNX Runtime, OpenVINO, TensorRT, torch) fuses the cheap elementwise work with its kernels.

Graph inputs / outputs (names used by ONNX, OpenVINO and TensorRT):

- ``image``: (N, H, W, 3) uint8, channel order of the model card (NHWC, as cameras deliver).
- ``labels``: (N, H, W) uint8 argmax class ids at the network resolution.
- ``confidence`` (``with_confidence``): (N, H, W) float32 max softmax probability.
- ``logits`` (``output="logits"``): (N, C, H, W) float32, for cards that ask for bilinear
  upsampling of logits at the camera resolution.

Two spellings of the argmax give identical labels (the first maximal class wins, as in
``torch.argmax``): ``native`` (one ``ArgMax`` op) and ``compare`` (a running maximum over the
class planes with a strict greater-than, so a later class replaces the best only when it is
larger). OpenVINO's CPU plugin runs ``ArgMax`` as a TopK that reads the channel-strided logits
slowly (4.7 of 26 ms for ESPNet at 640x360) but fuses the compare chain into one elementwise
kernel (~1 ms); ONNX Runtime and torch are faster with ``native``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from ..weights import ModelCard
from .preprocess import Preprocess

INPUT_NAME = "image"
OUTPUTS = ("labels", "confidence", "logits")
ARGMAX_MODES = ("native", "compare")


class InferenceGraph(nn.Module):
    """Wrap a segmentation network with in-graph normalisation and argmax.

    Args:
        model: network returning (N, C, H, W) logits (BN already folded for speed).
        card: model card (normalisation facts).
        output: ``"labels"`` or ``"logits"``.
        with_confidence: also return the max softmax probability (``output="labels"`` only).
        argmax: ``native`` or ``compare`` (same labels; see the module docstring).
    """

    def __init__(self, model: nn.Module, card: ModelCard, output: str = "labels",
                 with_confidence: bool = False, argmax: str = "native") -> None:
        super().__init__()
        if output not in ("labels", "logits"):
            raise ValueError("output must be 'labels' or 'logits', got {!r}".format(output))
        if argmax not in ARGMAX_MODES:
            raise ValueError("argmax must be one of {}, got {!r}".format(ARGMAX_MODES, argmax))
        self.argmax = argmax
        self.model = model
        self.output = output
        self.with_confidence = bool(with_confidence) and output == "labels"
        pre = Preprocess.from_card(card)
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("factor", torch.from_numpy(pre.factor).view(1, 3, 1, 1), persistent=False)

    def output_names(self) -> List[str]:
        """Names of the graph outputs, in order."""
        if self.output == "logits":
            return ["logits"]
        return ["labels", "confidence"] if self.with_confidence else ["labels"]

    def forward(self, image: torch.Tensor):  # noqa: D102
        # NHWC -> NCHW is a free view; its strides are exactly channels_last.
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.factor
        dtype = next(self.model.parameters()).dtype
        logits = self.model(x.to(dtype))
        if self.output == "logits":
            return logits.float()
        labels = compare_argmax(logits) if self.argmax == "compare" else logits.argmax(dim=1).to(torch.uint8)
        if not self.with_confidence:
            return labels
        return labels, _max_softmax(logits.float())


def compare_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) uint8 argmax as a running maximum; ties keep the first class."""
    best = logits[:, 0]
    labels = torch.zeros_like(best, dtype=torch.uint8)
    for c in range(1, logits.shape[1]):
        plane = logits[:, c]
        labels = torch.where(plane > best, torch.full_like(labels, c), labels)
        best = torch.maximum(best, plane)
    return labels


def _max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """max_c softmax(logits)_c = 1 / sum_c exp(l_c - max l): one reduction, no full softmax tensor."""
    peak = logits.amax(dim=1, keepdim=True)
    return torch.reciprocal(torch.exp(logits - peak).sum(dim=1))


def split_outputs(outputs, graph_outputs: Tuple[str, ...]):
    """Normalise a backend's raw outputs to a dict keyed by output name."""
    if not isinstance(outputs, (list, tuple)):
        outputs = (outputs,)
    return dict(zip(graph_outputs, outputs))
