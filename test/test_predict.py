"""``enet-seg predict``: label / colour / overlay PNGs (and Cityscapes labelIds) per image."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from enet_seg_ros.commands import predict as predict_cmd
from enet_seg_ros.data.labels import CITYSCAPES_TABLE, get_label_spec
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, save_model

torch.set_num_threads(1)


def _predict(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    predict_cmd.add_arguments(parser)
    return predict_cmd.run(parser.parse_args(list(argv)))


def _image(path, w=150, h=100, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    assert cv2.imwrite(str(path), img)
    return img


@pytest.fixture()
def camvid_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("ENET_SEG_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    card = ModelCard.for_dataset("enet", get_label_spec("camvid"), [96, 64])
    return save_model(tmp_path / "enet_camvid.safetensors", build_model("enet", 11).eval(), card)


def test_predict_writes_labels_colour_and_overlay(camvid_weights, tmp_path, capsys):
    a = _image(tmp_path / "a.png")
    _image(tmp_path / "b.jpg", 64, 200, seed=1)
    out = tmp_path / "out"
    assert _predict("--weights", str(camvid_weights), "--backend", "torch", "--out", str(out),
                    str(tmp_path / "a.png"), str(tmp_path / "b.jpg")) == 0
    labels = cv2.imread(str(out / "a_labels.png"), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(out / "a_color.png"), cv2.IMREAD_COLOR)
    overlay = cv2.imread(str(out / "a_overlay.png"), cv2.IMREAD_COLOR)
    assert labels.dtype == np.uint8 and labels.shape == (100, 150) and labels.max() < 11
    palette = np.asarray(get_label_spec("camvid").palette, np.uint8)
    np.testing.assert_array_equal(color[..., ::-1], palette[labels])  # PNG is BGR on disk
    expected = 0.5 * a.astype(np.float64) + 0.5 * color
    assert np.abs(overlay - expected).max() <= 1
    assert cv2.imread(str(out / "b_labels.png"), cv2.IMREAD_UNCHANGED).shape == (200, 64)
    assert not list(out.glob("*_labelIds.png")), "CamVid has no official id mapping"
    assert "backend: torch" in capsys.readouterr().out


def test_predict_cityscapes_writes_official_label_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("ENET_SEG_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    spec = get_label_spec("cityscapes")
    card = ModelCard.for_dataset("enet", spec, [64, 32], extra_classes=("void",))
    weights = save_model(tmp_path / "enet_cs.safetensors", build_model("enet", 20).eval(), card)
    _image(tmp_path / "f.png", 128, 64)
    out = tmp_path / "out"
    assert _predict("--weights", str(weights), "--backend", "onnxruntime", "--out", str(out), str(tmp_path / "f.png")) == 0
    labels = cv2.imread(str(out / "f_labels.png"), cv2.IMREAD_UNCHANGED)
    ids = cv2.imread(str(out / "f_labelIds.png"), cv2.IMREAD_UNCHANGED)
    train_to_id = {row.train_id: row.id for row in CITYSCAPES_TABLE if 0 <= row.train_id < 255}
    train_to_id[19] = 0  # the extra void output -> unlabeled
    np.testing.assert_array_equal(ids, np.vectorize(train_to_id.get)(labels).astype(np.uint8))


def test_unreadable_files_are_reported_and_skipped_the_others_written(camvid_weights, tmp_path, capsys):
    _image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    _image(tmp_path / "late.jpg", 80, 60, seed=2)
    out = tmp_path / "o"
    code = _predict("--weights", str(camvid_weights), "--backend", "torch", "--out", str(out),
                    str(tmp_path / "good.png"), str(tmp_path / "missing.png"), str(bad), str(tmp_path / "late.jpg"))
    assert code == 1
    err = capsys.readouterr().err
    assert "missing.png: image not found; skipped" in err and "bad.png: not a readable image; skipped" in err
    assert "2 of 4 images written, 2 failed" in err
    assert sorted(p.name for p in out.glob("*_labels.png")) == ["good_labels.png", "late_labels.png"]
    assert cv2.imread(str(out / "late_labels.png"), cv2.IMREAD_UNCHANGED).shape == (60, 80)
    # Through the CLI: the exit code says something failed, without a traceback.
    from enet_seg_ros.cli import main

    assert main(["predict", "--weights", str(camvid_weights), "--backend", "torch", "--out", str(out), str(bad)]) == 1


def test_imported_cityscapes_espnet_predicts_a_plausible_street(tmp_path, espnet_reference, monkeypatch):
    """Published ESPNet (Cityscapes) through ``predict``: road below, sky/building/vegetation above."""
    monkeypatch.setenv("ENET_SEG_CACHE", str(tmp_path / "cache"))
    ref = pytest.importorskip("enet_seg_ros.nets.espnet_reference")
    ckpt = espnet_reference / "cityscapes" / "espnet_p_2_q_8.pth"
    model, info = ref.load_reference(ckpt)
    weights = save_model(tmp_path / "espnet_cs.safetensors", model, ref.make_card(info, "cityscapes", ckpt))
    images = sorted((espnet_reference / "images").glob("*.png"))
    assert images
    out = tmp_path / "out"
    assert _predict("--weights", str(weights), "--backend", "onnxruntime", "--out", str(out),
                    *[str(p) for p in images]) == 0
    names = get_label_spec("cityscapes").class_names
    road, upper = names.index("road"), [names.index(n) for n in ("sky", "building", "vegetation")]
    for p in images:
        labels = cv2.imread(str(out / (p.stem + "_labels.png")), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (1024, 2048)
        h, w = labels.shape
        lower_centre = labels[int(0.75 * h):int(0.9 * h), int(0.3 * w):int(0.7 * w)]
        top = labels[: int(0.3 * h)]
        assert np.mean(lower_centre == road) > 0.5, "road should dominate the lower centre of {}".format(p.name)
        assert np.mean(np.isin(top, upper)) > 0.5, "sky/building/vegetation should dominate the top of {}".format(p.name)
        ids = cv2.imread(str(out / (p.stem + "_labelIds.png")), cv2.IMREAD_UNCHANGED)
        assert np.mean(ids[int(0.75 * h):int(0.9 * h), int(0.3 * w):int(0.7 * w)] == 7) > 0.5  # official road id
