"""ROS 2 (rclpy) nodes: ``seg_node`` (camera in, segmentation out), ``image_source``, ``eval_node``.

This sub-package is the only place that imports rclpy. Message and file code without rclpy
(image conversion, camera info, bags, frame sources, synthetic scenes) is in
:mod:`enet_seg_ros.io`. Modules:

- :mod:`.qos`: explicit QoS profiles from parameter strings.
- :mod:`.params`: parameter specs (descriptions, ranges, read-only) and their validation.
- :mod:`.diagnostics`: rate / latency statistics and throttled error logging.
- :mod:`.seg_node`: the segmentation node.
- :mod:`.image_source`: publishes frames from an image folder, a video, a ROS 2 bag or a
  synthetic scene generator.
- :mod:`.eval_node`: live evaluation of the labels against a ground-truth topic.
- :mod:`.runner`: process entry: start-up errors -> exit code 2, clean SIGINT / SIGTERM.
- :mod:`.demo`: ``make demo``.
"""
