"""Synthetic road-like camera frames (with CamVid labels) for the demo and the tests.

The repository ships no third-party images; :func:`render_scene` draws a plausible street
(sky, buildings, trees, poles, signs, fence, road with lane markings, sidewalk, cars, a
pedestrian and a cyclist) from plain shapes, deterministic per frame index, with motion
from frame to frame so a video of it looks like driving. Each frame comes with its
ground-truth label map in CamVid train ids.
"""
from __future__ import annotations

import functools
from typing import Tuple

import cv2
import numpy as np

# CamVid train ids (enet_seg_ros.data.labels.CAMVID order).
SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)


def render_scene(index: int, width: int = 640, height: int = 360, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of a synthetic drive: ``(rgb HxWx3 uint8, labels HxW uint8)``."""
    if width < 32 or height < 32:
        raise ValueError("synthetic scenes need at least 32x32 pixels, got {}x{}".format(width, height))
    rng = np.random.default_rng(seed)  # scene layout: fixed per seed
    noise_rng = np.random.default_rng((seed, index))  # sensor noise: changes every frame
    c = _Canvas(width, height)
    shift = index * 6  # lateral scroll of roadside objects, pixels per frame at full width
    _sky(c)
    _buildings(c, rng, shift)
    _trees(c, shift)
    _road(c, index)
    _poles(c, shift)
    _cars(c, index)
    _people(c, index)
    # Sensor noise and a little vignetting so the frames are not flat colour.
    noise = noise_rng.integers(-6, 7, size=c.img.shape, dtype=np.int16)
    shaded = (c.img.astype(np.int32) * _vignette(height, width)[:, :, None]) >> 8
    return np.clip(shaded + noise, 0, 255).astype(np.uint8), c.lab


class _Canvas:
    """The frame and its label map, drawn together (every shape gets its colour and its class)."""

    def __init__(self, width: int, height: int) -> None:
        self.img = np.zeros((height, width, 3), np.uint8)
        self.lab = np.zeros((height, width), np.uint8)
        self.w, self.h = width, height
        self.horizon = int(0.45 * height)
        self.vanish = width * 0.5

    def fill(self, poly, color, label: int) -> None:
        pts = np.round(np.asarray(poly, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.img, [pts], color)
        cv2.fillPoly(self.lab, [pts], int(label))

    def rect(self, x0, y0, x1, y1, color, label: int) -> None:
        self.fill([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, label)

    def circle(self, centre, radius: int, color, label: int, thickness: int = -1) -> None:
        cv2.circle(self.img, centre, radius, color, thickness)
        cv2.circle(self.lab, centre, radius, label, thickness)


def _sky(c: _Canvas) -> None:
    """A vertical blue gradient down to the horizon."""
    t = np.linspace(0.0, 1.0, c.horizon + 1)[:, None]
    sky = np.array([90, 140, 210]) * (1 - t) + np.array([185, 205, 230]) * t
    c.img[: c.horizon + 1] = sky[:, None, :].astype(np.uint8)
    c.lab[: c.horizon + 1] = SKY


def _buildings(c: _Canvas, rng: np.random.Generator, shift: int) -> None:
    """A scrolling row of blocks with windows."""
    w, h = c.w, c.h
    period = int(1.6 * w)
    x = -((shift // 2) % period)
    while x < w:
        bw = int(rng.integers(w // 10, w // 5))
        top = int(rng.integers(int(0.05 * h), int(0.3 * h)))
        shade = int(rng.integers(90, 170))
        c.rect(x, top, x + bw, c.horizon + 2, (shade, shade - 10, shade - 25), BUILDING)
        for wy in range(top + 8, c.horizon - 8, 18):
            for wx in range(x + 6, x + bw - 10, 16):
                cv2.rectangle(c.img, (wx, wy), (wx + 7, wy + 9), (40, 50, 70), -1)
        x += bw + int(rng.integers(0, w // 30 + 1))


def _trees(c: _Canvas, shift: int) -> None:
    """Green canopies over trunks."""
    w, h = c.w, c.h
    for k in range(4):
        cx = int((k * w / 3.3 + w * 0.15 - shift * 0.8) % (1.3 * w)) - int(0.15 * w)
        cy = int(c.horizon - 0.08 * h)
        c.rect(cx - 3, cy, cx + 3, c.horizon + 4, (80, 60, 40), TREE)
        c.circle((cx, cy), int(0.07 * h), (60, 120, 45), TREE)


def _road(c: _Canvas, index: int) -> None:
    """Road and sidewalks (perspective trapezoids), a fence, lane dashes moving towards the camera."""
    w, h, horizon, vanish = c.w, c.h, c.horizon, c.vanish
    c.fill([(vanish - 0.04 * w, horizon), (vanish + 0.04 * w, horizon), (w * 1.05, h), (-0.05 * w, h)],
           (75, 75, 80), ROAD)
    c.fill([(0, horizon), (vanish - 0.04 * w, horizon), (-0.05 * w, h), (0, h)], (170, 165, 155), SIDEWALK)
    c.fill([(vanish + 0.04 * w, horizon), (w, horizon), (w, h), (w * 1.05, h)], (170, 165, 155), SIDEWALK)
    c.rect(int(0.72 * w), int(horizon - 0.05 * h), int(w), int(horizon + 0.02 * h), (120, 100, 80), FENCE)
    for k in range(8):
        depth = ((k + (index * 0.15)) % 8) / 8.0  # 0 = horizon, 1 = bottom
        y0 = horizon + (h - horizon) * depth ** 2
        y1 = horizon + (h - horizon) * min(1.0, (depth + 0.05)) ** 2
        half0, half1 = 1 + 0.01 * w * depth, 1 + 0.01 * w * min(1.0, depth + 0.05)
        c.fill([(vanish - half0, y0), (vanish + half0, y0), (vanish + half1, y1), (vanish - half1, y1)],
               (235, 235, 225), ROAD)


def _poles(c: _Canvas, shift: int) -> None:
    """Two poles, each with a sign."""
    w, h = c.w, c.h
    for k in range(2):
        px = int((w * 0.1 + k * w * 0.55 - shift) % (1.2 * w))
        c.rect(px, int(0.2 * h), px + max(2, w // 160), int(c.horizon + 0.12 * h), (110, 110, 110), POLE)
        sy = int(0.22 * h)
        c.rect(px - w // 40, sy, px + w // 40, sy + h // 20, (200, 30, 30), SIGN)


def _cars(c: _Canvas, index: int) -> None:
    """Three cars: bodies, windows, wheels, larger when nearer."""
    w, h, horizon = c.w, c.h, c.horizon
    for k, (lane, colour) in enumerate(((0.33, (180, 30, 30)), (0.62, (30, 60, 160)), (0.45, (220, 220, 225)))):
        depth = 0.35 + 0.5 * ((k * 0.37 + index * 0.01) % 1.0)
        cy = horizon + (h - horizon) * depth ** 1.5
        cw = w * 0.05 + w * 0.18 * depth
        cx = lane * w + (lane - 0.5) * w * 0.3 * depth
        ch = cw * 0.6
        c.rect(cx - cw / 2, cy - ch, cx + cw / 2, cy, colour, CAR)
        c.rect(cx - cw / 3, cy - ch * 0.95, cx + cw / 3, cy - ch * 0.55, (40, 45, 55), CAR)
        for sx in (-1, 1):
            c.circle((int(cx + sx * cw * 0.32), int(cy)), max(2, int(ch * 0.15)), (20, 20, 20), CAR)


def _people(c: _Canvas, index: int) -> None:
    """A pedestrian on the left sidewalk and a cyclist at the right road edge."""
    w, h = c.w, c.h
    pxp = int(0.12 * w + (index * 2) % int(0.15 * w))
    c.rect(pxp - w // 100, int(0.55 * h), pxp + w // 100, int(0.78 * h), (150, 60, 90), PEDESTRIAN)
    c.circle((pxp, int(0.52 * h)), max(2, h // 50), (210, 170, 140), PEDESTRIAN)
    bx = int(0.8 * w - (index * 3) % int(0.2 * w))
    by = int(0.8 * h)
    for sx in (-1, 1):
        c.circle((bx + sx * w // 40, by), max(2, h // 30), (30, 30, 30), BICYCLIST, thickness=2)
    c.rect(bx - w // 120, int(0.62 * h), bx + w // 120, by - h // 60, (240, 200, 40), BICYCLIST)


@functools.lru_cache(maxsize=4)
def _vignette(height: int, width: int) -> np.ndarray:
    """Brightness falloff towards the corners, in 1/256 units."""
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    return np.round(256 * (1.0 - 0.125 * r2)).astype(np.int32)
