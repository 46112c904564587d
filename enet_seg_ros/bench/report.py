"""Markdown rendering of a benchmark report (for BENCHMARKS.md)."""
from __future__ import annotations

from typing import Any, Dict, List

COLUMNS = (
    ("arch", "arch"), ("backend", "backend"), ("precision", "prec"), ("size", "size"),
    ("ms_median", "ms median"), ("ms_p90", "ms p90"), ("fps", "fps"), ("speedup_vs_eager", "x eager"),
    ("end_to_end_ms_median", "e2e ms"), ("e2e_over_bare", "e2e/bare"), ("gflops", "GFLOPs"),
    ("gflops_per_s", "GFLOP/s"), ("matmul_fraction", "% GEMM"), ("params", "params"), ("fp16_mb", "fp16 MB"),
    ("agreement_vs_fp32", "agree fp32"),
)


def _cell(key: str, rec: Dict[str, Any]) -> str:
    if key == "size":
        return "{}x{}".format(rec["width"], rec["height"])
    value = rec.get(key)
    if value is None:
        return "-"
    if key in ("matmul_fraction", "agreement_vs_fp32"):
        return "{:.1%}".format(value) if key == "matmul_fraction" else "{:.2%}".format(value)
    if key == "params":
        return "{:.3f}M".format(value / 1e6)
    if key == "speedup_vs_eager":
        return "{:.2f}".format(value)
    if isinstance(value, float):
        return "{:.2f}".format(value) if value < 1000 else "{:.0f}".format(value)
    return str(value)


def to_markdown(report: Dict[str, Any]) -> str:
    """Machine summary + one table row per result + skipped configurations."""
    m = report["machine"]
    lines: List[str] = [
        "Machine: {} ({} logical cores, {} threads used){}; fp32 GEMM {} GFLOP/s at start, {} at end; "
        "load average {} at start, {} at end.".format(
            m.get("cpu"), m.get("cores"), m.get("threads"), ", GPU " + m["gpu"] if m.get("gpu") else "",
            m.get("matmul_gflops_fp32"), m.get("matmul_gflops_fp32_at_end"), m.get("loadavg_at_start"),
            m.get("loadavg_at_end")),
        "Date: {}. Versions: {}.".format(m.get("date"), ", ".join(
            "{} {}".format(k, v) for k, v in (m.get("versions") or {}).items() if v)),
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for rec in report["results"]:
        lines.append("| " + " | ".join(_cell(key, rec) for key, _ in COLUMNS) + " |")
    if report.get("skipped"):
        # One line per (backend, precision, reason): the same reason repeats for every arch / size.
        groups: Dict[tuple, List[str]] = {}
        for s in report["skipped"]:
            reason = s["reason"].split(": ")[-1] if ": " in s["reason"] else s["reason"]
            groups.setdefault((s["backend"], s["precision"], reason), []).append(
                "{} {}x{}".format(s["arch"], s["width"], s["height"]))
        lines.append("")
        lines.append("Skipped (not available here):")
        for (backend, precision, reason), where in groups.items():
            lines.append("- {} {}: {} ({})".format(backend, precision, reason, ", ".join(where)))
    return "\n".join(lines) + "\n"
