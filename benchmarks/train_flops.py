#!/usr/bin/env python3
"""FLOPs of one training step per architecture (forward + backward, counted by
``torch.utils.flop_counter``; a multiply-add is 2 FLOPs), against a CPU's fp32 FMA peak: how
close a measured step time already is to what the arithmetic units allow.

Usage: python3 benchmarks/train_flops.py [--crop 240] [--ghz 2.6] [--flops-per-cycle 32]
       [--threads 2] [--step-s ARCH=SECONDS ...]
(32 FLOP per cycle per core: AVX2, 2 FMA units x 8 fp32 lanes; 64 with AVX-512.)
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from enet_seg_ros.nets import build_model

BATCH = {"enet": 10, "espnet": 12, "erfnet": 6}  # the recipes' batches


def step_flops(arch: str, crop: int, classes: int = 11) -> float:
    """FLOPs of one forward + backward of ``arch`` at its recipe batch on ``crop`` x ``crop`` inputs."""
    model = build_model(arch, classes).train()
    x = torch.randn(BATCH[arch], 3, crop, crop)
    y = torch.randint(0, classes, (BATCH[arch], crop, crop))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crop", type=int, default=240)
    p.add_argument("--ghz", type=float, default=2.6)
    p.add_argument("--flops-per-cycle", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--step-s", action="append", default=[], metavar="ARCH=SECONDS",
                   help="a measured step time, to print its share of the peak")
    args = p.parse_args()
    measured = {k: float(v) for k, v in (item.split("=") for item in args.step_s)}
    peak = args.ghz * 1e9 * args.flops_per_cycle * args.threads
    print("peak {:.0f} GFLOP/s ({} threads x {} GHz x {} FLOP/cycle)".format(peak / 1e9, args.threads, args.ghz,
                                                                        args.flops_per_cycle))
    for arch in BATCH:
        flops = step_flops(arch, args.crop)
        line = "{}: {:.1f} GFLOP per step (batch {}), at least {:.2f} s at peak".format(
            arch, flops / 1e9, BATCH[arch], flops / peak)
        if arch in measured:
            line += "; measured {:.3f} s = {:.0f} % of peak".format(measured[arch], 100 * flops / peak / measured[arch])
        print(line)


if __name__ == "__main__":
    main()
