"""``enet-seg info``: print a weights file's model card and parameter count."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the info flags."""
    p.add_argument("weights", metavar="WEIGHTS", help="weights file (.safetensors with a model card) or shipped model name")


def run(args: argparse.Namespace) -> int:
    """Load the weights strictly (so a broken file fails here) and print the card as JSON."""
    import json

    from ..nets import count_parameters
    from ..weights import load_model, resolve_weights

    model, card = load_model(resolve_weights(args.weights))
    print(json.dumps(json.loads(card.to_json()), indent=2, sort_keys=True))
    print("parameters: {:,}".format(count_parameters(model)))
    return 0
