"""Facts about the benchmark machine, and its measured fp32 matrix-multiply rate."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time
from typing import Any, Dict, Optional

from ..engine.cpu import cpu_flags as all_cpu_flags
from ..engine.cpu import cpu_model_name


def cpu_model() -> str:
    """CPU model name (lscpu, else /proc/cpuinfo, else platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return cpu_model_name()


def cpu_flags() -> str:
    """The SIMD extensions that matter for these kernels (AVX2/AVX-512/VNNI/AMX)."""
    flags = all_cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags)


def versions() -> Dict[str, Optional[str]]:
    """Versions of the inference libraries (``None`` when not installed)."""
    out: Dict[str, Optional[str]] = {}
    for name, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("onnx", "onnx"),
                         ("tensorrt", "tensorrt"), ("torch2trt", "torch2trt"), ("numpy", "numpy"), ("opencv", "cv2")):
        try:
            mod = __import__(module)
            out[name] = str(getattr(mod, "__version__", "present"))
        except Exception:
            out[name] = None
    # From the package metadata: importing openvino here would load it into a process that may
    # also train (see the openvino backend).
    try:
        from importlib.metadata import version

        out["openvino"] = version("openvino")
    except Exception:
        out["openvino"] = None
    return out


def gpu_name() -> Optional[str]:
    """CUDA device name, or ``None``."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def matmul_gflops(threads: Optional[int] = None, n: int = 2048, repeats: int = 8) -> float:
    """Best-of fp32 GEMM rate (GFLOP/s) of torch on this CPU with ``threads`` threads.

    This is the practical compute ceiling for fp32 convolutions (which become GEMMs).
    """
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 2.0 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """Everything a reader needs to interpret the numbers."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": int(threads or torch.get_num_threads()),
        "gpu": gpu_name(),
        "versions": versions(),
        "torch": torch.__version__,
        "onnxruntime": versions().get("onnxruntime"),
        "tensorrt": versions().get("tensorrt"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in load] if load[0] is not None else None,
    }


def machine_line() -> str:
    """One line describing this machine for benchmark tables and JSON: CPU, SIMD flags, cores, load, date.

    The one description every benchmark prints (:func:`machine_info` is the long form).
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    flags = cpu_flags()
    return "{}{} ({} CPUs, load {:.1f}), Python {}, {}".format(
        cpu_model(), " [{}]".format(flags) if flags else "", os.cpu_count(), load, platform.python_version(),
        time.strftime("%Y-%m-%d"))
