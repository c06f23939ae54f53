"""Autoware interface definitions (.msg) used on adstack's ROS 2 boundary and in its logs.

The ``.msg`` files under ``<package>/msg/`` reproduce Autoware's definitions (see README.md here)
so that Autoware tools read what adstack writes. They serve two consumers:

* ``scripts/build_msgs.sh`` generates rclpy message classes from them (a real ROS 2 interface
  package per folder), for live topics;
* :func:`typestore` registers them in a rosbags typestore, for writing and reading MCAP logs
  without any ROS installation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

MSG_ROOT = Path(__file__).resolve().parent
PACKAGES = ("autoware_perception_msgs", "autoware_planning_msgs", "autoware_control_msgs")


def msg_files(package: str | None = None) -> list[Path]:
    """Sorted ``.msg`` files of one package, or of all of them."""
    packages = PACKAGES if package is None else (package,)
    return [p for pkg in packages for p in sorted((MSG_ROOT / pkg / "msg").glob("*.msg"))]


def msg_definitions() -> dict[str, str]:
    """``{"pkg/msg/Name": msg text}`` for every bundled definition."""
    return {f"{p.parent.parent.name}/msg/{p.stem}": p.read_text() for p in msg_files()}


@lru_cache(maxsize=None)
def typestore(distro: str = "ROS2_JAZZY"):
    """A rosbags typestore for ``distro`` with the Autoware definitions registered.

    Cached: registering parses every definition (a few ms), and typestores are read-only after it.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(getattr(Stores, distro))
    definitions = msg_definitions()
    if len(definitions) < len(PACKAGES):
        # An install that left out the package data (setup.py package_data must list the .msg files).
        raise FileNotFoundError(f"Autoware .msg definitions missing under {MSG_ROOT}")
    types = {}
    for name, text in definitions.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store
