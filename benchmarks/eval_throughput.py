"""Evaluation throughput vs bare inference (BENCHMARKS.md); the benchmark is ``enet-seg bench eval``.

    .venv/bin/python benchmarks/eval_throughput.py --images ../shared/data/camvid/val \
        --labels ../shared/data/camvid/valannot --weights models/enet_camvid.safetensors --rounds 3
    .venv/bin/python benchmarks/eval_throughput.py --bag camvid_val_bag --weights models/enet_camvid.safetensors
"""
from __future__ import annotations

import sys

from enet_seg_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "eval"] + sys.argv[1:]))
