"""Per-class logit offsets (``enet_seg_ros.train.calibrate``, ``enet-seg calibrate``): the fast
fit against brute force, the offset inside the network and its ONNX graph, the weights and
card it writes, scores that the evaluation tools reproduce, and the trainer not carrying it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.data.labels import CAMVID
from enet_seg_ros.nets import build_model
from enet_seg_ros.train.calibrate import _best_offset_for_class, fit_logit_offsets, mean_iou
from enet_seg_ros.weights import ModelCard, Normalization, load_model, read_card, save_model
from test_datasets import make_camvid

SIZE = (64, 48)


def confusion(logits: np.ndarray, gt: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    n = logits.shape[1]
    return np.bincount(gt * n + (logits + offsets).argmax(1), minlength=n * n).reshape(n, n)


def biased_sample(n: int = 20000, classes: int = 5, seed: int = 0):
    """Logits that know the class but over-rate classes 3 and 4 (as class weighting does)."""
    rng = np.random.default_rng(seed)
    gt = rng.choice(classes, size=n, p=[0.4, 0.3, 0.2, 0.06, 0.04])
    logits = rng.normal(0, 1.0, (n, classes)).astype(np.float32)
    logits[np.arange(n), gt] += 1.5
    logits[:, 3:] += 1.2
    return logits, gt


def test_one_class_step_matches_brute_force():
    logits, gt = biased_sample(3000, seed=1)
    offsets = np.array([0.2, -0.1, 0.0, 0.3, -0.4], np.float32)
    steps = np.round(np.arange(-1.0, 1.0001, 0.25), 6)
    for c in range(5):
        value, score = _best_offset_for_class(logits, gt, offsets, c, steps)
        brute = []
        for s in steps:
            trial = offsets.copy()
            trial[c] += s
            brute.append(mean_iou(confusion(logits, gt, trial)))
        assert score == pytest.approx(max(brute), abs=1e-12)
        assert value == pytest.approx(offsets[c] + steps[int(np.argmax(brute))], abs=1e-6)


def test_fit_undoes_an_over_rated_class_and_generalises():
    logits, gt = biased_sample()
    fit = fit_logit_offsets(logits, gt)
    zero = np.zeros(5, np.float32)
    assert fit.miou_after > fit.miou_before + 0.02
    assert fit.miou_before == pytest.approx(mean_iou(confusion(logits, gt, zero)))
    assert fit.miou_after == pytest.approx(mean_iou(confusion(logits, gt, np.array(fit.offsets, np.float32))), abs=1e-9)
    assert abs(np.mean(fit.offsets)) < 1e-5  # a common shift changes nothing, so it is removed
    assert np.mean(fit.offsets[3:]) < np.mean(fit.offsets[:3])  # the over-rated classes are pulled down
    # Offsets fitted on one sample improve another drawn the same way.
    other, other_gt = biased_sample(seed=7)
    assert mean_iou(confusion(other, other_gt, np.array(fit.offsets, np.float32))) > \
        mean_iou(confusion(other, other_gt, zero)) + 0.02


def test_fit_rejects_bad_input():
    logits, gt = biased_sample(100)
    with pytest.raises(ValueError, match="outside 0..4"):
        fit_logit_offsets(logits, np.where(gt == 0, 255, gt))
    with pytest.raises(ValueError, match="must contain 0"):
        fit_logit_offsets(logits, gt, steps=[-0.5, 0.5])
    with pytest.raises(ValueError, match="no labelled pixels"):
        fit_logit_offsets(logits[:0], gt[:0])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fit_logit_offsets(logits[:, :, None], gt)


@pytest.mark.parametrize("arch", ["enet", "espnet", "erfnet"])
def test_offset_is_added_to_the_logits_and_saved(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, 11).eval()
    assert model.logit_offset is None and "logit_offset" not in model.state_dict()  # the papers' nets
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        raw = model(x)
        offsets = torch.linspace(-1, 1, 11)
        model.set_logit_offset(offsets)
        assert torch.allclose(model(x), raw + offsets.view(1, -1, 1, 1), atol=1e-6)
        model.encoder_only = True  # the encoder head (training stage 1) is not shifted
        enc = model(x)
        model.set_logit_offset(None)
        assert torch.equal(model(x), enc)
        model.encoder_only = False
    model.set_logit_offset(offsets)
    card = ModelCard.for_dataset(arch, CAMVID, list(SIZE), options={"logit_offset": True})
    save_model(tmp_path / "m.safetensors", model, card)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert torch.equal(loaded.logit_offset, offsets)
    with pytest.raises(ValueError, match="11 finite values"):
        model.set_logit_offset([0.0] * 10)
    with pytest.raises(ValueError, match="11 finite values"):
        model.set_logit_offset([float("nan")] * 11)


@pytest.mark.parametrize("arch", ["enet", "espnet", "espnet_c", "erfnet"])
def test_inference_folds_the_offset_into_the_output_layer(arch):
    """fold_batchnorm (every backend's export) turns the offset into the last layer's bias: no extra Add."""
    from enet_seg_ros.nets import fold_batchnorm

    torch.manual_seed(1)
    model = build_model(arch, 11).eval()
    model.set_logit_offset(torch.linspace(-2, 2, 11))
    x = torch.randn(1, 3, 48, 64)
    folded = fold_batchnorm(model)
    assert folded.logit_offset is None and model.logit_offset is not None  # the original is untouched
    assert folded.get_submodule(type(model).output_layer).bias is not None
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A small random ENet with a CamVid card, calibrated by the command on a tiny CamVid."""
    root = tmp_path_factory.mktemp("cal")
    data = make_camvid(root / "camvid", n_train=6, n_val=3, size=SIZE)
    torch.manual_seed(3)
    model = build_model("enet", 11).eval()
    with torch.no_grad():
        model.fullconv.weight.mul_(20)  # decisive logits, so offsets have something to move
    card = ModelCard.for_dataset("enet", CAMVID, list(SIZE), normalization=Normalization(mean=[100.0] * 3, std=[60.0] * 3),
                                 metrics={"split": "val", "val_miou": 0.1},
                                 precisions={"int8": {"accepted": True}})
    save_model(root / "raw.safetensors", model, card)
    out = root / "calibrated.safetensors"
    assert cli.main(["calibrate", str(root / "raw.safetensors"), "--data-root", str(data), "--threads", "1",
                     "--stride", "1", "--out", str(out)]) == 0
    return data, root / "raw.safetensors", out


def test_calibrate_writes_weights_card_and_honest_scores(calibrated):
    data, raw_path, out = calibrated
    raw, _ = load_model(raw_path)
    model, card = load_model(out)
    assert card.options == {"logit_offset": True}
    assert card.precisions == {}  # int8 / bf16 records described the old decision rule
    info = card.metrics["logit_offset"]
    assert info["fitted_on"].startswith("camvid train (6 frames")
    assert info["scored_on"].startswith("val")
    assert info["sample_miou_after"] >= info["sample_miou_before"]
    assert card.metrics["before_logit_offset"]["val_miou"] == 0.1
    offsets = torch.tensor([info["offsets"][c] for c in card.class_names])
    assert torch.allclose(model.logit_offset, offsets, atol=1e-4)
    x = torch.randn(1, 3, SIZE[1], SIZE[0])
    with torch.no_grad():
        assert torch.allclose(model(x), raw(x) + model.logit_offset.view(1, -1, 1, 1), atol=1e-5)
    on_disk = json.loads((out.parent / "calibrated.card.json").read_text())
    assert on_disk["options"] == {"logit_offset": True}


def test_calibrating_again_refits_the_raw_logits(calibrated, tmp_path):
    """Calibrating calibrated weights fits the same offsets and keeps the scores without offsets."""
    _, _, out = calibrated
    data = out.parent / "camvid"
    again = tmp_path / "again.safetensors"
    assert cli.main(["calibrate", str(out), "--data-root", str(data), "--threads", "1", "--stride", "1",
                     "--out", str(again)]) == 0
    first, second = read_card(out).metrics, read_card(again).metrics
    assert second["logit_offset"]["offsets"] == pytest.approx(first["logit_offset"]["offsets"], abs=1e-4)
    assert second["before_logit_offset"] == first["before_logit_offset"]
    assert second["val_miou"] == pytest.approx(first["val_miou"], abs=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_card_score_is_what_eval_dir_measures(calibrated, tmp_path, backend):
    """The exported graph carries the offsets: eval-dir on val reproduces the card's score."""
    data, _, out = calibrated
    card = read_card(out)
    assert cli.main(["eval-dir", "--dataset", "camvid", "--images", str(data / "val"), "--labels",
                     str(data / "valannot"), "--weights", str(out), "--backend", backend, "--strict",
                     "--threads", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    measured = json.loads((tmp_path / "metrics.json").read_text())
    assert measured["miou"] == pytest.approx(card.metrics["val_miou"], abs=1e-6)


def test_calibrate_refuses_scoring_on_the_fit_split(calibrated, tmp_path, capsys):
    data, raw_path, _ = calibrated
    assert cli.main(["calibrate", str(raw_path), "--data-root", str(data), "--split", "val", "--score-split", "val",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "the score would not be honest" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_training_from_calibrated_weights_drops_the_offset(calibrated, tmp_path, caplog):
    data, _, out = calibrated
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="enet_seg_ros.train"):
        assert cli.main(["train", "--arch", "enet", "--dataset", "camvid", "--data-root", str(data), "--out", str(run),
                         "--size", "64x48", "--batch-size", "2", "--threads", "1", "--epochs", "1",
                         "--stages", "decoder", "--init", str(out), "--no-compile"]) == 0
    assert "logit offsets are not carried over" in caplog.text
    model, card = load_model(run / "best.safetensors")
    assert model.logit_offset is None and "logit_offset" not in card.options
