"""Accuracy guard for lossy precisions: int8 is accepted only when it stays close to fp32.

The bar (issue 13): over *all* labelled validation frames, val mIoU may drop by at most
:data:`MAX_MIOU_DROP_PT` points and at least :data:`MIN_AGREEMENT` of the pixels must get
the same label as fp32. Each backend that runs the graph is checked on its own (ONNX Runtime
and OpenVINO execute the same Q/DQ graph with different int8 kernels). The result is a record
for the model card's ``precisions`` (see :func:`record_precision`); ``precision="auto"`` only
uses a record whose ``accepted`` is true and whose ``weights_digest`` matches the tensors.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..engine.cache import GRAPH_FORMAT, ArtifactCache
from ..engine.quantize import (DEFAULT_CALIBRATION_FRAMES, Int8Request, QuantSettings, activation_qparams,
                               cpu_int8_class, int8_onnx, int8_records, merge_int8_record, tensor_digest)
from ..io.files import IMAGE_SUFFIXES
from .metrics import ConfusionMatrix

LOG = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
MAX_MIOU_DROP_PT = 1.0
MIN_AGREEMENT = 0.98


def val_pairs(images: PathLike, labels: Optional[PathLike] = None) -> List[Tuple[Path, Path]]:
    """(image, label) pairs of a CamVid-layout split: ``val/`` + ``valannot/`` (same file names).

    ``labels`` defaults to the sibling folder ``<images>annot``. Label pixels hold the card's
    class ids (values >= num_classes are ignored).
    """
    images = Path(images)
    labels = Path(labels) if labels else images.with_name(images.name + "annot")
    if not images.is_dir():
        raise FileNotFoundError("{}: validation image folder not found".format(images))
    if not labels.is_dir():
        raise FileNotFoundError("{}: validation label folder not found (pass it explicitly)".format(labels))
    pairs = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        lab = labels / img.name
        if not lab.is_file():
            lab = labels / (img.stem + ".png")
        if not lab.is_file():
            raise FileNotFoundError("{}: no label image for {}".format(labels, img.name))
        pairs.append((img, lab))
    if not pairs:
        raise ValueError("{}: no validation images".format(images))
    return pairs


def _read(pairs: Sequence[Tuple[Path, Path]]):
    for img, lab in pairs:
        bgr = cv2.imread(str(img), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
        if bgr is None or gt is None:
            raise ValueError("unreadable validation pair {} / {}".format(img, lab))
        if gt.ndim == 3:
            gt = gt[..., 0]
        yield bgr, gt


def compare_precisions(reference, candidates: Dict[str, Any], pairs: Sequence[Tuple[Path, Path]],
                       num_classes: int, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """mIoU of ``reference`` and each candidate Segmenter, and each candidate's label agreement.

    Returns ``{"reference_miou": m, "frames": n, "candidates": {name: {miou, agreement_vs_fp32}}}``.
    """
    ref_cm = ConfusionMatrix(num_classes)
    cms = {name: ConfusionMatrix(num_classes) for name in candidates}
    same = {name: 0 for name in candidates}
    total = 0
    for i, (bgr, gt) in enumerate(_read(pairs)):
        ref = reference.segment(bgr, channel_order="bgr").labels
        ref_cm.update(ref, gt)
        total += ref.size
        for name, seg in candidates.items():
            got = seg.segment(bgr, channel_order="bgr").labels
            cms[name].update(got, gt)
            same[name] += int(np.count_nonzero(got == ref))
        if progress and (i + 1) % 25 == 0:
            progress("  {}/{} frames".format(i + 1, len(pairs)))
    ref_miou = ref_cm.summary()["miou"]
    out = {"reference_miou": ref_miou, "frames": len(pairs), "candidates": {}}
    for name in candidates:
        miou = cms[name].summary()["miou"]
        out["candidates"][name] = {"miou": miou, "agreement_vs_fp32": same[name] / total if total else None}
    return out


def verdict(miou_ref: float, miou: float, agreement: float, max_drop_pt: float = MAX_MIOU_DROP_PT,
            min_agreement: float = MIN_AGREEMENT) -> Tuple[bool, str]:
    """(accepted, why) for one backend's result against the bar."""
    drop = (miou_ref - miou) * 100.0
    problems = []
    if drop > max_drop_pt:
        problems.append("mIoU drop {:.2f} pt > {:.2f}".format(drop, max_drop_pt))
    if agreement < min_agreement:
        problems.append("agreement {:.2%} < {:.0%}".format(agreement, min_agreement))
    if problems:
        return False, "; ".join(problems)
    return True, "mIoU drop {:.2f} pt <= {:.2f}, agreement {:.2%} >= {:.0%}".format(
        drop, max_drop_pt, agreement, min_agreement)


def validate_int8(weights: PathLike, calibration: PathLike, val_images: PathLike, val_labels: Optional[PathLike] = None,
                  backends: Sequence[str] = ("onnxruntime", "openvino"), settings: QuantSettings = QuantSettings(),
                  calibration_limit: int = DEFAULT_CALIBRATION_FRAMES, size=None, threads: Optional[int] = None,
                  cache_dir=None, max_drop_pt: float = MAX_MIOU_DROP_PT, min_agreement: float = MIN_AGREEMENT,
                  frame_limit: Optional[int] = None, progress: Optional[Callable[[str], None]] = None,
                  source=None, isa: Optional[str] = None) -> Dict[str, Any]:
    """Quantise (cached), run fp32 and int8 over every validation frame, and judge against the bar.

    ``weights`` may also be given as a loaded ``source`` (``ModelSource``; ``weights`` then only names it).
    The fp32 reference is ONNX Runtime fp32 (identical labels to eager torch up to float
    rounding). Backends that cannot run here are listed under ``unavailable``.

    ``isa``: validate with the CPU limited to that oneDNN ISA (``AVX2``: the ``avx2`` int8
    class of AMD EPYC and older Intel CPUs), in a child process started with
    ``ONEDNN_MAX_CPU_ISA`` set (:func:`validate_in_child`); the record then holds for that
    class. ONNX Runtime ignores the limit: under it, its row was measured with this CPU's
    VNNI kernels, so it is accepted only for 7-bit weights (which its AVX2 u8 x s8 kernel
    computes exactly, see :class:`QuantSettings`) and is marked so (``isa_note``); with 8-bit
    weights it is listed under ``unavailable``.

    Returns the record for the model card's ``precisions["int8"]`` (with ``cpu_int8_class``:
    the class it holds for; :func:`record_int8` files it under that class).
    """
    if isa and os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() != isa.strip().upper():
        return validate_in_child(dict(
            weights=str(weights if source is None or source.path is None else source.path),
            calibration=str(calibration), val_images=str(val_images),
            val_labels=str(val_labels) if val_labels else None, backends=list(backends), settings=settings.to_dict(),
            calibration_limit=calibration_limit, size=list(size) if isinstance(size, (tuple, list)) else size,
            threads=threads, cache_dir=str(cache_dir) if cache_dir else None, max_drop_pt=max_drop_pt,
            min_agreement=min_agreement, frame_limit=frame_limit), isa, progress)
    from ..engine.calib import calibration_digest, calibration_files

    say, source, card, pairs, common, reference = _guard_setup(weights, source, val_images, val_labels, frame_limit,
                                                               size, threads, cache_dir, progress)
    calib_files = calibration_files(calibration, calibration_limit)
    shared = sorted({p.resolve() for p in calib_files} & {img.resolve() for img, _ in pairs})
    if shared:
        # Ranges fitted on the very frames that judge them would flatter the int8 graph.
        raise ValueError("{} of the int8 calibration frames are also validation frames (e.g. {}): calibrate on "
                         "training frames (--calib) and validate on others (--validate)".format(len(shared), shared[0]))
    record_settings = {"calibration_digest": calibration_digest(calibration, calibration_limit),
                       "quantization": settings.to_dict()}
    candidates, unavailable = _lossy_segmenters(source, backends, "int8", say, calibration=calibration,
                                                calibration_limit=calibration_limit, int8=record_settings, **common)
    if not candidates:
        raise RuntimeError("no backend could run the int8 graph: {}".format(unavailable))
    say("validating int8 of {} on {} over {} frames ({})".format(card.arch, ", ".join(candidates), len(pairs),
                                                                 Path(str(val_images))))
    result = compare_precisions(reference, candidates, pairs, card.num_classes, say)
    checked: Dict[str, Any] = {}
    rejected: Dict[str, Any] = {}
    capped = cpu_int8_class() != cpu_int8_class(honour_cap=False)  # ONEDNN_MAX_CPU_ISA hides VNNI
    for name, res in result["candidates"].items():
        ok, row = _judged_row(result["reference_miou"], res, max_drop_pt, min_agreement)
        if capped and name in ISA_CAP_IGNORED:
            if settings.weight_bits != 7:
                unavailable[name] = ("ignores ONEDNN_MAX_CPU_ISA: its non-VNNI int8 kernels cannot be checked on this "
                                     "CPU, and 8-bit weights may saturate them (validate 7-bit weights)")
                say("int8 {} {}: not judged for the {} class ({})".format(card.arch, name, cpu_int8_class(),
                                                                          unavailable[name]))
                continue
            row["isa_note"] = ("measured with this CPU's VNNI kernels ({} ignores ONEDNN_MAX_CPU_ISA); with 7-bit "
                               "weights its AVX2 u8 x s8 kernel computes the same integers".format(name))
        (checked if ok else rejected)[name] = row
        say("int8 {} {}: {} ({})".format(card.arch, name, "ACCEPTED" if ok else "REJECTED", row["verdict"]))
    w, h = reference.input_size
    return {
        "accepted": bool(checked),
        "backends": checked,
        "rejected": rejected,
        "unavailable": unavailable,
        "graph": "onnx-qdq",
        "graph_format": GRAPH_FORMAT,
        "quantization": settings.to_dict(),
        "calibration": "{} ({} frames)".format(Path(str(calibration)).name, len(calib_files)),
        "calibration_digest": record_settings["calibration_digest"],
        "activation_qparams": _graph_qparams(source, (w, h), calibration, calibration_limit, settings, cache_dir),
        "validation": "{} ({} frames, labels {})".format(Path(str(val_images)).name, len(pairs),
                                                          Path(str(val_labels)).name if val_labels else "annot"),
        "val_frames": len(pairs),
        "val_size": "{}x{}".format(w, h),
        "miou_fp32": round(result["reference_miou"], 5),
        "criteria": {"max_miou_drop_pt": max_drop_pt, "min_agreement_vs_fp32": min_agreement},
        "weights_digest": tensor_digest(source.model),
        "cpu_int8_class": cpu_int8_class(),
        "isa_limit": os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None,
        "date": datetime.date.today().isoformat(),
    }


def _guard_setup(weights, source, val_images, val_labels, frame_limit, size, threads, cache_dir, progress):
    """What both guards start from: a logger, the model source and card, the val pairs, the
    Segmenter settings shared by every candidate, and the fp32 ONNX Runtime reference."""
    from ..engine import Segmenter
    from ..engine.source import load_source

    say = progress or (lambda msg: LOG.info("%s", msg))
    source = source or load_source(weights)
    pairs = val_pairs(val_images, val_labels)
    if frame_limit:
        pairs = pairs[:frame_limit]
    common = dict(input_size=size, threads=threads, cache_dir=cache_dir, warmup=0, strict=True)
    reference = Segmenter(source, backend="onnxruntime", precision="fp32", device="cpu", **common)
    return say, source, source.card, pairs, common, reference


def _lossy_segmenters(source, backends: Sequence[str], precision: str, say: Callable[[str], None],
                      **kwargs: Any) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """({backend: Segmenter}, {backend: why not}) for ``precision`` on each of ``backends`` (CPU)."""
    from ..engine import Segmenter

    candidates: Dict[str, Any] = {}
    unavailable: Dict[str, str] = {}
    for name in backends:
        try:
            candidates[name] = Segmenter(source, backend=name, precision=precision, device="cpu", **kwargs)
        except Exception as exc:
            unavailable[name] = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            say("{} on {}: not available here ({})".format(precision, name, unavailable[name]))
    return candidates, unavailable


def _judged_row(reference_miou: float, res: Dict[str, Any], max_drop_pt: float,
                min_agreement: float) -> Tuple[bool, Dict[str, Any]]:
    """(accepted, the card row) of one candidate's comparison result against the accuracy bar."""
    ok, why = verdict(reference_miou, res["miou"], res["agreement_vs_fp32"], max_drop_pt, min_agreement)
    return ok, {"miou": round(res["miou"], 5), "miou_drop_pt": round((reference_miou - res["miou"]) * 100, 3),
                "agreement_vs_fp32": round(res["agreement_vs_fp32"], 5), "verdict": why}


# Backends whose CPU kernels do not honour ONEDNN_MAX_CPU_ISA (ONNX Runtime's MLAS dispatches on cpuid).
ISA_CAP_IGNORED = ("onnxruntime",)
# What a child process needs to imitate a CPU of a lower ISA (oneDNN in OpenVINO and torch, ATen).
ISA_ENV = {"AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def validate_in_child(kwargs: Dict[str, Any], isa: str, progress: Optional[Callable[[str], None]] = None,
                      timeout: float = 3600.0) -> Dict[str, Any]:
    """Run :func:`validate_int8` (``kwargs``, JSON-able) in a child process with the CPU limited to ``isa``.

    oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when its first kernel is made, so the limit needs a
    fresh process. The child's progress lines are passed to ``progress``.

    Raises:
        ValueError: unknown ``isa``. RuntimeError: the child failed (its last output lines).
    """
    import subprocess
    import sys

    env_extra = ISA_ENV.get(isa.strip().upper())
    if env_extra is None:
        raise ValueError("isa must be one of {}, got {!r}".format(sorted(ISA_ENV), isa))
    say = progress or (lambda msg: LOG.info("%s", msg))
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-m", __name__]
    say("validating under ONEDNN_MAX_CPU_ISA={} in a child process".format(env_extra["ONEDNN_MAX_CPU_ISA"]))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(kwargs))
    proc.stdin.close()
    lines: List[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith(_RESULT_TAG):
            lines.append(line)
        else:
            say("  [{}] {}".format(isa, line))
            lines.append(line)
    rc = proc.wait(timeout=timeout)
    results = [line[len(_RESULT_TAG):] for line in lines if line.startswith(_RESULT_TAG)]
    if rc != 0 or not results:
        raise RuntimeError("validation under ONEDNN_MAX_CPU_ISA={} failed (exit {}): {}".format(
            isa, rc, " | ".join(lines[-5:])))
    return json.loads(results[-1])


_RESULT_TAG = "ENET_SEG_GUARD_RESULT "


def _child_main() -> int:
    """Entry of :func:`validate_in_child`: kwargs (JSON) on stdin, the record on stdout."""
    import sys

    kwargs = json.loads(sys.stdin.read())
    kwargs["settings"] = QuantSettings.from_dict(kwargs.get("settings"))
    if kwargs.get("size") is not None and not isinstance(kwargs["size"], str):
        kwargs["size"] = tuple(kwargs["size"])
    record = validate_int8(progress=lambda msg: print(msg, flush=True), **kwargs)
    print(_RESULT_TAG + json.dumps(record), flush=True)
    return 0


def validate_bf16(weights: PathLike, val_images: PathLike, val_labels: Optional[PathLike] = None,
                  backends: Sequence[str] = ("openvino",), size=None, threads: Optional[int] = None, cache_dir=None,
                  max_drop_pt: float = MAX_MIOU_DROP_PT, min_agreement: float = MIN_AGREEMENT,
                  frame_limit: Optional[int] = None, progress: Optional[Callable[[str], None]] = None,
                  source=None) -> Dict[str, Any]:
    """The accuracy bar for bf16 (lossy like int8): run fp32 and bf16 over every validation frame.

    bf16 needs AVX512-BF16 or AMX (OpenVINO; the torch backend's bf16 is not covered by this
    record). Returns the record for the model card's ``precisions["bf16"]``.
    """
    say, source, card, pairs, common, reference = _guard_setup(weights, source, val_images, val_labels, frame_limit,
                                                               size, threads, cache_dir, progress)
    candidates, unavailable = _lossy_segmenters(source, backends, "bf16", say, **common)
    if not candidates:
        raise RuntimeError("no backend could run bf16: {}".format(unavailable))
    result = compare_precisions(reference, candidates, pairs, card.num_classes, say)
    checked: Dict[str, Any] = {}
    rejected: Dict[str, Any] = {}
    for name, res in result["candidates"].items():
        ok, row = _judged_row(result["reference_miou"], res, max_drop_pt, min_agreement)
        (checked if ok else rejected)[name] = row
        say("bf16 {} {}: {} ({})".format(card.arch, name, "ACCEPTED" if ok else "REJECTED", row["verdict"]))
    w, h = reference.input_size
    return {"accepted": bool(checked), "backends": checked, "rejected": rejected, "unavailable": unavailable,
            "validation": "{} ({} frames)".format(Path(str(val_images)).name, len(pairs)), "val_frames": len(pairs),
            "val_size": "{}x{}".format(w, h), "miou_fp32": round(result["reference_miou"], 5),
            "criteria": {"max_miou_drop_pt": max_drop_pt, "min_agreement_vs_fp32": min_agreement},
            "weights_digest": tensor_digest(source.model), "graph_format": GRAPH_FORMAT,
            "date": datetime.date.today().isoformat()}


def record_int8(weights: PathLike, record: Dict[str, Any]) -> Path:
    """File an int8 guard record in the card under its CPU int8 class (:func:`merge_int8_record`):
    it replaces the earlier record of that class and keeps the other class's."""
    from ..weights import read_card, resolve_weights

    existing = (read_card(resolve_weights(weights)).precisions or {}).get("int8")
    return record_precision(weights, "int8", merge_int8_record(existing, record))


def _graph_qparams(source, size: Tuple[int, int], calibration: PathLike, calibration_limit: int,
                   settings: QuantSettings, cache_dir: Optional[PathLike]) -> Dict[str, List[float]]:
    """Activation scales / zero points of the int8 graph these images and settings make (as a record
    keeps them, so a machine without the images rebuilds that very graph: engine.quantize.int8_onnx).
    After a validation the graph is already in the cache (the candidates built it)."""
    graph = int8_onnx(ArtifactCache(cache_dir, "onnx"), source, size,
                      Int8Request(calibration, limit=calibration_limit, settings=settings),
                      resize_policy=source.card.resize_policy or "stretch")
    return activation_qparams(graph)


def attach_activation_ranges(weights: PathLike, calibration: PathLike, calibration_limit: int = 32,
                             cache_dir: Optional[PathLike] = None) -> List[str]:
    """Add ``activation_qparams`` to the card's int8 records made with ``calibration`` (no validation).

    For records filed before the ranges were recorded: each accepted record whose calibration
    digest equals the folder's is rebuilt from the same images and settings (the graph it
    validated, for the same tensors and graph format) and its activation scales / zero points are
    stored, so machines without the images can rebuild that graph. Returns the classes updated.

    Raises:
        ValueError: no accepted int8 record, or none made with these calibration images.
    """
    from ..engine import parse_size
    from ..engine.calib import calibration_digest
    from ..engine.source import load_source
    from ..weights import resolve_weights

    path = resolve_weights(weights)
    source = load_source(path)
    card = source.card
    existing = (card.precisions or {}).get("int8")
    digest = calibration_digest(calibration, calibration_limit)
    tensors = tensor_digest(source.model)
    done: List[str] = []
    updated = []
    for rec in int8_records(existing):
        rec = {k: v for k, v in rec.items() if k != "by_cpu_class"}
        if rec.get("accepted") and rec.get("calibration_digest") == digest and rec.get("weights_digest") == tensors \
                and rec.get("graph_format", GRAPH_FORMAT) == GRAPH_FORMAT:
            rec["activation_qparams"] = _graph_qparams(source, parse_size(rec.get("val_size") or card.input_size),
                                                       calibration, calibration_limit,
                                                       QuantSettings.from_dict(rec.get("quantization")), cache_dir)
            done.append(rec.get("cpu_int8_class", "vnni"))
        updated.append(rec)
    if not done:
        raise ValueError("{}: no accepted int8 record for these weights was calibrated on {} ({} frames, digest {})"
                         .format(path, calibration, calibration_limit, digest))
    merged: Any = None
    for rec in updated:
        merged = merge_int8_record(merged, rec)
    record_precision(path, "int8", merged)
    return done


def record_precision(weights: PathLike, precision: str, record: Dict[str, Any]) -> Path:
    """Add / replace ``precisions[precision]`` in the weights' card (safetensors metadata and ``.card.json``).

    Only the ``precisions`` key changes; tensors and every other card field stay as they are.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..weights import CARD_KEY, ModelCard, resolve_weights

    path = resolve_weights(weights)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    card_data = json.loads(meta[CARD_KEY])
    card_data.setdefault("precisions", {})[precision] = record
    ModelCard.from_json(json.dumps(card_data))  # still a valid card
    meta[CARD_KEY] = json.dumps(card_data, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    card_json = path.with_name(path.stem + ".card.json")
    if card_json.is_file():
        text = json.loads(card_json.read_text())
        text.setdefault("precisions", {})[precision] = record
        card_json.write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # the child of validate_in_child
    raise SystemExit(_child_main())
