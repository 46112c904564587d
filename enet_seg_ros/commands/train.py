"""``enet-seg train``: train ENet / ERFNet / ESPNet with the papers' recipes (torchrun for multi-GPU).

Several networks in one command: ``--arch enet,espnet,erfnet`` trains each into ``OUT/<arch>``,
one after another in this process (a ``--budget-s`` is then shared equally), or all at once in
one child process each with ``--concurrent`` (small networks share one GPU better that way;
each then has the whole budget).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List
from .common_args import output_dir

ARCHS = ("enet", "erfnet", "espnet")


def _archs(text: str) -> List[str]:
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ARCHS]
    if not names or bad:
        raise argparse.ArgumentTypeError("unknown arch {} (choose from {}; several: enet,espnet,erfnet)".format(
            ", ".join(bad) or repr(text), ", ".join(ARCHS)))
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("arch listed twice in {!r}".format(text))
    return names


def _scales(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("scales must be comma-separated numbers, e.g. 0.5,1,1.5") from None
    if not values or any(v <= 0 or v > 4 for v in values):
        raise argparse.ArgumentTypeError("scales must be in (0, 4]")
    return values


def _option(text: str):
    """``[ARCH.]KEY=VALUE`` with a JSON value (``true``, ``3``, ``"x"``); a bare word stays a string.

    Returns ``(arch or None, key, value)``: an ``ARCH.`` prefix limits the option to that arch in
    a several-arch run.
    """
    name, sep, raw = text.partition("=")
    arch, dot, key = name.strip().rpartition(".")
    if not sep or not key.isidentifier() or (dot and arch not in ARCHS):
        raise argparse.ArgumentTypeError("--option takes [ARCH.]KEY=VALUE, e.g. espnet.decoder_concat_input=true "
                                         "(got {!r})".format(text))
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return arch or None, key, value


def _size(text: str):
    """argparse type over the one size parser (``engine.parse_size``)."""
    from ..engine import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the train flags."""
    p.add_argument("--arch", required=True, type=_archs, metavar="ARCH[,ARCH...]",
                   help="enet, erfnet or espnet; several comma-separated train one after another into OUT/<arch>")
    p.add_argument("--dataset", required=True, choices=["cityscapes", "camvid"])
    p.add_argument("--data-root", required=True, help="dataset root (CamVid SegNet layout or Cityscapes)")
    p.add_argument("--out", required=True, type=lambda text: str(output_dir(text)), help="run directory (checkpoints, logs, best weights); OUT/<arch> "
                   "for each of several archs")
    p.add_argument("--size", type=_size, default=(480, 360), help="model input size WxH (default 480x360)")
    p.add_argument("--crop", type=_size, default=None, help="training crop WxH (default: --size)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the full network (decoder stage; default 100, --recipe paper: 150-300)")
    p.add_argument("--encoder-epochs", type=int, default=None, help="epochs of the encoder stage (default: --epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the paper's)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 2e-4 (ENet/ERFNet), 5e-4 (ESPNet)")
    p.add_argument("--class-weighting", choices=["enet", "median_freq", "none"], default="enet")
    p.add_argument("--weighting-c", type=float, default=None, help="c in 1/ln(c + p) (default 1.02 ENet, 1.10 others)")
    p.add_argument("--stages", choices=["encoder", "decoder", "both"], default="both")
    p.add_argument("--schedule", choices=["poly", "step", "plateau"], default=None)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.5), metavar=("MIN", "MAX"))
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--workers", type=int, default=0,
                   help="kept for compatibility; unused: frames are decoded once and augmented on the device")
    p.add_argument("--amp", action="store_true", help="same as --precision bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="initialise from a weights file (.safetensors)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="[ARCH.]KEY=VALUE",
                   help="architecture option passed to the builder and recorded in the card (repeatable; an "
                        "ARCH. prefix limits it to that arch), e.g. espnet.decoder_concat_input=true: ESPNet's "
                        "published CamVid decoder, which also merges the half-resolution image")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke tests)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA)")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (fine-tuning)")
    p.add_argument("--no-cache", action="store_true",
                   help="keep the decoded frames in host memory instead of on the GPU (large data sets)")
    p.add_argument("--no-dropout", action="store_true",
                   help="set every dropout probability to 0 (ablations; with --freeze-bn, a multi-process run "
                        "matches a single-process one up to float rounding)")
    p.add_argument("--stop-after", type=int, default=0, metavar="EPOCHS",
                   help="leave after this many epochs in this invocation (resumable with --resume; 0 = no limit)")
    p.add_argument("--recipe", choices=["default", "paper"], default="default",
                   help="paper: the papers' full schedules (ENet/ESPNet 300 epochs per stage, step decay halving "
                        "every 100; ERFNet 150, poly; ESPNet batch 12 encoder / 6 decoder) with multi-scale epochs")
    p.add_argument("--epoch-scales", type=_scales, default=None, metavar="S1,S2,...",
                   help="multi-scale epochs: one pass per scale (full frames at S x --size, random crop-resize, "
                        "flips); --recipe paper: 0.5,0.75,1,1.25,1.5")
    p.add_argument("--encoder-batch-size", type=int, default=None, help="global batch of the encoder stage "
                   "(default: --batch-size; ESPNet paper recipe: 12)")
    p.add_argument("--color-jitter", type=float, default=0.0, metavar="J",
                   help="random brightness / contrast / saturation factors in [1-J, 1+J] (default 0: off)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16, else fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (forward and backward); default: auto, on CPU for ENet and "
                        "ESPNet in runs of >= 1000 steps (a one-off compile of ~1-2 min that their steps repay), "
                        "off for ERFNet (slower compiled) and on CUDA")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each training step (forward, loss, backward, Adam update) as one CUDA graph: "
                        "these small nets' eager steps are bound by kernel launches on a GPU; default: auto, on "
                        "for one CUDA process without --distill or --compile")
    p.add_argument("--select", choices=["last", "holdout", "val"], default="last",
                   help="checkpoint to export: last (fixed schedule, last epoch), holdout (best on --holdout "
                        "frames held out of train) or val (best on val: optimistic, the score also picked it)")
    p.add_argument("--holdout", type=int, default=0, metavar="N", help="frames held out of train for --select holdout")
    p.add_argument("--budget-s", type=float, default=0.0, metavar="S",
                   help="wall budget of the run: a throughput probe fits the epochs to it, and training stops "
                        "and exports if it runs over (several archs: shared equally unless --concurrent)")
    p.add_argument("--distill", default=None, metavar="TEACHER",
                   help="knowledge distillation: weights (file or shipped model name) of a trained network with "
                        "the same classes, whose softened predictions on each training batch join the loss "
                        "(decoder stage; recorded in the card)")
    p.add_argument("--distill-weight", type=float, default=1.0, metavar="L",
                   help="weight of the distillation term against the cross-entropy (default 1)")
    p.add_argument("--distill-temperature", type=float, default=2.0, metavar="T",
                   help="softmax temperature of the distillation term (default 2)")
    p.add_argument("--concurrent", action="store_true",
                   help="with several archs: train them at the same time, one child process each")


def _options(arch: str, given) -> dict:
    """The ``--option`` values for ``arch`` as builder options, checked by building the network once."""
    from ..nets import build_model

    options = {key: value for only, key, value in (given or ()) if only in (None, arch)}
    if options:
        try:
            build_model(arch, 19, **options)
        except TypeError as exc:
            raise ValueError("--option {} does not fit {}: {}".format(
                ", ".join("{}={!r}".format(k, v) for k, v in options.items()), arch, exc)) from None
    return options


def _config(args: argparse.Namespace, arch: str, out: str, budget_s: float):
    from ..train.trainer import TrainConfig

    return TrainConfig(
        arch=arch, dataset=args.dataset, data_root=args.data_root, out=out, size=tuple(args.size),
        crop=tuple(args.crop) if args.crop else None,
        epochs=args.epochs, encoder_epochs=args.encoder_epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, class_weighting=args.class_weighting, weighting_c=args.weighting_c,
        stages=args.stages, schedule=args.schedule, scale_range=tuple(args.scale_range), workers=args.workers,
        amp=args.amp, seed=args.seed, init=args.init, val_every=args.val_every, threads=args.threads,
        cache_data=not args.no_cache, max_steps_per_epoch=args.max_steps_per_epoch, sync_bn=args.sync_bn,
        freeze_bn=args.freeze_bn, no_dropout=args.no_dropout, stop_after=args.stop_after,
        recipe=args.recipe, epoch_scales=args.epoch_scales, encoder_batch_size=args.encoder_batch_size,
        color_jitter=args.color_jitter, precision=args.precision, compile=args.compile,
        cuda_graphs=args.cuda_graphs, select=args.select,
        holdout=args.holdout, budget_s=budget_s, distill=args.distill, distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, options=_options(arch, args.option),
    )


def _report(arch: str, result) -> None:
    if (result.get("miou") or -1) >= 0:
        print("{}: exported model: val mIoU {:.4f} ({} epoch {})".format(arch, result["miou"], result["stage"],
                                                                       result["epoch"]))


# A child of --concurrent: one arch's run from its JSON config (logs to stderr like the CLI).
_CHILD = ("import json, logging, sys; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s'); "
          "from enet_seg_ros.train.trainer import TrainConfig, main_worker; "
          "cfg = json.loads(sys.argv[1]); main_worker(TrainConfig(**cfg), resume=sys.argv[2] == '1')")


def _concurrent(args: argparse.Namespace, budget_s: float) -> int:
    """One child process per arch, all at once, each into ``OUT/<arch>``; returns 1 if any failed."""
    from dataclasses import asdict

    procs = []
    for arch in args.arch:
        cfg = asdict(_config(args, arch, str(Path(args.out) / arch), budget_s))
        procs.append((arch, subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg),
                                              "1" if args.resume else "0"])))
    failed = [(arch, code) for arch, code in ((a, p.wait()) for a, p in procs) if code]
    for arch, code in failed:
        print("enet-seg train: {} failed (exit code {})".format(arch, code), file=sys.stderr)
    for arch in args.arch:
        card = Path(args.out) / arch / "best.card.json"
        if card.is_file():
            metrics = json.loads(card.read_text()).get("metrics", {})
            _report(arch, {"miou": metrics.get("val_miou"), "stage": metrics.get("stage"),
                           "epoch": metrics.get("epoch")})
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Train; with torchrun each process runs this and rank 0 logs and checkpoints."""
    from ..train.trainer import main_worker

    archs = args.arch
    if args.concurrent and len(archs) > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--concurrent starts its own processes; do not combine it with torchrun")
        return _concurrent(args, args.budget_s)
    budget = args.budget_s / len(archs) if args.budget_s else 0.0
    for arch in archs:
        out = args.out if len(archs) == 1 else str(Path(args.out) / arch)
        result = main_worker(_config(args, arch, out, budget), resume=args.resume)
        # Under torchrun every process returns here; only rank 0 reports.
        if os.environ.get("RANK", "0") == "0":
            _report(arch, result)
    return 0
