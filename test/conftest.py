"""Shared fixtures: the ../shared data folder and an isolated ROS 2 domain per test run."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Each test run talks on its own DDS domain so parallel runs (and other sessions) never mix.
# Must be set before any rclpy.init(); 1..101 stays inside Fast DDS' default port range.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# precision "auto" measures its candidates at a model's first start (engine/autoprobe.py); a
# timing-dependent choice would make tests flaky, so the suite uses the static order unless a
# test asks for the measurement (auto_probe=True; test_engine_int8 tests it with real backends).
os.environ.setdefault("ENET_SEG_AUTO_PROBE", "0")


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip("shared data not present: {}".format(path))
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo; skips the test when absent."""
    return _shared("")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """CamVid in the SegNet layout (train/, trainannot/, val/, valannot/)."""
    return _shared("camvid")


@pytest.fixture(scope="session")
def espnet_reference() -> Path:
    """Published ESPNet checkpoints and two Cityscapes frames."""
    return _shared("espnet_reference")


@pytest.fixture(scope="session")
def small_enet_weights(tmp_path_factory) -> Path:
    """A small random ENet for the ROS node tests, made once per test session.

    Also points ``ENET_SEG_CACHE`` at the session's temp dir so exported graphs never touch the
    user's cache.
    """
    from model_fixtures import make_test_weights

    base = tmp_path_factory.getbasetemp()
    os.environ["ENET_SEG_CACHE"] = str(base / "enet_seg_cache")
    path = base / "ros_weights" / "enet_small.safetensors"
    if not path.is_file():
        make_test_weights(path)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh artefact cache (``ENET_SEG_CACHE``) per test, with no backend forced to fail."""
    from enet_seg_ros.engine.backends.base import FAIL_ENV

    path = tmp_path / "cache"
    monkeypatch.setenv("ENET_SEG_CACHE", str(path))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    return path


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    """A models/ folder holding a copy of the shipped ENet (what the ship-rule tools replace)."""
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(REPO / "models" / "enet_camvid.safetensors", folder / "enet_camvid.safetensors")
    return folder
