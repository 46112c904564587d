"""Rebuild the shipped demo bag ``demo/camvid_val_seq`` from CamVid val (SegNet split).

    python demo/make_demo_bag.py --camvid ../shared/data/camvid

30 frames (every 3rd of the first 90 val frames: about 6 s of the 0016E5 drive), downscaled
from 480x360 to 360x270 so the bag stays under 5 MB: frames with INTER_AREA, labels with
nearest neighbour (label values are never blended). Then ``enet-seg make-bag`` writes them:
JPEG frames (quality 90) on ``/camera/image_raw/compressed`` and the labels on
``/camera/labels_gt``, stamped at 10 Hz from a fixed start, so the bag is reproducible.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

SIZE = (360, 270)
FIRST, COUNT, STEP = 0, 30, 3
START_NS = 1_700_000_000_000_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, required=True, help="CamVid root with val/ and valannot/")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "camvid_val_seq")
    args = parser.parse_args()
    names = sorted(p.name for p in (args.camvid / "val").glob("*.png"))[FIRST:FIRST + COUNT * STEP:STEP]
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = Path(tmp) / "val", Path(tmp) / "valannot"
        images.mkdir()
        labels.mkdir()
        for name in names:
            frame = cv2.imread(str(args.camvid / "val" / name), cv2.IMREAD_COLOR)
            label = cv2.imread(str(args.camvid / "valannot" / name), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(images / name), cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA))
            cv2.imwrite(str(labels / name), cv2.resize(label, SIZE, interpolation=cv2.INTER_NEAREST))
        return subprocess.call([sys.executable, "-m", "enet_seg_ros.cli", "make-bag", "--dataset", "camvid",
                                "--images", str(images), "--labels", str(labels), "--out", str(args.out),
                                "--compressed", "--jpeg-quality", "90", "--rate", "10",
                                "--start-ns", str(START_NS), "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
