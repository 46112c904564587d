"""Which archs gpu_run.sh trains eagerly, from the log of its CUDA-graph tests.

    python benchmarks/graphs_gate.py PYTEST_LOG EXIT_CODE

Prints a comma-separated list of archs to train with ``--no-cuda-graphs``: empty when the tests
passed, only the failed archs when every failure is a per-arch test
(``test_graphed_bf16_steps_match_eager_for_each_arch[<arch>]``), else all three (a failure that
is not about one arch, a crash, a timeout: nothing says graphed training is right).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ARCHS = ("enet", "espnet", "erfnet")
PER_ARCH = re.compile(r"test_graphed_bf16_steps_match_eager_for_each_arch\[(\w+)\]")


def eager_archs(log: str, exit_code: int) -> list[str]:
    """The archs whose graphed training is not shown to match eager training."""
    if exit_code == 0:
        return []
    failed = [line for line in log.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    archs = []
    for line in failed:
        match = PER_ARCH.search(line)
        if not match or match.group(1) not in ARCHS:
            return list(ARCHS)
        archs.append(match.group(1))
    # exit 1 = tests failed; anything else (usage, interrupted, timeout 124) proves nothing
    if exit_code != 1 or not archs:
        return list(ARCHS)
    return [a for a in ARCHS if a in archs]


if __name__ == "__main__":
    text = Path(sys.argv[1]).read_text(errors="replace") if Path(sys.argv[1]).is_file() else ""
    print(",".join(eager_archs(text, int(sys.argv[2]))))
