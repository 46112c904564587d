"""benchmarks/graphs_gate.py: which archs gpu_run.sh trains without CUDA graphs, from the log of
its CUDA-graph tests (a failure about one arch costs that arch its graphs, not all three)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "graphs_gate.py"
spec = importlib.util.spec_from_file_location("graphs_gate", SCRIPT)
gate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)

PER_ARCH = "FAILED test/test_train_cuda_graphs.py::test_graphed_bf16_steps_match_eager_for_each_arch[{}] - AssertionError"


@pytest.mark.parametrize("lines, code, expected", [
    (["11 passed, 1 skipped"], 0, []),
    ([PER_ARCH.format("erfnet"), "1 failed, 11 passed"], 1, ["erfnet"]),
    ([PER_ARCH.format("erfnet"), PER_ARCH.format("enet")], 1, ["enet", "erfnet"]),
    # a failure that is not about one arch: nothing vouches for graphed training
    ([PER_ARCH.format("erfnet"), "FAILED test/test_train_cuda_graphs.py::test_graphed_training_equals_eager"], 1,
     ["enet", "espnet", "erfnet"]),
    (["ERROR test/test_train_cuda_graphs.py - ImportError"], 2, ["enet", "espnet", "erfnet"]),
    # killed by timeout(1) before its summary, or a crash without FAILED lines
    ([PER_ARCH.format("erfnet")], 124, ["enet", "espnet", "erfnet"]),
    (["Segmentation fault"], 139, ["enet", "espnet", "erfnet"]),
    ([PER_ARCH.format("yolo")], 1, ["enet", "espnet", "erfnet"]),
])
def test_eager_archs(lines, code, expected):
    assert gate.eager_archs("\n".join(lines), code) == expected


def test_command_line(tmp_path):
    log = tmp_path / "pytest_cuda_graphs.log"
    log.write_text(PER_ARCH.format("espnet") + "\n")
    run = [sys.executable, str(SCRIPT)]
    assert subprocess.run(run + [str(log), "1"], capture_output=True, text=True).stdout.strip() == "espnet"
    assert subprocess.run(run + [str(log), "0"], capture_output=True, text=True).stdout.strip() == ""
    missing = subprocess.run(run + [str(tmp_path / "absent.log"), "1"], capture_output=True, text=True)
    assert missing.stdout.strip() == "enet,espnet,erfnet"
