"""Multi-object tracker: constant-velocity Kalman filters, gated Hungarian association per class.

State per track: [x, y, vx, vy] in the map frame; box size, z and yaw are smoothed separately (yaw
follows the velocity once the object moves). Association cost is the centre distance, gated per
class, with classes never mixed. A track is confirmed after ``min_hits`` updates and deleted after
``max_missed_s`` without one. All per-track arithmetic is batched in numpy: no loop per track.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from adstack.config import load_params
from adstack.types import Boxes

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "tracker.param.yaml"


@dataclass
class TrackerConfig:
    gate_vehicle_m: float = 4.0  # max centre distance for a detection to update a vehicle track
    gate_pedestrian_m: float = 2.0
    gate_other_m: float = 3.0
    min_hits: int = 2  # updates before a track is reported
    max_missed_s: float = 0.5  # a track without a detection this long is deleted
    accel_noise_mps2: float = 3.0  # process noise (white acceleration)
    position_noise_m: float = 0.3  # measurement noise
    size_smoothing: float = 0.3  # exponential smoothing weight of a new size measurement
    min_speed_for_yaw_mps: float = 1.0  # below this, yaw comes from the detection, not the velocity

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "TrackerConfig":
        return load_params(cls, path)


class MultiObjectTracker:
    """``step(detections (map frame), t) -> Tracks`` with ids, velocities and covariances."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.reset()

    def reset(self) -> None:
        self.x = np.zeros((0, 4))
        self.P = np.zeros((0, 4, 4))
        self.z = np.zeros(0)
        self.size = np.zeros((0, 3))
        self.yaw = np.zeros(0)
        self.label = np.zeros(0, dtype=np.int32)
        self.score = np.zeros(0)
        self.ids = np.zeros(0, dtype=np.int64)
        self.hits = np.zeros(0, dtype=np.int64)
        self.last_seen = np.zeros(0)
        self.t: float | None = None
        self.next_id = 1

    def _gate(self, labels: np.ndarray) -> np.ndarray:
        c = self.config
        return np.where(labels == 1, c.gate_vehicle_m, np.where(labels == 2, c.gate_pedestrian_m, c.gate_other_m))

    def _predict(self, dt: float) -> None:
        if dt <= 0 or not len(self.x):
            return
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        q = self.config.accel_noise_mps2 ** 2
        G = np.array([[0.5 * dt * dt, 0], [0, 0.5 * dt * dt], [dt, 0], [0, dt]])
        Q = q * G @ G.T
        self.x = self.x @ F.T
        self.P = F @ self.P @ F.T + Q

    def step(self, detections: Boxes, t: float) -> Boxes:
        dt = 0.0 if self.t is None else float(t) - self.t
        if dt < 0:
            raise ValueError(f"tracker time went backwards: {t} < {self.t}")
        self.t = float(t)
        self._predict(dt)
        det = detections
        n_trk, n_det = len(self.x), len(det)
        matched_t = np.zeros(0, dtype=int)
        matched_d = np.zeros(0, dtype=int)
        if n_trk and n_det:
            dist = np.linalg.norm(self.x[:, None, :2] - det.center[None, :, :2], axis=2)
            allowed = (self.label[:, None] == det.label[None, :]) & (dist <= self._gate(self.label)[:, None])
            cost = np.where(allowed, dist, 1e6)
            rows, cols = linear_sum_assignment(cost)
            ok = allowed[rows, cols]
            matched_t, matched_d = rows[ok], cols[ok]
        self._update(matched_t, det.select(matched_d) if len(matched_d) else None, t)
        unmatched = np.setdiff1d(np.arange(n_det), matched_d)
        if len(unmatched):
            self._spawn(det.select(unmatched), t)
        keep = (self.t - self.last_seen) <= self.config.max_missed_s
        self._keep(keep)
        return self.tracks()

    def _update(self, idx: np.ndarray, det: Boxes | None, t: float) -> None:
        if det is None or not len(idx):
            return
        R = np.eye(2) * self.config.position_noise_m ** 2
        P = self.P[idx]
        S = P[:, :2, :2] + R
        K = P[:, :, :2] @ np.linalg.inv(S)  # (m,4,2)
        innov = det.center[:, :2] - self.x[idx, :2]
        self.x[idx] = self.x[idx] + np.einsum("mij,mj->mi", K, innov)
        H = np.zeros((2, 4))
        H[0, 0] = H[1, 1] = 1
        self.P[idx] = (np.eye(4) - K @ H) @ P
        a = self.config.size_smoothing
        self.size[idx] = (1 - a) * self.size[idx] + a * det.size
        self.z[idx] = det.center[:, 2]
        speed = np.hypot(self.x[idx, 2], self.x[idx, 3])
        vel_yaw = np.arctan2(self.x[idx, 3], self.x[idx, 2])
        # A detector's yaw is ambiguous by pi for symmetric boxes; a moving object's heading is its velocity.
        self.yaw[idx] = np.where(speed >= self.config.min_speed_for_yaw_mps, vel_yaw, det.yaw)
        self.score[idx] = det.score
        self.hits[idx] += 1
        self.last_seen[idx] = t

    def _spawn(self, det: Boxes, t: float) -> None:
        n = len(det)
        x = np.zeros((n, 4))
        x[:, :2] = det.center[:, :2]
        x[:, 2:] = det.velocity if det.velocity is not None else 0.0
        P = np.tile(np.diag([self.config.position_noise_m ** 2] * 2 + [25.0, 25.0]), (n, 1, 1))
        self.x = np.concatenate([self.x, x])
        self.P = np.concatenate([self.P, P])
        self.z = np.concatenate([self.z, det.center[:, 2]])
        self.size = np.concatenate([self.size, det.size])
        self.yaw = np.concatenate([self.yaw, det.yaw])
        self.label = np.concatenate([self.label, det.label])
        self.score = np.concatenate([self.score, det.score])
        self.ids = np.concatenate([self.ids, np.arange(self.next_id, self.next_id + n)])
        self.next_id += n
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(n, t)])

    def _keep(self, mask: np.ndarray) -> None:
        for name in ("x", "P", "z", "size", "yaw", "label", "score", "ids", "hits", "last_seen"):
            setattr(self, name, getattr(self, name)[mask])

    def tracks(self) -> Boxes:
        ok = self.hits >= self.config.min_hits
        center = np.column_stack([self.x[ok, :2], self.z[ok]])
        return Boxes(center, self.size[ok], self.yaw[ok], self.label[ok], self.score[ok], self.x[ok, 2:],
                     self.ids[ok], "map", self.t or 0.0)

    def covariances(self) -> np.ndarray:
        """(N,4,4) state covariances of the reported tracks, in the order of ``tracks()``."""
        return self.P[self.hits >= self.config.min_hits]
