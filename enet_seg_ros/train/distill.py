"""Knowledge distillation: a trained network (the teacher) guides the training of another.

``enet-seg train --distill TEACHER`` adds to the class-weighted cross-entropy a pixel-wise
Kullback-Leibler term between the teacher's and the student's class distributions, both
softened by a temperature ``T`` (Hinton et al. 2015; pixel-wise for segmentation as in Liu et al.
2019, "Structured knowledge distillation for semantic segmentation"):

    loss = (sum_i w[y_i] CE_i + lambda * T^2 * sum_i w[y_i] KL(p_t,i^T || p_s,i^T)) / sum_i w[y_i]

over the labelled pixels ``i`` of the batch, ``w`` the run's class weights (1 without weighting).
Both terms share the cross-entropy's weights and normaliser, so rare classes keep the emphasis
the recipe gives them, and multi-process runs keep the single-process gradients (the trainer's
normalisation by the global weighted pixel count).

The teacher runs on the very batch the student sees (after augmentation), in eval mode without
gradients, normalised as its own model card says; its logit offsets (``enet-seg calibrate``) are
left out, since the student is trained with the same weighted loss as the teacher was and gets
its own offsets fitted afterwards. Distillation applies to the full network (decoder stage);
an encoder stage trains on the labels alone.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.preprocess import Preprocess
from ..weights import ModelCard, load_model, resolve_weights
from .inputs import BatchNormalizer
from .speed import memory_format_for


def distillation_sum(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``T^2 * sum_i w_i KL(softmax(t_i / T) || softmax(s_i / T))``.

    Args:
        student: student logits (B, C, H, W), float32.
        teacher: teacher logits (B, C, h, w); resized bilinearly to (H, W) when they differ.
        weights: each pixel's weight (B, H, W), 0 where not scored
            (:func:`~enet_seg_ros.train.inputs.pixel_weights`, shared with the cross-entropy).
        temperature: ``T`` > 0.
    """
    if teacher.shape[:2] != student.shape[:2]:
        raise ValueError("teacher logits {} do not match the student's {}".format(
            tuple(teacher.shape), tuple(student.shape)))
    teacher = teacher.float()
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    t = float(temperature)
    log_p_s = F.log_softmax(student / t, dim=1)
    log_p_t = F.log_softmax(teacher / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B, H, W)
    return (kl * weights).sum() * (t * t)


class Teacher:
    """A trained network in eval mode that gives the logits of a training batch.

    Args:
        weights: teacher weights (.safetensors with model card) or a shipped model name.
        class_names: the student's classes; the teacher must have the same ones, in order.
        device: the training device.
        bf16: run the teacher under bf16 autocast (as the student's steps are).
    """

    def __init__(self, weights: str, class_names: Sequence[str], device: torch.device, bf16: bool) -> None:
        self.path: Path = resolve_weights(weights)
        model, card = load_model(self.path)
        if list(card.class_names) != list(class_names):
            raise ValueError("distillation teacher {} predicts {} classes ({}), the student {} ({}): they must be the "
                             "same classes in the same order".format(self.path, card.num_classes,
                                                                      ", ".join(card.class_names), len(class_names),
                                                                      ", ".join(class_names)))
        model.set_logit_offset(None)  # raw logits: see the module doc
        self.card: ModelCard = card
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.device = device
        self.bf16 = bf16
        memory_format = memory_format_for(card.arch, device)
        self.model: nn.Module = model.to(device).to(memory_format=memory_format).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._normalize = BatchNormalizer(Preprocess.from_card(card), device, memory_format)

    @torch.no_grad()
    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C, h, w) of float RGB frames ``rgb`` (B, 3, H, W) in 0..255."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self._normalize(rgb))
        return out.float()

    def describe(self) -> Dict[str, Any]:
        """What the card of a distilled model records about its teacher."""
        metrics = self.card.metrics or {}
        return {"weights": self.path.name, "sha256": self.sha256,
                "arch": self.card.arch, "source": self.card.source,
                "val_miou_without_offsets": metrics.get("before_logit_offset", metrics).get("val_miou")}
