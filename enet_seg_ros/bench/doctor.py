"""``enet-seg doctor``'s library side: which backend x device x precision works here, how well, how fast.

:func:`diagnose` checks every combination the backend registry knows (its cheap probes, see
:mod:`enet_seg_ros.engine.registry`), builds each usable one on a model (``strict``: no fallback hides a failure),
segments one frame, and reports label agreement with torch fp32 on the CPU and the median
latency of ``Segmenter.segment``. :func:`recommend` picks what to put in ``seg.yaml``.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Lowest label agreement with torch fp32 for a combination to be recommended.
MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.97, "bf16": 0.97, "int8": 0.95}
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


def parse_tegra_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``L4T R36.4.3`` (the JetPack's Linux for Tegra)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return "L4T R{}.{}".format(m.group(1), m.group(2)) if m else None


def versions(tegra_release: Path = TEGRA_RELEASE) -> Dict[str, Optional[str]]:
    """Versions of everything inference depends on (``None``: not installed / not there)."""
    out: Dict[str, Optional[str]] = {}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        out.update(torch=None, cuda=None, gpu=None)
    for key, module in (("tensorrt", "tensorrt"), ("torch2trt", "torch2trt"), ("onnxruntime", "onnxruntime")):
        try:
            out[key] = str(getattr(__import__(module), "__version__", "present"))
        except Exception:
            out[key] = None
    try:  # package metadata only: importing openvino next to torch training crashed (see the openvino backend)
        from importlib.metadata import version

        out["openvino"] = version("openvino")
    except Exception:
        out["openvino"] = None
    try:
        out["jetpack"] = parse_tegra_release(tegra_release.read_text()) if tegra_release.is_file() else None
    except OSError:
        out["jetpack"] = None
    return out


def _entry(backend: str, device: str, precision: str, usable: bool, reason: str,
           agreement: Optional[float] = None, ms: Optional[float] = None) -> Dict[str, Any]:
    return {"backend": backend, "device": device, "precision": precision, "usable": usable, "reason": reason,
            "agreement_vs_torch_fp32": agreement, "ms_median": ms}


def candidates() -> List[Tuple[str, str, str]]:
    """Every (backend, device, precision) the backend registry knows, in its order."""
    from ..engine.registry import get_backend, list_backends

    out = []
    for name in list_backends():
        entry = get_backend(name)
        for device in entry.devices:
            for precision in entry.precisions.get(device, ("fp32",)):
                out.append((name, device, precision))
    return out


def _why_not(backend: str, device: str, precision: str, calibration, int8_record: bool = False) -> Optional[str]:
    """Cheap reasons a combination cannot run or is not self-tested (nothing is built).

    int8 is self-tested with ``calibration`` images, or through the model card's int8 record (the
    graph cached by an earlier ``enet-seg quantize`` or int8 start, or its calibration images in
    the cache); without either it is only listed.
    """
    from ..engine.registry import probe

    why = probe(backend, device)
    if why:
        return why
    if precision == "bf16" and device == "cpu":
        from ..engine.cpu import cpu_has_bf16

        if not cpu_has_bf16():
            return "this CPU has no AVX512-BF16 / AMX for bf16"
    if precision == "int8" and calibration is None and not int8_record:
        return ("int8 not self-tested: it needs calibration images (doctor --calib DIR) or an int8 record in the "
                "model card (enet-seg quantize --record)")
    return None


def diagnose(weights, image: Optional[np.ndarray] = None, input_size=None, runs: int = 10,
             backends: Optional[Sequence[str]] = None, device: Optional[str] = None, cache_dir=None,
             calibration=None, progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Check and self-test every known combination; returns the ``doctor --json`` document.

    Args:
        weights: weights file (or ``(model, card)``) to self-test with.
        image: RGB frame (default: a synthetic street-like frame at the model size).
        input_size: network input (default: the card's).
        runs: timed ``segment`` calls per usable combination (median reported).
        backends / device: restrict the candidates (``None``: all).
        calibration: image folder for int8 candidates (without it they are listed, not run).
        progress: called with each entry as it is done.
    """
    from ..engine.source import load_source

    weights = load_source(weights)  # read once: the reference and every self-test share it
    card = weights.card
    if image is None:
        from ..engine.segmenter import parse_size
        from .runner import synthetic_frame

        w, h = parse_size(input_size if input_size is not None else card.input_size)
        image = synthetic_frame(w, h)
    want = reference_labels(weights, image, input_size)
    int8_record = bool((card.precisions or {}).get("int8"))
    entries: List[Dict[str, Any]] = []
    for backend, dev, precision in candidates():
        if backends and backend not in backends:
            continue
        if device and dev != device.split(":")[0]:
            continue
        dev_name = device if device and ":" in device else dev
        why = _why_not(backend, dev, precision, calibration, int8_record)
        if why:
            entry = _entry(backend, dev_name, precision, False, why)
        else:
            entry = _self_test(weights, backend, dev_name, precision, input_size, image, want, runs, cache_dir,
                               calibration)
        entries.append(entry)
        if progress:
            progress(entry)
    return {"backends": entries, "recommended": recommend(entries), "versions": versions()}


def reference_labels(weights, image: np.ndarray, input_size=None) -> np.ndarray:
    """Labels of plain fp32 eager torch on the CPU at the model resolution.

    Built without a backend, so a broken or force-failed torch backend is diagnosed, not
    needed as the yardstick; preprocessing is the Segmenter's (same plan, fill, channel order).
    """
    import torch

    from ..engine.graph import InferenceGraph
    from ..engine.preprocess import pad_colour, plan, to_model_input
    from ..engine.segmenter import parse_size
    from ..engine.source import load_source

    source = load_source(weights)
    card = source.card
    size = parse_size(input_size if input_size is not None else card.input_size)
    geometry = plan((image.shape[1], image.shape[0]), size, card.resize_policy or "stretch")
    x = to_model_input(image, geometry, card.normalization.channel_order != "rgb", pad_colour(card.normalization.mean))
    graph = InferenceGraph(source.fresh_model().eval(), card, output="logits")
    with torch.inference_mode():
        return graph(torch.from_numpy(np.ascontiguousarray(x[None])))[0].argmax(0).to(torch.uint8).numpy()


def _self_test(weights, backend: str, device: str, precision: str, input_size, image, want, runs: int,
               cache_dir, calibration) -> Dict[str, Any]:
    from ..engine.segmenter import Segmenter

    try:
        seg = Segmenter(weights, backend=backend, device=device, precision=precision, input_size=input_size,
                        strict=True, warmup=1, cache_dir=cache_dir, calibration=calibration)
    except Exception as exc:  # the backend could not start: that is the answer
        return _entry(backend, device, precision, False, _first_line(exc))
    try:
        labels = seg.segment(image, output="model").labels
        agreement = round(float(np.mean(labels == want)), 5)
        times = []
        for _ in range(max(1, int(runs))):
            t = time.perf_counter()
            seg.segment(image)
            times.append((time.perf_counter() - t) * 1e3)
        real = "{} on {} at {}".format(seg.backend_name, seg.device, seg.precision)
        reason = "" if (seg.backend_name, seg.precision) == (backend, precision) else "ran as " + real
        return _entry(backend, device, precision, True, reason, agreement, round(statistics.median(times), 3))
    except Exception as exc:
        return _entry(backend, device, precision, False, "self-test failed: " + _first_line(exc))
    finally:
        seg.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return "{}: {}".format(exc.__class__.__name__, text) if text else exc.__class__.__name__


def recommend(entries: Sequence[Dict[str, Any]]) -> Optional[Dict[str, str]]:
    """The fastest usable combination whose agreement meets :data:`MIN_AGREEMENT` (GPU first)."""
    good = [e for e in entries if e["usable"] and e["ms_median"] is not None
            and (e["agreement_vs_torch_fp32"] or 0.0) >= MIN_AGREEMENT.get(e["precision"], 0.99)]
    if not good:
        return None
    best = min(good, key=lambda e: (not e["device"].startswith("cuda"), e["ms_median"]))
    return {"backend": best["backend"], "precision": best["precision"], "device": best["device"]}


def load_image(path: os.PathLike) -> np.ndarray:
    """An RGB frame from an image file (any size; the Segmenter resizes)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("{}: not a readable image".format(path))
    return np.ascontiguousarray(bgr[..., ::-1])
