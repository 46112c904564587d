"""Datasets and label specifications (shared by training, inference and evaluation)."""
from .labels import CAMVID, CITYSCAPES, LabelSpec, get_label_spec

__all__ = ["CAMVID", "CITYSCAPES", "LabelSpec", "get_label_spec"]
