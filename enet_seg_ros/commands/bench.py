"""``enet-seg bench``: latency / fps / GFLOPs of archs x backends x sizes vs fp32 eager PyTorch.

``enet-seg bench node|qos|metrics|eval`` run the other benchmarks of :mod:`enet_seg_ros.bench`
(seg_node vs bare inference, DDS transport, evaluator overhead, evaluation vs bare inference).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from .common_args import count_arg, output_file

ARCHS = ("enet", "erfnet", "espnet")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the bench flags."""
    p.add_argument("--arch", default="all", help="enet, erfnet, espnet, espnet_c or all (comma list allowed)")
    p.add_argument("--weights", action="append", default=[], metavar="W",
                   help="weights file (repeatable, one per arch; its card gives the arch). Archs without "
                        "weights use randomly initialised networks: speed does not depend on weight values")
    p.add_argument("--backend", default="all",
                   help="auto, torch, torch+compile (torch.compile, slow first start), onnxruntime, openvino, tensorrt "
                        "or all (comma list allowed); fp32 eager PyTorch is always measured as the baseline")
    p.add_argument("--precision", default="default",
                   help="default (each backend's own), auto (Segmenter's default: the fastest validated "
                        "precision of the model card), or a comma list of fp32,fp16,bf16,int8; "
                        "'all' = default + bf16 + int8. Unsupported combinations are skipped")
    p.add_argument("--modes", default=None, metavar="B/P,...",
                   help="explicit backend/precision pairs instead of --backend x --precision, e.g. "
                        "torch/default,openvino/int8,auto/auto (auto/auto = a default-settings Segmenter)")
    p.add_argument("--size", default="640x360", help="WxH[,WxH...] network input sizes")
    p.add_argument("--runs", type=int, default=30, help="timed runs per configuration (median / p90)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--threads", type=count_arg(1), default=None, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--device", default=None, help="restrict backends to cpu or cuda")
    p.add_argument("--calib", default=None, metavar="DIR", help="calibration images for int8 modes")
    p.add_argument("--agreement", default=None, metavar="DIR",
                   help="images (e.g. CamVid val) on which to measure label agreement with fp32 eager")
    p.add_argument("--agreement-limit", type=int, default=101, help="at most this many agreement images")
    p.add_argument("--cache-dir", default=None, help="ONNX / engine cache (default $ENET_SEG_CACHE or ~/.cache)")
    p.add_argument("--json", default=None, type=output_file(), metavar="OUT", help="write the report as JSON")
    p.add_argument("--markdown", default=None, type=output_file(), metavar="OUT", help="write the table as Markdown")
    p.add_argument("--strict", action="store_true",
                   help="a named --backend (not all) that cannot start on --device is an error (exit 2) naming it "
                        "and why; checked before timing, and again after (no result for it at any precision)")
    sub = p.add_subparsers(dest="bench", metavar="{node,qos,metrics,eval}",
                           help="another benchmark instead of inference (each has its own --help)")
    q = sub.add_parser("qos", help="best effort vs reliable transport of raw frames (image_source -> probe)")
    q.add_argument("--rates", default="10", help="comma-separated publish rates in Hz")
    q.add_argument("--frames", type=int, default=100)
    q.add_argument("--size", default="640x360")
    n = sub.add_parser("node", help="seg_node vs bare Segmenter throughput and added latency")
    n.add_argument("--weights", default="", help="weights (default: the shipped model)")
    n.add_argument("--backend", default="auto")
    n.add_argument("--seconds", type=float, default=6.0, help="length of each measurement window")
    n.add_argument("--rounds", type=int, default=3, help="interleaved bare / node rounds")
    m = sub.add_parser("metrics", help="ms per frame of the evaluators on synthetic full-size frames")
    m.add_argument("--size", default="2048x1024", help="WxH (default 2048x1024)")
    m.add_argument("--frames", type=int, default=20)
    e = sub.add_parser("eval", help="evaluation pipeline vs bare inference, interleaved rounds")
    e.add_argument("--dataset", default="camvid", choices=("camvid", "cityscapes"))
    e.add_argument("--images", type=Path, default=None, help="labelled folder (with --labels) ...")
    e.add_argument("--labels", type=Path, default=None)
    e.add_argument("--bag", type=Path, default=None, help="... or a bag made by enet-seg make-bag")
    e.add_argument("--weights", required=True)
    e.add_argument("--backend", default="auto")
    e.add_argument("--threads", type=count_arg(1), default=None, help="backend CPU threads")
    e.add_argument("--workers", type=count_arg(1), default=2, help="decode threads")
    e.add_argument("--rounds", type=int, default=3)
    for other in (q, n, m, e):
        other.add_argument("--json", default=None, type=output_file(), metavar="OUT", help="also write the results to this file")


def _split(value: str):
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_strict(backends, device) -> None:
    """Raise naming the first explicitly asked backend that cannot run on ``device`` here."""
    from ..engine.registry import chain_for, probe

    for b in backends:
        name = b.split("+")[0]
        if name == "auto":
            continue
        reasons = []
        for backend, dev in chain_for(name, device):
            why = probe(backend, dev)
            if why is None:
                break
            reasons.append("{}-{}: {}".format(backend, dev, why))
        else:
            raise RuntimeError("--strict: backend {} cannot start here: {}".format(b, "; ".join(reasons)))


def _write_json(path: Any, result: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print / write the report."""
    if args.bench:
        result = _run_other(args)
        if result is not None:
            print(json.dumps(result, indent=2))
        _write_json(args.json, result)
        return 0
    from ..bench import BenchConfig, run_benchmark
    from ..bench.report import to_markdown
    from ..engine import parse_size
    from ..engine.registry import list_backends
    from ..nets import list_archs
    from ..weights import read_card

    weights = {}
    for path in args.weights:
        weights[read_card(path).arch] = path
    archs = list(ARCHS) if args.arch == "all" else _split(args.arch)
    for arch in archs:
        if arch not in list_archs():
            raise ValueError("unknown arch {!r}; expected one of {} or all".format(arch, list_archs()))
    known = list_backends()
    backends = list(known) if args.backend == "all" else _split(args.backend)
    for b in backends:
        if b not in known + ("auto", "torch+compile"):
            raise ValueError("unknown backend {!r}; expected auto, {} or all".format(b, ", ".join(known)))
    precisions = ["default", "bf16", "int8"] if args.precision == "all" else _split(args.precision)
    for prec in precisions:
        if prec not in ("default", "auto", "fp32", "fp16", "bf16", "int8"):
            raise ValueError("unknown precision {!r}".format(prec))
    if args.strict and args.backend != "all":
        _check_strict(backends, args.device)
    sizes = [parse_size(s) for s in _split(args.size)]
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    modes = None
    if args.modes:
        modes = [tuple(m.split("/", 1)) for m in _split(args.modes)]
        for mode in modes:
            if len(mode) != 2 or mode[0].partition("+")[0] not in known + ("auto",) or mode[1] not in (
                    "default", "auto", "fp32", "fp16", "bf16", "int8"):
                raise ValueError("--modes wants backend/precision pairs, got {!r}".format("/".join(mode)))
    config = BenchConfig(archs=archs, backends=backends, modes=modes, sizes=sizes, precisions=precisions, runs=args.runs,
                         warmup=max(0, args.warmup), threads=args.threads, weights=weights, calibration=args.calib,
                         agreement_dir=args.agreement, agreement_limit=args.agreement_limit,
                         cache_dir=args.cache_dir, device=args.device)
    report = run_benchmark(config, progress=print)
    if args.strict and args.backend != "all":
        ran = {r.get("backend", "").split("+")[0] for r in report["results"]}
        for b in backends:
            name = b.split("+")[0]
            if name != "auto" and name not in ran:
                why = [s["reason"] for s in report["skipped"] if s["backend"] == b]
                raise RuntimeError("--strict: backend {} could not start at any precision: {}".format(
                    b, why[0] if why else "no result"))
    text = to_markdown(report)
    print()
    print(text)
    _write_json(args.json, report)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


def _run_other(args: argparse.Namespace) -> Any:
    """``node``, ``qos``, ``metrics`` or ``eval``: the result to print and save."""
    from ..engine import parse_size

    if args.bench == "qos":
        from ..bench.machine import machine_line
        from ..bench.ros_bench import bench_qos

        return {"machine": machine_line(), "rows": bench_qos([float(r) for r in _split(args.rates)], args.frames,
                                                             args.size)}
    if args.bench == "node":
        from ..bench.ros_bench import bench_node
        from ..weights import resolve_weights

        return bench_node(str(resolve_weights(args.weights)), args.backend, args.seconds, args.rounds)
    if args.bench == "metrics":
        from ..bench.metrics import run as bench_metrics
        from ..bench.metrics import to_markdown

        width, height = parse_size(args.size)
        rows = bench_metrics(width, height, args.frames)
        print(to_markdown(rows, width, height, args.frames))
        return {"size": [width, height], "frames": args.frames, "ms_per_frame": dict(rows)} if args.json else None
    from ..bench.eval import bench_eval

    return bench_eval(args.weights, dataset=args.dataset, images=args.images, labels=args.labels, bag=args.bag,
                      backend=args.backend, threads=args.threads, workers=args.workers, rounds=args.rounds)
