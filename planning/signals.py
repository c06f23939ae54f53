"""Traffic lights and stop signs as stop lines on the route."""

from __future__ import annotations

import math

import numpy as np

from adstack.types import LightState, TrafficLight
from planning.expert_config import ExpertConfig
from planning.route_view import RouteView, wrap_angle

# SUMO movement letters (sim.traffic.StopLineSignal.movements) for the route's turn at a light.
_MOVEMENT_KEYS = {"s": ("s",), "l": ("l", "L", "t"), "r": ("r", "R")}


def turn_direction(route: RouteView, s: float, distance_m: float = 25.0, threshold_rad: float = 0.5) -> str:
    """'l', 'r' or 's': how the route turns over ``distance_m`` after arc length ``s``."""
    i0 = int(np.clip(np.searchsorted(route.s, s), 0, len(route.s) - 1))
    i1 = int(np.clip(np.searchsorted(route.s, s + distance_m), 0, len(route.s) - 1))
    change = float(wrap_angle(route.yaw[i1] - route.yaw[i0]))
    return "l" if change > threshold_rad else "r" if change < -threshold_rad else "s"


def light_stop_lines(lights: list[TrafficLight] | None, route: RouteView, window: slice, s_front: float, s_rear: float,
                     v: float, config: ExpertConfig) -> tuple[list[float], list[str]]:
    """Arc lengths where the ego must stop for a light (red, or yellow when it can still stop).

    A light counts until the ego's tail has crossed its stop line (the Leaderboard's red-light test
    looks at the tail). With the bumper already over the line (after an emergency stop for a
    pedestrian on the crossing behind it, say) a red light means: stay where you are, unless the
    car is still moving fast enough that it is better off clearing the junction.
    """
    if not lights:
        return [], []
    sc = config.signals
    path, tangent, normal = route.path[window], route.tangent[window], route.normal[window]
    pos = np.array([np.asarray(l.position, dtype=np.float64)[:2] for l in lights])
    d2 = np.sum((pos[:, None, :] - path[None]) ** 2, axis=2)
    j = np.argmin(d2, axis=1)
    rel = pos - path[j]
    lateral = np.einsum("ij,ij->i", rel, normal[j])
    along = route.s[window][j] + np.einsum("ij,ij->i", rel, tangent[j])
    yaw = np.array([getattr(l, "yaw", np.nan) for l in lights], dtype=np.float64)
    path_yaw = np.arctan2(tangent[j, 1], tangent[j, 0])
    heading_ok = np.isnan(yaw) | (np.abs(wrap_angle(yaw - path_yaw)) < sc.match_heading_rad)
    inside = (j > 0) & (j < len(path) - 1)  # not just the nearest end of the window
    candidates = np.flatnonzero((np.abs(lateral) < sc.match_lateral_m) & heading_ok & inside
                                & (along > s_rear))
    map_lines = np.array([s for s, kind in route.stop_lines if kind == "traffic_light"])
    stops, reasons = [], []
    for c in candidates:
        light = lights[c]
        s_line = float(along[c])
        if map_lines.size:  # the map's own stop line, when it lies a little before SUMO's
            before = map_lines[(map_lines >= s_line - sc.map_stop_line_lookback_m) & (map_lines <= s_line + 1.0)
                               & (map_lines > s_front - 0.5)]
            if before.size:
                s_line = min(s_line, float(before.min()))
        state = _state_for_route(light, route, s_line)
        over_the_line = s_line < s_front - 0.5
        if over_the_line:
            if state == LightState.RED and v < sc.hold_over_line_max_speed_mps:
                stops.append(s_front + config.idm.min_gap_stop_line_m)  # stop right here
                reasons.append(f"red_light_hold:{light.id}")
            continue
        if state == LightState.RED:
            stops.append(s_line)
            reasons.append(f"red_light:{light.id}")
        elif state == LightState.YELLOW:
            gap = s_line - s_front - config.idm.min_gap_stop_line_m
            if v < 0.5 or (gap > 0 and v * v / (2 * gap) <= sc.yellow_max_decel_mps2):
                stops.append(s_line)
                reasons.append(f"yellow_light:{light.id}")
    return stops, reasons


def _state_for_route(light: TrafficLight, route: RouteView, s_line: float) -> LightState:
    movements = getattr(light, "movements", None)
    if movements:
        for key in _MOVEMENT_KEYS[turn_direction(route, s_line)]:
            if key in movements:
                return LightState(movements[key])
    return LightState(light.state)


class StopSigns:
    """Stop signs on the route: stop at the line, stand still ``stop_sign_wait_s``, then go."""

    def __init__(self, route: RouteView, config: ExpertConfig):
        self.config = config
        self.lines = sorted(s for s, kind in route.stop_lines if kind == "stop_sign")
        self.served: set[float] = set()
        self._stopped_since: float | None = None

    def stop_lines(self, s_front: float, v: float, t: float) -> tuple[list[float], list[str]]:
        sc = self.config.signals
        upcoming = [s for s in self.lines if s not in self.served and s > s_front - 2.0]
        if not upcoming:
            return [], []
        s_line = upcoming[0]
        near = s_line - s_front < self.config.idm.min_gap_stop_line_m + 3.0
        if near and v < sc.stop_sign_stopped_mps:
            if self._stopped_since is None:
                self._stopped_since = t
            if t - self._stopped_since >= sc.stop_sign_wait_s:
                self.served.add(s_line)
                self._stopped_since = None
                return [], []
        else:
            self._stopped_since = None
        if s_line < s_front - 0.5 and math.isfinite(s_line):
            # Rolled past the line without stopping (it was too close to stop): do not stop inside the junction.
            self.served.add(s_line)
            return [], []
        return [s_line], [f"stop_sign:{s_line:.0f}"]
