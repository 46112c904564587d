"""Where a segmenter's network comes from: a weights file or an already loaded (model, card)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from ..weights import ModelCard, check_model_matches_card, load_model, resolve_weights

PathLike = Union[str, os.PathLike]


@dataclass
class ModelSource:
    """A network + card + the digest that keys every cached artefact built from it.

    ``sha256`` is a digest of the network's state dict and card (the card's ``precisions``
    records excluded: recording a validation result must not invalidate cached graphs), so
    two different models never share a cache entry.
    """

    model: Any  # torch.nn.Module in eval mode, BN not folded
    card: ModelCard
    sha256: str
    path: Optional[Path] = None

    @property
    def arch(self) -> str:
        """Architecture name from the card."""
        return self.card.arch

    def fresh_model(self):
        """A private copy of the network (backends fold / cast / move it freely)."""
        return copy.deepcopy(self.model).eval()


def load_source(weights: Union[PathLike, Tuple[Any, ModelCard], ModelSource]) -> ModelSource:
    """Accept a weights path, a ``(model, card)`` pair or a :class:`ModelSource`."""
    if isinstance(weights, ModelSource):
        return weights
    if isinstance(weights, tuple) and len(weights) == 2 and isinstance(weights[1], ModelCard):
        model, card = weights
        card.validate()
        check_model_matches_card(model, card, "the (model, card) pair")
        return ModelSource(model.eval(), card, state_digest(model, card))
    if isinstance(weights, (str, os.PathLike)):
        path = resolve_weights(weights)  # a file, or a shipped model name
        model, card = load_model(path)  # raises WeightsError naming the file
        return ModelSource(model, card, state_digest(model, card), path)
    raise ValueError("weights must be a path to a .safetensors file or a (model, ModelCard) pair, got {}".format(
        type(weights).__name__))


def state_digest(model, card: ModelCard) -> str:
    """SHA-256 over a model's state dict (names, shapes, bytes) and its card (without ``precisions``)."""
    card_data = json.loads(card.to_json())
    card_data.pop("precisions", None)
    return hash_tensors(hashlib.sha256(json.dumps(card_data, sort_keys=True).encode()), model).hexdigest()


def hash_tensors(digest, model):
    """Feed a model's state dict (sorted names, dtypes, shapes, bytes) into ``digest``; returns it."""
    for name, tensor in sorted(model.state_dict().items()):
        arr = tensor.detach().cpu().contiguous().numpy()
        digest.update(name.encode())
        digest.update(str((arr.dtype.str, arr.shape)).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest
