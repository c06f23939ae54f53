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
from dataclasses import dataclass, field
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
    "results_json", "write_results_json", "scorer_from_hdmap",
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
    stop_lines: traffic-light stop lines; light_centers: light id -> (2,) gate point (default: mean
        of its stop lines); stop_signs: stop-sign trigger areas.
    speed_limit_mps: LB2 route-timeout speed limit (per tick it can be overridden in ``update``).
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
        if speed_limit_mps <= 0:
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
        self.speed_limit_mps = float(speed_limit_mps)
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
        self.red_lights = RedLightMonitor(variant, stop_lines, light_centers) if stop_lines else None
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
        if self.red_lights is not None:
            states = {str(tl.id): tl.state for tl in traffic_lights}
            ev = self.red_lights.step(t, x, y, ego.yaw, length / 2.0, states, self.lane_of or (lambda *_: None))
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
                   self.timeout.step(t, x, y, self.speed_limit_mps if speed_limit_mps is None else speed_limit_mps)):
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
    if v.generation == 1:
        s = g["scores"]
        values = ["{:.3f}".format(x) for x in
                  [s["score_composed"], s["score_route"], s["score_penalty"]] + [g["infractions"][k] for k in _VALUE_KEYS_1]]
        labels = list(_LABELS_1)
    else:
        s = g["scores_mean"]
        values = [str(x) for x in
                  [s["score_composed"], s["score_route"], s["score_penalty"]] + [g["infractions"][k] for k in _VALUE_KEYS_2]]
        labels = list(_LABELS_2)
    entry_status = "Finished" if v.generation == 2 else (
        "Finished with agent errors" if any("Agent" in r.status for r in results) else "Finished")
    return {"_checkpoint": {"global_record": g, "progress": [len(results), len(results)],
                            "records": [route_record(r) for r in results]},
            "entry_status": entry_status, "eligible": True, "sensors": list(sensors or []),
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


def scorer_from_hdmap(hdmap, route, variant: ScoringVariant = LB2, start_t: float = 0.0, **kwargs) -> RouteScorer:
    """Build a RouteScorer from an ``hdmap.HDMap`` and an ``hdmap`` route (see sim/README.md)."""
    from sim import scoring_hdmap  # deferred: keeps the core importable without carla

    return scoring_hdmap.build_scorer(hdmap, route, variant, start_t, **kwargs)
