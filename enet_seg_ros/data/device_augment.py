"""Training data decoded once into uint8 tensors, and batched augmentation on the training device.

:class:`FrameStore` decodes a split once (images ``N x 3 x H x W`` and labels ``N x H x W``, uint8,
brought to the model input size) and keeps it in memory, on the GPU when training there, so no
step decodes or copies a file. :class:`BatchAugment` does the random scale, crop/translation,
horizontal flip and optional colour jitter of a whole batch on that device.

Semantics are those of :class:`~enet_seg_ros.data.transforms.TrainAugment` (the per-sample
numpy/OpenCV version), and its random draws are the same, in the same order, from the same
per-sample generator: only the pixel arithmetic moved to torch. The parameters are drawn on the
host with numpy, so a seed gives the same augmentation on CPU and GPU.

Plain torch ops rather than a library (kornia): one ``grid_sample`` does scale + crop + pad +
flip with OpenCV's pixel-centre convention, labels are gathered with OpenCV's NEAREST_EXACT
indices (exact integer arithmetic, no float rounding ties), and nothing has to travel as extra
wheels to a GPU machine that has only PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import SegmentationDataset, map_decoding
from .transforms import LUMA_RGB, resize_pair


class FrameStore:
    """A dataset split decoded once: ``images`` (N, 3, H, W) and ``labels`` (N, H, W), uint8, on ``device``.

    Frames are brought to ``size`` (the model input size) while decoding; labels hold train ids.
    CamVid train at 480x360 takes 190 MB + 63 MB.
    """

    def __init__(self, dataset: SegmentationDataset, size: Tuple[int, int], device: torch.device,
                 indices: Optional[Sequence[int]] = None) -> None:
        idx = list(range(len(dataset))) if indices is None else list(indices)
        w, h = int(size[0]), int(size[1])
        images = torch.empty((len(idx), 3, h, w), dtype=torch.uint8)
        labels = torch.empty((len(idx), h, w), dtype=torch.uint8)
        # Decoded on a few threads (OpenCV releases the GIL), written in order.
        for k, (image, label) in enumerate(map_decoding(lambda i: resize_pair(*dataset.load(i), (w, h)), idx)):
            images[k] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            labels[k] = torch.from_numpy(label)
        self.indices = idx
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.size = (w, h)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class SampleParams:
    """One sample's augmentation: scaled size, canvas offset, crop origin, flip, colour factors."""

    sw: int
    sh: int
    ox: int
    oy: int
    x0: int
    y0: int
    flip: bool
    jitter: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # brightness, contrast, saturation


class BatchAugment:
    """Random scale, crop (or translation on an ignore-filled canvas), flip and colour jitter of a batch.

    Args:
        input_size: (W, H) the frames are stored at (the model input size).
        ignore_index: label written where the crop leaves the scaled image.
        scale_range: random scale factor of the frame, relative to ``input_size``.
        crop_size: (W, H) of the output (default ``input_size``).
        hflip: random horizontal flips (p = 0.5).
        color_jitter: ``j`` > 0 draws brightness, contrast and saturation factors in ``[1-j, 1+j]``.
    """

    def __init__(self, input_size: Tuple[int, int], ignore_index: int, scale_range: Tuple[float, float] = (0.75, 1.5),
                 crop_size: Optional[Tuple[int, int]] = None, hflip: bool = True, color_jitter: float = 0.0) -> None:
        self.input_w, self.input_h = int(input_size[0]), int(input_size[1])
        crop_size = crop_size or input_size
        self.crop_w, self.crop_h = int(crop_size[0]), int(crop_size[1])
        self.ignore_index = int(ignore_index)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.color_jitter = float(color_jitter)

    def draw(self, rng: np.random.Generator) -> SampleParams:
        """One sample's parameters; the draws and their order are TrainAugment's (same rng, same result)."""
        s = rng.uniform(*self.scale_range)
        sw, sh = max(1, int(round(self.input_w * s))), max(1, int(round(self.input_h * s)))
        canvas_w, canvas_h = max(sw, self.crop_w), max(sh, self.crop_h)
        ox = oy = 0
        if (canvas_w, canvas_h) != (sw, sh):
            ox, oy = int(rng.integers(0, canvas_w - sw + 1)), int(rng.integers(0, canvas_h - sh + 1))
        x0 = int(rng.integers(0, canvas_w - self.crop_w + 1))
        y0 = int(rng.integers(0, canvas_h - self.crop_h + 1))
        flip = bool(self.hflip and rng.random() < 0.5)
        jitter = (1.0, 1.0, 1.0)
        if self.color_jitter > 0:
            j = self.color_jitter
            jitter = tuple(float(v) for v in rng.uniform(1 - j, 1 + j, size=3))
        return SampleParams(sw, sh, ox, oy, x0, y0, flip, jitter)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 params: List[SampleParams]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augment uint8 ``images`` (B, 3, H, W) and ``labels`` (B, H, W) with one ``params`` per sample.

        Returns float32 images (B, 3, crop_h, crop_w) in 0..255 and int64 labels (B, crop_h, crop_w).
        """
        dev = images.device
        b = images.shape[0]
        if len(params) != b:
            raise ValueError("{} parameter sets for a batch of {}".format(len(params), b))
        h_in, w_in = images.shape[-2:]
        if (w_in, h_in) != (self.input_w, self.input_h):
            raise ValueError("frames are {}x{}, expected the input size {}x{}".format(
                w_in, h_in, self.input_w, self.input_h))
        p = {k: torch.tensor([getattr(q, k) for q in params], dtype=torch.float64)
             for k in ("sw", "sh", "ox", "oy", "x0", "y0")}
        flip = torch.tensor([q.flip for q in params])
        u = torch.arange(self.crop_w, dtype=torch.float64)
        v = torch.arange(self.crop_h, dtype=torch.float64)
        # Output column u shows canvas column x0 + u (x0 + crop_w - 1 - u when flipped); the
        # scaled image sits on the canvas at (ox, oy).
        u = torch.where(flip[:, None], self.crop_w - 1 - u[None], u[None])
        sx = p["x0"][:, None] + u - p["ox"][:, None]  # column in the scaled image (B, crop_w)
        sy = p["y0"][:, None] + v[None] - p["oy"][:, None]  # row in the scaled image (B, crop_h)
        valid_x = (sx >= 0) & (sx < p["sw"][:, None])
        valid_y = (sy >= 0) & (sy < p["sh"][:, None])
        # Pixel centres (OpenCV / align_corners=False): source = (sx + 0.5) * W / sw - 0.5, i.e.
        # grid_sample's normalised coordinate (2 sx + 1) / sw - 1.
        # Per-row / per-column values are computed on the host (float64, small); the full
        # (B, H, W) grid and mask are broadcast on the device (no host-built 30 MB grid to copy).
        gx = ((2 * sx + 1) / p["sw"][:, None] - 1).to(dev, torch.float32)
        gy = ((2 * sy + 1) / p["sh"][:, None] - 1).to(dev, torch.float32)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        ix = _nearest_exact_index(sx, p["sw"], self.input_w)
        iy = _nearest_exact_index(sy, p["sh"], self.input_h)
        bidx = torch.arange(b)[:, None, None]
        lab = labels[bidx.to(dev), iy[:, :, None].to(dev), ix[:, None, :].to(dev)].long()
        valid = valid_y.to(dev)[:, :, None] & valid_x.to(dev)[:, None, :]
        lab = torch.where(valid, lab, torch.full_like(lab, self.ignore_index))
        out = out * valid[:, None].to(out.dtype)
        if self.color_jitter > 0:
            out = _jitter(out, torch.tensor([q.jitter for q in params], dtype=torch.float32, device=dev), valid)
        return out, lab


def _nearest_exact_index(pos: torch.Tensor, scaled: torch.Tensor, size: int) -> torch.Tensor:
    """Source index of a nearest resize from ``size`` to ``scaled`` pixels at ``pos`` (pixel centres).

    ``floor((pos + 0.5) * size / scaled)``: the source pixel under the output pixel's centre, the
    rule of OpenCV's INTER_NEAREST_EXACT (OpenCV 5's fixed-point version differs from it only
    where a centre falls exactly on a pixel border).
    """
    idx = torch.floor((pos + 0.5) * size / scaled[:, None])
    return idx.clamp(0, size - 1).long()


def _jitter(x: torch.Tensor, factors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast (about the image's mean grey) and saturation (about each pixel's grey)."""
    bright, contrast, sat = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    r, g, b = LUMA_RGB
    x = x * bright
    grey = (r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3])
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = (r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3])
    x = ((x - grey) * sat + grey).clamp(0, 255)
    return x * valid[:, None].to(x.dtype)  # padding stays black


def normalize_batch(x: torch.Tensor, channel_order: str, mean: Sequence[float], std: Sequence[float],
                    scale: float = 1.0) -> torch.Tensor:
    """Float RGB (B, 3, H, W) in 0..255 -> ``(x[order] - mean) / std * scale`` (as ``transforms.normalize``)."""
    if channel_order == "bgr":
        x = x.flip(1)
    elif channel_order != "rgb":
        raise ValueError("channel_order must be rgb or bgr, got {!r}".format(channel_order))
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) * (float(scale) / s)
