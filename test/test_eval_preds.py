"""``enet-seg eval-preds`` end to end on generated Cityscapes-format folders, with the official
``cityscapesscripts`` evaluator as the oracle, and its error messages on bad inputs."""
import numpy as np

np.in1d = np.isin  # cityscapesscripts still calls np.in1d, removed in numpy 2.4

import argparse
import importlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from enet_seg_ros.commands import eval_preds
from enet_seg_ros.data.labels import CAMVID
from test_metrics import (ID_TO_TRAIN, TRAIN_TO_ID, assert_matches_official, brute_force, generate, official,
                          write_cityscapes)

REQUIRED_KEYS = ("miou", "class_iou", "pixel_accuracy", "mean_class_accuracy", "iiou", "category_iou",
                 "category_iiou", "frames", "frames_without_gt", "model", "backend", "latency_ms")


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    eval_preds.add_arguments(parser)
    return eval_preds.run(parser.parse_args(list(argv) + ["--no-progress"]))


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail("non-JSON constant " + c))


@pytest.fixture()
def dataset(tmp_path):
    """6 frames in 3 city folders, label-id predictions; (root, frames, gt files, pred files)."""
    frames = generate(21, 6, gt_absent=(28, 31), pred_absent=(28, 12))
    gts, preds = write_cityscapes(tmp_path, frames, pred_dir=tmp_path / "pred")
    return tmp_path, frames, gts, preds


def test_eval_preds_equals_official_and_writes_report(dataset, capsys):
    root, frames, gts, preds = dataset
    # Colour renderings beside the predictions are skipped; a stray prediction has no ground truth.
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "pred" / (frames[0][0] + "_color.png"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "pred" / "munich_000000_000019_labelIds.png")
    out = root / "report"
    assert run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(out)) == 0
    doc = strict_json(out / "metrics.json")
    assert_matches_official(doc, official(preds, gts))
    for key in REQUIRED_KEYS:
        assert key in doc, key
    assert doc["frames"] == 6 and doc["frames_without_gt"] == 1
    assert doc["model"] is None and doc["backend"] is None
    assert doc["latency_ms"] == {"p50": None, "p95": None, "max": None}
    assert doc["class_iou"]["bus"] is None  # absent from GT and predictions
    for value in [doc["miou"], doc["iiou"], doc["category_iou"], doc["category_iiou"]] + \
            [v for v in doc["class_iou"].values() if v is not None]:
        assert 0.0 <= value <= 1.0
    report = (out / "report.md").read_text()
    assert "| Frames evaluated | 6 |" in report and "| Frames without ground truth | 1 |" in report
    best = max((v, k) for k, v in doc["class_iou"].items() if v is not None)
    assert "| 1 | {} | {:.2f} |".format(best[1], 100 * best[0]) in report  # sorted per-class table
    assert "munich_000000_000019_labelIds.png" in report
    for name in ("confusion.png", "class_iou.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    printed = capsys.readouterr().out
    assert "mIoU {:.2f}%".format(100 * doc["miou"]) in printed


def test_train_id_predictions_by_name_and_flag(dataset):
    root, frames, gts, preds = dataset
    as_train = lambda p: ID_TO_TRAIN[p]  # noqa: E731
    train_dir = root / "pred_train"
    _, _ = write_cityscapes(root / "unused", frames, pred_dir=train_dir, pred_suffix="_trainIds.png",
                            convert=as_train)
    # Oracle: the label-id PNGs these train ids stand for (255 -> unlabeled).
    oracle_dir = root / "oracle"
    _, oracle_preds = write_cityscapes(root / "unused2", frames, pred_dir=oracle_dir,
                                       convert=lambda p: TRAIN_TO_ID[ID_TO_TRAIN[p]])
    off = official(oracle_preds, gts)
    assert run_eval("--pred", str(train_dir), "--gt", str(root / "gtFine"), "--out", str(root / "o1")) == 0
    assert_matches_official(strict_json(root / "o1" / "metrics.json"), off)
    # Same files under neutral names: --pred-ids train gives the same numbers, label would be wrong.
    plain = root / "pred_plain"
    plain.mkdir()
    for f in sorted(train_dir.glob("*.png")):
        shutil.copy(f, plain / f.name.replace("_trainIds", "_pred"))
    assert run_eval("--pred", str(plain), "--gt", str(root / "gtFine"), "--out", str(root / "o2"),
                    "--pred-ids", "train") == 0
    assert_matches_official(strict_json(root / "o2" / "metrics.json"), off)
    # Read as label ids (the default for neutral names), the 255 "no class" values are refused.
    with pytest.raises(ValueError, match=r"unknown label ids \(valid: 0..33\): \[255\]"):
        run_eval("--pred", str(plain), "--gt", str(root / "gtFine"), "--out", str(root / "o3"))


def test_missing_prediction_is_an_error_unless_skipped(dataset):
    root, frames, gts, preds = dataset
    preds[2].unlink()
    with pytest.raises(FileNotFoundError, match="no prediction .* for 1 of 6 .*{}".format(frames[2][0])):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))
    assert not (root / "o" / "metrics.json").exists()
    assert run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"),
                    "--skip-missing") == 0
    keep = [i for i in range(6) if i != 2]
    doc = strict_json(root / "o" / "metrics.json")
    assert doc["frames"] == 5
    assert_matches_official(doc, official([preds[i] for i in keep], [gts[i] for i in keep]))


def test_size_mismatch_names_both_files(dataset):
    root, frames, gts, preds = dataset
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(preds[1])
    with pytest.raises(ValueError, match=r"prediction .*{}.* is 9x7 but ground truth .*{}".format(
            preds[1].name, gts[1].name)):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))


def test_unreadable_and_multichannel_files_are_named(dataset):
    root, frames, gts, preds = dataset
    data = preds[3].read_bytes()
    preds[3].write_bytes(data[: len(data) // 2])  # truncated PNG
    with pytest.raises(ValueError, match="cannot read prediction .*{}".format(preds[3].name)):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))
    Image.fromarray(np.zeros(frames[3][1].shape + (3,), np.uint8)).save(preds[3])
    with pytest.raises(ValueError, match="{} has 3 channels".format(preds[3].name)):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))


def test_duplicate_predictions_and_unknown_ids_are_errors(dataset):
    root, frames, gts, preds = dataset
    shutil.copy(preds[0], preds[0].with_name(frames[0][0] + "_other.png"))
    with pytest.raises(ValueError, match="several predictions for {}".format(frames[0][0])):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))
    assert run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"),
                    "--pred-glob", "*_labelIds.png") == 0
    bad = np.array(Image.open(preds[4]))
    bad[0, 0] = 200
    Image.fromarray(bad).save(preds[4])
    with pytest.raises(ValueError, match=r"unknown label ids .*\[200\].*{}".format(preds[4].name)):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"),
                 "--pred-glob", "*_labelIds.png")


def test_missing_instance_files(dataset):
    root, frames, gts, preds = dataset
    inst = gts[0].with_name(frames[0][0] + "_gtFine_instanceIds.png")
    inst.unlink()
    with pytest.raises(FileNotFoundError, match="instance file missing for 1 of 6 frames"):
        run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"))
    assert run_eval("--pred", str(root / "pred"), "--gt", str(root / "gtFine"), "--out", str(root / "o"),
                    "--no-instances") == 0
    doc = strict_json(root / "o" / "metrics.json")
    assert doc["iiou"] is None and doc["miou"] is not None


def test_camvid_predictions(tmp_path):
    rng = np.random.default_rng(5)
    total_m, total_missed = np.zeros((11, 11), np.int64), np.zeros(11, np.int64)
    for i in range(3):
        gt = rng.integers(0, 12, (20, 30)).astype(np.uint8)
        pred = rng.integers(0, 11, (20, 30)).astype(np.uint8)
        for folder, image in (("labels", gt), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(image).save(tmp_path / folder / "0001TP_{:06d}.png".format(i))
        m, missed = brute_force(pred, gt, 11, 11)
        total_m += m
        total_missed += missed
    assert run_eval("--dataset", "camvid", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "labels"),
                    "--out", str(tmp_path / "o")) == 0
    doc = strict_json(tmp_path / "o" / "metrics.json")
    tp = np.diag(total_m)
    iou = tp / (total_m.sum(1) + total_missed + total_m.sum(0) - tp)
    assert doc["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert [doc["class_iou"][n] for n in CAMVID.class_names] == pytest.approx(iou.tolist(), abs=1e-12)
    assert "iiou" not in doc and doc["frames"] == 3


def test_cli_reports_errors_in_one_line(dataset, capsys):
    """Through ``enet-seg``: user errors exit 2 with one clear line (needs every sub-command module)."""
    from enet_seg_ros import cli

    for _, module, _ in cli.COMMANDS:
        try:
            importlib.import_module("enet_seg_ros.commands." + module)
        except ImportError:
            pytest.skip("enet-seg sub-command module {} not there yet".format(module))
    root, frames, gts, preds = dataset
    preds[0].unlink()
    code = cli.main(["eval-preds", "--pred", str(root / "pred"), "--gt", str(root / "gtFine"),
                     "--out", str(root / "o"), "--no-progress"])
    assert code == 2
    assert "enet-seg eval-preds: error: no prediction" in capsys.readouterr().err
