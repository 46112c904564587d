"""Helpers shared by the bag / eval-dir / eval_node tests: small labelled folders and weights.

Everything is generated (no shared data needed): CamVid-style folders of random-ish RGB
frames with label PNGs (values 0..11, 11 = Unlabelled) and Cityscapes-style folders with
label and instance PNGs, plus a randomly initialised ENet saved with ``save_model``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

START_NS = 1_700_000_000_000_000_000  # fixed first stamp so tests know every stamp
FRAME_SIZE = (96, 64)  # (W, H) of generated frames
MODEL_SIZE = (64, 48)  # network input of the test weights


def make_weights(path: Path, dataset: str = "camvid", size: Tuple[int, int] = MODEL_SIZE, seed: int = 0) -> Path:
    """A randomly initialised ENet for ``dataset`` saved with its model card."""
    import torch

    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard, save_model

    spec = get_label_spec(dataset)
    torch.manual_seed(seed)
    model = build_model("enet", spec.num_classes).eval()
    card = ModelCard.for_dataset("enet", spec, list(size))
    return save_model(path, model, card)


def _frame(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth-ish random RGB frame (blocks + noise) so JPEG and the model both see structure."""
    small = rng.integers(0, 256, size=(max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-10, 11, size=big.shape)
    return np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _labels(rng: np.random.Generator, w: int, h: int, values: Sequence[int]) -> np.ndarray:
    small = rng.choice(np.asarray(values, dtype=np.uint8), size=(max(1, h // 8), max(1, w // 8)))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def make_camvid_folder(root: Path, n: int = 6, size: Tuple[int, int] = FRAME_SIZE, seed: int = 1,
                       unlabelled: Sequence[int] = ()) -> Tuple[Path, Path, List[str]]:
    """``root/images`` + ``root/labels`` (same file names, values 0..11); frames in ``unlabelled`` get no label."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    names = []
    w, h = size
    for i in range(n):
        name = "seq_{:04d}.png".format(i)
        cv2.imwrite(str(images / name), _frame(rng, w, h)[:, :, ::-1])
        if i not in unlabelled:
            cv2.imwrite(str(labels / name), _labels(rng, w, h, range(12)))
        names.append(name)
    return images, labels, names


def make_cityscapes_folder(root: Path, n: int = 3, size: Tuple[int, int] = FRAME_SIZE,
                           seed: int = 2) -> Tuple[Path, Path]:
    """``root/leftImg8bit/val/<city>`` + ``root/gtFine/val/<city>`` with label and instance PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, gt = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    w, h = size
    for i in range(n):
        city = "city{}".format(i % 2)
        (images / city).mkdir(parents=True, exist_ok=True)
        (gt / city).mkdir(parents=True, exist_ok=True)
        key = "{}_{:06d}_{:06d}".format(city, 0, i)
        cv2.imwrite(str(images / city / (key + "_leftImg8bit.png")), _frame(rng, w, h)[:, :, ::-1])
        label = _labels(rng, w, h, [0, 7, 8, 11, 21, 23, 24, 26])
        inst = label.astype(np.int32)
        for lid in (24, 26):  # two instances per instance class: left / right half
            mask = label == lid
            inst[mask] = lid * 1000
            inst[mask & (np.arange(w)[None, :] >= w // 2)] = lid * 1000 + 1
        Image.fromarray(label).save(gt / city / (key + "_gtFine_labelIds.png"))
        Image.fromarray(inst.astype(np.uint16)).save(gt / city / (key + "_gtFine_instanceIds.png"))
    return images, gt


def run_cli(argv: Sequence[str]) -> int:
    """``enet-seg`` in-process (exit code)."""
    from enet_seg_ros.cli import main

    return main([str(a) for a in argv])


def read_json(path: Path) -> Dict:
    import json

    return json.loads(Path(path).read_text())


def oracle(weights: Path, frames: Sequence[np.ndarray], gts: Sequence[Optional[np.ndarray]], dataset: str = "camvid",
           instances: Optional[Sequence[Optional[np.ndarray]]] = None) -> Dict:
    """Metrics computed directly: Segmenter + evaluator, no bag, no pipeline."""
    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine import Segmenter
    from enet_seg_ros.evaluate import make_evaluator
    from enet_seg_ros.weights import read_card

    spec = get_label_spec(dataset)
    card = read_card(weights)
    seg = Segmenter(str(weights), backend="torch", threads=1)
    ev = make_evaluator(spec)
    for i, (rgb, gt) in enumerate(zip(frames, gts)):
        if gt is None:
            continue
        labels = seg.segment(rgb).labels.copy()
        labels[labels == 255] = spec.ignore_index
        if card.ignore_index is not None:
            labels[labels == card.ignore_index] = spec.ignore_index
        ev.add(labels, gt, instances[i] if instances is not None else None)
    return ev.result()


def jpeg_roundtrip(rgb: np.ndarray, quality: int = 95) -> np.ndarray:
    """What a CompressedImage frame written by make-bag decodes to."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def assert_same_metrics(a: Dict, b: Dict, keys: Sequence[str] = ("miou", "pixel_accuracy", "mean_class_accuracy",
                                                                 "pixels")) -> None:
    """Equal headline metrics and per-class IoU (NaN/None aware, 1e-12)."""
    for key in keys:
        va, vb = a.get(key), b.get(key)
        assert (va is None) == (vb is None), (key, va, vb)
        if va is not None:
            assert abs(float(va) - float(vb)) <= 1e-12, (key, va, vb)
    ca, cb = a["class_iou"], b["class_iou"]
    assert set(ca) == set(cb)
    for name in ca:
        assert (ca[name] is None) == (cb[name] is None), name
        if ca[name] is not None:
            assert abs(ca[name] - cb[name]) <= 1e-12, (name, ca[name], cb[name])
