"""The package's layers by dependency (read from the source with ``ast``, nothing imported).

nets / data / weights -> io -> engine -> evaluate / train -> ros -> bench -> commands: a module
may import its own layer and the layers before it, never a later one, so there is no cycle
between sub-packages. ``io`` (messages, bags, files) needs nothing of the model, so it sits
under ``engine``. rclpy is imported only under ``ros/`` and by the ROS benchmarks
(``bench/ros_bench.py``, which drive nodes from above like a launch file); ROS message packages
only there and in ``io/`` (which builds ``sensor_msgs`` messages inside the functions that need them).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "enet_seg_ros"
NAME = PACKAGE.name

LAYERS = (("__init__", "nets", "data", "weights"), ("io",), ("engine",), ("evaluate", "train"), ("ros",),
          ("bench",), ("commands", "cli"))
RANK: Dict[str, int] = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
ROS_CLIENTS = ("bench/ros_bench.py",)  # above ros/: they probe running nodes
MESSAGE_PACKAGES = ("sensor_msgs", "std_msgs", "diagnostic_msgs", "builtin_interfaces", "rcl_interfaces",
                    "lifecycle_msgs")


def _modules() -> Iterator[Tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield path, ".".join((NAME,) + parts)


def _imports(path: Path, module: str) -> List[Tuple[int, str]]:
    """``(line, absolute module)`` of every import in the file, function-level ones included."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.level and not node.module:  # ``from .. import x``: x may be a sub-module
                found += [(node.lineno, target + "." + alias.name) for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_part_has_a_layer():
    parts = {_layer(module) for _, module in _modules()}
    assert parts <= set(RANK), "give {} a layer in LAYERS".format(sorted(parts - set(RANK)))


def test_imports_only_go_down_the_layers():
    wrong = []
    for path, module in _modules():
        for line, target in _imports(path, module):
            if target.split(".")[0] != NAME or target == NAME:
                continue
            if RANK[_layer(target)] > RANK[_layer(module)]:
                wrong.append("{}:{} imports {}".format(path.relative_to(PACKAGE.parent), line, target))
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_rclpy_only_in_ros_and_messages_only_in_ros_and_io():
    wrong = []
    for path, module in _modules():
        layer = _layer(module)
        if path.relative_to(PACKAGE).as_posix() in ROS_CLIENTS:
            continue
        for line, target in _imports(path, module):
            top = target.split(".")[0]
            if (top == "rclpy" and layer != "ros") or (top in MESSAGE_PACKAGES and layer not in ("ros", "io")):
                wrong.append("{}:{} imports {}".format(path.relative_to(PACKAGE.parent), line, target))
    assert not wrong, "ROS imports outside ros/ (io/ may build messages):\n" + "\n".join(wrong)
    assert all((PACKAGE / name).is_file() for name in ROS_CLIENTS)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom ..ros import seg_node\n\ndef f():\n    from .metrics import ConfusionMatrix\n")
    assert _imports(src, NAME + ".evaluate.mod") == [(1, "os"), (2, NAME + ".ros"),
                                                    (5, NAME + ".evaluate.metrics")]
