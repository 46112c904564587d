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

from ..engine.quantize import DEFAULT_CALIBRATION_FRAMES, QuantSettings, cpu_int8_class, tensor_digest
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
                  source=None) -> Dict[str, Any]:
    """Quantise (cached), run fp32 and int8 over every validation frame, and judge against the bar.

    ``weights`` may also be given as a loaded ``source`` (``ModelSource``; ``weights`` then only names it).
    The fp32 reference is ONNX Runtime fp32 (identical labels to eager torch up to float
    rounding). Backends that cannot run here are listed under ``unavailable``.

    Returns the record for the model card's ``precisions["int8"]``.
    """
    from ..engine import Segmenter
    from ..engine.calib import calibration_digest
    from ..engine.source import load_source

    say = progress or (lambda msg: LOG.info("%s", msg))
    source = source or load_source(weights)
    card = source.card
    pairs = val_pairs(val_images, val_labels)
    if frame_limit:
        pairs = pairs[:frame_limit]
    common = dict(input_size=size, threads=threads, cache_dir=cache_dir, warmup=0, strict=True)
    reference = Segmenter(source, backend="onnxruntime", precision="fp32", device="cpu", **common)
    record_settings = {"calibration_digest": calibration_digest(calibration, calibration_limit),
                       "quantization": settings.to_dict()}
    candidates: Dict[str, Any] = {}
    unavailable: Dict[str, str] = {}
    for name in backends:
        try:
            candidates[name] = Segmenter(source, backend=name, precision="int8", device="cpu",
                                         calibration=calibration, calibration_limit=calibration_limit,
                                         int8=record_settings, **common)
        except Exception as exc:
            unavailable[name] = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            say("int8 on {}: not available here ({})".format(name, unavailable[name]))
    if not candidates:
        raise RuntimeError("no backend could run the int8 graph: {}".format(unavailable))
    say("validating int8 of {} on {} over {} frames ({})".format(card.arch, ", ".join(candidates), len(pairs),
                                                                 Path(str(val_images))))
    result = compare_precisions(reference, candidates, pairs, card.num_classes, say)
    checked: Dict[str, Any] = {}
    rejected: Dict[str, Any] = {}
    for name, res in result["candidates"].items():
        ok, why = verdict(result["reference_miou"], res["miou"], res["agreement_vs_fp32"], max_drop_pt, min_agreement)
        row = {"miou": round(res["miou"], 5), "miou_drop_pt": round((result["reference_miou"] - res["miou"]) * 100, 3),
               "agreement_vs_fp32": round(res["agreement_vs_fp32"], 5), "verdict": why}
        (checked if ok else rejected)[name] = row
        say("int8 {} {}: {} ({})".format(card.arch, name, "ACCEPTED" if ok else "REJECTED", why))
    w, h = reference.input_size
    return {
        "accepted": bool(checked),
        "backends": checked,
        "rejected": rejected,
        "unavailable": unavailable,
        "graph": "onnx-qdq",
        "quantization": settings.to_dict(),
        "calibration": "{} ({} frames)".format(Path(str(calibration)).name, calibration_limit),
        "calibration_digest": record_settings["calibration_digest"],
        "validation": "{} ({} frames, labels {})".format(Path(str(val_images)).name, len(pairs),
                                                          Path(str(val_labels)).name if val_labels else "annot"),
        "val_frames": len(pairs),
        "val_size": "{}x{}".format(w, h),
        "miou_fp32": round(result["reference_miou"], 5),
        "criteria": {"max_miou_drop_pt": max_drop_pt, "min_agreement_vs_fp32": min_agreement},
        "weights_digest": tensor_digest(source.model),
        "cpu_int8_class": cpu_int8_class(),
        "date": datetime.date.today().isoformat(),
    }


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
