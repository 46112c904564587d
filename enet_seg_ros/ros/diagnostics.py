"""Node health numbers: input / output rates, latency percentiles, counters, throttled logs.

Everything here is plain Python (thread-safe, bounded memory) so it can be tested without
ROS; :func:`key_values` turns a snapshot into ``diagnostic_msgs/KeyValue`` entries.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np


class NodeStats:
    """Counters and a rolling timing window shared by the callback and the worker thread.

    Rates are measured between two :meth:`snapshot` calls (the diagnostics period);
    latency percentiles over the frames processed in the last ``window_s`` seconds (at most
    ``window`` frames), so the numbers describe the node now, not minutes ago.
    """

    def __init__(self, window: int = 200, window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.skipped = 0
        self.bad_frames = 0
        self.errors = 0
        self.window_s = window_s
        # (done time, latency, inference or NaN, work or NaN), seconds
        self._timings: Deque[Tuple[float, float, float, float]] = deque(maxlen=window)
        self._mark: Tuple[float, int, int] = (time.monotonic(), 0, 0)

    def on_received(self) -> None:
        """A frame arrived from the subscription."""
        with self._lock:
            self.received += 1

    def on_dropped(self, count: int = 1) -> None:
        """Frames were replaced in the one-slot buffer before the worker took them."""
        with self._lock:
            self.dropped += count

    def on_skipped(self, count: int = 1) -> None:
        """Frames replaced while ``max_rate_hz`` held the worker back (asked for, not overload)."""
        with self._lock:
            self.skipped += count

    def restart_rates(self, now: Optional[float] = None) -> None:
        """Measure the next rates from ``now`` (at activation: not over the time the node was idle)."""
        with self._lock:
            self._mark = (time.monotonic() if now is None else now, self.received, self.processed)

    def on_bad_frame(self) -> None:
        """A frame could not be decoded (malformed message)."""
        with self._lock:
            self.bad_frames += 1

    def on_error(self) -> None:
        """Inference or publishing failed for a frame that decoded fine."""
        with self._lock:
            self.errors += 1

    def on_processed(self, latency_s: float, inference_s: Optional[float] = None,
                     work_s: Optional[float] = None, now: Optional[float] = None) -> None:
        """A frame was segmented and published ``latency_s`` after it was received.

        Optional breakdown: ``inference_s`` in ``Segmenter.segment``, ``work_s`` from taking
        the frame out of the buffer to the last publish (so the node's own overhead is
        ``work_s - inference_s`` and the wait for the worker is ``latency_s - work_s``).
        """
        nan = float("nan")
        entry = (time.monotonic() if now is None else now, latency_s,
                 nan if inference_s is None else inference_s, nan if work_s is None else work_s)
        with self._lock:
            self.processed += 1
            self._timings.append(entry)

    def latencies_ms(self) -> List[float]:
        """Latencies of the frames still in the window, in milliseconds (oldest first)."""
        with self._lock:
            return [1000.0 * t[1] for t in self._timings]

    def snapshot(self, now: Optional[float] = None) -> Dict[str, float]:
        """Rates since the previous snapshot, timing percentiles and the counters."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._timings and self._timings[0][0] < now - self.window_s:
                self._timings.popleft()
            t0, received0, processed0 = self._mark
            dt = max(now - t0, 1e-9)
            timings = np.asarray(self._timings, dtype=np.float64).reshape(-1, 4) * 1000.0
            lat, inference, work = (col[~np.isnan(col)] for col in (timings[:, 1], timings[:, 2], timings[:, 3]))
            snap = {
                "input_rate_hz": (self.received - received0) / dt,
                "output_rate_hz": (self.processed - processed0) / dt,
                "latency_p50_ms": _percentile(lat, 50),
                "latency_p95_ms": _percentile(lat, 95),
                "latency_max_ms": float(lat.max()) if lat.size else float("nan"),
                "inference_p50_ms": _percentile(inference, 50),
                "work_p50_ms": _percentile(work, 50),
                "frames_received": self.received,
                "frames_processed": self.processed,
                "dropped_frames": self.dropped,
                "skipped_frames": self.skipped,
                "bad_frames": self.bad_frames,
                "errors": self.errors,
            }
            self._mark = (now, self.received, self.processed)
        return snap


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


class Throttle:
    """At most one log line per ``key`` every ``period_s``; counts what it suppressed.

    Keys are problem kinds (e.g. "bad frame: unsupported encoding"), so a flood of one
    problem cannot hide a different one.
    """

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}

    def allow(self, key: str, now: Optional[float] = None) -> Tuple[bool, int]:
        """``(log_it, suppressed_since_last_log)`` for one occurrence of ``key``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)


def format_value(value) -> str:
    """Diagnostics values are strings: floats with 2 decimals, NaN as 'n/a'."""
    if isinstance(value, float):
        return "n/a" if value != value else "{:.2f}".format(value)
    return str(value)


def key_values(values: Dict[str, object]):
    """``[diagnostic_msgs/KeyValue]`` for a dict (insertion order kept)."""
    from diagnostic_msgs.msg import KeyValue

    return [KeyValue(key=str(k), value=format_value(v)) for k, v in values.items()]
