"""Command-line flags shared by several sub-commands, declared once so they stay identical."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Tuple

from ..engine.registry import backend_choices


def add_dataset_folder_arguments(parser: argparse.ArgumentParser, images_help: str = "") -> None:
    """``--dataset``, ``--images``, ``--labels``: a labelled folder in CamVid or Cityscapes layout."""
    parser.add_argument("--dataset", required=True, choices=("camvid", "cityscapes"))
    parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                        help=images_help + "CamVid image folder, or Cityscapes leftImg8bit/<split>")
    parser.add_argument("--labels", required=True, type=Path, metavar="DIR",
                        help="CamVid label folder (same file names), or Cityscapes gtFine/<split>")


def add_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights``, ``--backend``, ``--device``, ``--size``, ``--threads``: how to build a Segmenter."""
    parser.add_argument("--weights", required=True, metavar="W", help="weights file (.safetensors with model card) or shipped model name (enet_camvid, ...)")
    parser.add_argument("--backend", default="auto", choices=backend_choices(), help="inference backend")
    parser.add_argument("--device", default=None, help="backend device (e.g. cpu, cuda:0)")
    parser.add_argument("--size", default=None, metavar="WxH", help="network input size (default: the model card's)")
    parser.add_argument("--threads", type=count_arg(1), default=None, metavar="N",
                        help="CPU threads for the backend (default: one per core)")
    add_strict_argument(parser)


def add_strict_argument(parser: argparse.ArgumentParser) -> None:
    """``--strict``: an explicitly asked backend that cannot start is an error, not a fallback."""
    parser.add_argument("--strict", action="store_true",
                        help="an explicitly asked --backend that cannot start is an error (exit 2) naming it "
                             "and why, instead of falling back to the next backend")


def add_report_arguments(parser: argparse.ArgumentParser, item: str) -> None:
    """Flags shared by eval-dir and eval-bag: report folder, GT resizing, predictions, pipeline.

    ``item`` names what a saved prediction is called after (``<stamp>`` or ``<name>``).
    """
    parser.add_argument("--out", required=True, type=output_dir, metavar="DIR", help="report folder")
    parser.add_argument("--resize-gt", default=None, choices=("nearest",),
                        help="resize ground truth of another size to the frame (default: that is an error)")
    parser.add_argument("--save-predictions", action="store_true",
                        help="write {0}_labelIds.png and {0}_color.png per frame to OUT/predictions".format(item))
    parser.add_argument("--throughput", action="store_true",
                        help="also time bare inference on the same frames and record eval / bare fps")
    parser.add_argument("--workers", type=count_arg(1), default=min(4, os.cpu_count() or 1), metavar="N",
                        help="threads decoding frames and ground truth ahead of the model (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def count_arg(minimum: int):
    """argparse type of a whole number >= ``minimum`` (threads, workers, frames)."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected a whole number, got {!r}".format(text)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError("must be >= {}, got {}".format(minimum, value))
        return value
    check.__name__ = "count"
    return check


def _file_in_the_way(path: Path) -> Optional[Path]:
    """The first existing ancestor of ``path`` that is not a folder (None when there is none)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_dir(text: str) -> Path:
    """argparse type of an output folder: refused at once if it, or a folder above it, is a file
    (instead of failing after the work is done)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError("{} is a file, not a folder".format(text))
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError("cannot make folder {}: {} is a file".format(text, blocker))
    return path


def output_file(suffix: Optional[str] = None):
    """argparse type of an output file (with ``suffix``, when given): refused at once if it is a
    folder, if a folder above it is a file, or if its suffix is another."""
    def check(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError("{} is a folder, not a file".format(text))
        blocker = _file_in_the_way(path)
        if blocker is not None:
            raise argparse.ArgumentTypeError("cannot write {}: {} is a file, not a folder".format(text, blocker))
        if suffix and path.suffix != suffix:
            raise argparse.ArgumentTypeError("{} must end in {}".format(text, suffix))
        return path
    check.__name__ = "output file"
    return check


def lighting_arg(text: str) -> Tuple[str, float]:
    """``KIND=FACTOR`` of ``--lighting`` (e.g. ``contrast=0.6``) -> ``(kind, factor)``; argparse type."""
    from ..data.transforms import check_lighting

    kind, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError("no '='")
        return check_lighting(kind, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected KIND=FACTOR (e.g. contrast=0.6), got {!r}: {}".format(text, exc))


def model_options(args: argparse.Namespace):
    """The :class:`~enet_seg_ros.evaluate.api.ModelOptions` of :func:`add_segmenter_arguments`' flags."""
    from ..engine import parse_size
    from ..evaluate.api import ModelOptions

    return ModelOptions(weights=args.weights, backend=args.backend, device=args.device,
                        input_size=parse_size(args.size) if args.size else None, threads=args.threads,
                        strict=bool(getattr(args, "strict", False)))


def run_options(args: argparse.Namespace):
    """The :class:`~enet_seg_ros.evaluate.api.RunOptions` of :func:`add_report_arguments`' flags."""
    from ..evaluate.api import RunOptions

    return RunOptions(resize_gt=args.resize_gt, save_predictions=args.save_predictions, throughput=args.throughput,
                      workers=args.workers, progress=not args.no_progress, lighting=getattr(args, "lighting", None))
