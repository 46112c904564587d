"""Start seg_node (and optionally image_source and rviz2).

    ros2 launch enet_seg_ros seg.launch.py
    ros2 launch enet_seg_ros seg.launch.py source:=/data/drive.mp4 use_rviz:=true
    ros2 launch enet_seg_ros seg.launch.py namespace:=left image_topic:=/left/image_raw

All node settings live in ``config/seg.yaml`` (``params_file``); the ``image_topic``,
``weights`` and ``backend`` arguments override it only when given. With Fast DDS (the
default RMW) and no ``FASTDDS_DEFAULT_PROFILES_FILE`` of your own, the nodes get
``config/fastdds_shm.xml``: whole camera frames through shared memory (see BENCHMARKS.md).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from enet_seg_ros.engine.registry import backend_choices
from launch_ros.substitutions import FindPackageShare

PACKAGE = "enet_seg_ros"
ARGUMENTS = (
    ("image_topic", "", "input image topic (empty: the params file's, /camera/image_raw)"),
    ("weights", "", "weights file or shipped model name, e.g. erfnet_camvid (empty: the params file's; there "
                   "empty = enet_camvid)"),
    ("backend", "", " | ".join(backend_choices()) + " (empty: the params file's)"),
    ("params_file", "", "seg_node parameters (empty: config/seg.yaml from the package share)"),
    ("namespace", "", "namespace of the nodes (one per camera)"),
    ("use_rviz", "false", "start rviz2 with config/seg.rviz (input, overlay and colour images)"),
    ("source", "none", "none, or an image folder / video / ROS 2 bag / 'synthetic' to publish with image_source"),
)


def _nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    share = FindPackageShare(PACKAGE).perform(context)
    params_file = arg("params_file") or os.path.join(share, "config", "seg.yaml")
    overrides = {name: arg(name) for name in ("image_topic", "weights", "backend") if arg(name)}
    namespace = arg("namespace")
    env = {}
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ and \
            os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = os.path.join(share, "config", "fastdds_shm.xml")
    nodes = [Node(package=PACKAGE, executable="seg_node", name="seg_node", namespace=namespace,
                  parameters=[params_file, overrides], output="screen", emulate_tty=True, additional_env=env)]
    if arg("source") not in ("", "none"):
        source_params = {"source": arg("source"), "loop": True}
        if arg("image_topic"):
            source_params["topic"] = arg("image_topic")
        nodes.append(Node(package=PACKAGE, executable="image_source", name="image_source", namespace=namespace,
                          parameters=[source_params], output="screen", emulate_tty=True, additional_env=env))
    if arg("use_rviz").lower() in ("true", "1", "yes"):
        nodes.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=namespace,
                          arguments=["-d", os.path.join(share, "config", "seg.rviz")], output="screen"))
    return nodes


def generate_launch_description():
    """The launch description (see the module docstring)."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)]
    )
