"""``sensor_msgs/CameraInfo``: a nominal pinhole, and scaling to an image that was resized / padded / cropped.

With ``output_resolution: model`` the node's outputs are at the network's size, made from
the camera image by an axis-aligned affine map (stretch, letterbox or centre crop). The
intrinsics that make those outputs project like the camera image follow from that map.

Convention: the map is given on continuous pixel-edge coordinates (pixel ``i`` covers
``[i, i + 1)``), ``x_out = scale_x * x_in + offset_x``, which is how ``cv2.resize`` samples.
ROS intrinsics use pixel-centre coordinates (``cx`` is a pixel index), so
``cx_out = scale_x * (cx + 0.5) + offset_x - 0.5``. (``image_proc``'s resize uses
``cx * scale_x``, which is off by ``(scale_x - 1) / 2`` pixels.)
"""
from __future__ import annotations

import copy


def nominal_camera_info(width: int, height: int):
    """A pinhole ``sensor_msgs/CameraInfo`` (no distortion, ~53 deg horizontal field of view)."""
    from sensor_msgs.msg import CameraInfo

    f = float(width)
    cx, cy = width / 2.0, height / 2.0
    info = CameraInfo()
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def scale_camera_info(info, width: int, height: int, scale_x: float, scale_y: float,
                      offset_x: float = 0.0, offset_y: float = 0.0):
    """A copy of ``info`` for an image of ``width`` x ``height`` made by the map above.

    ``K`` and ``P`` are scaled (focal lengths, principal point, and ``P``'s translation
    column, which is a focal length times a baseline); ``D`` and ``R`` do not change with
    image scaling. A region of interest, if set, is mapped and clipped to the new image.
    """
    out = copy.deepcopy(info)
    out.width, out.height = int(width), int(height)
    k = [float(v) for v in info.k]
    k[0] *= scale_x
    k[1] *= scale_x  # skew is a focal-length-like term along x
    k[2] = scale_x * (k[2] + 0.5) + offset_x - 0.5
    k[4] *= scale_y
    k[5] = scale_y * (k[5] + 0.5) + offset_y - 0.5
    out.k = k
    p = [float(v) for v in info.p]
    p[0] *= scale_x
    p[1] *= scale_x
    p[2] = scale_x * (p[2] + 0.5) + offset_x - 0.5
    p[3] *= scale_x
    p[5] *= scale_y
    p[6] = scale_y * (p[6] + 0.5) + offset_y - 0.5
    p[7] *= scale_y
    out.p = p
    roi = info.roi
    if roi.width or roi.height or roi.x_offset or roi.y_offset:
        x0 = max(0, int(round(scale_x * roi.x_offset + offset_x)))
        y0 = max(0, int(round(scale_y * roi.y_offset + offset_y)))
        x1 = min(width, int(round(scale_x * (roi.x_offset + roi.width) + offset_x)))
        y1 = min(height, int(round(scale_y * (roi.y_offset + roi.height) + offset_y)))
        out.roi.x_offset, out.roi.y_offset = x0, y0
        out.roi.width, out.roi.height = max(0, x1 - x0), max(0, y1 - y0)
    return out


def project(info, x: float, y: float, z: float):
    """Pixel (u, v) of a camera-frame point with ``info``'s ``P`` (for tests and checks)."""
    p = info.p
    u = p[0] * x + p[1] * y + p[2] * z + p[3]
    v = p[5] * y + p[6] * z + p[7]
    w = p[10] * z + p[11]
    return u / w, v / w
