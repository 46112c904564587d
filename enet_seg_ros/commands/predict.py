"""``enet-seg predict``: segment image files and write label / colour / overlay PNGs."""
from __future__ import annotations

import argparse

from ..engine.registry import backend_choices
from .common_args import add_strict_argument, output_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the predict flags."""
    p.add_argument("images", nargs="+", metavar="IMAGE", help="input images (any size, any OpenCV format)")
    p.add_argument("--weights", default=None, help="weights file or shipped model name, e.g. erfnet_camvid (default: enet_camvid)")
    p.add_argument("--backend", default="auto", choices=backend_choices(), help="inference backend")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default=None, help="fp32, fp16, bf16 or int8 (default: the backend's)")
    p.add_argument("--size", default=None, help="network input WxH (default: the card's)")
    p.add_argument("--resize-policy", default=None, choices=("stretch", "letterbox", "center_crop"),
                   help="how frames are fitted to the network input (default: the card's)")
    p.add_argument("--alpha", type=_alpha, default=0.5, help="overlay opacity of the colour labels (0..1)")
    p.add_argument("--out", required=True, type=output_dir, help="output folder")
    add_strict_argument(p)


def _alpha(text: str) -> float:
    """argparse type of ``--alpha``: a number in [0, 1], checked before the model loads."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number in [0, 1], got {!r}".format(text))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1], got {}".format(value))
    return value


def unique_stem(stem: str, taken: set) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... : the first name not in ``taken`` (which it joins), so
    images of the same name from different folders never overwrite each other's outputs."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = "{}_{}".format(stem, n)
    taken.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    """Segment each image; returns 0, or 1 when an image was missing / unreadable.

    A file that is missing or not a readable image is reported (naming it) and skipped; the
    other images are still written.
    """
    import sys
    from pathlib import Path

    import numpy as np

    from ..engine import Segmenter
    from ..weights import resolve_weights

    paths = [Path(p) for p in args.images]
    weights = resolve_weights(args.weights)
    seg = Segmenter(weights, backend=args.backend, device=args.device, precision=args.precision,
                    input_size=args.size, resize_policy=args.resize_policy, strict=args.strict, warmup=1)
    card = seg.card
    to_id = None
    if card.train_id_to_id is not None:
        # Cityscapes: official label ids for the evaluation scripts; UNKNOWN stays 0 (unlabeled).
        to_id = np.zeros(256, np.uint8)
        to_id[: card.num_classes] = np.asarray(card.train_id_to_id, dtype=np.int64).clip(0, 255)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems: set = set()
    failed = []
    for p in paths:
        try:
            _predict_one(seg, p, out, stems, to_id, args.alpha)
        except (FileNotFoundError, ValueError) as exc:
            print("enet-seg predict: error: {}; skipped".format(exc), file=sys.stderr)
            failed.append(p)
    print("backend: {}".format(seg.backend.describe()))
    if failed:
        print("enet-seg predict: {} of {} images written, {} failed: {}".format(
            len(paths) - len(failed), len(paths), len(failed), ", ".join(str(p) for p in failed)), file=sys.stderr)
        return 1
    return 0


def _predict_one(seg, path, out, stems: set, to_id, alpha: float) -> None:
    """Segment one file and write its PNGs; FileNotFoundError / ValueError name the file."""
    import cv2

    from ..evaluate.cityscapes import PREDICTION_CLASS_IDS_SUFFIX, PREDICTION_LABEL_IDS_SUFFIX

    if not path.is_file():
        raise FileNotFoundError("{}: image not found".format(path))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("{}: not a readable image".format(path))
    stem = unique_stem(path.stem, stems)
    result = seg.segment(bgr, channel_order="bgr")
    _write(out / (stem + PREDICTION_CLASS_IDS_SUFFIX), result.labels)
    _write(out / (stem + "_color.png"), cv2.cvtColor(result.color(), cv2.COLOR_RGB2BGR))
    _write(out / (stem + "_overlay.png"), result.overlay(bgr, alpha, channel_order="bgr"))
    if to_id is not None:
        _write(out / (stem + PREDICTION_LABEL_IDS_SUFFIX), to_id[result.labels])
    top = sorted(result.class_stats().items(), key=lambda kv: -kv[1]["fraction"])[:3]
    print("{}: {}x{} -> {} ({})".format(path.name, bgr.shape[1], bgr.shape[0], out / (stem + "_*.png"),
                                       ", ".join("{} {:.0%}".format(k, v["fraction"]) for k, v in top)))


def _write(path, image) -> None:
    import cv2

    if not cv2.imwrite(str(path), image):
        raise RuntimeError("{}: could not write image".format(path))
