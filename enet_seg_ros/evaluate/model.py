"""The model side of an evaluation: check a model card against a dataset, map its outputs to
the dataset's train ids, and load a segmenter for it."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..data.labels import LabelSpec, get_label_spec
from ..engine import Segmenter
from ..engine.preprocess import UNKNOWN
from ..weights import read_card, resolve_weights

LOG = logging.getLogger(__name__)


def check_model_matches(card: Any, spec: LabelSpec, weights: Any = "") -> None:
    """Refuse a model whose classes are not the dataset's train ids (the scores would be meaningless).

    The card may have one extra trailing "void" output (``card.ignore_index``), as some
    published checkpoints do.
    """
    real = card.num_classes - (1 if card.ignore_index is not None and card.ignore_index >= spec.num_classes else 0)
    if real != spec.num_classes:
        raise ValueError("model {}{} predicts {} classes but {} has {}; pass the matching --dataset".format(
            card.arch, " ({})".format(weights) if weights else "", card.num_classes, spec.dataset, spec.num_classes))
    names = [str(n).lower() for n in card.class_names[: spec.num_classes]]
    if names != [n.lower() for n in spec.class_names]:
        LOG.warning("model class names %s differ from %s's %s; scoring by class index", names, spec.dataset,
                    list(spec.class_names))


def prediction_lut(card: Any, spec: LabelSpec) -> np.ndarray:
    """256-entry uint8 table: model output value -> the evaluator's train id.

    Real classes map to themselves; the card's void output and :data:`UNKNOWN` become the
    dataset's ignore index ("no class", a miss). Other values are left as they are so the
    evaluator rejects them loudly.
    """
    lut = np.arange(256, dtype=np.uint8)
    if card.ignore_index is not None and 0 <= card.ignore_index < 256:
        lut[card.ignore_index] = spec.ignore_index
    lut[UNKNOWN] = spec.ignore_index
    return lut


def model_description(card: Any, weights: Any, input_size: Optional[Sequence[int]] = None) -> str:
    """``enet camvid 480x360 (enet_camvid.safetensors)`` for reports (``input_size``: the one in use)."""
    size = "x".join(str(int(v)) for v in (input_size or card.input_size))
    return "{} {} {} ({})".format(card.arch, card.dataset or "", size, Path(str(weights)).name).replace("  ", " ")



@dataclass
class LoadedModel:
    """A segmenter with what the evaluation needs to know about it."""

    segmenter: Any
    card: Any
    spec: LabelSpec
    pred_lut: np.ndarray
    description: str


def card_for_dataset(weights: Optional[str], dataset: Optional[str],
                     hint: str = "pass --dataset") -> Tuple[Path, Any, LabelSpec]:
    """``(weights path, model card, label spec)``, the card checked against the dataset (no model built).

    ``dataset`` None or empty means the card's dataset; ``weights`` None or empty means the
    shipped default model; ``hint`` says how to name a dataset when the card names none.
    """
    path = resolve_weights(weights)
    card = read_card(path)  # WeightsError (a ValueError) naming the file
    name = dataset or card.dataset
    if not name:
        raise ValueError("the model card of {} names no dataset; {}".format(path, hint))
    spec = get_label_spec(name)
    check_model_matches(card, spec, path)
    return path, card, spec


def load_for_dataset(weights: Optional[str], dataset: Optional[str], backend: str = "auto",
                     input_size: Optional[Tuple[int, int]] = None, device: Optional[str] = None,
                     threads: Optional[int] = None) -> LoadedModel:
    """Read the card (cheap), check it against the dataset, then build the segmenter.

    ``dataset`` None means the card's dataset; ``weights`` None means the shipped default model.
    """
    path, card, spec = card_for_dataset(weights, dataset)
    segmenter = Segmenter(str(path), backend=backend or "auto", device=device, input_size=input_size,
                          threads=threads)
    return LoadedModel(segmenter, card, spec, prediction_lut(card, spec),
                       model_description(card, path, segmenter.input_size))


