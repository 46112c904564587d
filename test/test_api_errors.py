"""Misuse of the Python API is refused where it happens, with a message naming the problem, and
never turns into silently wrong output. Each case here was a deep crash, a silent acceptance or a
shared buffer before (an API sweep, session 15)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from enet_seg_ros.data.transforms import normalize
from enet_seg_ros.engine import Preprocess, Segmenter
from enet_seg_ros.io.bags import BagReader, BagWriter
from enet_seg_ros.io.image_conv import ImageFormatError, array_to_compressed, raw_to_array
from enet_seg_ros.io.sources import SyntheticSource
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import Normalization, WeightsError, load_model, save_model


ENET = "enet_camvid"


@pytest.fixture(scope="module")
def seg():
    with Segmenter(ENET, backend="onnxruntime", precision="fp32", input_size=(64, 48), threads=1, warmup=0) as s:
        yield s


@pytest.fixture(scope="module")
def shipped():
    from enet_seg_ros.weights import resolve_weights

    return load_model(resolve_weights(ENET))


def test_bag_reader_gives_nothing_for_a_topic_it_does_not_have(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        for i in range(2):
            bag.write_image("/camera/image_raw", np.zeros((4, 6, 3), np.uint8), "rgb8", 10 ** 9 + i)
            bag.write_image("/camera/labels_gt", np.zeros((4, 6), np.uint8), "mono8", 10 ** 9 + i)
    with BagReader(tmp_path / "bag") as reader:
        assert list(reader.messages(["/camera/image_rawx"])) == []  # not every topic
        assert len(list(reader.messages(["/camera/image_raw"]))) == 2
        with pytest.raises(TypeError, match="list of topic names"):
            list(reader.messages("/camera/image_raw"))


@pytest.mark.parametrize("stamp", [-1, 2 ** 31 * 10 ** 9])
def test_bag_writer_refuses_stamps_and_images_a_header_cannot_hold(tmp_path, stamp):
    with BagWriter(tmp_path / "bag") as bag:
        with pytest.raises(ValueError, match="does not fit a ROS 2 header"):
            bag.write_image("/camera/image_raw", np.zeros((4, 6, 3), np.uint8), "rgb8", stamp)
        for bad in (np.zeros((0, 6, 3), np.uint8), [[1, 2, 3]]):
            with pytest.raises(ValueError, match="non-empty numpy array"):
                bag.write_image("/camera/image_raw", bad, "rgb8", 10 ** 9)
        with pytest.raises(ImageFormatError, match="HxWx3 uint8"):
            bag.write_compressed("/camera/image_raw/compressed", np.zeros((4, 6, 3), np.uint16), 10 ** 9)


@pytest.mark.parametrize("pixels, order, why", [
    (np.full((4, 6, 3), 0.5, np.float32), "rgb", "HxWx3 uint8"),
    (np.zeros((4, 6, 4), np.uint8), "rgb", "HxWx3 uint8"),
    (np.zeros((4, 6), np.uint8), "rgb", "HxWx3 uint8"),
    (np.zeros((0, 6, 3), np.uint8), "rgb", "HxWx3 uint8"),
    (np.zeros((4, 6, 3), np.uint8), "RGB", "channel_order must be rgb or bgr"),
])
def test_compressed_images_take_only_what_they_can_encode(pixels, order, why):
    with pytest.raises(ImageFormatError, match=why):
        array_to_compressed(pixels, order)
    assert array_to_compressed(np.zeros((4, 6, 3), np.uint8), "bgr").format == "bgr8; jpeg compressed bgr8"


def test_raw_image_data_must_be_exactly_step_times_height():
    rgba = bytes(range(32))  # a 4x2 rgba8 frame sent as rgb8
    with pytest.raises(ImageFormatError, match="data has 32 bytes, expected step \\* height = 12 \\* 2 = 24"):
        raw_to_array("rgb8", 2, 4, 12, False, rgba)
    with pytest.raises(ImageFormatError, match="data must be bytes, got NoneType"):
        raw_to_array("rgb8", 2, 4, 12, False, None)
    assert raw_to_array("rgb8", 2, 4, 12, False, rgba[:24]).shape == (2, 4, 3)


@pytest.mark.parametrize("change, why", [
    (dict(palette=[[300, 0, 0]] * 11), "palette must have one RGB triple of 0..255"),
    (dict(normalization=Normalization(std=[float("nan")] * 3)), "3 stds > 0"),
    (dict(normalization=Normalization(scale=0.0)), "a scale > 0"),
    (dict(normalization={"channel_order": "rgb"}), "normalization must be"),
    (dict(resize_policy="zoom"), "resize_policy must be one of"),
    (dict(label_upsampling="cubic"), "label_upsampling must be one of"),
    (dict(arch="unet"), "arch must be one of"),
    (dict(options=["x"]), "options must be a mapping"),
    (dict(num_classes="11"), "num_classes must be a whole number"),
    (dict(input_size=["64", "48"]), "input_size must be"),
])
def test_a_bad_card_is_refused_when_it_is_made_and_written(shipped, tmp_path, change, why):
    model, card = shipped
    bad = dataclasses.replace(card, **change)
    with pytest.raises(WeightsError, match=why):
        bad.validate()
    with pytest.raises(WeightsError, match=why):
        save_model(tmp_path / "bad.safetensors", model, bad)
    assert not list(tmp_path.iterdir())


def test_weights_that_do_not_fit_their_card_are_refused_before_writing_or_running(shipped, tmp_path):
    model, card = shipped
    other = build_model("enet", 12)  # one class too many
    with pytest.raises(WeightsError, match="do not match the card"):
        save_model(tmp_path / "w.safetensors", other, card)
    assert not list(tmp_path.iterdir())
    with pytest.raises(WeightsError, match="do not match the card"):
        Segmenter((other, card), backend="onnxruntime", input_size=(64, 48), warmup=0)
    with pytest.raises(WeightsError, match="num_classes must be a whole number in 1..254"):
        dataclasses.replace(card, num_classes=256, class_names=["c"] * 256, palette=[[0, 0, 0]] * 256).validate()
    with pytest.raises(ValueError, match="num_classes must be a whole number >= 1, got '5'"):
        build_model("enet", "5")


def test_segmenter_settings_and_use_after_close(tmp_path):
    with pytest.raises(ValueError, match="unknown backend option\\(s\\) chanels_last"):
        Segmenter(ENET, backend="torch", input_size=(64, 48), warmup=0, chanels_last=True)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        Segmenter(ENET, backend="onnxruntime", input_size=(64, 48), warmup=0, threads=-1)
    seg = Segmenter(ENET, backend="onnxruntime", precision="fp32", input_size=(64, 48), threads=1, warmup=0)
    frame = np.zeros((48, 64, 3), np.uint8)
    seg.segment(frame)
    seg.close()
    with pytest.raises(RuntimeError, match="closed"):
        seg.segment(frame)


def test_results_hand_out_their_own_colour_image_and_check_the_overlay_order(seg):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = seg.segment(frame)
    colours = result.color()
    colours[:] = 7  # the caller draws on its copy
    assert not (result.color() == 7).all()
    assert np.array_equal(result.overlay(frame, 1.0, "BGR"), result.overlay(frame, 1.0, "bgr"))
    assert not np.array_equal(result.overlay(frame, 1.0, "bgr"), result.overlay(frame, 1.0, "rgb"))
    with pytest.raises(ValueError, match="channel_order must be 'rgb' or 'bgr'"):
        result.overlay(frame, 0.5, "xyz")


def test_synthetic_frames_are_shared_read_only():
    frames = [f.pixels for f in SyntheticSource(64, 48, count=2).frames()]
    with pytest.raises(ValueError, match="read-only"):
        frames[0][:] = 0


@pytest.mark.parametrize("image", [np.full((48, 64, 3), 0.5, np.float32), np.zeros((48, 64, 3), np.uint16),
                                   np.zeros((48, 64), np.uint8), np.zeros((3, 48, 64), np.uint8)])
def test_preprocessing_takes_only_uint8_frames(shipped, image):
    with pytest.raises(ValueError, match="uint8|must have 3 colour channels|shape \\(H, W, 3\\)"):
        Preprocess.from_card(shipped[1])(image)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        normalize(image, "rgb", [0, 0, 0], [1, 1, 1])


def test_prediction_scoring_names_an_unknown_dataset(tmp_path):
    from enet_seg_ros.evaluate.api import evaluate_predictions

    for kwargs, why in ((dict(dataset="kitti"), "dataset must be cityscapes or camvid"),
                        (dict(dataset="camvid", pred_ids="bogus"), "pred_ids must be auto, label or train")):
        with pytest.raises(ValueError, match=why):
            evaluate_predictions(tmp_path, tmp_path, tmp_path / "out", **kwargs)
