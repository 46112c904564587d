"""Import of the ESPNet authors' published checkpoints (../shared/data/espnet_reference)."""
from __future__ import annotations

import argparse
import shutil

import cv2
import numpy as np
import pytest
import torch

from enet_seg_ros.commands import import_weights, info
from enet_seg_ros.data.labels import CAMVID, CITYSCAPES
from enet_seg_ros.nets import count_parameters
from enet_seg_ros.nets.espnet_reference import CheckpointError, read_checkpoint, rename_key
from enet_seg_ros.weights import NEGLIGIBLE_WEIGHT, load_model

torch.set_num_threads(1)  # 2 shared cores: more threads only oversubscribe them

CHECKPOINTS = {
    "cityscapes_espnet": ("cityscapes", "cityscapes/espnet_p_2_q_8.pth"),
    "cityscapes_espnet_c": ("cityscapes", "cityscapes/espnet_c_p_2_q_8.pth"),
    "camvid_espnet": ("camvid", "camvid/espnet_p_2_q_8_camvid.pth"),
}
FRAMES = ("frankfurt_000000_000294", "frankfurt_000000_000576")


def _run(module, argv) -> int:
    """Run one ``enet-seg`` sub-command module with its own parser (as the CLI does)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def imported(espnet_reference, tmp_path_factory):
    """Each published checkpoint converted once by ``import-weights``: name -> weights path."""
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for name, (dataset, rel) in CHECKPOINTS.items():
        path = out / (name + ".safetensors")
        assert _run(import_weights, ["--from", "espnet-reference", "--dataset", dataset,
                                     espnet_reference / rel, "--out", path]) == 0
        paths[name] = path
    return paths


@pytest.mark.parametrize("name,arch,num_classes,options", [
    ("cityscapes_espnet", "espnet", 20, {"p": 2, "q": 8, "decoder_concat_input": False}),
    ("cityscapes_espnet_c", "espnet_c", 20, {"p": 2, "q": 8}),
    ("camvid_espnet", "espnet", 12, {"p": 2, "q": 8, "decoder_concat_input": True}),
])
def test_checkpoints_import_and_load_strictly(imported, espnet_reference, name, arch, num_classes, options):
    model, card = load_model(imported[name])  # strict keys and shapes
    assert (card.arch, card.num_classes, card.options) == (arch, num_classes, options)
    dataset = CHECKPOINTS[name][0]
    spec = CITYSCAPES if dataset == "cityscapes" else CAMVID
    assert card.dataset == dataset
    assert card.class_names == list(spec.class_names) + ["void"]
    assert card.ignore_index == num_classes - 1
    assert card.normalization.channel_order == "bgr" and card.normalization.scale == pytest.approx(1 / 255)
    assert card.input_size == ([1024, 512] if dataset == "cityscapes" else [480, 360])
    assert "MIT" in card.source and "Mehta" in card.source
    if dataset == "cityscapes":
        assert card.train_id_to_id[:19] == list(spec.train_id_to_id)
    # The conversion is a pure renaming: every published tensor arrives unchanged, except values
    # below 2^-100 (the published level-1 convs hold subnormal ones), which arrive as zero.
    reference = read_checkpoint(espnet_reference / CHECKPOINTS[name][1])
    ours = model.state_dict()
    for key, value in reference.items():
        kept = value.abs() >= NEGLIGIBLE_WEIGHT if value.is_floating_point() else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(ours[rename_key(key, encoder_only=arch == "espnet_c")], torch.where(kept, value, 0)), key
    assert count_parameters(model) == sum(v.numel() for k, v in reference.items() if "running_" not in k)


def test_info_prints_card_and_parameters(imported, capsys):
    assert _run(info, [imported["cityscapes_espnet_c"]]) == 0
    out = capsys.readouterr().out
    assert '"arch": "espnet_c"' in out and "parameters: 349,449" in out


def _labels(model, card, image_bgr: np.ndarray) -> np.ndarray:
    """Preprocess exactly as the published weights expect (card facts) and return argmax labels."""
    n = card.normalization
    image = cv2.resize(image_bgr, tuple(card.input_size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x = (image - np.asarray(n.mean, np.float32)) / np.asarray(n.std, np.float32) * n.scale
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])
    return logits.argmax(1)[0].numpy()


def _fractions(labels: np.ndarray, rows, cols, num_classes: int) -> np.ndarray:
    h, w = labels.shape
    region = labels[int(rows[0] * h):int(rows[1] * h), int(cols[0] * w):int(cols[1] * w)]
    return np.bincount(region.ravel(), minlength=num_classes) / region.size


@pytest.mark.parametrize("name", ["cityscapes_espnet", "cityscapes_espnet_c"])
@pytest.mark.parametrize("frame", FRAMES)
def test_cityscapes_model_sees_a_street(imported, espnet_reference, name, frame):
    model, card = load_model(imported[name])
    image = cv2.imread(str(espnet_reference / "images" / (frame + "_leftImg8bit.png")), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (1024, 2048, 3)
    labels = _labels(model, card, image)
    assert labels.shape == (512, 1024)
    names = card.class_names
    road = _fractions(labels, (0.55, 0.8), (0.3, 0.7), card.num_classes)
    upper = _fractions(labels, (0.0, 0.35), (0.0, 1.0), card.num_classes)
    hood = _fractions(labels, (0.92, 1.0), (0.3, 0.7), card.num_classes)
    above = sum(upper[names.index(c)] for c in ("sky", "building", "vegetation"))
    print("{} {}: road in lower centre {:.3f}; sky+building+vegetation in upper part {:.3f}; "
          "void (ego vehicle) at the bottom {:.3f}".format(name, frame, road[0], above, hood[card.ignore_index]))
    assert road.argmax() == names.index("road") and road[names.index("road")] > 0.8
    assert above > 0.7 and upper[names.index("road")] < 0.02
    # The frames show the car's own bonnet at the bottom: Cityscapes "ego vehicle", the void output.
    assert hood.argmax() == card.ignore_index


def test_camvid_model_pixel_accuracy(imported, camvid_root):
    model, card = load_model(imported["camvid_espnet"])
    frames = sorted(p.name for p in (camvid_root / "val").glob("*.png"))
    assert frames, "no CamVid val frames"
    accuracies = []
    for frame in (frames[0], frames[len(frames) // 2], frames[-1]):
        image = cv2.imread(str(camvid_root / "val" / frame), cv2.IMREAD_COLOR)
        truth = cv2.imread(str(camvid_root / "valannot" / frame), cv2.IMREAD_UNCHANGED)
        labels = _labels(model, card, image)
        assert labels.shape == truth.shape
        valid = truth != card.ignore_index
        accuracies.append(float((labels[valid] == truth[valid]).mean()))
        print("camvid {}: pixel accuracy {:.3f}".format(frame, accuracies[-1]))
    assert min(accuracies) > 0.7


def test_wrong_dataset_is_refused(espnet_reference, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="espnet_p_2_q_8.pth.*20 outputs.*camvid expects 12"):
        _run(import_weights, ["--from", "espnet-reference", "--dataset", "camvid",
                              espnet_reference / "cityscapes/espnet_p_2_q_8.pth", "--out", out])
    assert not out.exists()


def test_bad_checkpoints_are_named(espnet_reference, tmp_path):
    def convert(path):
        _run(import_weights, ["--from", "espnet-reference", "--dataset", "cityscapes", path,
                              "--out", tmp_path / "x.safetensors"])

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((espnet_reference / "cityscapes/espnet_p_2_q_8.pth").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated.pth.*not a readable"):
        convert(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pth.*no ESPNet classifier"):
        convert(foreign)
    # Right family, wrong structure: one ESP module removed from level 3.
    state = read_checkpoint(espnet_reference / "cityscapes/espnet_p_2_q_8.pth")
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("encoder.level3.3.")}, broken)
    with pytest.raises(CheckpointError, match="broken.pth.*ESP modules"):
        convert(broken)
    copy = tmp_path / "copy.pth"
    shutil.copy(espnet_reference / "cityscapes/espnet_p_2_q_8.pth", copy)
    with pytest.raises(SystemExit):  # refused by the parser (common_args.output_file), before any work
        _run(import_weights, ["--from", "espnet-reference", "--dataset", "cityscapes", copy,
                              "--out", tmp_path / "x.pt"])
    assert not (tmp_path / "x.pt").exists()


def test_cli_reports_bad_files_in_one_line(tmp_path, capsys, monkeypatch):
    from enet_seg_ros import cli

    # Only this file's sub-commands: the others are developed separately and tested on their own.
    monkeypatch.setattr(cli, "COMMANDS", tuple(c for c in cli.COMMANDS if c[0] in ("import-weights", "info")))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["import-weights", "--from", "espnet-reference", "--dataset", "cityscapes", str(bad),
                     "--out", str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.pth" in err and len(err.splitlines()) == 1
    assert cli.main(["info", str(tmp_path / "absent.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "absent.safetensors" in err and "not found" in err
