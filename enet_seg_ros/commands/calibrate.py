"""``enet-seg calibrate``: fit per-class logit offsets on training frames for the best mean IoU."""
from __future__ import annotations

import argparse
from .common_args import count_arg, output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the calibrate flags."""
    p.add_argument("weights", help="weights file (.safetensors with model card) or shipped model name")
    p.add_argument("--dataset", default="camvid", choices=("camvid", "cityscapes"))
    p.add_argument("--data-root", required=True, metavar="DIR", help="dataset root (CamVid: the SegNet layout)")
    p.add_argument("--split", default="train",
                   help="split the offsets are fitted on (default train; never the split you report)")
    p.add_argument("--score-split", default="val",
                   help="split scored once after the fit and written into the card (default val; 'none' skips)")
    p.add_argument("--stride", type=int, default=3, metavar="N",
                   help="use every N-th pixel in each axis (default 3)")
    p.add_argument("--threads", type=count_arg(1), default=None, help="CPU threads")
    p.add_argument("--device", default="cpu", help="where the network runs: cpu (default), cuda, cuda:N")
    p.add_argument("--out", required=True, type=output_file(".safetensors"), metavar="FILE.safetensors",
                   help="calibrated weights to write")


def run(args: argparse.Namespace) -> int:
    """Fit, score and write; prints the offsets and the scores."""
    import json

    from ..train.calibrate import calibrate_weights

    if args.stride < 1:
        raise ValueError("--stride must be >= 1, got {}".format(args.stride))
    if args.split == args.score_split:
        raise ValueError("--split and --score-split are both {!r}: the score would not be honest".format(args.split))
    summary = calibrate_weights(args.weights, args.data_root, str(args.out), dataset=args.dataset, split=args.split,
                                stride=args.stride, threads=args.threads, device=args.device,
                                score_split=None if args.score_split == "none" else args.score_split)
    print(json.dumps(summary, indent=1))
    print("wrote {} (int8 / bf16 records dropped: validate again with enet-seg quantize --validate --record)"
          .format(args.out))
    return 0
