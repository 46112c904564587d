"""Bad input to ``enet-seg`` is refused with one line naming the problem (exit code 2), before
work is done, and never leaves half-written files or silently wrong output. Each case here was a
traceback, a silent overwrite or a misleading record before (a bad-input sweep, session 15)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from enet_seg_ros import cli
from enet_seg_ros.evaluate.cityscapes import PREDICTION_CLASS_IDS_SUFFIX, prediction_uses_label_ids
from enet_seg_ros.train.trainer import TrainConfig
from test_datasets import make_camvid

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "enet_camvid.safetensors"


def _exit_code(argv, capsys) -> tuple:
    """``(exit code, stderr)`` of ``enet-seg argv`` in this process (argparse errors included)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture()
def afile(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("argv, why", [
    (["predict", "IMG", "--out", "{afile}"], "is a file, not a folder"),
    (["eval-dir", "--dataset", "camvid", "--images", "x", "--labels", "y", "--weights", "W", "--out", "{afile}/r"],
     "is a file"),
    (["eval-preds", "--dataset", "camvid", "--pred", "x", "--gt", "y", "--out", "{afile}"], "is a file, not a folder"),
    (["export", "--weights", "W", "--format", "onnx", "--out", "{afile}/x.onnx"], "is a file, not a folder"),
    (["export", "--weights", "W", "--format", "onnx", "--out", "{tmp}"], "is a folder, not a file"),
    (["calibrate", "W", "--data-root", "x", "--out", "{afile}/c.safetensors"], "is a file, not a folder"),
    (["calibrate", "W", "--data-root", "x", "--out", "{tmp}/c.txt"], "must end in .safetensors"),
    (["import-weights", "--from", "espnet-reference", "--dataset", "camvid", "x.pth", "--out", "{afile}/w.safetensors"],
     "is a file, not a folder"),
    (["quantize", "W", "--calib", "x", "--out", "{afile}/q.onnx"], "is a file, not a folder"),
    (["doctor", "--json", "{afile}/d.json"], "is a file, not a folder"),
    (["train", "--arch", "enet", "--dataset", "camvid", "--data-root", "x", "--out", "{afile}"], "is a file"),
    (["predict", "IMG", "--out", "{tmp}/p", "--alpha", "5"], "must be in [0, 1]"),
    (["quantize", "W", "--calib", "x", "--calib-frames", "-1"], "must be >= 1, got -1"),
    (["eval-dir", "--dataset", "camvid", "--images", "x", "--labels", "y", "--weights", "W", "--out", "{tmp}/r",
      "--threads", "0"], "must be >= 1"),
    (["eval-dir", "--dataset", "camvid", "--images", "x", "--labels", "y", "--weights", "W", "--out", "{tmp}/r",
      "--workers", "-1"], "must be >= 1"),
    (["eval-dir", "--dataset", "camvid", "--images", "x", "--labels", "y", "--weights", "W", "--out", "{tmp}/r",
      "--lighting", "contrast=abc"], "'abc'"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, afile, capsys, argv, why):
    argv = [a.format(afile=afile, tmp=tmp_path) for a in argv]
    code, err = _exit_code(argv, capsys)
    assert code == 2 and why in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing made, nothing left behind


def test_an_unwritable_output_is_one_clear_line_and_no_temporary_file(tmp_path, capsys):
    from enet_seg_ros.weights import load_model, save_model

    model, card = load_model(SHIPPED)
    target = tmp_path / "w.safetensors"
    target.mkdir()  # a folder where the file should go, made after the flags were checked
    with pytest.raises(IsADirectoryError):
        save_model(target, model, card)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no w.safetensors.tmp
    # The same error from a command is one line, exit 2 (cli.main's OSError branch).
    code, err = _exit_code(["export", "--weights", SHIPPED, "--format", "onnx", "--size", "64x48",
                            "--out", tmp_path / "x.onnx", "--graph", "network", "--confidence"], capsys)
    assert code == 2 and "--confidence adds an output to the full ONNX graph only" in err


@pytest.mark.parametrize("flags, why", [
    (dict(calib="d"), "--calib is read only with --precision int8"),
    (dict(qdq="q.onnx", precision="int8"), "--qdq is read only with --format tensorrt"),
    (dict(builder="torch2trt"), "--builder is a TensorRT setting"),
    (dict(format="tensorrt", graph="network"), "--graph is an ONNX setting"),
    (dict(format="tensorrt", confidence=True), "--confidence adds an output"),
])
def test_export_refuses_flags_it_would_ignore(flags, why):
    from enet_seg_ros.commands.export import check_flags

    plain = dict(format="onnx", precision=None, calib=None, qdq=None, builder="onnx", graph="full", confidence=False)
    check_flags(argparse.Namespace(**plain))
    with pytest.raises(ValueError, match=why):
        check_flags(argparse.Namespace(**dict(plain, **flags)))


def test_predict_keeps_every_image_whose_names_collide(tmp_path, capsys):
    from enet_seg_ros.commands.predict import unique_stem

    taken: set = set()
    assert [unique_stem(s, taken) for s in ("a", "a", "a_2", "a")] == ["a", "a_2", "a_2_2", "a_3"]
    rng = np.random.default_rng(0)
    images = [tmp_path / "a_2.png", tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"]
    for i, path in enumerate(images):
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) // (i + 1))
    out = tmp_path / "out"
    assert cli.main(["predict", *map(str, images), "--weights", str(SHIPPED), "--backend", "onnxruntime",
                     "--size", "64x48", "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*" + PREDICTION_CLASS_IDS_SUFFIX))
    assert written == sorted(stem + PREDICTION_CLASS_IDS_SUFFIX for stem in ("a_2", "a", "a_3"))
    # The three overlays are the three inputs' (each image differs, so each overlay does).
    overlays = [cv2.imread(str(out / name.replace(PREDICTION_CLASS_IDS_SUFFIX, "_overlay.png"))) for name in written]
    assert len({o.tobytes() for o in overlays}) == 3


def test_predicts_own_class_id_files_count_as_train_ids():
    assert not prediction_uses_label_ids(Path("frankfurt_000000_000294_leftImg8bit" + PREDICTION_CLASS_IDS_SUFFIX))
    assert prediction_uses_label_ids(Path("frankfurt_000000_000294_leftImg8bit_labelIds.png"))
    assert not prediction_uses_label_ids(Path("x_trainIds.png"))


@pytest.mark.parametrize("change, why", [
    (dict(epochs=0), "--epochs must be >= 1, got 0"),
    (dict(encoder_epochs=-3), "--encoder-epochs must be >= 1, got -3"),
    (dict(val_every=0), "--val-every must be >= 1, got 0"),
    (dict(stop_after=-1), "--stop-after must be >= 0"),
    (dict(lr=0.0), "--lr must be > 0"),
    (dict(color_jitter=1.5), "--color-jitter must be in [0, 1)"),
])
def test_train_settings_that_would_train_nothing_are_refused(change, why):
    cfg = TrainConfig(arch="enet", dataset="camvid", data_root="x", out="y", **change)
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace(")", r"\)")):
        cfg.resolved()
    # The stage that does not run is not checked.
    if "encoder_epochs" in change:
        TrainConfig(arch="enet", dataset="camvid", data_root="x", out="y", stages="decoder", **change).resolved()


def test_train_init_from_another_architecture_is_refused(tmp_path, capsys):
    data = make_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    other = REPO / "models" / "espnet_camvid.safetensors"
    code, err = _exit_code(["train", "--arch", "enet", "--dataset", "camvid", "--data-root", data, "--out",
                            tmp_path / "run", "--size", "64x48", "--epochs", "1", "--encoder-epochs", "1",
                            "--batch-size", "2", "--init", other, "--no-compile"], capsys)
    assert code == 2 and "holds espnet weights; they cannot start a enet network" in err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("start, why", [(-5, "must lie in [0, "), (2 ** 31 * 10 ** 9, "must lie in [0, ")])
def test_make_bag_refuses_stamps_a_ros_header_cannot_hold(tmp_path, capsys, start, why):
    data = make_camvid(tmp_path / "camvid", n_train=1, n_val=2)
    code, err = _exit_code(["make-bag", "--dataset", "camvid", "--images", data / "val", "--labels",
                            data / "valannot", "--out", tmp_path / "bag", "--start-ns", start], capsys)
    assert code == 2 and why in err, err
    assert not (tmp_path / "bag").exists()


def test_eval_bag_refuses_the_image_topic_as_ground_truth(tmp_path, capsys):
    data = make_camvid(tmp_path / "camvid", n_train=1, n_val=2)
    assert cli.main(["make-bag", "--dataset", "camvid", "--images", str(data / "val"), "--labels",
                     str(data / "valannot"), "--out", str(tmp_path / "bag"), "--no-progress"]) == 0
    code, err = _exit_code(["eval-bag", tmp_path / "bag", "--weights", SHIPPED, "--out", tmp_path / "report",
                            "--gt-topic", "/camera/image_raw", "--no-progress"], capsys)
    assert code == 2 and "both the image and the ground-truth topic" in err


def test_info_takes_shipped_names_and_names_a_folder(tmp_path, capsys):
    assert cli.main(["info", "enet_camvid"]) == 0
    assert json.loads(capsys.readouterr().out.split("\nparameters:")[0])["arch"] == "enet"
    code, err = _exit_code(["info", tmp_path], capsys)
    assert code == 2 and "is a folder, not a weights file" in err


def test_int8_calibration_frames_must_not_be_validation_frames(camvid_root, tmp_path):
    from enet_seg_ros.engine.calib import calibration_files
    from enet_seg_ros.evaluate.precision_guard import validate_int8

    with pytest.raises(ValueError, match="must be >= 1"):
        calibration_files(camvid_root / "train", 0)
    weights = tmp_path / "enet.safetensors"
    shutil.copy(SHIPPED, weights)
    with pytest.raises(ValueError, match="also validation frames"):
        validate_int8(weights, camvid_root / "val", camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                      cache_dir=tmp_path / "cache", frame_limit=4, calibration_limit=4)
    # The record counts the frames it calibrated on, not the limit it was given.
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in sorted(p.name for p in (camvid_root / "train").iterdir())[:2]:
        shutil.copy(camvid_root / "train" / name, calib / name)
    record = validate_int8(weights, calib, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=tmp_path / "cache", frame_limit=2, calibration_limit=32)
    assert record["calibration"] == "calib (2 frames)"
