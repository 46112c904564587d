"""eval-bag: GT topic and index CSV pairing, outputs, and every robustness case."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bag_fixtures import (START_NS, assert_same_metrics, jpeg_roundtrip, make_camvid_folder, make_cityscapes_folder,
                          make_weights, oracle, read_json, run_cli)

from enet_seg_ros.io.bags import COMPRESSED_TYPE, BagWriter

PERIOD_NS = 100_000_000  # make-bag's default 10 Hz


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "enet_camvid_tiny.safetensors")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid")
    images, labels, names = make_camvid_folder(root, n=6)
    frames = [cv2.imread(str(images / n))[:, :, ::-1].copy() for n in names]
    gts = [cv2.imread(str(labels / n), cv2.IMREAD_UNCHANGED) for n in names]
    return images, labels, names, frames, gts


def make_bag(camvid, out: Path, *extra) -> Path:
    images, labels = camvid[0], camvid[1]
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels, "--out", out,
                    "--start-ns", START_NS, "--no-progress", *extra]) == 0
    return out


def eval_bag(bag: Path, weights: Path, out: Path, *extra) -> int:
    return run_cli(["eval-bag", bag, "--weights", weights, "--backend", "torch", "--threads", 1, "--out", out,
                    "--no-progress", *extra])


def test_eval_bag_gt_topic_matches_direct_evaluation(camvid, weights, tmp_path):
    _, _, names, frames, gts = camvid
    bag = make_bag(camvid, tmp_path / "bag")
    out = tmp_path / "out"
    assert eval_bag(bag, weights, out, "--save-predictions") == 0
    metrics = read_json(out / "metrics.json")
    assert_same_metrics(metrics, oracle(weights, frames, gts))
    assert metrics["frames"] == 6 and metrics["frames_without_gt"] == 0 and metrics["frames_skipped"] == 0
    assert metrics["backend"] == "torch" and "enet camvid 64x48" in metrics["model"]
    lat = metrics["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    for name in ("report.md", "confusion.png", "class_iou.png"):
        assert (out / name).stat().st_size > 0
    assert "/camera/labels_gt" in (out / "report.md").read_text()
    # Saved predictions: one label-id and one colour PNG per frame, named by stamp.
    stem = "1700000000_{:09d}".format(3 * PERIOD_NS)
    saved = cv2.imread(str(out / "predictions" / (stem + "_labelIds.png")), cv2.IMREAD_UNCHANGED)
    from enet_seg_ros.engine import Segmenter

    expected = Segmenter(str(weights), backend="torch", threads=1).segment(frames[3]).labels
    np.testing.assert_array_equal(saved, expected)
    assert len(list((out / "predictions").glob("*_color.png"))) == 6


def test_eval_bag_compressed_mcap(camvid, weights, tmp_path):
    _, _, _, frames, gts = camvid
    bag = make_bag(camvid, tmp_path / "bag", "--storage", "mcap", "--compressed")
    out = tmp_path / "out"
    assert eval_bag(bag, weights, out) == 0  # compressed topic found automatically
    metrics = read_json(out / "metrics.json")
    assert_same_metrics(metrics, oracle(weights, [jpeg_roundtrip(f) for f in frames], gts))
    assert "/camera/image_raw/compressed (sensor_msgs/msg/CompressedImage)" in (out / "report.md").read_text()


def test_eval_bag_index_csv(camvid, weights, tmp_path):
    images, labels, names, frames, gts = camvid
    bag = make_bag(camvid, tmp_path / "bag")
    index = tmp_path / "index.csv"
    rows = ["stamp_ns,label_path"]
    for i, name in enumerate(names):
        if i != 4:  # frame 4 was never labelled
            rows.append("{},{}".format(START_NS + i * PERIOD_NS, name))
    rows.append("{},{}".format(START_NS + 99 * PERIOD_NS, names[0]))  # a label whose frame is not in the bag
    index.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert eval_bag(bag, weights, out, "--labels", labels, "--index", index) == 0
    metrics = read_json(out / "metrics.json")
    assert_same_metrics(metrics, oracle(weights, frames, [g if i != 4 else None for i, g in enumerate(gts)]))
    assert metrics["frames"] == 5 and metrics["frames_without_gt"] == 1 and metrics["gt_without_frame"] == 1
    report = (out / "report.md").read_text()
    assert "1 frame(s) had no ground truth" in report and "matched no decodable frame" in report


def test_index_csv_errors_name_the_line(camvid, weights, tmp_path, capsys):
    labels = camvid[1]
    bag = make_bag(camvid, tmp_path / "bag")
    bad = tmp_path / "bad.csv"
    bad.write_text("{},{}\nnot_a_stamp,x.png\n".format(START_NS, camvid[2][0]))
    assert eval_bag(bag, weights, tmp_path / "o", "--labels", labels, "--index", bad) == 2
    assert "bad.csv:2: stamp_ns must be an integer" in capsys.readouterr().err
    bad.write_text("{},missing.png\n".format(START_NS))
    assert eval_bag(bag, weights, tmp_path / "o", "--labels", labels, "--index", bad) == 2
    assert "bad.csv:1: label file not found" in capsys.readouterr().err
    assert eval_bag(bag, weights, tmp_path / "o", "--index", bad) == 2
    assert "--labels and --index go together" in capsys.readouterr().err


def test_frames_without_gt_are_counted_and_reported(weights, tmp_path):
    images, labels, names = make_camvid_folder(tmp_path / "data", n=6, unlabelled=(1, 4))
    bag = tmp_path / "bag"
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels, "--out", bag,
                    "--no-progress"]) == 0
    out = tmp_path / "out"
    assert eval_bag(bag, weights, out) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 4 and metrics["frames_without_gt"] == 2
    frames = [cv2.imread(str(images / n))[:, :, ::-1].copy() for n in names]
    gts = [cv2.imread(str(labels / n), 0) if (labels / n).exists() else None for n in names]
    assert_same_metrics(metrics, oracle(weights, frames, gts))
    assert "2 frame(s) had no ground truth: segmented, not scored" in (out / "report.md").read_text()


def _custom_bag(path: Path, frames, gts, compressed_bad=()):
    """A bag written directly: raw frames (or compressed, some corrupt) and GT of any size / content."""
    with BagWriter(path) as w:
        for i, (rgb, gt) in enumerate(zip(frames, gts)):
            stamp = START_NS + i * PERIOD_NS
            if compressed_bad:
                topic = "/camera/image_raw/compressed"
                if i in compressed_bad:
                    msg = w._ts.types[COMPRESSED_TYPE](header=w._header(stamp, "camera"), format="jpeg",
                                                        data=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8))
                    w.write_message(topic, msg, stamp)
                else:
                    w.write_compressed(topic, rgb, stamp)
            else:
                w.write_image("/camera/image_raw", rgb, "rgb8", stamp)
            w.write_image("/camera/labels_gt", gt, "mono8", stamp)
    return path


def test_gt_of_another_size_is_an_error_unless_resized(camvid, weights, tmp_path, capsys):
    _, _, _, frames, gts = camvid
    small = [cv2.resize(g, (48, 32), interpolation=cv2.INTER_NEAREST) for g in gts[:3]]
    bag = _custom_bag(tmp_path / "bag", frames[:3], small)
    assert eval_bag(bag, weights, tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert "ground truth is 48x32 but the frame is 96x64" in err and "--resize-gt nearest" in err
    assert "topic /camera/labels_gt stamp 1700000000.000000000" in err and str(bag) in err
    assert not (tmp_path / "o1" / "metrics.json").exists()

    assert eval_bag(bag, weights, tmp_path / "o2", "--resize-gt", "nearest") == 0
    up = [cv2.resize(g, (96, 64), interpolation=cv2.INTER_NEAREST) for g in small]
    assert_same_metrics(read_json(tmp_path / "o2" / "metrics.json"), oracle(weights, frames[:3], up))


def test_unknown_label_ids_name_the_frame(camvid, weights, tmp_path, capsys):
    _, _, _, frames, gts = camvid
    bad = [g.copy() for g in gts[:3]]
    bad[2][5, 5] = 77
    bag = _custom_bag(tmp_path / "bag", frames[:3], bad)
    assert eval_bag(bag, weights, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "unknown label ids [77]" in err
    assert "topic /camera/labels_gt stamp 1700000000.{:09d}".format(2 * PERIOD_NS) in err


def test_corrupt_compressed_frame_is_reported_and_skipped(camvid, weights, tmp_path):
    _, _, _, frames, gts = camvid
    bag = _custom_bag(tmp_path / "bag", frames[:4], gts[:4], compressed_bad=(1,))
    out = tmp_path / "out"
    assert eval_bag(bag, weights, out) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["frames"] == 3 and metrics["frames_skipped"] == 1 and metrics["gt_without_frame"] == 1
    skipped = metrics["skipped"][0]
    assert "stamp 1700000000.100000000" in skipped["frame"] and "/camera/image_raw/compressed" in skipped["frame"]
    assert "corrupt or unsupported compressed image" in skipped["reason"]
    good = [jpeg_roundtrip(f) for f in frames[:4]]
    assert_same_metrics(metrics, oracle(weights, good, [g if i != 1 else None for i, g in enumerate(gts[:4])]))
    assert "skipped bag" in (out / "report.md").read_text()


def test_missing_topics_list_what_exists(camvid, weights, tmp_path, capsys):
    bag = make_bag(camvid, tmp_path / "bag")
    assert eval_bag(bag, weights, tmp_path / "o", "--gt-topic", "/camera/semantic") == 2
    err = capsys.readouterr().err
    assert "ground-truth topic /camera/semantic not found" in err
    assert "/camera/image_raw (sensor_msgs/msg/Image, 6 msgs), /camera/labels_gt (sensor_msgs/msg/Image, 6 msgs)" in err
    assert eval_bag(bag, weights, tmp_path / "o", "--image-topic", "/left/image_raw") == 2
    assert "image topic /left/image_raw not found" in capsys.readouterr().err


def test_truncated_bag_via_cli(camvid, weights, tmp_path, capsys):
    bag = make_bag(camvid, tmp_path / "bag", "--storage", "mcap")
    data = next(bag.glob("*.mcap"))
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 100)
    assert eval_bag(bag, weights, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "cannot open bag {}".format(bag) in err and "truncated" in err


def test_eval_bag_cityscapes_with_instances(tmp_path):
    images, gt = make_cityscapes_folder(tmp_path / "cs", n=3)
    w = make_weights(tmp_path / "enet_cs.safetensors", dataset="cityscapes")
    bag = tmp_path / "bag"
    assert run_cli(["make-bag", "--dataset", "cityscapes", "--images", images, "--labels", gt, "--out", bag,
                    "--no-progress"]) == 0
    out = tmp_path / "out"
    assert eval_bag(bag, w, out) == 0
    metrics = read_json(out / "metrics.json")
    from enet_seg_ros.evaluate.folders import read_instance_ids, read_label_ids, read_rgb

    keys = sorted(p.name[: -len("_leftImg8bit.png")] for p in images.rglob("*_leftImg8bit.png"))
    frames = [read_rgb(next(images.rglob(k + "_leftImg8bit.png"))) for k in keys]
    labels = [read_label_ids(next(gt.rglob(k + "_gtFine_labelIds.png"))) for k in keys]
    inst = [read_instance_ids(next(gt.rglob(k + "_gtFine_instanceIds.png"))) for k in keys]
    expected = oracle(w, frames, labels, "cityscapes", inst)
    assert_same_metrics(metrics, expected, keys=("miou", "iiou", "category_iou", "category_iiou", "pixels"))
    assert metrics["iiou"] is not None and metrics["instance_frames"] == 3


def test_offline_tools_run_without_rclpy(camvid, weights, tmp_path):
    """make-bag and eval-bag must work on machines without ROS: block rclpy and run them."""
    images, labels = camvid[0], camvid[1]
    code = (
        "import sys\n"
        "for m in ('rclpy', 'sensor_msgs', 'std_msgs'): sys.modules[m] = None\n"
        "from enet_seg_ros.cli import main\n"
        "assert main(['make-bag', '--dataset', 'camvid', '--images', sys.argv[1], '--labels', sys.argv[2],"
        " '--out', sys.argv[3], '--compressed', '--no-progress']) == 0\n"
        "assert main(['eval-bag', sys.argv[3], '--weights', sys.argv[4], '--backend', 'torch', '--threads', '1',"
        " '--out', sys.argv[5], '--no-progress']) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(images), str(labels), str(tmp_path / "bag"),
                           str(weights), str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(tmp_path / "out" / "metrics.json")["frames"] == 6
