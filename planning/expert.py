"""The privileged expert: a rule-based planner that sees the ground truth.

It follows the route's lanes (the route's dense path, lane changes already blended in by
``hdmap.routing``) and plans the speed along it with one Intelligent Driver Model against every
constraint: the route's speed limits and curves, leaders, anything standing in or crossing the path
(pedestrians always yielded to), red and yellow lights, stop signs and the route's end. Where it has
been stopped for a long time by actors that never clear (a junction deadlock), it narrows its margins
and creeps. Output: a ``Trajectory`` (K x [x, y, yaw, v, t]) along the route from the ego's position,
which ``control.Controller`` follows. Used as the data source and as the baseline to beat.

``Expert(hdmap, route, config).step(ego, actors, traffic_lights, t) -> Trajectory``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adstack.types import Boxes, EgoState, ObjectClass, TrafficLight, Trajectory
from planning.actors import (KIND_ADJACENT, KIND_CROSSING, KIND_LEADER, KIND_STANDING, actor_obstacles,
                             pedestrians_crossing_near)
from planning.expert_config import ExpertConfig
from planning.lane_change import LaneChanges
from planning.route_view import RouteView
from planning.signals import StopSigns, light_stop_lines
from planning.speed_profile import simulate_on_envelope

JUNCTION_LOOKAHEAD_M = 30.0  # look this far ahead for the next junction to clear before entering it
CROSSED_LANE_WIDTH_M = 3.5  # extra standstill gap to a crossing vehicle: room for one more lane of cross traffic
QUEUE_SPEED_MPS = 1.0  # a leader slower than this past a junction is a queue the ego waits for before the junction
KIND_QUEUE = 4  # a leader waited for at the junction's entrance (no room past the junction)
_KIND_NAMES = {KIND_LEADER: "leader", KIND_STANDING: "in_path", KIND_CROSSING: "yield", KIND_ADJACENT: "adjacent",
               KIND_QUEUE: "queue"}


@dataclass
class ExpertDebug:
    """Why the expert did what it did on its last step (for logs, labels and tests)."""

    # free | route_end | red_light:<id> | red_light_hold:<id> | yellow_light:<id> | stop_sign:<s> |
    # lane_change_gap:<s> | leader:<id> | in_path:<id> | yield:<id> | adjacent:<id> | queue:<id>
    reason: str = "init"
    accel: float = 0.0  # IDM acceleration request of the first step
    route_s: float = 0.0  # ego (rear axle) arc length along the route
    lateral_m: float = 0.0  # ego offset from the route, left positive
    progress: float = 0.0  # route_s / route length
    n_obstacles: int = 0
    deadlock: bool = False
    stop_lines: list = field(default_factory=list)


class Expert:
    def __init__(self, hdmap, route, config: ExpertConfig | None = None):
        self.config = config or ExpertConfig()
        self.route = RouteView(hdmap, route, self.config)
        self.stop_signs = StopSigns(self.route, self.config)
        self.lane_changes = LaneChanges(hdmap, self.route, self.config.lane_change)
        self.debug = ExpertDebug()
        self._last_t: float | None = None
        self._stuck_s = 0.0  # seconds stopped behind actors
        self._relaxed_until_s: float | None = None  # route arc length until which deadlock mode holds

    @property
    def done(self) -> bool:
        """True once the ego has reached the route's end."""
        return self.debug.route_s >= self.route.length - 1.0

    def step(self, ego: EgoState, actors: Boxes | None, traffic_lights: list[TrafficLight] | None, t: float) -> Trajectory:
        cfg = self.config
        route = self.route
        dt = 0.0 if self._last_t is None else max(t - self._last_t, 0.0)
        self._last_t = t
        ego_xy = np.array([ego.x, ego.y], dtype=np.float64)
        v = max(float(ego.v), 0.0)
        i, s_ego, lateral = route.locate(ego_xy)
        front = cfg.ego.rear_axle_to_front_m
        s_front = s_ego + front
        rear = s_ego - (cfg.ego.length_m - front)

        v_cap_here = float(np.interp(s_ego, route.s, route.speed_envelope))
        horizon = max(cfg.horizon_min_m, cfg.horizon_time_s * max(v_cap_here, v)) + front
        i_end = int(np.searchsorted(route.s, s_ego + horizon)) + 1
        window = slice(max(i - 2, 0), min(i_end + 1, len(route.s)))

        # Standing constraints: lights, stop signs, the route's end (the front may pass it a little).
        stop_s, stop_why = light_stop_lines(traffic_lights, route, window, s_front, rear, v, cfg)
        sign_s, sign_why = self.stop_signs.stop_lines(s_front, v, t)
        stop_s, stop_why = stop_s + sign_s, stop_why + sign_why
        for s_hold in self.lane_changes.hold_lines(actors, ego_xy, v, s_ego, s_front, cfg.ego.length_m):
            stop_s.append(s_hold)
            stop_why.append(f"lane_change_gap:{s_hold:.0f}")
        stop_s.append(route.length + front + 1.0)
        stop_why.append("route_end")

        relaxed = self._relaxed_until_s is not None and s_ego < self._relaxed_until_s
        a_max = cfg.idm.max_accel_mps2

        def arrival_time(s_query):
            """Time for the ego front to reach s if it went now: accelerate to the limit, then cruise."""
            d = np.maximum(np.asarray(s_query, dtype=np.float64) - s_front, 0.0)
            v_top = max(v_cap_here, v, 0.5)
            d_acc = (v_top ** 2 - v ** 2) / (2 * a_max)
            t_acc = (v_top - v) / a_max
            t_in_acc = (np.sqrt(v ** 2 + 2 * a_max * np.minimum(d, d_acc)) - v) / a_max
            return np.where(d <= d_acc, t_in_acc, t_acc + (d - d_acc) / v_top)

        obstacles = actor_obstacles(actors, route, window, ego_xy, s_front, rear, arrival_time, cfg, relaxed, v)
        if not relaxed:
            for s_hold, ped_id in self._exit_crossing_holds(actors, window, s_front):
                stop_s.append(s_hold)
                stop_why.append(f"yield:{ped_id}")
        if not relaxed:  # in deadlock mode creep towards the conflict instead
            self._keep_clear_of_the_near_lane(obstacles)
            self._wait_at_junction_entry(obstacles, s_front)
        self._stop_off_crossings(obstacles, s_front)
        n_stop = len(stop_s)
        s_obs = np.concatenate([np.asarray(stop_s), obstacles.s])
        v_obs = np.concatenate([np.zeros(n_stop), obstacles.speed])
        gaps = np.concatenate([np.full(n_stop, cfg.idm.min_gap_stop_line_m), obstacles.min_gap])

        creep = cfg.creep_speed_mps if relaxed else math.inf
        env_s, env_v = route.s, route.speed_envelope

        # Slow down (pre-braked at the envelope's rate) to pass pedestrians at the kerb.
        kerb = [float(x) for x in np.sort(obstacles.caution_s)[:3]]
        kerb_v2, kerb_b = cfg.actors.kerb_speed_mps ** 2, 2.0 * cfg.speed.envelope_decel_mps2

        t_sim, s_sim, v_sim, accel, which = simulate_on_envelope(
            v, s_front, s_obs, v_obs, gaps, env_s, env_v, front, cfg.speed.envelope_preview_s, creep, kerb,
            kerb_v2, kerb_b, cfg.idm, cfg.profile_step_s, cfg.profile_duration_s, s_front + horizon)

        if which < 0:
            reason = "free"
        elif which < n_stop:
            reason = stop_why[which]
        else:
            k = which - n_stop
            reason = f"{_KIND_NAMES[int(obstacles.kind[k])]}:{int(obstacles.ids[k])}"
        self._update_deadlock(reason, v, dt, s_ego)

        traj = self._trajectory(s_ego, front, window, t_sim, s_sim, v_sim, t)
        self.debug = ExpertDebug(reason=reason, accel=float(accel), route_s=s_ego, lateral_m=lateral,
                                 progress=s_ego / max(route.length, 1e-6), n_obstacles=len(s_obs),
                                 deadlock=relaxed, stop_lines=[float(x) for x in stop_s])
        return traj

    # ------------------------------------------------------------------ helpers
    def _exit_crossing_holds(self, actors, window, s_front: float) -> list[tuple[float, int]]:
        """Do not enter a junction while pedestrians cross where the route leaves it: the ego would
        have to stop inside the junction, in the way of cross traffic. Wait at the entry instead."""
        runs = self.route.junction_runs
        ahead = runs[(runs[:, 0] > s_front - 0.5) & (runs[:, 0] < s_front + JUNCTION_LOOKAHEAD_M)]
        if len(ahead) == 0:
            return []
        entry, exit_ = ahead[0]
        band = self.config.actors.crossing_band_m
        ac = self.config.actors
        ids = pedestrians_crossing_near(actors, self.route, window, exit_ - band - 1.0, exit_ + band,
                                        self.config.ego.width_m / 2 + ac.lateral_margin_pedestrian_m + ac.kerb_zone_m,
                                        ac.moving_speed_mps)
        return [(float(entry), int(ids[0]))] if len(ids) else []

    def _stop_off_crossings(self, obstacles, s_front: float) -> None:
        """A stop for a pedestrian must not leave the bumper on a crossing, where the next
        pedestrian would walk into the standing car: stop before the crossing band instead."""
        bands = self.route.crossing_bands
        if len(obstacles.s) == 0 or len(bands) == 0:
            return
        peds = np.flatnonzero((obstacles.label == int(ObjectClass.PEDESTRIAN)) & (obstacles.kind != KIND_LEADER))
        for k in peds:
            stop_front = obstacles.s[k] - obstacles.min_gap[k]
            inside = (bands[:, 0] < stop_front) & (stop_front < bands[:, 1]) & (s_front < bands[:, 0])
            if inside.any():
                obstacles.s[k] = bands[inside, 0].min() - 0.5 + obstacles.min_gap[k]

    def _keep_clear_of_the_near_lane(self, obstacles) -> None:
        """Yield to a crossing vehicle one lane further back than where it enters the path: the
        next one may cross in the nearer lane of the crossed road, and a car standing with its nose
        in that lane is hit. At a junction the wait moves to the junction's entrance anyway."""
        crossing_vehicle = (obstacles.kind == KIND_CROSSING) & (obstacles.label != int(ObjectClass.PEDESTRIAN))
        if crossing_vehicle.any():
            j = np.clip(np.searchsorted(self.route.s, obstacles.s), 0, len(self.route.s) - 1)
            crossing_vehicle &= ~np.isfinite(self.route.hold_entry_s[j])
            obstacles.min_gap = np.where(crossing_vehicle, obstacles.min_gap + CROSSED_LANE_WIDTH_M, obstacles.min_gap)

    def _wait_at_junction_entry(self, obstacles, s_front: float) -> None:
        """Yield before a junction, not inside it: a crossing or standing actor whose conflict point
        lies in a junction the ego has not entered yet, or on the crossing just past its exit, is
        waited for at the junction's entrance.

        Do not block the junction either: a leader standing (or crawling) so close past the
        junction that the ego, queued behind it, would stand inside the junction or on its exit
        crossing is waited for at the entrance too, until there is room beyond the exit. A car
        standing in a junction is run into by cross traffic, and pedestrians walk into a car
        standing on their crossing."""
        route = self.route
        if len(obstacles.s) == 0 or not route.is_junction.any():
            return
        j = np.clip(np.searchsorted(route.s, obstacles.s), 0, len(route.s) - 1)
        entry = route.hold_entry_s[j]
        move = (obstacles.kind == KIND_STANDING) | (obstacles.kind == KIND_CROSSING)
        move &= np.isfinite(entry) & (s_front < entry - 0.5)
        runs = route.junction_runs
        ahead = runs[runs[:, 0] > s_front + 0.5]
        if len(ahead):
            band = self.config.actors.crossing_band_m
            queue = (obstacles.kind == KIND_LEADER) & (obstacles.speed < QUEUE_SPEED_MPS)
            stop_front = obstacles.s - obstacles.min_gap
            # The first junction ahead whose entry the leader is past and whose exit crossing the
            # ego, stopped behind it, would not have cleared.
            k = np.clip(np.searchsorted(ahead[:, 0], obstacles.s) - 1, 0, len(ahead) - 1)
            blocked = queue & (ahead[k, 0] < obstacles.s) & (stop_front < ahead[k, 1] + band + 0.5)
            blocked &= (s_front < ahead[k, 0] - 0.5)
            # Only the first junction ahead: the ego is never held more than one junction early.
            blocked &= ahead[k, 0] == ahead[0, 0]
            entry = np.where(blocked, ahead[k, 0], entry)
            move |= blocked
            obstacles.speed = np.where(blocked, 0.0, obstacles.speed)
            obstacles.kind = np.where(blocked, KIND_QUEUE, obstacles.kind)
        obstacles.s = np.where(move, np.minimum(obstacles.s, np.nan_to_num(entry, nan=np.inf)), obstacles.s)

    def _update_deadlock(self, reason: str, v: float, dt: float, s_ego: float) -> None:
        """Stopped behind actors that are not moving along with us for too long -> relaxed mode."""
        cfg = self.config
        # Queues (leaders, even standing ones) resolve themselves; crossing and blocking actors may not,
        # nor a queue that does not leave room past a junction (its head may be stuck in it): after
        # deadlock_time_s the ego enters the junction and queues there after all.
        blocked_by_actor = reason.startswith(("in_path:", "yield:", "queue:"))
        if v < 0.3 and blocked_by_actor:
            self._stuck_s += dt
        elif v > 1.0 or not blocked_by_actor:
            self._stuck_s = 0.0
        if self._stuck_s > cfg.deadlock_time_s and (self._relaxed_until_s is None or s_ego >= self._relaxed_until_s):
            self._relaxed_until_s = s_ego + 15.0
            self._stuck_s = 0.0

    def _trajectory(self, s_ego, front, window, t_sim, s_sim, v_sim, stamp) -> Trajectory:
        """Route points ahead of the ego with the simulated speed and time at each."""
        route = self.route
        idx = np.arange(window.start, window.stop)
        idx = idx[route.s[idx] > s_ego + 0.05]
        s_pts = np.concatenate([[s_ego], route.s[idx]])
        xy = np.vstack([[np.interp(s_ego, route.s, route.path[:, 0]), np.interp(s_ego, route.s, route.path[:, 1])],
                        route.path[idx]])
        yaw = np.concatenate([[route.yaw[max(window.start, min(int(np.searchsorted(route.s, s_ego)), len(route.s) - 1))]],
                              route.yaw[idx]])
        s_front_pts = s_pts + front
        v = np.interp(s_front_pts, s_sim, v_sim)
        t = np.interp(s_front_pts, s_sim, t_sim)
        beyond = s_front_pts > s_sim[-1]
        if beyond.any():
            v_end = v_sim[-1] if v_sim[-1] > 0.05 else 0.0
            v[beyond] = v_end
            t[beyond] = t_sim[-1] + (s_front_pts[beyond] - s_sim[-1]) / max(v_end, 0.1)
        return Trajectory(np.column_stack([xy, yaw, v, t]), frame_id="map", stamp=stamp)
