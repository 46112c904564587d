"""Datasets and augmentation: discovery of CamVid / Cityscapes layouts, the pre-training data check
(missing labels, size mismatch, unknown values, empty, corrupt files) and ``TrainAugment``.

The generators here (``make_camvid``, ``make_cityscapes``) are also used by the trainer tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.data.datasets import DatasetError, build_dataset, camvid_pairs
from enet_seg_ros.data.device_augment import BatchAugment, FrameStore
from enet_seg_ros.data.labels import CAMVID, CITYSCAPES
from enet_seg_ros.data.transforms import TrainAugment, normalize

CAMVID_PALETTE = np.asarray(CAMVID.palette, dtype=np.uint8)


# ----------------------------------------------------------------------------------- generators
def scene(rng: np.random.Generator, w: int, h: int, classes: Sequence[int], thing: int, void: int) -> np.ndarray:
    """A structured label map: horizontal bands of ``classes``, one ``thing`` box, a ``void`` corner."""
    label = np.zeros((h, w), np.uint8)
    bands = np.linspace(0, h, len(classes) + 1).astype(int)
    for c, y0, y1 in zip(classes, bands[:-1], bands[1:]):
        label[y0:y1] = c
    bw, bh = int(rng.integers(w // 6, w // 3)), int(rng.integers(h // 6, h // 3))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(h // 3, h - bh))
    label[y0:y0 + bh, x0:x0 + bw] = thing
    label[: h // 10, : w // 8] = void
    return label


def paint(label_train_ids: np.ndarray, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour encodes the class (palette colour + mild noise)."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    image = table[label_train_ids].astype(np.int16) + rng.integers(-12, 13, label_train_ids.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def make_camvid(root: Path, n_train: int = 8, n_val: int = 4, size: Tuple[int, int] = (64, 48),
                seed: int = 0) -> Path:
    """A tiny CamVid in the SegNet layout (``train/ trainannot/ val/ valannot/``)."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            classes = [0, 1, 3] if i % 2 == 0 else [0, 5, 4, 3]
            label = scene(rng, w, h, classes, thing=8 if i % 3 else 9, void=11)
            name = "{}_{:03d}.png".format(split, i)
            write_rgb(root / split / name, paint(label, CAMVID_PALETTE, rng))
            write_label(root / (split + "annot") / name, label)
    return root


def make_cityscapes(root: Path, n_train: int = 6, n_val: int = 2, size: Tuple[int, int] = (64, 32),
                    seed: int = 0) -> Path:
    """A tiny Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/...labelIds.png``."""
    rng = np.random.default_rng(seed)
    w, h = size
    palette = np.asarray(CITYSCAPES.palette, np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city = "aachen" if i % 2 == 0 else "bremen"
            ids = scene(rng, w, h, [23, 11, 7], thing=26, void=1)  # sky, building, road, car, ego vehicle
            stem = "{}_{:06d}_000019".format(city, i)
            write_rgb(root / "leftImg8bit" / split / city / (stem + "_leftImg8bit.png"),
                      paint(CITYSCAPES.to_train_ids(ids), palette, rng))
            write_label(root / "gtFine" / split / city / (stem + "_gtFine_labelIds.png"), ids)
    return root


def run_cli(argv: List[str], capsys) -> Tuple[int, str]:
    """``enet-seg ARGV`` in-process; returns (exit code, stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


def train_argv(root: Path, out: Path, *extra: str, dataset: str = "camvid") -> List[str]:
    return ["train", "--arch", "enet", "--dataset", dataset, "--data-root", str(root), "--out", str(out),
            "--size", "64x48", "--batch-size", "4", "--threads", "1", "--stages", "decoder", "--epochs", "1",
            *extra]


# ------------------------------------------------------------------------------------ discovery
def test_camvid_pairs_and_train_ids(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=3, n_val=2)
    ds = build_dataset("camvid", root, "train")
    assert len(ds) == 3 and ds.spec is CAMVID
    assert [p[0].name for p in ds.pairs] == [p[1].name for p in ds.pairs]
    assert all(p[1].parent.name == "trainannot" for p in ds.pairs)
    image, label = ds.load(0)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and label.shape == (48, 64)
    raw = cv2.imread(str(ds.pairs[0][1]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, raw)  # CamVid files hold train ids; 11 stays the ignore value
    assert 11 in label
    ds.check()


def test_cityscapes_pairs_map_label_ids_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    ds = build_dataset("cityscapes", root, "train")
    assert len(ds) == 6
    assert {p[0].parent.name for p in ds.pairs} == {"aachen", "bremen"}
    for image_path, label_path in ds.pairs:
        assert label_path.name == image_path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    _, label = ds.load(1)
    ids = cv2.imread(str(ds.pairs[1][1]), cv2.IMREAD_UNCHANGED)
    # road 7 -> 0, building 11 -> 2, sky 23 -> 10, car 26 -> 13, ego vehicle 1 -> 255
    for label_id, train_id in ((7, 0), (11, 2), (23, 10), (26, 13), (1, 255)):
        assert (ids == label_id).any()
        assert (label[ids == label_id] == train_id).all()
    ds.check()
    assert len(build_dataset("cityscapes", root, "val")) == 2


# ------------------------------------------------------------------------------------- bad data
def _names_in(message: str, paths: Sequence[Path]) -> bool:
    return all(p.name in message for p in paths)


def test_missing_label_lists_files(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=8)
    gone = [root / "trainannot" / "train_002.png", root / "trainannot" / "train_005.png"]
    for p in gone:
        p.unlink()
    with pytest.raises(DatasetError, match="missing CamVid label files") as err:
        camvid_pairs(root, "train")
    assert _names_in(str(err.value), gone)


def test_missing_cityscapes_label(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    gone = root / "gtFine" / "train" / "bremen" / "bremen_000003_000019_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(DatasetError, match="missing Cityscapes label files") as err:
        build_dataset("cityscapes", root, "train")
    assert str(gone) in str(err.value)


def test_many_offenders_are_capped(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=8)
    for p in (root / "trainannot").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"and 3 more"):
        camvid_pairs(root, "train")


def test_size_mismatch(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=4)
    bad = root / "train" / "train_001.png"
    write_rgb(bad, np.zeros((40, 64, 3), np.uint8))
    ds = build_dataset("camvid", root, "train")
    with pytest.raises(DatasetError, match="size mismatch") as err:
        ds.check()
    assert "train_001.png" in str(err.value) and "train_000.png" not in str(err.value)
    with pytest.raises(DatasetError, match="size mismatch"):
        ds.load(1)


def test_unknown_label_values(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=4)
    bad = root / "trainannot" / "train_003.png"
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[5:9, 5:9] = 42
    write_label(bad, label)
    with pytest.raises(DatasetError, match="unknown label values for camvid") as err:
        build_dataset("camvid", root, "train").check()
    assert str(bad) in str(err.value) and "42" in str(err.value)


def test_cityscapes_unknown_id(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    bad = sorted((root / "gtFine" / "val").rglob("*.png"))[0]
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 34  # one past the table ("bicycle" is 33)
    write_label(bad, label)
    with pytest.raises(DatasetError, match="unknown label values for cityscapes") as err:
        build_dataset("cityscapes", root, "val").check()
    assert bad.name in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "rgb_label"])
def test_corrupt_files(tmp_path, damage):
    root = make_camvid(tmp_path / "camvid", n_train=4)
    if damage == "rgb_label":
        bad = root / "trainannot" / "train_002.png"
        write_rgb(bad, np.zeros((48, 64, 3), np.uint8))
        expected = "single-channel"
    else:
        bad = root / "train" / "train_002.png"
        data = bad.read_bytes()
        bad.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"not a png" * 50, "empty": b""}[damage])
        expected = "cannot read image"
    with pytest.raises(DatasetError, match="unreadable files") as err:
        build_dataset("camvid", root, "train").check()
    assert str(bad) in str(err.value) and expected in str(err.value)


def test_empty_and_absent_splits(tmp_path):
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    (root / "train" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images in .*train"):
        build_dataset("camvid", root, "train")
    with pytest.raises(DatasetError, match="split folder not found: .*val"):
        build_dataset("camvid", root, "val")
    (tmp_path / "cs" / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no \\*_leftImg8bit.png under"):
        build_dataset("cityscapes", tmp_path / "cs", "train")
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("kitti", root, "train")


def _break(root: Path, kind: str) -> Path:
    """Damage one file of a valid CamVid tree; returns the file the error must name."""
    if kind == "missing_label":
        bad = root / "trainannot" / "train_004.png"
        bad.unlink()
    elif kind == "size":
        bad = root / "valannot" / "val_001.png"
        write_label(bad, np.zeros((48, 60), np.uint8))
        return root / "val" / "val_001.png"  # the message names the image with its size
    elif kind == "values":
        bad = root / "trainannot" / "train_006.png"
        write_label(bad, np.full((48, 64), 200, np.uint8))
    elif kind == "corrupt":
        bad = root / "train" / "train_003.png"
        bad.write_bytes(bad.read_bytes()[:100])
    else:  # empty
        for p in (root / "val").iterdir():
            p.unlink()
        bad = root / "val"
    return bad


@pytest.mark.parametrize("kind", ["missing_label", "size", "values", "corrupt", "empty"])
def test_cli_bad_data_exits_2_before_training(tmp_path, capsys, kind):
    root = make_camvid(tmp_path / "camvid", n_train=8, n_val=4)
    bad = _break(root, kind)
    out = tmp_path / "run"
    code, err = run_cli(train_argv(root, out), capsys)
    assert code == 2, err
    assert err.startswith("enet-seg train: error:") and len(err.strip().splitlines()) == 1
    assert str(bad) in err
    assert not (out / "last.pt").exists() and not (out / "log.csv").exists()  # nothing was trained


# ---------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("input_size,crop", [((64, 48), None), ((96, 72), (48, 40)), ((64, 48), (80, 64))])
def test_augment_sizes_and_alignment(input_size, crop):
    rng = np.random.default_rng(3)
    src_w, src_h = 120, 90  # frames arrive at any size; the augmenter resizes to input_size first
    label = scene(rng, src_w, src_h, [0, 1, 5, 3], thing=8, void=11)
    label[label == 11] = 2  # keep every pixel a real class so the colour test covers the whole frame
    clean = CAMVID_PALETTE[label]
    aug = TrainAugment(input_size, ignore_index=11, scale_range=(0.6, 1.6), crop_size=crop)
    out_w, out_h = crop or input_size
    for i in range(40):
        g = np.random.default_rng([7, i])
        img, lab = aug(clean, label, g)
        assert img.shape == (out_h, out_w, 3) and img.dtype == np.uint8
        assert lab.shape == (out_h, out_w) and lab.dtype == np.uint8
        assert img.flags["C_CONTIGUOUS"] and lab.flags["C_CONTIGUOUS"]
        pad = lab == 11
        assert (img[pad] == 0).all()  # padding: black image, ignore label
        real = ~pad
        # Where the (bilinear) image pixel is a pure palette colour, the (nearest) label must be
        # that colour's class: a half-pixel misalignment between the two resizes shows up here
        # as whole rows/columns of pure colour labelled as the neighbouring class.
        pure = (img[:, :, None, :] == CAMVID_PALETTE[None, None]).all(-1)
        is_pure = pure.any(-1) & real
        assert is_pure.sum() > 0.5 * real.sum()
        colour_class = pure.argmax(-1)
        wrong = is_pure & (colour_class != lab)
        assert not wrong.any(), (i, np.argwhere(wrong)[:5].tolist())


def test_augment_flip_moves_image_and_label_together():
    """At scale 1 with crop = input size the output is the frame itself or its mirror image."""
    rng = np.random.default_rng(5)
    label = scene(rng, 64, 48, [0, 1, 3], thing=8, void=11)
    image = paint(label, CAMVID_PALETTE, rng)
    aug = TrainAugment((64, 48), ignore_index=11, scale_range=(1.0, 1.0))
    flips = 0
    for i in range(40):
        img, lab = aug(image, label, np.random.default_rng(i))
        flipped = np.array_equal(lab, label[:, ::-1])
        assert flipped or np.array_equal(lab, label)
        np.testing.assert_array_equal(img, image[:, ::-1] if flipped else image)
        flips += flipped
    assert 8 <= flips <= 32  # about half the time
    no_flip = TrainAugment((64, 48), ignore_index=11, scale_range=(1.0, 1.0), hflip=False)
    assert all(np.array_equal(no_flip(image, label, np.random.default_rng(i))[1], label) for i in range(10))


def test_augment_padding_and_translation():
    """With scales below 1 the frame is placed at random offsets on an ignore-filled canvas."""
    label = np.full((48, 64), 3, np.uint8)
    image = np.full((48, 64, 3), 200, np.uint8)
    aug = TrainAugment((64, 48), ignore_index=11, scale_range=(0.5, 0.5), hflip=False)
    offsets = set()
    for i in range(20):
        img, lab = aug(image, label, np.random.default_rng(i))
        real = lab == 3
        assert real.sum() == 32 * 24 and (lab[~real] == 11).all()
        assert (img[real] == 200).all() and (img[~real] == 0).all()
        ys, xs = np.nonzero(real)
        offsets.add((int(xs.min()), int(ys.min())))
    assert len(offsets) > 5


def test_augment_is_reproducible_per_generator():
    rng = np.random.default_rng(0)
    label = scene(rng, 64, 48, [0, 1, 3], thing=8, void=11)
    image = paint(label, CAMVID_PALETTE, rng)
    aug = TrainAugment((64, 48), ignore_index=11)
    a = aug(image, label, np.random.default_rng([1, 2, 3]))
    b = aug(image, label, np.random.default_rng([1, 2, 3]))
    c = aug(image, label, np.random.default_rng([1, 2, 4]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_normalize_matches_formula():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    mean, std, scale = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0], 0.5
    out = normalize(image, "bgr", mean, std, scale)
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    expected = (image[..., ::-1].astype(np.float64) - mean) / std * scale
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="channel_order"):
        normalize(image, "hsv", mean, std)


# ------------------------------------------------------------------ batched (device) augmentation
def _batch_of(aug: BatchAugment, images: np.ndarray, labels: np.ndarray, keys: List[List[int]]):
    """Augment a batch (N x H x W x 3 / N x H x W numpy) with one generator per sample."""
    params = [aug.draw(np.random.default_rng(k)) for k in keys]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out, lab = aug(x, torch.from_numpy(labels), params)
    return out.permute(0, 2, 3, 1).numpy(), lab.numpy(), params


@pytest.mark.parametrize("input_size,crop,scales", [((64, 48), None, (0.6, 1.6)), ((64, 48), (48, 40), (0.5, 0.9)),
                                                    ((64, 48), (80, 64), (1.0, 2.0))])
def test_batch_augment_alignment_and_ignore_fill(input_size, crop, scales):
    """Batched version: labels stay on their pixels, the canvas is black with ignore labels."""
    rng = np.random.default_rng(3)
    w, h = input_size
    labels = np.stack([scene(rng, w, h, [0, 1, 5, 3], thing=8, void=2) for _ in range(6)])
    images = CAMVID_PALETTE[labels]
    aug = BatchAugment(input_size, ignore_index=11, scale_range=scales, crop_size=crop)
    out_w, out_h = crop or input_size
    padded = 0
    for rep in range(4):
        img, lab, _ = _batch_of(aug, images, labels, [[7, rep, i] for i in range(6)])
        assert img.shape == (6, out_h, out_w, 3) and lab.shape == (6, out_h, out_w)
        pad = lab == 11
        padded += pad.sum()
        assert (img[pad] == 0).all()
        # A pixel whose bilinear value is a pure palette colour lies among source pixels of that
        # colour only: its nearest label must be that colour's class.
        dist = np.abs(img[..., None, :] - CAMVID_PALETTE[None, None, None].astype(np.float32)).max(-1)
        pure = (dist < 1e-3) & ~pad[..., None]
        is_pure = pure.any(-1)
        assert is_pure.sum() > 0.5 * (~pad).sum()
        wrong = is_pure & (pure.argmax(-1) != lab)
        assert not wrong.any(), np.argwhere(wrong)[:5].tolist()
    assert (padded > 0) == (scales[0] * w < out_w)


def test_batch_augment_matches_per_sample_augment():
    """Same generator -> same draws as TrainAugment; pixels equal up to interpolation rounding."""
    rng = np.random.default_rng(1)
    labels = np.stack([scene(rng, 64, 48, [0, 1, 3], thing=8, void=2) for _ in range(5)])
    images = np.stack([paint(lab, CAMVID_PALETTE, rng) for lab in labels])
    ref = TrainAugment((64, 48), ignore_index=11, scale_range=(0.6, 1.6), crop_size=(56, 40))
    aug = BatchAugment((64, 48), ignore_index=11, scale_range=(0.6, 1.6), crop_size=(56, 40))
    keys = [[0, 0, 3, i] for i in range(5)]
    img, lab, _ = _batch_of(aug, images, labels, keys)
    for i in range(5):
        r_img, r_lab = ref(images[i], labels[i], np.random.default_rng(keys[i]))
        np.testing.assert_array_equal(lab[i] == 11, r_lab == 11)  # the same canvas padding, exactly
        assert (lab[i] == r_lab).mean() > 0.97  # OpenCV 5's NEAREST_EXACT differs at exact pixel-border ties
        assert np.abs(img[i] - r_img).mean() < 1.0 and np.abs(img[i] - r_img).max() <= 1.0


def test_batch_augment_is_deterministic_per_seed():
    rng = np.random.default_rng(0)
    labels = np.stack([scene(rng, 64, 48, [0, 1, 3], thing=8, void=2) for _ in range(4)])
    images = np.stack([paint(lab, CAMVID_PALETTE, rng) for lab in labels])
    aug = BatchAugment((64, 48), ignore_index=11, color_jitter=0.3)
    a = _batch_of(aug, images, labels, [[1, 2, i] for i in range(4)])
    b = _batch_of(aug, images, labels, [[1, 2, i] for i in range(4)])
    c = _batch_of(aug, images, labels, [[1, 3, i] for i in range(4)])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # Colour jitter changes colours only: the geometry (labels) is that of the same draws without it.
    plain = BatchAugment((64, 48), ignore_index=11)
    params = [plain.draw(np.random.default_rng([1, 2, i])) for i in range(4)]
    assert [(p.sw, p.x0, p.y0, p.flip) for p in params] == [(p.sw, p.x0, p.y0, p.flip) for p in a[2]]
    assert all(p.jitter != (1.0, 1.0, 1.0) and all(0.7 <= f <= 1.3 for f in p.jitter) for p in a[2])
    assert a[0].min() >= 0 and a[0].max() <= 255 and (a[0][a[1] == 11] == 0).all()


def test_frame_store_decodes_once_at_the_input_size(tmp_path):
    root = make_camvid(tmp_path / "camvid", n_train=3, n_val=1, size=(40, 30))
    ds = build_dataset("camvid", root, "train")
    store = FrameStore(ds, (64, 48), torch.device("cpu"))
    assert store.images.shape == (3, 3, 48, 64) and store.images.dtype == torch.uint8
    assert store.labels.shape == (3, 48, 64) and store.labels.dtype == torch.uint8
    image, label = ds.load(1)
    np.testing.assert_array_equal(store.images[1].permute(1, 2, 0).numpy(),
                                  cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(store.labels[1].numpy(),
                                  cv2.resize(label, (64, 48), interpolation=cv2.INTER_NEAREST_EXACT))


def test_jpeg_images_with_png_labels(tmp_path):
    """The GPU run's CamVid tar holds .jpg frames with .png labels."""
    root = make_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    for p in list((root / "train").iterdir()):
        cv2.imwrite(str(p.with_suffix(".jpg")), cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        p.unlink()
    pairs = camvid_pairs(root, "train")
    assert [(a.suffix, b.suffix) for a, b in pairs] == [(".jpg", ".png")] * 2
    build_dataset("camvid", root, "train").check()


def test_map_decoding_keeps_order_and_raises():
    """Threaded decoding yields results in the items' order and passes a worker's error on."""
    import time as _time

    from enet_seg_ros.data.datasets import map_decoding

    def slow_square(i):
        _time.sleep(0.002 * (7 - i % 7))  # later items finish first
        return i * i

    assert list(map_decoding(slow_square, list(range(30)), max_workers=4)) == [i * i for i in range(30)]
    assert list(map_decoding(slow_square, [3], max_workers=4)) == [9]
    assert list(map_decoding(slow_square, [], max_workers=4)) == []

    def bad(i):
        if i == 5:
            raise DatasetError("frame 5 is broken")
        return i

    with pytest.raises(DatasetError, match="frame 5"):
        list(map_decoding(bad, list(range(10)), max_workers=3))


def test_calibration_frames_are_resized_like_the_training_frames(tmp_path):
    """calibrate fits offsets on the pairs the trainer saw: same image and label resize (NEAREST_EXACT)."""
    from enet_seg_ros.train.calibrate import _frames
    from enet_seg_ros.weights import Normalization

    root = make_camvid(tmp_path / "camvid", n_train=3, n_val=1, size=(40, 30))
    ds = build_dataset("camvid", root, "train")
    store = FrameStore(ds, (64, 48), torch.device("cpu"))
    labels = [label for _, label in _frames(ds, (64, 48), Normalization())]
    assert len(labels) == 3
    for i, label in enumerate(labels):
        np.testing.assert_array_equal(label, store.labels[i].numpy())
    # The two interpolations do differ on these frames, so the check above can fail.
    _, raw = ds.load(0)
    assert not np.array_equal(cv2.resize(raw, (64, 48), interpolation=cv2.INTER_NEAREST),
                              cv2.resize(raw, (64, 48), interpolation=cv2.INTER_NEAREST_EXACT))
