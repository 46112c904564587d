"""One way to run a node as a process: init, build, spin, clean shutdown, exit code.

- Start-up errors (bad parameters, missing weights, unknown backend, unusable source) are
  ``ValueError`` / ``FileNotFoundError`` / ``RuntimeError`` / ``OSError`` raised while the
  node is built: they become one ``[FATAL]`` log line and exit code 2, no traceback.
- SIGINT and SIGTERM (rclpy's handlers shut the context down) end the spin; the node's
  ``stop()`` joins its worker thread, and the process exits 0 without a traceback.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Sequence

STARTUP_ERROR_EXIT = 2
STARTUP_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


def run_node(name: str, build: Callable[[], object], spin: Callable[[object, object], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> int:
    """Run a node until ``spin`` returns an exit code or the process is signalled.

    Args:
        name: logger name for start-up errors.
        build: creates the node (after ``rclpy.init``); may raise a start-up error.
        spin: ``spin(node, executor)`` drives the node; returns an exit code, or None to keep
            spinning until shutdown.
        argv: process arguments (default ``sys.argv``); ROS arguments after ``--ros-args``
            (``-p``, ``--params-file``, remaps) apply to the node.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    args = list(sys.argv if argv is None else argv)
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(name)
    node = None
    code = 0
    try:
        try:
            node = build()
        except STARTUP_ERRORS as exc:
            if not rclpy.ok():  # SIGINT / SIGTERM during start-up: the context is gone, not an error
                return 0
            logger.fatal("cannot start: {}".format(exc))
            return STARTUP_ERROR_EXIT
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        result = spin(node, executor)
        if result is None:
            executor.spin()
        else:
            code = int(result)
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    except Exception as exc:
        # A signal that shuts the context down while the executor builds its wait set surfaces
        # as rcl's "context is not valid" error instead of ExternalShutdownException (a race a
        # fresh-clone CI run hit on SIGTERM): still a clean shutdown. Anything else is a real error.
        if rclpy.ok() or type(exc).__name__ != "RCLError":
            raise
        code = 0
    finally:
        if node is not None:
            stop = getattr(node, "stop", None)
            if stop is not None:
                stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
