"""launch/seg.launch.py, config/seg.yaml and config/seg.rviz.

``launch`` / ``launch_ros`` are not installable here, so the launch file is compiled and its
arguments read from the AST (and really executed where launch is installed). The YAML file
is checked against the node's parameter specs and loaded by the real seg_node process with
``--ros-args --params-file``.
"""
from __future__ import annotations

import ast
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "seg.launch.py"
CONFIG = REPO / "config" / "seg.yaml"
RVIZ = REPO / "config" / "seg.rviz"
REQUIRED_ARGS = {"image_topic", "weights", "backend", "params_file", "namespace", "use_rviz", "source", "managed"}


def _launch_arguments() -> set:
    tree = ast.parse(LAUNCH.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            return {elt.elts[0].value for elt in node.value.elts}
    raise AssertionError("launch file has no ARGUMENTS table")


def test_launch_file_compiles_and_declares_its_arguments(tmp_path):
    py_compile.compile(str(LAUNCH), cfile=str(tmp_path / "seg.launch.pyc"), doraise=True)
    assert _launch_arguments() == REQUIRED_ARGS
    text = LAUNCH.read_text()
    for needed in ("launch_ros.actions", "FindPackageShare", "seg.rviz", "seg.yaml", "image_source", "rviz2",
                   "fastdds_shm.xml"):
        assert needed in text


def test_launch_plays_the_shipped_demo_bag_and_starts_managed():
    """source:=demo replays the installed bag (frames + ground truth) into seg_node and eval_node;
    managed:=true turns seg_node's autostart off."""
    tree = ast.parse(LAUNCH.read_text())
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id in
              ("DEMO_BAG", "GT_TOPIC")}
    assert (REPO.joinpath(*consts["DEMO_BAG"]) / "metadata.yaml").is_file()  # installed from here by setup.py
    from enet_seg_ros.ros.demo import GT_TOPIC, bag_topics

    assert consts["GT_TOPIC"] == GT_TOPIC and GT_TOPIC in bag_topics(REPO.joinpath(*consts["DEMO_BAG"]))
    assert "/camera/image_raw/compressed" in bag_topics(REPO.joinpath(*consts["DEMO_BAG"]))
    text = LAUNCH.read_text()
    for needed in ('executable="eval_node"', '"gt_wait_for_labels": True', 'overrides["autostart"] = False',
                   '"labels_topic": "seg_node/labels"'):
        assert needed in text, needed


def test_launch_description_builds_where_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch / launch_ros are not installable in this environment")
    import importlib.util

    spec = importlib.util.spec_from_file_location("seg_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {e.name for e in description.entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert names == REQUIRED_ARGS


def _config() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/**/seg_node"]
    return data["/**/seg_node"]["ros__parameters"]


def test_config_sets_every_node_parameter_to_a_valid_value():
    from enet_seg_ros.ros.seg_node import PARAM_TABLE

    config = _config()
    assert set(config) == set(PARAM_TABLE), "config/seg.yaml and the node's parameters differ"
    for name, value in config.items():
        spec = PARAM_TABLE[name]
        assert spec.problem(value) is None, name
        assert type(value) is type(spec.default) or (isinstance(spec.default, list) and isinstance(value, list)), name


def test_real_node_reads_the_params_file(tmp_path):
    """The real process loads the file: a copy with one bad value must stop it, naming the value."""
    pytest.importorskip("rclpy")
    bad = tmp_path / "seg_bad.yaml"
    bad.write_text(CONFIG.read_text().replace("output_resolution: camera", "output_resolution: gigantic"))
    cmd = [sys.executable, "-m", "enet_seg_ros.ros.seg_node", "--ros-args", "--params-file", str(bad)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2
    assert "output_resolution must be one of ['camera', 'model'], got 'gigantic'" in proc.stderr
    # The unmodified file gets past parameter checking (it fails later only if the default model is absent).
    proc = subprocess.run(cmd[:-1] + [str(CONFIG), "-p", "weights:={}".format(tmp_path / "none.safetensors")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2 and "none.safetensors: weights file not found" in proc.stderr


def test_rviz_config_shows_input_overlay_and_colour():
    data = yaml.safe_load(RVIZ.read_text())
    displays = data["Visualization Manager"]["Displays"]
    topics = {d["Name"]: d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert topics == {"Camera": "/camera/image_raw", "Overlay": "/seg_node/overlay", "Classes": "/seg_node/color"}
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in displays)


def test_fastdds_profile_is_valid_xml_with_a_big_shared_memory_segment():
    import xml.etree.ElementTree as ET

    root = ET.parse(str(REPO / "config" / "fastdds_shm.xml")).getroot()
    ns = {"d": "http://www.eprosima.com"}
    sizes = [int(e.text) for e in root.iterfind(".//d:transport_descriptor/d:segment_size", ns)]
    assert sizes and min(sizes) >= 4 * 640 * 360 * 3  # several whole 640x360 rgb8 frames


def test_setup_installs_launch_and_config():
    text = (REPO / "setup.py").read_text()
    assert '"/launch", glob("launch/*.py")' in text and '"/config", glob("config/*")' in text
