"""Evaluation: confusion-matrix metrics (Cityscapes-exact), reports, bag and folder scoring."""
from .metrics import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
