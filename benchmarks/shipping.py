"""The ship rule for trained CamVid models, shared by ``ship_gpu.py`` (a GPU run's tarball) and
``ship_run.py`` (a finished CPU run folder).

The rule (models/README.md), set before every run: a candidate (fixed schedule, last epoch
exported, logit offsets fitted on train, val scored once) replaces the shipped
``models/<arch>_camvid.safetensors`` only if its val mIoU with offsets is strictly above the
shipped card's. A candidate that is not comparable (other classes or input size, another
selection protocol, no offsets fitted on train, weights not trained from scratch, a run that did
not end as planned) is refused, whatever its score.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from enet_seg_ros.engine.quantize import QuantSettings, int8_records  # noqa: E402
from enet_seg_ros.weights import ModelCard, WeightsError, load_model, read_card, save_model  # noqa: E402

ARCHS = ("enet", "espnet", "erfnet")
FROM_SCRATCH = "nothing: trained from scratch (random initialisation), no other weights, no teacher"


def shipped_path(models: Path, arch: str) -> Path:
    """The shipped CamVid model of ``arch`` in ``models``."""
    return models / "{}_camvid.safetensors".format(arch)


def judge(arch: str, candidate: Path, models: Path, run_problems: Sequence[str] = ()) -> Dict[str, Any]:
    """The rule for one candidate file: ``{"arch", "verdict", "why", "candidate", "shipped"}``.

    ``run_problems``: what the caller found wrong with the run that made ``candidate`` (a smoke
    run, an error exit, an unfinished schedule); any one refuses it.
    """
    shipped = shipped_path(models, arch)
    out: Dict[str, Any] = {"arch": arch, "candidate": None, "shipped": None, "verdict": "keep"}
    if not shipped.is_file():
        out["why"] = "no shipped {} to compare with".format(shipped.name)
        return out
    old = read_card(shipped)
    out["shipped"] = old.metrics.get("val_miou")
    if not candidate.is_file():
        out["why"] = "; ".join(run_problems) or "the run made no calibrated model"
        return out
    try:
        new = read_card(candidate)
    except WeightsError as exc:
        out["why"] = str(exc)
        return out
    out["candidate"] = new.metrics.get("val_miou")
    problems: List[str] = list(run_problems)
    if (new.arch, new.dataset, new.class_names) != (old.arch, old.dataset, old.class_names):
        problems.append("another arch, dataset or class list")
    if new.input_size != old.input_size:
        problems.append("input {} vs shipped {}".format(new.input_size, old.input_size))
    protocol = new.metrics.get("protocol", {})
    if protocol.get("select") != "last" or new.metrics.get("split") != "val":
        problems.append("not the last epoch of a fixed schedule scored on val")
    if not str(new.metrics.get("logit_offset", {}).get("fitted_on", "")).startswith("camvid train"):
        problems.append("no logit offsets fitted on train")
    if new.recipe.get("init") or new.recipe.get("distill"):
        problems.append("not trained from scratch (init {!r}, teacher {!r})".format(
            new.recipe.get("init"), new.recipe.get("distill")))
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


def write_shipped(candidate: Path, target: Path, hyper_parameters: str, rounds: str) -> Path:
    """Write ``candidate`` over ``target`` with its provenance and no precision records.

    ``hyper_parameters`` and ``rounds`` go into the card (``metrics.protocol.hyper_parameters``,
    ``metrics.rounds``); the int8 / bf16 records were made for other weights, so they are dropped
    and must be made again (``record_commands`` of the replaced card).
    """
    model, card = load_model(candidate)
    m = card.metrics
    m["protocol"] = dict(m.get("protocol", {}), hyper_parameters=hyper_parameters, initialised_from=FROM_SCRATCH)
    m["rounds"] = rounds
    card.precisions = {}
    return save_model(target, model, card)


def apply_decisions(decisions: List[Dict[str, Any]], models: Path, write) -> None:
    """Write each ``ship`` verdict with ``write(decision) -> Path`` and print how to redo its records.

    Each shipping decision gains ``record_commands`` (from the card it replaces, read before the
    write).
    """
    for d in decisions:
        if d["verdict"] != "ship":
            continue
        target = shipped_path(models, d["arch"])
        d["record_commands"] = record_commands(read_card(target), str(target))
        print("wrote", write(d))
        print("  its int8 / bf16 records, with the settings of the ones it replaced:")
        for command in d["record_commands"]:
            print("    " + command)
    if any(d["verdict"] == "ship" for d in decisions):
        print("then: models/README.md's tables")


def print_decisions(decisions: List[Dict[str, Any]]) -> None:
    """One line per decision: arch, verdict, both scores, why."""
    for d in decisions:
        print("{arch:7s} {verdict:5s} candidate {c:>6s}  shipped {s:>6s}  {why}".format(
            c="-" if d["candidate"] is None else "{:.1%}".format(d["candidate"]),
            s="-" if d["shipped"] is None else "{:.1%}".format(d["shipped"]), **d))
