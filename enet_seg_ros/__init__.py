"""enet_seg_ros: real-time semantic segmentation for ROS 2 cameras.

Sub-packages: ``nets`` (ENet / ERFNet / ESPNet), ``weights`` (safetensors + model cards),
``engine`` (Segmenter and backends), ``data`` (label specs, datasets), ``train``, ``evaluate``,
``ros`` (rclpy nodes; the only place that imports rclpy).
"""

__version__ = "0.1.0"
