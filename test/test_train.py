"""``enet-seg train`` end to end on tiny generated datasets: outputs of a run (weights + card, log,
config), exact ``--resume``, the Cityscapes layout, user errors, dropout switch, TensorBoard path."""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.data.labels import CAMVID, CITYSCAPES
from enet_seg_ros.nets import build_model
from enet_seg_ros.train.trainer import TrainConfig, _disable_dropout
from enet_seg_ros.weights import load_model, read_card
from test_datasets import make_camvid, make_cityscapes

BASE = ["--arch", "enet", "--size", "64x48", "--batch-size", "4", "--threads", "1"]
BOTH = ["--stages", "both", "--encoder-epochs", "1", "--epochs", "2"]
TIMING = ("epoch_seconds", "images_per_second")


def train(root: Path, out: Path, *extra: str, dataset: str = "camvid") -> int:
    return cli.main(["train", "--dataset", dataset, "--data-root", str(root), "--out", str(out), *BASE, *extra])


def read_log(out: Path) -> List[Dict[str, str]]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timing(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def checkpoint(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=8, n_val=4)


@pytest.fixture(scope="module")
def straight(camvid, tmp_path_factory) -> Path:
    """One uninterrupted two-stage run: 1 encoder epoch + 2 decoder epochs."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert train(camvid, out, *BOTH) == 0
    return out


# ------------------------------------------------------------------------------------ smoke run
def test_run_outputs(straight, camvid):
    names = {p.name for p in straight.iterdir()}
    assert {"last.pt", "best.safetensors", "best.card.json", "log.csv", "config.json", "dataset_stats.json",
            "class_weights.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    rows = read_log(straight)
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("encoder", 0), ("decoder", 0), ("decoder", 1)]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0
        assert 0 <= float(r["val_miou"]) <= 1 and float(r["images_per_second"]) > 0
    # poly schedule over the 2 decoder epochs: lr 5e-4, then 5e-4 * (1 - 1/2) ** 0.9
    assert float(rows[1]["lr"]) == pytest.approx(5e-4)
    assert float(rows[2]["lr"]) == pytest.approx(5e-4 * 0.5 ** 0.9)

    config = json.loads((straight / "config.json").read_text())
    assert config["arch"] == "enet" and config["size"] == [64, 48] and config["encoder_epochs"] == 1
    assert (config["lr"], config["weight_decay"], config["weighting_c"]) == (5e-4, 2e-4, 1.02)  # ENet recipe
    TrainConfig(**config)  # the saved config is a complete, loadable TrainConfig

    model, card = load_model(straight / "best.safetensors")
    assert card.arch == "enet" and card.dataset == "camvid" and card.num_classes == 11
    assert card.class_names == list(CAMVID.class_names) and card.palette == [list(c) for c in CAMVID.palette]
    assert card.input_size == [64, 48]
    stats = json.loads((straight / "dataset_stats.json").read_text())
    assert card.normalization.mean == stats["mean"] and card.normalization.std == stats["std"]
    assert card.normalization.channel_order == "rgb"
    assert card.recipe["lr"] == 5e-4 and card.recipe["epochs"] == 2 and card.recipe["class_weighting"] == "enet"
    assert "data_root" not in card.recipe and "out" not in card.recipe
    m = card.metrics
    # Default protocol (honest numbers): a fixed schedule whose last epoch is exported, whatever
    # val says; val scores the exported model. (Before issue 11 the best epoch on val was exported.)
    assert m["protocol"]["select"] == "last" and m["protocol"]["scored_on"] == "val"
    assert (m["stage"], m["epoch"]) == ("decoder", 1)
    assert m["val_miou"] == pytest.approx(float(rows[-1]["val_miou"]))
    assert m["precision"] in ("fp32", "bf16")
    assert m["train_time_s"] >= 0 and m["params"] == sum(p.numel() for p in model.parameters())
    assert set(m["val_class_iou"]) == set(CAMVID.class_names)
    assert read_card(straight / "best.safetensors") == card
    assert json.loads((straight / "best.card.json").read_text())["metrics"]["val_miou"] == m["val_miou"]
    # The exported network is the full one (not the encoder head) and runs at any size.
    assert not model.encoder_only
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 11, 48, 64)


def test_class_weights_of_the_run(straight, camvid):
    """class_weights.json holds 1/ln(1.02 + p) of the training labels' class frequencies."""
    counts = np.zeros(256, np.int64)
    for p in sorted((camvid / "trainannot").iterdir()):
        counts += np.bincount(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
    p = counts[:11] / counts[:11].sum()
    saved = json.loads((straight / "class_weights.json").read_text())
    assert saved["kind"] == "enet" and saved["c"] == 1.02
    np.testing.assert_allclose(saved["weights"], 1 / np.log(1.02 + p), rtol=1e-6)
    assert len(list((straight.parent / ".class_weights").glob("class_hist_*.json"))) == 1


def test_tensorboard_absent_is_silent(straight):
    if importlib.util.find_spec("tensorboard") is not None:
        assert (straight / "tb").is_dir()
    else:
        assert not (straight / "tb").exists()


def test_tensorboard_scalars_when_available(camvid, tmp_path, monkeypatch):
    """With a SummaryWriter importable, per-epoch scalars go to RUN_DIR/tb (recorded by a stand-in)."""
    written = []

    class Writer:
        def __init__(self, logdir):
            written.append(("open", logdir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "2") == 0
    rows = read_log(out)
    assert written[0] == ("open", str(out / "tb")) and written[-1] == ("close",)
    scalars = {(t, s): v for t, v, s in (w for w in written if len(w) == 3)}
    for epoch, row in enumerate(rows):
        assert scalars[("decoder/train_loss", epoch)] == pytest.approx(float(row["train_loss"]))
        assert scalars[("decoder/val_miou", epoch)] == pytest.approx(float(row["val_miou"]))
        assert ("decoder/lr", epoch) in scalars


def test_cityscapes_layout(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n_train=4, n_val=2)
    out = tmp_path / "run"
    assert train(root, out, "--stages", "decoder", "--epochs", "1", dataset="cityscapes") == 0
    model, card = load_model(out / "best.safetensors")
    assert card.dataset == "cityscapes" and card.num_classes == 19
    assert card.class_names == list(CITYSCAPES.class_names)
    assert card.train_id_to_id == list(CITYSCAPES.train_id_to_id)
    assert len(read_log(out)) == 1


# ---------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stop_after", [1, 2], ids=["at-stage-boundary", "mid-stage"])
def test_resume_is_exact(straight, camvid, tmp_path, stop_after, caplog):
    """Interrupted after N epochs and resumed == uninterrupted: weights, optimiser, logs, best export."""
    out = tmp_path / "split"
    caplog.set_level(logging.INFO, logger="enet_seg_ros")
    assert train(camvid, out, *BOTH, "--stop-after", str(stop_after)) == 0
    assert "continue with --resume" in caplog.text
    first = checkpoint(out)
    assert (first["stage_index"], first["epoch"]) == ((0, 0) if stop_after == 1 else (1, 0))
    assert len(read_log(out)) == stop_after
    if stop_after == 2:
        # A crash after the log row of the next epoch but before its checkpoint: the row must
        # not appear twice after the resume.
        with open(out / "log.csv", "a") as f:
            f.write("decoder,1,9.9,0.0001,0.5,0.5,1.0,1.0\n")
    assert train(camvid, out, *BOTH, "--resume") == 0

    a, b = checkpoint(straight), checkpoint(out)
    assert (b["stage_index"], b["epoch"]) == (1, 1)
    assert_same_state(a["model"], b["model"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_state(pa, pb)
    assert without_timing(read_log(straight)) == without_timing(read_log(out))
    ma, _ = load_model(straight / "best.safetensors")
    mb, card = load_model(out / "best.safetensors")
    assert_same_state(ma.state_dict(), mb.state_dict())
    assert card.metrics["val_miou"] == read_card(straight / "best.safetensors").metrics["val_miou"]


def test_same_seed_same_run_other_seed_differs(straight, camvid, tmp_path):
    """The seed fixes initial weights and augmentation: a second run reproduces the first."""
    again, other = tmp_path / "again", tmp_path / "other"
    assert train(camvid, again, *BOTH) == 0
    assert_same_state(checkpoint(straight)["model"], checkpoint(again)["model"])
    assert train(camvid, other, *BOTH, "--seed", "1") == 0
    theirs = checkpoint(other)["model"]
    assert not any(torch.equal(theirs[k], v) for k, v in checkpoint(again)["model"].items()
                   if v.is_floating_point() and v.numel() > 1 and k.endswith("weight"))


def test_worker_processes_do_not_change_the_run(straight, camvid, tmp_path):
    """--workers is kept for old command lines and changes nothing (data is augmented in-process)."""
    out = tmp_path / "workers"
    assert train(camvid, out, *BOTH, "--workers", "2") == 0
    assert_same_state(checkpoint(straight)["model"], checkpoint(out)["model"])


# ----------------------------------------------------------------------------------- user errors
def test_existing_run_needs_resume(straight, camvid, capsys):
    before = (straight / "last.pt").stat().st_mtime_ns
    assert train(camvid, straight, *BOTH) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and str(straight) in err
    assert (straight / "last.pt").stat().st_mtime_ns == before


def test_weights_decayed_below_2_pow_minus_100_are_zeroed_after_every_epoch(camvid, tmp_path, monkeypatch):
    # Weight decay shrinks weights that stopped learning until they are subnormal, and then every
    # fp32 step on x86 slows down (3x for the first from-scratch ERFNet): the trainer zeroes them.
    from enet_seg_ros.train import trainer as trainer_mod

    train_epoch = trainer_mod.Trainer._train_epoch
    planted = []

    def epoch_then_decayed(self, model, *args):
        out = train_epoch(self, model, *args)
        name, weight = next((n, p) for n, p in model.named_parameters() if p.dim() == 4 and p.shape[-1] >= 3)
        with torch.no_grad():
            weight[0, 0, 0, :3] = torch.tensor([1e-40, -1e-33, 1e-20])  # as decay leaves them
        planted.append(name.split("_orig_mod.")[-1])
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", epoch_then_decayed)
    out = tmp_path / "run"
    assert train(camvid, out, "--stages", "decoder", "--epochs", "2") == 0
    assert len(planted) == 2
    kept = checkpoint(out)["model"][planted[-1]][0, 0, 0, :3].tolist()
    assert kept[:2] == [0.0, 0.0] and kept[2] == pytest.approx(1e-20)


def test_batch_larger_than_dataset(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "camvid", "--data-root", str(camvid), "--out", str(out), "--arch", "enet",
                     "--size", "64x48", "--batch-size", "16", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "has 8 frames" in err and "--batch-size" in err
    assert not (out / "last.pt").exists()


def test_resume_refuses_settings_it_would_not_apply_and_warns_about_the_others(camvid, tmp_path, caplog, capsys):
    out = tmp_path / "run"
    assert train(camvid, out, *BOTH, "--stop-after", "2") == 0  # checkpoint: decoder epoch 0
    config = (out / "config.json").read_text()
    log_rows = read_log(out)
    # The restored optimiser keeps its lr and weight decay, the encoder stage is over, the checkpoint
    # is past a shorter schedule, the network is another: refused, and the run folder left as it was.
    for extra, why in ((["--lr", "1e-3"], "lr 0.0005 -> 0.001"),
                       (["--weight-decay", "0.1"], "weight_decay 0.0002 -> 0.1"),
                       (["--epochs", "1"], "decoder epochs 1 end at or before the checkpoint's decoder epoch 0"),
                       (["--arch", "erfnet"], "arch enet -> erfnet"),
                       (["--stages", "decoder"], "stages both -> decoder")):
        argv = [a for a in BOTH if a not in ("--stages", "both")] if extra[0] == "--stages" else list(BOTH)
        if extra[0] in ("--encoder-epochs", "--epochs"):
            argv = [a for i, a in enumerate(BOTH) if BOTH[i - 1] != extra[0] and a != extra[0]]
        code = train(camvid, out, *argv, *extra, "--resume")
        err = capsys.readouterr().err
        assert code == 2 and why in err, (extra, err)
        assert (out / "config.json").read_text() == config and read_log(out) == log_rows
    # Once the encoder stage is over its epoch count is history: the run's own is kept, and a longer
    # full-network schedule is taken (models/README.md's rounds were lengthened this way).
    assert train(camvid, out, *[a for a in BOTH if a not in ("--encoder-epochs", "1")], "--encoder-epochs", "5",
                 "--epochs", "3", "--stop-after", "1", "--resume") == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["encoder_epochs"], saved["epochs"]) == (1, 3)
    caplog.clear()
    # A setting the run does take (the global batch) is applied with a warning.
    assert train(camvid, out, *BOTH[:-1], "3", "--batch-size", "2", "--resume") == 0
    assert "changed settings" in caplog.text and "batch_size 4 -> 2" in caplog.text


def test_resume_needs_a_readable_checkpoint_and_a_new_run_starts_a_new_log(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(camvid, out, *BOTH, "--resume") == 2  # nothing to continue: not a silent restart
    assert "holds no checkpoint" in capsys.readouterr().err and not (out / "log.csv").exists()
    assert train(camvid, out, *BOTH, "--stop-after", "1") == 0
    (out / "last.pt").write_bytes(b"")
    assert train(camvid, out, *BOTH, "--resume") == 2
    assert "last.pt is unreadable" in capsys.readouterr().err
    # A crash after an epoch's log row but before any checkpoint: the next run starts its log anew.
    (out / "last.pt").unlink()
    assert train(camvid, out, *BOTH, "--stop-after", "1") == 0
    assert [(r["stage"], r["epoch"]) for r in read_log(out)] == [("encoder", "0")]
    # An earlier stage cut to end at the checkpoint just ends, and the next stage runs.
    early = tmp_path / "early"
    assert train(camvid, early, "--stages", "both", "--encoder-epochs", "2", "--epochs", "1", "--stop-after", "1") == 0
    assert train(camvid, early, "--stages", "both", "--encoder-epochs", "1", "--epochs", "1", "--resume") == 0
    assert [(r["stage"], r["epoch"]) for r in read_log(early)] == [("encoder", "0"), ("decoder", "0")]
    # A row cut off by a power loss does not stop the resume.
    with open(out / "log.csv", "a") as f:
        f.write("decoder")
    assert train(camvid, out, *BOTH, "--resume") == 0
    assert [(r["stage"], r["epoch"]) for r in read_log(out)] == [("encoder", "0"), ("decoder", "0"), ("decoder", "1")]


# ---------------------------------------------------------------------------------------- dropout
def test_no_dropout_makes_training_forward_deterministic():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, 64)
    model = build_model("enet", 11).train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # dropout draws new masks each call
        n = _disable_dropout(model)
        assert n > 0 and all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout2d))
        state = torch.get_rng_state()
        assert torch.equal(model(x), model(x))
        assert torch.equal(state, torch.get_rng_state())  # p = 0 draws no random numbers
