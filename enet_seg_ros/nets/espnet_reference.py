"""Convert the ESPNet authors' published PyTorch checkpoints to this package's module names.

The published state dicts (MIT licence, Sachin Mehta 2018) name layers after the authors'
helper modules (``c1.conv``, ``d4.conv``, ``bn.bn``, ``level3_C``, ``br``...). The mapping
below is a pure renaming: every tensor keeps its shape and values, and the result must match
:class:`~enet_seg_ros.nets.espnet.ESPNet` / :class:`~enet_seg_ros.nets.espnet.ESPNetC`
key for key (only ``num_batches_tracked`` counters, which old checkpoints lack, are added).

Checkpoints are read with ``torch.load(weights_only=True)``: nothing is unpickled beyond
tensors and plain containers.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple, Union

import torch

from .espnet import DILATIONS, ESPNet, ESPNetC

PathLike = Union[str, os.PathLike]

# (pattern, replacement), applied in order to every key.
_RULES: Tuple[Tuple[str, str], ...] = (
    (r"^level3_C\.conv\.", "level2_classifier."),
    (r"^br\.", "l3_bn."),
    (r"^up_l3\.0\.", "up_l3."),
    (r"^up_l2\.1\.bn\.", "up_l2.1."),
    (r"^up_l2\.1\.act\.", "up_l2.2."),
    (r"^conv\.", "level1_fuse."),
    (r"(^|\.)classifier\.conv\.", r"\1classifier."),
    (r"\.c1\.conv\.", ".reduce."),
    (r"\.bn\.bn\.", ".bn."),
    (r"\.bn\.act\.", ".act."),
) + tuple((r"\.d{}\.conv\.".format(d), ".branches.{}.".format(i)) for i, d in enumerate(DILATIONS))


class CheckpointError(ValueError):
    """A file is not a usable ESPNet reference checkpoint."""


def rename_key(key: str, encoder_only: bool = False) -> str:
    """Our name for one reference key (``encoder_only``: the key comes from an ESPNet-C file)."""
    if encoder_only:
        key = "encoder." + key
    for pattern, repl in _RULES:
        key = re.sub(pattern, repl, key)
    return key


def read_checkpoint(path: PathLike) -> Dict[str, torch.Tensor]:
    """Load a reference state dict safely; unwraps ``{"state_dict": ...}`` and ``module.`` prefixes."""
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: checkpoint not found".format(path))
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError("{}: not a readable PyTorch checkpoint ({}: {})".format(
            path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("{}: expected a state dict of tensors, got {}".format(path, type(obj).__name__))
    state = {}
    for key, value in obj.items():
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def detect(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """Infer arch, class count and options from reference tensor shapes.

    Returns ``{"arch", "num_classes", "options"}``; raises :class:`CheckpointError` when the
    keys are not those of a published ESPNet / ESPNet-C model.
    """
    full = "encoder.classifier.conv.weight" in state
    prefix = "encoder." if full else ""
    classifier = state.get(prefix + "classifier.conv.weight")
    if classifier is None or classifier.dim() != 4:
        raise CheckpointError("no ESPNet classifier ('{}classifier.conv.weight') in the checkpoint".format(prefix))
    num_classes = int(classifier.shape[0])
    p = _count_blocks(state, prefix + "level2.")
    q = _count_blocks(state, prefix + "level3.")
    options: Dict[str, Any] = {"p": p, "q": q}
    if not full:
        return {"arch": "espnet_c", "num_classes": num_classes, "options": options}
    merge = state.get("conv.conv.weight")
    if merge is None:
        raise CheckpointError("no decoder merge conv ('conv.conv.weight') in a full ESPNet checkpoint")
    extra = int(merge.shape[1]) - num_classes
    if extra not in (16, 19):
        raise CheckpointError("decoder merge conv takes {} inputs; expected 16+C or 19+C with C={}".format(
            int(merge.shape[1]), num_classes))
    options["decoder_concat_input"] = extra == 19
    return {"arch": "espnet", "num_classes": num_classes, "options": options}


def _count_blocks(state: Dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if not indices or indices != set(range(len(indices))):
        raise CheckpointError("cannot count ESP modules under '{}' (found {})".format(prefix, sorted(indices)))
    return len(indices)


def convert(state: Dict[str, torch.Tensor]) -> Tuple[Union[ESPNet, ESPNetC], Dict[str, Any]]:
    """Build the matching model and load the renamed tensors with strict key/shape checks.

    Returns ``(model in eval mode, {"arch", "num_classes", "options"})``.
    """
    info = detect(state)
    model: Union[ESPNet, ESPNetC]
    if info["arch"] == "espnet":
        model = ESPNet(info["num_classes"], **info["options"])
    else:
        model = ESPNetC(info["num_classes"], **info["options"])
    encoder_only = info["arch"] == "espnet_c"
    renamed = {rename_key(k, encoder_only): v for k, v in state.items()}
    if len(renamed) != len(state):
        raise CheckpointError("key renaming is not one-to-one")
    expected = model.state_dict()
    for key, value in expected.items():
        # Checkpoints from PyTorch < 0.4 have no BN step counters; they do not affect eval.
        if key.endswith("num_batches_tracked") and key not in renamed:
            renamed[key] = torch.zeros_like(value)
    problems: List[str] = []
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing:
        problems.append("missing {} (e.g. {})".format(len(missing), missing[:3]))
    if unexpected:
        problems.append("unexpected {} (e.g. {})".format(len(unexpected), unexpected[:3]))
    for key in sorted(set(expected) & set(renamed)):
        if tuple(expected[key].shape) != tuple(renamed[key].shape):
            problems.append("shape of {}: checkpoint {} vs model {}".format(
                key, tuple(renamed[key].shape), tuple(expected[key].shape)))
            break
    if problems:
        raise CheckpointError("checkpoint does not match {} {}: {}".format(
            info["arch"], info["options"], "; ".join(problems)))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in renamed.items()},
                          strict=True)
    model.eval()
    return model, info


def load_reference(path: PathLike) -> Tuple[Union[ESPNet, ESPNetC], Dict[str, Any]]:
    """:func:`read_checkpoint` + :func:`convert`; errors name the file."""
    state = read_checkpoint(path)
    try:
        return convert(state)
    except CheckpointError as exc:
        raise CheckpointError("{}: {}".format(path, exc)) from None


# Preprocessing the published weights were trained with (OpenCV BGR, (x - mean) / std / 255).
PUBLISHED: Dict[str, Dict[str, Any]] = {
    "cityscapes": {
        "mean": [72.3923111, 82.90893555, 73.15840149],
        "std": [45.3192215, 46.15289307, 44.91483307],
        "input_size": [1024, 512],
    },
    "camvid": {
        "mean": [110.331, 108.409, 105.034],
        "std": [72.125, 72.689, 69.903],
        "input_size": [480, 360],
    },
}

SOURCE = ("ESPNet reference weights published by Sachin Mehta with 'ESPNet: Efficient Spatial Pyramid of "
          "Dilated Convolutions for Semantic Segmentation' (Mehta et al., ECCV 2018), MIT licence; "
          "converted from {file} (sha256 {sha}) by enet-seg import-weights.")


def make_card(info: Dict[str, Any], dataset: str, checkpoint: PathLike):
    """The model card for a converted checkpoint: dataset classes + the extra void output.

    Raises ``ValueError`` when the checkpoint's class count does not fit ``dataset``.
    """
    import hashlib

    from ..data.labels import get_label_spec
    from ..weights import ModelCard, Normalization

    if dataset not in PUBLISHED:
        raise ValueError("no published ESPNet preprocessing for dataset {!r}; expected one of {}".format(
            dataset, sorted(PUBLISHED)))
    spec = get_label_spec(dataset)
    expected = spec.num_classes + 1  # the published models have one extra "void" output
    if info["num_classes"] != expected:
        raise ValueError("{}: checkpoint has {} outputs but --dataset {} expects {} ({} classes + void)".format(
            checkpoint, info["num_classes"], dataset, expected, spec.num_classes))
    facts = PUBLISHED[dataset]
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return ModelCard.for_dataset(
        info["arch"], spec, facts["input_size"],
        normalization=Normalization(channel_order="bgr", mean=list(facts["mean"]), std=list(facts["std"]),
                                    scale=1.0 / 255.0),
        extra_classes=("void",),
        options=dict(info["options"]),
        recipe={"trained_by": "ESPNet authors", "train_input_size": list(facts["input_size"])},
        source=SOURCE.format(file=os.path.basename(str(checkpoint)), sha=digest.hexdigest()[:16]),
    )
