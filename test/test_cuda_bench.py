"""benchmarks/gpu_cuda_bench.sh --smoke: the GPU benchmark script runs end to end on the CPU
(tiny size, eager) and writes the JSON report the GPU run will fill."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_cuda_bench_smoke_runs_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_cuda_bench.sh"), "--out", str(tmp_path), "--smoke"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "gpu_cuda_bench_smoke.json").read_text())
    assert {r["arch"] for r in report["rows"]} == {"enet", "erfnet", "espnet"}
    for row in report["rows"]:
        assert "error" not in row, row
        assert row["device"] == "cpu" and row["size"] == "64x48"
        for kind in ("bare", "e2e"):
            assert row[kind]["runs"] >= 3 and row[kind]["median_ms"] > 0
    assert report["machine"]["cpu_flags"] is not None and report["machine"]["date"]


def test_gpu_cuda_bench_without_cuda_says_so(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_cuda_bench.sh"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "no CUDA device" in run.stderr
    assert not (tmp_path / "gpu_cuda_bench.json").exists()
