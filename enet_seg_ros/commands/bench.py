"""``enet-seg bench``: latency / fps / GFLOPs of archs x backends x sizes vs fp32 eager PyTorch."""
from __future__ import annotations

import argparse

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
                   help="default (each backend's own), or a comma list of fp32,fp16,bf16,int8; "
                        "'all' = default + bf16 + int8. Unsupported combinations are skipped")
    p.add_argument("--size", default="640x360", help="WxH[,WxH...] network input sizes")
    p.add_argument("--runs", type=int, default=30, help="timed runs per configuration (median / p90)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--device", default=None, help="restrict backends to cpu or cuda")
    p.add_argument("--calib", default=None, metavar="DIR", help="calibration images for int8 modes")
    p.add_argument("--agreement", default=None, metavar="DIR",
                   help="images (e.g. CamVid val) on which to measure label agreement with fp32 eager")
    p.add_argument("--agreement-limit", type=int, default=101, help="at most this many agreement images")
    p.add_argument("--cache-dir", default=None, help="ONNX / engine cache (default $ENET_SEG_CACHE or ~/.cache)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--markdown", default=None, metavar="OUT", help="write the table as Markdown")
    p.add_argument("--strict", action="store_true",
                   help="a named --backend (not all) that cannot start on --device is an error (exit 2) naming it "
                        "and why; checked before timing, and again after (no result for it at any precision)")


def _split(value: str):
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_strict(backends, device) -> None:
    """Raise naming the first explicitly asked backend that cannot run on ``device`` here."""
    from ..engine.select import chain_for, precheck

    for b in backends:
        name = b.split("+")[0]
        if name == "auto":
            continue
        reasons = []
        for backend, dev in chain_for(name, device):
            why = precheck(backend, dev.split(":")[0])
            if why is None:
                break
            reasons.append("{}-{}: {}".format(backend, dev, why))
        else:
            raise RuntimeError("--strict: backend {} cannot start here: {}".format(b, "; ".join(reasons)))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print / write the report."""
    import json
    from pathlib import Path

    from ..bench import BenchConfig, run_benchmark
    from ..bench.report import to_markdown
    from ..engine import parse_size
    from ..engine.select import BACKENDS
    from ..nets import list_archs
    from ..weights import read_card

    weights = {}
    for path in args.weights:
        weights[read_card(path).arch] = path
    archs = list(ARCHS) if args.arch == "all" else _split(args.arch)
    for arch in archs:
        if arch not in list_archs():
            raise ValueError("unknown arch {!r}; expected one of {} or all".format(arch, list_archs()))
    backends = list(BACKENDS) if args.backend == "all" else _split(args.backend)
    for b in backends:
        if b not in BACKENDS + ("auto", "torch+compile"):
            raise ValueError("unknown backend {!r}; expected auto, {} or all".format(b, ", ".join(BACKENDS)))
    precisions = ["default", "bf16", "int8"] if args.precision == "all" else _split(args.precision)
    for prec in precisions:
        if prec not in ("default", "fp32", "fp16", "bf16", "int8"):
            raise ValueError("unknown precision {!r}".format(prec))
    if args.strict and args.backend != "all":
        _check_strict(backends, args.device)
    sizes = [parse_size(s) for s in _split(args.size)]
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    config = BenchConfig(archs=archs, backends=backends, sizes=sizes, precisions=precisions, runs=args.runs,
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0
