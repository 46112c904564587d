"""Multi-process training: a 2-process ``torchrun`` run (gloo on CPU) equals a single-process run with
the same global batch, and only rank 0 writes checkpoints, logs and progress.

Equivalence needs the per-process parts of training out of the way: BatchNorm batch statistics
(``--freeze-bn``: running statistics; SyncBatchNorm is CUDA-only) and Dropout masks drawn from
each process' RNG (``--no-dropout``). Data order, augmentation and loss normalisation are
already process-count independent by design (see ``enet_seg_ros.train.trainer``).
"""
from __future__ import annotations

import csv
import json
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import torch.distributed as dist

from enet_seg_ros import cli
from test_datasets import make_camvid

# fp32: bf16 rounding of 2 x 2 frames vs 4 frames would swamp the tolerance below.
ARGS = ["--arch", "enet", "--dataset", "camvid", "--size", "64x48", "--threads", "1",
        "--stages", "both", "--encoder-epochs", "1", "--epochs", "2", "--freeze-bn", "--no-dropout",
        "--precision", "fp32"]


def _torchrun_missing() -> str:
    if importlib.util.find_spec("torch.distributed.run") is None:
        return "torch.distributed.run (torchrun) is not available in this torch build"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with the gloo backend is not available"
    return ""


pytestmark = pytest.mark.skipif(bool(_torchrun_missing()), reason=_torchrun_missing() or "n/a")


def torchrun(argv: List[str], timeout: float = 240, **env_extra: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m enet_seg_ros.cli ARGV`` (free port picked by torchrun).

    On a timeout the whole process group goes (torchrun's workers too: a hung run leaves none)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "enet_seg_ros.cli", *argv]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail("torchrun timed out after {} s (hung ranks?):\n{}".format(timeout, (out + err)[-3000:]))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def read_rows(out: Path):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def camvid(tmp_path_factory) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n_train=8, n_val=4)


def test_two_processes_equal_one(camvid, tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    proc = torchrun(["train", "--data-root", str(camvid), "--out", str(ddp), "--batch-size", "4", *ARGS])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert cli.main(["train", "--data-root", str(camvid), "--out", str(single), "--batch-size", "4", *ARGS]) == 0

    # Rank 0 alone writes: one checkpoint, no leftovers, each log row once, one progress bar
    # and one log line per epoch, one final report.
    assert not [p.name for p in ddp.iterdir() if p.name.endswith(".tmp")]
    rows = read_rows(ddp)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("encoder", "0"), ("decoder", "0"), ("decoder", "1")]
    assert output.count("decoder epoch 1: loss") == 1
    assert output.count("encoder 0: 100%") == 1 and output.count("decoder 1: 100%") == 1
    assert output.count("exported model: val mIoU") == 1
    assert output.count("dropout modules set to p=0") == 1

    a = torch.load(single / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(ddp / "last.pt", map_location="cpu", weights_only=True)
    assert (a["stage_index"], a["epoch"]) == (b["stage_index"], b["epoch"]) == (1, 1)
    assert a["model"].keys() == b["model"].keys()
    # Summation order differs (2 x 2 frames all-reduced vs 4 frames), and Adam turns float noise
    # in near-zero gradients into parameter noise: seen up to 1.2e-5 after 6 steps. 5e-5 is a
    # tenth of one Adam step (lr 5e-4): a lost, doubled or mis-scaled step would show.
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=0, atol=5e-5, msg=k)
        else:
            assert torch.equal(b["model"][k], v), k
    # The encoder head is unused in the decoder stage: DDP must leave it untouched (no zero
    # gradients turned into weight-decay updates), exactly like the single process.
    assert any(k.startswith("encoder_head") for k in a["model"])
    # Logged losses are global (all-reduced), not rank 0's share; validation covers all frames.
    single_rows = read_rows(single)
    for r, s in zip(rows, single_rows):
        assert float(r["train_loss"]) == pytest.approx(float(s["train_loss"]), rel=1e-4)
        # all frames scored (a rank-0-only score would differ by far more than an argmax flip)
        assert float(r["val_miou"]) == pytest.approx(float(s["val_miou"]), abs=1e-3)


def test_batch_not_divisible_by_processes(camvid, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(["train", "--data-root", str(camvid), "--out", str(out), "--batch-size", "3", *ARGS])
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "enet-seg train: error: --batch-size 3 (the global batch) must be a positive multiple of the 2 processes" \
        in output
    assert not (out / "last.pt").exists()


def test_budget_decisions_agree_across_processes(camvid, tmp_path):
    """--budget-s under torchrun: the fitted epochs, the re-fit at the stage boundary and the
    over-budget stop come from wall clocks, which differ between the processes; rank 0's
    decisions are broadcast, or ranks training different epochs would hang in the all-reduce
    (the timeout here)."""
    # Rank 1's clock runs 1.5x fast (a sitecustomize on its path), so its own readings would fit
    # fewer epochs and call the budget spent earlier than rank 0's.
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('RANK') == '1':\n"
        "    _real, _t0 = time.time, time.time()\n"
        "    time.time = lambda: _t0 + 1.5 * (_real() - _t0)\n")
    out = tmp_path / "ddp"
    args = [a for a in ARGS]
    args[args.index("--encoder-epochs") + 1], args[args.index("--epochs") + 1] = "3", "100000"
    proc = torchrun(["train", "--data-root", str(camvid), "--out", str(out), "--batch-size", "4", *args,
                     "--budget-s", "25", "--val-every", "1000", "--no-compile"], timeout=180,
                    PYTHONPATH=os.pathsep.join([str(skew), os.environ.get("PYTHONPATH", "")]))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    budget = json.loads((out / "budget.json").read_text())
    rows = read_rows(out)
    decoder = [r for r in rows if r["stage"] == "decoder"]
    assert 1 <= len(decoder) <= budget["refit"]["decoder"]["epochs"] < 100000
    assert len([r for r in rows if r["stage"] == "encoder"]) == budget["fitted_epochs"]["encoder"]
