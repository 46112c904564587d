"""``enet-seg export``: weights -> ONNX graph or TensorRT engine."""
from __future__ import annotations

import argparse
from .common_args import output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the export flags."""
    p.add_argument("--weights", required=True, help="weights file (.safetensors with a model card)")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt"), help="output format")
    p.add_argument("--size", default=None, help="network input WxH (default: the card's input size)")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"),
                   help="onnx: fp32 (default) or int8 (static quantisation, needs --calib); "
                        "tensorrt: fp16 (default), fp32 or int8 (from a Q/DQ graph: --qdq, or one quantised "
                        "from --calib images)")
    p.add_argument("--calib", default=None, metavar="DIR", help="calibration images for int8")
    p.add_argument("--qdq", default=None, metavar="ONNX",
                   help="tensorrt int8: a Q/DQ ONNX of the network graph (float NCHW 'input' -> 'logits'); "
                        "without it one is quantised from --calib")
    p.add_argument("--builder", default="onnx", choices=("onnx", "torch2trt"),
                   help="tensorrt: TensorRT's ONNX parser (default) or torch2trt (opt-in; ESPNet only, falls "
                        "back to the parser)")
    p.add_argument("--graph", default="full", choices=("full", "network"),
                   help="onnx only: full = uint8 NHWC 'image' in, uint8 'labels' out (normalisation and "
                        "argmax inside, the model card in the metadata); network = float NCHW 'input' "
                        "(normalised) in, 'logits' out")
    p.add_argument("--confidence", action="store_true", help="full graph: add a 'confidence' output")
    p.add_argument("--out", required=True, type=output_file(), help="output path (.onnx or .engine)")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags the chosen format / precision / graph would silently ignore (ValueError)."""
    onnx = args.format == "onnx"
    int8 = args.precision == "int8"
    wrong = []
    if args.calib and not int8:
        wrong.append("--calib is read only with --precision int8")
    if args.qdq and not (int8 and not onnx):
        wrong.append("--qdq is read only with --format tensorrt --precision int8")
    if onnx and args.builder != "onnx":
        wrong.append("--builder is a TensorRT setting (--format tensorrt)")
    if not onnx and args.graph != "full":
        wrong.append("--graph is an ONNX setting (the TensorRT engine is always the network graph)")
    if args.confidence and (not onnx or args.graph != "full"):
        wrong.append("--confidence adds an output to the full ONNX graph only (--format onnx --graph full)")
    if wrong:
        raise ValueError("; ".join(wrong))


def run(args: argparse.Namespace) -> int:
    """Export and report what was written."""
    import shutil
    from pathlib import Path

    from ..engine import parse_size
    from ..engine.source import load_source

    check_flags(args)
    source = load_source(args.weights)
    size = parse_size(args.size) if args.size else parse_size(source.card.input_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "onnx":
        from ..engine.export import export_onnx_bytes, quantize_int8

        precision = args.precision or "fp32"
        if precision == "fp16":
            raise ValueError("ONNX export is fp32 or int8; fp16 engines come from --format tensorrt")
        if precision == "int8" and args.graph != "full":
            raise ValueError("int8 ONNX export needs --graph full (uint8 input is what gets calibrated)")
        data = export_onnx_bytes(source, size, flavour=args.graph, with_confidence=args.confidence,
                                 dynamic_batch=args.graph == "full")
        if precision == "int8":
            if not args.calib:
                raise ValueError("--precision int8 needs --calib DIR (calibration images)")
            from ..engine.calib import calibration_frames
            from ..engine.preprocess import pad_colour

            norm = source.card.normalization
            frames = calibration_frames(args.calib, size, source.card.resize_policy, norm.channel_order,
                                        pad_colour(norm.mean))
            tmp = out.with_name(out.name + ".fp32.tmp")
            tmp.write_bytes(data)
            try:
                quantize_int8(tmp, out, frames)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_bytes(data)
            try:
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
    else:
        from ..engine.backends.tensorrt_backend import ENGINE_SUFFIX, TensorRTBackend, tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            raise RuntimeError("TensorRT export needs an NVIDIA GPU with the tensorrt package "
                               "(and ideally torch2trt): {}".format(why))
        backend = TensorRTBackend(source, size, precision=args.precision, calibration=args.calib,
                                  qdq_onnx=args.qdq, builder=args.builder)
        engine_path, _ = backend.cache.paths(backend.fields, ENGINE_SUFFIX)
        shutil.copyfile(engine_path, out)
        runner = backend._runner
        print("TensorRT {} engine ({} builder, TensorRT {}, {}): input 'input' {} 1x3x{}x{} normalised, "
              "output 'logits' {}".format(backend.precision, backend.builder, backend.env["tensorrt"],
                                          backend.env["gpu"], str(runner.in_dtype).replace("torch.", ""),
                                          size[1], size[0], str(runner.out_dtype).replace("torch.", "")))
    print("wrote {} ({:.2f} MB) for {} at {}x{}".format(out, out.stat().st_size / 1e6, source.card.arch, *size))
    return 0
