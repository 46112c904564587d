"""``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy, compatible with cv_bridge.

Pure numpy (plus OpenCV's packed-YUV and JPEG/PNG codecs), no cv_bridge needed. The results
equal ``cv_bridge.imgmsg_to_cv2(msg, "rgb8")`` for the supported encodings:

- ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``: channels as they are (alpha dropped);
- ``mono8``: grey replicated to three channels;
- ``mono16``: scaled like cv_bridge (``round(v * 255 / 65535)``), then replicated;
- ``yuv422`` (= ``uyvy``, byte order U Y0 V Y1) and ``yuv422_yuy2`` (= ``yuyv``, byte order
  Y0 U Y1 V): OpenCV's BT.601 ``COLOR_YUV2RGB_UYVY`` / ``COLOR_YUV2RGB_YUY2``, as cv_bridge;
- ``bayer_rggb8``, ``bayer_bggr8``, ``bayer_gbrg8``, ``bayer_grbg8`` (a camera driver's raw
  mosaic, named by its top-left 2x2 block): OpenCV's bilinear demosaicing, as cv_bridge; the
  ``...16`` variants are demosaiced at 16 bits, then scaled like ``mono16``.

Rows are read with the message's ``step`` (row padding is skipped) and 16-bit data honours
``is_bigendian``. Every malformed message raises :class:`ImageFormatError` naming the problem;
nothing here can crash a node or return silently wrong pixels.
"""
from __future__ import annotations

import array
import sys
from typing import Dict, Optional, Tuple

import numpy as np

# The largest frame accepted by default: 8K UHD. Anything bigger is treated as corrupt.
DEFAULT_MAX_PIXELS = 7680 * 4320

# Bayer pattern (top-left 2x2 block, as sensor_msgs names it) -> OpenCV code name. OpenCV names
# a pattern by the 2x2 block that starts at the second row and column, so RGGB is its "BG".
_BAYER_CODES = {
    "rggb": "COLOR_BayerBG2RGB",
    "bggr": "COLOR_BayerRG2RGB",
    "gbrg": "COLOR_BayerGR2RGB",
    "grbg": "COLOR_BayerGB2RGB",
}

# The Bayer patterns, in sensor_msgs' spelling (encodings ``bayer_<pattern>8`` / ``...16``).
BAYER_PATTERNS = tuple(_BAYER_CODES)

# encoding -> (channels, bytes per channel)
RAW_ENCODINGS: Dict[str, Tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
    "yuv422": (2, 1),
    "uyvy": (2, 1),
    "yuv422_yuy2": (2, 1),
    "yuyv": (2, 1),
    **{"bayer_{}{}".format(p, bits): (1, bits // 8) for p in BAYER_PATTERNS for bits in (8, 16)},
}

# Packed 4:2:2 encodings -> OpenCV conversion code name (looked up lazily: cv2 is imported late).
_YUV_CODES = {
    "yuv422": "COLOR_YUV2RGB_UYVY",
    "uyvy": "COLOR_YUV2RGB_UYVY",
    "yuv422_yuy2": "COLOR_YUV2RGB_YUY2",
    "yuyv": "COLOR_YUV2RGB_YUY2",
}

_NATIVE_BIG_ENDIAN = sys.byteorder == "big"


def bayer_pattern(encoding: str) -> Optional[str]:
    """The Bayer pattern of a supported ``bayer_*`` encoding (``"rggb"`` for ``bayer_rggb16``), else None."""
    if encoding.startswith("bayer_") and encoding in RAW_ENCODINGS:
        return encoding[len("bayer_"):len("bayer_") + 4]
    return None


def _to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as cv_bridge scales 16-bit data (``round(v * 255 / 65535)``, exact)."""
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)


class ImageFormatError(ValueError):
    """A message cannot be turned into an image (the text says why)."""


def raw_to_array(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pixels of a raw image in their own encoding (like cv_bridge's ``passthrough``).

    Returns ``(H, W)`` for one channel, else ``(H, W, C)``; 16-bit data comes back as native
    ``uint16``. The array is a view of ``data`` when no byte swap is needed.

    Raises:
        ImageFormatError: unknown encoding, zero or absurd size, ``step`` shorter than a row,
            ``data`` not ``step * height`` bytes.
    """
    if encoding not in RAW_ENCODINGS:
        raise ImageFormatError("unsupported encoding {!r}; supported: {}".format(
            encoding, ", ".join(sorted(RAW_ENCODINGS))))
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageFormatError("empty image ({}x{})".format(width, height))
    if height * width > max_pixels:
        raise ImageFormatError("absurd image size {}x{} (more than {} pixels)".format(width, height, max_pixels))
    channels, depth = RAW_ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageFormatError("step {} is shorter than one row ({} px * {} bytes = {})".format(
            step, width, channels * depth, row_bytes))
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        raise ImageFormatError("data must be bytes, got {}".format(type(data).__name__)) from None
    if buf.size != step * height:
        # Longer is as wrong as shorter: the message was built for another size or encoding.
        raise ImageFormatError("data has {} bytes, expected step * height = {} * {} = {}".format(
            buf.size, step, height, step * height))
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    if depth == 2:
        pixels = rows.view(">u2" if is_bigendian else "<u2")
        if bool(is_bigendian) != _NATIVE_BIG_ENDIAN:
            pixels = pixels.astype(np.uint16)  # byte swap into native order (a copy)
        else:
            pixels = pixels.view(np.uint16)
    else:
        pixels = rows
    if channels == 1:
        return pixels.reshape(height, width)
    return pixels.reshape(height, width, channels)


def to_color(encoding: str, pixels: np.ndarray) -> Tuple[np.ndarray, str]:
    """Three-channel uint8 pixels for segmentation: ``(array HxWx3, channel_order)``.

    ``channel_order`` is ``"rgb"`` or ``"bgr"``; BGR data is not reordered here because the
    segmenter can normalise either order without an extra copy. The array is C-contiguous:
    an unpadded ``rgb8`` / ``bgr8`` message is used in place, anything else is copied once.
    """
    import cv2

    if encoding in ("rgb8", "bgr8"):
        return np.ascontiguousarray(pixels), encoding[:3]
    if encoding in ("rgba8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, :3]), encoding[:3]
    if encoding == "mono8":
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2RGB), "rgb"
    if encoding == "mono16":
        # cv_bridge: convertTo(CV_8U, 255/65535) rounds to nearest; (v + 128) // 257 is exact.
        return cv2.cvtColor(_to_8bit(pixels), cv2.COLOR_GRAY2RGB), "rgb"
    pattern = bayer_pattern(encoding)
    if pattern is not None:
        if pixels.shape[0] < 2 or pixels.shape[1] < 2:
            raise ImageFormatError("{} needs at least 2x2 pixels (one Bayer block), got {}x{}".format(
                encoding, pixels.shape[1], pixels.shape[0]))
        rgb = cv2.cvtColor(np.ascontiguousarray(pixels), getattr(cv2, _BAYER_CODES[pattern]))
        return (_to_8bit(rgb) if rgb.dtype == np.uint16 else rgb), "rgb"
    if encoding in _YUV_CODES:
        if pixels.shape[1] % 2:
            raise ImageFormatError("{} needs an even width, got {}".format(encoding, pixels.shape[1]))
        return cv2.cvtColor(np.ascontiguousarray(pixels), getattr(cv2, _YUV_CODES[encoding])), "rgb"
    raise ImageFormatError("unsupported encoding {!r}".format(encoding))


def image_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image``'s pixels in their own encoding (see :func:`raw_to_array`)."""
    return raw_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data, max_pixels)


def image_to_color(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, str]:
    """A ``sensor_msgs/Image`` as ``(HxWx3 uint8, "rgb" | "bgr")``; raises :class:`ImageFormatError`."""
    return to_color(msg.encoding, image_to_array(msg, max_pixels))


def image_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` as contiguous RGB uint8, equal to ``imgmsg_to_cv2(msg, "rgb8")``."""
    pixels, order = image_to_color(msg, max_pixels)
    return np.ascontiguousarray(pixels[:, :, ::-1] if order == "bgr" else pixels)


def compressed_to_color(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG / PNG) to ``(HxWx3 uint8, "bgr")``.

    Raises:
        ImageFormatError: empty data, depth-compressed data, or bytes OpenCV cannot decode.
    """
    import cv2

    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageFormatError("compressedDepth images ({!r}) are depth maps, not camera images".format(fmt))
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageFormatError("compressed image has no data (format {!r})".format(fmt))
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageFormatError("corrupt or unsupported compressed image (format {!r}, {} bytes)".format(fmt, buf.size))
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageFormatError("absurd image size {}x{}".format(image.shape[1], image.shape[0]))
    return image, "bgr"


def rgb_to_bayer(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """What a Bayer sensor records of ``rgb`` (HxWx3, uint8 or uint16): one channel per pixel.

    ``pattern`` is the top-left 2x2 block as ``sensor_msgs`` names it (``rggb``, ``bggr``,
    ``gbrg``, ``grbg``); the result goes into an Image with encoding ``bayer_<pattern>8`` (or
    ``16``). Simulates a raw camera from RGB frames (tests, synthetic bags).
    """
    if pattern not in _BAYER_CODES:
        raise ValueError("unknown Bayer pattern {!r}; expected one of {}".format(pattern, sorted(BAYER_PATTERNS)))
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an HxWx3 image, got shape {}".format(rgb.shape))
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(colour)]
    return out


def array_to_image(pixels: np.ndarray, encoding: str, header=None):
    """A ``sensor_msgs/Image`` holding ``pixels`` (``step`` = packed row, little-endian).

    ``pixels`` must match ``encoding``: ``(H, W)`` for one channel, ``(H, W, C)`` otherwise,
    uint8 (uint16 for ``mono16``). ``header`` is copied by reference (stamp and frame_id kept).
    """
    from sensor_msgs.msg import Image

    if encoding not in RAW_ENCODINGS:
        raise ImageFormatError("unsupported encoding {!r}".format(encoding))
    channels, depth = RAW_ENCODINGS[encoding]
    want_dtype = np.uint16 if depth == 2 else np.uint8
    shape_ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and pixels.shape[2] == channels)
    if not shape_ok or pixels.dtype != want_dtype:
        raise ImageFormatError("array {} {} does not match encoding {!r}".format(pixels.shape, pixels.dtype, encoding))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * depth
    msg.data = array.array("B", np.ascontiguousarray(pixels, dtype=np.dtype(want_dtype).newbyteorder("<")).tobytes())
    return msg


def encode_compressed(pixels: np.ndarray, channel_order: str = "rgb", fmt: str = "jpeg",
                      quality: int = 90) -> Tuple[bytes, str]:
    """``(data, format)`` of a ``CompressedImage`` holding ``HxWx3`` uint8 pixels, image_transport
    style (the codec gets BGR; the format string names the original order).

    Raises:
        ImageFormatError: not a non-empty HxWx3 uint8 array, an unknown channel order, format or
            quality (a float or 16-bit frame would otherwise be encoded black or saturated).
    """
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ImageFormatError("compressed format must be 'jpeg' or 'png', got {!r}".format(fmt))
    if channel_order not in ("rgb", "bgr"):
        raise ImageFormatError("channel_order must be rgb or bgr, got {!r}".format(channel_order))
    if not 1 <= int(quality) <= 100:
        raise ImageFormatError("JPEG quality must be in 1..100, got {}".format(quality))
    if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3
            or pixels.size == 0):
        raise ImageFormatError("a compressed frame takes a non-empty HxWx3 uint8 array, got {}".format(
            "{} {}".format(pixels.shape, pixels.dtype) if isinstance(pixels, np.ndarray) else type(pixels).__name__))
    bgr = pixels[:, :, ::-1] if channel_order == "rgb" else pixels
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ImageFormatError("OpenCV could not encode a {} image".format(fmt))
    return encoded.tobytes(), "{}8; {} compressed bgr8".format(channel_order, fmt)


def array_to_compressed(pixels: np.ndarray, channel_order: str = "rgb", fmt: str = "jpeg",
                        quality: int = 90, header=None):
    """Encode ``HxWx3`` uint8 pixels as a ``sensor_msgs/CompressedImage`` (:func:`encode_compressed`)."""
    from sensor_msgs.msg import CompressedImage

    data, fmt_text = encode_compressed(pixels, channel_order, fmt, quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = fmt_text
    msg.data = array.array("B", data)
    return msg


def message_summary(msg) -> str:
    """A short description of an image message for error logs (never the pixel data)."""
    if hasattr(msg, "encoding"):
        return "Image {}x{} {!r} step={} data={}B".format(msg.width, msg.height, msg.encoding, msg.step, len(msg.data))
    return "CompressedImage format={!r} data={}B".format(getattr(msg, "format", "?"), len(msg.data))

