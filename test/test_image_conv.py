"""Image message <-> numpy conversion: cv_bridge-compatible pixels, padding, endianness, errors."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("sensor_msgs.msg")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from enet_seg_ros.io.image_conv import (  # noqa: E402
    ImageFormatError,
    array_to_compressed,
    array_to_image,
    compressed_to_color,
    image_to_array,
    image_to_color,
    image_to_rgb,
    raw_to_array,
    rgb_to_bayer,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 10, 3), dtype=np.uint8)


def _padded_msg(pixels: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    """An Image whose rows carry ``pad`` junk bytes (step > packed row)."""
    h = pixels.shape[0]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if big_endian else "<u2")
    rows = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    msg = Image(height=h, width=pixels.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                step=data.shape[1])
    msg.data = data.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda rgb: rgb),
    ("bgr8", lambda rgb: rgb[:, :, ::-1]),
    ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 77, np.uint8)])),
    ("bgra8", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 77, np.uint8)])),
])
def test_colour_encodings_give_the_same_rgb(encoding, make, pad):
    msg = _padded_msg(np.ascontiguousarray(make(RGB)), encoding, pad)
    assert np.array_equal(image_to_rgb(msg), RGB)
    pixels, order = image_to_color(msg)
    assert order == encoding[:3]
    assert pixels.shape == RGB.shape


def test_mono8_is_replicated():
    grey = RGB[:, :, 0]
    out = image_to_rgb(_padded_msg(np.ascontiguousarray(grey), "mono8", 3))
    assert np.array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_scaled_like_cv_bridge_and_honours_endianness(big_endian):
    values = np.array([[0, 1, 128, 129, 256, 257, 385, 386], [32767, 32768, 65277, 65278, 65534, 65535, 1000, 60000]],
                      dtype=np.uint16)
    msg = _padded_msg(values, "mono16", 4, big_endian=big_endian)
    assert np.array_equal(image_to_array(msg), values)
    out = image_to_rgb(msg)
    # cv_bridge: convertTo(CV_8U, 255 / 65535) rounds to nearest.
    expected = np.round(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert np.array_equal(out[:, :, 0], expected)
    assert np.array_equal(out[:, :, 1], expected) and np.array_equal(out[:, :, 2], expected)


def _bt601(y, u, v):
    """OpenCV's packed-YUV -> RGB (BT.601, limited range)."""
    y = 1.164 * (np.float64(y) - 16.0)
    r = y + 1.596 * (v - 128.0)
    g = y - 0.391 * (u - 128.0) - 0.813 * (v - 128.0)
    b = y + 2.018 * (u - 128.0)
    return np.clip(np.round([r, g, b]), 0, 255)


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("uyvy", "UYVY"),
                                            ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")])
def test_yuv422_byte_orders(encoding, order):
    h, w = 4, 6
    y = RNG.integers(16, 236, size=(h, w)).astype(np.uint8)
    u = RNG.integers(16, 241, size=(h, w // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, size=(h, w // 2)).astype(np.uint8)
    packed = np.zeros((h, w // 2, 4), np.uint8)
    if order == "UYVY":
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    msg = _padded_msg(packed.reshape(h, w, 2), encoding, 2)
    out = image_to_rgb(msg).astype(np.int32)
    for r in range(h):
        for c in range(w):
            want = _bt601(y[r, c], float(u[r, c // 2]), float(v[r, c // 2]))
            assert np.abs(out[r, c] - want).max() <= 2, (r, c, out[r, c], want)


def test_uyvy_and_yuyv_differ_on_the_same_bytes():
    # Bytes 128,200,128,200: as UYVY that is grey Y=200; as YUYV it is Y=128 with U=V=200 (strong colour).
    data = np.tile(np.array([128, 200, 128, 200], np.uint8), (2, 2))
    grey = image_to_rgb(_padded_msg(data.reshape(2, 4, 2), "yuv422", 0))
    colour = image_to_rgb(_padded_msg(data.reshape(2, 4, 2), "yuv422_yuy2", 0))
    assert np.ptp(grey[0, 0].astype(int)) <= 2 and grey[0, 0, 0] > 200
    assert np.ptp(colour[0, 0].astype(int)) > 100


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB), ("bgr8", RGB), ("rgba8", RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)),
    ("mono8", RGB[:, :, 1].copy()), ("mono16", RNG.integers(0, 65536, (5, 6), dtype=np.uint16)),
    ("yuv422", RNG.integers(0, 256, (5, 6, 2), dtype=np.uint8)),
    ("bayer_grbg8", RGB[:, :, 2].copy()), ("bayer_bggr16", RNG.integers(0, 65536, (5, 6), dtype=np.uint16)),
])
def test_array_to_image_round_trip_keeps_header(encoding, pixels):
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image(pixels, encoding, header)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    assert msg.step * msg.height == len(msg.data) and not msg.is_bigendian
    assert np.array_equal(image_to_array(msg), pixels)


def test_array_to_image_refuses_a_mismatched_array():
    with pytest.raises(ImageFormatError, match="does not match"):
        array_to_image(RGB, "mono8")
    with pytest.raises(ImageFormatError, match="does not match"):
        array_to_image(RGB.astype(np.uint16), "rgb8")


@pytest.mark.parametrize("kwargs,match", [
    (dict(encoding="bayer_rgbg8"), "unsupported encoding 'bayer_rgbg8'"),
    (dict(encoding="8UC3"), "unsupported encoding"),
    (dict(width=0), "empty image"),
    (dict(height=0), "empty image"),
    (dict(step=29), "step 29 is shorter than one row"),
    (dict(data=bytes(100)), "data has 100 bytes, expected step \\* height"),
    (dict(width=100000, height=100000, step=300000), "absurd image size"),
])
def test_malformed_raw_images_name_the_problem(kwargs, match):
    fields = dict(encoding="rgb8", height=7, width=10, step=30, is_bigendian=False, data=RGB.tobytes())
    fields.update(kwargs)
    with pytest.raises(ImageFormatError, match=match):
        raw_to_array(**fields)


def test_rgb_to_bayer_keeps_one_colour_per_pixel():
    raw = rgb_to_bayer(RGB, "grbg")
    assert raw.shape == RGB.shape[:2] and raw.dtype == np.uint8
    assert raw[0, 0] == RGB[0, 0, 1] and raw[0, 1] == RGB[0, 1, 0]
    assert raw[1, 0] == RGB[1, 0, 2] and raw[1, 1] == RGB[1, 1, 1]
    with pytest.raises(ValueError, match="unknown Bayer pattern"):
        rgb_to_bayer(RGB, "rgbg")


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_are_demosaiced_to_their_colours(pattern, bits):
    """A camera's raw mosaic of flat colour blocks comes back as those colours (each pattern)."""
    colours = np.array([[200, 40, 10], [10, 180, 60], [30, 50, 220], [250, 250, 20]], np.uint8)
    rgb = np.zeros((16, 24, 3), np.uint8)
    for i, c in enumerate(colours):
        rgb[:, i * 6:(i + 1) * 6] = c
    raw = rgb_to_bayer(rgb, pattern)
    if bits == 16:
        raw = raw.astype(np.uint16) * 257  # full 16-bit range: scales back to the same 8-bit values
    msg = _padded_msg(raw, "bayer_{}{}".format(pattern, bits), 6, big_endian=bits == 16)
    assert np.array_equal(image_to_array(msg), raw)
    out, order = image_to_color(msg)
    assert order == "rgb" and out.dtype == np.uint8 and out.shape == rgb.shape
    # Inside each block (away from the colour edges and the border) demosaicing is exact.
    for i, c in enumerate(colours):
        assert np.array_equal(out[2:-2, i * 6 + 2:i * 6 + 4], np.broadcast_to(c, (12, 2, 3))), (pattern, c)
    # A wrong pattern gives other colours: the test can tell the four apart.
    wrong = {"rggb": "bggr", "bggr": "rggb", "gbrg": "grbg", "grbg": "gbrg"}[pattern]
    swapped, _ = image_to_color(_padded_msg(raw, "bayer_{}{}".format(wrong, bits), 0))
    assert not np.array_equal(swapped[2:-2, 2:4], out[2:-2, 2:4])


def test_bayer_smaller_than_one_block_is_rejected():
    with pytest.raises(ImageFormatError, match="at least 2x2"):
        image_to_color(_padded_msg(np.zeros((1, 8), np.uint8), "bayer_rggb8", 0))


def test_odd_width_yuv_is_rejected():
    with pytest.raises(ImageFormatError, match="even width"):
        image_to_color(_padded_msg(np.zeros((2, 3, 2), np.uint8), "yuv422", 0))


def test_compressed_png_is_lossless_and_jpeg_close():
    png = array_to_compressed(RGB, "rgb", "png")
    assert "png" in png.format
    bgr, order = compressed_to_color(png)
    assert order == "bgr" and np.array_equal(bgr[:, :, ::-1], RGB)
    smooth = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_LINEAR)
    jpeg = array_to_compressed(smooth, "rgb", "jpeg", quality=95)
    bgr, _ = compressed_to_color(jpeg)
    assert np.abs(bgr[:, :, ::-1].astype(int) - smooth).mean() < 6


@pytest.mark.parametrize("fmt,data,match", [
    ("jpeg", b"", "no data"),
    ("jpeg", b"\xff\xd8\xff\xe0 this is not a jpeg", "corrupt or unsupported"),
    ("16UC1; compressedDepth png", b"\x89PNG", "compressedDepth"),
])
def test_bad_compressed_images_name_the_problem(fmt, data, match):
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ImageFormatError, match=match):
        compressed_to_color(msg)


def test_truncated_jpeg_is_an_error_not_garbage():
    jpeg = array_to_compressed(RGB, "rgb", "jpeg")
    msg = CompressedImage(format=jpeg.format)
    msg.data = bytes(jpeg.data)[: len(jpeg.data) // 3]
    with pytest.raises(ImageFormatError, match="corrupt"):
        compressed_to_color(msg)


def test_colour_arrays_are_contiguous_and_unpadded_rgb_is_not_copied():
    msg = array_to_image(RGB, "rgb8")
    pixels, _ = image_to_color(msg)
    assert pixels.flags.c_contiguous and np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))
    for pad, enc, arr in ((4, "rgb8", RGB), (0, "rgba8", np.dstack([RGB, RGB[:, :, :1]]))):
        pixels, _ = image_to_color(_padded_msg(np.ascontiguousarray(arr), enc, pad))
        assert pixels.flags.c_contiguous
