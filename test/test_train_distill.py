"""Knowledge distillation (``enet-seg train --distill``): the loss term by hand, the teacher's own
preprocessing without its logit offsets, and a real run pulled towards its teacher."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from enet_seg_ros import cli
from enet_seg_ros.data.labels import CAMVID
from enet_seg_ros.nets import build_model
from enet_seg_ros.train.distill import Teacher, distillation_sum
from enet_seg_ros.train.inputs import pixel_weights
from enet_seg_ros.weights import ModelCard, Normalization, load_model, save_model
from model_fixtures import randomize
from test_datasets import make_camvid

BASE = ["--size", "64x48", "--batch-size", "4", "--threads", "1", "--stages", "decoder", "--seed", "3",
        "--no-compile"]
C = len(CAMVID.class_names)


def train(root: Path, out: Path, *extra: str) -> int:
    return cli.main(["train", "--dataset", "camvid", "--data-root", str(root), "--out", str(out), "--arch", "enet",
                     *BASE, *extra])


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=8, n_val=4)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """An ERFNet with random (but not identity) weights: labels that no CamVid frame agrees with."""
    torch.manual_seed(11)
    model = randomize(build_model("erfnet", C), seed=11)
    card = ModelCard.for_dataset("erfnet", CAMVID, [64, 48],
                                 normalization=Normalization("bgr", [90.0, 100.0, 110.0], [60.0, 70.0, 80.0]))
    return save_model(tmp_path_factory.mktemp("teacher") / "teacher.safetensors", model, card)


def test_distillation_sum_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (2, 4, 5), generator=g)
    y[0, 0, :] = 255  # not scored
    w = torch.tensor([1.0, 2.0, 0.5])
    temp = 2.0
    p_t = torch.softmax(t / temp, 1)
    kl = (p_t * (torch.log_softmax(t / temp, 1) - torch.log_softmax(s / temp, 1))).sum(1)
    keep = y != 255
    expected = (kl[keep] * w[y[keep]]).sum() * temp ** 2
    assert distillation_sum(s, t, pixel_weights(y, w, 255), temp).item() == pytest.approx(expected.item(), rel=1e-5)
    # Unweighted: every labelled pixel counts once; a student equal to its teacher costs nothing.
    assert distillation_sum(s, t, pixel_weights(y, None, 255), temp).item() == pytest.approx(
        (kl[keep].sum() * temp ** 2).item(), rel=1e-5)
    assert distillation_sum(t, t, pixel_weights(y, w, 255), temp).abs().item() < 1e-5
    # Teacher logits at another resolution are resized bilinearly to the student's.
    small = torch.randn(2, 3, 2, 3, generator=g)
    resized = F.interpolate(small, size=(4, 5), mode="bilinear", align_corners=False)
    assert distillation_sum(s, small, pixel_weights(y, w, 255), temp).item() == pytest.approx(
        distillation_sum(s, resized, pixel_weights(y, w, 255), temp).item(), rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        distillation_sum(s, torch.randn(2, 4, 4, 5), pixel_weights(y, w, 255), temp)


def test_distillation_gradient_moves_the_student_to_the_teacher():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(1, 4, 6, 6, generator=g) * 3
    s = torch.zeros(1, 4, 6, 6, requires_grad=True)
    y = torch.zeros(1, 6, 6, dtype=torch.long)
    before = distillation_sum(s, t, pixel_weights(y, None, 255), 1.0).item()
    opt = torch.optim.SGD([s], lr=1.0)
    for _ in range(50):
        opt.zero_grad()
        distillation_sum(s, t, pixel_weights(y, None, 255), 1.0).backward()
        opt.step()
    after = distillation_sum(s, t, pixel_weights(y, None, 255), 1.0).item()
    assert after < 0.2 * before
    assert (s.argmax(1) == t.argmax(1)).float().mean() > 0.9


def test_teacher_uses_its_own_preprocessing_and_no_offsets(teacher_file, tmp_path):
    model, card = load_model(teacher_file)
    model.set_logit_offset([5.0] + [0.0] * (C - 1))
    card = dataclasses.replace(card, options=dict(card.options, logit_offset=True))
    with_offsets = save_model(tmp_path / "offset.safetensors", model, card)
    teacher = Teacher(str(with_offsets), CAMVID.class_names, torch.device("cpu"), bf16=False)
    assert teacher.model.logit_offset is None and not teacher.model.training
    rgb = torch.rand(2, 3, 48, 64) * 255
    raw, _ = load_model(teacher_file)
    bgr = rgb.flip(1)
    mean, std = torch.tensor([90.0, 100.0, 110.0]).view(1, 3, 1, 1), torch.tensor([60.0, 70.0, 80.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = raw.eval()((bgr - mean) / std)
    assert torch.allclose(teacher.logits(rgb), expected, atol=1e-4)
    info = teacher.describe()
    assert info["arch"] == "erfnet" and len(info["sha256"]) == 64


def test_teacher_with_other_classes_is_refused(camvid, tmp_path, capsys):
    from enet_seg_ros.data.labels import CITYSCAPES

    other = save_model(tmp_path / "cityscapes.safetensors", build_model("enet", len(CITYSCAPES.class_names)),
                       ModelCard.for_dataset("enet", CITYSCAPES, [64, 48]))
    assert train(camvid, tmp_path / "run", "--epochs", "1", "--distill", str(other)) == 2
    err = capsys.readouterr().err
    assert "distillation teacher" in err and "same classes" in err
    assert train(camvid, tmp_path / "run2", "--epochs", "1", "--distill", str(other),
                 "--distill-temperature", "0") == 2
    assert "--distill-temperature" in capsys.readouterr().err


def _agreement(weights: Path, teacher: Teacher, root: Path) -> float:
    """Share of train pixels where the student's labels (its own preprocessing) equal the teacher's."""
    import cv2

    from enet_seg_ros.engine.preprocess import Preprocess

    model, card = load_model(weights)
    model.eval()
    pre = Preprocess.from_card(card)
    same = total = 0
    for path in sorted((root / "train").glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            student = model(torch.from_numpy(pre(rgb, "rgb"))[None]).argmax(1)
        t = teacher.logits(torch.from_numpy(rgb).permute(2, 0, 1)[None].float()).argmax(1)
        same += int((student == t).sum())
        total += t.numel()
    return same / total


def test_distilled_run_follows_its_teacher(camvid, teacher_file, tmp_path):
    """Same seed and data: the distilled student agrees with the teacher far more than the plain
    one, and its card names the teacher."""
    plain, distilled = tmp_path / "plain", tmp_path / "distilled"
    assert train(camvid, plain, "--epochs", "4", "--lr", "5e-3") == 0
    assert train(camvid, distilled, "--epochs", "4", "--lr", "5e-3", "--distill", str(teacher_file),
                 "--distill-weight", "20", "--distill-temperature", "1") == 0
    teacher = Teacher(str(teacher_file), CAMVID.class_names, torch.device("cpu"), bf16=False)
    a_plain = _agreement(plain / "best.safetensors", teacher, camvid)
    a_distilled = _agreement(distilled / "best.safetensors", teacher, camvid)
    assert a_distilled > a_plain + 0.1, (a_plain, a_distilled)
    _, card = load_model(distilled / "best.safetensors")
    info = card.metrics["distilled_from"]
    assert info["weights"] == "teacher.safetensors" and info["sha256"] == teacher.sha256
    assert info["weight"] == 20 and info["temperature"] == 1
    assert card.recipe["distill"] == str(teacher_file)
    _, plain_card = load_model(plain / "best.safetensors")
    assert "distilled_from" not in plain_card.metrics
