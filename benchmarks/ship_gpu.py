#!/usr/bin/env python3
"""Apply the ship rule to the models of a ``benchmarks/gpu_run.sh`` tarball.

The rule (`shipping.py`; models/README.md, "GPU runs"), set before any GPU run: an arch's
``runs/<arch>/calibrated.safetensors`` (budget-fitted fixed schedule, last epoch exported, logit
offsets fitted on train, val scored once) replaces the shipped ``models/<arch>_camvid.safetensors``
only if its val mIoU with offsets is strictly above the shipped card's. A candidate that is not
comparable (other classes or input size, another selection protocol, no offsets fitted on train,
a training run that stopped with an error) is refused, whatever its score.

Usage (from the repo root)::

    python3 benchmarks/ship_gpu.py out/gpu/gpu_run_<stamp>.tar.gz            # report only
    python3 benchmarks/ship_gpu.py out/gpu/gpu_run_<stamp>.tar.gz --apply    # write the winners

``--apply`` writes each winner over the shipped file with its provenance in the card
(``metrics.protocol``, ``metrics.rounds``) and without int8 / bf16 records, and prints the
``enet-seg quantize`` commands that make them again with the settings the replaced file's records
name (each record keeps its quantisation settings); then update models/README.md's tables.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shipping import REPO, ARCHS, apply_decisions, judge, print_decisions, shipped_path, write_shipped  # noqa: E402
from enet_seg_ros.weights import read_card  # noqa: E402


def unpack(source: Path, scratch: Path) -> Path:
    """The pack folder of a ``gpu_run_<stamp>.tar.gz`` (extracted into ``scratch``) or of a folder."""
    if source.is_dir():
        return source
    with tarfile.open(source) as tar:
        tar.extractall(scratch, filter="data")
    packs = [p for p in scratch.iterdir() if p.is_dir() and p.name.startswith("gpu_run_")]
    if len(packs) != 1:
        raise SystemExit("{}: expected one gpu_run_<stamp>/ folder in the tarball, found {}".format(source, len(packs)))
    return packs[0]


def gpu_name(pack: Path) -> str:
    """The GPU the run trained on, from its ``logs/env.txt``."""
    env = pack / "logs" / "env.txt"
    if env.is_file():
        for line in env.read_text().splitlines():
            if line.startswith("{") and '"gpu"' in line:
                return str(json.loads(line)["gpu"])
    return "an unnamed device"


def decide(arch: str, pack: Path, models: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    """The rule for one arch of the pack: ``{"arch", "verdict", "why", "candidate", "shipped"}``."""
    problems: List[str] = []
    if summary.get("smoke"):
        problems.append("a --smoke run")
    if summary.get("train_exit_code", 1) != 0:
        problems.append("training exited with {}".format(summary.get("train_exit_code")))
    return judge(arch, pack / "runs" / arch / "calibrated.safetensors", models, problems)


def ship(arch: str, pack: Path, models: Path, gpu: str) -> Path:
    """Write the candidate over the shipped file, with its provenance and no precision records."""
    candidate = pack / "runs" / arch / "calibrated.safetensors"
    card = read_card(candidate)
    m = card.metrics
    stamp = re.sub(r"^gpu_run_", "", pack.name)
    before = m.get("before_logit_offset", {}).get("val_miou")
    epochs = "{} encoder-stage + {} full-network epochs".format(card.recipe.get("encoder_epochs"), card.recipe.get("epochs"))
    hyper = ("the papers' recipe (recipe {}, epoch scales {}, colour jitter {}), its epochs fitted before training to "
             "the GPU run's wall budget (--budget-s {}); the ship rule (val mIoU with offsets above the shipped model's) "
             "set before the run; not tuned on val".format(card.recipe.get("recipe"), card.recipe.get("epoch_scales"),
                                                          card.recipe.get("color_jitter", 0.0), card.recipe.get("budget_s")))
    rounds = ("one run of benchmarks/gpu_run.sh ({}, {}), on the CamVid JPEG copy (quality 95): {}, last epoch "
              "exported; val scored once at the end ({}), then logit offsets fitted on train ({:.1%})".format(
                  gpu, stamp, epochs, "{:.1%} without offsets".format(before) if before is not None else "-",
                  m["val_miou"]))
    return write_shipped(candidate, shipped_path(models, arch), hyper, rounds)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pack", type=Path, help="gpu_run_<stamp>.tar.gz or its unpacked folder")
    p.add_argument("--models", type=Path, default=REPO / "models", help="the shipped models (default models/)")
    p.add_argument("--apply", action="store_true", help="write the winners over the shipped files")
    args = p.parse_args(argv)
    if not args.pack.exists():
        p.error("{}: no such tarball or folder".format(args.pack))
    with tempfile.TemporaryDirectory() as scratch:
        pack = unpack(args.pack, Path(scratch))
        summary_file = pack / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"train_exit_code": None}
        decisions = [decide(arch, pack, args.models, summary) for arch in ARCHS]
        print_decisions(decisions)
        if args.apply:
            gpu = gpu_name(pack)
            apply_decisions(decisions, args.models, lambda d: ship(d["arch"], pack, args.models, gpu))
    print(json.dumps(decisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
