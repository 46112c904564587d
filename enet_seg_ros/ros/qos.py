"""Explicit QoS profiles for camera streams, chosen by a parameter string.

``best_effort`` is the sensor-data profile (best effort, keep last ``depth``, volatile): a
late frame is worthless to a real-time consumer, so nothing is retransmitted and nothing
queues up. ``reliable`` is the same with reliable delivery, for consumers that must see
every frame (recording, evaluation, tests). A best-effort subscription receives from both
kinds of publishers; a reliable subscription receives only from reliable publishers.
"""
from __future__ import annotations

RELIABILITY_CHOICES = ("best_effort", "reliable")


def check_reliability(value: str) -> str:
    """Return ``value`` if it is a known reliability, else raise ValueError naming the choices."""
    if value not in RELIABILITY_CHOICES:
        raise ValueError("qos_reliability must be one of {}, got {!r}".format(list(RELIABILITY_CHOICES), value))
    return value


def image_qos(reliability: str = "best_effort", depth: int = 1):
    """The QoS profile for image-like topics (see the module docstring)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    check_reliability(reliability)
    if depth < 1:
        raise ValueError("qos depth must be >= 1, got {}".format(depth))
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def diagnostics_qos():
    """``/diagnostics``: reliable, keep last 10, like ``diagnostic_updater`` publishers."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
