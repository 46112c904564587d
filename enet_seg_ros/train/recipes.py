"""The papers' training recipes (defaults per architecture; every value can be overridden)."""
from __future__ import annotations

from typing import Any, Dict

# Sources: ENet (Paszke et al. 2016, Sec. 5.1): Adam, lr 5e-4, weight decay 2e-4, batch 10,
# class weights 1/ln(1.02 + p), encoder trained first on downsampled labels.
# ERFNet (Romera et al. 2017, Sec. IV): Adam, lr 5e-4, weight decay 2e-4 (as the issue fixes it),
# batch 6, weights with c = 1.10, encoder first, poly-like decay.
# ESPNet (Mehta et al. 2018, Sec. 4): Adam, lr 5e-4, weight decay 5e-4, encoder (ESPNet-C)
# first, c = 1.10, lr halved in steps.
RECIPES: Dict[str, Dict[str, Any]] = {
    "enet": {"lr": 5e-4, "weight_decay": 2e-4, "weighting_c": 1.02, "batch_size": 10, "schedule": "poly"},
    "erfnet": {"lr": 5e-4, "weight_decay": 2e-4, "weighting_c": 1.10, "batch_size": 6, "schedule": "poly"},
    "espnet": {"lr": 5e-4, "weight_decay": 5e-4, "weighting_c": 1.10, "batch_size": 12, "schedule": "poly"},
}


def recipe_for(arch: str) -> Dict[str, Any]:
    """The default hyper-parameters of ``arch``'s paper."""
    try:
        return dict(RECIPES[arch])
    except KeyError:
        raise ValueError("no training recipe for arch {!r}; expected one of {}".format(arch, sorted(RECIPES))) from None
