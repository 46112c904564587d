"""checkpoints/: the resumable state of training runs that span sessions and machines."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.data.labels import get_label_spec
from enet_seg_ros.nets import build_model

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
RUNS = sorted(p for p in ROOT.iterdir() if (p / "last.pt").is_file()) if ROOT.is_dir() else []


def _rows(run: Path):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_checkpoint_matches_its_config_log_and_readme(run: Path):
    config = json.loads((run / "config.json").read_text())
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # no pickled code
    model = build_model(config["arch"], get_label_spec(config["dataset"]).num_classes, **config["options"])
    model.load_state_dict(state["model"], strict=True)
    # The log ends at the checkpoint's epoch (the state of the last finished epoch).
    last = _rows(run)[-1]
    assert int(last["epoch"]) == state["epoch"]
    # The README says how to continue it, with the run's own settings.
    readme = (ROOT / "README.md").read_text()
    assert "`{}/`".format(run.name) in readme
    assert "--epochs {} --seed {}".format(config["epochs"], config["seed"]) in readme and "--resume" in readme


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_checkpoint_resumes_for_one_epoch(run: Path, camvid_root: Path, tmp_path: Path):
    config = json.loads((run / "config.json").read_text())
    if config["dataset"] != "camvid":
        pytest.skip("only CamVid data is available here")
    out = tmp_path / run.name
    shutil.copytree(run, out)
    before = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    # Its own recipe; a short epoch and no compilation keep the check quick (settings it warns about).
    argv = ["train", "--arch", config["arch"], "--dataset", "camvid", "--data-root", str(camvid_root),
            "--out", str(out), "--size", "{}x{}".format(*config["size"]), "--crop", "{}x{}".format(*config["crop"]),
            "--stages", config["stages"], "--encoder-epochs", str(config["encoder_epochs"]),
            "--epochs", str(config["epochs"]), "--seed", str(config["seed"]), "--select", config["select"],
            "--val-every", str(config["val_every"]), "--threads", "1", "--no-compile", "--max-steps-per-epoch", "1",
            "--stop-after", "1", "--resume"]
    assert cli.main(argv) == 0
    after = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert (after["stage_index"], after["epoch"]) == (before["stage_index"], before["epoch"] + 1)
    assert int(_rows(out)[-1]["epoch"]) == before["epoch"] + 1
    assert not all(torch.equal(after["model"][k], v) for k, v in before["model"].items())  # it trained
