"""Evaluation reports: ``metrics.json``, ``report.md``, ``confusion.png`` and ``class_iou.png``.

Every evaluation command (eval-preds, eval-dir, eval-bag, eval_node) writes the same four
files through :func:`write_report` (or :func:`write_evaluation` for an evaluator object).
Plots use matplotlib's Agg canvas directly, so no global backend is switched and no display
is needed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .metrics import ConfusionMatrix

MatrixLike = Union[ConfusionMatrix, np.ndarray]


def latency_stats(latencies_ms: Optional[Sequence[float]]) -> Dict[str, Optional[float]]:
    """``{"p50", "p95", "max"}`` of per-frame latencies in ms; ``None`` values when there are none."""
    values = np.asarray(list(latencies_ms or ()), dtype=np.float64)
    if values.size == 0:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


def json_safe(value: Any) -> Any:
    """Replace NaN / inf floats by ``None`` and numpy scalars / arrays by Python values."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def metrics_document(result: Mapping[str, Any], *, frames: Optional[int] = None, frames_without_gt: int = 0,
                     model: Any = None, backend: Optional[str] = None,
                     latencies_ms: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """The ``metrics.json`` content: an evaluator's ``result()`` plus the run facts.

    Adds ``frames`` (default: the result's), ``frames_without_gt``, ``model``, ``backend`` and
    ``latency_ms`` {p50, p95, max}; NaN becomes ``null``.
    """
    doc = dict(result)
    doc["frames"] = int(frames if frames is not None else result.get("frames", 0) or 0)
    doc["frames_without_gt"] = int(frames_without_gt)
    doc["model"] = model
    doc["backend"] = backend
    doc["latency_ms"] = latency_stats(latencies_ms)
    return json_safe(doc)


def write_report(out_dir: Path, result: Mapping[str, Any], confusion: MatrixLike, class_names: Sequence[str], *,
                 frames: Optional[int] = None, frames_without_gt: int = 0, model: Any = None,
                 backend: Optional[str] = None, latencies_ms: Optional[Sequence[float]] = None,
                 inputs: Optional[Mapping[str, Any]] = None, notes: Sequence[str] = (),
                 title: str = "Segmentation evaluation") -> Dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``confusion.png`` and ``class_iou.png`` into ``out_dir``.

    Args:
        result: an evaluator's ``result()`` dict.
        confusion: the train-id :class:`ConfusionMatrix` (or its square count matrix).
        class_names: names in train-id order.
        frames / frames_without_gt / model / backend / latencies_ms: run facts for the JSON.
        inputs: what was evaluated (e.g. ``{"predictions": dir, "ground truth": dir}``).
        notes: extra lines for the report (skipped files, warnings).
    Returns:
        ``{"metrics": path, "report": path, "confusion": path, "class_iou": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cm = confusion if isinstance(confusion, ConfusionMatrix) else ConfusionMatrix.from_counts(confusion)
    names = list(class_names)
    if len(names) != cm.num_classes:
        raise ValueError("{} class names for a {}-class confusion matrix".format(len(names), cm.num_classes))
    doc = metrics_document(result, frames=frames, frames_without_gt=frames_without_gt, model=model,
                           backend=backend, latencies_ms=latencies_ms)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md",
             "confusion": out / "confusion.png", "class_iou": out / "class_iou.png"}
    paths["metrics"].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    paths["report"].write_text(render_markdown(doc, cm, names, inputs=inputs, notes=notes, title=title))
    plot_confusion(cm, names, paths["confusion"])
    plot_class_iou(doc.get("class_iou") or {}, paths["class_iou"], miou=doc.get("miou"))
    return paths


def write_evaluation(out_dir: Path, evaluator: Any, **kwargs: Any) -> Dict[str, Path]:
    """:func:`write_report` for an evaluator (``result()``, ``confusion``, ``class_names``)."""
    return write_report(out_dir, evaluator.result(), evaluator.confusion, evaluator.class_names, **kwargs)


# ------------------------------------------------------------------------------------ markdown
def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.2f}".format(100.0 * value)


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.1f}".format(value)


def render_markdown(doc: Mapping[str, Any], cm: ConfusionMatrix, class_names: Sequence[str], *,
                    inputs: Optional[Mapping[str, Any]] = None, notes: Sequence[str] = (),
                    title: str = "Segmentation evaluation") -> str:
    """Human-readable report: run facts, summary, per-class table sorted by IoU, categories."""
    lines: List[str] = ["# {}".format(title), ""]
    lat = doc.get("latency_ms") or {}
    facts = [
        ("Dataset", doc.get("dataset", "n/a")),
        ("Frames evaluated", doc.get("frames", 0)),
        ("Frames without ground truth", doc.get("frames_without_gt", 0)),
        ("Pixels evaluated", "{:,}".format(int(doc.get("pixels") or 0))),
        ("Model", doc.get("model") if doc.get("model") is not None else "n/a"),
        ("Backend", doc.get("backend") or "n/a"),
        ("Latency p50 / p95 / max (ms)", "{} / {} / {}".format(_ms(lat.get("p50")), _ms(lat.get("p95")),
                                                               _ms(lat.get("max")))),
    ]
    for key, value in (inputs or {}).items():
        facts.append(("Input: {}".format(key), "`{}`".format(value)))
    lines += ["| Run | |", "|---|---|"] + ["| {} | {} |".format(k, v) for k, v in facts] + [""]

    summary = [("Mean IoU (class)", doc.get("miou"))]
    if "iiou" in doc:
        summary += [("Mean iIoU (class)", doc.get("iiou")), ("Mean IoU (category)", doc.get("category_iou")),
                    ("Mean iIoU (category)", doc.get("category_iiou"))]
    summary += [("Pixel accuracy", doc.get("pixel_accuracy")),
                ("Mean class accuracy", doc.get("mean_class_accuracy"))]
    lines += ["## Summary", "", "| Metric | % |", "|---|---:|"]
    lines += ["| {} | {} |".format(k, _pct(v)) for k, v in summary] + [""]

    class_iou = doc.get("class_iou") or {}
    class_iiou = doc.get("class_iiou") or {}
    class_acc = doc.get("class_accuracy") or {}
    gt_counts = cm.ground_truth_counts()
    total = max(int(gt_counts.sum()), 1)
    order = sorted(range(len(class_names)),
                   key=lambda i: (class_iou.get(class_names[i]) is None, -(class_iou.get(class_names[i]) or 0.0)))
    header = "| # | Class | IoU % |" + (" iIoU % |" if class_iiou else "") + " Accuracy % | GT pixels % |"
    lines += ["## Per-class IoU (sorted)", "", header,
              "|---:|---|---:|" + ("---:|" if class_iiou else "") + "---:|---:|"]
    for rank, i in enumerate(order, 1):
        name = class_names[i]
        row = "| {} | {} | {} |".format(rank, name, _pct(class_iou.get(name)))
        if class_iiou:
            row += " {} |".format(_pct(class_iiou.get(name)) if name in class_iiou else "-")
        row += " {} | {:.2f} |".format(_pct(class_acc.get(name)), 100.0 * gt_counts[i] / total)
        lines.append(row)
    lines.append("")
    lines.append("n/a: class absent from the ground truth and never predicted on evaluated pixels "
                 "(excluded from the means, as in the official Cityscapes script).")
    lines.append("")

    per_cat = doc.get("per_category_iou")
    if per_cat:
        per_cat_i = doc.get("per_category_iiou") or {}
        lines += ["## Categories", "", "| Category | IoU % | iIoU % |", "|---|---:|---:|"]
        lines += ["| {} | {} | {} |".format(c, _pct(v), _pct(per_cat_i.get(c))) for c, v in per_cat.items()]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + ["- {}".format(n) for n in notes] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ plots
def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def normalized_confusion(cm: ConfusionMatrix) -> np.ndarray:
    """Rows divided by ground-truth pixels (diagonal = class accuracy); a "no class" column is
    appended when any pixel was predicted as void; NaN rows for classes absent from ground truth."""
    counts = cm.matrix.astype(np.float64)
    if cm.missed.any():
        counts = np.concatenate([counts, cm.missed[:, None].astype(np.float64)], axis=1)
    rows = cm.ground_truth_counts().astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, counts / np.maximum(rows, 1), np.nan)


def plot_confusion(cm: ConfusionMatrix, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion heatmap with class names on both axes."""
    norm = normalized_confusion(cm)
    n_rows, n_cols = norm.shape
    cols = list(class_names) + (["(no class)"] if n_cols > n_rows else [])
    size = 2.5 + 0.42 * max(n_rows, n_cols)
    fig = _canvas(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(cols, rotation=90, fontsize=8)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (rows normalised by ground-truth pixels)", fontsize=10)
    if max(n_rows, n_cols) <= 40:
        for r in range(n_rows):
            for c in range(n_cols):
                v = norm[r, c]
                if np.isfinite(v) and v >= 0.005:
                    ax.text(c, r, "{:.0f}".format(100 * v), ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(str(path))
    return Path(path)


def plot_class_iou(class_iou: Mapping[str, Optional[float]], path: Path, miou: Optional[float] = None) -> Path:
    """Horizontal bars of per-class IoU, best first; classes without a score are marked n/a."""
    items = sorted(class_iou.items(), key=lambda kv: (kv[1] is None, -(kv[1] or 0.0)))
    names = [k for k, _ in items]
    values = [0.0 if v is None else 100.0 * v for _, v in items]
    fig = _canvas(8.0, 1.5 + 0.3 * max(len(items), 1))
    ax = fig.add_subplot(1, 1, 1)
    ypos = np.arange(len(items))
    ax.barh(ypos, values, color="#4c72b0")
    ax.set_yticks(ypos)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    for y, (_, v) in zip(ypos, items):
        ax.text((0 if v is None else 100 * v) + 1, y, "n/a" if v is None else "{:.1f}".format(100 * v),
                va="center", fontsize=7)
    if miou is not None:
        ax.axvline(100 * miou, color="#c44e52", linestyle="--", linewidth=1)
        ax.set_title("Per-class IoU (mean {:.2f} %)".format(100 * miou), fontsize=10)
    else:
        ax.set_title("Per-class IoU", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    return Path(path)


def summary_line(result: Mapping[str, Any], *, scored: Optional[int] = None, without_gt: int = 0,
                 skipped: int = 0, fps: Optional[float] = None) -> str:
    """The headline numbers of an evaluation on one line (every ``eval-*`` command prints it).

    ``scored`` defaults to the result's ``frames``; counts of zero and a missing ``fps`` are left out.
    """
    def pct(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else "{:.2f}%".format(100 * value)

    parts = ["mIoU {}".format(pct("miou"))]
    if "iiou" in result:
        parts += ["iIoU {}".format(pct("iiou")), "category IoU {}".format(pct("category_iou")),
                  "category iIoU {}".format(pct("category_iiou"))]
    parts += ["pixel acc {}".format(pct("pixel_accuracy")),
              "{} frames scored".format(result.get("frames") if scored is None else scored)]
    if without_gt:
        parts.append("{} without ground truth".format(without_gt))
    if skipped:
        parts.append("{} skipped".format(skipped))
    if fps is not None:
        parts.append("{:.1f} fps".format(fps))
    return "  ".join(parts)
