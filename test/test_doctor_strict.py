"""``--strict`` on the commands that take ``--backend`` (predict, eval-dir, eval-bag, bench): an
explicitly asked backend that cannot start is an error naming it and why (exit code 2), while
without ``--strict`` the same request falls back and succeeds. Real CLI runs in subprocesses;
a backend is broken with the ``ENET_SEG_FAIL_BACKENDS`` hook (or really absent: TensorRT)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bag_fixtures import make_camvid_folder, make_weights
from enet_seg_ros.engine.backends.base import FAIL_ENV
from enet_seg_ros.engine.backends.tensorrt_backend import tensorrt_status

REPO = Path(__file__).resolve().parents[1]


def _cli(args, tmp_path, fail=None):
    env = dict(os.environ, ENET_SEG_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    env.pop(FAIL_ENV, None)
    if fail:
        env[FAIL_ENV] = fail
    return subprocess.run([sys.executable, "-m", "enet_seg_ros.cli"] + [str(a) for a in args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    weights = make_weights(root / "enet.safetensors")
    images, labels, names = make_camvid_folder(root / "camvid", n=2)
    return weights, images, labels, names


def test_predict_strict_fails_with_the_backend_and_why_and_falls_back_without(tmp_path, data):
    weights, images, _, names = data
    image = images / names[0]
    args = ["predict", image, "--weights", weights, "--backend", "onnxruntime", "--device", "cpu", "--out", tmp_path]
    strict = _cli(args + ["--strict"], tmp_path, fail="onnxruntime")
    assert strict.returncode == 2
    assert "onnxruntime-cpu" in strict.stderr and "forced to fail" in strict.stderr
    relaxed = _cli(args, tmp_path, fail="onnxruntime")
    assert relaxed.returncode == 0, relaxed.stderr
    chosen = [line for line in relaxed.stdout.splitlines() if line.startswith("backend: ")]
    assert chosen and not chosen[0].startswith("backend: onnxruntime"), relaxed.stdout  # fell back


def test_predict_strict_tensorrt_without_it(tmp_path, data):
    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT works here; nothing to refuse")
    weights, images, _, names = data
    run = _cli(["predict", images / names[0], "--weights", weights, "--backend", "tensorrt", "--strict",
                "--out", tmp_path], tmp_path)
    assert run.returncode == 2 and "tensorrt" in run.stderr and why.split(" (")[0] in run.stderr


def test_eval_dir_strict(tmp_path, data):
    weights, images, labels, _ = data
    args = ["eval-dir", "--dataset", "camvid", "--images", images, "--labels", labels, "--weights", weights,
            "--backend", "onnxruntime", "--device", "cpu", "--no-progress", "--workers", "1"]
    strict = _cli(args + ["--strict", "--out", tmp_path / "a"], tmp_path, fail="onnxruntime")
    assert strict.returncode == 2 and "onnxruntime-cpu" in strict.stderr and "forced to fail" in strict.stderr
    assert not (tmp_path / "a" / "metrics.json").exists()
    relaxed = _cli(args + ["--out", tmp_path / "b"], tmp_path, fail="onnxruntime")
    assert relaxed.returncode == 0, relaxed.stderr
    assert (tmp_path / "b" / "metrics.json").is_file()


def test_eval_bag_strict(tmp_path, data):
    weights, images, labels, _ = data
    bag = tmp_path / "bag"
    made = _cli(["make-bag", "--dataset", "camvid", "--images", images, "--labels", labels, "--out", bag], tmp_path)
    assert made.returncode == 0, made.stderr
    run = _cli(["eval-bag", bag, "--weights", weights, "--backend", "torch", "--device", "cpu", "--strict",
                "--no-progress", "--out", tmp_path / "out"], tmp_path, fail="torch")
    assert run.returncode == 2 and "torch-cpu" in run.stderr and "forced to fail" in run.stderr


def test_bench_strict(tmp_path):
    ok, _ = tensorrt_status()
    if not ok:  # refused before any timing
        run = _cli(["bench", "--arch", "enet", "--backend", "tensorrt", "--strict", "--size", "64x48"], tmp_path)
        assert run.returncode == 2 and "--strict: backend tensorrt cannot start here" in run.stderr
        assert "machine:" not in run.stdout
    # passes the cheap check, fails when built: reported after the run
    run = _cli(["bench", "--arch", "enet", "--backend", "onnxruntime", "--device", "cpu", "--strict", "--size",
                "64x48", "--runs", "1", "--warmup", "0"], tmp_path, fail="onnxruntime")
    assert run.returncode == 2 and "--strict: backend onnxruntime could not start" in run.stderr
    assert "forced to fail" in run.stderr
