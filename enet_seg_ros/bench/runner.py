"""Benchmark runner: arch x backend x precision x size, against fp32 eager PyTorch.

For every configuration it measures, interleaved run by run so load changes hit both alike:

- ``ms_median`` / ``ms_p90``: the bare backend call on a model-size uint8 frame (includes the
  in-graph normalisation and argmax, so it is *more* work than the eager baseline);
- ``end_to_end_ms_median``: ``Segmenter.segment`` + ``Result.color()`` + ``Result.overlay()``
  on a frame of the same size (input checks, resize, backend, label mapping, colour, blend).

The baseline ``torch-eager`` is the network exactly as loaded (fp32, BN not folded, NCHW),
called under ``torch.inference_mode()`` on a normalised float tensor, returning logits. It is
timed before and again after the backends of each (arch, size) block and the faster of the two
medians is the baseline (``eager_ms_medians`` keeps both): a burst of load on a shared machine
during one baseline run would otherwise inflate every speed-up of the block.
Without weights, networks are randomly initialised: speed does not depend on weight values
(no sparsity tricks anywhere), but label agreement of lossy modes does, so agreement is only
meaningful with trained weights.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..engine.preprocess import Preprocess, plan, to_model_input
from ..engine.result import palette_lut
from .flops import count_macs
from .machine import machine_info, matmul_gflops

LOG = logging.getLogger(__name__)
EAGER = "torch-eager"
RANDOM_NUM_CLASSES = 20  # 19 Cityscapes classes + void, as the papers' parameter counts use


@dataclass
class BenchConfig:
    """What to benchmark (see ``enet-seg bench --help``)."""

    archs: Sequence[str]
    backends: Sequence[str] = ("torch", "onnxruntime")
    sizes: Sequence[Tuple[int, int]] = ((640, 360),)
    precisions: Sequence[str] = ("default",)  # "default" = each backend's default precision
    runs: int = 30
    warmup: int = 5
    threads: Optional[int] = None
    weights: Dict[str, str] = field(default_factory=dict)  # arch -> weights path
    calibration: Optional[str] = None  # image folder for int8 modes
    agreement_dir: Optional[str] = None  # labelled frames (e.g. CamVid val) for label agreement
    agreement_limit: int = 101
    cache_dir: Optional[str] = None
    device: Optional[str] = None


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _images(folder: Optional[str], limit: int) -> List[Path]:
    if not folder:
        return []
    from ..engine.calib import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError("{}: agreement image folder not found".format(root))
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError("{}: no images for the agreement check".format(root))
    return files[:limit]


def synthetic_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A street-like RGB test frame (smooth regions + edges), so colour/overlay work realistically."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 3] = (120, 160, 220)  # sky
    img[height // 3: 2 * height // 3] = (90, 90, 90)  # buildings
    img[2 * height // 3:] = (110, 100, 110)  # road
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(height // 3, height))
        cv2.rectangle(img, (x, y), (x + width // 12, y + height // 10), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    noise = rng.integers(-12, 12, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _load_rgb(path: Path, size: Tuple[int, int]) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("{}: unreadable image".format(path))
    return np.ascontiguousarray(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)[..., ::-1])


class _Eager:
    """The baseline: the network as loaded, fp32 NCHW, eager, inference_mode."""

    def __init__(self, model, card) -> None:
        import torch

        self.torch, self.model, self.card = torch, model.eval(), card
        self.pre = Preprocess.from_card(card)  # the engine graph's normalisation
        self.lut = palette_lut(card.palette)

    def tensor(self, frame_rgb: np.ndarray):
        img = frame_rgb[..., ::-1] if self.pre.swap_rb("rgb") else frame_rgb
        return self.torch.from_numpy(self.pre.normalize(img))[None]

    def logits(self, x):
        with self.torch.inference_mode():
            return self.model(x)

    def labels(self, frame_rgb: np.ndarray) -> np.ndarray:
        return self.logits(self.tensor(frame_rgb)).argmax(1)[0].to(self.torch.uint8).numpy()

    def end_to_end(self, frame_rgb: np.ndarray) -> np.ndarray:
        labels = self.labels(frame_rgb)
        color = np.take(self.lut, labels, axis=0)
        return cv2.addWeighted(frame_rgb, 0.5, color, 0.5, 0.0)


def _time_pair(bare, e2e, runs: int, warmup: int) -> Tuple[List[float], List[float]]:
    for _ in range(warmup):
        bare()
        e2e()
    t_bare, t_e2e = [], []
    for _ in range(runs):
        t = time.perf_counter()
        bare()
        t_bare.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        e2e()
        t_e2e.append((time.perf_counter() - t) * 1e3)
    return t_bare, t_e2e


def _source_for(arch: str, config: BenchConfig):
    """(ModelSource, trained?) for ``arch``: its weights file, else a seeded random model."""
    import torch

    from ..engine.source import load_source
    from ..nets import build_model
    from ..weights import ModelCard

    path = config.weights.get(arch)
    if path:
        return load_source(path), True
    torch.manual_seed(0)
    model = build_model(arch, RANDOM_NUM_CLASSES).eval()
    names = ["class{}".format(i) for i in range(RANDOM_NUM_CLASSES)]
    palette = [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(RANDOM_NUM_CLASSES)]
    # A fixed card size keeps the model digest (and so the ONNX cache key) independent of --size.
    card = ModelCard(arch=arch, num_classes=RANDOM_NUM_CLASSES, class_names=names, palette=palette,
                     input_size=[640, 360], source="randomly initialised (benchmark)")
    return load_source((model, card)), False


def run_benchmark(config: BenchConfig, progress=None) -> Dict[str, Any]:
    """Run every configuration; returns ``{"machine": {...}, "results": [...], "skipped": [...]}``."""
    import torch

    from ..engine import Segmenter

    say = progress or (lambda msg: LOG.info("%s", msg))
    if config.threads:
        torch.set_num_threads(int(config.threads))
    machine = machine_info(config.threads)
    machine["matmul_gflops_fp32"] = round(matmul_gflops(config.threads), 1)
    say("machine: {} ({} cores, {} threads), fp32 GEMM {:.0f} GFLOP/s".format(
        machine["cpu"], machine["cores"], machine["threads"], machine["matmul_gflops_fp32"]))
    peak = machine["matmul_gflops_fp32"]
    agreement_files = _images(config.agreement_dir, config.agreement_limit)
    results: List[Dict[str, Any]] = []
    skipped: List[Dict[str, Any]] = []
    for arch in config.archs:
        source, trained = _source_for(arch, config)
        params = sum(p.numel() for p in source.model.parameters())
        for size in config.sizes:
            w, h = size
            macs = count_macs(source.model, size)
            gflops = 2.0 * macs / 1e9
            frame = _load_rgb(agreement_files[0], size) if agreement_files else synthetic_frame(w, h)
            eager = _Eager(source.fresh_model(), source.card)
            x = eager.tensor(frame)

            def time_eager() -> Tuple[List[float], List[float]]:
                return _time_pair(lambda: eager.logits(x), lambda: eager.end_to_end(frame), config.runs,
                                  config.warmup)

            t_bare, t_e2e = time_eager()
            eager_ms = float(np.median(t_bare))
            base = dict(arch=arch, width=w, height=h, gflops=round(gflops, 3), params=int(params),
                        fp16_mb=round(params * 2 / 1e6, 3), weights="trained" if trained else "random")
            block_start = len(results)
            results.append(_record(base, EAGER, "fp32", "cpu", t_bare, t_e2e, eager_ms, peak, {}))
            say(_line(results[-1]))
            reference: Dict[int, np.ndarray] = {}
            for backend_spec in config.backends:
                # "torch+compile" = the torch backend with torch.compile (opt-in, slow first start).
                backend, _, flavour = backend_spec.partition("+")
                extra = {"compile": True} if flavour == "compile" else {}
                for precision in config.precisions:
                    prec = None if precision == "default" else precision
                    label = "{}/{}/{}x{}".format(backend_spec, precision, w, h)
                    try:
                        seg = Segmenter(source, backend=backend, device=config.device, precision=prec,
                                        input_size=size, resize_policy="stretch", threads=config.threads,
                                        cache_dir=config.cache_dir, calibration=config.calibration,
                                        strict=backend != "auto", warmup=1, **extra)
                    except Exception as exc:  # unavailable backend / precision on this machine
                        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                        skipped.append({"arch": arch, "backend": backend_spec, "precision": precision,
                                        "width": w, "height": h, "reason": reason})
                        say("skip {} {}: {}".format(arch, label, reason))
                        continue
                    batch = to_model_input(frame, plan(size, size), seg.card.normalization.channel_order == "bgr")[None]
                    bare_fn = lambda: seg.backend.infer(batch)  # noqa: E731

                    def e2e_fn() -> None:
                        result = seg.segment(frame)
                        result.color()
                        result.overlay(frame, 0.5)

                    t_bare, t_e2e = _time_pair(bare_fn, e2e_fn, config.runs, config.warmup)
                    details = {k: str(v) for k, v in seg.backend.details.items()}
                    if backend == "auto":
                        details["requested"] = "auto"
                    name = seg.backend_name + ("+compile" if seg.backend.details.get("compiled") else "")
                    rec = _record(base, name, seg.precision, seg.device, t_bare, t_e2e, eager_ms, peak, details)
                    if agreement_files:
                        rec.update(_agreement(seg, eager, agreement_files, size, reference))
                    results.append(rec)
                    say(_line(rec))
                    seg.close()
            _rebase_on_faster_eager(results, block_start, base, time_eager(), peak, say)
    machine["loadavg_at_end"] = [round(v, 2) for v in _loadavg()]
    machine["matmul_gflops_fp32_at_end"] = round(matmul_gflops(config.threads), 1)
    return {"machine": machine, "conventions": CONVENTIONS, "results": results, "skipped": skipped}


CONVENTIONS = {
    "gflops": "2 x multiply-adds of conv / transposed-conv / linear layers at the given input size, batch 1",
    "ms_median": "bare backend call on a model-size uint8 frame (in-graph normalisation + argmax included); "
                 "torch-eager: network only, float NCHW in, logits out",
    "end_to_end_ms_median": "Segmenter.segment (checks, resize, backend, label mapping) + colour + overlay",
    "speedup_vs_eager": "torch-eager ms_median / this ms_median, same arch, size and run; the eager baseline "
                        "is the faster of two timings, before and after the block's backends (eager_ms_medians)",
    "matmul_fraction": "achieved GFLOP/s (gflops / ms_median) / fp32 GEMM GFLOP/s measured in the same run",
    "agreement_vs_fp32": "fraction of pixels whose label equals fp32 eager PyTorch's, over the agreement frames",
    "fp16_mb": "parameters x 2 bytes / 1e6",
}


def _loadavg() -> Tuple[float, float, float]:
    import os

    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


def _record(base: Dict[str, Any], backend: str, precision: str, device: str, t_bare: List[float],
            t_e2e: List[float], eager_ms: float, peak: float, details: Dict[str, str]) -> Dict[str, Any]:
    ms = float(np.median(t_bare))
    e2e = float(np.median(t_e2e))
    achieved = base["gflops"] / (ms / 1e3) if ms > 0 else 0.0
    rec = dict(base)
    rec.update(backend=backend, precision=precision, device=device, ms_median=round(ms, 3),
               ms_p90=round(_percentile(t_bare, 90), 3), fps=round(1e3 / ms, 2) if ms > 0 else None,
               speedup_vs_eager=round(eager_ms / ms, 3) if ms > 0 else None,
               end_to_end_ms_median=round(e2e, 3), end_to_end_ms_p90=round(_percentile(t_e2e, 90), 3),
               e2e_over_bare=round(e2e / ms, 3) if ms > 0 else None,
               gflops_per_s=round(achieved, 1), matmul_fraction=round(achieved / peak, 3) if peak else None,
               runs=len(t_bare), details=details)
    return rec


def _rebase_on_faster_eager(results: List[Dict[str, Any]], start: int, base: Dict[str, Any],
                            second: Tuple[List[float], List[float]], peak: float, say) -> None:
    """Use the faster of the block's two eager timings as its baseline; recompute its speed-ups."""
    first = results[start]
    first_ms, second_ms = first["ms_median"], round(float(np.median(second[0])), 3)
    if second_ms < first_ms:
        first = results[start] = _record(base, EAGER, "fp32", "cpu", second[0], second[1], second_ms, peak, {})
    first["eager_ms_medians"] = [first_ms, second_ms]
    for rec in results[start + 1:]:
        rec["speedup_vs_eager"] = round(first["ms_median"] / rec["ms_median"], 3) if rec["ms_median"] > 0 else None
    say("{} {}x{}: eager baseline {:.2f} ms before the backends, {:.2f} ms after; speed-ups use {:.2f} ms".format(
        first["arch"], first["width"], first["height"], first_ms, second_ms, first["ms_median"]))


def _agreement(seg, eager: _Eager, files: List[Path], size: Tuple[int, int],
               reference: Dict[int, np.ndarray]) -> Dict[str, Any]:
    """Label agreement of ``seg`` with fp32 eager PyTorch over ``files`` (references cached)."""
    same = total = 0
    for i, path in enumerate(files):
        frame = _load_rgb(path, size)
        if i not in reference:
            reference[i] = eager.labels(frame)
        got = seg.segment(frame, output="model").labels
        same += int(np.count_nonzero(got == reference[i]))
        total += got.size
    return {"agreement_vs_fp32": round(same / total, 5) if total else None, "agreement_frames": len(files)}


def _line(rec: Dict[str, Any]) -> str:
    extra = "" if rec.get("agreement_vs_fp32") is None else ", agreement {:.2%}".format(rec["agreement_vs_fp32"])
    return "{arch:8s} {backend:12s} {precision:5s} {width}x{height}: {ms_median:8.2f} ms (p90 {ms_p90:.2f}), " \
           "e2e {end_to_end_ms_median:.2f} ms, x{speedup_vs_eager} vs eager, {gflops_per_s} GFLOP/s " \
           "({matmul_fraction:.0%} of GEMM){extra}".format(extra=extra, **rec)
