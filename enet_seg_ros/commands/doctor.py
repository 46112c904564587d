"""``enet-seg doctor``: which inference backends work on this robot, how well and how fast.

Lists every backend x device x precision this package knows, usable or not and why (missing
package, no CUDA, CPU without bf16...), self-tests each usable one on a model and a frame
(label agreement with torch fp32 on the CPU, median ``segment`` latency), prints library
versions (torch, CUDA, TensorRT, torch2trt, ONNX Runtime, OpenVINO, JetPack) and the
``backend`` / ``precision`` / ``device`` to put in ``seg.yaml``. Exit 0 when at least one
backend works, 1 when none does, 2 with ``--strict`` when an asked backend cannot run.
"""
from __future__ import annotations

import argparse
from .common_args import output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the doctor flags."""
    p.add_argument("--weights", default=None, metavar="W",
                   help="weights file or shipped model name to self-test with (default: enet_camvid)")
    p.add_argument("--image", default=None, metavar="IMAGE",
                   help="frame to self-test on (default: a synthetic street-like frame)")
    p.add_argument("--size", default=None, metavar="WxH", help="network input size (default: the card's)")
    p.add_argument("--backend", default="all",
                   help="all, or a comma list of torch, onnxruntime, openvino, tensorrt")
    p.add_argument("--device", default=None, help="only this device (cpu, cuda, cuda:N)")
    p.add_argument("--runs", type=int, default=10, help="timed segment() calls per usable backend")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="calibration images: also self-test the int8 modes (slow: each calibrates first; "
                        "without it they run only through the card's int8 record and the cache)")
    p.add_argument("--strict", action="store_true",
                   help="with --backend: exit 2 when an asked backend cannot run here (names it and why)")
    p.add_argument("--cache-dir", default=None, help="ONNX / engine cache (default $ENET_SEG_CACHE or ~/.cache)")
    p.add_argument("--json", default=None, type=output_file(), metavar="FILE", help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Diagnose, print a table, write JSON; see the module docstring for exit codes."""
    import json
    from pathlib import Path

    from ..engine import parse_size
    from ..bench.doctor import diagnose, load_image
    from ..engine.registry import list_backends
    from ..weights import resolve_weights

    backends = None
    if args.backend != "all":
        backends = [b.strip() for b in args.backend.split(",") if b.strip()]
        for b in backends:
            if b not in list_backends():
                raise ValueError("unknown backend {!r}; expected all or a comma list of {}".format(
                    b, ", ".join(list_backends())))
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    weights = resolve_weights(args.weights)
    image = load_image(args.image) if args.image else None
    size = parse_size(args.size) if args.size else None

    def show(e) -> None:
        if e["usable"]:
            print("  ok    {backend:12s} {device:7s} {precision:5s} agreement {agreement_vs_torch_fp32:.4f}  "
                  "{ms_median:8.2f} ms{r}".format(r="  (" + e["reason"] + ")" if e["reason"] else "", **e))
        else:
            print("  --    {backend:12s} {device:7s} {precision:5s} {reason}".format(**e))

    print("enet-seg doctor: self-test with {}".format(Path(weights).name))
    report = diagnose(str(weights), image=image, input_size=size, runs=args.runs, backends=backends,
                      device=args.device, cache_dir=args.cache_dir, calibration=args.calib, progress=show)
    print("versions: " + ", ".join("{}={}".format(k, v) for k, v in report["versions"].items() if v))
    rec = report["recommended"]
    if rec:
        print("recommended for seg.yaml: backend: {backend}  precision: {precision}  device: {device}".format(**rec))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.strict and backends:
        for b in backends:
            mine = [e for e in report["backends"] if e["backend"] == b]
            if not any(e["usable"] for e in mine):
                raise RuntimeError("--strict: backend {} cannot run here: {}".format(
                    b, "; ".join("{}/{}: {}".format(e["device"], e["precision"], e["reason"]) for e in mine)
                    or "no candidate for device {}".format(args.device)))
    if not any(e["usable"] for e in report["backends"]):
        print("no inference backend works here")
        return 1
    return 0
