"""Typed data passed between stages in process (see DESIGN.md, Interfaces).

Every array is numpy; frames are REP-103 right-handed (x forward, y left, z up), SI units, radians.
These types carry no ROS dependency; ``adstack.ros_convert`` maps them to and from messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class ObjectClass(IntEnum):
    """Object classes shared by ground truth, detectors, trackers and planners."""

    UNKNOWN = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    STATIC = 4  # scenery: buildings, poles, traffic-light posts


class LightState(IntEnum):
    UNKNOWN = 0
    RED = 1
    YELLOW = 2
    GREEN = 3
    OFF = 4


@dataclass
class PointCloud:
    """N x 4 float32 (x, y, z, intensity) in ``frame_id``; ``stamp`` in seconds of sensor time."""

    points: np.ndarray
    frame_id: str = "lidar"
    stamp: float = 0.0
    # Optional per-point labels kept for training data: (N,) class and (N,) actor id (-1: none).
    labels: np.ndarray | None = None
    actor_ids: np.ndarray | None = None

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 4)

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass
class EgoState:
    """Ego pose and motion in the map frame; ``v`` is the signed longitudinal speed (m/s)."""

    x: float
    y: float
    yaw: float
    v: float = 0.0
    z: float = 0.0
    yaw_rate: float = 0.0
    accel: float = 0.0
    steer: float = 0.0  # front-wheel angle, rad
    stamp: float = 0.0

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])


def _f32(a, shape) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).reshape(shape))


@dataclass
class Boxes:
    """Oriented 3D boxes as arrays: the type of detections, tracks and ground-truth actors.

    center (N,3) box centre; size (N,3) length, width, height; yaw (N,); label (N,) ObjectClass;
    score (N,); velocity (N,2) vx, vy in the same frame; ids (N,) int (-1 where unknown).
    """

    center: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    size: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    yaw: np.ndarray = field(default_factory=lambda: np.zeros(0))
    label: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    score: np.ndarray | None = None
    velocity: np.ndarray | None = None
    ids: np.ndarray | None = None
    frame_id: str = "map"
    stamp: float = 0.0

    def __post_init__(self):
        n = np.asarray(self.yaw).reshape(-1).shape[0]
        self.center = _f32(self.center, (n, 3))
        self.size = _f32(self.size, (n, 3))
        self.yaw = _f32(self.yaw, (n,))
        self.label = np.asarray(self.label, dtype=np.int32).reshape(n)
        self.score = np.ones(n) if self.score is None else _f32(self.score, (n,))
        self.velocity = np.zeros((n, 2)) if self.velocity is None else _f32(self.velocity, (n, 2))
        self.ids = np.full(n, -1, dtype=np.int64) if self.ids is None else np.asarray(self.ids, dtype=np.int64).reshape(n)

    def __len__(self) -> int:
        return int(self.yaw.shape[0])

    def select(self, mask) -> "Boxes":
        return Boxes(self.center[mask], self.size[mask], self.yaw[mask], self.label[mask],
                     self.score[mask], self.velocity[mask], self.ids[mask], self.frame_id, self.stamp)

    def corners_xy(self) -> np.ndarray:
        """(N,4,2) footprint corners, counter-clockwise from front-left."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        hl, hw = self.size[:, 0] / 2, self.size[:, 1] / 2
        local = np.stack([np.stack([hl, hw], -1), np.stack([-hl, hw], -1),
                          np.stack([-hl, -hw], -1), np.stack([hl, -hw], -1)], 1)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)  # (N,2,2)
        return np.einsum("nij,nkj->nki", rot, local) + self.center[:, None, :2]

    @staticmethod
    def concat(parts: list["Boxes"]) -> "Boxes":
        if not parts:
            return Boxes()
        return Boxes(np.concatenate([p.center for p in parts]), np.concatenate([p.size for p in parts]),
                     np.concatenate([p.yaw for p in parts]), np.concatenate([p.label for p in parts]),
                     np.concatenate([p.score for p in parts]), np.concatenate([p.velocity for p in parts]),
                     np.concatenate([p.ids for p in parts]), parts[0].frame_id, parts[0].stamp)


# Detections and tracks are boxes; the aliases name the role in signatures.
Detections = Boxes
Tracks = Boxes


@dataclass
class Trajectory:
    """K x 5 array [x, y, yaw, v, t] in ``frame_id``; t relative to ``stamp`` (s)."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    frame_id: str = "map"
    stamp: float = 0.0

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 5)

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass
class Command:
    """Actuation request: front-wheel steering angle (rad, left positive) and acceleration (m/s^2)."""

    steer: float = 0.0
    accel: float = 0.0
    stamp: float = 0.0
    emergency: bool = False


@dataclass
class TrafficLight:
    """One signal: id, state, and the lanes it governs as (road_id, lane_id) pairs."""

    id: str
    state: LightState
    position: np.ndarray  # (2,) map frame
    lanes: tuple = ()
