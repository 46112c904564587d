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
    assert t._normalize(x).is_contiguous(memory_format=fmt)
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
    assert speed.compile_decision(True, "erfnet", CPU, 1)[0] == "step"  # asked: always
    assert speed.compile_decision(False, "enet", CPU, long_run)[0] == "off"
    assert speed.compile_decision(None, "enet", CPU, long_run)[0] == "step"
    assert speed.compile_decision(None, "espnet", CPU, long_run)[0] == "step"
    scope, why = speed.compile_decision(None, "erfnet", CPU, long_run)
    assert scope == "loss" and "erfnet" in why
    scope, why = speed.compile_decision(None, "enet", CPU, speed.COMPILE_MIN_STEPS - 1)
    assert scope == "loss" and "too few" in why
    assert speed.compile_decision(None, "enet", CPU, speed.COMPILE_MIN_STEPS)[0] == "step"
    scope, why = speed.compile_decision(None, "erfnet", CPU, speed.LOSS_COMPILE_MIN_STEPS - 1)
    assert scope == "off" and "too few" in why
    scope, why = speed.compile_decision(None, "enet", torch.device("cuda"), long_run)
    assert scope == "off" and "cuda" in why
    scope, why = speed.compile_decision(None, "enet", CPU, long_run, processes=2)
    assert scope == "off" and "2 processes" in why
    assert speed.compile_decision(True, "enet", CPU, long_run, processes=2)[0] == "step"


@pytest.mark.parametrize("scope", ["loss", "step"])
def test_compiled_steps_train_as_eager(camvid, tmp_path, scope):
    """Real steps with the loss (or forward + loss) torch.compile-d: same loss and weights as eager.

    Dropout off: inductor draws its own random numbers, so masks would differ from eager's.
    ESPNet: at this tiny size its gradients are well conditioned (ERFNet's change by ~4 % when
    the input changes by 1e-6, so float reordering alone would fail a tight comparison there).
    """
    def trainer(name):
        t = Trainer(TrainConfig(arch="espnet", dataset="camvid", data_root=str(camvid), out=str(tmp_path / name),
                                size=(64, 48), batch_size=4, threads=1, stages="decoder", epochs=1,
                                no_dropout=True, precision="fp32"))
        t.out.mkdir(parents=True)
        t._prepare_data()
        return t, t._build_model()

    (te, me), (tc, mc) = trainer("eager"), trainer("compiled")
    if scope == "step":
        tc._forward_loss_fn = torch.compile(tc._forward_loss)
    else:
        tc._loss_terms_fn = torch.compile(tc._loss_terms)
    oe, oc = te._optimizer(me), tc._optimizer(mc)
    x, y = te._batch(te._passes()[0], [0, 1, 2, 3], 0, 0)
    le, lc = te._step(me, oe, x, y, "decoder"), tc._step(mc, oc, x, y, "decoder")
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    # All gradients as one vector (a conv bias before a BatchNorm has a gradient of ~0 that is
    # float rounding only, so per-tensor relative checks would test noise).
    used = [(p, q) for p, q in zip(mc.parameters(), me.parameters()) if q.grad is not None]
    assert used and all(p.grad is not None for p, _ in used)
    gc = torch.cat([p.grad.flatten() for p, _ in used])
    ge = torch.cat([q.grad.flatten() for _, q in used])
    assert float((gc - ge).norm() / ge.norm()) < 1e-4
    # More steps (a different batch) run the compiled graph again and keep training.
    x, y = te._batch(te._passes()[0], [4, 5, 6, 7], 0, 1)
    assert torch.isfinite(tc._step(mc, oc, x, y, "decoder"))


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
    assert "torch.compile: auto: off (2 training steps < 500" in caplog.text


def test_keep_freed_memory_is_idempotent():
    first = speed.keep_freed_memory()
    assert speed.keep_freed_memory() == first
    if sys.platform.startswith("linux"):
        assert first is True


def test_bf16_follows_the_onednn_isa_cap(tmp_path, monkeypatch):
    """An ONEDNN_MAX_CPU_ISA cap below bf16 (an AVX2-only imitation) makes precision auto fp32."""
    from enet_seg_ros.engine.cpu import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_has_bf16(str(info)) is True
    for cap in ("AVX2", "avx512_core", "AVX512_CORE_VNNI"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert cpu_has_bf16(str(info)) is False
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert cpu_has_bf16(str(info)) is True
    info.write_text("flags\t\t: fpu sse avx2\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert cpu_has_bf16(str(info)) is False
