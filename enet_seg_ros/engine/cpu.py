"""What this CPU offers the kernels: its flags and model name, the oneDNN ISA cap, bf16 and the int8 class.

One place for these facts: the backends, the int8 guard, ``precision: auto``, the trainer's
bf16 autocast and the benchmark reports all ask here.

``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``, to imitate an AVX2-only CPU on a newer one) limits what
oneDNN, and so torch's and OpenVINO's convolutions, may use. A cap below an extension counts
as that extension missing: oneDNN would run it on slow reference paths, or OpenVINO would fail
to compile. ONNX Runtime ignores the cap (``honour_cap=False`` gives the hardware's answer).
"""
from __future__ import annotations

import os
import platform
from typing import FrozenSet

CPUINFO = "/proc/cpuinfo"
ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"
# Substrings of the oneDNN cap names that include the extension (AVX512_CORE_BF16, AVX10_1_512_AMX, ...).
_BF16_CAP_MARKS = ("BF16", "AMX", "FP16", "AVX10")
_VNNI_CAP_MARKS = ("VNNI",) + _BF16_CAP_MARKS
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: str = CPUINFO) -> FrozenSet[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty when unreadable."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")) and ":" in line:
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_cap() -> str:
    """``ONEDNN_MAX_CPU_ISA`` upper-cased, ``""`` when unset (``ALL`` means no cap)."""
    cap = os.environ.get(ISA_CAP_ENV, "").strip().upper()
    return "" if cap == "ALL" else cap


def cap_allows(cap: str, extension: str) -> bool:
    """Whether a oneDNN ISA cap (:func:`isa_cap`) leaves ``extension`` (``bf16`` or ``vnni``) usable."""
    marks = {"bf16": _BF16_CAP_MARKS, "vnni": _VNNI_CAP_MARKS}[extension]
    return not cap or any(m in cap for m in marks)


def cpu_has_bf16(cpuinfo: str = CPUINFO, honour_cap: bool = True) -> bool:
    """True when the CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16) that oneDNN may use."""
    if honour_cap and not cap_allows(isa_cap(), "bf16"):
        return False
    return bool(cpu_flags(cpuinfo) & BF16_FLAGS)


def cpu_int8_class(cpuinfo: str = CPUINFO, honour_cap: bool = True) -> str:
    """``"vnni"`` when this CPU (as oneDNN is allowed to use it) has int8 dot-product instructions
    (AVX512-VNNI, AVX-VNNI or AMX-INT8), else ``"avx2"`` (also for an unknown CPU, e.g. ARM: no
    VNNI-validated record applies there).

    int8 kernels without VNNI take another path (u8 x s8 pairs summed in 16 bits, which can
    saturate): measured here with ``ONEDNN_MAX_CPU_ISA=AVX2``, OpenVINO int8 ERFNet agreed with fp32
    on 88 % of pixels against 99.2 % with VNNI, so an accuracy record made on one class does not
    vouch for the other (unless its weights are 7-bit, see
    :class:`~enet_seg_ros.engine.quantize.QuantSettings`, and it was validated on both).
    ``honour_cap=False``: the hardware's class (what ONNX Runtime, which ignores the cap, runs).
    """
    if honour_cap and not cap_allows(isa_cap(), "vnni"):
        return "avx2"
    return "vnni" if cpu_flags(cpuinfo) & VNNI_FLAGS else "avx2"


__all__ = ["CPUINFO", "ISA_CAP_ENV", "cpu_flags", "cpu_model_name", "isa_cap", "cap_allows", "cpu_has_bf16",
           "cpu_int8_class"]
