"""The expert's view of its route: per-point arrays computed once, and the ego's progress along it."""

from __future__ import annotations

import numpy as np

from adstack.errors import DataError
from planning.expert_config import ExpertConfig


PROGRESS_PENALTY_PER_M = 0.05  # metres of distance per metre of progress, when choosing the ego's route point


def wrap_angle(a):
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def braking_envelope(s: np.ndarray, v_cap: np.ndarray, decel: float) -> np.ndarray:
    """Largest speed at each s from which ``v_cap`` further on is reachable braking at ``decel``.

    v(s)^2 = min over s' >= s of (v_cap(s')^2 + 2 decel (s' - s)): a reversed running minimum, no loop.
    """
    term = v_cap ** 2 + 2.0 * decel * s
    return np.sqrt(np.maximum(np.minimum.accumulate(term[::-1])[::-1] - 2.0 * decel * s, 0.0))


class RouteView:
    """Route arrays (path, yaw, s, speed envelope, junction flags, stop lines) and progress tracking."""

    def __init__(self, hdmap, route, config: ExpertConfig):
        self.config = config
        path = np.asarray(route.path, dtype=np.float64).reshape(-1, 2)
        if len(path) < 2 or not np.all(np.isfinite(path)):
            raise DataError(f"the route needs at least 2 finite points, got {len(path)}", "route")
        self.path = path
        self.s = np.asarray(getattr(route, "s", None) if getattr(route, "s", None) is not None else
                            np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))]), dtype=np.float64)
        yaw = getattr(route, "yaw", None)
        if yaw is None or len(yaw) != len(path):
            d = np.gradient(path, axis=0)
            yaw = np.arctan2(d[:, 1], d[:, 0])
        self.yaw = np.asarray(yaw, dtype=np.float64)
        self.tangent = np.stack([np.cos(self.yaw), np.sin(self.yaw)], -1)
        self.normal = np.stack([-self.tangent[:, 1], self.tangent[:, 0]], -1)
        self.lane_keys = list(getattr(route, "lane_keys", None) or [None] * len(path))
        self.lane_change_indices = np.asarray(getattr(route, "lane_change_indices", []), dtype=np.int64)
        limit = getattr(route, "speed_limit", None)
        limit = np.full(len(path), 13.9) if limit is None else np.asarray(limit, dtype=np.float64)
        self.speed_limit = limit
        lanes = getattr(hdmap, "lanes", {}) if hdmap is not None else {}
        self.is_junction = np.array([bool(lanes[k].is_junction) if k in lanes else False for k in self.lane_keys])
        self.length = float(self.s[-1])
        # For each point inside a junction: the arc length where that junction run starts.
        run_start = np.flatnonzero(self.is_junction & ~np.concatenate([[False], self.is_junction[:-1]]))
        owner = np.searchsorted(run_start, np.arange(len(self.s)), side="right") - 1
        self.junction_entry_s = np.where(self.is_junction & (owner >= 0), self.s[run_start[np.maximum(owner, 0)]]
                                         if len(run_start) else np.nan, np.nan)
        run_end = np.flatnonzero(self.is_junction & ~np.concatenate([self.is_junction[1:], [False]]))
        # Where pedestrians cross: SUMO (netconvert --crossings.guess) puts crossings at the rim of
        # each junction, where the route enters and leaves it; the map has no crosswalks of its own.
        band = config.actors.crossing_band_m
        self.junction_runs = np.column_stack([self.s[run_start], self.s[run_end]]) if len(run_start) else np.zeros((0, 2))
        self.crossing_bands = np.array([(s0 - 1.0, s0 + band) for s0 in self.s[run_start]]
                                       + [(s1 - band, s1 + 1.0) for s1 in self.s[run_end]]).reshape(-1, 2)
        # Where to wait for something at route point i: inside a junction, or on the crossing just
        # past its exit (a stop for it would leave the ego inside the junction), at the junction's
        # entry; elsewhere NaN. Stopping inside a junction blocks cross traffic, which (SUMO's above
        # all) then runs into the standing car.
        self.hold_entry_s = self.junction_entry_s.copy()
        for s0, s1 in self.junction_runs:
            past_exit = (self.s > s1) & (self.s <= s1 + band + 1.0) & ~self.is_junction
            self.hold_entry_s[past_exit] = np.where(np.isnan(self.hold_entry_s[past_exit]), s0,
                                                    self.hold_entry_s[past_exit])

        sp = config.speed
        self.curvature = self._curvature(sp.curvature_window_m)
        v_curve = np.sqrt(sp.max_lateral_accel_mps2 / np.maximum(np.abs(self.curvature), 1e-6))
        v_curve = np.maximum(v_curve, sp.min_curve_speed_mps)
        self.desired_speed = np.minimum(np.minimum(limit * sp.speed_limit_factor, v_curve), sp.max_speed_mps)
        self.speed_envelope = braking_envelope(self.s, self.desired_speed, sp.envelope_decel_mps2)
        self.stop_lines = self._stop_lines(hdmap)  # (s, kind) along the route, from the map
        # On a curve the body sweeps outside the path the rear axle follows: the front corner runs on
        # radius sqrt((R + w/2)^2 + front^2). Widen the corridor by that much.
        radius = 1.0 / np.maximum(np.abs(self.curvature), 1e-3)
        half_w, front = config.ego.width_m / 2, config.ego.rear_axle_to_front_m
        self.body_sweep = np.hypot(radius + half_w, front) - (radius + half_w)
        self.index = None  # index of the route point nearest to the ego, once known

    def _curvature(self, window_m: float) -> np.ndarray:
        """Signed curvature from the heading change over +-window (robust to the 1 m sampling)."""
        n = len(self.s)
        lo = np.searchsorted(self.s, self.s - window_m, side="left")
        hi = np.clip(np.searchsorted(self.s, self.s + window_m, side="right") - 1, 0, n - 1)
        ds = np.maximum(self.s[hi] - self.s[lo], 1e-6)
        return wrap_angle(self.yaw[hi] - self.yaw[lo]) / ds

    def _stop_lines(self, hdmap) -> list[tuple[float, str]]:
        """Stop lines of the route's lanes (traffic lights and stop signs) as route arc lengths."""
        if hdmap is None or not hasattr(hdmap, "stop_lines_for_lane"):
            return []
        out = []
        keys = np.array([hash(k) for k in self.lane_keys])
        for key in dict.fromkeys(self.lane_keys):
            if key is None:
                continue
            for line in hdmap.stop_lines_for_lane(key):
                on_lane = np.flatnonzero(keys == hash(key))
                centre = np.asarray(line.segment, dtype=np.float64).mean(axis=0)
                d = np.hypot(*(self.path[on_lane] - centre).T)
                j = on_lane[int(np.argmin(d))]
                if d.min() < 3.0:
                    out.append((float(self.s[j]), line.kind))
        return sorted(set(out))

    # ------------------------------------------------------------------ progress
    def locate(self, xy: np.ndarray) -> tuple[int, float, float]:
        """Route index nearest to ``xy`` (searched forward from the last one), arc length, lateral offset."""
        cfg = self.config
        # Search forward from the last position (from the start at first: a route may pass its own
        # start again later, and the ego begins at the beginning).
        last = 0 if self.index is None else self.index
        lo = max(last - 10, 0)
        hi = int(np.searchsorted(self.s, self.s[last] + cfg.progress_search_m)) + 1
        d2 = np.sum((self.path[lo:hi] - xy) ** 2, axis=1)
        # Where the route crosses itself, prefer the nearer pass along the route over a later one.
        i = lo + int(np.argmin(d2 + (PROGRESS_PENALTY_PER_M * (self.s[lo:hi] - self.s[last])) ** 2))
        if d2.min() > cfg.lost_distance_m ** 2 and (lo, hi) != (0, len(self.path)):
            d2 = np.sum((self.path - xy) ** 2, axis=1)
            i = int(np.argmin(d2))
        self.index = i
        rel = xy - self.path[i]
        along = float(rel @ self.tangent[i])
        s = float(np.clip(self.s[i] + along, 0.0, self.length))
        return i, s, float(rel @ self.normal[i])
