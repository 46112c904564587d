"""The ``enet-seg`` console tool: one entry point, one sub-command per job.

Each sub-command lives in ``enet_seg_ros.commands.<module>`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
sub-command runs, so ``enet-seg --help`` stays fast and a missing optional dependency
(TensorRT, rosbags...) only affects the command that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional, Sequence, Tuple

# (sub-command, module under enet_seg_ros.commands, one-line help)
COMMANDS: Tuple[Tuple[str, str, str], ...] = (
    ("predict", "predict", "segment image files and write label / colour / overlay PNGs"),
    ("import-weights", "import_weights", "convert published checkpoints to safetensors + card"),
    ("info", "info", "print a weights file's model card and parameter count"),
    ("export", "export", "export weights to ONNX or a TensorRT engine"),
    ("quantize", "quantize", "int8 Q/DQ graphs: calibrate, validate against fp32, record in the model card"),
    ("bench", "bench", "benchmark archs x backends x sizes (latency, fps, GFLOPs)"),
    ("train", "train", "train a network on Cityscapes or CamVid"),
    ("calibrate", "calibrate", "fit per-class logit offsets on training frames (best mean IoU), write new weights"),
    ("eval-preds", "eval_preds", "score Cityscapes-format prediction PNGs against gtFine"),
    ("eval-dir", "eval_dir", "run a model over a labelled folder and score it"),
    ("make-bag", "make_bag", "write a ROS 2 bag of camera frames + ground-truth labels"),
    ("eval-bag", "eval_bag", "replay a ROS 2 bag through a model and score it"),
    ("doctor", "doctor", "which inference backends work here, how well and how fast; what to put in seg.yaml"),
)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """Build the top-level parser.

    Every sub-command is listed; only ``only``'s module is imported to add its flags (all of
    them when ``only`` is None), so one command's optional dependencies never break another.
    """
    parser = argparse.ArgumentParser(
        prog="enet-seg",
        description="ENet / ERFNet / ESPNet semantic segmentation: inference, training, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only is None or only == name:
            _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module("enet_seg_ros.commands." + module)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in COMMANDS}
    chosen = next((a for a in argv if a in names), "")
    args = build_parser(only=chosen).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(_load(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        # Expected user-facing failures (bad or unwritable paths, corrupt files, bad sizes): one
        # clear line.
        print("enet-seg {}: error: {}".format(args.command, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
