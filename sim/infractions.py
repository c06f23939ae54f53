"""Infraction detectors of the CARLA Leaderboard, on plain geometry (no map object, no ROS).

Each monitor mirrors one Leaderboard criterion (scenario_runner ``atomic_criteria.py``) and is fed
once per simulation tick by ``sim.scoring.RouteScorer``. Where Leaderboard 1.0 and 2.0 differ, the
monitor reads the difference from the ``ScoringVariant`` it is given (``variant.generation`` for
structural differences, named fields for constants). Sources are cited per class as
``LB1`` = carla-simulator/leaderboard 1.0 + scenario_runner 0.9.1x, ``LB2`` = leaderboard 2.0 +
scenario_runner leaderboard-2.0 branch.

Map queries come in through one small callable, ``lane_of(x, y) -> LaneSample | None``: the centre
point of the nearest driving lane (CARLA's ``Map.get_waypoint(location, project_to_road=True)``).
All positions are in the map frame, REP-103 (x forward, y left), metres, radians. Yaw differences
are compared through the symmetric Leaderboard windows, so the left-handed CARLA frame and this
right-handed one give the same answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

import numpy as np

from adstack.types import LightState, ObjectClass

if TYPE_CHECKING:  # pragma: no cover
    from sim.scoring import ScoringVariant

# Leaderboard infraction keys (the ``infractions`` dict of a route record).
COLLISION_PEDESTRIAN = "collisions_pedestrian"
COLLISION_VEHICLE = "collisions_vehicle"
COLLISION_LAYOUT = "collisions_layout"
RED_LIGHT = "red_light"
STOP_SIGN = "stop_infraction"
OUTSIDE_ROUTE_LANES = "outside_route_lanes"
ROUTE_DEVIATION = "route_dev"
ROUTE_TIMEOUT = "route_timeout"
VEHICLE_BLOCKED = "vehicle_blocked"
MIN_SPEED = "min_speed_infractions"
YIELD_EMERGENCY_VEHICLE = "yield_emergency_vehicle_infractions"
SCENARIO_TIMEOUT = "scenario_timeouts"


@dataclass
class InfractionEvent:
    """One Leaderboard traffic event. ``value`` carries the percentage of the %-based ones."""

    key: str
    t: float
    x: float
    y: float
    message: str
    other_id: int | None = None
    other_class: str | None = None
    value: float | None = None
    distance_m: float | None = None

    @property
    def position(self) -> tuple[float, float]:
        return (self.x, self.y)

    def to_dict(self) -> dict:
        """JSON-ready: key, t, position and the optional fields that are set."""
        out = {"key": self.key, "t": self.t, "position": [self.x, self.y], "message": self.message}
        for name in ("other_id", "other_class", "value", "distance_m"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class LaneSample:
    """Nearest driving-lane centre point to a query position (CARLA: a projected waypoint)."""

    key: Hashable  # lane identity, e.g. (road_id, lane_id); equal keys = same lane
    x: float
    y: float
    yaw: float  # lane direction of travel, rad
    width: float  # lane width, m
    is_junction: bool = False


LaneLookup = Callable[[float, float], "LaneSample | None"]


@dataclass(frozen=True)
class StopLine:
    """The stop position of one lane governed by a traffic light (CARLA: the light's waypoint).

    The crossing segment spans ``±factor x lane_width`` across the lane at (x, y), factor 0.4 in LB1
    and 0.6 in LB2.
    """

    light_id: str
    x: float
    y: float
    yaw: float  # lane direction at the stop line
    lane_width: float
    lane_key: Hashable


@dataclass(frozen=True)
class StopSign:
    """A stop sign's trigger area: a box of half-extents (hx, hy) about (x, y).

    CARLA tests points against the trigger volume with world-axis-aligned extents (the sign's
    rotation is ignored); ``yaw`` = 0 reproduces that, another yaw rotates the box.
    ``sign_x, sign_y``: the sign actor's own location (LB1 gates on it with 50 m); defaults to the
    trigger centre.
    """

    id: Hashable
    x: float
    y: float
    hx: float
    hy: float
    yaw: float = 0.0
    sign_x: float | None = None
    sign_y: float | None = None


# --------------------------------------------------------------------------------------------
# geometry


def box_corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """(4,2) corners of an oriented rectangle centred on (x, y), counter-clockwise."""
    c, s = math.cos(yaw), math.sin(yaw)
    hl, hw = length / 2.0, width / 2.0
    local = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def rectangles_overlap(ego: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Separating-axis test of one rectangle (4,2) against N rectangles (N,4,2) -> (N,) bool.

    Touching counts as overlap (CARLA reports contact).
    """
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4, 2)
    n = others.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    ego = np.asarray(ego, dtype=np.float64).reshape(4, 2)
    ego_axes = np.stack([ego[1] - ego[0], ego[2] - ego[1]])  # (2,2): edge directions = normals of a rectangle
    other_axes = np.stack([others[:, 1] - others[:, 0], others[:, 2] - others[:, 1]], axis=1)  # (N,2,2)
    axes = np.concatenate([np.broadcast_to(ego_axes, (n, 2, 2)), other_axes], axis=1)  # (N,4,2)
    proj_ego = np.einsum("nkd,cd->nkc", axes, ego)
    proj_other = np.einsum("nkd,ncd->nkc", axes, others)
    separated = (proj_ego.max(-1) < proj_other.min(-1)) | (proj_other.max(-1) < proj_ego.min(-1))
    return ~separated.any(-1)


def _orient(ax, ay, bx, by, cx, cy) -> float:
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def segments_intersect(p1, p2, q1, q2, eps: float = 1e-12) -> bool:
    """True where segment p1-p2 and q1-q2 share a point (touching included, like shapely)."""
    d1 = _orient(q1[0], q1[1], q2[0], q2[1], p1[0], p1[1])
    d2 = _orient(q1[0], q1[1], q2[0], q2[1], p2[0], p2[1])
    d3 = _orient(p1[0], p1[1], p2[0], p2[1], q1[0], q1[1])
    d4 = _orient(p1[0], p1[1], p2[0], p2[1], q2[0], q2[1])
    if ((d1 > eps and d2 < -eps) or (d1 < -eps and d2 > eps)) and \
            ((d3 > eps and d4 < -eps) or (d3 < -eps and d4 > eps)):
        return True

    def on_segment(a, b, c, d):  # c collinear with a-b (|d| small): within the bounding box?
        return abs(d) <= eps and min(a[0], b[0]) - eps <= c[0] <= max(a[0], b[0]) + eps and \
            min(a[1], b[1]) - eps <= c[1] <= max(a[1], b[1]) + eps

    return on_segment(q1, q2, p1, d1) or on_segment(q1, q2, p2, d2) or \
        on_segment(p1, p2, q1, d3) or on_segment(p1, p2, q2, d4)


def _yaw_deg_mod(a: float) -> float:
    return math.degrees(a) % 360.0


def _fmt(v: float) -> float:
    return round(float(v), 3)


# --------------------------------------------------------------------------------------------
# route


@dataclass
class RoutePath:
    """Dense route: (N,2) points about ``step_m`` apart, unit tangents, cumulative length.

    The Leaderboard interpolates every route to waypoints 1 m apart (``interpolate_trajectory``,
    hop resolution 1.0) and judges progress against each waypoint's forward vector.
    """

    xy: np.ndarray
    tangent: np.ndarray
    accum_m: np.ndarray
    lane_keys: list | None = None
    source_index: np.ndarray | None = None  # per point: index of the input vertex its segment starts at

    @property
    def length_m(self) -> float:
        return float(self.accum_m[-1])

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @classmethod
    def from_polyline(cls, xy, lane_keys: Sequence | None = None, step_m: float = 1.0,
                      resample: bool = True) -> "RoutePath":
        """Resample polyline ``xy`` to points ``step_m`` apart (keeping every vertex's segment
        direction as the tangent and each sample's segment lane key)."""
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] < 2 or xy.shape[0] < 2:
            raise ValueError(f"route must be an (N>=2, 2) array, got shape {xy.shape}")
        xy = xy[:, :2]
        if not np.isfinite(xy).all():
            raise ValueError("route contains NaN or infinite coordinates")
        if lane_keys is not None and len(lane_keys) != xy.shape[0]:
            raise ValueError(f"route has {xy.shape[0]} points but {len(lane_keys)} lane keys")
        seg = np.diff(xy, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        keep = np.concatenate([[True], seg_len > 1e-9])  # drop repeated points
        kept_index = np.nonzero(keep)[0]
        xy = xy[keep]
        if lane_keys is not None:
            lane_keys = [k for k, kept in zip(lane_keys, keep) if kept]
        if xy.shape[0] < 2:
            raise ValueError("route has zero length")
        seg = np.diff(xy, axis=0)
        seg_len = np.hypot(seg[:, 0], seg[:, 1])
        seg_dir = seg / seg_len[:, None]
        vert_s = np.concatenate([[0.0], np.cumsum(seg_len)])
        total = vert_s[-1]
        if resample:
            n = int(math.floor(total / step_m + 1e-9))
            s = np.arange(n + 1) * step_m
            if total - s[-1] > 1e-6:
                s = np.append(s, total)
        else:
            s = vert_s
        seg_idx = np.clip(np.searchsorted(vert_s, s, side="right") - 1, 0, len(seg_len) - 1)
        pts = np.stack([np.interp(s, vert_s, xy[:, 0]), np.interp(s, vert_s, xy[:, 1])], axis=1)
        tangent = seg_dir[seg_idx]
        keys = None if lane_keys is None else (
            [lane_keys[i] for i in seg_idx] if resample else list(lane_keys))
        seg2 = np.diff(pts, axis=0)
        accum = np.concatenate([[0.0], np.cumsum(np.hypot(seg2[:, 0], seg2[:, 1]))])
        return cls(pts, tangent, accum, keys, kept_index[seg_idx] if resample else kept_index)

    def passed(self, index: int, x: float, y: float) -> bool:
        """The Leaderboard's progress test: the car is ahead of route point ``index``."""
        dx, dy = x - self.xy[index, 0], y - self.xy[index, 1]
        return dx * self.tangent[index, 0] + dy * self.tangent[index, 1] > 0.0

    def advance(self, index: int, window: int, x: float, y: float) -> int:
        """Last point of ``index .. index+window`` that the car is ahead of, else ``index``."""
        new = index
        for i in range(index, min(index + window + 1, len(self))):
            if self.passed(i, x, y):
                new = i
        return new

    def points_ahead(self, index: int, x: float, y: float, step_m: float, count: int) -> np.ndarray:
        """``count`` points along the route, ``step_m`` apart, from the car's projection near ``index``."""
        lo, hi = max(index - 2, 0), min(index + 4, len(self) - 1)
        best_s, best_d = self.accum_m[index], math.inf
        for i in range(lo, hi):  # project onto the few segments around the progress index
            a, b = self.xy[i], self.xy[i + 1]
            ab = b - a
            L2 = float(ab @ ab)
            u = 0.0 if L2 == 0 else min(max(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / L2, 0.0), 1.0)
            px, py = a[0] + u * ab[0], a[1] + u * ab[1]
            d = math.hypot(x - px, y - py)
            if d < best_d:
                best_d, best_s = d, self.accum_m[i] + u * math.sqrt(L2)
        s = best_s + step_m * np.arange(1, count + 1)
        s = s[s <= self.accum_m[-1] + 1e-9]
        return np.stack([np.interp(s, self.accum_m, self.xy[:, 0]), np.interp(s, self.accum_m, self.xy[:, 1])], 1)


class RouteCompletionMonitor:
    """RouteCompletionTest: progress index by the forward-vector test over a window of 2 points;
    completion = accumulated length at the index / route length x 100; snaps to 100 (route done)
    when above 99 % and within 10 m of the last point. LB2 rounds the percentage to 2 decimals."""

    def __init__(self, route: RoutePath, variant: "ScoringVariant"):
        self.route, self.v = route, variant
        self.index = 0
        self.percentage = 0.0
        self.completed = False

    def step(self, x: float, y: float) -> bool:
        if self.completed:
            return True
        self.index = self.route.advance(self.index, self.v.completion_window, x, y)
        pct = 100.0 * self.route.accum_m[self.index] / self.route.length_m
        self.percentage = round(pct, 2) if self.v.generation == 2 else pct
        end = self.route.xy[-1]
        if self.percentage > self.v.completion_snap_percent and \
                math.hypot(x - end[0], y - end[1]) < self.v.completion_snap_distance_m:
            self.percentage = 100.0
            self.completed = True
        return self.completed


class InRouteMonitor:
    """InRouteTest: the nearest of the next 6 route points must lie within 30 m; beyond half of
    that (15 m) the driven route length counts as 'unsafe', and more than 30 % of the route driven
    unsafe is a deviation too. A deviation ends the route."""

    def __init__(self, route: RoutePath, variant: "ScoringVariant"):
        self.route, self.v = route, variant
        self.index = 0
        self.out_route_m = 0.0
        self.in_safe_route = True
        self.deviated = False

    def step(self, t: float, x: float, y: float) -> InfractionEvent | None:
        if self.deviated:
            return None
        hi = min(self.index + self.v.deviation_window + 1, len(self.route))
        d = np.hypot(self.route.xy[self.index:hi, 0] - x, self.route.xy[self.index:hi, 1] - y)
        # the Leaderboard keeps the LAST of equal minima (`<=`)
        closest = self.index + int(len(d) - 1 - np.argmin(d[::-1]))
        shortest = float(d[closest - self.index])
        off_route = True
        if shortest < self.v.deviation_max_m:
            off_route = False
            self.in_safe_route = shortest < self.v.deviation_max_m / 2.0
        if closest != self.index:
            advanced = self.route.accum_m[closest] - self.route.accum_m[self.index]
            if not self.in_safe_route:
                self.out_route_m += advanced
                if 100.0 * self.out_route_m / self.route.length_m > self.v.deviation_max_route_percent:
                    off_route = True
            self.index = closest
        if not off_route:
            return None
        self.deviated = True
        return InfractionEvent(ROUTE_DEVIATION, t, x, y,
                               f"Agent deviated from the route at (x={_fmt(x)}, y={_fmt(y)}, z=0.0)")


class BlockedMonitor:
    """ActorSpeedAboveThresholdTest (LB1) / ActorBlockedTest (LB2): speed below 0.1 m/s for more
    than 180 s since the last tick at or above it ends the route. LB2 scenarios may switch it off."""

    def __init__(self, variant: "ScoringVariant"):
        self.v = variant
        self.last_valid_t: float | None = None
        self.active = True
        self.blocked = False

    def set_active(self, active: bool, t: float) -> None:
        self.active = bool(active)
        self.last_valid_t = t

    def step(self, t: float, x: float, y: float, speed: float) -> InfractionEvent | None:
        if self.blocked or not self.active:
            return None
        if speed < self.v.blocked_speed_mps and self.last_valid_t is not None:
            if t - self.last_valid_t > self.v.blocked_time_s:
                self.blocked = True
                return InfractionEvent(VEHICLE_BLOCKED, t, x, y,
                                       f"Agent got blocked at (x={_fmt(x)}, y={_fmt(y)}, z=0.0)")
        else:
            self.last_valid_t = t
        return None


class RouteTimeoutMonitor:
    """Route time budget.

    LB1: fixed, ``int(0.8 s/m x route length + 5 s)`` (route_scenario ``_estimate_route_timeout``).
    LB2: ``RouteTimeoutBehavior``: starts at 300 s and grows by ``advanced metres / (10 % of the
    speed limit)`` each time the car passes route points (window 3).
    The route times out when the elapsed game time exceeds the budget.
    """

    def __init__(self, route: RoutePath, variant: "ScoringVariant", start_t: float):
        self.route, self.v, self.start_t = route, variant, start_t
        self.index = 0
        self.timed_out = False
        if variant.generation == 1:
            self.budget_s = float(int(variant.timeout_s_per_m * route.length_m + variant.timeout_initial_s))
        else:
            self.budget_s = float(variant.timeout_initial_s)

    def step(self, t: float, x: float, y: float, speed_limit_mps: float) -> InfractionEvent | None:
        if self.timed_out:
            return None
        if self.v.generation == 2:
            new = self.route.advance(self.index, self.v.timeout_window, x, y)
            if new > self.index:
                advanced = self.route.accum_m[new] - self.route.accum_m[self.index]
                self.budget_s += advanced / (speed_limit_mps * self.v.timeout_speed_percent / 100.0)
                self.index = new
        if t - self.start_t > self.budget_s:
            self.timed_out = True
            return InfractionEvent(ROUTE_TIMEOUT, t, x, y, "Route timeout.")
        return None


class OutsideRouteLanesMonitor:
    """OutsideRouteLanesTest: route metres driven while outside the driving lanes or on a lane
    against the direction of travel, as a percentage of the route metres driven.

    - outside: the car centre is farther than lane_width/2 + allowance (1.3 m LB1, 0.5 m LB2) from
      the nearest driving (or parking) lane centre;
    - wrong lane: when the lane changes outside a junction, a lane direction jump of ~150-210 deg
      toggles the state; on leaving a junction the car's yaw against the lane (> 120 deg) decides;
      inside junctions it is off. LB1 clears it on any other lane change, LB2 keeps it.
    - the metres come from the route: each route point passed (window 3) adds its spacing.
    """

    def __init__(self, route: RoutePath, variant: "ScoringVariant", lane_of: LaneLookup,
                 parking_lane_of: LaneLookup | None, x0: float, y0: float):
        self.route, self.v = route, variant
        self.lane_of, self.parking_lane_of = lane_of, parking_lane_of
        self.index = 0
        self.total_m = 0.0
        self.wrong_m = 0.0
        self.outside_active = False
        self.wrong_lane_active = False
        self.last_key = None
        self.last_lane = lane_of(x0, y0)
        self.wrong_direction_active = True  # LB2 scenarios switch the wrong-lane part off and on

    def _outside(self, x: float, y: float, lane: LaneSample | None) -> bool:
        best = (math.inf, 0.0)
        if lane is not None:
            best = (math.hypot(x - lane.x, y - lane.y), lane.width)
        if self.parking_lane_of is not None:
            park = self.parking_lane_of(x, y)
            if park is not None:
                d = math.hypot(x - park.x, y - park.y)
                if best[0] >= d:
                    best = (d, park.width)
        if not math.isfinite(best[0]):
            return True  # no lane at all
        return best[0] > best[1] / 2.0 + self.v.outside_lane_allowance_m

    def _wrong_lane(self, yaw: float, lane: LaneSample | None) -> None:
        if lane is None:
            return
        if lane.is_junction:
            self.wrong_lane_active = False
        elif lane.key != self.last_key:
            last = self.last_lane
            if last is not None and last.is_junction:
                angle = (_yaw_deg_mod(lane.yaw) - _yaw_deg_mod(yaw)) % 360.0
                limit = self.v.wrong_lane_vehicle_angle_deg
                self.wrong_lane_active = not (angle < limit or angle > 360.0 - limit)
            elif last is not None:
                angle = (_yaw_deg_mod(last.yaw) - _yaw_deg_mod(lane.yaw)) % 360.0
                limit = self.v.wrong_lane_waypoint_angle_deg
                if self.v.generation == 1:
                    jump = limit <= angle <= 360.0 - limit
                else:
                    jump = limit < angle < 360.0 - limit
                if jump:  # going into, or back out of, an opposite lane
                    self.wrong_lane_active = not self.wrong_lane_active
                elif self.v.generation == 1:
                    self.wrong_lane_active = False
        self.last_key = lane.key
        self.last_lane = lane

    def step(self, x: float, y: float, yaw: float, lane: LaneSample | None) -> None:
        self.outside_active = self._outside(x, y, lane)
        self._wrong_lane(yaw, lane)
        bad = self.outside_active or (self.wrong_lane_active and self.wrong_direction_active)
        for i in range(self.index + 1, min(self.index + self.v.outside_lanes_window + 1, len(self.route))):
            if self.route.passed(i, x, y):
                step_m = float(np.hypot(*(self.route.xy[i] - self.route.xy[self.index])))
                self.total_m += step_m
                if bad:
                    self.wrong_m += step_m
                self.index = i

    def event(self, t: float, x: float, y: float) -> InfractionEvent | None:
        if self.wrong_m <= 0.0:
            return None
        pct = self.wrong_m / self.total_m * 100.0
        return InfractionEvent(
            OUTSIDE_ROUTE_LANES, t, x, y,
            f"Agent went outside its route lanes for about {round(self.wrong_m, 3)} meters "
            f"({round(pct, 2)}% of the completed route)", value=pct, distance_m=self.wrong_m)


_COLLISION_KEY = {
    int(ObjectClass.VEHICLE): (COLLISION_VEHICLE, "vehicle"),
    int(ObjectClass.CYCLIST): (COLLISION_VEHICLE, "vehicle.bicycle"),  # CARLA bikes are vehicles
    int(ObjectClass.PEDESTRIAN): (COLLISION_PEDESTRIAN, "walker.pedestrian"),
    int(ObjectClass.STATIC): (COLLISION_LAYOUT, "static"),
}


class CollisionMonitor:
    """CollisionTest, fed with box contacts instead of CARLA's collision sensor.

    De-duplication, LB1: a contact with the actor of the last collision within 5 s is ignored, and
    one within 3 m of any remembered collision spot (forgotten once the car is 5 m away).
    LB2: the same actor within 5 s, or within 5 m of the last collision spot, is ignored, and so is
    any contact while the car moves slower than 0.1 m/s (not its fault).
    Map scenery reports id 0, which is never remembered as 'the last actor' (as in CARLA); nor are
    unknown ids (< 0).
    Typing: vehicle (and bicycle) -> collisions_vehicle, pedestrian -> collisions_pedestrian,
    static -> collisions_layout; unknown classes are ignored like CARLA's other type ids.
    """

    def __init__(self, variant: "ScoringVariant"):
        self.v = variant
        self.last_id: int | None = None
        self.last_t: float | None = None
        self.spots: list[tuple[float, float]] = []  # LB1: remembered spots; LB2: at most one

    def contact(self, t: float, x: float, y: float, speed: float, other_id: int,
                other_class: int) -> InfractionEvent | None:
        if self.last_id is not None and self.last_id == other_id:
            return None
        if self.v.generation == 1:
            if any(math.hypot(x - sx, y - sy) <= self.v.collision_ignore_radius_m for sx, sy in self.spots):
                return None
        else:
            last = self.spots[0] if self.spots else None
            if last is not None and math.hypot(x - last[0], y - last[1]) <= self.v.collision_ignore_radius_m:
                return None
            if speed < self.v.collision_min_ego_speed_mps:
                return None
        typed = _COLLISION_KEY.get(int(other_class))
        if self.v.generation == 1 and typed is None:
            return None  # LB1 returns before registering an unknown type
        self.last_t = t
        if self.v.generation == 1:
            self.spots.append((x, y))
        else:
            self.spots = [(x, y)]
        if other_id > 0:  # 0: map scenery (CARLA), < 0: unknown id; neither is remembered
            self.last_id = other_id
        if typed is None:
            return None
        key, type_id = typed
        return InfractionEvent(
            key, t, x, y,
            f"Agent collided against object with type={type_id} and id={other_id} "
            f"at (x={_fmt(x)}, y={_fmt(y)}, z=0.0)", other_id=int(other_id), other_class=type_id)

    def forget(self, t: float, x: float, y: float) -> None:
        """Per-tick update after the contacts: forget spots the car has left and the old actor."""
        self.spots = [(sx, sy) for sx, sy in self.spots
                      if math.hypot(x - sx, y - sy) <= self.v.collision_forget_radius_m]
        if self.last_id and self.last_t is not None and t - self.last_t > self.v.collision_same_actor_s:
            self.last_id = None


class RedLightMonitor:
    """RunningRedLightTest: the car's tail segment, from 0.8 half-lengths to one half-length + 1 m
    behind its centre, touches a red light's stop line (±0.4 lane widths LB1, ±0.6 LB2) while the
    tail point lies on that stop line's lane and the car heads along it; only lights whose centre
    is within 15 m are checked. The same light is not counted twice in a row.

    Stop lines come from the lights themselves or from the map (``stop_lines``). A light that
    carries its own stop geometry (``yaw`` and ``lanes``, incoming lane first, as the embedded
    world's per-lane signals do) becomes a stop line at its ``position`` and replaces the map lines
    of the same signal (its ``map_signal_id`` or ``id``): CARLA's own test walks each light's
    waypoints forward to the junction entrance, the end of the incoming lane, which is where such
    signals stand. A map line takes its state from the light governing its lane, else from the
    light with its id.
    """

    def __init__(self, variant: "ScoringVariant", stop_lines: Sequence[StopLine],
                 light_centers: dict | None = None):
        self.v = variant
        self.lines: dict[str, list[StopLine]] = {}
        for line in stop_lines:
            self.lines.setdefault(str(line.light_id), []).append(line)
        self.centers = {}
        for lid, lines in self.lines.items():
            if light_centers and lid in light_centers:
                self.centers[lid] = np.asarray(light_centers[lid], dtype=np.float64)[:2]
            else:  # CARLA gates on the trigger volume, which sits across the stop lines
                self.centers[lid] = np.mean([[ln.x, ln.y] for ln in lines], axis=0)
        self.last_red_id: str | None = None
        self._seen: set = set()  # light ids already looked at
        self._own: set = set()  # ids of lines made from the lights' own geometry
        self._index_centers()

    def _index_centers(self) -> None:
        self._ids = list(self.lines)
        self._center_xy = np.array([self.centers[i] for i in self._ids]).reshape(-1, 2)

    def _adopt(self, lights: Sequence, lane_of: LaneLookup) -> None:
        """Turn lights with their own stop geometry into stop lines (once per light id); they
        replace the map lines of the same signal (``map_signal_id`` or ``id``)."""
        changed = False
        for tl in lights:
            lid = str(tl.id)
            if lid in self._seen:
                continue
            self._seen.add(lid)
            yaw = getattr(tl, "yaw", None)
            if yaw is None or not tl.lanes:
                continue  # a plain light: map lines serve it, by id or by lane
            for other in {lid, str(getattr(tl, "map_signal_id", "") or "")} - {""}:
                if other in self.lines and other not in self._own:
                    del self.lines[other], self.centers[other]
            x, y = float(tl.position[0]), float(tl.position[1])
            lane = lane_of(x, y)
            width = lane.width if lane is not None else 3.5
            self.lines[lid] = [StopLine(lid, x, y, float(yaw), width, tl.lanes[0])]
            self.centers[lid] = np.array([x, y])
            self._own.add(lid)
            changed = True
        if changed:
            self._index_centers()

    @staticmethod
    def _states(lights: Sequence) -> tuple[dict, dict]:
        by_lane, by_id = {}, {}
        for tl in lights:
            if tl.lanes:
                by_lane.setdefault(tl.lanes[0], tl.state)
            by_id.setdefault(str(tl.id), tl.state)
            msid = str(getattr(tl, "map_signal_id", "") or "")
            if msid:
                by_id.setdefault(msid, tl.state)
        for tl in lights:
            for key in tuple(tl.lanes)[1:]:
                by_lane.setdefault(key, tl.state)
        return by_lane, by_id

    def step(self, t: float, x: float, y: float, yaw: float, half_length: float,
             lights: Sequence, lane_of: LaneLookup) -> InfractionEvent | None:
        if not lights:
            return None
        self._adopt(lights, lane_of)
        near = np.nonzero(np.hypot(self._center_xy[:, 0] - x, self._center_xy[:, 1] - y)
                          <= self.v.red_light_distance_m)[0]
        if len(near) == 0:
            return None
        by_lane, by_id = self._states(lights)
        c, s = math.cos(yaw), math.sin(yaw)
        tail_close = (x - 0.8 * half_length * c, y - 0.8 * half_length * s)
        tail_far = (x - (half_length + 1.0) * c, y - (half_length + 1.0) * s)
        tail_lane = None
        for k in near:
            lid = self._ids[k]
            if self.last_red_id is not None and self.last_red_id == lid:
                continue
            center = self.centers[lid]
            for line in self.lines[lid]:
                state = by_lane.get(line.lane_key, by_id.get(lid))
                if state != LightState.RED:
                    continue
                if tail_lane is None:
                    tail_lane = lane_of(*tail_far) or False
                if tail_lane is False:
                    return None
                if tail_lane.key != line.lane_key or c * math.cos(line.yaw) + s * math.sin(line.yaw) <= 0.0:
                    continue
                half = self.v.stop_line_half_width_factor * line.lane_width
                nx, ny = -math.sin(line.yaw), math.cos(line.yaw)
                left = (line.x + half * nx, line.y + half * ny)
                right = (line.x - half * nx, line.y - half * ny)
                if segments_intersect(tail_close, tail_far, left, right):
                    self.last_red_id = lid
                    cx, cy = float(center[0]), float(center[1])
                    return InfractionEvent(
                        RED_LIGHT, t, cx, cy,
                        f"Agent ran a red light {lid} at (x={_fmt(cx)}, y={_fmt(cy)}, z=0.0)",
                        other_id=None, other_class=f"traffic_light:{lid}")
        return None


class StopSignMonitor:
    """RunningStopTest: once a stop sign's trigger area lies on the car's way ahead, the car must
    drop below 0.1 m/s before the area stops being ahead of it.

    LB1: signs within 50 m of the car; the way ahead is the car plus 20 points 1 m apart; an
    infraction needs the car centre to have been inside the trigger area.
    LB2: trigger centres within 4 m of the car's lane point; the way ahead is 8 points 0.5 m apart;
    the area is grown by 1.2; a failed sign is not counted twice in a row; the scan ignores the
    car reversing or driving against its lane.
    The 'way ahead' follows the route polyline (the Leaderboard follows the lane, which the car's
    route runs along).
    """

    def __init__(self, variant: "ScoringVariant", signs: Sequence[StopSign]):
        self.v = variant
        self.signs = list(signs)
        self.target: StopSign | None = None
        self.stopped = False
        self.entered = False  # LB1 '_affected_by_stop'
        self.last_failed_id = None

    def _inside(self, sign: StopSign, px, py, grow: float) -> np.ndarray:
        c, s = math.cos(sign.yaw), math.sin(sign.yaw)
        dx, dy = np.asarray(px) - sign.x, np.asarray(py) - sign.y
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        return (np.abs(lx) < grow * sign.hx) & (np.abs(ly) < grow * sign.hy)

    def _affected(self, sign: StopSign, way: np.ndarray) -> bool:
        if self.v.generation == 1:
            gx = sign.x if sign.sign_x is None else sign.sign_x
            gy = sign.y if sign.sign_y is None else sign.sign_y
            if math.hypot(gx - way[0, 0], gy - way[0, 1]) > self.v.stop_proximity_m:
                return False
            return bool(self._inside(sign, way[:, 0], way[:, 1], 1.0).any())
        if math.hypot(sign.x - way[0, 0], sign.y - way[0, 1]) > self.v.stop_proximity_m:
            return False
        return bool(self._inside(sign, way[:, 0], way[:, 1], self.v.stop_box_grow).any())

    def step(self, t: float, x: float, y: float, yaw: float, speed: float, v_long: float,
             lane: LaneSample | None, route: RoutePath, route_index: int) -> InfractionEvent | None:
        if not self.signs:
            return None
        ahead = route.points_ahead(route_index, x, y, self.v.stop_lookahead_step_m, self.v.stop_lookahead_steps)
        first = (x, y) if (self.v.generation == 1 or lane is None) else (lane.x, lane.y)
        way = np.vstack([np.asarray(first, dtype=np.float64)[None], ahead.reshape(-1, 2)])
        c, s = math.cos(yaw), math.sin(yaw)
        if self.target is None:
            lane_dot = 1.0 if lane is None else c * math.cos(lane.yaw) + s * math.sin(lane.yaw)
            if self.v.generation == 1:
                if lane_dot <= 0.0:
                    return None
            elif v_long < -0.17 or lane_dot < -0.17:  # reversing, or against the lane (~100 deg)
                return None
            for sign in self.signs:
                if self._affected(sign, way):
                    self.target = sign
                    break
            return None
        if not self.stopped and speed < self.v.stop_speed_mps:
            self.stopped = True
        if self.v.generation == 1 and not self.entered and self._inside(self.target, x, y, 1.0):
            self.entered = True
        if self._affected(self.target, way):
            return None
        sign, event = self.target, None
        if self.v.generation == 1:
            failed = not self.stopped and self.entered
        else:
            failed = not self.stopped and self.last_failed_id != sign.id
        if failed:
            sx = sign.x if sign.sign_x is None else sign.sign_x
            sy = sign.y if sign.sign_y is None else sign.sign_y
            event = InfractionEvent(STOP_SIGN, t, sx, sy,
                                    f"Agent ran a stop with id={sign.id} at (x={_fmt(sx)}, y={_fmt(sy)}, z=0.0)",
                                    other_id=sign.id if isinstance(sign.id, int) else None,
                                    other_class=f"traffic.stop:{sign.id}")
            self.last_failed_id = sign.id
        self.target, self.stopped, self.entered = None, False, False
        return event


class MinSpeedMonitor:
    """MinimumSpeedRouteTest (LB2 only): the route is cut into 4 equal checkpoints; per checkpoint,
    the car's mean speed over the ticks where traffic exists, as a percentage of the traffic's mean
    speed. Below 100 % is an infraction with that percentage (penalty 1 - 0.3 x (1 - p/100)).
    The last checkpoint is closed at the end when the car got past 95 % of the route."""

    def __init__(self, route: RoutePath, variant: "ScoringVariant"):
        self.route, self.v = route, variant
        self.index = 0
        self.checkpoint_m = route.length_m / variant.min_speed_checkpoints
        self.current_m = 0.0
        self.traffic_speed_sum = 0.0
        self.ego_speed_sum = 0.0
        self.points = 0
        self.values: list[float] = []

    def _close(self, t: float, x: float, y: float) -> InfractionEvent | None:
        if self.points > 0 and self.traffic_speed_sum:
            value = round((self.ego_speed_sum / self.points) /
                          (self.traffic_speed_sum / self.points) * 100.0, 2)
        else:
            value = 100.0
        self.values.append(value)
        if value >= 100.0:
            return None
        return InfractionEvent(MIN_SPEED, t, x, y,
                               f"Average speed is {value}% of the surrounding traffic's one", value=value)

    def step(self, t: float, x: float, y: float, ego_speed: float,
             traffic_speeds: np.ndarray) -> InfractionEvent | None:
        self.index = self.route.advance(self.index, self.v.completion_window, x, y)
        event = None
        if self.route.accum_m[self.index] - self.current_m > self.checkpoint_m:
            event = self._close(t, x, y)
            self.current_m = float(self.route.accum_m[self.index])
            self.traffic_speed_sum = self.ego_speed_sum = 0.0
            self.points = 0
        if len(traffic_speeds):
            self.traffic_speed_sum += float(np.mean(traffic_speeds))
            self.ego_speed_sum += ego_speed
            self.points += 1
        return event

    def finish(self, t: float, x: float, y: float) -> InfractionEvent | None:
        if self.route.accum_m[self.index] / self.route.length_m > 0.95:
            return self._close(t, x, y)
        return None


class YieldToEmergencyVehicleMonitor:
    """YieldToEmergencyVehicleTest (LB2 only): while a scenario watches an emergency vehicle, the
    car fails when it is ahead of the emergency vehicle (along the EV's heading) at the end."""

    def __init__(self):
        self.watching: dict[int, bool] = {}  # ev id -> car currently ahead of it (failure state)

    def start(self, ev_id: int) -> None:
        self.watching[int(ev_id)] = False

    def step(self, x: float, y: float, actors) -> None:
        if not self.watching or actors is None or len(actors) == 0:
            return
        for ev_id in self.watching:
            hit = np.nonzero(actors.ids == ev_id)[0]
            if len(hit) == 0:
                continue
            i = int(hit[0])
            ex, ey, eyaw = actors.center[i, 0], actors.center[i, 1], actors.yaw[i]
            self.watching[ev_id] = math.cos(eyaw) * (x - ex) + math.sin(eyaw) * (y - ey) > 0.0

    def stop(self, t: float, x: float, y: float, ev_id: int) -> InfractionEvent | None:
        failed = self.watching.pop(int(ev_id), None)
        if failed:
            return InfractionEvent(YIELD_EMERGENCY_VEHICLE, t, x, y,
                                   "Agent failed to yield to an emergency vehicle", other_id=int(ev_id),
                                   other_class="vehicle.emergency")
        return None
