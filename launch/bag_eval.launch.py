"""Replay a labelled bag through seg_node and score it live with eval_node.

    ros2 launch enet_seg_ros bag_eval.launch.py bag:=/data/camvid_val_bag weights:=/models/enet.safetensors
    ros2 launch enet_seg_ros bag_eval.launch.py bag:=/data/cs_bag compressed:=true instances:=true

The bag is one written by ``enet-seg make-bag`` (or recorded with the same topics): camera
frames on ``/camera/image_raw`` (``/compressed`` with ``compressed:=true``) and ground truth on
``/camera/labels_gt`` (+ ``/camera/instances_gt``). Two ``image_source`` nodes replay the
frames and the ground truth with their recorded stamps at ``rate_hz`` over reliable QoS (pick
a rate seg_node keeps up with: a frame dropped by seg_node is counted as ground truth without
a frame); ``eval_node`` writes its report to ``output_dir`` and the launch ends when it exits
(``idle_timeout_s`` after the last message). With ``ros2 bag play`` instead of the sources,
start seg_node and eval_node alone (``source:=none``).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from enet_seg_ros.engine.registry import backend_choices

PACKAGE = "enet_seg_ros"
ARGUMENTS = (
    ("bag", "", "rosbag2 folder with frames and ground truth (empty with source:=none)"),
    ("source", "bag", "bag: replay with image_source; none: play the bag yourself (ros2 bag play)"),
    ("weights", "", "weights file (empty: the shipped default model)"),
    ("backend", "auto", " | ".join(backend_choices())),
    ("dataset", "", "camvid | cityscapes (empty: the model card's)"),
    ("compressed", "false", "the bag's frames are on /camera/image_raw/compressed"),
    ("instances", "false", "also replay /camera/instances_gt for Cityscapes iIoU"),
    ("rate_hz", "5.0", "replay rate (frames per second)"),
    ("output_dir", "eval_report", "report folder written by eval_node"),
    ("idle_timeout_s", "5.0", "eval_node writes the report and exits after this long without messages"),
)
IMAGE_TOPIC = "/camera/image_raw"
GT_TOPIC = "/camera/labels_gt"
INSTANCES_TOPIC = "/camera/instances_gt"


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def _nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    reliable = {"qos_reliability": "reliable", "qos_depth": 10}
    instances = _true(arg("instances"))
    seg = Node(package=PACKAGE, executable="seg_node", name="seg_node", output="screen",
               parameters=[dict(reliable, weights=arg("weights"), backend=arg("backend"), image_topic=IMAGE_TOPIC)])
    evaluator = Node(package=PACKAGE, executable="eval_node", name="eval_node", output="screen",
                     parameters=[dict(reliable, labels_topic="/seg_node/labels", gt_topic=GT_TOPIC,
                                      instances_topic=INSTANCES_TOPIC if instances else "",
                                      weights=arg("weights"), dataset=arg("dataset"), output_dir=arg("output_dir"),
                                      idle_timeout_s=float(arg("idle_timeout_s")),
                                      gt_wait_for_labels=arg("source") == "bag")])
    actions = [seg, evaluator,
               RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[EmitEvent(event=Shutdown())]))]
    if arg("source") == "bag":
        replay = dict(reliable, source=arg("bag"), rate_hz=float(arg("rate_hz")), wait_for_subscribers=1,
                      wait_timeout_s=600.0)
        camera_topic = IMAGE_TOPIC + "/compressed" if _true(arg("compressed")) else IMAGE_TOPIC
        streams = [("camera_source", camera_topic, IMAGE_TOPIC, True), ("gt_source", GT_TOPIC, GT_TOPIC, False)]
        if instances:
            streams.append(("instances_source", INSTANCES_TOPIC, INSTANCES_TOPIC, False))
        for name, bag_topic, topic, camera_info in streams:
            actions.append(Node(package=PACKAGE, executable="image_source", name=name, output="screen",
                                parameters=[dict(replay, bag_topic=bag_topic, topic=topic,
                                                 publish_camera_info=camera_info)]))
    return actions


def generate_launch_description():
    """The launch description (see the module docstring)."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)]
    )
