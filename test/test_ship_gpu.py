"""``benchmarks/ship_gpu.py``: the ship rule applied to a GPU run's tarball, on real weights files."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

from enet_seg_ros.weights import load_model, read_card, save_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "enet_camvid.safetensors"


def _tool():
    spec = importlib.util.spec_from_file_location("ship_gpu", REPO / "benchmarks" / "ship_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pack(root: Path, val_miou: float, input_size=None, smoke: bool = False, exit_code: int = 0) -> Path:
    """A gpu_run_<stamp>/ folder whose ENet candidate is the shipped ENet with another val score."""
    pack = root / "gpu_run_20261128T120000Z"
    (pack / "runs" / "enet").mkdir(parents=True)
    (pack / "logs").mkdir()
    model, card = load_model(SHIPPED)
    card.metrics["val_miou"] = val_miou
    card.metrics["protocol"] = {"select": "last", "scored_on": "val", "hyper_parameters": "recipe paper"}
    card.recipe.update({"recipe": "paper", "epoch_scales": [0.5, 1.5], "budget_s": 400.0, "epochs": 9,
                        "color_jitter": 0.2})
    if input_size:
        card.input_size = list(input_size)
    save_model(pack / "runs" / "enet" / "calibrated.safetensors", model, card)
    (pack / "summary.json").write_text(json.dumps({"train_exit_code": exit_code, "smoke": smoke}))
    (pack / "logs" / "env.txt").write_text('Sat Nov 28\n{"torch": "2.11", "gpu": "NVIDIA H200"}\n')
    return pack


def _decisions(capsys) -> dict:
    return {d["arch"]: d for d in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}


def test_better_candidate_is_shipped_with_provenance(tmp_path, models, capsys):
    shipped = read_card(models / SHIPPED.name).metrics["val_miou"]
    pack = _pack(tmp_path / "a", shipped + 0.01)
    tarball = tmp_path / "gpu_run.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(pack, arcname=pack.name)
    assert _tool().main([str(tarball), "--models", str(models), "--apply"]) == 0
    decisions = _decisions(capsys)
    assert decisions["enet"]["verdict"] == "ship"
    assert decisions["espnet"]["verdict"] == decisions["erfnet"]["verdict"] == "keep"  # not shipped in this folder
    card = read_card(models / SHIPPED.name)
    assert card.metrics["val_miou"] == pytest.approx(shipped + 0.01)
    assert card.precisions == {}  # the old records belonged to other weights
    assert card.metrics["protocol"]["initialised_from"].startswith("nothing")
    assert "colour jitter 0.2" in card.metrics["protocol"]["hyper_parameters"]
    assert "NVIDIA H200" in card.metrics["rounds"] and "20261128T120000Z" in card.metrics["rounds"]
    assert json.loads((models / "enet_camvid.card.json").read_text())["metrics"]["val_miou"] == card.metrics["val_miou"]
    # The records are made again with the settings the replaced file's records named.
    commands = decisions["enet"]["record_commands"]
    old = read_card(SHIPPED).precisions["int8"]
    assert len(commands) == 1 + len([c for c in old.get("by_cpu_class", {}) if c != old["cpu_int8_class"]])
    assert "--calibrate {}".format(old["quantization"]["calibrate"]) in commands[0] and commands[0].endswith("--bf16")
    assert ",".join(old["quantization"]["exclude"]) in commands[0]
    avx2 = old["by_cpu_class"]["avx2"]
    assert [c for c in commands if "--isa AVX2" in c and "--weight-bits {}".format(avx2["quantization"]["weight_bits"]) in c]


@pytest.mark.parametrize("change, why", [
    (dict(delta=0.0), "a tie keeps the shipped one"),
    (dict(delta=-0.02), "<= shipped"),
    (dict(delta=0.05, input_size=(96, 72)), "input [96, 72]"),
    (dict(delta=0.05, smoke=True), "a --smoke run"),
    (dict(delta=0.05, exit_code=124), "training exited with 124"),
])
def test_candidate_is_refused(tmp_path, models, capsys, change, why):
    before = (models / SHIPPED.name).read_bytes()
    shipped = read_card(models / SHIPPED.name).metrics["val_miou"]
    delta = change.pop("delta")
    pack = _pack(tmp_path, shipped + delta, **change)
    assert _tool().main([str(pack), "--models", str(models), "--apply"]) == 0
    decision = _decisions(capsys)["enet"]
    assert decision["verdict"] == "keep" and why in decision["why"]
    assert (models / SHIPPED.name).read_bytes() == before


def test_missing_pack_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _tool().main([str(tmp_path / "nope.tar.gz")])
    assert "no such tarball or folder" in capsys.readouterr().err
