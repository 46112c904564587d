"""torch-CUDA backend timings (run by gpu_cuda_bench.sh; see BENCHMARKS.md, "GPU (torch CUDA)").

For each arch x size x precision x mode (eager / CUDA graphs / graphs with cuDNN heuristics
instead of its benchmark) it times, on one GPU:

- ``bare``: the backend call on one model-size uint8 frame already in host memory (pinned
  upload, network, argmax, label download: ``Backend.infer``);
- ``e2e``: ``Segmenter.segment`` on a camera frame of the same size (input checks, colour
  order, the backend call, labels at camera resolution) - what a ROS node pays per frame.

Each figure is the median (and p90) over a time budget per configuration, after warm-up.
``--smoke`` runs the same code on the CPU at a tiny size (eager only) to check the plumbing.
Needs only torch (+ numpy, safetensors): no rclpy, OpenVINO or TensorRT.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ARCHS = ("enet", "erfnet", "espnet")
SIZES = ((640, 360), (1280, 720), (2048, 1024))


def _time(fn: Callable[[], Any], budget_s: float, min_runs: int, sync: Callable[[], None]) -> Dict[str, Any]:
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 2000):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": round(statistics.median(times), 4), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 4),
            "runs": len(times)}


def _model(arch: str, size):
    """The shipped CamVid weights when present (speed does not depend on weight values)."""
    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard, load_model

    shipped = Path(__file__).resolve().parents[1] / "models" / "{}_camvid.safetensors".format(arch)
    if shipped.is_file():
        model, card = load_model(shipped)
        return model, card, shipped.name
    card = ModelCard.for_dataset(arch, get_label_spec("camvid"), list(size))
    return build_model(arch, card.num_classes), card, "random init"


def main(argv=None) -> int:
    """Run the grid and write ``OUT/gpu_cuda_bench.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny size, eager only: checks the script works")
    p.add_argument("--budget", type=float, default=0.25, help="seconds of timing per measurement")
    p.add_argument("--compiled", action="store_true",
                   help="after the grid, ENet 1280x720 fp16 torch.compile-d + CUDA graphs (a one-off compile)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from enet_seg_ros.bench.machine import machine_info
    from enet_seg_ros.engine import Segmenter

    if args.smoke:
        device, sizes, precisions, modes, budget, warmup = "cpu", ((64, 48),), ("fp32",), ("eager",), 0.0, 1
        sync = lambda: None  # noqa: E731
    else:
        if not torch.cuda.is_available():
            print("gpu_cuda_bench: no CUDA device (torch.cuda.is_available() is False); use --smoke on CPU",
                  file=sys.stderr)
            return 2
        # graphs_heuristic (fp16): graphs with cuDNN's heuristics instead of its benchmark (the default)
        device, sizes, precisions, modes, budget, warmup = "cuda", SIZES, ("fp32", "fp16"), \
            ("eager", "graphs", "graphs_heuristic"), args.budget, 3
        sync = torch.cuda.synchronize
    rows: List[Dict[str, Any]] = []
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu_cuda_bench_smoke.json" if args.smoke else "gpu_cuda_bench.json")

    def write() -> None:
        # After every row: a run stopped by its caller's timeout keeps what it measured.
        report = {"what": "torch backend, {} ({})".format(device, "smoke" if args.smoke else "full grid"),
                  "machine": machine, "cuda": torch.version.cuda,
                  "wall_s": round(time.perf_counter() - started, 1), "rows": rows}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(path)

    def measure(model, card, weights: str, arch: str, w: int, h: int, precision: str, mode: str) -> None:
        frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        row: Dict[str, Any] = {"arch": arch, "weights": weights, "size": "{}x{}".format(w, h),
                               "precision": precision, "mode": mode, "device": device}
        try:
            options = ({"cuda_graphs": mode != "eager", "cudnn_benchmark": mode != "graphs_heuristic",
                        "compile": mode == "compiled_graphs"} if device == "cuda" else {})
            t0 = time.perf_counter()
            seg = Segmenter((model, card), backend="torch", device=device, precision=precision,
                            input_size=(w, h), strict=True, warmup=warmup, **options)
            row["start_s"] = round(time.perf_counter() - t0, 1)
            batch = frame[None]
            row["bare"] = _time(lambda: seg.backend.infer(batch), budget, 3 if args.smoke else 10, sync)
            row["e2e"] = _time(lambda: seg.segment(frame), budget, 3 if args.smoke else 10, sync)
            row["details"] = {k: v for k, v in seg.backend.details.items()}
            seg.close()
            del seg
        except Exception as exc:  # record and go on: one failing config must not hide the rest
            row["error"] = "{}: {}".format(exc.__class__.__name__, str(exc).splitlines()[0][:300]
                                           if str(exc) else "")
        rows.append(row)
        write()
        print("{arch:7s} {size:>9s} {precision} {mode:6s} bare {b} ms  e2e {e} ms{err}".format(
            b=row.get("bare", {}).get("median_ms", "-"), e=row.get("e2e", {}).get("median_ms", "-"),
            err="  ERROR " + row["error"] if "error" in row else "", **row), flush=True)

    machine = machine_info()
    for arch in ARCHS:
        model, card, weights = _model(arch, sizes[0])
        for w, h in sizes:
            for precision in precisions:
                for mode in modes:
                    if mode == "graphs_heuristic" and precision != "fp16":
                        continue  # the heuristics' slow kernels were an fp16 finding
                    measure(model, card, weights, arch, w, h, precision, mode)
            if device == "cuda":
                torch.cuda.empty_cache()
    if device == "cuda" and args.compiled:
        # The issue-12 target configuration once more, torch.compile-d (inductor fuses the
        # elementwise work between convolutions) and replayed as a graph: a one-off compile.
        model, card, weights = _model("enet", (1280, 720))
        measure(model, card, weights, "enet", 1280, 720, "fp16", "compiled_graphs")
    print("wrote {} ({} configurations, {:.0f} s)".format(path, len(rows), time.perf_counter() - started))
    return 1 if any("error" in r for r in rows) and not any("bare" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
