"""Weights files: safetensors + model card round trip and clear errors for bad files."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from enet_seg_ros.data.labels import CAMVID, CITYSCAPES
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import (CARD_KEY, ModelCard, Normalization, WeightsError, NEGLIGIBLE_WEIGHT, flush_negligible, load_model, read_card,
                                  save_model, zero_negligible_)

torch.set_num_threads(1)  # 2 shared cores: more threads only oversubscribe them


def _card(arch: str = "espnet_c", spec=CAMVID, **kwargs) -> ModelCard:
    return ModelCard.for_dataset(arch, spec, [480, 360], normalization=Normalization("bgr", [1, 2, 3], [4, 5, 6], 0.5),
                                 **kwargs)


def _saved(tmp_path, arch: str = "espnet_c", spec=CAMVID, **options):
    torch.manual_seed(0)
    model = build_model(arch, spec.num_classes, **options).eval()
    card = _card(arch, spec, options=options, recipe={"epochs": 3}, metrics={"miou": 0.5})
    path = save_model(tmp_path / "w.safetensors", model, card)
    return path, model, card


def test_round_trip_keeps_tensors_card_and_outputs(tmp_path):
    path, model, card = _saved(tmp_path, "espnet", CAMVID, p=1, q=2)
    loaded, loaded_card = load_model(path)
    assert loaded_card == card
    assert loaded_card.options == {"p": 1, "q": 2}
    assert not loaded.training
    assert len(loaded.encoder.level3) == 2  # options rebuilt the same architecture
    ref, got = model.state_dict(), loaded.state_dict()
    assert list(ref) == list(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # Human-readable copy of the card beside the weights; the cheap reader needs no tensors.
    assert json.loads((tmp_path / "w.card.json").read_text())["arch"] == "espnet"
    assert read_card(path) == card


SUBNORMAL = 1e-40  # float32: below finfo.tiny (1.18e-38), above 0
TINY = 1e-33  # a normal float32 whose products with small activations are subnormal


def _negligible(state) -> int:
    return sum(int(((v != 0) & (v.abs() < NEGLIGIBLE_WEIGHT)).sum())
               for v in state.values() if v.is_floating_point())


def test_negligible_weights_are_saved_as_zero_without_touching_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("espnet_c", CAMVID.num_classes).eval()
    w = model.encoder.level1.conv.weight
    with torch.no_grad():
        w[0, 0, 0, :] = torch.tensor([SUBNORMAL, -TINY, 0.5])
        w[0, 0, 1, :] = torch.tensor([1e-29, -1e-20, 0.0])  # above the threshold: kept
    path = save_model(tmp_path / "w.safetensors", model, _card())
    from safetensors.torch import load_file

    on_disk = load_file(str(path))
    assert _negligible(on_disk) == 0
    assert on_disk["encoder.level1.conv.weight"][0, 0, 0].tolist() == [0.0, 0.0, 0.5]
    assert torch.equal(on_disk["encoder.level1.conv.weight"][0, 0, 1], w[0, 0, 1])
    assert w[0, 0, 0, 0].item() == pytest.approx(SUBNORMAL, rel=1e-3)  # the caller's model is unchanged


def test_negligible_weights_in_a_foreign_file_load_as_zero_with_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model("espnet_c", CAMVID.num_classes).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.classifier.weight"][:1] = SUBNORMAL  # as an older save_model or another tool wrote them
    state["encoder.classifier.weight"][1:2] = -TINY
    n = state["encoder.classifier.weight"][:2].numel()
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata={CARD_KEY: _card().to_json()})
    with caplog.at_level("WARNING", logger="enet_seg_ros.weights"):
        loaded, _ = load_model(path)
    assert _negligible(loaded.state_dict()) == 0
    assert "{} negligible weights".format(n) in caplog.text and str(path) in caplog.text
    # Same labels as the unflushed network: their contribution is below float32's smallest normal.
    model.load_state_dict(state)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), loaded(x).argmax(1))


def test_flush_negligible_counts_per_dtype_and_skips_integers():
    state = {"f32": torch.tensor([SUBNORMAL, TINY, 1e-29, 1.0, 0.0]),
             "f16": torch.tensor([1e-6, 1e-3], dtype=torch.float16),
             "bf16": torch.tensor([1e-39, 1e-33, 1.0], dtype=torch.bfloat16), "steps": torch.tensor([3])}
    # float32 and bfloat16: below 2^-100; float16: only its subnormals (1e-6 < its tiny 6.1e-5)
    assert flush_negligible(state) == 5
    assert state["f32"].tolist() == [0.0, 0.0, pytest.approx(1e-29), 1.0, 0.0]
    assert state["f16"][0] == 0 and state["f16"][1] > 0
    assert state["bf16"].tolist() == [0.0, 0.0, 1.0] and state["steps"].tolist() == [3]
    assert flush_negligible(state) == 0


def test_zero_negligible_changes_a_live_module_in_place():
    torch.manual_seed(0)
    model = build_model("espnet_c", CAMVID.num_classes)
    w = model.encoder.level1.conv.weight
    bn = model.encoder.level1.bn
    with torch.no_grad():
        w.view(-1)[:3] = torch.tensor([SUBNORMAL, -TINY, 1e-20])
        bn.running_var[0] = SUBNORMAL  # buffers too
    ref = w.data_ptr()
    assert zero_negligible_(model) == 3
    assert w.data_ptr() == ref and w.view(-1)[:3].tolist() == [0.0, 0.0, pytest.approx(1e-20)]
    assert bn.running_var[0] == 0 and bn.num_batches_tracked.dtype == torch.long
    assert zero_negligible_(model) == 0


def test_cityscapes_card_carries_label_mapping(tmp_path):
    path, _, _ = _saved(tmp_path, "espnet_c", CITYSCAPES)
    card = read_card(path)
    assert card.num_classes == 19 and card.train_id_to_id[0] == 7 and card.train_id_to_id[18] == 33
    assert card.normalization.channel_order == "bgr" and card.normalization.scale == 0.5


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="nope.safetensors.*not found"):
        load_model(missing)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_is_named(tmp_path, keep):
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        load_model(bad)


def test_foreign_file_is_named(tmp_path):
    bad = tmp_path / "model.safetensors"
    torch.save({"x": torch.zeros(2)}, bad)  # a pickle, not safetensors: never unpickled
    with pytest.raises(WeightsError, match="model.safetensors.*not a readable safetensors"):
        load_model(bad)


def test_wrong_class_count_is_a_shape_mismatch(tmp_path):
    model = build_model("espnet_c", 20)
    card = _card("espnet_c", CAMVID)  # 11 classes
    path = tmp_path / "shape.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={CARD_KEY: card.to_json()})
    with pytest.raises(WeightsError, match=r"shape.safetensors.*shape mismatch.*\(20, 256, 1, 1\)"):
        load_model(path)


def test_card_arch_mismatch_is_named(tmp_path):
    model = build_model("erfnet", CAMVID.num_classes)
    path = tmp_path / "arch.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={CARD_KEY: _card("enet").to_json()})
    with pytest.raises(WeightsError, match="arch.safetensors.*missing .*unexpected"):
        load_model(path)


def _with_card(tmp_path, card_json: str):
    path = tmp_path / "card.safetensors"
    model = build_model("espnet_c", CAMVID.num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={CARD_KEY: card_json})
    return path


@pytest.mark.parametrize("change,message", [
    ({"palette": [[0, 0, 0]]}, "palette"),
    ({"class_names": ["a"]}, "class names"),
    ({"input_size": [480]}, "input_size"),
    ({"normalization": {"channel_order": "hsv"}}, "normalization"),
    ({"normalization": {"std": [1, 0, 1]}}, "normalization"),
    ({"train_id_to_id": [1, 2]}, "train_id_to_id"),
    ({"arch": "segnet"}, "arch"),
    ({"options": {"bogus": 1}}, "options"),
    ({"format": 99}, "newer"),
    ({"surprise": 1}, "invalid model card"),
    ({"num_classes": "eleven"}, "invalid model card"),
])
def test_bad_card_fields_are_named(tmp_path, change, message):
    data = json.loads(_card().to_json())
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = _with_card(tmp_path, json.dumps(data))
    with pytest.raises(WeightsError, match="card.safetensors") as info:
        load_model(path)
    assert message in str(info.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unparsable_card_is_named(tmp_path, text):
    with pytest.raises(WeightsError, match="card.safetensors.*card"):
        load_model(_with_card(tmp_path, text))


def test_file_without_card_is_named(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="bare.safetensors.*no model card"):
        load_model(path)


def test_invalid_card_is_refused_at_save(tmp_path):
    card = _card()
    card.palette = card.palette[:-1]
    with pytest.raises(WeightsError, match="palette"):
        save_model(tmp_path / "x.safetensors", build_model("espnet_c", CAMVID.num_classes), card)
    assert not (tmp_path / "x.safetensors").exists()


def test_shipped_model_names_resolve_and_unknown_names_list_them(tmp_path, monkeypatch):
    from enet_seg_ros.weights import REPO_MODELS_DIR, default_weights_path, resolve_weights, shipped_models

    assert "enet_camvid" in shipped_models()
    default = default_weights_path()
    assert default == REPO_MODELS_DIR / "enet_camvid.safetensors" and default.is_file()
    assert resolve_weights(None) == resolve_weights("") == default
    assert resolve_weights("enet_camvid") == resolve_weights("enet_camvid.safetensors") == default
    # An existing file wins over a shipped name, also when it is a bare name in the working dir.
    path, _, _ = _saved(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "enet_camvid.safetensors").write_bytes(path.read_bytes())
    assert resolve_weights("enet_camvid.safetensors").resolve() == (tmp_path / "enet_camvid.safetensors")
    with pytest.raises(WeightsError, match=r"no_such_model: weights file not found, and not a shipped model "
                                           r"\(shipped: .*enet_camvid"):
        resolve_weights("no_such_model")
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve_weights(tmp_path / "missing" / "w.safetensors")
    # The Segmenter takes the name too.
    from enet_seg_ros.engine import Segmenter

    assert Segmenter("enet_camvid", backend="torch", input_size=(96, 64), warmup=0).card.arch == "enet"
