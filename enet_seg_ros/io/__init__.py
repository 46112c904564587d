"""Messages and files without rclpy: image messages <-> numpy, camera info, bags, frame sources.

This layer holds everything about camera frames that does not need a running ROS graph, so
the evaluators, the benchmarks and the nodes share it (it imports nothing of ``engine``,
``evaluate``, ``train`` or ``ros``; message classes such as ``sensor_msgs.msg.Image`` are
imported only by the functions that build them). Modules:

- :mod:`.image_conv`: ``sensor_msgs/Image`` / ``CompressedImage`` <-> numpy, cv_bridge compatible.
- :mod:`.camera_info`: nominal ``CameraInfo`` and its scaling for model-resolution outputs.
- :mod:`.topics`: message type names and topic naming (``camera_info`` beside an image topic).
- :mod:`.files`: image / video / bag suffixes and image listing.
- :mod:`.bags`: ROS 2 bags without ROS (``rosbags``): :class:`~.bags.BagReader`, :class:`~.bags.BagWriter`.
- :mod:`.sources`: frame sources (folder, video, bag, synthetic) for ``image_source`` and the demo.
- :mod:`.scenes`: the synthetic road-like scene generator used by the demo, the tests and the benchmarks.
"""
