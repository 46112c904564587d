"""``enet-seg quantize``: int8 Q/DQ graphs (cached), optionally validated and recorded in the model card."""
from __future__ import annotations

import argparse
from .common_args import count_arg, output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the quantize flags."""
    p.add_argument("weights", help="weights file (.safetensors with model card) or shipped model name")
    p.add_argument("--calib", required=True, metavar="DIR", help="calibration images (e.g. CamVid train)")
    p.add_argument("--calib-frames", type=count_arg(1), default=32, metavar="N",
                   help="calibration images used, evenly spread over the folder (default 32)")
    p.add_argument("--size", default=None, metavar="WxH[,WxH]",
                   help="network input sizes to build (default: the card's); validation uses the first")
    p.add_argument("--calibrate", default="minmax", choices=("minmax", "percentile", "entropy"),
                   help="activation range estimation (default minmax)")
    p.add_argument("--exclude", default="", metavar="NODES",
                   help="comma list of nodes kept in float: first_conv, last_conv or ONNX node names")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--symmetric-activations", action="store_true", help="int8 symmetric activations")
    p.add_argument("--weight-bits", type=int, default=8, choices=(8, 7),
                   help="weight range: 8 (default) or 7 ([-64, 64]: no int16 saturation in x86 int8 kernels "
                        "without VNNI, so the graph computes the same on AVX2-only CPUs)")
    p.add_argument("--validate", default=None, metavar="VALDIR",
                   help="labelled validation images (e.g. CamVid val): check the accuracy bar over all of them")
    p.add_argument("--val-labels", default=None, metavar="DIR", help="label folder (default: VALDIR + 'annot')")
    p.add_argument("--backends", default="onnxruntime,openvino", help="backends to validate int8 on")
    p.add_argument("--isa", default=None, choices=("AVX2",),
                   help="validate with the CPU limited to this oneDNN ISA (a child process with "
                        "ONEDNN_MAX_CPU_ISA set): the record holds for CPUs without VNNI (class avx2)")
    p.add_argument("--record", action="store_true",
                   help="write the validation result into the model card (precisions.int8, under the CPU int8 "
                        "class it was validated on; the other class's record is kept) of WEIGHTS")
    p.add_argument("--bf16", action="store_true",
                   help="with --validate: also check OpenVINO bf16 (AVX512-BF16 / AMX CPUs) against the same bar "
                        "(recorded as precisions.bf16 with --record)")
    p.add_argument("--attach-ranges", action="store_true",
                   help="no new graph or validation: store the activation ranges of the card's accepted int8 "
                        "records calibrated on --calib in those records, so machines without the images can "
                        "rebuild the validated graphs (records made with --record have them already)")
    p.add_argument("--threads", type=count_arg(1), default=None, help="CPU threads")
    p.add_argument("--cache-dir", default=None, help="artefact cache (default $ENET_SEG_CACHE or ~/.cache)")
    p.add_argument("--out", default=None, type=output_file(), metavar="FILE.onnx",
                   help="also copy the int8 graph (first size) here")


def run(args: argparse.Namespace) -> int:
    """Quantise, validate and record; exit code 1 when validation rejects int8."""
    import json
    import shutil
    from pathlib import Path

    from ..engine import parse_size
    from ..engine.quantize import Int8Request, QuantSettings, build_int8, qdq_summary
    from ..engine.source import load_source

    if args.attach_ranges:
        from ..evaluate.precision_guard import attach_activation_ranges

        if args.validate or args.record or args.out:
            raise ValueError("--attach-ranges only adds ranges to existing records: no --validate, --record or --out")
        classes = attach_activation_ranges(args.weights, args.calib, args.calib_frames, args.cache_dir)
        print("activation ranges stored in the int8 record(s) of {} ({})".format(args.weights, ", ".join(classes)))
        return 0
    if args.record and not args.validate:
        raise ValueError("--record needs --validate VALDIR (only validated results are recorded)")
    for flag, given in (("--isa", args.isa), ("--bf16", args.bf16)):
        if given and not args.validate:
            raise ValueError("{} needs --validate VALDIR (it only changes how the validation runs)".format(flag))
    source = load_source(args.weights)
    sizes = [parse_size(s) for s in args.size.split(",")] if args.size else [parse_size(source.card.input_size)]
    settings = QuantSettings(per_channel=not args.per_tensor, activation_symmetric=args.symmetric_activations,
                             calibrate=args.calibrate, weight_bits=args.weight_bits,
                             exclude=tuple(x.strip() for x in args.exclude.split(",") if x.strip()))
    request = Int8Request(args.calib, None, args.calib_frames, settings)
    paths = build_int8(source, sizes, request, args.cache_dir)
    print("int8 Q/DQ graphs ({}): {}".format(json.dumps(qdq_summary(paths[0])), ", ".join(str(p) for p in paths)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths[0], args.out)
        print("wrote", args.out)
    if not args.validate:
        return 0
    from ..evaluate.precision_guard import record_int8, record_precision, validate_bf16, validate_int8

    record = validate_int8(args.weights, args.calib, args.validate, args.val_labels,
                           backends=[b.strip() for b in args.backends.split(",") if b.strip()],
                           settings=settings, calibration_limit=args.calib_frames, size=sizes[0],
                           threads=args.threads, cache_dir=args.cache_dir, progress=print, source=source,
                           isa=args.isa)
    print(json.dumps(record, indent=1))
    if args.record:
        path = record_int8(args.weights, record)
        print("recorded precisions.int8 for CPU int8 class {} ({}) in {}".format(
            record["cpu_int8_class"], "accepted" if record["accepted"] else "rejected", path))
    accepted = record["accepted"]
    if args.bf16:
        bf16 = validate_bf16(args.weights, args.validate, args.val_labels, size=sizes[0], threads=args.threads,
                             cache_dir=args.cache_dir, progress=print, source=source)
        print(json.dumps(bf16, indent=1))
        if args.record:
            path = record_precision(args.weights, "bf16", bf16)
            print("recorded precisions.bf16 ({}) in {}".format("accepted" if bf16["accepted"] else "rejected", path))
        accepted = accepted and bf16["accepted"]
    return 0 if accepted else 1
