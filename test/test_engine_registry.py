"""The backend registry: entries, probes, the auto chain as data, and every list derived from it."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from enet_seg_ros.engine import Segmenter, registry
from enet_seg_ros.engine.backends.base import FAIL_ENV, Backend, BackendUnavailable
from enet_seg_ros.engine.registry import (AUTO_CHAIN, AutoStep, BackendEntry, backend_choices, chain_for,
                                          create_backend, get_backend, list_backends, probe, register_backend)
from enet_seg_ros.engine.source import load_source
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = build_model("enet", 4).eval()
    card = ModelCard(arch="enet", num_classes=4, class_names=list("abcd"), palette=[[i, i, i] for i in range(4)],
                     input_size=[64, 48])
    return load_source((model, card))


class _Constant(Backend):
    """A tiny real backend: every pixel gets label 3."""

    name = "constant"

    def __init__(self, source, input_size, device=None, precision=None, **_unused):
        super().__init__()
        self.device, self.precision, self.input_size = device or "cpu", precision or "fp32", tuple(input_size)

    def infer(self, batch):
        return {"labels": np.full(batch.shape[:3], 3, np.uint8)}


@pytest.fixture
def constant_backend():
    state = {"why": None}
    entry = register_backend(BackendEntry(name="constant", devices=("cpu",), probe=lambda kind: state["why"],
                                          factory=lambda: _Constant, precisions={"cpu": ("fp32",)}))
    yield entry, state
    registry._REGISTRY.pop("constant", None)


def test_every_builtin_backend_has_one_entry():
    assert list_backends()[:4] == ("torch", "onnxruntime", "openvino", "tensorrt")
    assert backend_choices()[0] == "auto" and backend_choices()[1:] == list_backends()
    for name in list_backends():
        entry = get_backend(name)
        assert entry.name == name and entry.devices and callable(entry.probe) and callable(entry.factory)
        assert issubclass(entry.factory(), Backend) and entry.factory().name == name
    with pytest.raises(ValueError, match="unknown backend 'nope'.*torch"):
        get_backend("nope")


def test_probes_say_why_a_backend_cannot_run():
    assert probe("torch", "cpu") is None and probe("onnxruntime", "cpu") is None
    assert "runs on the CPU only" in probe("openvino", "cuda")
    if not torch.cuda.is_available():
        assert "CUDA" in probe("torch", "cuda")
        assert probe("tensorrt", "cuda")  # a reason, not None
    rows = registry.probe_all()
    assert {(r["backend"], r["device"]) for r in rows} >= {("torch", "cpu"), ("onnxruntime", "cpu")}
    assert all(r["available"] == (r["reason"] == "") for r in rows)


def test_openvino_joins_auto_only_on_x86(monkeypatch):
    import sys

    pytest.importorskip("openvino")
    monkeypatch.delitem(sys.modules, "enet_seg_ros.train.trainer", raising=False)  # not a training process
    assert ("openvino", "cpu") in [tuple(s) for s in AUTO_CHAIN]
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert probe("openvino", "cpu") is None  # explicit use is still allowed
    assert "x86" in probe("openvino", "cpu", for_auto=True)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert probe("openvino", "cpu", for_auto=True) is None


def test_auto_chain_is_data(source, monkeypatch, constant_backend):
    assert chain_for("auto", "cpu") == [(s.backend, s.device) for s in AUTO_CHAIN if s.device == "cpu"]
    assert chain_for("auto", "cuda:1")[0] == ("tensorrt", "cuda:1")
    assert chain_for("torch", None) == [("torch", "cuda"), ("torch", "cpu")]
    # Reordering the data reorders selection: a registered backend first, then torch.
    monkeypatch.setattr(registry, "AUTO_CHAIN", (AutoStep("constant", "cpu"), AutoStep("torch", "cpu")))
    backend = create_backend(source, (64, 48), backend="auto", device="cpu")
    assert backend.name == "constant" and backend.skipped == {}
    assert backend.selection["via_auto_chain"] is True
    # Its probe saying no skips it with the reason recorded.
    constant_backend[1]["why"] = "constant backend switched off"
    backend = create_backend(source, (64, 48), backend="auto", device="cpu")
    assert backend.name == "torch" and backend.skipped == {"constant-cpu": "constant backend switched off"}


def test_registered_backend_runs_a_segmenter(constant_backend, source):
    seg = Segmenter(source, backend="constant", strict=True, warmup=1)
    assert seg.backend_name == "constant"
    assert (seg.segment(np.zeros((48, 64, 3), np.uint8)).labels == 3).all()
    assert "constant on cpu (requested)" in seg.selection_reason


def test_strict_explicit_backend_raises_with_every_reason(source, constant_backend):
    constant_backend[1]["why"] = "switched off"
    with pytest.raises(RuntimeError, match="constant-cpu: switched off"):
        create_backend(source, (64, 48), backend="constant", strict=True)


def test_fail_hook_is_registry_level_not_segmenter_signature(source, monkeypatch, caplog):
    import inspect

    assert "fail_backends" not in inspect.signature(Segmenter.__init__).parameters
    caplog.set_level(logging.WARNING, logger="enet_seg_ros")
    monkeypatch.setenv(FAIL_ENV, "onnxruntime,openvino")
    backend = create_backend(source, (64, 48), backend="auto", device="cpu")
    assert backend.name == "torch"
    assert "forced to fail" in backend.skipped["onnxruntime-cpu"]
    assert "onnxruntime-cpu failed to initialise" in caplog.text


def test_unavailable_precision_falls_through_the_chain(source):
    with pytest.raises(RuntimeError, match="torch-cpu: torch fp16 needs CUDA"):
        create_backend(source, (64, 48), backend="auto", precision="fp16", device="cpu")
    with pytest.raises(BackendUnavailable):
        get_backend("onnxruntime").factory()(source, (64, 48), device="cpu", precision="int8")


def test_user_facing_lists_come_from_the_registry():
    choices = backend_choices()
    yaml_line = next(line for line in (REPO / "config" / "seg.yaml").read_text().splitlines()
                     if line.strip().startswith("backend:"))
    assert re.findall(r"[a-z]+", yaml_line.split("#")[1].split("(")[0]) == list(choices)
    for launch in ("seg.launch.py", "bag_eval.launch.py"):
        text = (REPO / "launch" / launch).read_text()
        assert "backend_choices()" in text and "onnxruntime | openvino" not in text
    from enet_seg_ros.commands import common_args, predict

    for module in (common_args, predict):
        assert "backend_choices()" in Path(module.__file__).read_text()
    from enet_seg_ros.ros.seg_node import PARAMS

    spec = next(p for p in PARAMS if p.name == "backend")
    assert tuple(spec.choices) == choices
    assert spec.problem("nope") and spec.problem("openvino") is None


def test_auto_keeps_openvino_out_of_training_processes(monkeypatch):
    import sys
    import types

    pytest.importorskip("openvino")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.delitem(sys.modules, "enet_seg_ros.train.trainer", raising=False)
    assert probe("openvino", "cpu", for_auto=True) is None
    monkeypatch.setitem(sys.modules, "enet_seg_ros.train.trainer", types.ModuleType("trainer"))
    assert "train" in probe("openvino", "cpu", for_auto=True)
    assert probe("openvino", "cpu") is None  # by name it still runs
