"""``enet-seg import-weights``: convert published checkpoints to safetensors + model card."""
from __future__ import annotations

import argparse
from .common_args import output_file

SOURCES = ("espnet-reference",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the import-weights flags."""
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="checkpoint family (espnet-reference: the ESPNet authors' .pth files)")
    p.add_argument("--dataset", required=True, choices=["cityscapes", "camvid"],
                   help="dataset the checkpoint was trained on (sets classes and preprocessing)")
    p.add_argument("checkpoint", metavar="CKPT", help="published checkpoint (.pth state dict)")
    p.add_argument("--out", required=True, type=output_file(".safetensors"), help="output weights file (.safetensors)")


def run(args: argparse.Namespace) -> int:
    """Convert, write, then reload the written file strictly to prove it is usable."""
    import torch

    from ..nets import count_parameters
    from ..nets.espnet_reference import load_reference, make_card
    from ..weights import flush_negligible, load_model, save_model

    model, info = load_reference(args.checkpoint)
    card = make_card(info, args.dataset, args.checkpoint)
    path = save_model(args.out, model, card)
    reloaded, _ = load_model(path)
    expected = dict(model.state_dict())
    flushed = flush_negligible(expected)  # as save_model wrote them
    with torch.no_grad():
        for (name, a), b in zip(expected.items(), reloaded.state_dict().values()):
            if not torch.equal(a, b):
                raise RuntimeError("{}: tensor {} changed on the round trip".format(path, name))
    print("wrote {} ({} {}, {} outputs, {:,} parameters{})".format(
        path, card.arch, card.options, card.num_classes, count_parameters(model),
        ", {:,} negligible weights written as zero".format(flushed) if flushed else ""))
    return 0
