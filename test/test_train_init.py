"""``enet-seg train --option`` and ``--init`` across builder options: ESPNet's published CamVid
decoder (``decoder_concat_input``) initialised from the Cityscapes-style one (its last merge's
kernel copied, the new image channels zero), trained and recorded; wrong options and
incompatible shapes are clear user errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from enet_seg_ros import cli
from enet_seg_ros.data.labels import CAMVID
from enet_seg_ros.nets import build_model
from enet_seg_ros.train.init_weights import widen_state_dict
from enet_seg_ros.weights import ModelCard, load_model, read_card, save_model
from model_fixtures import randomize
from test_datasets import make_camvid

C = len(CAMVID.class_names)


def test_widening_copies_and_zero_fills():
    old = randomize(build_model("espnet", C), 0)
    new = randomize(build_model("espnet", C, decoder_concat_input=True), 1)
    state = old.state_dict()
    before = state["level1_fuse.conv.weight"].clone()
    assert widen_state_dict(new, state) == ["level1_fuse.conv.weight"]
    w = state["level1_fuse.conv.weight"]
    assert w.shape == (C, C + 16 + 3, 3, 3)
    assert torch.equal(w[:, :C + 16], before) and torch.count_nonzero(w[:, C + 16:]) == 0
    new.load_state_dict(state)
    x = torch.rand(2, 3, 48, 64) * 4 - 2
    with torch.no_grad():
        base = new(x)
        # the image maps reach the last merge: zero kernels add nothing, non-zero ones do
        new.level1_fuse.conv.weight[:, C + 16:] = 0.5
        assert (new(x) - base).abs().max() > 1e-3
    # a plain conv of the same shape is left alone, so the same weights load unchanged
    same = old.state_dict()
    assert widen_state_dict(build_model("espnet", C), same) == []


def test_other_shape_differences_are_errors():
    enet = build_model("enet", C)
    state = build_model("enet", C + 1).state_dict()
    with pytest.raises(ValueError, match="only a convolution with extra input channels"):
        widen_state_dict(enet, state)
    # narrowing is not widening
    narrow = build_model("espnet", C)
    with pytest.raises(ValueError, match="level1_fuse"):
        widen_state_dict(narrow, build_model("espnet", C, decoder_concat_input=True).state_dict())


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=6, n_val=2)


def _train(root: Path, out: Path, *extra: str) -> int:
    return cli.main(["train", "--dataset", "camvid", "--data-root", str(root), "--out", str(out), "--arch", "espnet",
                     "--size", "64x48", "--batch-size", "3", "--threads", "1", "--stages", "decoder",
                     "--epochs", "1", "--no-compile", *extra])


def test_option_trains_and_is_recorded(camvid, tmp_path):
    init = tmp_path / "plain.safetensors"
    plain = randomize(build_model("espnet", C), 2)
    save_model(init, plain, ModelCard.for_dataset("espnet", CAMVID, [64, 48]))
    out = tmp_path / "run"
    assert _train(camvid, out, "--option", "decoder_concat_input=true", "--init", str(init)) == 0
    card = read_card(out / "best.safetensors")
    assert card.options.get("decoder_concat_input") is True
    assert card.recipe["options"] == {"decoder_concat_input": True}
    model, _ = load_model(out / "best.safetensors")
    assert model.decoder_concat_input and model.level1_fuse.conv.weight.shape[1] == 16 + 3 + C
    # the new input channels started at zero and were trained
    assert torch.count_nonzero(model.level1_fuse.conv.weight[:, -3:]) > 0


def test_option_without_value_is_rejected_by_the_parser(camvid, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _train(camvid, tmp_path / "bad", "--option", "decoder_concat_input")
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(camvid, tmp_path / "bad", "--option", "segnet.decoder_concat_input=true")
    assert "[ARCH.]KEY=VALUE" in capsys.readouterr().err


def test_arch_prefix_limits_an_option_to_its_arch():
    from enet_seg_ros.commands.train import _option, _options

    given = [_option("espnet.decoder_concat_input=true"), _option("espnet.p=3")]
    assert _options("espnet", given) == {"decoder_concat_input": True, "p": 3}
    assert _options("enet", given) == {}
    with pytest.raises(ValueError, match="does not fit enet"):
        _options("enet", [_option("decoder_concat_input=true")])


def test_unknown_option_is_a_user_error(camvid, tmp_path, capsys):
    assert _train(camvid, tmp_path / "bad", "--option", "no_such_option=1") == 2
    assert "does not fit espnet" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "best.safetensors").exists()
