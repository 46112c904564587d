"""The papers' training recipes (defaults per architecture; every value can be overridden).

``recipe_for`` gives the defaults of ``enet-seg train`` (the papers' optimiser settings with a
single random-scale crop pass per epoch); ``paper_recipe`` adds the papers' full schedules with
multi-scale epochs (``--recipe paper``).
"""
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

# The scales of one multi-scale epoch (x the input size): the ESPNet authors' training code
# passes over the data at several scales from 0.5x to 1.5x each epoch (random crop-resize and
# flips at each), which the paper recipe uses for all three networks.
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)

# The papers' full schedules. ESPNet's public code: 300 epochs per stage, ESPNet-C (encoder)
# first with batch 12, then the decoder with batch 6, Adam 5e-4, lr halved every 100 epochs
# ("step": halves every third of the schedule). ENet: the same length and step decay, batch 10.
# ERFNet: 150 epochs per stage with (1 - epoch / max) ** 0.9 decay ("poly"), batch 6.
PAPER: Dict[str, Dict[str, Any]] = {
    "enet": {"epochs": 300, "encoder_epochs": 300, "schedule": "step", "batch_size": 10, "encoder_batch_size": 10},
    "erfnet": {"epochs": 150, "encoder_epochs": 150, "schedule": "poly", "batch_size": 6, "encoder_batch_size": 6},
    "espnet": {"epochs": 300, "encoder_epochs": 300, "schedule": "step", "batch_size": 6, "encoder_batch_size": 12},
}


def recipe_for(arch: str) -> Dict[str, Any]:
    """The default hyper-parameters of ``arch``'s paper."""
    try:
        return dict(RECIPES[arch])
    except KeyError:
        raise ValueError("no training recipe for arch {!r}; expected one of {}".format(arch, sorted(RECIPES))) from None


def paper_recipe(arch: str) -> Dict[str, Any]:
    """``arch``'s full paper schedule: ``recipe_for(arch)`` plus epochs, batches, decay and epoch scales."""
    recipe = recipe_for(arch)
    recipe.update(PAPER[arch])
    recipe["epoch_scales"] = PAPER_SCALES
    return recipe
