#!/usr/bin/env python3
"""Apply the ship rule to a finished ``enet-seg train`` run folder (the long CPU runs of
``checkpoints/``).

The rule (``shipping.py``; checkpoints/README.md states it for each run before it starts): the
run's exported last epoch (``best.safetensors``, ``--select last``), with logit offsets fitted on
CamVid train, replaces the shipped ``models/<arch>_camvid.safetensors`` only if its val mIoU with
offsets is strictly above the shipped card's. A run that has not reached the last epoch of its
schedule, stopped early, or was not trained from scratch is refused, whatever its score.

The offsets are fitted once (``enet-seg calibrate``, the library's ``calibrate_weights``), which
also scores val once; the result is kept as ``<run>/calibrated.safetensors`` and used again by a
later call as long as it is newer than ``best.safetensors``.

Usage (from the repo root)::

    python3 benchmarks/ship_run.py runs/erfnet_camvid_scratch300 --data-root ../shared/data/camvid
    python3 benchmarks/ship_run.py runs/erfnet_camvid_scratch300 --data-root ../shared/data/camvid --apply \\
        --note "epochs 0-30 on an AMD EPYC (Zen 4), 31-299 on ..."

``--apply`` writes a winner over the shipped file with its provenance in the card
(``metrics.protocol``, ``metrics.rounds``) and without int8 / bf16 records, and prints the
``enet-seg quantize`` commands that make them again; then update models/README.md's tables and
move the run to "Finished" in checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shipping import REPO, apply_decisions, judge, print_decisions, shipped_path, write_shipped  # noqa: E402
from enet_seg_ros.train.calibrate import calibrate_weights  # noqa: E402
from enet_seg_ros.train.trainer import BEST  # noqa: E402
from enet_seg_ros.weights import ModelCard, WeightsError, read_card  # noqa: E402

CALIBRATED = "calibrated.safetensors"
ARCH_NAMES = {"enet": "ENet", "espnet": "ESPNet", "erfnet": "ERFNet"}


def _final_stage(recipe: Dict[str, Any]) -> Tuple[str, int]:
    """The stage a run exports from and its number of epochs."""
    stage = "encoder" if recipe.get("stages") == "encoder" else "decoder"
    return stage, int(recipe["encoder_epochs"] if stage == "encoder" else recipe["epochs"])


def _progress(run: Path) -> str:
    """How far ``log.csv`` says the run got, e.g. ``decoder epoch 117``."""
    try:
        with open(run / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return "no log.csv"
    return "{} epoch {}".format(rows[-1]["stage"], rows[-1]["epoch"]) if rows else "an empty log.csv"


def _config_arch(run: Path) -> str:
    """The arch a run's ``config.json`` names (``unknown`` without one)."""
    config = run / "config.json"
    return json.loads(config.read_text()).get("arch", "unknown") if config.is_file() else "unknown"


def run_problems(run: Path) -> Tuple[List[str], Optional[ModelCard]]:
    """What stops the run's export from being a candidate (empty when none), and its card."""
    best = run / BEST
    if not best.is_file():
        return ["no {}: the run has not finished ({})".format(BEST, _progress(run))], None
    try:
        card = read_card(best)
    except WeightsError as exc:
        return [str(exc)], None
    problems = []
    stage, epochs = _final_stage(card.recipe)
    m = card.metrics
    if (m.get("stage"), m.get("epoch")) != (stage, epochs - 1):
        problems.append("{} holds {} epoch {}, not the last of its schedule ({} epoch {})".format(
            BEST, m.get("stage"), m.get("epoch"), stage, epochs - 1))
    if m.get("stopped_early"):
        problems.append("stopped early: " + str(m["stopped_early"]))
    if card.recipe.get("select") != "last":
        problems.append("checkpoint selected by {!r}, not the last epoch".format(card.recipe.get("select")))
    return problems, card


def calibrated(run: Path, data_root: str, threads: Optional[int]) -> Path:
    """``<run>/calibrated.safetensors``: offsets fitted on train and val scored once (made if stale)."""
    best, out = run / BEST, run / CALIBRATED
    if not out.is_file() or out.stat().st_mtime < best.stat().st_mtime:
        summary = calibrate_weights(str(best), data_root, str(out), threads=threads)
        print("calibrated: val mIoU {:.1%} without offsets, {:.1%} with".format(
            summary["scores"]["before"], summary["scores"]["after"]))
    return out


def _weighting(recipe: Dict[str, Any]) -> str:
    kind = recipe.get("class_weighting")
    if kind == "enet":
        return "class weights 1/ln({} + p)".format(recipe.get("weighting_c"))
    return "class weights {}".format(kind)


def provenance(card: ModelCard, note: str = "") -> Tuple[str, str]:
    """The card's ``(hyper_parameters, rounds)`` texts, from its recipe and metrics."""
    r, m = card.recipe, card.metrics
    batch = str(r.get("batch_size"))
    if r.get("stages") == "both" and r.get("encoder_batch_size") not in (None, r.get("batch_size")):
        batch += " ({} in the encoder stage)".format(r.get("encoder_batch_size"))
    extras = ""
    if r.get("color_jitter"):
        extras += ", colour jitter {}".format(r["color_jitter"])
    if r.get("options"):
        extras += ", options {}".format(json.dumps(r["options"], sort_keys=True))
    encoder = "{} encoder-stage + ".format(r.get("encoder_epochs")) if r.get("stages") == "both" else ""
    epochs = "{}{} full-network epochs".format(encoder, r.get("epochs"))
    crop, size = "x".join(map(str, r.get("crop") or r["size"])), "x".join(map(str, r["size"]))
    frames = "full {} frames".format(size) if crop == size else "{} crops of {} frames".format(crop, size)
    hyper = ("{} recipe (Adam lr {} with {} decay, weight decay {}, batch {}, {}{}); schedule ({} on {}, scales {}-{}, "
             "flips, seed {}) and the ship rule (val mIoU with offsets above the shipped model's) set before the run; "
             "not tuned on val".format(ARCH_NAMES.get(card.arch, card.arch), r.get("lr"), r.get("schedule"),
                                      r.get("weight_decay"), batch, _weighting(r), extras, epochs, frames,
                                      *(r.get("scale_range") or [1.0, 1.0]), r.get("seed")))
    before = m.get("before_logit_offset", {}).get("val_miou")
    hours = float(m.get("train_time_s") or 0.0) / 3600.0
    rounds = ("one run from scratch with enet-seg train (CPU, {} threads, {}; resumed across sessions with --resume{}): "
              "{}, {:.1f} h of training, last epoch exported; val scored once at the end ({}), then logit offsets "
              "fitted on train ({:.1%})".format(
                  r.get("threads"), m.get("precision"), "; " + note if note else "", epochs, hours,
                  "{:.1%} without offsets".format(before) if before is not None else "-", m["val_miou"]))
    return hyper, rounds


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run folder (--out of enet-seg train)")
    p.add_argument("--data-root", default="../shared/data/camvid", help="CamVid (SegNet layout) for the offsets and val")
    p.add_argument("--models", type=Path, default=REPO / "models", help="the shipped models (default models/)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the calibration")
    p.add_argument("--note", default="", help="what the card's rounds should add (machines, sessions)")
    p.add_argument("--apply", action="store_true", help="write a winner over the shipped file")
    args = p.parse_args(argv)
    if not args.run.is_dir():
        p.error("{}: no such run folder".format(args.run))
    problems, card = run_problems(args.run)
    arch = card.arch if card is not None else _config_arch(args.run)
    try:
        candidate = calibrated(args.run, args.data_root, args.threads) if not problems else args.run / CALIBRATED
    except (FileNotFoundError, ValueError) as exc:  # no CamVid there, another dataset's weights
        p.error("cannot fit the logit offsets: {}".format(exc))
    decision = judge(arch, candidate, args.models, problems)
    print_decisions([decision])
    if args.apply:
        def write(d: Dict[str, Any]) -> Path:
            hyper, rounds = provenance(read_card(candidate), args.note)
            return write_shipped(candidate, shipped_path(args.models, arch), hyper, rounds)
        apply_decisions([decision], args.models, write)
    print(json.dumps(decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
