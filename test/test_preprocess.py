"""Preprocess: the one input transform of a model card, shared by the engine graph, the bench
baseline and (later) the trainer's validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from enet_seg_ros.data.labels import CAMVID
from enet_seg_ros.data.transforms import normalize
from enet_seg_ros.engine.graph import InferenceGraph
from enet_seg_ros.engine.preprocess import Preprocess
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, Normalization

RNG = np.random.default_rng(3)


def _card(order="bgr", policy="stretch"):
    norm = Normalization(channel_order=order, mean=[72.4, 82.9, 73.2], std=[47.7, 50.5, 49.5], scale=1.0)
    return ModelCard.for_dataset("enet", CAMVID, [64, 48], normalization=norm, resize_policy=policy)


def test_from_card_and_the_training_normalisation_agree():
    card = _card("bgr")
    pre = Preprocess.from_card(card)
    assert (pre.input_size, pre.channel_order, pre.resize_policy) == ((64, 48), "bgr", "stretch")
    frame = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # already at model size: no resize
    norm = card.normalization
    expected = normalize(frame, norm.channel_order, norm.mean, norm.std, norm.scale)
    np.testing.assert_allclose(pre(frame, "rgb"), expected, rtol=0, atol=1e-5)
    # A BGR frame needs no swap for a BGR network: same tensor.
    np.testing.assert_allclose(pre(np.ascontiguousarray(frame[..., ::-1]), "bgr"), expected, rtol=0, atol=1e-5)


def test_engine_graph_normalises_with_the_same_numbers():
    card = _card("rgb")
    pre = Preprocess.from_card(card)
    graph = InferenceGraph(build_model("enet", len(CAMVID.class_names)).eval(), card, output="logits")
    assert torch.equal(graph.mean.flatten(), torch.tensor(pre.mean, dtype=torch.float32))
    assert torch.equal(graph.factor.flatten(), torch.from_numpy(pre.factor))
    frame = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    x = (torch.from_numpy(frame)[None].permute(0, 3, 1, 2).float() - graph.mean) * graph.factor
    np.testing.assert_array_equal(x[0].numpy(), pre(frame))


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "center_crop"])
def test_frames_of_other_sizes_follow_the_cards_resize_policy(policy):
    pre = Preprocess.from_card(_card("rgb", policy))
    frame = np.full((100, 300, 3), 200, np.uint8)
    model = pre.to_model_input(frame)
    assert model.shape == (48, 64, 3)
    if policy == "letterbox":  # padded rows carry the mean colour, which normalises to ~0
        assert tuple(model[0, 0]) == pre.fill and np.abs(pre(frame)[:, 0, 0]).max() < 0.02
    else:
        assert (model == 200).all()
