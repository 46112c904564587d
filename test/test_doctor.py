"""``enet-seg doctor`` for real on this machine's CPU backends (torch, ONNX Runtime): the JSON
document, usable / unusable entries with reasons, the recommendation, exit codes, --strict."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enet_seg_ros.engine.backends.base import FAIL_ENV
from enet_seg_ros.bench.doctor import parse_tegra_release, recommend, versions

REPO = Path(__file__).resolve().parents[1]
ENTRY_KEYS = {"backend", "device", "precision", "usable", "reason", "agreement_vs_torch_fp32", "ms_median"}


def _doctor(args, cache, extra_env=None):
    env = dict(os.environ, ENET_SEG_CACHE=str(cache), PYTHONPATH=str(REPO), **(extra_env or {}))
    env.pop(FAIL_ENV, None)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "enet_seg_ros.cli", "doctor"] + args, capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from model_fixtures import make_test_weights

    return make_test_weights(tmp_path_factory.mktemp("doctor") / "enet_small.safetensors")


def test_doctor_self_tests_cpu_backends_and_writes_the_json(tmp_path, weights):
    out = tmp_path / "doctor.json"
    run = _doctor(["--weights", str(weights), "--backend", "torch,onnxruntime", "--runs", "2", "--json", str(out)],
                  tmp_path / "cache")
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"backends", "recommended", "versions"}
    entries = {(e["backend"], e["device"], e["precision"]): e for e in report["backends"]}
    for e in entries.values():
        assert set(e) == ENTRY_KEYS
        assert e["usable"] or e["reason"], e  # an unusable entry always says why
    fp32 = entries[("torch", "cpu", "fp32")]
    assert fp32["usable"] and fp32["agreement_vs_torch_fp32"] == 1.0 and fp32["ms_median"] > 0
    ort = entries[("onnxruntime", "cpu", "fp32")]
    assert ort["usable"] and ort["agreement_vs_torch_fp32"] >= 0.99
    import torch

    if not torch.cuda.is_available():
        assert not entries[("torch", "cuda", "fp16")]["usable"]
        assert "CUDA" in entries[("torch", "cuda", "fp16")]["reason"]
    assert report["recommended"] and report["recommended"]["backend"] in ("torch", "onnxruntime")
    assert {"torch", "cuda", "tensorrt", "torch2trt", "onnxruntime", "openvino", "jetpack"} <= set(report["versions"])
    assert report["versions"]["torch"] == torch.__version__
    assert "recommended for seg.yaml" in run.stdout


def test_a_broken_backend_is_reported_not_fatal(tmp_path, weights):
    out = tmp_path / "doctor.json"
    run = _doctor(["--weights", str(weights), "--backend", "torch,onnxruntime", "--device", "cpu", "--runs", "1",
                   "--json", str(out)], tmp_path / "cache", {FAIL_ENV: "onnxruntime"})
    assert run.returncode == 0, run.stderr
    entries = json.loads(out.read_text())["backends"]
    ort = [e for e in entries if e["backend"] == "onnxruntime"]
    assert ort and not any(e["usable"] for e in ort)
    assert "forced to fail" in next(e["reason"] for e in ort if e["precision"] == "fp32")
    assert all(e["device"] == "cpu" for e in entries)


def test_exit_1_when_no_backend_works(tmp_path, weights):
    run = _doctor(["--weights", str(weights), "--backend", "torch", "--device", "cpu", "--runs", "1"],
                  tmp_path / "cache", {FAIL_ENV: "torch"})
    assert run.returncode == 1 and "no inference backend works" in run.stdout


def test_strict_names_the_backend_that_cannot_run(tmp_path, weights):
    run = _doctor(["--weights", str(weights), "--backend", "torch", "--device", "cpu", "--runs", "1", "--strict"],
                  tmp_path / "cache", {FAIL_ENV: "torch"})
    assert run.returncode == 2
    assert "--strict: backend torch cannot run here" in run.stderr and "forced to fail" in run.stderr


def test_jetpack_version_from_nv_tegra_release(tmp_path):
    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"
    assert parse_tegra_release(text) == "L4T R36.4.3"
    assert parse_tegra_release("garbage") is None
    release = tmp_path / "nv_tegra_release"
    release.write_text(text)
    assert versions(release)["jetpack"] == "L4T R36.4.3"
    assert versions(tmp_path / "absent")["jetpack"] is None


def test_recommendation_prefers_gpu_then_speed_among_accurate_entries():
    def e(b, d, p, ok, agree, ms):
        return {"backend": b, "device": d, "precision": p, "usable": ok, "reason": "", "agreement_vs_torch_fp32": agree,
                "ms_median": ms}

    entries = [e("torch", "cpu", "fp32", True, 1.0, 30.0), e("openvino", "cpu", "bf16", True, 0.96, 5.0),
               e("onnxruntime", "cpu", "fp32", True, 1.0, 20.0)]
    assert recommend(entries) == {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"}
    entries.append(e("torch", "cuda", "fp16", True, 0.98, 40.0))
    assert recommend(entries)["device"] == "cuda"
    assert recommend([e("torch", "cpu", "fp32", False, None, None)]) is None
