"""Helpers for the node tests with real rclpy and real DDS (no mocks).

:class:`RosHarness` owns an rclpy context (no signal handlers, so pytest keeps Ctrl-C), an
executor spinning on a background thread, and a probe node to publish frames and collect
outputs. Nodes under test are created in the same context, so discovery is in-process and
fast; their topics and callbacks still go through the DDS middleware.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Dict, List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from enet_seg_ros.ros.qos import image_qos
from enet_seg_ros.ros.runner import wait_until  # noqa: F401 - the tests import it from here

DISCOVERY_TIMEOUT_S = 30.0


def stamp_key(header) -> int:
    """A header stamp as integer nanoseconds (dictionary key for matching outputs to inputs)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class RosHarness:
    """An isolated rclpy context with a spinning executor and a probe node.

    >>> with RosHarness() as ros:                                   # doctest: +SKIP
    ...     node = SegNode(context=ros.context, parameter_overrides=[...])
    ...     ros.add(node)
    ...     pub = ros.publisher(Image, "/cam/image_raw")
    ...     ros.collect(Image, "/seg_node/labels")
    """

    def __init__(self, threads: int = 2) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        self.probe = Node("test_probe_{}".format(id(self) % 100000), context=self.context)
        self.executor.add_node(self.probe)
        self.received: Dict[str, List[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self._nodes: List[Any] = []
        self._closing = False
        self._thread = threading.Thread(target=self._spin, name="test_executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok() and not self._closing:
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):  # context shut down under us: stop spinning
            pass

    def add(self, node) -> Any:
        """Spin ``node`` too; it is destroyed by :meth:`close`."""
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def remove(self, node) -> None:
        """Stop spinning ``node`` and destroy it."""
        self.executor.remove_node(node)
        if node in self._nodes:
            self._nodes.remove(node)
        node.destroy_node()

    def qos(self, reliability: str = "reliable", depth: int = 10):
        return image_qos(reliability, depth)

    def publisher(self, msg_type, topic: str, reliability: str = "reliable", depth: int = 10):
        """A probe publisher."""
        return self.probe.create_publisher(msg_type, topic, self.qos(reliability, depth))

    def collect(self, msg_type, topic: str, reliability: str = "reliable", depth: int = 50,
                key: Optional[str] = None) -> List[Any]:
        """Store every message on ``topic`` in ``self.received[key or topic]`` (returned list)."""
        name = key or topic
        bucket = self.received[name]

        def callback(msg):
            with self._lock:
                bucket.append(msg)

        self.probe.create_subscription(msg_type, topic, callback, self.qos(reliability, depth))
        return bucket

    def wait_matched(self, publisher, count: int = 1, timeout: float = DISCOVERY_TIMEOUT_S) -> bool:
        """Wait until ``publisher`` has ``count`` matched subscriptions."""
        return wait_until(lambda: publisher.get_subscription_count() >= count, timeout)

    def wait_publishers(self, topic: str, count: int = 1, timeout: float = DISCOVERY_TIMEOUT_S) -> bool:
        """Wait until ``topic`` has ``count`` publishers."""
        return wait_until(lambda: self.probe.count_publishers(topic) >= count, timeout)

    def close(self) -> None:
        """Stop spinning, destroy the nodes (joining their workers), shut the context down."""
        self._closing = True
        self._thread.join(timeout=10.0)
        self.executor.shutdown(timeout_sec=5.0)
        for node in list(self._nodes) + [self.probe]:
            node.destroy_node()
        self._nodes.clear()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "RosHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
