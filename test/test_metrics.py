"""Metrics: the confusion accumulator against brute force, Cityscapes scores against the official
``cityscapesscripts`` evaluator on generated Cityscapes-format data."""
import numpy as np

np.in1d = np.isin  # cityscapesscripts still calls np.in1d, removed in numpy 2.4

import copy
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from PIL import Image

from enet_seg_ros.data.labels import CAMVID, CITYSCAPES, CITYSCAPES_TABLE
from enet_seg_ros.evaluate import make_evaluator
from enet_seg_ros.evaluate.cityscapes import OFFICIAL_AVG_CLASS_SIZE, CityscapesEvaluator
from enet_seg_ros.evaluate.metrics import ConfusionMatrix, Evaluator, joint_histogram
from enet_seg_ros.evaluate.report import latency_stats, write_evaluation

INSTANCE_IDS = [24, 25, 26, 27, 28, 29, 30, 31, 32, 33]  # classes with instances (29, 30 ignored in eval)
ID_TO_TRAIN = np.asarray(CITYSCAPES.id_to_train_id, dtype=np.uint8)
TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)  # 255 ("no class") -> 0 "unlabeled", as a label-id PNG holds it
TRAIN_TO_ID[: CITYSCAPES.num_classes] = CITYSCAPES.train_id_to_id


# --------------------------------------------------------------------------------- data generation
def make_frame(rng: np.random.Generator, h: int, w: int, kind: str) -> Tuple[np.ndarray, np.ndarray]:
    """A gtFine-style (label ids, instance ids) pair: ``random`` noise or ``structured`` scenes."""
    gt = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int32)
    if kind == "random":
        gt[:] = rng.integers(0, 34, (h, w))
        inst[:] = gt
        things = np.isin(gt, INSTANCE_IDS)
        number = rng.integers(0, 4, (h, w))
        inst[things] = gt[things].astype(np.int32) * 1000 + number[things]
        group = things & (rng.random((h, w)) < 0.2)  # crowd regions keep the plain label id
        inst[group] = gt[group]
    else:
        bands = rng.choice([7, 8, 11, 21, 23, 22, 6, 9, 12], size=4)
        for i, b in enumerate(bands):
            gt[i * h // 4:(i + 1) * h // 4] = b
        inst[:] = gt
        for j in range(int(rng.integers(3, 9))):
            label = int(rng.choice(INSTANCE_IDS + [17, 19, 20, 13, 0, 4, 14]))
            y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
            y1, x1 = y0 + int(rng.integers(2, h // 2)), x0 + int(rng.integers(2, w // 2))
            gt[y0:y1, x0:x1] = label
            is_instance = label in INSTANCE_IDS and rng.random() < 0.85
            inst[y0:y1, x0:x1] = label * 1000 + j if is_instance else label
    return gt, inst


def make_prediction(rng: np.random.Generator, gt: np.ndarray, kind: str) -> np.ndarray:
    """Label-id predictions: noisy copies, shifted copies (with caravan / trailer / void), or noise."""
    pred = gt.copy()
    if kind == "noisy":
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.integers(0, 34, int(noise.sum()))
    elif kind == "shift":
        pred = np.roll(gt, (2, 3), (0, 1))
        noise = rng.random(gt.shape) < 0.1
        pred[noise] = rng.choice([26, 29, 30, 24, 25, 0, 7], int(noise.sum()))
    else:
        pred[:] = rng.integers(0, 34, gt.shape)
    return pred


def generate(seed: int, n: int, gt_absent: Sequence[int] = (), pred_absent: Sequence[int] = (),
             size: Tuple[int, int] = (30, 90)) -> List[Tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` frames of different sizes / content: (key, gt label ids, instance ids, label-id prediction)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        h, w = int(rng.integers(size[0], size[0] + 30)), int(rng.integers(size[1] - 50, size[1]))
        gt, inst = make_frame(rng, h, w, "random" if i % 2 else "structured")
        for a in gt_absent:  # remove a class (and its instances) from the ground truth
            gt[gt == a] = 7
            inst[(inst // 1000 == a) | (inst == a)] = 7
        pred = make_prediction(rng, gt, ["noisy", "shift", "uniform"][i % 3])
        for a in pred_absent:
            pred[pred == a] = 8
        frames.append(("{}_{:06d}_{:06d}".format(["aachen", "bonn", "zurich"][i % 3], i, 19 + i), gt, inst, pred))
    return frames


def write_cityscapes(root: Path, frames, pred_dir: Optional[Path] = None, pred_suffix: str = "_labelIds.png",
                     convert=None) -> Tuple[List[Path], List[Path]]:
    """Write gtFine/val/<city>/ label + instance PNGs and prediction PNGs; returns (gt files, pred files)."""
    gts, preds = [], []
    pred_dir = pred_dir or root / "results"
    for key, gt, inst, pred in frames:
        city = key.split("_")[0]
        folder = root / "gtFine" / "val" / city
        folder.mkdir(parents=True, exist_ok=True)
        pred_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(folder / (key + "_gtFine_labelIds.png"))
        Image.fromarray(inst.astype(np.uint16)).save(folder / (key + "_gtFine_instanceIds.png"))
        out = pred_dir / (key + pred_suffix)
        Image.fromarray(convert(pred) if convert else pred).save(out)
        gts.append(folder / (key + "_gtFine_labelIds.png"))
        preds.append(out)
    return gts, preds


def official(pred_files: Sequence[Path], gt_files: Sequence[Path], avg_class_size=None) -> Dict:
    """Run cityscapesscripts' evalPixelLevelSemanticLabeling on file lists; its result dict."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.CArgs()
    for key, value in vars(ev.args).items():
        setattr(args, key, copy.deepcopy(value))
    args.evalInstLevelScore = True
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    if avg_class_size is not None:
        args.avgClassSize = dict(avg_class_size)
    return ev.evaluateImgLists([str(p) for p in pred_files], [str(p) for p in gt_files], args)


def assert_same(ours: Optional[float], theirs: float, what: str) -> None:
    if math.isnan(theirs):
        assert ours is None, "{}: official NaN, ours {}".format(what, ours)
    else:
        assert ours is not None and abs(ours - theirs) <= 1e-6, "{}: ours {} official {}".format(what, ours, theirs)


def assert_matches_official(result: Dict, off: Dict) -> None:
    """Every class / category score and every average equals the official one."""
    for name in CITYSCAPES.class_names:
        assert_same(result["class_iou"][name], off["classScores"][name], "IoU " + name)
    instance_classes = [CITYSCAPES.class_names[t] for t in CITYSCAPES.instance_classes]
    assert sorted(result["class_iiou"]) == sorted(instance_classes)
    for name, value in off["classInstScores"].items():
        if name in instance_classes:
            assert_same(result["class_iiou"][name], value, "iIoU " + name)
        else:
            assert math.isnan(value)  # the official script scores iIoU only for instance classes
    assert sorted(result["per_category_iou"]) == sorted(c for c in off["categoryScores"] if c != "void")
    for cat in result["per_category_iou"]:
        assert_same(result["per_category_iou"][cat], off["categoryScores"][cat], "category IoU " + cat)
        assert_same(result["per_category_iiou"][cat], off["categoryInstScores"][cat], "category iIoU " + cat)
    assert_same(result["miou"], off["averageScoreClasses"], "mean IoU")
    assert_same(result["iiou"], off["averageScoreInstClasses"], "mean iIoU")
    assert_same(result["category_iou"], off["averageScoreCategories"], "mean category IoU")
    assert_same(result["category_iiou"], off["averageScoreInstCategories"], "mean category iIoU")
    # The train-id matrix is the official label-id matrix restricted to evaluated ids.
    matrix = np.asarray(off["confMatrix"], dtype=np.int64)
    ids = list(CITYSCAPES.train_id_to_id)
    assert result["pixels"] == int(matrix[ids].sum())


def flatten(doc: Dict, prefix: str = "") -> Dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def evaluate_frames(frames, as_train_ids: bool = False, instances: bool = True, **kwargs) -> CityscapesEvaluator:
    ev = CityscapesEvaluator(**kwargs)
    for key, gt, inst, pred in frames:
        p = ID_TO_TRAIN[pred] if as_train_ids else pred
        ev.add(p, gt, inst.astype(np.uint16) if instances else None, pred_is_label_ids=not as_train_ids, name=key)
    return ev


# --------------------------------------------------------------------------------- confusion matrix
def brute_force(pred: np.ndarray, gt: np.ndarray, n: int, ignore: int):
    matrix = np.zeros((n, n), np.int64)
    missed = np.zeros(n, np.int64)
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g == ignore or not 0 <= g < n:
            continue
        if p == ignore:
            missed[g] += 1
        else:
            matrix[g, p] += 1
    return matrix, missed


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32])
def test_confusion_matrix_equals_brute_force(dtype):
    rng = np.random.default_rng(3)
    n, ignore = 11, 11
    cm = ConfusionMatrix(n, ignore)
    total_m, total_missed = np.zeros((n, n), np.int64), np.zeros(n, np.int64)
    for _ in range(3):
        gt = rng.integers(0, 13, (23, 31)).astype(dtype)  # 11 = ignore, 12 = outside: both skipped
        pred = rng.integers(0, 12, (23, 31)).astype(dtype)  # 11 = "no class" -> a miss
        cm.update(pred, gt)
        m, missed = brute_force(pred, gt, n, ignore)
        total_m += m
        total_missed += missed
    np.testing.assert_array_equal(cm.matrix, total_m)
    np.testing.assert_array_equal(cm.missed, total_missed)
    # Scores from their definitions.
    tp = np.diag(total_m).astype(float)
    gt_pixels = total_m.sum(1) + total_missed
    iou = tp / (gt_pixels + total_m.sum(0) - tp)
    np.testing.assert_allclose(cm.iou(), iou, rtol=0, atol=1e-12)
    s = cm.summary(CAMVID.class_names)
    assert s["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(tp.sum() / gt_pixels.sum(), abs=1e-12)
    assert s["mean_class_accuracy"] == pytest.approx((tp / gt_pixels).mean(), abs=1e-12)
    assert s["pixels"] == int(gt_pixels.sum())
    assert list(s["class_iou"]) == list(CAMVID.class_names)


def test_wide_path_equals_histogram_path():
    """Values beyond 8 bits take the direct bincount path; same semantics."""
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 12, (17, 19))
    pred = rng.integers(0, 12, (17, 19))
    fast = ConfusionMatrix(11, 11)
    fast.update(pred.astype(np.uint8), gt.astype(np.uint8))
    wide = ConfusionMatrix(11, 11)
    wide._update_wide(pred, gt + 0)
    np.testing.assert_array_equal(fast.matrix, wide.matrix)
    np.testing.assert_array_equal(fast.missed, wide.missed)
    big = ConfusionMatrix(299, 299)  # 299 classes: too many for the 8-bit path
    big.update(np.array([[298, 299, 5]]), np.array([[298, 298, 1000]]))
    assert big.matrix[298, 298] == 1 and big.missed[298] == 1 and big.matrix.sum() == 1


def test_nan_for_absent_classes_and_merge():
    a = ConfusionMatrix(4, 255)
    a.update(np.array([[0, 1, 1]], np.uint8), np.array([[0, 1, 255]], np.uint8))
    b = ConfusionMatrix(4, 255)
    b.update(np.array([[2, 255]], np.uint8), np.array([[0, 1]], np.uint8))
    a.merge(b)
    iou = a.iou()
    # class 0: tp 1, fn 1 (pred 2); class 1: tp 1, fn 1 (void pred); class 2: fp 1; class 3: absent
    np.testing.assert_allclose(iou[:3], [0.5, 0.5, 0.0])
    assert np.isnan(iou[3])
    s = a.summary(["a", "b", "c", "d"])
    assert s["class_iou"]["d"] is None and s["class_accuracy"]["c"] is None
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["pixel_accuracy"] == pytest.approx(2 / 4)


def test_invalid_predictions_and_shapes_raise():
    cm = ConfusionMatrix(4, 255)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([[7]], np.uint8), np.array([[1]], np.uint8))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32))
    assert cm.matrix.sum() == 0 and cm.missed.sum() == 0


def test_joint_histogram_counts_pairs():
    rows = np.array([[0, 255, 3], [3, 3, 0]], np.uint8)
    cols = np.array([[1, 2, 3], [3, 4, 1]], np.uint8)
    hist = joint_histogram(rows, cols)
    assert hist.shape == (256, 256) and hist.sum() == 6
    assert hist[0, 1] == 2 and hist[3, 3] == 2 and hist[255, 2] == 1 and hist[3, 4] == 1


# --------------------------------------------------------------------------------- dataset evaluator
def test_camvid_evaluator_validates_ids_and_sizes():
    ev = make_evaluator("camvid")
    assert isinstance(ev, Evaluator)
    gt = np.array([[0, 1, 11], [10, 3, 3]], np.uint8)
    pred = np.array([[0, 2, 5], [10, 11, 3]], np.uint8)
    ev.add(pred, gt)
    m, missed = brute_force(pred, gt, 11, 11)
    np.testing.assert_array_equal(ev.confusion.matrix, m)
    np.testing.assert_array_equal(ev.confusion.missed, missed)
    r = ev.result()
    assert r["frames"] == 1 and r["pixels"] == 5 and "iiou" not in r
    with pytest.raises(ValueError, match=r"unknown label ids \[12\].*frame7"):
        ev.add(pred, np.array([[0, 12, 11], [10, 3, 3]], np.uint8), name="frame7")
    with pytest.raises(ValueError, match=r"prediction size 3x1 != ground truth size 3x2"):
        ev.add(pred[:1], gt)
    with pytest.raises(ValueError, match="single-channel"):
        ev.add(np.zeros((2, 3, 3), np.uint8), gt)
    with pytest.raises(ValueError, match="outside"):
        ev.add(np.full((2, 3), 12, np.uint8), gt)
    assert ev.frames == 1 and ev.confusion.matrix.sum() + ev.confusion.missed.sum() == 5


def test_label_table_equals_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    theirs = [(l.name, l.id, l.trainId, l.category, l.hasInstances, l.ignoreInEval) for l in labels]
    ours = [(l.name, l.id, l.train_id, l.category, l.has_instances, l.ignore_in_eval) for l in CITYSCAPES_TABLE]
    assert ours == theirs
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    assert ev.args.avgClassSize == OFFICIAL_AVG_CLASS_SIZE


# --------------------------------------------------------------------------------- Cityscapes oracle
@pytest.mark.parametrize("seed,gt_absent,pred_absent", [
    (0, (), ()),
    (1, (31,), (12,)),  # train absent from GT (but predicted), wall never predicted
    (2, (28, 31, 12), (28, 12)),  # bus and wall absent from both -> NaN, train absent from GT only
])
def test_cityscapes_label_id_predictions_equal_official(tmp_path, seed, gt_absent, pred_absent):
    frames = generate(seed, 6, gt_absent, pred_absent)
    gts, preds = write_cityscapes(tmp_path, frames)
    off = official(preds, gts)
    result = evaluate_frames(frames).result()
    assert_matches_official(result, off)
    for cls in gt_absent:
        name = next(l.name for l in CITYSCAPES_TABLE if l.id == cls)
        if cls in pred_absent:
            assert result["class_iou"][name] is None
            if name in result["class_iiou"]:
                assert result["class_iiou"][name] is None
        else:
            assert result["class_iou"][name] == 0.0


def test_cityscapes_train_id_predictions_equal_official(tmp_path):
    """Train-id predictions score as the label-id PNGs they stand for (255 -> unlabeled)."""
    frames = generate(5, 5, (33,), (19,))
    gts, preds = write_cityscapes(tmp_path, frames, convert=lambda p: TRAIN_TO_ID[ID_TO_TRAIN[p]])
    off = official(preds, gts)
    ev = evaluate_frames(frames, as_train_ids=True)
    assert_matches_official(ev.result(), off)
    # The caravan / trailer quirk of category iIoU: label-id predictions differ from train ids.
    ids = evaluate_frames(frames).result()
    assert ids["per_category_iiou"]["vehicle"] != ev.result()["per_category_iiou"]["vehicle"]


def test_cityscapes_custom_instance_sizes_equal_official(tmp_path):
    frames = generate(7, 4)
    gts, preds = write_cityscapes(tmp_path, frames)
    sizes = {name: 50.0 + 13.0 * i for i, name in enumerate(sorted(OFFICIAL_AVG_CLASS_SIZE))}
    result = evaluate_frames(frames, avg_class_size=sizes).result()
    assert_matches_official(result, official(preds, gts, avg_class_size=sizes))
    assert result["iiou"] != evaluate_frames(frames).result()["iiou"]


def test_cityscapes_structured_larger_frames_equal_official(tmp_path):
    """Bigger structured scenes with many instances per frame (realistic instance sizes)."""
    rng = np.random.default_rng(11)
    frames = []
    for i in range(3):
        gt, inst = make_frame(rng, 256, 512, "structured")
        for j in range(40):  # many small and large instances
            label = int(rng.choice([24, 25, 26, 27, 28, 32, 33]))
            y, x = int(rng.integers(0, 240)), int(rng.integers(0, 490))
            hh, ww = int(rng.integers(3, 60)), int(rng.integers(3, 90))
            gt[y:y + hh, x:x + ww] = label
            inst[y:y + hh, x:x + ww] = label * 1000 + j
        pred = make_prediction(rng, gt, ["shift", "noisy", "shift"][i])
        frames.append(("lindau_{:06d}_000019".format(i), gt, inst, pred))
    gts, preds = write_cityscapes(tmp_path, frames)
    assert_matches_official(evaluate_frames(frames).result(), official(preds, gts))


def test_cityscapes_merge_equals_single_pass():
    frames = generate(8, 4)
    whole = evaluate_frames(frames)
    a, b = evaluate_frames(frames[:2]), evaluate_frames(frames[2:])
    a.merge(b)
    merged, single = flatten(a.result()), flatten(whole.result())
    assert merged.keys() == single.keys()
    for key, value in single.items():  # weighted sums differ only in float summation order
        assert merged[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    np.testing.assert_array_equal(a.confusion.matrix, whole.confusion.matrix)


def test_cityscapes_iiou_needs_instances_in_every_frame():
    frames = generate(9, 3)
    ev = evaluate_frames(frames, instances=False)
    r = ev.result()
    assert r["instance_frames"] == 0 and r["iiou"] is None and r["category_iiou"] is None
    assert r["miou"] == evaluate_frames(frames).result()["miou"]
    key, gt, inst, pred = frames[0]
    ev.add(pred, gt, inst, pred_is_label_ids=True)
    assert ev.result()["iiou"] is None  # 1 of 4 frames with instances: not reported


def test_cityscapes_bad_inputs_name_the_problem():
    ev = CityscapesEvaluator()
    gt = np.full((4, 5), 7, np.uint8)
    inst = np.full((4, 5), 7, np.int32)
    with pytest.raises(ValueError, match=r"ground truth has unknown label ids \[40\].*f1"):
        bad = gt.copy(); bad[0, 0] = 40
        ev.add(np.zeros_like(gt), bad, name="f1")
    with pytest.raises(ValueError, match=r"unknown label ids \(valid: 0..33\): \[34\]"):
        ev.add(np.full_like(gt, 34), gt, pred_is_label_ids=True)
    with pytest.raises(ValueError, match=r"unknown train ids .*: \[19\]"):
        ev.add(np.full_like(gt, 19), gt)
    with pytest.raises(ValueError, match="unknown label ids: \\[40\\]"):
        bad = inst.copy(); bad[1, 1] = 40001
        ev.add(np.zeros_like(gt), gt, bad)
    with pytest.raises(ValueError, match="classes without instances"):
        bad = inst.copy(); bad[1, 1] = 7001
        ev.add(np.zeros_like(gt), gt, bad)
    with pytest.raises(ValueError, match="instance image shape"):
        ev.add(np.zeros_like(gt), gt, inst[:2])
    assert ev.frames == 0 and ev.id_matrix.sum() == 0 and ev.class_instances.tp_w.sum() == 0
    ev.add(np.zeros_like(gt), gt, inst)  # road predicted as road: fine
    assert ev.result()["class_iou"]["road"] == 1.0


# --------------------------------------------------------------------------------- report basics
def test_report_files_and_json_without_nan(tmp_path):
    frames = generate(2, 3, (28, 31, 12), (28, 12))
    ev = evaluate_frames(frames)
    paths = write_evaluation(tmp_path, ev, frames_without_gt=2, model={"arch": "enet"}, backend="onnxruntime",
                             latencies_ms=[10.0, 12.0, 30.0, 11.0])
    text = paths["metrics"].read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail("non-JSON constant " + c))
    assert doc["class_iou"]["bus"] is None and doc["class_iou"]["wall"] is None
    assert doc["frames"] == 3 and doc["frames_without_gt"] == 2 and doc["backend"] == "onnxruntime"
    assert doc["latency_ms"] == latency_stats([10.0, 12.0, 30.0, 11.0])
    assert doc["latency_ms"]["max"] == 30.0 and doc["latency_ms"]["p50"] == pytest.approx(11.5)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy", "iiou", "category_iou", "category_iiou"):
        assert 0.0 <= doc[key] <= 1.0
    report = paths["report"].read_text()
    assert "| Mean IoU (class) | {:.2f} |".format(100 * doc["miou"]) in report
    assert "## Categories" in report and "| vehicle |" in report
    for key in ("confusion", "class_iou"):
        with Image.open(paths[key]) as image:
            assert image.format == "PNG" and image.size[0] > 300
