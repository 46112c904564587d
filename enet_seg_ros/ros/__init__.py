"""ROS 2 (rclpy) nodes: ``seg_node`` (camera in, segmentation out) and ``image_source``.

This sub-package is the only place that imports rclpy and ROS message types. Modules:

- :mod:`.image_conv`: ``sensor_msgs/Image`` / ``CompressedImage`` <-> numpy, cv_bridge compatible.
- :mod:`.camera_info`: ``sensor_msgs/CameraInfo`` scaling for model-resolution outputs.
- :mod:`.qos`: explicit QoS profiles from parameter strings.
- :mod:`.params`: parameter specs (descriptions, ranges, read-only) and their validation.
- :mod:`.diagnostics`: rate / latency statistics and throttled error logging.
- :mod:`.seg_node`: the segmentation node.
- :mod:`.image_source`: publishes frames from an image folder, a video, a ROS 2 bag or a
  synthetic scene generator.
- :mod:`.scenes`: the synthetic road-like scene generator used by the demo and the tests.
- :mod:`.runner`: process entry: start-up errors -> exit code 2, clean SIGINT / SIGTERM.
- :mod:`.demo`: ``make demo``.
- :mod:`.bench`: transport (QoS) and node-vs-bare benchmarks for BENCHMARKS.md.
- :mod:`.testing`: an rclpy test harness (own context, spinning executor, probe node).
"""
