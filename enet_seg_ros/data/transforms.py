"""Training augmentation and input normalisation (numpy + OpenCV, vectorised)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np


def normalize(image: np.ndarray, channel_order: str, mean: Sequence[float], std: Sequence[float],
              scale: float = 1.0) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW: ``(x[order] - mean) / std * scale``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        # A float 0..1 or 16-bit frame would be normalised as if it were 0..255 without a word.
        raise ValueError("normalize takes an HxWx3 uint8 image (0..255), got {}".format(
            "{} {}".format(image.shape, image.dtype) if isinstance(image, np.ndarray) else type(image).__name__))
    if channel_order == "bgr":
        image = image[..., ::-1]
    elif channel_order != "rgb":
        raise ValueError("channel_order must be rgb or bgr, got {!r}".format(channel_order))
    factor = np.float32(scale) / np.asarray(std, dtype=np.float32)
    offset = np.asarray(mean, dtype=np.float32) * factor
    out = image.astype(np.float32) * factor - offset
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# Grey of an RGB pixel (ITU-R BT.601 luma): the centre of contrast and saturation changes, in the
# training colour jitter (device_augment) and in the evaluation's lighting shifts alike.
LUMA_RGB = (0.299, 0.587, 0.114)
LIGHTING_KINDS = ("brightness", "contrast", "saturation")


def check_lighting(kind: str, factor: float) -> Tuple[str, float]:
    """``(kind, factor)`` of a lighting shift, checked: ValueError naming what is wrong."""
    if kind not in LIGHTING_KINDS:
        raise ValueError("lighting kind must be one of {}, got {!r}".format(", ".join(LIGHTING_KINDS), kind))
    try:
        value = float(factor)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise ValueError("lighting factor must be a finite number >= 0, got {!r}".format(factor))
    return kind, value


def shift_lighting(image: np.ndarray, kind: str, factor: float, channel_order: str = "rgb") -> np.ndarray:
    """``image`` (uint8 HxWx3) under other light, as the training colour jitter changes it.

    ``brightness`` multiplies every value; ``contrast`` scales the distance of every value from the
    image's mean grey; ``saturation`` scales each pixel's distance from its own grey. The result is
    clipped to 0..255 and rounded. A factor of 1 returns the image unchanged.
    """
    kind, factor = check_lighting(kind, factor)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("lighting shifts take a uint8 HxWx3 image, got {} {}".format(image.dtype, image.shape))
    if channel_order not in ("rgb", "bgr"):
        raise ValueError("channel_order must be rgb or bgr, got {!r}".format(channel_order))
    if factor == 1:
        return image
    x = image.astype(np.float32)
    luma = np.asarray(LUMA_RGB if channel_order == "rgb" else LUMA_RGB[::-1], dtype=np.float32)
    if kind == "brightness":
        x *= np.float32(factor)
    elif kind == "contrast":
        mean = float((x @ luma).mean())
        x = (x - mean) * np.float32(factor) + mean
    else:
        grey = (x @ luma)[..., None]
        x = (x - grey) * np.float32(factor) + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def resize_pair(image: np.ndarray, label: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Bring an (image, label) pair to ``size`` (W, H): image bilinear, labels NEAREST_EXACT.

    NEAREST_EXACT samples pixel centres like INTER_LINEAR does; plain INTER_NEAREST is off by half
    a source pixel, which shifts labels against the image by up to one output pixel. Every place
    that resizes training or calibration pairs goes through here so that they agree.
    """
    w, h = int(size[0]), int(size[1])
    if image.shape[1] == w and image.shape[0] == h and label.shape[:2] == image.shape[:2]:
        return image, label
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))


class TrainAugment:
    """Random scale, crop/translation and horizontal flip of an (image, label) pair.

    Frames are first brought to the model's ``input_size`` (the inference resolution), then
    scaled by a random factor from ``scale_range`` and cropped to ``crop_size`` (default: the
    input size), so objects appear at the scale the network sees at inference. When the scaled
    image is smaller than the crop it is placed at a random offset on a canvas (image zero,
    label ``ignore_index``), which gives the small translations of the papers' recipes.
    """

    def __init__(self, input_size: Tuple[int, int], ignore_index: int, scale_range: Tuple[float, float] = (0.75, 1.5),
                 hflip: bool = True, crop_size: Optional[Tuple[int, int]] = None) -> None:
        self.input_w, self.input_h = int(input_size[0]), int(input_size[1])
        crop_size = crop_size or input_size
        self.crop_w, self.crop_h = int(crop_size[0]), int(crop_size[1])
        self.ignore_index = ignore_index
        self.scale_range = scale_range
        self.hflip = hflip

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Augment one pair with ``rng`` (a per-sample generator: reproducible, resumable)."""
        s = rng.uniform(*self.scale_range)
        sw, sh = max(1, int(round(self.input_w * s))), max(1, int(round(self.input_h * s)))
        image, label = resize_pair(image, label, (sw, sh))
        canvas_w, canvas_h = max(sw, self.crop_w), max(sh, self.crop_h)
        if (canvas_w, canvas_h) != (sw, sh):
            ox, oy = rng.integers(0, canvas_w - sw + 1), rng.integers(0, canvas_h - sh + 1)
            img_c = np.zeros((canvas_h, canvas_w, 3), np.uint8)
            lab_c = np.full((canvas_h, canvas_w), self.ignore_index, np.uint8)
            img_c[oy:oy + sh, ox:ox + sw] = image
            lab_c[oy:oy + sh, ox:ox + sw] = label
            image, label = img_c, lab_c
        x0 = rng.integers(0, canvas_w - self.crop_w + 1)
        y0 = rng.integers(0, canvas_h - self.crop_h + 1)
        image = image[y0:y0 + self.crop_h, x0:x0 + self.crop_w]
        label = label[y0:y0 + self.crop_h, x0:x0 + self.crop_w]
        if self.hflip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)
