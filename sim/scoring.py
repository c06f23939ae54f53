"""CARLA Leaderboard scoring: route completion, infraction penalty and driving score.

Two explicit variants, ``LB1`` (Leaderboard 1.0) and ``LB2`` (Leaderboard 2.0), each computed the
way the Leaderboard's own code does (leaderboard ``statistics_manager.py`` and
``route_scenario.py``; scenario_runner ``atomic_criteria.py`` and ``timer.py``):

- per route: driving score = max(route completion x infraction penalty, 0); the penalty is the
  product of one factor per infraction event;
- global: the mean of the per-route scores, and infractions per driven km;
- route deviation, agent blocked and route timeout end the route with its completion frozen.

``RouteScorer`` is a plain core (no ROS, no I/O, no wall clock): build it with the dense route and
small map callables, call ``update`` every tick, then ``result()``. ``global_record`` and
``results_json`` lay results out like the Leaderboard's results JSON; ``write_results_json`` writes
it atomically. ``scorer_from_hdmap`` is the thin adapter from ``hdmap``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from adstack.types import Boxes, EgoState, LightState, ObjectClass, TrafficLight
from sim.infractions import (
    COLLISION_LAYOUT, COLLISION_PEDESTRIAN, COLLISION_VEHICLE, MIN_SPEED, OUTSIDE_ROUTE_LANES, RED_LIGHT,
    ROUTE_DEVIATION, ROUTE_TIMEOUT, SCENARIO_TIMEOUT, STOP_SIGN, VEHICLE_BLOCKED, YIELD_EMERGENCY_VEHICLE,
    BlockedMonitor, CollisionMonitor, InfractionEvent, InRouteMonitor, LaneLookup, LaneSample, MinSpeedMonitor,
    OutsideRouteLanesMonitor, RedLightMonitor, RouteCompletionMonitor, RoutePath, RouteTimeoutMonitor, StopLine,
    StopSign, StopSignMonitor, YieldToEmergencyVehicleMonitor, box_corners, rectangles_overlap,
)

__all__ = [
    "ScoringVariant", "LB1", "LB2", "variant_by_name", "RouteScorer", "RouteResult", "RoutePath", "LaneSample",
    "StopLine", "StopSign", "InfractionEvent", "infraction_penalty", "route_record", "global_record",
    "results_json", "write_results_json", "scorer_from_hdmap", "hdmap_lane_lookup", "hdmap_stop_lines",
    "hdmap_light_centers", "hdmap_stop_signs",
]


@dataclass(frozen=True)
class ScoringVariant:
    """Every constant that differs between Leaderboard versions, in one place.

    ``generation`` selects the few structural differences (see ``sim.infractions``).
    Penalty factors multiply the score once per event; ``None`` = the event does not exist there.
    """

    name: str
    generation: int
    # statistics_manager.py: PENALTY_* (LB1) / PENALTY_VALUE_DICT, PENALTY_PERC_DICT (LB2)
    penalty_collision_pedestrian: float = 0.50
    penalty_collision_vehicle: float = 0.60
    penalty_collision_layout: float = 0.65
    penalty_red_light: float = 0.70
    penalty_stop_sign: float = 0.80
    penalty_scenario_timeout: float | None = None
    penalty_yield_emergency_vehicle: float | None = None
    min_speed_base: float | None = None  # factor 1 - (1 - base) x (1 - p/100)
    # RouteCompletionTest
    completion_window: int = 2
    completion_snap_percent: float = 99.0
    completion_snap_distance_m: float = 10.0
    # InRouteTest(offroad_max=30)
    deviation_max_m: float = 30.0
    deviation_window: int = 5
    deviation_max_route_percent: float = 30.0
    # ActorSpeedAboveThresholdTest / ActorBlockedTest(min_speed=0.1, max_time=180)
    blocked_speed_mps: float = 0.1
    blocked_time_s: float = 180.0
    # route timeout: LB1 int(s_per_m x length + initial); LB2 initial + metres / (perc % of speed limit)
    timeout_s_per_m: float = 0.8
    timeout_initial_s: float = 5.0
    timeout_speed_percent: float = 10.0
    timeout_window: int = 3
    # CollisionTest
    collision_ignore_radius_m: float = 3.0
    collision_forget_radius_m: float = 5.0
    collision_same_actor_s: float = 5.0
    collision_min_ego_speed_mps: float = 0.0
    # OutsideRouteLanesTest
    outside_lane_allowance_m: float = 1.3
    wrong_lane_vehicle_angle_deg: float = 120.0
    wrong_lane_waypoint_angle_deg: float = 150.0
    outside_lanes_window: int = 3
    # RunningRedLightTest
    red_light_distance_m: float = 15.0
    stop_line_half_width_factor: float = 0.4
    # RunningStopTest
    stop_proximity_m: float = 50.0
    stop_speed_mps: float = 0.1
    stop_lookahead_step_m: float = 1.0
    stop_lookahead_steps: int = 20
    stop_box_grow: float = 1.0
    # MinimumSpeedRouteTest(checkpoints=4)
    min_speed_checkpoints: int = 4
    # statistics_manager.py ROUND_DIGITS_SCORE / ROUND_DIGITS (LB2 only)
    round_scores: bool = False

    @property
    def infraction_keys(self) -> tuple[str, ...]:
        keys = (COLLISION_PEDESTRIAN, COLLISION_VEHICLE, COLLISION_LAYOUT, RED_LIGHT, STOP_SIGN,
                OUTSIDE_ROUTE_LANES, ROUTE_DEVIATION, ROUTE_TIMEOUT, VEHICLE_BLOCKED)
        if self.generation == 2:
            keys += (MIN_SPEED, YIELD_EMERGENCY_VEHICLE, SCENARIO_TIMEOUT)
        return keys

    def fixed_penalties(self) -> dict[str, float]:
        table = {COLLISION_PEDESTRIAN: self.penalty_collision_pedestrian,
                 COLLISION_VEHICLE: self.penalty_collision_vehicle,
                 COLLISION_LAYOUT: self.penalty_collision_layout,
                 RED_LIGHT: self.penalty_red_light,
                 STOP_SIGN: self.penalty_stop_sign}
        if self.penalty_scenario_timeout is not None:
            table[SCENARIO_TIMEOUT] = self.penalty_scenario_timeout
        if self.penalty_yield_emergency_vehicle is not None:
            table[YIELD_EMERGENCY_VEHICLE] = self.penalty_yield_emergency_vehicle
        return table


#: Leaderboard 1.0 (leaderboard master 2020-2022 + scenario_runner 0.9.1x).
LB1 = ScoringVariant(name="1.0", generation=1)

#: Leaderboard 2.0 (leaderboard/scenario_runner ``leaderboard-2.0`` branches).
LB2 = dataclasses.replace(
    LB1, name="2.0", generation=2,
    penalty_scenario_timeout=0.7, penalty_yield_emergency_vehicle=0.7, min_speed_base=0.7,
    timeout_initial_s=300.0,  # RouteTimeoutBehavior.MIN_TIMEOUT
    collision_ignore_radius_m=5.0, collision_forget_radius_m=5.0, collision_min_ego_speed_mps=0.1,
    outside_lane_allowance_m=0.5,
    stop_line_half_width_factor=0.6,
    stop_proximity_m=4.0, stop_lookahead_step_m=0.5, stop_lookahead_steps=8, stop_box_grow=1.2,
    round_scores=True,
)


def variant_by_name(name: str) -> ScoringVariant:
    key = str(name).strip().lower().replace("leaderboard", "").replace("lb", "").strip(" -_v")
    if key in ("1", "1.0"):
        return LB1
    if key in ("2", "2.0"):
        return LB2
    raise ValueError(f"unknown Leaderboard version {name!r}; use '1.0' or '2.0'")


# --------------------------------------------------------------------------------------------
# results


@dataclass
class RouteResult:
    """The outcome of one route. Scores on the Leaderboard's scales: completion and driving score
    in 0..100, penalty in 0..1."""

    variant: ScoringVariant
    route_id: str
    index: int
    status: str
    route_completion: float
    infraction_penalty: float
    driving_score: float
    infractions: dict[str, list[InfractionEvent]]
    route_length_m: float
    duration_game_s: float
    duration_system_s: float = -1.0
    distance_driven_m: float = 0.0
    offroad_distance_m: float = 0.0
    end_t: float = 0.0

    @property
    def num_infractions(self) -> int:
        return sum(len(v) for v in self.infractions.values())

    @property
    def completed(self) -> bool:
        return self.status in ("Completed", "Perfect")


def infraction_penalty(events: Sequence[InfractionEvent], variant: ScoringVariant) -> float:
    """Product of the per-event factors (statistics_manager ``compute_route_statistics``)."""
    fixed = variant.fixed_penalties()
    penalty = 1.0
    for ev in events:
        if ev.key in fixed:
            penalty *= fixed[ev.key]
        elif ev.key == OUTSIDE_ROUTE_LANES:  # 'increases' with base 0: 1 - p/100
            penalty *= 1.0 - ev.value / 100.0
        elif ev.key == MIN_SPEED and variant.min_speed_base is not None:  # 'decreases'
            penalty *= 1.0 - (1.0 - variant.min_speed_base) * (1.0 - ev.value / 100.0)
    return penalty


def _status(variant: ScoringVariant, completed: bool, infractions: dict, num_infractions: int) -> str:
    """The Leaderboard's status strings ('Failed - Agent ...' names the ending criterion)."""
    if completed:
        if variant.generation == 2 and num_infractions == 0:
            return "Perfect"
        return "Completed"
    failure = ""
    if infractions.get(ROUTE_TIMEOUT):
        failure = "Agent timed out"
    if infractions.get(ROUTE_DEVIATION):
        failure = "Agent deviated from the route"
    if infractions.get(VEHICLE_BLOCKED):
        failure = "Agent got blocked"
    return "Failed - " + failure if failure else "Failed"


# --------------------------------------------------------------------------------------------
# the scorer


class RouteScorer:
    """Scores one route, tick by tick.

    route_xy: (N,2) route polyline in the map frame (resampled here to 1 m unless
        ``resample=False``); lane_keys: optional per-point lane key (kept for adapters/debugging).
    lane_of(x, y) -> LaneSample | None: nearest driving-lane centre (outside lanes, wrong lane, red
        light tail lane, stop-sign lane direction). None = no lane information: no lane checks.
    parking_lane_of: the same for parking lanes (counted as 'inside lanes', as in CARLA).
    is_drivable(xy (2,)) -> bool: optional; off-road metres are reported (not penalised).
    stop_lines: traffic-light stop lines from the map; light_centers: light id -> (2,) gate point
        (default: mean of its stop lines). Lights passed to ``update`` that carry their own stop
        geometry (``yaw``, ``lanes``) and match no map line become stop lines too (see
        ``RedLightMonitor``). stop_signs: stop-sign trigger areas.
    speed_limit_mps: LB2 route-timeout speed limit, one number or one per route point (the
        Leaderboard reads the limit where the car is); ``update(speed_limit_mps=...)`` overrides it.
    ego_id: the ego's id inside ``actors``, skipped for collisions and traffic speed.
    ego_center_offset_m: distance from the EgoState pose forward to the vehicle box centre.
    """

    def __init__(self, route_xy, variant: ScoringVariant = LB2, start_t: float = 0.0, *,
                 lane_keys: Sequence | None = None, lane_of: LaneLookup | None = None,
                 parking_lane_of: LaneLookup | None = None,
                 is_drivable: Callable[[np.ndarray], bool] | None = None,
                 stop_lines: Sequence[StopLine] = (), light_centers: dict | None = None,
                 stop_signs: Sequence[StopSign] = (), speed_limit_mps: float = 30.0 / 3.6,
                 route_id: str | None = None, index: int = 0, ego_id: int | None = None,
                 ego_center_offset_m: float = 0.0, resample: bool = True):
        if not isinstance(variant, ScoringVariant):
            raise TypeError(f"variant must be a ScoringVariant (LB1 or LB2), got {type(variant).__name__}")
        limits = np.asarray(speed_limit_mps, dtype=np.float64)
        if not (np.isfinite(limits).all() and (limits > 0).all()):
            raise ValueError(f"speed_limit_mps must be positive, got {speed_limit_mps}")
        self.variant = variant
        self.route = route_xy if isinstance(route_xy, RoutePath) else \
            RoutePath.from_polyline(route_xy, lane_keys=lane_keys, step_m=1.0, resample=resample)
        self.start_t = float(start_t)
        self.route_id = f"RouteScenario_{index}" if route_id is None else str(route_id)
        self.index = int(index)
        self.lane_of = lane_of
        self.parking_lane_of = parking_lane_of
        self.is_drivable = is_drivable
        if limits.ndim == 0:
            self._speed_limits = np.full(len(self.route), float(limits))
        elif limits.ndim == 1 and self.route.source_index is not None and len(limits) == (
                int(self.route.source_index.max()) + 1 if isinstance(route_xy, RoutePath) else len(route_xy)):
            self._speed_limits = limits[self.route.source_index]  # per input point -> per sample
        else:
            raise ValueError(f"speed_limit_mps has {limits.size} values; give one number or one per route point")
        self.ego_id = ego_id
        self.ego_center_offset_m = float(ego_center_offset_m)

        x0, y0 = self.route.xy[0]
        self.completion = RouteCompletionMonitor(self.route, variant)
        self.in_route = InRouteMonitor(self.route, variant)
        self.blocked = BlockedMonitor(variant)
        self.timeout = RouteTimeoutMonitor(self.route, variant, self.start_t)
        self.collisions = CollisionMonitor(variant)
        self.outside = OutsideRouteLanesMonitor(self.route, variant, lane_of, parking_lane_of, x0, y0) \
            if lane_of is not None else None
        self.red_lights = RedLightMonitor(variant, stop_lines, light_centers)
        self.stop_signs = StopSignMonitor(variant, stop_signs) if stop_signs else None
        self.min_speed = MinSpeedMonitor(self.route, variant) if variant.generation == 2 else None
        self.yield_ev = YieldToEmergencyVehicleMonitor() if variant.generation == 2 else None

        self.events: list[InfractionEvent] = []
        self.done = False
        self._finished = False
        self.t = self.start_t
        self._last_xy: tuple[float, float] | None = None
        self.distance_driven_m = 0.0
        self.offroad_distance_m = 0.0

    # -- feeding ------------------------------------------------------------------------------

    def update(self, t: float, ego: EgoState, ego_box: tuple[float, float], actors: Boxes | None = None,
               static_boxes: Boxes | None = None, traffic_lights: Sequence[TrafficLight] = (),
               speed_limit_mps: float | None = None) -> list[InfractionEvent]:
        """Advance one tick; returns the events raised at this tick. No-op once the route ended."""
        if self.done:
            return []
        t = float(t)
        if t < self.t:
            raise ValueError(f"time went backwards: {t} < {self.t}")
        length, width = float(ego_box[0]), float(ego_box[1])
        if not (length > 0 and width > 0):
            raise ValueError(f"ego_box must be positive (length, width), got {ego_box}")
        if not all(math.isfinite(v) for v in (ego.x, ego.y, ego.yaw, ego.v)):
            raise ValueError(f"ego state has a non-finite value: {ego}")
        self.t = t
        x = ego.x + self.ego_center_offset_m * math.cos(ego.yaw)
        y = ego.y + self.ego_center_offset_m * math.sin(ego.yaw)
        speed = abs(float(ego.v))
        new: list[InfractionEvent] = []

        if self._last_xy is not None:
            step = math.hypot(x - self._last_xy[0], y - self._last_xy[1])
            self.distance_driven_m += step
            if self.is_drivable is not None and not self.is_drivable(np.array([x, y])):
                self.offroad_distance_m += step
        self._last_xy = (x, y)

        # collisions first: CARLA's sensor callbacks run during the world tick, before criteria
        new += self._collisions(t, x, y, ego.yaw, speed, length, width, actors, static_boxes)
        self.collisions.forget(t, x, y)

        lane = self.lane_of(x, y) if self.lane_of is not None else None
        if self.outside is not None:
            self.outside.step(x, y, ego.yaw, lane)
        ev = self.red_lights.step(t, x, y, ego.yaw, length / 2.0, traffic_lights, self.lane_of or (lambda *_: None))
        if ev:
            new.append(ev)
        if self.stop_signs is not None:
            ev = self.stop_signs.step(t, x, y, ego.yaw, speed, float(ego.v), lane, self.route, self.completion.index)
            if ev:
                new.append(ev)
        if self.min_speed is not None:
            ev = self.min_speed.step(t, x, y, speed, self._traffic_speeds(actors))
            if ev:
                new.append(ev)
        if self.yield_ev is not None:
            self.yield_ev.step(x, y, actors)

        completed = self.completion.step(x, y)
        ending = []
        for ev in (self.in_route.step(t, x, y), self.blocked.step(t, x, y, speed),
                   self.timeout.step(t, x, y, float(self._speed_limits[self.timeout.index])
                                     if speed_limit_mps is None else float(speed_limit_mps))):
            if ev:
                ending.append(ev)
        new += ending
        self.events += new
        if completed or ending:
            self.done = True
        return new

    def _collisions(self, t, x, y, yaw, speed, length, width, actors, static_boxes) -> list[InfractionEvent]:
        ego_corners = box_corners(x, y, yaw, length, width)
        reach = math.hypot(length, width) / 2.0
        contacts: list[tuple[int, int]] = []
        for boxes, scenery in ((actors, False), (static_boxes, True)):
            if boxes is None or len(boxes) == 0:
                continue
            # cheap circle pre-filter before the exact rectangle test
            r = np.hypot(boxes.size[:, 0], boxes.size[:, 1]) / 2.0
            near = np.hypot(boxes.center[:, 0] - x, boxes.center[:, 1] - y) <= r + reach
            if self.ego_id is not None and not scenery:
                near &= boxes.ids != self.ego_id
            idx = np.nonzero(near)[0]
            if len(idx) == 0:
                continue
            hit = idx[rectangles_overlap(ego_corners, boxes.select(idx).corners_xy())]
            for i in hit:
                if scenery:  # map geometry: CARLA reports id 0 and a static type
                    contacts.append((0, int(ObjectClass.STATIC)))
                else:
                    contacts.append((int(boxes.ids[i]), int(boxes.label[i])))
        out = []
        for other_id, other_class in sorted(contacts):
            ev = self.collisions.contact(t, x, y, speed, other_id, other_class)
            if ev:
                out.append(ev)
        return out

    def _traffic_speeds(self, actors: Boxes | None) -> np.ndarray:
        if actors is None or len(actors) == 0:
            return np.zeros(0)
        mask = actors.label == int(ObjectClass.VEHICLE)
        if self.ego_id is not None:
            mask &= actors.ids != self.ego_id
        return np.hypot(actors.velocity[mask, 0], actors.velocity[mask, 1])

    # -- scenario hooks (LB2) -------------------------------------------------------------------

    def _require_lb2(self, what: str) -> None:
        if self.variant.generation != 2:
            raise ValueError(f"{what} exists only in Leaderboard 2.0 scoring")

    def report_scenario_timeout(self, t: float, scenario_name: str = "") -> InfractionEvent:
        """A scenario gave up waiting for the agent (LB2 ScenarioTimeoutTest)."""
        self._require_lb2("scenario timeout")
        x, y = self._last_xy or tuple(self.route.xy[0])
        ev = InfractionEvent(SCENARIO_TIMEOUT, float(t), x, y, "Agent timed out a scenario",
                             other_class=scenario_name or None)
        self.events.append(ev)
        return ev

    def watch_emergency_vehicle(self, ev_id: int) -> None:
        """Start a YieldToEmergencyVehicle check for actor ``ev_id`` (LB2)."""
        self._require_lb2("yield to emergency vehicle")
        self.yield_ev.start(ev_id)

    def end_emergency_vehicle_watch(self, t: float, ev_id: int) -> InfractionEvent | None:
        """End that check: an infraction when the car is still ahead of the emergency vehicle."""
        self._require_lb2("yield to emergency vehicle")
        x, y = self._last_xy or tuple(self.route.xy[0])
        ev = self.yield_ev.stop(float(t), x, y, ev_id)
        if ev:
            self.events.append(ev)
        return ev

    def set_blocked_check_active(self, active: bool, t: float) -> None:
        """LB2 scenarios switch the blocked test off while they hold the car on purpose."""
        self.blocked.set_active(active, float(t))

    def set_wrong_direction_check_active(self, active: bool) -> None:
        """LB2 scenarios that make the car drive against traffic (e.g. passing an accident) switch
        the wrong-lane part of 'outside route lanes' off meanwhile."""
        if self.outside is not None:
            self.outside.wrong_direction_active = bool(active)

    # -- outcome ------------------------------------------------------------------------------

    @property
    def route_completion(self) -> float:
        return self.completion.percentage

    def finish(self, t: float | None = None) -> None:
        """End the route (idempotent): the criteria's 'terminate' step."""
        if self._finished:
            return
        self._finished = True
        self.done = True
        t = self.t if t is None else float(t)
        x, y = self._last_xy or tuple(self.route.xy[0])
        if self.min_speed is not None:
            ev = self.min_speed.finish(t, x, y)
            if ev:
                self.events.append(ev)
        if self.yield_ev is not None:
            for ev_id in list(self.yield_ev.watching):
                ev = self.yield_ev.stop(t, x, y, ev_id)
                if ev:
                    self.events.append(ev)

    def _all_events(self) -> list[InfractionEvent]:
        events = list(self.events)
        if self.outside is not None:
            x, y = self._last_xy or tuple(self.route.xy[0])
            ev = self.outside.event(self.t, x, y)
            if ev:
                events.append(ev)
        return events

    def current_scores(self) -> tuple[float, float, float]:
        """(route completion, penalty, driving score) so far, without ending the route."""
        pen = infraction_penalty(self._all_events(), self.variant)
        rc = self.completion.percentage
        return rc, pen, max(rc * pen, 0.0)

    def result(self, duration_system_s: float = -1.0) -> RouteResult:
        """Finish the route and return its result (``duration_system_s``: wall time, if known)."""
        self.finish()
        events = self._all_events()
        v = self.variant
        grouped: dict[str, list[InfractionEvent]] = {k: [] for k in v.infraction_keys}
        for ev in events:
            grouped.setdefault(ev.key, []).append(ev)
        rc = self.completion.percentage
        pen = infraction_penalty(events, v)
        ds = max(rc * pen, 0.0)
        game = self.t - self.start_t
        length = self.route.length_m
        if v.round_scores:
            rc, pen, ds = round(rc, 6), round(pen, 6), round(ds, 6)
            game, length = round(game, 3), round(length, 3)
            duration_system_s = round(duration_system_s, 3)
        n = sum(len(x) for x in grouped.values())
        status = _status(v, self.completion.completed, grouped, n)
        return RouteResult(v, self.route_id, self.index, status, rc, pen, ds, grouped, length, game,
                           duration_system_s, self.distance_driven_m, self.offroad_distance_m, self.t)


# --------------------------------------------------------------------------------------------
# Leaderboard JSON layout

_LABELS_1 = ["Avg. driving score", "Avg. route completion", "Avg. infraction penalty",
             "Collisions with pedestrians", "Collisions with vehicles", "Collisions with layout",
             "Red lights infractions", "Stop sign infractions", "Off-road infractions", "Route deviations",
             "Route timeouts", "Agent blocked"]
_VALUE_KEYS_1 = [COLLISION_PEDESTRIAN, COLLISION_VEHICLE, COLLISION_LAYOUT, RED_LIGHT, STOP_SIGN,
                 OUTSIDE_ROUTE_LANES, ROUTE_DEVIATION, ROUTE_TIMEOUT, VEHICLE_BLOCKED]
_LABELS_2 = _LABELS_1 + ["Yield emergency vehicles infractions", "Scenario timeouts", "Min speed infractions"]
_VALUE_KEYS_2 = _VALUE_KEYS_1 + [YIELD_EMERGENCY_VEHICLE, SCENARIO_TIMEOUT, MIN_SPEED]


def route_record(result: RouteResult) -> dict:
    """One entry of ``_checkpoint.records`` (route record of that Leaderboard version)."""
    infractions = {k: [ev.message for ev in evs] for k, evs in result.infractions.items()}
    scores = {"score_route": result.route_completion, "score_penalty": result.infraction_penalty,
              "score_composed": result.driving_score}
    meta = {"route_length": result.route_length_m, "duration_game": result.duration_game_s,
            "duration_system": result.duration_system_s}
    if result.variant.generation == 1:
        return {"route_id": result.route_id, "index": result.index, "status": result.status,
                "infractions": infractions, "scores": scores, "meta": meta}
    return {"index": result.index, "route_id": result.route_id, "status": result.status,
            "num_infractions": result.num_infractions, "infractions": infractions, "scores": scores,
            "meta": meta}


def _check_same_variant(results: Sequence[RouteResult]) -> ScoringVariant:
    if not results:
        raise ValueError("no route results to aggregate")
    variants = {r.variant.name for r in results}
    if len(variants) != 1:
        raise ValueError(f"cannot mix Leaderboard versions in one record: {sorted(variants)}")
    return results[0].variant


def _std(values: list[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / float(len(values) - 1))


def global_record(results: Sequence[RouteResult]) -> dict:
    """``_checkpoint.global_record``: score means (and sample std), status, and infractions per km.

    LB1: per key, the sum over routes of count / max(driven km of that route, 0.001), where driven
    km = route length x completion.
    LB2: per key, total count / max(total driven km, 0.001); for outside_route_lanes the total km
    driven outside the lanes (LB2 reads the metres back out of the event message and does not divide).
    """
    v = _check_same_variant(results)
    n = len(results)
    score_keys = ("score_composed", "score_route", "score_penalty")
    per_route = {"score_route": [r.route_completion for r in results],
                 "score_penalty": [r.infraction_penalty for r in results],
                 "score_composed": [r.driving_score for r in results]}
    means = {k: sum(per_route[k]) / n for k in score_keys}
    keys = v.infraction_keys

    if v.generation == 1:
        per_km = {k: 0.0 for k in keys}
        for r in results:
            km = max(r.route_completion / 100.0 * r.route_length_m / 1000.0, 0.001)
            for k in keys:
                per_km[k] += len(r.infractions.get(k, [])) / km
        status = "Completed"
        meta: dict = {}
        for r in results:
            if r.status != "Completed":
                status = "Failed"
                meta.setdefault("exceptions", []).append([r.route_id, r.index, r.status])
        std = {k: ("NaN" if n == 1 else _std(per_route[k], means[k])) for k in score_keys}
        return {"route_id": -1, "index": -1, "status": status, "infractions": per_km,
                "scores": {"score_route": means["score_route"], "score_penalty": means["score_penalty"],
                           "score_composed": means["score_composed"]},
                "meta": meta, "scores_std_dev": std}

    totals = {k: 0.0 for k in keys}
    km_driven = 0.0
    for r in results:
        km_driven += r.route_length_m / 1000.0 * r.route_completion / 100.0
        for k in keys:
            if k == OUTSIDE_ROUTE_LANES:
                evs = r.infractions.get(k, [])
                totals[k] += (round(evs[0].distance_m, 3) / 1000.0) if evs else 0.0
            else:
                totals[k] += len(r.infractions.get(k, []))
    km_driven = max(km_driven, 0.001)
    per_km = {k: round(totals[k] if k == OUTSIDE_ROUTE_LANES else totals[k] / km_driven, 3) for k in keys}
    status = "Perfect"
    exceptions = []
    for r in results:
        rs = "Failed" if "Failed" in r.status else r.status
        if rs == "Failed":
            exceptions.append([r.route_id, r.index, r.status])
            status = "Failed"
        elif status == "Perfect" and rs != "Perfect":
            status = rs
    std = {k: (0 if n == 1 else round(_std(per_route[k], means[k]), 3)) for k in score_keys}
    return {"index": -1, "route_id": -1, "status": status, "infractions": per_km,
            "scores_mean": {k: round(means[k], 6) for k in score_keys}, "scores_std_dev": std,
            "meta": {"total_length": sum(r.route_length_m for r in results),
                     "duration_game": sum(r.duration_game_s for r in results),
                     "duration_system": sum(r.duration_system_s for r in results),
                     "exceptions": exceptions}}


def results_json(results: Sequence[RouteResult], sensors: Sequence | None = None) -> dict:
    """The whole Leaderboard results document (the checkpoint file)."""
    v = _check_same_variant(results)
    g = global_record(results)
    scores = g["scores"] if v.generation == 1 else g["scores_mean"]
    value_keys, labels = (_VALUE_KEYS_1, list(_LABELS_1)) if v.generation == 1 else (_VALUE_KEYS_2, list(_LABELS_2))
    numbers = [scores["score_composed"], scores["score_route"], scores["score_penalty"]]
    numbers += [g["infractions"][k] for k in value_keys]
    # 1.0 writes '{:.3f}' strings, 2.0 str() of the already rounded numbers
    values = ["{:.3f}".format(x) for x in numbers] if v.generation == 1 else [str(x) for x in numbers]
    if v.generation == 1:  # save_global_record
        entry_status = "Finished with agent errors" if any("Agent" in r.status for r in results) else "Finished"
        eligible = True
    else:  # compute_global_statistics + ELIGIBLE_VALUES
        entry_status = "Finished"
        for r in results:
            if "Simulation crashed" in r.status:
                entry_status = "Crashed"
            elif "Agent's sensors were invalid" in r.status:
                entry_status = "Rejected"
        eligible = entry_status == "Finished"
    return {"_checkpoint": {"global_record": g, "progress": [len(results), len(results)],
                            "records": [route_record(r) for r in results]},
            "entry_status": entry_status, "eligible": eligible, "sensors": list(sensors or []),
            "values": values, "labels": labels, "leaderboard_version": v.name}


def write_results_json(path: str | Path, results: Sequence[RouteResult], sensors: Sequence | None = None) -> Path:
    """Write ``results_json`` to ``path`` atomically (temp file + rename); returns the path."""
    path = Path(path)
    doc = results_json(results, sensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# adapter from hdmap


def hdmap_lane_lookup(hdmap) -> LaneLookup:
    """``lane_of(x, y)`` over an ``hdmap.HDMap``: the nearest driving lane whatever its heading
    (like CARLA's ``get_waypoint(location, project_to_road=True)``), its centre point, direction,
    width and junction flag."""

    def lane_of(x: float, y: float) -> LaneSample | None:
        key, lateral, s = hdmap.nearest_lane(x, y)
        if key is None:
            return None
        lane = hdmap.lanes[key]
        # one segment lookup and scalar interpolation (called every tick: numpy's per-call overhead
        # on 1-element arrays cost more than the nearest-lane query itself)
        i = int(np.searchsorted(lane.s, s))
        i = min(max(i, 1), len(lane.s) - 1)
        s0, s1 = float(lane.s[i - 1]), float(lane.s[i])
        f = min(max((s - s0) / (s1 - s0), 0.0), 1.0) if s1 > s0 else 0.0
        (x0, y0), (x1, y1) = lane.centerline[i - 1].tolist(), lane.centerline[i].tolist()
        w0, w1 = float(lane.width[i - 1]), float(lane.width[i])
        return LaneSample(key, x0 + f * (x1 - x0), y0 + f * (y1 - y0), math.atan2(y1 - y0, x1 - x0),
                          w0 + f * (w1 - w0), bool(lane.is_junction))

    return lane_of


def hdmap_stop_lines(hdmap, max_advance_m: float = 30.0) -> list[StopLine]:
    """Traffic-light stop lines of an ``hdmap.HDMap``, one per governed lane, moved forward along
    the lane to the junction entrance as CARLA's ``RunningRedLightTest`` moves each light's
    waypoints ("advance them until the intersection"). A line that would move farther than
    ``max_advance_m`` is dropped: it sits on a lane that leaves the junction rather than enters it."""
    out = []
    for light in hdmap.traffic_lights:
        for key, segment in light.stop_lines.items():
            line = _junction_entrance(hdmap, str(light.id), key, np.asarray(segment, dtype=np.float64).mean(axis=0),
                                      max_advance_m)
            if line is not None:
                out.append(line)
    return out


def hdmap_light_centers(hdmap) -> dict:
    """Light id -> (2,) gate point: the middle of the light's map stop lines (CARLA gates the red
    light test on the light's trigger volume, which lies across the lanes at the signal)."""
    return {str(tl.id): np.mean([np.asarray(seg).mean(axis=0) for seg in tl.stop_lines.values()], axis=0)
            for tl in hdmap.traffic_lights if tl.stop_lines}


def _junction_entrance(hdmap, signal_id: str, key, point: np.ndarray, max_advance_m: float) -> StopLine | None:
    lane = hdmap.lanes[key]
    i = int(np.argmin(np.linalg.norm(lane.centerline - point, axis=1)))
    advanced = float(lane.length - lane.s[i])
    seen = {key}
    while True:
        nxt = [k for k in lane.successors if k in hdmap.lanes]
        if not nxt or any(hdmap.lanes[k].is_junction for k in nxt) or nxt[0] in seen:
            break
        lane = hdmap.lanes[nxt[0]]
        seen.add(lane.key)
        advanced += float(lane.length)
        if advanced > max_advance_m:
            return None
    if advanced > max_advance_m or lane.is_junction:
        return None
    end, before = lane.centerline[-1], lane.centerline[-2]
    return StopLine(signal_id, float(end[0]), float(end[1]), float(math.atan2(*(end - before)[::-1])),
                    float(lane.width[-1]), lane.key)


def hdmap_stop_signs(hdmap, depth_m: float = 3.0) -> list[StopSign]:
    """Stop-sign trigger areas of an ``hdmap.HDMap``: per governed lane, a lane-aligned box
    ``depth_m`` long ending at the stop line, one lane wide (CARLA's trigger volumes cover the lane
    just before the stop position)."""
    out = []
    for sign in hdmap.stop_signs:
        for key, segment in sign.stop_lines.items():
            line = _stop_line_from_segment(hdmap, str(sign.id), key, np.asarray(segment, dtype=np.float64))
            c, s = math.cos(line.yaw), math.sin(line.yaw)
            out.append(StopSign(str(sign.id), line.x - 0.5 * depth_m * c, line.y - 0.5 * depth_m * s,
                                0.5 * depth_m, 0.5 * line.lane_width, line.yaw,
                                float(sign.position[0]), float(sign.position[1])))
    return out


def _stop_line_from_segment(hdmap, signal_id: str, key, segment: np.ndarray) -> StopLine:
    lane = hdmap.lanes[key]
    center = segment.mean(axis=0)
    i = int(np.argmin(np.linalg.norm(lane.centerline - center, axis=1)))
    i = min(max(i, 1), len(lane.s) - 1)
    d = lane.centerline[i] - lane.centerline[i - 1]
    return StopLine(signal_id, float(center[0]), float(center[1]), float(math.atan2(d[1], d[0])),
                    float(np.linalg.norm(segment[1] - segment[0])), key)


def scorer_from_hdmap(hdmap, route, variant: ScoringVariant = LB2, start_t: float = 0.0, **kwargs) -> RouteScorer:
    """A RouteScorer for an ``hdmap.routing.Route`` on an ``hdmap.HDMap``.

    The route is used as sampled (hdmap routes are already ~1 m apart), with its per-point lane keys
    and speed limits; lanes, stop lines, stop signs and drivable area come from the map. Traffic
    light ids in ``update(traffic_lights=...)`` must be the map's signal ids.
    """
    kwargs.setdefault("lane_of", hdmap_lane_lookup(hdmap))
    kwargs.setdefault("is_drivable", lambda p: bool(hdmap.is_drivable(p)[0]))
    kwargs.setdefault("stop_lines", hdmap_stop_lines(hdmap))
    kwargs.setdefault("light_centers", hdmap_light_centers(hdmap))
    kwargs.setdefault("stop_signs", hdmap_stop_signs(hdmap))
    if getattr(route, "speed_limit", None) is not None and len(route.speed_limit) == len(route.path):
        kwargs.setdefault("speed_limit_mps", np.asarray(route.speed_limit, dtype=np.float64))
    kwargs.setdefault("resample", False)
    return RouteScorer(np.asarray(route.path, dtype=np.float64), variant, start_t,
                       lane_keys=list(route.lane_keys), **kwargs)


# --------------------------------------------------------------------------------------------
# benchmark: python -m sim.scoring [MAP] -- per-tick cost on a real map with traffic and scenery


def _benchmark(map_name: str = "junction4", actors: int = 100, scenery: int = 400, seed: int = 0) -> dict:
    import time

    from hdmap.map import load_map

    rng = np.random.default_rng(seed)
    hdmap = load_map(map_name)
    lanes = list(hdmap.lanes.values())
    longest = None
    first = lanes[0]
    for lane in lanes[1:60]:  # the longest route from the first lane to one of the next lanes' ends
        try:
            r = hdmap.route((*first.centerline[0], first.heading[0]), (*lane.centerline[-1], lane.heading[-1]))
        except Exception:  # unreachable goal
            continue
        if longest is None or r.total_length > longest.total_length:
            longest = r
    route = longest
    pts = np.concatenate([lane.centerline for lane in lanes])
    pick = rng.choice(len(pts), actors)
    traffic = Boxes(center=np.c_[pts[pick], np.zeros(actors)], size=np.tile([4.5, 2.0, 1.5], (actors, 1)),
                    yaw=rng.uniform(-math.pi, math.pi, actors), label=np.full(actors, int(ObjectClass.VEHICLE)),
                    velocity=rng.normal(0.0, 5.0, (actors, 2)), ids=np.arange(1, actors + 1))
    x0, y0, x1, y1 = hdmap.bounds
    things = Boxes(center=np.c_[rng.uniform(x0, x1, scenery), rng.uniform(y0, y1, scenery), np.zeros(scenery)],
                   size=np.tile([3.0, 3.0, 5.0], (scenery, 1)), yaw=np.zeros(scenery),
                   label=np.full(scenery, int(ObjectClass.STATIC)))
    lights = [TrafficLight(id=tl.id, state=LightState.RED if i % 2 else LightState.GREEN, position=tl.position)
              for i, tl in enumerate(hdmap.traffic_lights)]
    out = {"map": hdmap.name, "route_m": round(route.total_length, 1), "actors": actors, "scenery": scenery}
    for variant in (LB1, LB2):
        scorer = scorer_from_hdmap(hdmap, route, variant)
        ticks, t0 = 0, time.perf_counter()
        for i in range(len(route) - 1):
            for f in (0.25, 0.5, 0.75):
                p = route.path[i] + f * (route.path[i + 1] - route.path[i])
                scorer.update(ticks * 0.05, EgoState(x=p[0], y=p[1], yaw=route.yaw[i], v=5.0), (4.9, 2.1),
                              traffic, things, lights)
                ticks += 1
        wall = time.perf_counter() - t0
        res = scorer.result()
        out[variant.name] = {"ticks": ticks, "us_per_tick": round(wall / ticks * 1e6), "status": res.status,
                             "infractions": {k: len(v) for k, v in res.infractions.items() if v}}
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(_benchmark(*(sys.argv[1:2] or ["junction4"])), indent=1))
