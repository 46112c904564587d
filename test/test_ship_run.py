"""``benchmarks/ship_run.py``: the ship rule applied to a finished CPU training run, on real
weights files, a real calibration and a tiny CamVid."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from enet_seg_ros.weights import load_model, read_card, save_model
from test_datasets import make_camvid

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "enet_camvid.safetensors"


def _tool():
    spec = importlib.util.spec_from_file_location("ship_run", REPO / "benchmarks" / "ship_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, epoch: int = 299, **recipe) -> Path:
    """A run folder whose export is the shipped ENet's network at ``epoch`` of a 40 + 300 schedule."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": "enet", "epochs": 300}))
    (run / "log.csv").write_text("stage,epoch,train_loss\nencoder,39,0.5\ndecoder,{},0.2\n".format(epoch))
    model, card = load_model(SHIPPED)
    model.set_logit_offset(None)
    card.options = {k: v for k, v in card.options.items() if k != "logit_offset"}
    card.recipe.update(dict({"epochs": 300, "encoder_epochs": 40, "stages": "both", "select": "last", "seed": 25,
                             "color_jitter": 0.2}, **recipe))
    card.metrics = {"split": "val", "stage": "decoder", "epoch": epoch, "precision": "bf16", "train_time_s": 7200.0,
                    "val_miou": 0.5, "protocol": {"select": "last", "scored_on": "val"}}
    card.precisions = {}
    save_model(run / "best.safetensors", model, card)
    return run


def _decision(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _lower_shipped(models: Path, val_miou: float) -> None:
    model, card = load_model(models / SHIPPED.name)
    card.metrics["val_miou"] = val_miou
    save_model(models / SHIPPED.name, model, card)


def test_finished_run_is_calibrated_then_shipped_with_provenance(tmp_path, models, capsys):
    data = make_camvid(tmp_path / "camvid")
    run = _run(tmp_path)
    _lower_shipped(models, 0.0)  # any real score beats it: the rule's arithmetic is test_ship_gpu's
    tool = _tool()
    assert tool.main([str(run), "--data-root", str(data), "--models", str(models), "--apply",
                      "--note", "epochs 0-30 on machine A"]) == 0
    out = capsys.readouterr().out
    decision = json.loads(out.strip().splitlines()[-1])
    assert "calibrated: val mIoU" in out and decision["verdict"] == "ship", decision
    cal = read_card(run / "calibrated.safetensors")  # the offsets were fitted on train, val scored once
    assert cal.metrics["logit_offset"]["fitted_on"].startswith("camvid train (8 frames")
    assert cal.options["logit_offset"] and cal.metrics["before_logit_offset"]["val_miou"] == 0.5
    card = read_card(models / SHIPPED.name)
    assert card.metrics["val_miou"] == pytest.approx(cal.metrics["val_miou"]) == pytest.approx(decision["candidate"])
    assert card.precisions == {}
    protocol = card.metrics["protocol"]
    assert protocol["initialised_from"].startswith("nothing") and protocol["select"] == "last"
    hyper = protocol["hyper_parameters"]
    assert hyper.startswith("ENet recipe (Adam lr") and "40 encoder-stage + 300 full-network epochs" in hyper
    assert "seed 25" in hyper and "colour jitter 0.2" in hyper and "full 480x360 frames" in hyper
    rounds = card.metrics["rounds"]
    assert "epochs 0-30 on machine A" in rounds and "2.0 h of training" in rounds and "50.0% without offsets" in rounds
    # Called again, it uses the calibration it made (no second look at val) and the tie keeps the file.
    before = (models / SHIPPED.name).read_bytes()
    assert tool.main([str(run), "--data-root", str(data), "--models", str(models), "--apply"]) == 0
    out = capsys.readouterr().out
    assert "calibrated:" not in out
    assert json.loads(out.strip().splitlines()[-1])["verdict"] == "keep"
    assert (models / SHIPPED.name).read_bytes() == before


def _calibrated_copy(run: Path) -> None:
    """A calibration newer than the export (reused as it is): the shipped card's offsets and scores."""
    model, card = load_model(SHIPPED)
    card.recipe = read_card(run / "best.safetensors").recipe
    save_model(run / "calibrated.safetensors", model, card)
    stamp = (run / "best.safetensors").stat().st_mtime + 10
    os.utime(run / "calibrated.safetensors", (stamp, stamp))


@pytest.mark.parametrize("case, why", [
    ("unfinished", "no best.safetensors: the run has not finished (decoder epoch 117)"),
    ("early", "holds decoder epoch 117, not the last of its schedule (decoder epoch 299)"),
    ("init", "not trained from scratch (init 'other.safetensors'"),
    ("select", "selected by 'val', not the last epoch"),
])
def test_run_is_refused(tmp_path, models, capsys, case, why):
    run = _run(tmp_path, epoch=117 if case in ("unfinished", "early") else 299,
               **({"init": "other.safetensors"} if case == "init" else {}),
               **({"select": "val"} if case == "select" else {}))
    if case == "unfinished":
        (run / "best.safetensors").unlink()
    else:
        _calibrated_copy(run)
    _lower_shipped(models, 0.0)
    before = (models / SHIPPED.name).read_bytes()
    assert _tool().main([str(run), "--data-root", str(tmp_path / "no-data"), "--models", str(models), "--apply"]) == 0
    decision = _decision(capsys)
    assert decision["verdict"] == "keep" and why in decision["why"], decision
    assert (models / SHIPPED.name).read_bytes() == before


def test_missing_run_or_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _tool().main([str(tmp_path / "nope")])
    assert "no such run folder" in capsys.readouterr().err
    run = _run(tmp_path)  # finished, but no CamVid where it is told to look
    with pytest.raises(SystemExit):
        _tool().main([str(run), "--data-root", str(tmp_path / "no-data")])
    assert "cannot fit the logit offsets" in capsys.readouterr().err
    assert not (run / "calibrated.safetensors").exists()
