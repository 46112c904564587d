"""PyTorch backend: BN folded, eval + inference_mode, channels_last, CUDA fp16 / CPU bf16.

On CUDA (the fast path where TensorRT is missing: a Jetson without it, a desktop GPU) frames
go through :class:`CudaPipeline`: uint8 frames are copied into pinned host buffers and
uploaded on an upload stream, the network runs on a compute stream (replaying a CUDA graph
captured for the static input size, or eagerly), and uint8 labels come back on a download
stream into pinned buffers. Two buffer slots let frame i+1 upload while frame i computes and
frame i-1 downloads. The CPU path is plain eager (or compiled) torch, unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np

from ...nets import fold_batchnorm
from ..cpu import cpu_has_bf16
from ..graph import InferenceGraph
from ..source import ModelSource
from ..registry import BackendEntry, register_backend
from .base import Backend, BackendUnavailable, check_forced_failure

LOG = logging.getLogger(__name__)


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not break CPU inference
        return False


# Dynamo keeps the compiled graphs of every compiled Segmenter in one per-process cache (keyed
# on our graph wrapper's code); past its default limit of 8 it silently runs further models
# uncompiled (seen in `enet-seg bench`: 3 nets x 2 precisions x sizes). Room for this many:
COMPILED_GRAPHS_PER_PROCESS = 64


def _allow_recompiles(torch, count: int) -> None:
    """Raise dynamo's per-code recompile limit to at least ``count`` (never lowers it)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across releases
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), count))
            return


class TorchBackend(Backend):
    """Eager PyTorch with the cheap, exact speed-ups on (and lossy ones on request).

    Args:
        source: network + card.
        input_size: (width, height) of the network input.
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` picks CUDA when present.
        precision: ``fp32``; ``fp16`` (CUDA, default there); ``bf16`` (CPU with AVX512-BF16 /
            AMX: lossy, opt-in).
        channels_last: NHWC memory format. ``None``: on for CUDA (tensor-core kernels want
            NHWC); on CPU on from 320x180 up (oneDNN is ~2.5x faster in NHWC for ENet at
            640x360), off for tiny inputs that torch routes to a slow non-oneDNN kernel.
        threads: set torch's intra-op thread count (process-wide) when given.
        compile: ``torch.compile`` the graph (inductor, weights frozen): fuses the elementwise
            work around the convolutions (BN after concat, PReLU, adds, normalisation, argmax)
            into generated kernels. Opt-in: the first start compiles for 10-40 s on a 2-core
            CPU (later starts reuse inductor's on-disk cache) and needs a C++ compiler; if
            compilation fails the backend logs a warning and runs uncompiled.
        output / with_confidence: graph outputs (see :class:`InferenceGraph`).
        fail_backends: names to treat as failing (test / diagnostic hook).
        cuda_graphs: CUDA only: replay a CUDA graph captured for the static input size
            (``None``: on, compiled or not: compiled + graphs was the fastest ENet 1280x720 fp16
            on an H200, 1.86 ms end to end vs 2.71 graphs alone). A failed capture logs a warning
            and runs eagerly.
        cudnn_benchmark: CUDA only: let cuDNN time its convolution algorithms for the static input
            size (at warm-up and capture) instead of picking them by heuristics. ``None``: on.
            The 2026-11-28 H200 bench, heuristics only, had ERFNet fp16 at 1280x720 2.4x slower
            than fp32 (9.2 vs 3.8 ms): benchmark mode is the standard answer for fixed shapes.
    """

    name = "torch"

    def __init__(self, source: ModelSource, input_size: Tuple[int, int], device: Optional[str] = None,
                 precision: Optional[str] = None, channels_last: Optional[bool] = None,
                 threads: Optional[int] = None, output: str = "labels", with_confidence: bool = False,
                 fail_backends: Optional[Set[str]] = None, compile: bool = False,
                 cuda_graphs: Optional[bool] = None, cudnn_benchmark: Optional[bool] = None,
                 **_unused) -> None:
        super().__init__()
        import torch

        device = device or ("cuda" if cuda_available() else "cpu")
        check_forced_failure(self.name, device, fail_backends)
        if device.startswith("cuda") and not cuda_available():
            raise BackendUnavailable("torch: CUDA requested but torch.cuda.is_available() is False")
        on_gpu = device.startswith("cuda")
        precision = precision or ("fp16" if on_gpu else "fp32")
        if precision == "int8":
            raise BackendUnavailable("torch backend has no int8 mode (use onnxruntime, openvino or tensorrt)")
        if precision == "fp16" and not on_gpu:
            raise BackendUnavailable("torch fp16 needs CUDA; on CPU use bf16 (AVX512-BF16/AMX) or fp32")
        if precision == "bf16" and not on_gpu and not cpu_has_bf16():
            raise BackendUnavailable("torch bf16 on CPU needs AVX512-BF16 or AMX, which this CPU lacks")
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError("unknown precision {!r}".format(precision))
        if threads:
            torch.set_num_threads(int(threads))
        self.device, self.precision, self.input_size = device, precision, tuple(input_size)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = fold_batchnorm(source.fresh_model())
        graph = InferenceGraph(model.to(dtype), source.card, output=output, with_confidence=with_confidence)
        # mean/factor buffers stay float32: normalisation runs in fp32 before the cast.
        graph.model.to(device)
        graph.mean, graph.factor = graph.mean.to(device), graph.factor.to(device)
        self.graph = graph.eval()
        self.outputs = tuple(graph.output_names())
        self._torch = torch
        if channels_last is None:
            channels_last = True if on_gpu else self._faster_layout()
        self.channels_last = bool(channels_last)
        self.graph.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self._run = self.graph
        self._pipeline: Optional[CudaPipeline] = None  # set after compiling (which runs eagerly once)
        self.compiled = bool(compile) and self._compile()
        self.details = {"channels_last": self.channels_last, "threads": torch.get_num_threads()}
        if self.compiled:
            self.details["compiled"] = True
        if on_gpu:
            graphs = True if cuda_graphs is None else bool(cuda_graphs)
            autotune = True if cudnn_benchmark is None else bool(cudnn_benchmark)
            self._pipeline = CudaPipeline(self._run, device, self.input_size, len(self.outputs), graphs, autotune)
            self.details["cuda_graphs"] = self._pipeline.graphs
            self.details["cudnn_benchmark"] = autotune

    def _compile(self) -> bool:
        """Compile the graph and run it once (compilation happens on the first call)."""
        torch = self._torch
        w, h = self.input_size
        try:
            _allow_recompiles(torch, COMPILED_GRAPHS_PER_PROCESS)
            self._run = torch.compile(self.graph, dynamic=False, options={"freezing": True})
            self.infer(np.zeros((1, h, w, 3), np.uint8))
            return True
        except Exception as exc:  # no C++ compiler, unsupported op, inductor bug...
            LOG.warning("torch.compile failed (%s); running the graph uncompiled",
                        str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__)
            self._run = self.graph
            return False

    def _faster_layout(self) -> bool:
        """Whether NHWC is the faster CPU layout for this input size (see class docstring).

        torch hands a batch-1, <= 3x3, ungrouped convolution to oneDNN only when its input has
        more than 20480 elements; below that its fallback kernel is much slower in NHWC than
        in NCHW. From ~320x180 up every layer of these nets clears the threshold and NHWC wins
        (measured 2.5x for ENet at 640x360); tiny inputs stay NCHW. A rule rather than a
        timing at start-up: timings on a loaded CPU picked the wrong layout.
        """
        w, h = self.input_size
        return w * h >= 320 * 180

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:  # noqa: D102
        torch = self._torch
        if self._pipeline is not None:
            outs = self._pipeline.run(batch)
            return {name: arr for name, arr in zip(self.outputs, outs)}
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True) if batch.nbytes > (1 << 20) else x.to(self.device)
            if not self.channels_last:
                # The NHWC -> NCHW view is channels_last already; make it NCHW-contiguous.
                x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            out = self._run(x)
        if not isinstance(out, tuple):
            out = (out,)
        return {name: t.cpu().numpy() for name, t in zip(self.outputs, out)}


class _Slot:
    """One frame's buffers in :class:`CudaPipeline` (pinned host in/out, device input, events)."""

    def __init__(self, torch, device, shape) -> None:
        self.host_in = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        self.host_in_np = self.host_in.numpy()
        self.dev_in = torch.empty(shape, dtype=torch.uint8, device=device)
        self.uploaded, self.computed, self.downloaded = (torch.cuda.Event() for _ in range(3))
        self.graph = None
        self.dev_out: Optional[Tuple[Any, ...]] = None  # static outputs of the captured graph
        self.host_out: Optional[List[Any]] = None
        self.pending = False


class CudaPipeline:
    """Batch-1 CUDA execution of ``run`` with overlapped upload / compute / download.

    ``run`` maps a (1, H, W, 3) uint8 CUDA tensor to the graph output(s). Three streams of the
    backend's own (never the legacy default stream, which synchronises with every other):
    upload (pinned host -> device), compute, download (device -> pinned host); events order
    them per slot, two slots let consecutive frames overlap. With ``graphs`` each slot
    replays a CUDA graph captured for its static input buffer (one launch instead of ~100
    kernel launches per frame); the graphs share one memory pool.
    """

    SLOTS = 2

    def __init__(self, run, device: str, input_size: Tuple[int, int], num_outputs: int, graphs: bool,
                 cudnn_benchmark: bool = True) -> None:
        import torch

        self._torch, self._run, self._num_outputs = torch, run, num_outputs
        self.cudnn_benchmark = bool(cudnn_benchmark)
        dev = torch.device(device)
        self.device = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
        w, h = int(input_size[0]), int(input_size[1])
        self._lock = threading.Lock()
        with torch.cuda.device(self.device):
            self.upload, self.compute, self.download = (torch.cuda.Stream(self.device) for _ in range(3))
            self.slots = [_Slot(torch, self.device, (1, h, w, 3)) for _ in range(self.SLOTS)]
        self.graphs = bool(graphs) and self._capture()

    @contextlib.contextmanager
    def _autotune(self):
        """cuDNN's benchmark mode as asked, for this pipeline's calls only (the flag is process-wide)."""
        cudnn = self._torch.backends.cudnn
        old = cudnn.benchmark
        cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            cudnn.benchmark = old

    def _outputs(self, out) -> Tuple[Any, ...]:
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _capture(self) -> bool:
        """Capture one graph per slot (after an eager warm-up on a side stream, as CUDA graphs need)."""
        torch = self._torch
        try:
            with torch.cuda.device(self.device), torch.inference_mode(), self._autotune():
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self._run(self.slots[0].dev_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                pool = None
                for slot in self.slots:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        slot.dev_out = self._outputs(self._run(slot.dev_in))
                    pool = graph.pool()
                    slot.graph = graph
                torch.cuda.synchronize(self.device)
            return True
        except Exception as exc:  # an op that cannot be captured, driver limits...
            LOG.warning("CUDA graph capture failed (%s); running eagerly",
                        str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__)
            for slot in self.slots:
                slot.graph, slot.dev_out = None, None
            torch.cuda.synchronize(self.device)
            return False

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        """Run an (N, H, W, 3) uint8 batch frame by frame; returns the outputs batch-first."""
        torch = self._torch
        shape = tuple(self.slots[0].host_in.shape[1:])
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != shape:
            raise ValueError("expected (N, {}, {}, 3) uint8 frames, got {} {}".format(
                shape[0], shape[1], batch.dtype, batch.shape))
        results: List[List[np.ndarray]] = [[] for _ in range(self._num_outputs)]
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            for i in range(len(batch)):
                slot = self.slots[i % self.SLOTS]
                if slot.pending:
                    self._collect(slot, results)
                self._submit(slot, batch[i])
            for k in range(len(batch), len(batch) + self.SLOTS):  # the last frames, in order
                slot = self.slots[k % self.SLOTS]
                if slot.pending:
                    self._collect(slot, results)
        return [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in results]

    def _submit(self, slot: _Slot, frame: np.ndarray) -> None:
        torch = self._torch
        np.copyto(slot.host_in_np[0], frame)  # the slot's last download finished in _collect
        self.upload.wait_event(slot.computed)  # the previous frame of this slot no longer reads dev_in
        with torch.cuda.stream(self.upload):
            slot.dev_in.copy_(slot.host_in, non_blocking=True)
            slot.uploaded.record(self.upload)
        self.compute.wait_event(slot.uploaded)
        with torch.cuda.stream(self.compute):
            if slot.graph is not None:
                slot.graph.replay()
                outs = slot.dev_out
            else:
                with self._autotune():
                    outs = self._outputs(self._run(slot.dev_in))
                for t in outs:  # allocated on the compute stream, read on the download stream
                    t.record_stream(self.download)
            slot.computed.record(self.compute)
        self.download.wait_event(slot.computed)
        with torch.cuda.stream(self.download):
            if slot.host_out is None or any(h.shape != d.shape or h.dtype != d.dtype
                                            for h, d in zip(slot.host_out, outs)):
                slot.host_out = [torch.empty(d.shape, dtype=d.dtype, pin_memory=True) for d in outs]
            for host, dev in zip(slot.host_out, outs):
                host.copy_(dev, non_blocking=True)
            slot.downloaded.record(self.download)
        slot.pending = True

    def _collect(self, slot: _Slot, results: List[List[np.ndarray]]) -> None:
        slot.downloaded.synchronize()
        for k, host in enumerate(slot.host_out or []):
            results[k].append(host.numpy().copy())  # the pinned buffer is reused by the next frame
        slot.pending = False


def _probe(device: str) -> Optional[str]:
    if device == "cuda" and not cuda_available():
        return "CUDA not available to torch"
    return None


register_backend(BackendEntry(
    name="torch", devices=("cuda", "cpu"), probe=_probe, factory=lambda: TorchBackend,
    precisions={"cuda": ("fp16", "fp32"), "cpu": ("bf16", "fp32")},
    summary="PyTorch eager (optionally torch.compile); CUDA fp16 or CPU fp32/bf16"))
