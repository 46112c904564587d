"""Issue 11 trainer features on tiny generated datasets: checkpoint selection protocols (last /
holdout / val) recorded in the card, the paper recipe with multi-scale epochs, several archs in
one command (in turn and concurrently), the wall-budget fit, bf16 detection from CPU flags."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.engine.cpu import cpu_has_bf16
from enet_seg_ros.train.trainer import TrainConfig, holdout_split
from enet_seg_ros.weights import load_model
from test_datasets import make_camvid
from test_train import read_log

BASE = ["--size", "64x48", "--batch-size", "4", "--threads", "1"]


def train(root: Path, out: Path, *extra: str, arch: str = "enet") -> int:
    return cli.main(["train", "--dataset", "camvid", "--data-root", str(root), "--out", str(out), "--arch", arch,
                     *BASE, *extra])


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=10, n_val=4)


def test_select_val_exports_the_best_val_epoch(camvid, tmp_path):
    """--select val: the old behaviour (best decoder epoch on val), labelled optimistic in the card."""
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "3", "--select", "val") == 0
    rows = read_log(out)
    best = max(rows, key=lambda r: float(r["val_miou"]))
    _, card = load_model(out / "best.safetensors")
    m = card.metrics
    assert m["epoch"] == int(best["epoch"]) and m["val_miou"] == pytest.approx(float(best["val_miou"]))
    assert m["protocol"]["select"] == "val" and "optimistic" in m["protocol"]["selected_on"]


def test_select_holdout(camvid, tmp_path):
    """--select holdout: frames held out of train pick the epoch; val scores that very model."""
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "3", "--select", "holdout", "--holdout", "2") == 0
    rows = read_log(out)
    assert all(r["holdout_miou"] not in ("", None) for r in rows)
    best = max(rows, key=lambda r: float(r["holdout_miou"]))  # first maximum, as the trainer keeps it
    _, card = load_model(out / "best.safetensors")
    m = card.metrics
    assert m["epoch"] == int(best["epoch"])
    assert m["holdout_miou"] == pytest.approx(float(best["holdout_miou"]))
    assert m["val_miou"] == pytest.approx(float(best["val_miou"]))
    held = m["protocol"]["holdout_frames"]
    assert m["protocol"]["select"] == "holdout" and held == ["train_000.png", "train_009.png"]
    # The held-out frames are not trained on: the class weights come from the other 8 labels.
    assert len(list((out.parent / ".class_weights").glob("class_hist_*.json"))) == 1


def test_holdout_split_is_deterministic_and_disjoint():
    train_idx, held = holdout_split(367, 30)
    assert len(held) == 30 and not set(train_idx) & set(held) and len(train_idx) + 30 == 367
    assert holdout_split(367, 30) == (train_idx, held)
    assert held[0] == 0 and held[-1] == 366  # spread over the whole (sequence-sorted) list
    with pytest.raises(ValueError, match="--holdout"):
        holdout_split(10, 10)


@pytest.mark.parametrize("extra, message", [
    (["--select", "holdout"], "--holdout N"),
    (["--holdout", "2"], "--holdout N"),
    (["--budget-s", "10", "--resume"], "--budget-s"),
])
def test_protocol_user_errors(camvid, tmp_path, capsys, extra, message):
    assert train(camvid, tmp_path / "run", "--stages", "decoder", "--epochs", "1", *extra) == 2
    assert message in capsys.readouterr().err


def test_paper_recipe_config(camvid, tmp_path):
    """--recipe paper: the papers' schedules (ESPNet: 300 epochs, step decay, batch 12 / 6, multi-scale)."""
    out = tmp_path / "run"
    assert train(camvid, out, "--recipe", "paper", "--epochs", "1", "--encoder-epochs", "1", "--max-steps-per-epoch",
                 "1", "--epoch-scales", "0.5,1", "--encoder-batch-size", "8", arch="espnet") == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["schedule"], config["encoder_batch_size"], config["epoch_scales"]) == ("step", 8, [0.5, 1.0])
    assert config["batch_size"] == 4 and config["lr"] == 5e-4  # the command line wins over the recipe
    resolved = TrainConfig(arch="espnet", dataset="camvid", data_root="x", out="y", recipe="paper").resolved()
    assert (resolved.epochs, resolved.encoder_epochs, resolved.batch_size, resolved.encoder_batch_size) == (300, 300, 6, 12)
    assert resolved.epoch_scales == (0.5, 0.75, 1.0, 1.25, 1.5) and resolved.schedule == "step"
    erf = TrainConfig(arch="erfnet", dataset="camvid", data_root="x", out="y", recipe="paper").resolved()
    assert (erf.epochs, erf.batch_size, erf.schedule) == (150, 6, "poly")
    default = TrainConfig(arch="espnet", dataset="camvid", data_root="x", out="y").resolved()
    assert (default.epochs, default.epoch_scales, default.encoder_batch_size) == (100, None, 12)
    rows = read_log(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("encoder", "0"), ("decoder", "0")]


def test_multiscale_epoch_passes(camvid, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="enet_seg_ros")
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "1", "--epoch-scales", "0.5,1,1.5") == 0
    assert "3 pass(es) per epoch" in caplog.text
    # 10 frames, batch 4: 2 steps per pass, 3 passes -> 24 images in the epoch
    row = read_log(out)[0]
    seconds = float(row["epoch_seconds"])  # rounded to 0.1 s in the log: only a long epoch gives a precise count
    images = float(row["images_per_second"]) * seconds
    assert images == pytest.approx(24, rel=0.25) if seconds >= 1.0 else 0 < images < 36


def test_several_archs_in_one_command(camvid, tmp_path, capsys):
    out = tmp_path / "runs"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "1", arch="enet,espnet") == 0
    printed = capsys.readouterr().out
    for arch in ("enet", "espnet"):
        _, card = load_model(out / arch / "best.safetensors")
        assert card.arch == arch and (out / arch / "log.csv").is_file()
        assert "{}: exported model: val mIoU".format(arch) in printed
    with pytest.raises(SystemExit) as exc:  # argparse: usage + "unknown arch foo", exit code 2
        train(camvid, tmp_path / "bad", arch="enet,foo")
    assert exc.value.code == 2 and "unknown arch foo" in capsys.readouterr().err


def test_several_archs_concurrently(camvid, tmp_path):
    out = tmp_path / "runs"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "1", "--concurrent", arch="enet,erfnet") == 0
    for arch in ("enet", "erfnet"):
        _, card = load_model(out / arch / "best.safetensors")
        assert card.arch == arch


def test_budget_fits_the_epochs(camvid, tmp_path):
    """--budget-s: a probe measures the step time and cuts a too long schedule to fit."""
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "both", "--epochs", "100000", "--encoder-epochs", "50000",
                 "--budget-s", "8") == 0
    probe = json.loads((out / "budget.json").read_text())
    fitted = probe["fitted_epochs"]
    assert 1 <= fitted["decoder"] < 100000 and 1 <= fitted["encoder"] < 50000
    assert set(probe["stages"]) == {"encoder", "decoder"}
    assert all(v > 0 for s in probe["stages"].values() for v in s["images_per_second"].values())
    assert probe["cuda_graphs"] is torch.cuda.is_available()  # auto: on for one CUDA process
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["encoder_epochs"]) == (fitted["decoder"], fitted["encoder"])
    _, card = load_model(out / "best.safetensors")
    assert card.metrics["stage"] == "decoder"
    assert card.metrics["epoch"] == fitted["decoder"] - 1 or "stopped_early" in card.metrics


def test_cpu_bf16_detection(tmp_path):
    def flags(text: str) -> Path:
        p = tmp_path / "cpuinfo_{}".format(abs(hash(text)))
        p.write_text("processor\t: 0\nflags\t\t: {}\n\n".format(text))
        return p

    assert cpu_has_bf16(str(flags("fpu sse avx2 fma avx512f amx_bf16 amx_tile")))
    assert cpu_has_bf16(str(flags("fpu avx2 avx512f avx512_bf16")))
    assert not cpu_has_bf16(str(flags("fpu sse avx2 fma")))  # AMD EPYC (AVX2 only): fp32
    assert not cpu_has_bf16(str(tmp_path / "absent"))


def test_precision_flag_is_recorded(camvid, tmp_path):
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "1", "--precision", "fp32") == 0
    _, card = load_model(out / "best.safetensors")
    assert card.metrics["precision"] == "fp32"
    assert torch.isfinite(torch.tensor(card.metrics["val_miou"]))


def test_budget_refits_the_next_stage_from_measured_epochs(camvid, tmp_path, monkeypatch):
    """--budget-s: the probe's estimate is corrected at the stage boundary. Encoder epochs made
    1.5 s slower than probed (as when concurrent runs contend for the device) leave fewer
    decoder epochs than the probe fitted, so the schedule ends within the budget instead of
    being cut mid-way."""
    import time as _time

    from enet_seg_ros.train.trainer import Trainer

    real = Trainer._train_epoch

    def slow_encoder(self, model, opt, sampler, passes, stage, *args):
        if stage == "encoder":
            _time.sleep(1.5)
        return real(self, model, opt, sampler, passes, stage, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", slow_encoder)
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "both", "--encoder-epochs", "2", "--epochs", "4000", "--budget-s", "14",
                 "--val-every", "1000", "--no-compile") == 0
    probe = json.loads((out / "budget.json").read_text())
    refit = probe["refit"]["decoder"]
    assert refit["epochs_before"] == probe["fitted_epochs"]["decoder"]
    assert refit["measured_epoch_seconds"]["encoder"] > 1.5
    assert 1 <= refit["epochs"] < refit["epochs_before"]
    assert json.loads((out / "config.json").read_text())["epochs"] == refit["epochs"]
    decoder_rows = [r for r in read_log(out) if r["stage"] == "decoder"]
    _, card = load_model(out / "best.safetensors")
    assert len(decoder_rows) == refit["epochs"] or "stopped_early" in card.metrics
    assert card.recipe["epochs"] == refit["epochs"]
