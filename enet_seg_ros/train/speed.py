"""Training-speed settings chosen per device and architecture; none changes what a step computes.

Measured on this project's 2-core AMX Xeon at the recipe crop (BENCHMARKS.md, "Training
(issue 11)"), bf16 autocast, 2 threads:

* memory format: ``channels_last`` is much faster for ERFNet and ENet on CPU, but ESPNet (many
  dilated 3x3 convolutions on few channels, and concatenations) trains ~10 % faster in NCHW. On
  CUDA every arch uses ``channels_last`` (the tensor-core layout).
* ``torch.compile`` of forward + loss as one graph (scope ``step``): fusing BatchNorm / PReLU /
  casts / additions and the loss cuts ENet's step by ~40 % and ESPNet's by ~40 %, after a
  one-off compile of 50-110 s (seconds when inductor's on-disk cache already holds the graphs).
  ERFNet's compiled forward is *slower* than eager (its time is in convolutions; inductor's
  BatchNorm kernels lose to oneDNN's here), so for it only the loss (float cast, log-softmax,
  weighted NLL over full-resolution logits) is compiled (scope ``loss``: ~5 %, a ~5 s compile).
  ``auto`` decides so on CPU only (not measured on a GPU yet: pass ``--compile`` there), only for
  runs long enough to repay the compile, and without a C++ compiler for inductor not at all.
* Adam ``fused=True``: one kernel over all parameters (the same update, in float32) instead of
  ~10 ops per parameter tensor: 2-3 % of a CPU step.
* glibc malloc: a training step frees and reallocates the same few-MB activations every step;
  glibc hands such blocks back to the kernel and every step then page-faults them in again
  (~15 000 faults per ERFNet step). Keeping freed memory in the heap removes that (~5 %).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import logging
import shutil
import sys
from typing import Iterable, Optional, Tuple

import torch

log = logging.getLogger("enet_seg_ros.train")

# Archs that train faster on CPU in NCHW than in channels_last.
CPU_CONTIGUOUS_ARCHS = frozenset({"espnet", "espnet_c"})
# Archs whose CPU training step torch.compile makes faster (ERFNet: slower compiled).
CPU_COMPILE_ARCHS = frozenset({"enet", "espnet", "espnet_c"})
# compile=auto compiles the whole step only in runs of at least this many training steps: a cold
# compile costs 50-110 s here and saves ~0.2 s per step, so shorter runs (tests, smoke runs) lose.
COMPILE_MIN_STEPS = 1000
# ... and the loss alone (a ~5 s compile saving ~15 ms per step) in runs of at least this many.
LOSS_COMPILE_MIN_STEPS = 500
COMPILE_SCOPES = ("off", "loss", "step")


def memory_format_for(arch: str, device: torch.device) -> torch.memory_format:
    """Memory format of the model and its inputs when training ``arch`` on ``device``."""
    if device.type == "cpu" and arch in CPU_CONTIGUOUS_ARCHS:
        return torch.contiguous_format
    return torch.channels_last


def _have_cxx() -> bool:
    """Whether inductor can find a C++ compiler for its CPU kernels."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def compile_decision(setting: Optional[bool], arch: str, device: torch.device, planned_steps: int,
                     processes: int = 1) -> Tuple[str, str]:
    """(scope, why) for ``--compile`` / ``--no-compile`` (True / False) or auto (None).

    scope: ``step`` (forward + loss compiled as one graph), ``loss`` (the loss only) or ``off``.
    """
    if setting is not None:
        return ("step" if setting else "off"), "asked ({})".format("--compile" if setting else "--no-compile")
    if device.type != "cpu":
        return "off", "auto: off on {} (not measured there; --compile turns it on)".format(device.type)
    if processes > 1:
        return "off", "auto: off with {} processes (not measured under DDP; --compile turns it on)".format(processes)
    if planned_steps < LOSS_COMPILE_MIN_STEPS:
        return "off", "auto: off ({} training steps < {}: too few to repay a compile)".format(
            planned_steps, LOSS_COMPILE_MIN_STEPS)
    if not _have_cxx():
        return "off", "auto: off (no C++ compiler for inductor's CPU kernels)"
    if arch not in CPU_COMPILE_ARCHS:
        return "loss", "auto: the loss only ({}'s eager CPU forward is faster than its compiled one)".format(arch)
    if planned_steps < COMPILE_MIN_STEPS:
        return "loss", "auto: the loss only ({} training steps < {}: too few to repay compiling the step)".format(
            planned_steps, COMPILE_MIN_STEPS)
    return "step", "auto: forward + loss ({} training steps)".format(planned_steps)


def adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
         capturable: bool = False) -> torch.optim.Adam:
    """Adam with the fused single-kernel update where this PyTorch has it (CPU and CUDA).

    ``capturable``: its step counter and learning rate live on the device, so a CUDA graph can
    replay the update (``train/cuda_graphs.py``); the same arithmetic.
    """
    params = list(params)
    kwargs = {}
    if "fused" in inspect.signature(torch.optim.Adam).parameters and params:
        kwargs["fused"] = True
    if capturable:
        kwargs["capturable"] = True
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kwargs)


def cuda_graphs_decision(setting: Optional[bool], device: torch.device, processes: int = 1,
                         distill: bool = False, compile_scope: str = "off") -> Tuple[bool, str]:
    """(on, why) for ``--cuda-graphs`` / ``--no-cuda-graphs`` (True / False) or auto (None).

    Auto: on for a single CUDA process training on labels with eager steps (replaying each
    step as one CUDA graph, see ``train/cuda_graphs.py``). Asked for where it cannot work:
    ValueError naming why.
    """
    blockers = []
    if device.type != "cuda":
        blockers.append("they need a CUDA device (training on {})".format(device.type))
    if processes > 1:
        blockers.append("not with {} DDP processes".format(processes))
    if distill:
        blockers.append("not with --distill (the teacher runs outside the graph)")
    if compile_scope != "off":
        blockers.append("not with torch.compile")
    if setting is False:
        return False, "off (--no-cuda-graphs)"
    if blockers:
        if setting:
            raise ValueError("--cuda-graphs: " + "; ".join(blockers))
        return False, "auto: off ({})".format(blockers[0])
    return True, "on" + (" (--cuda-graphs)" if setting else " (auto: single CUDA process, eager steps)")


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed blocks for reuse (no trimming, no mmap for tensor-sized blocks).

    Idempotent, process-wide; a no-op (False) off glibc Linux. Costs resident memory: the peak of
    a step stays allocated (which a training process reaches every step anyway).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    # 1 GiB is above any single activation of these nets; glibc versions that cap the mmap
    # threshold (32 MiB on 64-bit) refuse it, and then get the cap.
    ok = bool(mallopt(m_trim_threshold, 2 ** 30)) and bool(
        mallopt(m_mmap_threshold, 2 ** 30) or mallopt(m_mmap_threshold, 32 * 2 ** 20))
    _MALLOC_TUNED = ok
    return ok
