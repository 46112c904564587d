"""Inference benchmarks: latency / fps / GFLOPs per arch x backend x size (``enet-seg bench``)."""
from __future__ import annotations

from .flops import count_macs
from .machine import machine_info, matmul_gflops
from .runner import BenchConfig, run_benchmark

__all__ = ["count_macs", "machine_info", "matmul_gflops", "BenchConfig", "run_benchmark"]
