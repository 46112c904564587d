"""Every benchmark of the package, behind ``enet-seg bench`` (numbers go to BENCHMARKS.md).

- :mod:`.runner` (``enet-seg bench``): latency / fps / GFLOPs per arch x backend x size vs fp32 eager;
- :mod:`.ros_bench` (``bench node``, ``bench qos``): seg_node vs bare inference, DDS transport;
- :mod:`.metrics` (``bench metrics``): evaluator overhead per frame;
- :mod:`.eval` (``bench eval``): the evaluation pipeline vs bare inference;
- shared: :mod:`.machine` (the machine description), :mod:`.common` (synthetic frames, child
  processes, percentiles), :mod:`.flops`, :mod:`.report`.

``benchmarks/`` at the repository root keeps the scripts that run them and the recorded JSON.
"""
from __future__ import annotations

from .flops import count_macs
from .machine import machine_info, matmul_gflops
from .runner import BenchConfig, run_benchmark

__all__ = ["count_macs", "machine_info", "matmul_gflops", "BenchConfig", "run_benchmark"]
