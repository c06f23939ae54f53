"""Lidar perception as one step: cloud (sensor frame) + ego pose -> detections in the map frame,
then (optionally) tracked. Shared by the lidar node and the in-process closed loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from adstack.types import Boxes, EgoState, PointCloud

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "models" / "detector"


def make_detector(model: str = "default"):
    """'classical', a model directory, or 'default' (the shipped learned model, else classical)."""
    if model == "classical" or (model == "default" and not (SHIPPED_MODEL_DIR / "model.pt").is_file()):
        from perception.classical import ClassicalDetector, load_config
        return ClassicalDetector(load_config())
    from perception.detector.model import LidarDetector
    return LidarDetector.from_dir(None if model == "default" else model)


def sensor_to_map(boxes: Boxes, ego: EgoState, mount_xyz_yaw: tuple[float, float, float, float]) -> Boxes:
    """Boxes in the sensor frame -> map frame, for a sensor mounted at (x, y, z, yaw) on the ego."""
    mx, my, mz, myaw = mount_xyz_yaw
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    sx, sy = ego.x + c * mx - s * my, ego.y + s * mx + c * my
    yaw = ego.yaw + myaw
    cy, sy_ = math.cos(yaw), math.sin(yaw)
    rot = np.array([[cy, -sy_], [sy_, cy]])
    center = boxes.center.copy()
    center[:, :2] = boxes.center[:, :2] @ rot.T + (sx, sy)
    center[:, 2] += ego.z + mz
    velocity = boxes.velocity @ rot.T
    out_yaw = np.arctan2(np.sin(boxes.yaw + yaw), np.cos(boxes.yaw + yaw))
    return Boxes(center, boxes.size, out_yaw, boxes.label, boxes.score, velocity, boxes.ids, "map", boxes.stamp)


class LidarPerception:
    """Detector + tracker on the simulated or real lidar. ``step(cloud, ego) -> tracks (map frame)``."""

    def __init__(self, detector, mount_xyz_yaw=(0.0, 0.0, 1.8, 0.0), track: bool = True):
        from fusion.tracker import MultiObjectTracker, TrackerConfig
        self.detector = detector
        self.mount = tuple(float(v) for v in mount_xyz_yaw)
        self.tracker = MultiObjectTracker(TrackerConfig.load()) if track else None
        self.last_detections = Boxes()

    @classmethod
    def default(cls, model: str = "default") -> "LidarPerception":
        from sim.lidar import load_lidar_config
        cfg = load_lidar_config()
        return cls(make_detector(model), (cfg.mount_x_m, cfg.mount_y_m, cfg.mount_z_m, cfg.mount_yaw_rad))

    def detect(self, cloud: PointCloud, ego: EgoState) -> Boxes:
        boxes = self.detector.detect(cloud.points)
        boxes = sensor_to_map(boxes, ego, self.mount)
        boxes.stamp = cloud.stamp
        self.last_detections = boxes
        return boxes

    def step(self, state) -> Boxes:
        """From a sim WorldState with a fresh lidar frame: placed in the map with the ego pose at the
        frame's stamp (``lidar_ego``; the frame may arrive a tick after its sweep ended)."""
        cloud = state.lidar
        ego = getattr(state, "lidar_ego", None) or state.ego
        boxes = self.detect(cloud, ego)
        if self.tracker is None:
            return boxes
        return self.tracker.step(boxes, cloud.stamp)
