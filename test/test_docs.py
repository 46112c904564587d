"""The documentation's commands are the interface users copy: every ``enet-seg`` flag, launch
argument, node parameter and benchmark-script flag that README.md, models/README.md, checkpoints/README.md,
demo/README.md and BENCHMARKS.md show must exist, and the README's tables must list every
sub-command and every ``seg_node`` parameter."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from enet_seg_ros.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / p for p in ("README.md", "models/README.md", "checkpoints/README.md", "demo/README.md", "BENCHMARKS.md")]
# A command ends at the end of its line (continuations joined), a pipe, ;, &&, a comment or a backtick.
_TAIL = r"([^\n`|;&#]*)"


def _text(doc: Path) -> str:
    return re.sub(r"\\\n\s*", " ", doc.read_text())  # shell line continuations


def _commands(pattern: str) -> Iterator[Tuple[str, Tuple[str, ...]]]:
    """``(doc name, match groups)`` for each match of ``pattern`` in the docs."""
    for doc in DOCS:
        for m in re.finditer(pattern, _text(doc)):
            yield doc.relative_to(REPO).as_posix(), m.groups()


def _flags(rest: str) -> List[str]:
    return re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)


def _subparsers(parser) -> Dict[str, object]:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def test_enet_seg_commands_in_the_docs_use_real_sub_commands_and_flags():
    commands = _subparsers(build_parser())
    seen, wrong = 0, []
    for doc, (sub, rest) in _commands(r"(?:enet-seg|enet_seg_ros\.cli)\s+([a-z][a-z-]*)" + _TAIL):
        if sub not in commands:
            wrong.append("{}: enet-seg {}: no such sub-command".format(doc, sub))
            continue
        parser = commands[sub]
        options = set(parser._option_string_actions)
        nested = _subparsers(parser)  # enet-seg bench qos|node|...: the nested parser's flags too
        words = rest.split()
        if words and words[0] in nested:
            options |= set(nested[words[0]]._option_string_actions)
        seen += 1
        wrong += ["{}: enet-seg {}: no flag {}".format(doc, sub, f) for f in _flags(rest) if f not in options]
    assert seen > 40  # the docs do show the tool; a broken pattern would find nothing
    assert not wrong, "\n".join(wrong)


def _script_flags(script: Path) -> Set[str]:
    """The flags a benchmark script takes: its own (argparse "--flag", shell case branches), those
    of the Python script a shell script hands over to, and of the ``enet-seg bench`` mode it runs."""
    source = script.read_text()
    flags = set(re.findall(r'"(--[a-z][a-z0-9-]*)"', source)) | set(re.findall(r"(--[a-z][a-z0-9-]*)(?:\)|\|)", source))
    sibling = script.with_suffix(".py")
    if script.suffix == ".sh" and sibling.is_file():
        flags |= _script_flags(sibling)
    for mode in re.findall(r'main\(\["bench", "(\w+)"\]', source):
        bench = _subparsers(build_parser())["bench"]
        flags |= set(bench._option_string_actions) | set(_subparsers(bench)[mode]._option_string_actions)
    return flags


def _unknown_names(pattern: str, folder: str, declared_of, used_in) -> Tuple[int, List[str]]:
    """For each command matching ``pattern`` (groups: a file name in ``folder``, the rest of the
    command): the names ``used_in(rest)`` that ``declared_of(file)`` lacks. Returns ``(commands
    checked, problems)``."""
    seen, wrong = 0, []
    for doc, (name, rest) in _commands(pattern):
        path = REPO / folder / name
        if not path.is_file():
            wrong.append("{}: no {}/{}".format(doc, folder, name))
            continue
        declared = declared_of(path)
        seen += 1
        wrong += ["{}: {}/{} has no {!r}".format(doc, folder, name, n) for n in used_in(rest) if n not in declared]
    return seen, wrong


def test_benchmark_script_commands_in_the_docs_use_their_flags():
    seen, wrong = _unknown_names(r"benchmarks/(\w+\.(?:py|sh))" + _TAIL, "benchmarks", _script_flags, _flags)
    assert seen >= 10
    assert not wrong, "\n".join(wrong)


def _launch_arguments(launch_file: Path) -> Set[str]:
    for node in ast.walk(ast.parse(launch_file.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            return {elt.elts[0].value for elt in node.value.elts}
    raise AssertionError("{} has no ARGUMENTS table".format(launch_file.name))


def test_launch_commands_in_the_docs_use_declared_arguments():
    seen, wrong = _unknown_names(r"ros2 launch enet_seg_ros ([\w.]+)" + _TAIL, "launch", _launch_arguments,
                                 lambda rest: re.findall(r"(?<![\w/])(\w+):=", rest))
    assert seen >= 5
    assert not wrong, "\n".join(wrong)


def _node_parameters() -> Dict[str, Set[str]]:
    from enet_seg_ros.ros import eval_node, image_source, seg_node
    return {m.__name__.rsplit(".", 1)[1]: {p.name for p in m.PARAMS} for m in (seg_node, image_source, eval_node)}


def test_node_parameters_in_the_docs_exist():
    params = _node_parameters()
    seen, wrong = 0, []
    for doc, (verb, node, name) in _commands(r"ros2 param (set|get|describe) /(\w+) (\w+)"):
        seen += 1
        if name not in params.get(node, ()) and not (verb == "get" and name in ("class_names", "palette", "model")):
            wrong.append("{}: ros2 param {} /{} {}: no such parameter".format(doc, verb, node, name))
    for doc, (node, rest) in _commands(r"ros2 run enet_seg_ros (\w+)" + _TAIL):
        seen += 1
        if node not in params:
            wrong.append("{}: ros2 run enet_seg_ros {}: no such node".format(doc, node))
            continue
        wrong += ["{}: {} has no parameter {!r}".format(doc, node, p)
                  for p in re.findall(r"-p (\w+):=", rest) if p not in params[node]]
    assert seen >= 3
    assert not wrong, "\n".join(wrong)


def _table_names(section: str) -> Set[str]:
    """The names in the first column of each row of the first table after ``section``."""
    text = (REPO / "README.md").read_text()
    start = text.index(section)
    rows = re.findall(r"^\| (`[^|]+)\|", text[start:text.index("\n\n", text.index("\n|", start))], re.M)
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row)}


def test_readme_tables_list_every_sub_command_and_seg_node_parameter():
    assert _table_names("## The `enet-seg` tool") >= {name for name, _, _ in COMMANDS}
    documented = _table_names("Parameters (all in `config/seg.yaml`")
    declared = _node_parameters()["seg_node"]
    assert documented == declared, "README only: {}; node only: {}".format(
        sorted(documented - declared), sorted(declared - documented))


@pytest.mark.parametrize("line, check", [
    ("enet-seg bench qos --nope", "test_enet_seg_commands_in_the_docs_use_real_sub_commands_and_flags"),
    ("ros2 launch enet_seg_ros seg.launch.py nope:=1", "test_launch_commands_in_the_docs_use_declared_arguments"),
    ("python3 benchmarks/ship_run.py runs/x --nope", "test_benchmark_script_commands_in_the_docs_use_their_flags"),
])
def test_the_checks_catch_a_wrong_command(tmp_path, monkeypatch, line, check):
    # Enough right commands of each kind to pass the "found some" floors, and one wrong one.
    right = (["enet-seg info W{}".format(i) for i in range(41)] + ["ros2 launch enet_seg_ros seg.launch.py"] * 5
             + ["bash benchmarks/gpu_run.sh --out x"] * 10)
    doc = tmp_path / "README.md"
    doc.write_text("    " + line + "\n" + "\n".join(right) + "\n")
    for folder in ("launch", "benchmarks"):
        (tmp_path / folder).symlink_to(REPO / folder)
    monkeypatch.setattr("test_docs.DOCS", [doc])
    monkeypatch.setattr("test_docs.REPO", tmp_path)
    with pytest.raises(AssertionError, match="nope"):
        globals()[check]()
