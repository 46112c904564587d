"""Whole training steps replayed as CUDA graphs: these small nets' steps are launch-bound on a GPU.

Measured on an H200 (``benchmarks/gpu_run.sh``, 2026-11-28, eager bf16, three archs sharing the
card): 50-170 images/s per arch at every crop size from 240x180 to 720x540, i.e. a fixed cost
per step. A step is thousands of small kernels (ENet's forward + backward: ~4 600 top-level
aten calls), each launched from Python. A CUDA graph of normalisation + forward + loss +
backward + fused Adam update launches them all with one call.

:class:`GraphedSteps` keeps one graph per (key, batch shape): the first ``warmup`` batches of a
shape train eagerly on a side stream (cuDNN's benchmark, allocator warm-up, Adam's state), the
next one is captured and replayed, and every later one is copied into the graph's static input
and replayed. Every batch is trained exactly once: the warm-up steps are real steps, the
captured batch is replayed after its capture (a capture records, it does not run).

The learning rate lives in a tensor the graph reads (``torch.optim.Adam(capturable=True)`` with
a tensor ``lr``); a scheduler that replaced that tensor by a float is caught before each replay
and its value copied in. Graphs of one optimiser share a memory pool: replays run one after
another on one stream, and no graph's intermediate outlives its replay.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional, Tuple

import torch

log = logging.getLogger("enet_seg_ros.train")

# (static rgb, static labels) -> detached loss: normalise, forward, loss, backward, optimiser step;
# gradients are None on entry (set_to_none), so backward assigns rather than accumulates.
StepBody = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Entry:
    seen: int = 0
    graph: Optional[torch.cuda.CUDAGraph] = None
    x: Optional[torch.Tensor] = None
    y: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    lrs: List[torch.Tensor] = field(default_factory=list)


class GraphedSteps:
    """Training steps of one optimiser captured once per (key, input shape) and replayed.

    Args:
        device: the CUDA device the model, optimiser and batches are on.
        warmup: eager steps of each shape before its capture (>= 1: the first builds Adam's state).
    """

    def __init__(self, device: torch.device, warmup: int = 2) -> None:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device, got {}".format(device))
        if warmup < 1:
            raise ValueError("warmup must be >= 1 (Adam's state is created by an eager step), got {}".format(warmup))
        self.device = device
        self.warmup = int(warmup)
        self.disabled: Optional[str] = None  # why replays stopped (a capture failed): eager from then on
        self._opt: Optional[torch.optim.Optimizer] = None
        self._entries: Dict[Tuple[Hashable, ...], _Entry] = {}
        self._pool = None
        self._stream = torch.cuda.Stream(device)
        self.captures = 0
        self.replays = 0

    @staticmethod
    def prepare_optimizer(opt: torch.optim.Optimizer) -> None:
        """Make ``opt`` capturable: its step counter on the device and its ``lr`` a device tensor."""
        for group in opt.param_groups:
            if not group.get("capturable", False):
                raise ValueError("the optimiser must be built with capturable=True for CUDA graphs")
            device = group["params"][0].device
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)

    def step(self, key: Hashable, opt: torch.optim.Optimizer, body: StepBody, x: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
        """Train one batch (``x`` float RGB, ``y`` labels) with ``body``; returns its detached loss."""
        if opt is not self._opt:
            self._reset(opt)
        entry = self._entries.setdefault((key, tuple(x.shape), x.dtype, tuple(y.shape), y.dtype), _Entry())
        if self.disabled is not None or entry.seen < self.warmup:
            entry.seen += 1
            return self._eager(opt, body, x, y)
        if entry.graph is None:
            try:
                self._capture(entry, opt, body, x, y)
            except Exception as exc:  # noqa: BLE001 -- any op that cannot be captured: eager from here on
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.disabled = "capture failed: {}".format(why)
                log.warning("CUDA graphs off for the rest of this run (%s); training eagerly", self.disabled)
                self._entries.clear()
                torch.cuda.synchronize(self.device)
                return self._eager(opt, body, x, y)
        else:
            entry.x.copy_(x)
            entry.y.copy_(y)
        self._sync_lr(entry, opt)
        entry.graph.replay()
        self.replays += 1
        return entry.loss.clone()

    # ------------------------------------------------------------------------------ internals
    def _reset(self, opt: torch.optim.Optimizer) -> None:
        self.prepare_optimizer(opt)
        self._opt = opt
        self._entries.clear()  # the old optimiser's graphs (and through them their pool) go
        self._pool = torch.cuda.graph_pool_handle()

    def _eager(self, opt: torch.optim.Optimizer, body: StepBody, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # On a side stream, as PyTorch asks of the iterations before a capture.
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            opt.zero_grad(set_to_none=True)
            loss = body(x, y)
        current.wait_stream(self._stream)
        return loss

    def _capture(self, entry: _Entry, opt: torch.optim.Optimizer, body: StepBody, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        entry.x, entry.y = x.clone(), y.clone()
        self.prepare_optimizer(opt)
        entry.lrs = [group["lr"] for group in opt.param_groups]
        opt.zero_grad(set_to_none=True)  # backward inside the graph allocates (and then assigns) the grads
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            entry.loss = body(entry.x, entry.y)
        entry.graph = graph
        self.captures += 1

    @staticmethod
    def _sync_lr(entry: _Entry, opt: torch.optim.Optimizer) -> None:
        for group, captured in zip(opt.param_groups, entry.lrs):
            if group["lr"] is not captured:  # a scheduler assigned a float (or a new tensor)
                captured.fill_(float(group["lr"]))
                group["lr"] = captured
