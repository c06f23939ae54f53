"""The one boundary between CARLA's left-handed frame and REP-103 right-handed coordinates.

OpenDRIVE itself is right-handed (x east, y north, heading counter-clockwise). CARLA's
``carla.Map`` flips the y axis when it loads a .xodr (y_carla = -y_odr) and reports yaw in degrees,
clockwise-positive as seen from above. We flip it back, so our map frame equals the OpenDRIVE frame:

    x_ros = x_carla,  y_ros = -y_carla,  z_ros = z_carla,  yaw_ros = -radians(yaw_carla_deg)

Every other hdmap module, and every other stage, sees right-handed coordinates only.
"""

from __future__ import annotations

import math

import numpy as np


def carla_to_ros_xy(xy) -> np.ndarray:
    """(N,2) or (2,) CARLA x, y -> right-handed x, y (float64, same shape)."""
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., 1] *= -1.0
    return out


def ros_to_carla_xy(xy) -> np.ndarray:
    """Inverse of ``carla_to_ros_xy`` (the flip is its own inverse)."""
    return carla_to_ros_xy(xy)


def carla_to_ros_yaw(yaw_deg) -> np.ndarray | float:
    """CARLA yaw in degrees (scalar or array) -> right-handed yaw in radians wrapped to [-pi, pi)."""
    yaw = -np.radians(np.asarray(yaw_deg, dtype=np.float64))
    wrapped = wrap_angle(yaw)
    return float(wrapped) if np.ndim(wrapped) == 0 else wrapped


def ros_to_carla_yaw(yaw_rad) -> np.ndarray | float:
    """Right-handed yaw in radians -> CARLA yaw in degrees."""
    deg = -np.degrees(np.asarray(yaw_rad, dtype=np.float64))
    return float(deg) if np.ndim(deg) == 0 else deg


def wrap_angle(angle):
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(angle, dtype=np.float64) + math.pi) % (2.0 * math.pi) - math.pi


def carla_location_to_ros(loc) -> tuple[float, float, float]:
    """A ``carla.Location`` (or anything with x, y, z) -> right-handed (x, y, z)."""
    return float(loc.x), -float(loc.y), float(loc.z)


def ros_to_carla_location(x: float, y: float, z: float = 0.0):
    """Right-handed (x, y, z) -> ``carla.Location``."""
    import carla  # imported here so the pure-numpy helpers above need no carla

    return carla.Location(x=float(x), y=-float(y), z=float(z))


def carla_transform_to_ros(transform) -> tuple[float, float, float, float]:
    """A ``carla.Transform`` -> right-handed (x, y, z, yaw_rad)."""
    x, y, z = carla_location_to_ros(transform.location)
    return x, y, z, carla_to_ros_yaw(transform.rotation.yaw)
