"""eval-dir: CamVid val frames (shared data) and a Cityscapes-layout folder, against direct evaluation."""
from __future__ import annotations

import shutil

import cv2
import pytest

from bag_fixtures import assert_same_metrics, make_cityscapes_folder, make_weights, oracle, read_json, run_cli


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "enet_camvid_tiny.safetensors")


@pytest.fixture(scope="module")
def camvid_subset(camvid_root, tmp_path_factory):
    """Five CamVid val frames with their labels (480x360), copied in the SegNet layout."""
    root = tmp_path_factory.mktemp("camvid_val")
    names = sorted(p.name for p in (camvid_root / "val").glob("*.png"))[:5]
    for sub in ("val", "valannot"):
        (root / sub).mkdir()
        for name in names:
            shutil.copy(camvid_root / sub / name, root / sub / name)
    return root, names


def eval_dir(dataset, images, labels, weights, out, *extra) -> int:
    return run_cli(["eval-dir", "--dataset", dataset, "--images", images, "--labels", labels, "--weights", weights,
                    "--backend", "torch", "--threads", 1, "--out", out, "--no-progress", *extra])


def test_eval_dir_camvid_val(camvid_subset, weights, tmp_path):
    root, names = camvid_subset
    out = tmp_path / "out"
    assert eval_dir("camvid", root / "val", root / "valannot", weights, out, "--throughput") == 0
    metrics = read_json(out / "metrics.json")
    frames = [cv2.imread(str(root / "val" / n))[:, :, ::-1].copy() for n in names]
    gts = [cv2.imread(str(root / "valannot" / n), cv2.IMREAD_UNCHANGED) for n in names]
    assert_same_metrics(metrics, oracle(weights, frames, gts))
    assert metrics["frames"] == 5 and metrics["pixels"] > 0 and metrics["frames_without_gt"] == 0
    assert len(metrics["class_iou"]) == 11  # Unlabelled (11) is ignored, not a class
    tp = metrics["throughput"]
    assert tp["eval_fps"] > 0 and tp["bare_inference_fps"] > 0 and tp["bare_frames"] == 5
    for name in ("report.md", "confusion.png", "class_iou.png"):
        assert (out / name).stat().st_size > 0


def test_eval_dir_size_option_changes_the_network_input(camvid_subset, weights, tmp_path):
    root, names = camvid_subset
    out = tmp_path / "out"
    assert eval_dir("camvid", root / "val", root / "valannot", weights, out, "--size", "96x72") == 0
    assert "enet camvid 96x72" in read_json(out / "metrics.json")["model"]
    from enet_seg_ros.engine import Segmenter
    from enet_seg_ros.evaluate import make_evaluator

    seg = Segmenter(str(weights), backend="torch", threads=1, input_size=(96, 72))
    ev = make_evaluator("camvid")
    for n in names:
        ev.add(seg.segment(cv2.imread(str(root / "val" / n))[:, :, ::-1].copy()).labels,
               cv2.imread(str(root / "valannot" / n), cv2.IMREAD_UNCHANGED))
    assert_same_metrics(read_json(out / "metrics.json"), ev.result())


def test_eval_dir_bad_and_unlabelled_images(camvid_subset, weights, tmp_path):
    root, names = camvid_subset
    images, labels = tmp_path / "img", tmp_path / "lab"
    shutil.copytree(root / "val", images)
    shutil.copytree(root / "valannot", labels)
    (images / names[1]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # corrupt frame
    (labels / names[3]).unlink()  # a frame without ground truth
    out = tmp_path / "out"
    assert eval_dir("camvid", images, labels, weights, out) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 3 and metrics["frames_skipped"] == 1 and metrics["frames_without_gt"] == 1
    assert names[1] in metrics["skipped"][0]["frame"] and "cannot decode image" in metrics["skipped"][0]["reason"]
    keep = [0, 2, 4]
    frames = [cv2.imread(str(images / names[i]))[:, :, ::-1].copy() for i in keep]
    gts = [cv2.imread(str(labels / names[i]), cv2.IMREAD_UNCHANGED) for i in keep]
    assert_same_metrics(metrics, oracle(weights, frames, gts))


def test_eval_dir_lighting_scores_the_shifted_frames(camvid_subset, weights, tmp_path):
    from enet_seg_ros.data.transforms import shift_lighting

    root, names = camvid_subset
    out = tmp_path / "out"
    assert eval_dir("camvid", root / "val", root / "valannot", weights, out, "--lighting", "contrast=0.4") == 0
    metrics = read_json(out / "metrics.json")
    bgr = [cv2.imread(str(root / "val" / n)) for n in names]
    gts = [cv2.imread(str(root / "valannot" / n), cv2.IMREAD_UNCHANGED) for n in names]
    shifted = [shift_lighting(f, "contrast", 0.4, "bgr")[:, :, ::-1].copy() for f in bgr]
    assert_same_metrics(metrics, oracle(weights, shifted, gts))
    # ... which is not what the frames as recorded give, and the report says which run this was.
    as_is = oracle(weights, [f[:, :, ::-1].copy() for f in bgr], gts)
    assert (metrics["pixel_accuracy"], metrics["class_iou"]) != (as_is["pixel_accuracy"], as_is["class_iou"])
    assert "contrast x0.4" in (out / "report.md").read_text()
    assert metrics["lighting"] == {"kind": "contrast", "factor": 0.4}


@pytest.mark.parametrize("value", ["contrast", "contrast=-1", "gamma=0.5", "contrast=abc"])
def test_eval_dir_bad_lighting_is_named(camvid_subset, weights, tmp_path, capsys, value):
    root, _ = camvid_subset
    with pytest.raises(SystemExit) as exit_info:
        eval_dir("camvid", root / "val", root / "valannot", weights, tmp_path / "out", "--lighting", value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--lighting" in err and "KIND=FACTOR" in err and not (tmp_path / "out").exists()


def test_eval_dir_cityscapes_layout(tmp_path):
    images, gt = make_cityscapes_folder(tmp_path / "cs", n=3)
    w = make_weights(tmp_path / "enet_cs.safetensors", dataset="cityscapes")
    out = tmp_path / "out"
    assert eval_dir("cityscapes", images, gt, w, out) == 0
    metrics = read_json(out / "metrics.json")
    from enet_seg_ros.evaluate.folders import read_instance_ids, read_label_ids, read_rgb

    keys = sorted(p.name[: -len("_leftImg8bit.png")] for p in images.rglob("*_leftImg8bit.png"))
    expected = oracle(w, [read_rgb(next(images.rglob(k + "_leftImg8bit.png"))) for k in keys],
                      [read_label_ids(next(gt.rglob(k + "_gtFine_labelIds.png"))) for k in keys], "cityscapes",
                      [read_instance_ids(next(gt.rglob(k + "_gtFine_instanceIds.png"))) for k in keys])
    assert_same_metrics(metrics, expected, keys=("miou", "iiou", "category_iou", "category_iiou", "pixels"))
    assert metrics["frames"] == 3 and metrics["iiou"] is not None


def test_eval_dir_wrong_dataset_for_the_model(tmp_path, weights, capsys):
    images, gt = make_cityscapes_folder(tmp_path / "cs", n=1)
    assert eval_dir("cityscapes", images, gt, weights, tmp_path / "o") == 2
    assert "predicts 11 classes but cityscapes has 19" in capsys.readouterr().err
