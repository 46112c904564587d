"""make-bag and the bag reader: sqlite3 and mcap, raw and compressed, read back with rosbags."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bag_fixtures import START_NS, jpeg_roundtrip, make_camvid_folder, make_cityscapes_folder, run_cli

from enet_seg_ros.io.bags import (COMPRESSED_TYPE, IMAGE_TYPE, BagError, BagReader, BagWriter,
                                          decode_frame_rgb, decode_label, list_topics)

RATE = 20.0
PERIOD_NS = int(1e9 / RATE)


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("camvid")
    images, labels, names = make_camvid_folder(root, n=4, unlabelled=(2,))
    return images, labels, names


def _make(camvid, out: Path, *extra) -> Path:
    images, labels, _ = camvid
    code = run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels, "--out", out,
                    "--rate", RATE, "--start-ns", START_NS, "--no-progress", *extra])
    assert code == 0
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [False, True])
def test_make_bag_reads_back_with_rosbags(camvid, tmp_path, storage, compressed):
    images, labels, names = camvid
    bag = _make(camvid, tmp_path / "bag", "--storage", storage, *(["--compressed"] if compressed else []))
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*" + suffix))

    # Independent read with the rosbags high-level API.
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    got = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        assert topics == {image_topic: (COMPRESSED_TYPE if compressed else IMAGE_TYPE, 4),
                          "/camera/labels_gt": (IMAGE_TYPE, 3)}  # frame 2 has no label file
        for conn, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
            assert stamp == timestamp and msg.header.frame_id == "camera"
            got.setdefault(conn.topic, []).append((stamp, msg))

    stamps = [s for s, _ in got[image_topic]]
    assert stamps == [START_NS + i * PERIOD_NS for i in range(4)]
    assert [s for s, _ in got["/camera/labels_gt"]] == [stamps[0], stamps[1], stamps[3]]
    for i, (stamp, msg) in enumerate(got[image_topic]):
        rgb = cv2.imread(str(images / names[i]))[:, :, ::-1]
        if compressed:
            assert msg.format.endswith("jpeg compressed bgr8")
            decoded = cv2.imdecode(msg.data, cv2.IMREAD_COLOR)[:, :, ::-1]
            np.testing.assert_array_equal(decoded, jpeg_roundtrip(rgb, 95))  # JPEG q95 of the file's pixels
        else:
            assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 96, 64, 96 * 3)
            np.testing.assert_array_equal(msg.data.reshape(64, 96, 3), rgb)
    for (stamp, msg), i in zip(got["/camera/labels_gt"], (0, 1, 3)):
        assert msg.encoding == "mono8"
        np.testing.assert_array_equal(msg.data.reshape(64, 96), cv2.imread(str(labels / names[i]), 0))


def test_bag_reader_decodes_what_was_written(camvid, tmp_path):
    images, labels, names = camvid
    bag = _make(camvid, tmp_path / "bag", "--storage", "mcap")
    with BagReader(bag) as reader:
        info = reader.find_image_topic()
        assert (info.topic, info.count) == ("/camera/image_raw", 4)
        frames = [m for m in reader.messages([info.topic])]
    assert [m.index for m in frames] == [0, 1, 2, 3]
    np.testing.assert_array_equal(decode_frame_rgb(frames[1].msg, frames[1].msgtype),
                                  cv2.imread(str(images / names[1]))[:, :, ::-1])
    # A .mcap file inside the bag folder stands for the bag.
    assert [t.topic for t in list_topics(next(bag.glob("*.mcap")))] == ["/camera/image_raw", "/camera/labels_gt"]


def test_make_bag_cityscapes_writes_instances(tmp_path):
    images, gt = make_cityscapes_folder(tmp_path / "cs", n=3)
    bag = tmp_path / "bag"
    assert run_cli(["make-bag", "--dataset", "cityscapes", "--images", images, "--labels", gt, "--out", bag,
                    "--start-ns", START_NS, "--no-progress"]) == 0
    with BagReader(bag) as reader:
        assert {t: i.count for t, i in reader.topics.items()} == {
            "/camera/image_raw": 3, "/camera/labels_gt": 3, "/camera/instances_gt": 3}
        inst = [m for m in reader.messages(["/camera/instances_gt"])]
    assert inst[0].msg.encoding == "mono16"
    ids = decode_label(inst[0].msg)
    assert ids.dtype == np.uint16
    key = sorted(p.name for p in gt.rglob("*_instanceIds.png"))[0]
    from PIL import Image

    np.testing.assert_array_equal(ids, np.array(Image.open(next(gt.rglob(key)))))
    assert ids.max() > 24000  # instance ids beyond 8 bits survive


def test_make_bag_refuses_existing_output_and_bad_folders(camvid, tmp_path, capsys):
    images, labels, _ = camvid
    existing = tmp_path / "exists"
    existing.mkdir()
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels,
                    "--out", existing, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", tmp_path / "nope", "--labels", labels,
                    "--out", tmp_path / "b", "--no-progress"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty_labels"
    empty.mkdir()
    assert run_cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", empty,
                    "--out", tmp_path / "b", "--no-progress"]) == 2
    assert "has a label file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_is_a_clear_error(camvid, tmp_path, storage):
    bag = _make(camvid, tmp_path / "bag", "--storage", storage)
    data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    with pytest.raises(BagError, match="cannot open bag .*bag.*truncated, corrupt"):
        BagReader(bag).open()


def test_corrupt_database_page_names_bag_and_last_stamp(camvid, tmp_path):
    bag = _make(camvid, tmp_path / "bag", "--storage", "sqlite3")
    data = next(bag.glob("*.db3"))
    size = data.stat().st_size
    with open(data, "r+b") as fh:  # garbage over the second half of the database pages
        fh.seek(size // 2)
        fh.write(np.random.default_rng(0).integers(0, 256, size - size // 2, dtype=np.uint8).tobytes())
    with pytest.raises(BagError) as err:
        with BagReader(bag) as reader:
            list(reader.messages(list(reader.topics)))
    text = str(err.value)
    assert str(bag) in text and ("corrupt" in text or "malformed" in text)


def test_missing_topic_lists_existing_topics(camvid, tmp_path):
    bag = _make(camvid, tmp_path / "bag")
    with BagReader(bag) as reader:
        with pytest.raises(BagError) as err:
            reader.require("/camera/depth", (IMAGE_TYPE,), "image topic")
    text = str(err.value)
    assert "/camera/depth" in text and "/camera/image_raw (sensor_msgs/msg/Image, 4 msgs)" in text
    assert "/camera/labels_gt" in text


def test_corrupt_messages_are_yielded_with_an_error(tmp_path):
    bag = tmp_path / "bag"
    rgb = np.zeros((8, 8, 3), np.uint8)
    with BagWriter(bag) as w:
        w.write_image("/camera/image_raw", rgb, "rgb8", START_NS)
        w.write_bytes("/camera/image_raw", IMAGE_TYPE, b"\x00\x01garbage", START_NS + 1)
        w.write_image("/camera/image_raw", rgb, "rgb8", START_NS + 2)
    with BagReader(bag) as reader:
        msgs = list(reader.messages(["/camera/image_raw"]))
    assert [m.error is None for m in msgs] == [True, False, True]
    assert "cannot deserialise sensor_msgs/msg/Image" in msgs[1].error
    assert msgs[2].stamp_ns == START_NS + 2
    assert "stamp 1700000000.000000001" in msgs[1].where(bag)


def test_not_a_bag(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text("hello")
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(folder).open()
    with pytest.raises(FileNotFoundError):
        BagReader(tmp_path / "missing").open()
