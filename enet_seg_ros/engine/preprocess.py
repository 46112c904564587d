"""Camera frame <-> network input geometry, input checks and label mapping.

A :class:`Geometry` describes how a camera frame of ``input_size`` becomes the network input
of ``model_size`` under a resize policy, and maps results back exactly:

- ``stretch``: resize to the model size (aspect ratio not kept).
- ``letterbox``: resize to fit inside the model size keeping the aspect ratio, pad the rest
  with the normalisation mean colour (zero after normalisation); padded outputs are dropped.
- ``center_crop``: resize to cover the model size keeping the aspect ratio, crop the centre;
  frame pixels outside the crop have no prediction and get :data:`UNKNOWN`.

All mappings use OpenCV's pixel-centre conventions: continuous coordinates with pixel ``i``
covering ``[i, i + 1)`` map as ``x_model = x_input * scale_x + offset_x``. Normalisation
(mean/std/scale, channel order) happens inside the backend graph, so the host only resizes
uint8 images.

:class:`Preprocess` is the one statement of a model's input transform, built from its card
(as torchvision's ``Weights.transforms``): the engine graph, the benchmark baseline and the
trainer's validation take mean, std, scale, channel order and padding colour from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..weights import RESIZE_POLICIES, UNKNOWN_LABEL

POLICIES = RESIZE_POLICIES  # the model card's resize_policy values
UNKNOWN = UNKNOWN_LABEL  # label value for frame pixels the network did not see (center_crop borders)
MAX_PIXELS = 1 << 28  # 268 M pixels (16384 x 16384): beyond this a frame is surely an error


@dataclass(frozen=True)
class Geometry:
    """How one frame size maps to the model input (see module docstring)."""

    policy: str
    input_size: Tuple[int, int]  # (width, height) of the camera frame
    model_size: Tuple[int, int]  # (width, height) of the network input
    resized_size: Tuple[int, int]  # frame size after the resize step, before pad / crop
    paste: Tuple[int, int]  # letterbox: (x, y) of the resized frame inside the model input
    crop: Tuple[int, int]  # center_crop: (x, y) of the model window inside the resized frame

    @property
    def scale(self) -> Tuple[float, float]:
        """(scale_x, scale_y): model pixels per frame pixel."""
        return (self.resized_size[0] / self.input_size[0], self.resized_size[1] / self.input_size[1])

    @property
    def offset(self) -> Tuple[float, float]:
        """(offset_x, offset_y) in model pixels: ``x_model = x_input * scale_x + offset_x``."""
        return (float(self.paste[0] - self.crop[0]), float(self.paste[1] - self.crop[1]))

    @property
    def is_identity(self) -> bool:
        """True when the frame is fed to the network unchanged."""
        return self.input_size == self.model_size and self.resized_size == self.model_size

    def to_model(self, x: float, y: float) -> Tuple[float, float]:
        """Frame coordinates (continuous, pixel edges at integers) to model coordinates."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        return x * sx + ox, y * sy + oy

    def to_input(self, x: float, y: float) -> Tuple[float, float]:
        """Model coordinates to frame coordinates (inverse of :meth:`to_model`)."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        return (x - ox) / sx, (y - oy) / sy

    def model_intrinsics(self, k: Sequence[Sequence[float]]) -> np.ndarray:
        """The 3x3 camera matrix of the model-resolution image given the frame's ``k``.

        ROS ``CameraInfo`` puts pixel centres at integer coordinates, hence the +-0.5.
        """
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        (sx, sy), (ox, oy) = self.scale, self.offset
        out = k.copy()
        out[0, 0], out[0, 1] = k[0, 0] * sx, k[0, 1] * sx
        out[1, 1] = k[1, 1] * sy
        out[0, 2] = (k[0, 2] + 0.5) * sx + ox - 0.5
        out[1, 2] = (k[1, 2] + 0.5) * sy + oy - 0.5
        return out


def plan(input_size: Tuple[int, int], model_size: Tuple[int, int], policy: str = "stretch") -> Geometry:
    """The :class:`Geometry` for a frame of ``input_size`` and a network of ``model_size``."""
    if policy not in POLICIES:
        raise ValueError("unknown resize policy {!r}; expected one of {}".format(policy, POLICIES))
    (w, h), (mw, mh) = input_size, model_size
    if policy == "stretch":
        return Geometry(policy, (w, h), (mw, mh), (mw, mh), (0, 0), (0, 0))
    if policy == "letterbox":
        s = min(mw / w, mh / h)
        rw, rh = min(mw, max(1, int(round(w * s)))), min(mh, max(1, int(round(h * s))))
        return Geometry(policy, (w, h), (mw, mh), (rw, rh), ((mw - rw) // 2, (mh - rh) // 2), (0, 0))
    s = max(mw / w, mh / h)
    rw, rh = max(mw, int(round(w * s))), max(mh, int(round(h * s)))
    return Geometry(policy, (w, h), (mw, mh), (rw, rh), (0, 0), ((rw - mw) // 2, (rh - mh) // 2))


@dataclass(frozen=True)
class Preprocess:
    """A model's input transform: frame -> model size (``resize_policy``) -> ``(x[order] - mean) / std * scale``.

    Build it with :meth:`from_card`; ``x`` is the 0..255 image in the network's
    ``channel_order``. Independent of rclpy and of any backend, so every layer may use it.
    """

    input_size: Tuple[int, int]  # (width, height) of the network input
    channel_order: str = "rgb"
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (255.0, 255.0, 255.0)
    scale: float = 1.0
    resize_policy: str = "stretch"

    @classmethod
    def from_card(cls, card) -> "Preprocess":
        """The transform a :class:`~enet_seg_ros.weights.ModelCard` prescribes."""
        norm = card.normalization
        return cls(input_size=(int(card.input_size[0]), int(card.input_size[1])),
                   channel_order=check_channel_order(norm.channel_order),
                   mean=tuple(float(m) for m in norm.mean), std=tuple(float(s) for s in norm.std),
                   scale=float(norm.scale), resize_policy=card.resize_policy)

    @property
    def factor(self) -> np.ndarray:
        """Per-channel ``scale / std`` (divided in float64, stored float32), so that ``y = (x - mean) * factor``."""
        return (np.float64(self.scale) / np.asarray(self.std, np.float64)).astype(np.float32)

    @property
    def fill(self) -> Tuple[int, int, int]:
        """The letterbox padding colour (normalises to ~zero), in the network's channel order."""
        return pad_colour(self.mean)

    def swap_rb(self, channel_order: str) -> bool:
        """Whether frames in ``channel_order`` must be swapped to the network's order."""
        return check_channel_order(channel_order) != self.channel_order

    def to_model_input(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """An HxWx3 uint8 frame (checked: :func:`check_image`) resized / padded / cropped to the model
        (uint8, network channel order)."""
        check_image(image)
        geometry = plan((image.shape[1], image.shape[0]), self.input_size, self.resize_policy)
        return to_model_input(image, geometry, self.swap_rb(channel_order), self.fill)

    def normalize(self, model_image: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 in the network's channel order -> float32 3xHxW network input."""
        check_image(np.ascontiguousarray(model_image), "model image")
        x = (model_image.astype(np.float32) - np.asarray(self.mean, np.float32)) * self.factor
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """A camera frame as the float32 3xHxW tensor the network takes."""
        return self.normalize(self.to_model_input(image, channel_order))


def pad_colour(mean: Sequence[float]) -> Tuple[int, int, int]:
    """The uint8 colour that normalises to ~zero (letterbox padding), in the network's channel order."""
    return tuple(int(np.clip(round(float(m)), 0, 255)) for m in mean)  # type: ignore[return-value]


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate a camera frame: HxWx3 uint8, non-empty, C-contiguous. Returns it unchanged."""
    if not isinstance(image, np.ndarray):
        raise ValueError("{} must be a numpy array (H, W, 3) uint8, got {}".format(name, type(image).__name__))
    if image.dtype != np.uint8:
        raise ValueError("{} must have dtype uint8, got {} (convert 0..255 images with .astype(np.uint8))".format(
            name, image.dtype))
    if image.ndim != 3:
        raise ValueError("{} must have shape (H, W, 3), got {}".format(name, image.shape))
    if image.shape[2] != 3:
        raise ValueError("{} must have 3 colour channels, got {} (shape {})".format(name, image.shape[2], image.shape))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("{} is empty (shape {})".format(name, image.shape))
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ValueError("{} has {} pixels, more than the supported {}".format(
            name, image.shape[0] * image.shape[1], MAX_PIXELS))
    if not image.flags.c_contiguous:
        raise ValueError("{} must be C-contiguous (got a strided view, e.g. a crop or [..., ::-1]); "
                         "pass np.ascontiguousarray(image)".format(name))
    return image


def check_channel_order(channel_order: str) -> str:
    """Return ``channel_order`` lower-cased if it is ``rgb`` or ``bgr``."""
    order = str(channel_order).lower()
    if order not in ("rgb", "bgr"):
        raise ValueError("channel_order must be 'rgb' or 'bgr', got {!r}".format(channel_order))
    return order


def to_model_input(image: np.ndarray, geometry: Geometry, swap_rb: bool,
                   fill: Tuple[int, int, int] = (0, 0, 0), out: Optional[np.ndarray] = None) -> np.ndarray:
    """Resize / pad / crop a checked frame to the model input (uint8, model H x W x 3).

    ``swap_rb`` converts between RGB and BGR (done after downscaling: fewer pixels). ``fill``
    is the letterbox padding colour in the *output* channel order. ``out`` may be a
    preallocated (model H, model W, 3) uint8 array (e.g. one slot of a batch) to write into.
    """
    mw, mh = geometry.model_size
    rw, rh = geometry.resized_size
    if (rw, rh) == geometry.input_size:
        resized = image
    else:
        shrink = min(geometry.input_size[0] / rw, geometry.input_size[1] / rh)
        # INTER_AREA averages the source pixels under each output pixel: no aliasing on big
        # downscales (4K camera -> 480x360); linear is faster and exact enough otherwise.
        interp = cv2.INTER_AREA if shrink >= 2.0 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (rw, rh), interpolation=interp)
    if geometry.policy == "letterbox":
        canvas = out if out is not None else np.empty((mh, mw, 3), np.uint8)
        canvas[...] = fill
        px, py = geometry.paste
        canvas[py:py + rh, px:px + rw] = resized[..., ::-1] if swap_rb else resized
        return canvas
    if geometry.policy == "center_crop":
        cx, cy = geometry.crop
        resized = resized[cy:cy + mh, cx:cx + mw]
    if swap_rb:
        resized = cv2.cvtColor(np.ascontiguousarray(resized), cv2.COLOR_RGB2BGR)
    if out is not None:
        out[...] = resized
        return out
    return np.ascontiguousarray(resized)


def to_input_resolution(model_map: np.ndarray, geometry: Geometry, fill: float) -> np.ndarray:
    """Map a (model H, model W) label or confidence map back onto the frame, nearest neighbour.

    ``INTER_NEAREST_EXACT`` samples at pixel centres, so the mapping is the exact inverse of
    the forward resize (no half-pixel shift). Frame pixels that were cropped away get ``fill``.
    """
    if geometry.is_identity:
        return model_map
    w, h = geometry.input_size
    rw, rh = geometry.resized_size
    if geometry.policy == "letterbox":
        px, py = geometry.paste
        model_map = model_map[py:py + rh, px:px + rw]
    elif geometry.policy == "center_crop":
        mw, mh = geometry.model_size
        canvas = np.full((rh, rw), fill, dtype=model_map.dtype)
        cx, cy = geometry.crop
        canvas[cy:cy + mh, cx:cx + mw] = model_map
        model_map = canvas
    if (rw, rh) == (w, h):
        return np.ascontiguousarray(model_map)
    return cv2.resize(np.ascontiguousarray(model_map), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def logits_to_input_resolution(logits: np.ndarray, geometry: Geometry) -> Tuple[np.ndarray, np.ndarray]:
    """Bilinear upsampling of (C, model H, model W) logits to the frame, then argmax.

    Used only when a model card asks for ``label_upsampling: bilinear``. Returns
    ``(labels uint8, max softmax probability float32)`` at the frame's resolution.
    """
    w, h = geometry.input_size
    rw, rh = geometry.resized_size
    maps = logits.transpose(1, 2, 0).astype(np.float32)  # H, W, C
    x0, y0, x1, y1 = 0, 0, w, h
    if geometry.policy == "letterbox":
        px, py = geometry.paste
        maps = maps[py:py + rh, px:px + rw]
    elif geometry.policy == "center_crop":
        # The model window covers this part of the frame (uniform scale, so one rectangle).
        (sx, sy), (cx, cy) = geometry.scale, geometry.crop
        mw, mh = geometry.model_size
        x0, y0 = int(round(cx / sx)), int(round(cy / sy))
        x1, y1 = min(w, int(round((cx + mw) / sx))), min(h, int(round((cy + mh) / sy)))
    window = _resize_channels(np.ascontiguousarray(maps), (x1 - x0, y1 - y0))
    peak = window.max(axis=2, keepdims=True)
    labels = np.full((h, w), UNKNOWN, np.uint8)
    conf = np.zeros((h, w), np.float32)
    labels[y0:y1, x0:x1] = window.argmax(axis=2)
    conf[y0:y1, x0:x1] = 1.0 / np.exp(window - peak).sum(axis=2)
    return labels, conf


def _resize_channels(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, C) float map; cv2 handles at most 512 channels at once."""
    if maps.shape[2] <= 512:
        return cv2.resize(maps, size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], -1)
    return np.stack([cv2.resize(np.ascontiguousarray(maps[..., c]), size, interpolation=cv2.INTER_LINEAR)
                     for c in range(maps.shape[2])], axis=2)
