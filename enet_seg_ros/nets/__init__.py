"""Network builders: ENet, ERFNet, ESPNet and ESPNet-C.

>>> model = build_model("enet", num_classes=20)
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple

from torch import nn

from .common import SegmentationNet, count_parameters
from .fold import fold_batchnorm, split_concat_norms

# arch -> (module, builder function); imported lazily so one broken arch does not hide others.
_BUILDERS: Dict[str, Tuple[str, str]] = {
    "enet": ("enet", "enet"),
    "erfnet": ("erfnet", "erfnet"),
    "espnet": ("espnet", "espnet"),
    "espnet_c": ("espnet", "espnet_c"),
}


def list_archs() -> List[str]:
    """Architectures accepted by :func:`build_model`."""
    return list(_BUILDERS)


def build_model(arch: str, num_classes: int, logit_offset: bool = False, **options) -> SegmentationNet:
    """Build an untrained network.

    Args:
        arch: one of :func:`list_archs`.
        num_classes: number of output classes.
        logit_offset: give the network a (zero) per-class logit offset buffer, to be loaded
            from weights that carry one (see :meth:`SegmentationNet.set_logit_offset`).
        **options: architecture options (e.g. ``p``/``q`` for ESPNet).
    """
    try:
        module_name, fn_name = _BUILDERS[arch]
    except KeyError:
        raise ValueError("unknown arch {!r}; expected one of {}".format(arch, list_archs())) from None
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__") or num_classes < 1:
        raise ValueError("num_classes must be a whole number >= 1, got {!r}".format(num_classes))
    num_classes = int(num_classes)
    builder: Callable[..., nn.Module] = getattr(importlib.import_module("." + module_name, __name__), fn_name)
    model = builder(num_classes, **options)
    if logit_offset:
        model.set_logit_offset([0.0] * num_classes)
    return model


__all__ = ["build_model", "list_archs", "fold_batchnorm", "split_concat_norms", "count_parameters", "SegmentationNet"]
