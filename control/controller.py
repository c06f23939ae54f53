"""The controller core: trajectory in, clamped steering and acceleration out (no ROS, no I/O).

One step:
1. check the trajectory (empty, not finite, stale, or already driven past -> controlled stop);
2. lateral: pure pursuit from the rear axle, or Stanley from the front axle, on the trajectory path;
3. longitudinal: PI on speed with the trajectory's own acceleration as feed-forward, brake hold at rest;
4. clamp to the vehicle: steering angle and rate, acceleration, deceleration and jerk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adstack.types import Command, EgoState, Trajectory
from control.config import ControllerConfig
from control.geometry import arc_length, point_at, project, wrap_angle

# Points closer than this along the path are merged (a stopped plan repeats its position).
MIN_POINT_SPACING_M = 1e-3


@dataclass
class ControlDebug:
    """What the last step saw and decided; for logs, plots and tests."""

    status: str = "init"  # ok | empty_trajectory | invalid_trajectory | stale_trajectory | trajectory_exhausted
    cross_track_m: float = 0.0  # ego pose point, left of the path positive
    heading_error_rad: float = 0.0  # ego yaw minus path yaw
    target_speed_mps: float = 0.0
    steer_unclamped_rad: float = 0.0
    accel_unclamped_mps2: float = 0.0
    integral_mps2: float = 0.0


class Controller:
    """Trajectory tracker. ``step(ego, trajectory, t) -> Command``; keep one instance per vehicle."""

    def __init__(self, config: ControllerConfig | None = None):
        self.config = config or ControllerConfig()
        self.reset()

    def reset(self) -> None:
        self._last_t: float | None = None
        self._last_steer: float | None = None
        self._last_accel: float | None = None
        self._integral = 0.0
        self.debug = ControlDebug()

    # ------------------------------------------------------------------ step
    def step(self, ego: EgoState, trajectory: Trajectory | None, t: float) -> Command:
        cfg = self.config
        if self._last_t is None or t < self._last_t:
            if self._last_t is not None:  # the clock went back (a new run): forget the past
                self.reset()
            dt = cfg.nominal_dt_s
            self._last_steer = float(np.clip(ego.steer, -cfg.limits.max_steer_rad, cfg.limits.max_steer_rad))
            self._last_accel = float(np.clip(ego.accel, -cfg.limits.max_decel_mps2, cfg.limits.max_accel_mps2))
        else:
            dt = t - self._last_t
        self._last_t = t
        debug = ControlDebug()

        path, status = self._usable_path(trajectory, t)
        ego_xy = np.array([ego.x, ego.y])
        if path is not None:
            xy, s, v = path
            proj = project(xy, s, ego_xy)
            debug.cross_track_m = proj.lateral_m
            debug.heading_error_rad = float(wrap_angle(ego.yaw - proj.path_yaw))
            if status == "ok" and proj.s > s[-1] + 0.5:
                status = "trajectory_exhausted"
            steer = self._lateral(ego, xy, s)
        else:
            steer = self._last_steer  # nothing to follow: hold the wheel
        if status == "ok":
            accel = self._longitudinal(ego, xy, s, v, proj.s, dt, debug)
        else:
            accel = self._controlled_stop(ego)
            self._integral = 0.0
        debug.status = status
        debug.steer_unclamped_rad = float(steer)
        debug.accel_unclamped_mps2 = float(accel)
        emergency = status == "ok" and accel < -cfg.emergency_decel_mps2
        steer, accel = self._clamp(steer, accel, dt, emergency)
        debug.integral_mps2 = self._integral
        self.debug = debug
        return Command(steer=steer, accel=accel, stamp=t, emergency=emergency)

    # ------------------------------------------------------------- the parts
    def _usable_path(self, trajectory: Trajectory | None, t: float):
        if trajectory is None or len(trajectory) == 0:
            return None, "empty_trajectory"
        pts = trajectory.points
        if not np.all(np.isfinite(pts[:, :4])):
            return None, "invalid_trajectory"
        xy = pts[:, :2]
        step = np.hypot(*np.diff(xy, axis=0).T) if len(xy) > 1 else np.zeros(0)
        keep = np.concatenate([[True], step > MIN_POINT_SPACING_M])
        xy, v = xy[keep], pts[keep, 3]
        if len(xy) < 2:  # a single point: nothing to steer along; stop on it
            return None, "empty_trajectory" if v.size == 0 else "trajectory_exhausted"
        status = "ok" if t - trajectory.stamp <= self.config.stale_timeout_s else "stale_trajectory"
        return (xy, arc_length(xy), v), status

    def _lateral(self, ego: EgoState, xy: np.ndarray, s: np.ndarray) -> float:
        cfg = self.config
        lat = cfg.lateral
        heading = np.array([math.cos(ego.yaw), math.sin(ego.yaw)])
        wheelbase = cfg.limits.wheelbase_m
        if lat.method == "pure_pursuit":
            rear = np.array([ego.x, ego.y]) - cfg.rear_axle_offset_m * heading
            lookahead = float(np.clip(lat.lookahead_min_m + lat.lookahead_time_s * abs(ego.v),
                                      lat.lookahead_min_m, lat.lookahead_max_m))
            rear_proj = project(xy, s, rear)
            goal = point_at(xy, s, rear_proj.s + lookahead)
            d = goal - rear
            # Angle of the goal seen from the rear axle, in the vehicle frame.
            alpha = math.atan2(heading[0] * d[1] - heading[1] * d[0], heading @ d)
            dist = max(float(np.hypot(*d)), 1e-3)
            # A goal behind the car (|alpha| > 90 deg) would give a shrinking steer as it gets more
            # behind; turn towards it as hard as a goal abeam instead.
            lateral_pull = math.sin(alpha) if abs(alpha) <= math.pi / 2 else math.copysign(1.0, alpha)
            return math.atan2(2.0 * wheelbase * lateral_pull, dist)
        # Stanley, from the front axle.
        front = np.array([ego.x, ego.y]) + (wheelbase - cfg.rear_axle_offset_m) * heading
        proj = project(xy, s, front)
        # With the front axle on a curve its wheels point along the path, so the heading term alone
        # supplies the steady-state steering angle; a separate curvature feed-forward would count it twice.
        heading_error = float(wrap_angle(proj.path_yaw - ego.yaw))
        cross = math.atan2(lat.stanley_gain * proj.lateral_m, abs(ego.v) + lat.stanley_softening_mps)
        return lat.stanley_heading_gain * heading_error - cross

    def _longitudinal(self, ego, xy, s, v, s_ego, dt, debug: ControlDebug) -> float:
        lon = self.config.longitudinal
        # At least a little ahead: a plan that starts from standstill reads 0 m/s right at the car.
        # Behind the trajectory's first point (e.g. a plan that starts at the route start, ahead of the
        # rear axle), read speeds from its start.
        s_preview = max(s_ego, 0.0) + max(lon.speed_preview_s * max(ego.v, 0.0), lon.speed_preview_min_m)
        v_target = float(np.interp(s_preview, s, v))
        debug.target_speed_mps = v_target
        if v_target < lon.stop_speed_mps and abs(ego.v) < lon.stop_speed_mps:
            self._integral = 0.0  # at rest with a stop target: hold the brake, no creeping
            return -lon.stop_hold_decel_mps2
        error = v_target - ego.v
        feedforward = 0.0
        if lon.feedforward:
            # The plan's own acceleration where the car is now (plus the actuator lag).
            feedforward = plan_acceleration(s, v, max(s_ego, 0.0) + lon.speed_preview_s * max(ego.v, 0.0))
        unsaturated = feedforward + lon.kp_per_s * error + self._integral
        if abs(ego.v) < lon.stop_speed_mps and unsaturated < 0.0:
            return -lon.stop_hold_decel_mps2  # at rest and the plan still slows down: hold, do not wind up
        lim = self.config.limits
        if abs(error) < lon.integral_zone_mps and -lim.max_decel_mps2 < unsaturated < lim.max_accel_mps2:
            self._integral = float(np.clip(self._integral + lon.ki_per_s2 * error * dt,
                                           -lon.integral_limit_mps2, lon.integral_limit_mps2))
        elif abs(error) >= lon.integral_zone_mps:
            self._integral = 0.0
        return feedforward + lon.kp_per_s * error + self._integral

    def _controlled_stop(self, ego: EgoState) -> float:
        if abs(ego.v) < self.config.longitudinal.stop_speed_mps:
            return -self.config.longitudinal.stop_hold_decel_mps2
        return -self.config.safe_stop_decel_mps2 if ego.v > 0 else self.config.safe_stop_decel_mps2

    def _clamp(self, steer: float, accel: float, dt: float, emergency: bool = False) -> tuple[float, float]:
        """Rate limits around the previous command, then the absolute limits (which always win)."""
        lim = self.config.limits
        max_dsteer = lim.max_steer_rate_rad_s * dt
        steer = float(np.clip(steer, self._last_steer - max_dsteer, self._last_steer + max_dsteer))
        steer = float(np.clip(steer, -lim.max_steer_rad, lim.max_steer_rad))
        max_daccel = lim.max_jerk_mps3 * dt
        if emergency:  # the brakes may come on faster; releasing them still goes at the normal rate
            accel = float(np.clip(accel, self._last_accel - lim.emergency_jerk_mps3 * dt, self._last_accel + max_daccel))
        else:
            accel = float(np.clip(accel, self._last_accel - max_daccel, self._last_accel + max_daccel))
        accel = float(np.clip(accel, -lim.max_decel_mps2, lim.max_accel_mps2))
        self._last_steer, self._last_accel = steer, accel
        return steer, accel


def plan_acceleration(s: np.ndarray, v: np.ndarray, s_query: float) -> float:
    """Acceleration the plan carries at arc length ``s_query``: (v1^2 - v0^2) / (2 ds) over the segment.

    Exact for constant acceleration between two points, so a hard stop planned within one point
    spacing (8 m/s to 0 over 1 m: -32 m/s^2) comes through whole; a central-difference gradient
    read a point further on would see it smeared or not at all.
    """
    i = int(np.clip(np.searchsorted(s, s_query, side="right") - 1, 0, len(s) - 2))
    ds = max(s[i + 1] - s[i], 1e-6)
    return float((v[i + 1] ** 2 - v[i] ** 2) / (2.0 * ds))
