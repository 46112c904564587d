#!/usr/bin/env python3
"""Apply the ship rule to the models of a ``benchmarks/gpu_run.sh`` tarball.

The rule (models/README.md, "GPU runs"), set before any GPU run: an arch's
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from enet_seg_ros.engine.quantize import QuantSettings, int8_records  # noqa: E402
from enet_seg_ros.weights import ModelCard, WeightsError, load_model, read_card, save_model  # noqa: E402

ARCHS = ("enet", "espnet", "erfnet")


def shipped_path(models: Path, arch: str) -> Path:
    """The shipped CamVid model of ``arch`` in ``models``."""
    return models / "{}_camvid.safetensors".format(arch)


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
    """The rule for one arch: ``{"arch", "verdict", "why", "candidate", "shipped"}``."""
    candidate = pack / "runs" / arch / "calibrated.safetensors"
    shipped = shipped_path(models, arch)
    out: Dict[str, Any] = {"arch": arch, "candidate": None, "shipped": None, "verdict": "keep"}
    if not shipped.is_file():
        out["why"] = "no shipped {} to compare with".format(shipped.name)
        return out
    old = read_card(shipped)
    out["shipped"] = old.metrics.get("val_miou")
    if not candidate.is_file():
        out["why"] = "the run made no calibrated model"
        return out
    try:
        new = read_card(candidate)
    except WeightsError as exc:
        out["why"] = str(exc)
        return out
    out["candidate"] = new.metrics.get("val_miou")
    problems: List[str] = []
    if summary.get("smoke"):
        problems.append("a --smoke run")
    if summary.get("train_exit_code", 1) != 0:
        problems.append("training exited with {}".format(summary.get("train_exit_code")))
    if (new.arch, new.dataset, new.class_names) != (old.arch, old.dataset, old.class_names):
        problems.append("another arch, dataset or class list")
    if new.input_size != old.input_size:
        problems.append("input {} vs shipped {}".format(new.input_size, old.input_size))
    protocol = new.metrics.get("protocol", {})
    if protocol.get("select") != "last" or new.metrics.get("split") != "val":
        problems.append("not the last epoch of a fixed schedule scored on val")
    if not str(new.metrics.get("logit_offset", {}).get("fitted_on", "")).startswith("camvid train"):
        problems.append("no logit offsets fitted on train")
    if problems:
        out["why"] = "not comparable: " + "; ".join(problems)
    elif out["candidate"] is None or out["shipped"] is None:
        out["why"] = "a card without val_miou"
    elif out["candidate"] > out["shipped"]:
        out["verdict"] = "ship"
        out["why"] = "val mIoU with offsets {:.1%} > shipped {:.1%}".format(out["candidate"], out["shipped"])
    else:
        out["why"] = "val mIoU with offsets {:.1%} <= shipped {:.1%} (a tie keeps the shipped one)".format(
            out["candidate"], out["shipped"])
    return out


def record_commands(card: ModelCard, weights: str, data: str = "../shared/data/camvid") -> List[str]:
    """``enet-seg quantize`` commands that redo ``card``'s int8 / bf16 records for ``weights``.

    One per int8 record (the top-level one and each ``by_cpu_class`` entry), with the settings it
    names; the bf16 check rides on the first.
    """
    records = [r for r in int8_records(card.precisions.get("int8")) if "quantization" in r]
    commands = []
    for i, record in enumerate(records):
        q = QuantSettings.from_dict(record["quantization"])
        words = ["enet-seg", "quantize", weights, "--calib", data + "/train", "--calibrate", q.calibrate]
        if q.exclude:
            words += ["--exclude", '"{}"'.format(",".join(q.exclude))]
        if q.weight_bits != 8:
            words += ["--weight-bits", str(q.weight_bits)]
        if not q.per_channel:
            words.append("--per-tensor")
        if q.activation_symmetric:
            words.append("--symmetric-activations")
        if record.get("isa_limit"):
            words += ["--isa", record["isa_limit"]]
        words += ["--validate", data + "/val", "--record"]
        if i == 0 and card.precisions.get("bf16"):
            words.append("--bf16")
        commands.append(" ".join(words))
    if not commands and card.precisions.get("bf16"):
        commands.append("enet-seg quantize {} --calib {}/train --validate {}/val --record --bf16".format(weights, data, data))
    return commands


def ship(arch: str, pack: Path, models: Path, gpu: str) -> Path:
    """Write the candidate over the shipped file, with its provenance and no precision records."""
    model, card = load_model(pack / "runs" / arch / "calibrated.safetensors")
    m = card.metrics
    stamp = re.sub(r"^gpu_run_", "", pack.name)
    before = m.get("before_logit_offset", {}).get("val_miou")
    epochs = "{} encoder-stage + {} full-network epochs".format(card.recipe.get("encoder_epochs"), card.recipe.get("epochs"))
    m["protocol"] = dict(m.get("protocol", {}), **{
        "hyper_parameters": "the papers' recipe (recipe {}, epoch scales {}, colour jitter {}), its epochs fitted before "
                            "training to the GPU run's wall budget (--budget-s {}); the ship rule (val mIoU with offsets "
                            "above the shipped model's) set before the run; not tuned on val".format(
                                card.recipe.get("recipe"), card.recipe.get("epoch_scales"),
                                card.recipe.get("color_jitter", 0.0), card.recipe.get("budget_s")),
        "initialised_from": "nothing: trained from scratch (random initialisation), no other weights, no teacher",
    })
    m["rounds"] = ("one run of benchmarks/gpu_run.sh ({}, {}), on the CamVid JPEG copy (quality 95): {}, last epoch "
                   "exported; val scored once at the end ({}), then logit offsets fitted on train ({:.1%})".format(
                       gpu, stamp, epochs, "{:.1%} without offsets".format(before) if before is not None else "-",
                       m["val_miou"]))
    card.precisions = {}  # made for other weights: record them again (models/README.md commands)
    return save_model(shipped_path(models, arch), model, card)


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
        for d in decisions:
            print("{arch:7s} {verdict:5s} candidate {c:>6s}  shipped {s:>6s}  {why}".format(
                c="-" if d["candidate"] is None else "{:.1%}".format(d["candidate"]),
                s="-" if d["shipped"] is None else "{:.1%}".format(d["shipped"]), **d))
        if args.apply:
            gpu = gpu_name(pack)
            for d in decisions:
                if d["verdict"] == "ship":
                    target = shipped_path(args.models, d["arch"])
                    d["record_commands"] = record_commands(read_card(target), str(target))
                    print("wrote", ship(d["arch"], pack, args.models, gpu))
                    print("  its int8 / bf16 records, with the settings of the ones it replaced:")
                    for command in d["record_commands"]:
                        print("    " + command)
            if any(d["verdict"] == "ship" for d in decisions):
                print("then: models/README.md's tables")
    print(json.dumps(decisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
