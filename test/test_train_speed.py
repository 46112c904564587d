"""The trainer's per-arch speed settings (``enet_seg_ros.train.speed``): memory format, fused Adam,
the compile decision and ``--compile`` / ``--no-compile``, glibc malloc tuning; real training steps,
no timing."""
from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from enet_seg_ros import cli
from enet_seg_ros.nets import build_model
from enet_seg_ros.train import speed
from enet_seg_ros.train.trainer import Trainer, TrainConfig
from test_datasets import make_camvid

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=8, n_val=4)


def test_memory_format_per_arch_and_device():
    assert speed.memory_format_for("espnet", CPU) == torch.contiguous_format
    assert speed.memory_format_for("espnet_c", CPU) == torch.contiguous_format
    for arch in ("enet", "erfnet"):
        assert speed.memory_format_for(arch, CPU) == torch.channels_last
    for arch in ("enet", "erfnet", "espnet"):  # CUDA: the tensor-core layout for every arch
        assert speed.memory_format_for(arch, torch.device("cuda")) == torch.channels_last


@pytest.mark.parametrize("arch,fmt", [("espnet", torch.contiguous_format), ("enet", torch.channels_last)])
def test_trainer_steps_in_the_arch_memory_format(camvid, tmp_path, arch, fmt):
    """A real training step of the trainer: model and batch in the arch's format, the loss finite."""
    t = Trainer(TrainConfig(arch=arch, dataset="camvid", data_root=str(camvid), out=str(tmp_path / arch),
                            size=(64, 48), batch_size=4, threads=1, stages="decoder", epochs=1))
    t.out.mkdir(parents=True)
    t._prepare_data()
    model = t._build_model()
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4
             and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=fmt) for w in convs)
    x, y = t._batch(t._passes()[0], [0, 1, 2, 3], 0, 0)
    assert x.is_contiguous(memory_format=fmt)
    opt = t._optimizer(model)
    assert opt.defaults.get("fused") is True
    before = copy.deepcopy(model.state_dict())
    loss = t._step(model, opt, x, y, "decoder")
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fused_adam_is_the_same_update():
    """speed.adam (fused) and the reference Adam give the same weights over real training steps."""
    torch.manual_seed(0)
    a = build_model("espnet_c", 11)
    b = copy.deepcopy(a)
    opt_a = speed.adam(a.parameters(), lr=5e-4, weight_decay=2e-4)
    opt_b = torch.optim.Adam(b.parameters(), lr=5e-4, weight_decay=2e-4, foreach=False)
    assert opt_a.defaults.get("fused") is True
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 3, 48, 64, generator=gen)
        y = torch.randint(0, 11, (2, 48, 64), generator=gen)
        for model, opt in ((a, opt_a), (b, opt_b)):
            torch.manual_seed(2)  # same dropout masks
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_decision():
    long_run = 10 ** 5
    assert speed.compile_decision(True, "erfnet", CPU, 1)[0] is True  # asked: always
    assert speed.compile_decision(False, "enet", CPU, long_run)[0] is False
    assert speed.compile_decision(None, "enet", CPU, long_run)[0] is True
    assert speed.compile_decision(None, "espnet", CPU, long_run)[0] is True
    on, why = speed.compile_decision(None, "erfnet", CPU, long_run)
    assert not on and "erfnet" in why
    on, why = speed.compile_decision(None, "enet", CPU, speed.COMPILE_MIN_STEPS - 1)
    assert not on and "too few" in why
    assert speed.compile_decision(None, "enet", CPU, speed.COMPILE_MIN_STEPS)[0] is True
    on, why = speed.compile_decision(None, "enet", torch.device("cuda"), long_run)
    assert not on and "cuda" in why


def test_compile_flags(camvid, tmp_path, caplog):
    """--compile / --no-compile / neither (auto) reach the config; auto is off for a short run."""
    parser = cli.build_parser()
    base = ["train", "--arch", "enet", "--dataset", "camvid", "--data-root", "x", "--out", "y"]
    assert parser.parse_args(base).compile is None
    assert parser.parse_args(base + ["--compile"]).compile is True
    assert parser.parse_args(base + ["--no-compile"]).compile is False
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="enet_seg_ros.train"):
        assert cli.main(["train", "--dataset", "camvid", "--data-root", str(camvid), "--out", str(out), "--arch",
                         "enet", "--size", "64x48", "--batch-size", "4", "--threads", "1", "--stages", "decoder",
                         "--epochs", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["compile"] is None
    assert "torch.compile off: auto: off (2 training steps < 1000" in caplog.text


def test_keep_freed_memory_is_idempotent():
    first = speed.keep_freed_memory()
    assert speed.keep_freed_memory() == first
    if sys.platform.startswith("linux"):
        assert first is True
