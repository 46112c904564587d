"""enet_seg_ros: real-time semantic segmentation for ROS 2 cameras.

Sub-packages: ``nets`` (ENet / ERFNet / ESPNet), ``weights`` (safetensors + model cards),
``data`` (label specs, datasets), ``io`` (image messages, bags, frame sources; no rclpy),
``engine`` (Segmenter and backends), ``train``, ``evaluate``, ``bench``, ``ros`` (rclpy
nodes; the only place that imports rclpy), ``commands`` (the ``enet-seg`` CLI).
"""

__version__ = "0.1.0"
