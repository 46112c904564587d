"""Build script: an ament_python package that also installs with plain ``pip install -e .``."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "enet_seg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.py")),
        ("share/" + PACKAGE + "/config", glob("config/*")),
        ("share/" + PACKAGE + "/models", glob("models/*")),
        # The demo's CamVid street sequence (CC BY-NC 4.0, see demo/LICENSE) and its licence.
        ("share/" + PACKAGE + "/demo", ["demo/README.md", "demo/LICENSE"]),
        ("share/" + PACKAGE + "/demo/camvid_val_seq", glob("demo/camvid_val_seq/*")),
    ],
    # The shipped default model is also package data so pip installs find it without ament.
    package_data={PACKAGE: ["py.typed"]},
    install_requires=["setuptools", "numpy", "safetensors"],
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="enet_seg_ros maintainers",
    maintainer_email="dev@enet-seg-ros.invalid",
    description="Real-time semantic segmentation (ENet/ERFNet/ESPNet) for ROS 2 cameras",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "enet-seg = enet_seg_ros.cli:main",
            "seg_node = enet_seg_ros.ros.seg_node:main",
            "image_source = enet_seg_ros.ros.image_source:main",
            "eval_node = enet_seg_ros.ros.eval_node:main",
        ],
    },
)
