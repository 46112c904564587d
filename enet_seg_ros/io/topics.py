"""Topic names and message type names shared by the nodes, the bag tools and the evaluators."""
from __future__ import annotations

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
COMPRESSED_SUFFIX = "/compressed"  # image_transport's compressed sub-topic


def sibling_topic(image_topic: str, name: str) -> str:
    """``/camera/image_raw`` -> ``/camera/<name>`` (the image_transport convention)."""
    return image_topic.rsplit("/", 1)[0] + "/" + name if "/" in image_topic else name


def base_topic(topic: str) -> str:
    """``/camera/image_raw/compressed`` -> ``/camera/image_raw`` (raw topics are returned as they are)."""
    return topic[: -len(COMPRESSED_SUFFIX)] if topic.endswith(COMPRESSED_SUFFIX) else topic


def camera_info_topic(image_topic: str) -> str:
    """The ``camera_info`` topic beside a raw or compressed image topic."""
    return sibling_topic(base_topic(image_topic), "camera_info")


def looks_like_gt(topic: str) -> bool:
    """True for label / instance topics (``.../labels_gt``, ``.../instances``), which are not camera frames."""
    name = topic.rsplit("/", 1)[-1]
    return name.endswith("_gt") or "labels" in name or "instances" in name


# The camera and ground-truth topics the tools write and read by default (make-bag, eval-bag,
# image_source, eval_node).
IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_IMAGE_TOPIC = IMAGE_TOPIC + COMPRESSED_SUFFIX
LABELS_TOPIC = "/camera/labels_gt"
INSTANCES_TOPIC = "/camera/instances_gt"
