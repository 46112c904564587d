"""The small interface every inference backend implements."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

FAIL_ENV = "ENET_SEG_FAIL_BACKENDS"


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (library missing, no GPU, unsupported precision...)."""


class Backend:
    """Runs the inference graph on uint8 NHWC batches.

    Attributes:
        name: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        input_size: (width, height) the graph was built for.
        outputs: graph output names (``labels`` [+ ``confidence``] or ``logits``).
        max_batch: largest batch one :meth:`infer` call accepts (``None``: any).
        details: free-form facts for logs and benchmark reports (providers, threads...).
    """

    name = "?"

    def __init__(self) -> None:
        self.device = "cpu"
        self.precision = "fp32"
        self.input_size: Tuple[int, int] = (0, 0)
        self.outputs: Tuple[str, ...] = ("labels",)
        self.max_batch: Optional[int] = None
        self.details: Dict[str, object] = {}
        self.skipped: Dict[str, str] = {}  # backends tried before this one and why they were not used

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one (N, H, W, 3) uint8 C-contiguous batch; returns outputs by name (numpy, batch first)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (sessions, GPU memory)."""

    def describe(self) -> str:
        """One line for logs: name, device, precision and key details."""
        extra = ", ".join("{}={}".format(k, v) for k, v in sorted(self.details.items()))
        return "{} ({}, {}{})".format(self.name, self.device, self.precision, ", " + extra if extra else "")


def forced_failures() -> set:
    """Backends listed in ``$ENET_SEG_FAIL_BACKENDS`` (comma separated ``name`` or ``name:device``).

    A diagnostic / test hook: a listed backend raises at the start of its initialisation as if
    its library were broken, so the fallback chain can be exercised on any machine.
    """
    raw = os.environ.get(FAIL_ENV, "")
    return {item.strip().lower() for item in raw.split(",") if item.strip()}


def check_forced_failure(name: str, device: str, extra: Optional[set] = None) -> None:
    """Raise ``RuntimeError`` if ``name`` (or ``name:device``) is forced to fail."""
    listed = forced_failures() | {s.lower() for s in (extra or set())}
    kind = device.split(":")[0]
    if name in listed or "{}:{}".format(name, kind) in listed:
        raise RuntimeError("{} backend forced to fail ({} / fail_backends)".format(name, FAIL_ENV))
