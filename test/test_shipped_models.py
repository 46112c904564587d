"""The models shipped in models/: trained here, documented, and scoring what their cards say.

Re-scores each shipped model on CamVid val (../shared, skipped when absent) with ``eval-dir``:
the mean IoU must equal the one its card recorded at the end of training, so a card can never
claim a number the weights do not give.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bag_fixtures import read_json, run_cli
from enet_seg_ros.weights import REPO_MODELS_DIR, read_card

torch.set_num_threads(2)
SHIPPED = sorted(REPO_MODELS_DIR.glob("*.safetensors"))
TRAINED_HERE = "trained with enet_seg_ros (enet-seg train)"


def test_the_three_networks_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"enet_camvid", "erfnet_camvid", "espnet_camvid"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_weights_hold_no_negligible_floats(path: Path):
    # Subnormal and near-subnormal weights made the first from-scratch ERFNet's fp32 forward 3.5x
    # slower on x86 (weights.flush_negligible).
    from safetensors.torch import load_file

    from enet_seg_ros.weights import NEGLIGIBLE_WEIGHT

    bad = {k: int(((v != 0) & (v.abs() < NEGLIGIBLE_WEIGHT)).sum())
           for k, v in load_file(str(path)).items() if v.is_floating_point()}
    assert not {k: n for k, n in bad.items() if n}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_model_is_ours_and_documented(path: Path):
    card = read_card(path)
    # Only weights trained by this package ship (never the converted published checkpoints).
    assert card.source == TRAINED_HERE and "trained_by" not in card.recipe
    assert card.recipe["arch"] == card.arch and card.recipe["dataset"] == card.dataset == "camvid"
    # The readable copy is the embedded card.
    assert json.loads(path.with_suffix(".card.json").read_text()) == json.loads(card.to_json())
    # models/README.md lists the file with the card's validation mIoU.
    table = (REPO_MODELS_DIR / "README.md").read_text()
    row = next((line for line in table.splitlines() if line.startswith("| `{}`".format(path.name))), None)
    assert row is not None, "models/README.md has no row for {}".format(path.name)
    assert "{:.1f} %".format(100 * card.metrics["val_miou"]) in row
    if card.options.get("logit_offset"):
        # Fitted on train only: val, whose score the card reports, played no part.
        assert card.metrics["logit_offset"]["fitted_on"].startswith("camvid train (367 frames")
        assert card.metrics["logit_offset"]["scored_on"].startswith("val")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_model_scores_its_card_on_camvid_val(path: Path, camvid_root: Path, tmp_path: Path):
    card = read_card(path)
    out = tmp_path / "eval"
    assert run_cli(["eval-dir", "--dataset", "camvid", "--images", camvid_root / "val",
                    "--labels", camvid_root / "valannot", "--weights", path, "--backend", "torch",
                    "--threads", 2, "--out", out, "--no-progress"]) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 101
    # Same frames, same metric code as training's validation; only BN folding and the
    # backend's float order differ.
    assert metrics["miou"] == pytest.approx(card.metrics["val_miou"], abs=2e-3)
    assert metrics["pixel_accuracy"] == pytest.approx(card.metrics["val_pixel_accuracy"], abs=2e-3)
