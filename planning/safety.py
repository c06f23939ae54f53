"""Safety layer: the planner proposes, this disposes.

Checks, in order, each planning cycle:
1. inputs: stale or missing ego state / objects, or a trajectory with NaN/Inf or too few points
   -> minimal-risk manoeuvre: a controlled stop along the current path at ``stop_decel_mps2``;
2. collision: the ego's footprint (a row of discs) along the proposed trajectory against every object's
   footprint (discs) moved at constant velocity to the same time; the first conflict within the
   horizon cuts the trajectory to stop ``stop_margin_m`` before it, braking at up to
   ``emergency_decel_mps2`` (an emergency stop when the comfortable deceleration is not enough).
   Objects now behind the ego's centre that would only meet the rear half of the footprint do not
   count: a stop cannot avoid them. A walking pedestrian is checked twice: moving on at its
   velocity, and standing where it is (walkers stop or turn at once).
Everything is batched in numpy over trajectory points x objects x discs (8 per body: within 0.05 m
of a car's sides, so a plan the expert threads closely past an actor is not refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adstack.config import load_params
from adstack.types import Boxes, EgoState, ObjectClass, Trajectory

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "safety.param.yaml"


@dataclass
class SafetyConfig:
    ego_length_m: float = 4.9
    ego_width_m: float = 2.0
    ego_center_offset_m: float = 1.35  # trajectory points are the rear axle; box centre this far ahead
    discs_per_vehicle: int = 8
    lateral_margin_m: float = 0.1
    stop_margin_m: float = 1.0
    check_horizon_s: float = 4.0
    stop_decel_mps2: float = 3.0  # controlled stop (minimal-risk manoeuvre)
    emergency_decel_mps2: float = 8.0
    min_trajectory_points: int = 2
    stale_after_s: float = 0.5  # ego state or objects older than this -> controlled stop

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "SafetyConfig":
        return load_params(cls, path)


@dataclass
class SafetyStatus:
    ok: bool = True
    action: str = "pass"  # pass | stop_for_obstacle | emergency_stop | minimal_risk_stop
    reasons: list = field(default_factory=list)
    conflict_object_id: int = -1
    conflict_time_s: float = math.nan


def _discs(center_xy: np.ndarray, yaw: np.ndarray, length: np.ndarray, width: np.ndarray, n: int):
    """(..., n, 2) disc centres and (...,) radius covering boxes of the given size."""
    frac = (np.arange(n) + 0.5) / n - 0.5  # along the body, -0.5..0.5
    along = length[..., None] * frac  # (..., n)
    c, s = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    centres = np.stack([center_xy[..., 0:1] + along * c, center_xy[..., 1:2] + along * s], axis=-1)
    radius = np.hypot(length / (2 * n), width / 2)
    return centres, radius


def stop_profile(traj: np.ndarray, v0: float, stop_s: float, decel: float) -> np.ndarray:
    """Trajectory (K,5) with speeds capped so the vehicle stops at arc length ``stop_s``."""
    out = traj.copy()
    if len(out) == 0:
        return out
    seg = np.hypot(np.diff(out[:, 0]), np.diff(out[:, 1]))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    remaining = np.maximum(stop_s - s, 0.0)
    cap = np.sqrt(2.0 * decel * remaining)
    out[:, 3] = np.minimum(out[:, 3], cap)
    out[s >= stop_s, 3] = 0.0
    # Re-time the points for the new speeds (t is what a controller and collision checks use).
    v_mid = np.maximum((out[1:, 3] + out[:-1, 3]) / 2, 0.05)
    out[1:, 4] = out[0, 4] + np.cumsum(seg / v_mid)
    return out


class SafetyLayer:
    def __init__(self, config: SafetyConfig | None = None):
        self.config = config or SafetyConfig()

    def minimal_risk(self, ego: EgoState, last: Trajectory | None, t: float, reason: str) -> tuple[Trajectory, SafetyStatus]:
        """Controlled stop along the last good path (or straight ahead) at the comfortable deceleration."""
        c = self.config
        v = max(ego.v, 0.0)
        stop_s = v * v / (2 * c.stop_decel_mps2)
        if last is not None and len(last) >= 2 and np.all(np.isfinite(last.points)):
            pts = last.points.copy()
        else:
            d = np.linspace(0, max(stop_s, 1.0) + 1.0, 20)
            pts = np.column_stack([ego.x + d * math.cos(ego.yaw), ego.y + d * math.sin(ego.yaw),
                                   np.full_like(d, ego.yaw), np.full_like(d, v), np.zeros_like(d)])
        pts[:, 3] = v
        traj = Trajectory(stop_profile(pts, v, stop_s, c.stop_decel_mps2), "map", t)
        return traj, SafetyStatus(False, "minimal_risk_stop", [reason])

    def _within_reach(self, objects: Boxes, path: np.ndarray, ego_extent: float, horizon_s: float) -> Boxes:
        """The objects whose footprint, moving at its velocity for ``horizon_s``, can reach the box
        around ``path`` (K, >=2) grown by ``ego_extent`` and the lateral margin."""
        lo = path[:, :2].min(axis=0)
        hi = path[:, :2].max(axis=0)
        # a disc reaches at most half the length plus its radius from the object's centre
        n = max(1, self.config.discs_per_vehicle)
        obj_extent = 0.5 * objects.size[:, 0] + np.hypot(objects.size[:, 0] / (2 * n), objects.size[:, 1] / 2)
        travel = np.hypot(objects.velocity[:, 0], objects.velocity[:, 1]) * max(horizon_s, 0.0)
        grow = (ego_extent + obj_extent + travel + self.config.lateral_margin_m)[:, None]
        xy = objects.center[:, :2]
        near = np.all((xy >= lo - grow) & (xy <= hi + grow), axis=1)
        return objects if near.all() else objects.select(near)

    def check(self, ego: EgoState, proposal: Trajectory | None, objects: Boxes | None, t: float,
              stale_inputs: list[str] | None = None, last_good: Trajectory | None = None) -> tuple[Trajectory, SafetyStatus]:
        c = self.config
        if stale_inputs:
            return self.minimal_risk(ego, last_good, t, "stale inputs: " + ", ".join(stale_inputs))
        if proposal is None or len(proposal) < c.min_trajectory_points:
            return self.minimal_risk(ego, last_good, t, "no trajectory from the planner")
        if not np.all(np.isfinite(proposal.points)):
            return self.minimal_risk(ego, last_good, t, "trajectory contains NaN/Inf")
        pts = proposal.points
        if objects is None or len(objects) == 0:
            return proposal, SafetyStatus()
        horizon = pts[:, 4] <= c.check_horizon_s
        horizon[0] = True
        p = pts[horizon]
        centre = p[:, :2] + c.ego_center_offset_m * np.column_stack([np.cos(p[:, 2]), np.sin(p[:, 2])])
        ego_discs, ego_r = _discs(centre, p[:, 2], np.full(len(p), c.ego_length_m), np.full(len(p), c.ego_width_m),
                                  c.discs_per_vehicle)  # (K,n,2), (K,)
        # Broad phase: only objects that can come within reach of the checked path inside the horizon
        # (the path's bounding box grown by the ego's and the object's extents and the distance the
        # object covers by the last checked time). Most of a town's actors are far away; the
        # disc test below is K x M x n x n.
        ego_extent = abs(c.ego_center_offset_m) + float(ego_r[0]) + 0.5 * c.ego_length_m  # path point -> farthest disc edge
        objects = self._within_reach(objects, p, ego_extent, float(p[-1, 4]))
        if len(objects) == 0:
            return proposal, SafetyStatus()
        # A walker can stop or turn at once (SUMO's stop on a crossing): besides its constant-velocity
        # future, each moving pedestrian is also checked standing where it is now.
        walking = (objects.label == int(ObjectClass.PEDESTRIAN)) & (np.hypot(*objects.velocity.T) > 0.1)
        if walking.any():
            standing = objects.select(walking)
            standing = Boxes(standing.center, standing.size, standing.yaw, standing.label, standing.score,
                             np.zeros_like(standing.velocity), standing.ids, standing.frame_id, standing.stamp)
            objects = Boxes.concat([objects, standing])
        # Objects moved at constant velocity to each trajectory time: (K,M,2)
        obj_xy = objects.center[None, :, :2] + objects.velocity[None, :, :] * p[:, 4, None, None]
        n_obj = max(1, c.discs_per_vehicle)
        obj_discs, obj_r = _discs(obj_xy, np.broadcast_to(objects.yaw, obj_xy.shape[:2]),
                                  np.broadcast_to(objects.size[:, 0], obj_xy.shape[:2]),
                                  np.broadcast_to(objects.size[:, 1], obj_xy.shape[:2]), n_obj)  # (K,M,n,2)
        delta = ego_discs[:, None, :, None, :] - obj_discs[:, :, None, :, :]  # (K,M,n,n,2)
        d2 = delta[..., 0] ** 2 + delta[..., 1] ** 2
        limit = ego_r[:, None, None, None] + obj_r[:, :, None, None] + c.lateral_margin_m
        touch = d2 < limit * limit  # (K,M,n,n)
        # Stopping avoids what the car drives into, not what comes at it from behind: an object now
        # behind the ego's centre (a follower, a car standing behind after a collision) that would
        # meet only the rear half of the footprint is not braked for (braking would hold the ego
        # there for good). Whatever meets the front half, or starts ahead, is.
        # "meets the rear": every touching object disc lies behind the ego's centre at that pose
        pose_heading = np.column_stack([np.cos(p[:, 2]), np.sin(p[:, 2])])  # (K,2)
        ahead = np.einsum("kmnd,kd->kmn", obj_discs - centre[:, None, None, :], pose_heading) > 0.0  # (K,M,n)
        heading = np.array([math.cos(ego.yaw), math.sin(ego.yaw)])
        ego_centre = np.array([ego.x, ego.y]) + c.ego_center_offset_m * heading
        behind_now = (objects.center[:, :2] - ego_centre) @ heading < 0.0  # (M,)
        hit_ahead = np.any(touch & ahead[:, :, None, :], axis=(2, 3))
        hit = hit_ahead | (np.any(touch, axis=(2, 3)) & ~behind_now)
        if not hit.any():
            return proposal, SafetyStatus()
        k, m = np.argwhere(hit)[0]
        seg = np.hypot(np.diff(pts[:, 0]), np.diff(pts[:, 1]))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        stop_s = max(s[k] - c.stop_margin_m, 0.0)
        v = max(ego.v, 0.0)
        needed = v * v / (2 * max(stop_s, 1e-3))
        decel = min(max(needed, c.stop_decel_mps2), c.emergency_decel_mps2)
        action = "emergency_stop" if needed > c.stop_decel_mps2 else "stop_for_obstacle"
        traj = Trajectory(stop_profile(pts, v, stop_s, decel), proposal.frame_id, proposal.stamp)
        status = SafetyStatus(False, action, [f"conflict with object {int(objects.ids[m])} at {p[k, 4]:.1f} s"],
                              int(objects.ids[m]), float(p[k, 4]))
        return traj, status
