"""Weights files: safetensors tensors + a JSON model card in the safetensors metadata.

A model card says everything needed to run and interpret a network without guessing:
architecture and options, classes, palette, label mapping, input size and normalisation,
dataset, training recipe and measured metrics. :func:`load_model` never unpickles.
A human-readable copy of the card is written next to the weights as ``<stem>.card.json``;
the copy inside the safetensors file is the one that is read.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .data.labels import LabelSpec

LOG = logging.getLogger(__name__)
CARD_KEY = "enet_seg_ros.card"
CARD_FORMAT = 1
PathLike = Union[str, os.PathLike]


class WeightsError(ValueError):
    """A weights file is missing, corrupt or does not match its card."""


# How frames are fitted to the network input, and how labels come back to the frame (the card's
# resize_policy / label_upsampling; the engine implements them).
RESIZE_POLICIES = ("stretch", "letterbox", "center_crop")
LABEL_UPSAMPLINGS = ("nearest", "bilinear")
# Labels are uint8 and 255 marks frame pixels the network did not see: at most 255 classes.
UNKNOWN_LABEL = 255


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _finite(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


@dataclass
class Normalization:
    """``y = (x[channel_order] - mean) / std * scale`` with ``x`` the 0..255 image."""

    channel_order: str = "rgb"
    mean: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: List[float] = field(default_factory=lambda: [255.0, 255.0, 255.0])
    scale: float = 1.0


@dataclass
class ModelCard:
    """Everything needed to run a network and interpret its output."""

    arch: str
    num_classes: int
    class_names: List[str]
    palette: List[List[int]]
    input_size: List[int]  # [width, height] the network was trained at
    normalization: Normalization = field(default_factory=Normalization)
    options: Dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    ignore_index: Optional[int] = None  # output class that means "void" (None: all real)
    train_id_to_id: Optional[List[int]] = None  # output class -> dataset label id
    resize_policy: str = "stretch"
    label_upsampling: str = "nearest"  # labels resized nearest at camera size (not logits)
    recipe: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    # Lossy precisions validated for these weights (e.g. "int8": accuracy-guard record written by
    # `enet-seg quantize --validate --record`); precision "auto" only picks a validated one.
    precisions: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    format: int = CARD_FORMAT

    def validate(self) -> None:
        """Raise :class:`WeightsError` if the card is inconsistent (checked when it is written
        and read, so a bad card fails where it is made, not in a robot's camera callback)."""
        from .nets import list_archs

        if self.arch not in list_archs():
            raise WeightsError("card arch must be one of {}, got {!r}".format(list_archs(), self.arch))
        if not _whole(self.num_classes) or not 1 <= self.num_classes < UNKNOWN_LABEL:
            raise WeightsError("card num_classes must be a whole number in 1..{}, got {!r}".format(
                UNKNOWN_LABEL - 1, self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise WeightsError("card has {} class names for {} classes".format(len(self.class_names), self.num_classes))
        if (len(self.palette) != self.num_classes or any(len(c) != 3 for c in self.palette)
                or not all(_whole(v) and 0 <= v <= 255 for c in self.palette for v in c)):
            raise WeightsError("card palette must have one RGB triple of 0..255 per class")
        if len(self.input_size) != 2 or not all(_whole(v) and v >= 1 for v in self.input_size):
            raise WeightsError("card input_size must be [width, height] whole numbers >= 1, got {}".format(
                self.input_size))
        n = self.normalization
        if (not isinstance(n, Normalization) or n.channel_order not in ("rgb", "bgr") or len(n.mean) != 3
                or len(n.std) != 3 or not _finite(list(n.mean) + list(n.std) + [n.scale]) or min(n.std) <= 0
                or n.scale <= 0):
            raise WeightsError("card normalization must be rgb/bgr with 3 finite means, 3 stds > 0 and a scale > 0, "
                               "got {}".format(n))
        if not isinstance(self.options, dict):
            raise WeightsError("card options must be a mapping, got {!r}".format(self.options))
        if self.resize_policy not in RESIZE_POLICIES:
            raise WeightsError("card resize_policy must be one of {}, got {!r}".format(RESIZE_POLICIES,
                                                                                       self.resize_policy))
        if self.label_upsampling not in LABEL_UPSAMPLINGS:
            raise WeightsError("card label_upsampling must be one of {}, got {!r}".format(LABEL_UPSAMPLINGS,
                                                                                          self.label_upsampling))
        if self.train_id_to_id is not None and len(self.train_id_to_id) != self.num_classes:
            raise WeightsError("card train_id_to_id must have one entry per class")

    def to_json(self) -> str:
        """Serialise to JSON (stable key order)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        """Parse a card; unknown keys are an error (they mean a newer format)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise WeightsError("model card is not a JSON object")
        if data.get("format", CARD_FORMAT) > CARD_FORMAT:
            raise WeightsError("model card format {} is newer than supported {}".format(data["format"], CARD_FORMAT))
        data["normalization"] = Normalization(**data.get("normalization", {}))
        card = cls(**data)
        card.validate()
        return card

    @classmethod
    def for_dataset(cls, arch: str, spec: LabelSpec, input_size: Sequence[int], *,
                    normalization: Optional[Normalization] = None, extra_classes: Sequence[str] = (),
                    **kwargs: Any) -> "ModelCard":
        """A card whose classes come from ``spec`` (plus optional trailing ``extra_classes``).

        Extra classes (e.g. a void output some published checkpoints have) get a black colour
        and become the card's ``ignore_index``.
        """
        names = list(spec.class_names) + list(extra_classes)
        palette = [list(c) for c in spec.palette] + [[0, 0, 0] for _ in extra_classes]
        mapping = None
        if spec.train_id_to_id is not None:
            # Extra classes map to dataset id 0 ("unlabeled" in Cityscapes).
            mapping = list(spec.train_id_to_id) + [0 for _ in extra_classes]
        ignore = len(spec.class_names) if extra_classes else None
        return cls(arch=arch, num_classes=len(names), class_names=names, palette=palette,
                   input_size=list(input_size), normalization=normalization or Normalization(),
                   dataset=spec.dataset, ignore_index=ignore, train_id_to_id=mapping, **kwargs)


# Weights smaller than this are written and loaded as zero (see flush_negligible).
NEGLIGIBLE_WEIGHT = 2.0 ** -100  # ~7.9e-31


def _negligible(tensor):
    """Mask of a floating-point tensor's nonzero values below :data:`NEGLIGIBLE_WEIGHT` (float16:
    below its own smallest normal, as its normal values are all far larger)."""
    import torch

    limit = max(NEGLIGIBLE_WEIGHT, torch.finfo(tensor.dtype).tiny)
    return (tensor != 0) & (tensor.abs() < limit)


def flush_negligible(state: Dict[str, Any]) -> int:
    """Replace floating-point values below :data:`NEGLIGIBLE_WEIGHT` in magnitude by zero; returns how many.

    Weights that training drove to the edge of zero (weight decay on channels that stopped
    learning) end up subnormal (below float32's smallest normal, 1.2e-38) or just above it. On x86
    a multiply with a subnormal operand or result takes a slow microcode path: the first
    from-scratch ERFNet (14,673 subnormal weights and 13,735 more below 2^-100, of 2.07 M) ran its
    fp32 forward 3.5x slower in PyTorch and ONNX Runtime (BENCHMARKS.md, run L). Below 2^-100 a
    weight's product with any activation under 1e7 is less than 2^-76, far under float32's
    resolution of a logit, so zero computes the same labels; above it, products with activations
    down to 2^-26 (1.5e-8) stay normal. Float16 tensors keep their normal values (their threshold
    is their own smallest normal). Tensors are replaced, not modified, so a state dict that shares
    a live model's parameters leaves the model as it was.
    """
    import torch

    count = 0
    for key, value in list(state.items()):
        if not (torch.is_tensor(value) and value.is_floating_point()):
            continue
        negligible = _negligible(value)
        found = int(negligible.sum())
        if found:
            state[key] = value.masked_fill(negligible, 0)
            count += found
    return count


def zero_negligible_(module) -> int:
    """In place: set a live module's floating-point parameters and buffers below
    :data:`NEGLIGIBLE_WEIGHT` to zero (as :func:`flush_negligible` does for a state dict); returns
    how many.

    The trainer calls it after every epoch: weight decay keeps shrinking weights that stopped
    learning, and once they are subnormal every fp32 training step on x86 slows down (the first
    from-scratch ERFNet's weights made an fp32 step 3x slower; bf16 autocast hides it).
    """
    import itertools

    import torch

    count = 0
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if not tensor.is_floating_point():
                continue
            negligible = _negligible(tensor)
            found = int(negligible.sum())
            if found:
                tensor.masked_fill_(negligible, 0)
                count += found
    return count


def save_model(path: PathLike, model, card: ModelCard, write_card_json: bool = True) -> Path:
    """Write ``model``'s state dict as safetensors with ``card`` in its metadata.

    Negligible values (subnormal and near it) are written as zero (:func:`flush_negligible`).
    """
    from safetensors.torch import save_file

    card.validate()
    path = Path(path)
    check_model_matches_card(model, card, str(path))  # never write a file load_model would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    flushed = flush_negligible(state)
    if flushed:
        LOG.info("%s: %d negligible weights (below %.1e) written as zero", path, flushed, NEGLIGIBLE_WEIGHT)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={CARD_KEY: card.to_json()})
    try:
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written weights file
    finally:
        tmp.unlink(missing_ok=True)
    if write_card_json:
        card_path = path.with_name(path.stem + ".card.json")
        card_path.write_text(json.dumps(json.loads(card.to_json()), indent=2, sort_keys=True) + "\n")
    return path


def read_card(path: PathLike) -> ModelCard:
    """Read only the model card of a weights file (cheap: no tensors are loaded)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError("{}: not a readable safetensors file ({})".format(path, exc)) from None
    if CARD_KEY not in meta:
        raise WeightsError("{}: no model card in the safetensors metadata (key {!r})".format(path, CARD_KEY))
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except (TypeError, ValueError) as exc:
        raise WeightsError("{}: invalid model card: {}".format(path, exc)) from None


def load_model(path: PathLike, map_location: str = "cpu"):
    """Load weights + card; returns ``(model, card)`` with the model in eval mode.

    Negligible values (files written by other tools or before :func:`save_model` flushed them)
    are loaded as zero, with a warning: they only slow the CPU down (:func:`flush_negligible`).

    Raises :class:`WeightsError` naming the file for a missing/corrupt file, an invalid card,
    or tensors that do not match the card's architecture (strict key and shape matching).
    """
    from safetensors.torch import load_file

    card = read_card(path)
    try:
        state = load_file(str(path), device=map_location)
    except Exception as exc:
        raise WeightsError("{}: cannot read tensors ({})".format(path, exc)) from None
    model = _model_for(card, str(path))
    check_state_dict(model, state, str(path))
    flushed = flush_negligible(state)
    if flushed:
        LOG.warning("%s: %d negligible weights (below %.1e) loaded as zero (they would only slow fp32 inference "
                    "on x86; re-save the file to drop this warning)", path, flushed, NEGLIGIBLE_WEIGHT)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, card


def check_model_matches_card(model, card: ModelCard, name: str) -> None:
    """Raise :class:`WeightsError` unless ``model`` is the network ``card`` describes (its arch,
    class count and options build a network with the same tensors): what :func:`load_model`
    would find wrong when reading such a file back."""
    check_state_dict(_model_for(card, name), model.state_dict(), name)


def _model_for(card: ModelCard, name: str):
    """An untrained network as ``card`` describes it; WeightsError naming ``name`` if it builds none."""
    from .nets import build_model

    try:
        return build_model(card.arch, card.num_classes, **card.options)
    except (TypeError, ValueError) as exc:
        raise WeightsError("{}: card arch/options do not build a model: {}".format(name, exc)) from None


def check_state_dict(model, state: Dict[str, Any], name: str) -> None:
    """Raise :class:`WeightsError` listing missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append("missing {} keys (e.g. {})".format(len(missing), missing[:3]))
        if unexpected:
            parts.append("unexpected {} keys (e.g. {})".format(len(unexpected), unexpected[:3]))
        if wrong:
            k = wrong[0]
            parts.append("{} shape mismatches (e.g. {}: file {} vs model {})".format(
                len(wrong), k, tuple(state[k].shape), tuple(expected[k].shape)))
        raise WeightsError("{}: weights do not match the card's architecture: {}".format(name, "; ".join(parts)))


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError("{}: weights file not found".format(path))
    return path


def shipped_model_dirs() -> List[Path]:
    """Where shipped models live: the ROS share directory (colcon install), then the source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("enet_seg_ros")) / "models")
    except Exception:  # not installed through colcon, or ament not available
        pass
    candidates.append(REPO_MODELS_DIR)
    return candidates


def shipped_models() -> List[str]:
    """Names of the shipped models (``enet_camvid``, ...), usable wherever weights are asked for."""
    names = set()
    for folder in shipped_model_dirs():
        names.update(p.name[:-len(".safetensors")] for p in folder.glob("*.safetensors"))
    return sorted(names)


def default_weights_path() -> Path:
    """The package's shipped default model (ENet trained on CamVid)."""
    return resolve_weights(None)


def _find_shipped(file_name: str) -> Optional[Path]:
    for folder in shipped_model_dirs():
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def resolve_weights(spec: Optional[PathLike]) -> Path:
    """A weights file from a path, a shipped model name (``erfnet_camvid``) or None / "" (the default).

    A path that exists wins over a shipped name; anything else raises :class:`WeightsError`
    naming what was asked for and, for a bare name, the shipped models.
    """
    if spec is None or str(spec) == "":
        found = _find_shipped(DEFAULT_MODEL_FILE)
        if found is None:
            raise WeightsError("default model {} not found in {}".format(
                DEFAULT_MODEL_FILE, [str(c) for c in shipped_model_dirs()]))
        return found
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise WeightsError("{}: is a folder, not a weights file".format(path))
    text = str(spec)
    if "/" in text or "\\" in text:
        raise WeightsError("{}: weights file not found".format(path))
    found = _find_shipped(text if text.endswith(".safetensors") else text + ".safetensors")
    if found is None:
        raise WeightsError("{}: weights file not found, and not a shipped model (shipped: {})".format(
            text, ", ".join(shipped_models()) or "none"))
    return found


DEFAULT_MODEL_FILE = "enet_camvid.safetensors"
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # beside the source tree
