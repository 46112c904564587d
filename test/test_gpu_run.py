"""``benchmarks/gpu_run.sh --smoke`` on this CPU: the GPU run's whole chain (untar the CamVid JPEG
tar, train the three networks concurrently with the paper recipe and a wall budget, score on
val, pack one tarball) with 1 step per pass, as the GPU machine runs it: rclpy, OpenVINO,
TensorRT, rosbags and torchvision made unimportable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from enet_seg_ros.weights import load_model

REPO = Path(__file__).resolve().parents[1]
TAR = (REPO / ".." / "shared" / "data" / "camvid_jpeg95.tar").resolve()
ABSENT_ON_GPU_MACHINE = ("rclpy", "openvino", "tensorrt", "rosbags", "torchvision", "cityscapesscripts")

pytestmark = pytest.mark.skipif(not TAR.is_file(), reason="shared data {} not present".format(TAR))


def test_gpu_run_smoke(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ABSENT_ON_GPU_MACHINE:
        (blocked / (name + ".py")).write_text("raise ModuleNotFoundError('not on the GPU machine: {}')\n".format(name))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(blocked), TMPDIR=str(tmp_path))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--smoke", "--out", str(out),
                           "--data", str(TAR), "--eager-archs", "erfnet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    tarballs = list(out.glob("gpu_run_*.tar.gz"))
    assert len(tarballs) == 1
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(unpacked)
    (pack,) = list(unpacked.iterdir())
    summary = json.loads((pack / "summary.json").read_text())
    assert summary["train_exit_code"] == 0 and summary["smoke"]
    for arch in ("enet", "espnet", "erfnet"):
        run = pack / "runs" / arch
        model, card = load_model(run / "best.safetensors")
        assert card.arch == arch and card.dataset == "camvid" and card.input_size == [96, 72]
        assert card.metrics["protocol"]["select"] == "last" and 0 <= card.metrics["val_miou"] <= 1
        assert card.recipe["recipe"] == "paper" and card.recipe["epoch_scales"] == [0.5, 1.5]
        assert card.recipe["color_jitter"] == 0.2  # the script's jitter reaches every run
        assert json.loads((run / "best.card.json").read_text())["arch"] == arch
        rows = (run / "log.csv").read_text().splitlines()
        assert rows[0].startswith("stage,epoch") and len(rows) == 3  # header + encoder + decoder epoch
        probe = json.loads((run / "budget.json").read_text())
        assert set(probe["stages"]) == {"encoder", "decoder"}
        # the decoder's epochs fitted again from the encoder's measured epochs
        assert summary["archs"][arch]["refit"] == probe["refit"] and probe["refit"]["decoder"]["epochs"] >= 1
        assert summary["archs"][arch]["val_miou"] == card.metrics["val_miou"]
    # ENet's logit offsets fitted on train; eval-dir (the inference path) scores that file and
    # agrees with its card.
    calibrated, cal_card = load_model(pack / "runs" / "enet" / "calibrated.safetensors")
    assert calibrated.logit_offset is not None and cal_card.metrics["logit_offset"]["fitted_on"].startswith("camvid train")
    assert summary["archs"]["enet"]["calibrated_val_miou"] == cal_card.metrics["val_miou"]
    measured = json.loads((pack / "runs" / "enet" / "eval_val" / "metrics.json").read_text())
    assert measured["miou"] == pytest.approx(cal_card.metrics["val_miou"], abs=2e-3)
    logs = {p.name for p in (pack / "logs").iterdir()}
    # --eager-archs erfnet: ENet and ESPNet in one command, ERFNet in another, with --no-cuda-graphs
    assert {"train.log", "train_eager.log", "gpu_run.log", "env.txt", "pytest_gpu.log"} <= logs
    for name in ("train.log", "train_eager.log"):
        train_log = (pack / "logs" / name).read_text()
        assert "ModuleNotFoundError" not in train_log and "Traceback" not in train_log
    eager_log = (pack / "logs" / "train_eager.log").read_text()
    assert "training erfnet" in eager_log and "off (--no-cuda-graphs)" in eager_log
    assert "training erfnet" not in (pack / "logs" / "train.log").read_text()
    # The ship rule refuses every model of a smoke run (benchmarks/ship_gpu.py, the models/ untouched).
    ship = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ship_gpu.py"), str(tarballs[0])],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ship.returncode == 0, ship.stderr[-2000:]
    decisions = json.loads(ship.stdout.strip().splitlines()[-1])
    assert [d["verdict"] for d in decisions] == ["keep"] * 3
    assert all("a --smoke run" in d["why"] for d in decisions if d["candidate"] is not None)
