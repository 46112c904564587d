"""Lighting shifts (eval-dir --lighting) and their agreement with the training colour jitter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from enet_seg_ros.data.device_augment import _jitter
from enet_seg_ros.data.transforms import LUMA_RGB, shift_lighting


@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.asarray(LUMA_RGB)


def test_factor_one_is_the_image(image):
    for kind in ("brightness", "contrast", "saturation"):
        assert shift_lighting(image, kind, 1.0) is image


def test_each_kind_does_what_it_says(image):
    dark = shift_lighting(image, "brightness", 0.5)
    assert np.abs(dark.astype(int) - np.rint(image * 0.5)).max() == 0
    assert shift_lighting(image, "brightness", 3.0).max() == 255  # clipped, not wrapped
    flat = shift_lighting(image, "contrast", 0.0)
    assert np.ptp(flat) == 0 and abs(int(flat[0, 0, 0]) - _grey(image).mean()) <= 0.5  # all at the mean grey
    low = shift_lighting(image, "contrast", 0.5)
    assert low.std() < 0.55 * image.std() and abs(_grey(low).mean() - _grey(image).mean()) < 0.5
    grey = shift_lighting(image, "saturation", 0.0)
    assert np.abs(grey.astype(int) - np.rint(_grey(image))[..., None]).max() <= 0  # every pixel its own grey
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_channel_order_only_reorders(image):
    for kind in ("contrast", "saturation"):
        rgb = shift_lighting(image, kind, 0.6, "rgb")
        bgr = shift_lighting(image[..., ::-1].copy(), kind, 0.6, "bgr")[..., ::-1]
        assert np.abs(rgb.astype(int) - bgr).max() <= 1  # float sums in another order


@pytest.mark.parametrize("kind, index", [("brightness", 0), ("contrast", 1), ("saturation", 2)])
def test_same_change_as_the_training_colour_jitter(image, kind, index):
    factors = torch.ones(1, 3)
    factors[0, index] = 0.7
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    jittered = _jitter(x, factors, torch.ones(1, 24, 32, dtype=torch.bool))[0].permute(1, 2, 0).numpy()
    assert np.abs(shift_lighting(image, kind, 0.7) - jittered).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("kind, factor, image_shape, dtype", [
    ("gamma", 0.5, (4, 4, 3), np.uint8), ("contrast", -1.0, (4, 4, 3), np.uint8),
    ("contrast", float("nan"), (4, 4, 3), np.uint8), ("contrast", 0.5, (4, 4), np.uint8),
    ("contrast", 0.5, (4, 4, 3), np.float32)])
def test_bad_input_is_named(kind, factor, image_shape, dtype):
    with pytest.raises(ValueError, match="lighting"):
        shift_lighting(np.zeros(image_shape, dtype), kind, factor)


def test_evaluate_folder_refuses_a_bad_shift_before_reading_anything(tmp_path):
    from enet_seg_ros.evaluate.api import RunOptions, evaluate_folder

    with pytest.raises(ValueError, match="lighting kind"):
        evaluate_folder("camvid", tmp_path / "missing", tmp_path / "missing", tmp_path / "out",
                        run=RunOptions(lighting=("gamma", 0.5)))
    assert not (tmp_path / "out").exists()
