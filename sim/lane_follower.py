"""A simple privileged driver for ``adstack sim``: follow lane centres, keep distance, stop at red.

Not the project's planner: it reads ground truth from the ``WorldState`` and the lane centres of
the map (``carla.Map`` waypoints, converted to our frame by ``hdmap.coords``). Steering is pure
pursuit on the rear axle towards a point ``lookahead`` metres ahead on the lane centre; speed
follows the Intelligent Driver Model (Treiber et al. 2000) behind the nearest road user or red or
yellow stop line on the path. At a junction the branch is drawn from a seeded generator, so a run
is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from adstack.types import Command, LightState
from sim.vehicle import VehicleParams


@dataclass
class LaneFollowerConfig:
    target_speed: float = 8.0  # m/s
    lookahead_min: float = 4.0  # m
    lookahead_time: float = 0.8  # s, lookahead grows with speed
    path_step: float = 1.0  # m between path points
    horizon: float = 60.0  # m of path kept ahead
    corridor_margin: float = 0.4  # m added to half widths when deciding what is in the path
    time_headway: float = 1.5  # s (IDM T)
    min_gap: float = 3.0  # m bumper to bumper at standstill (IDM s0)
    accel: float = 1.5  # m/s^2 (IDM a)
    comfortable_decel: float = 2.5  # m/s^2 (IDM b)
    stop_on_yellow: bool = True


class LaneFollower:
    def __init__(self, carla_map, vehicle: VehicleParams, config: LaneFollowerConfig | None = None, seed: int = 0):
        self.carla_map = carla_map
        self.vehicle = vehicle
        self.config = config or LaneFollowerConfig()
        self.rng = np.random.default_rng(seed)
        self._path_wps: list = []  # carla waypoints ahead
        self._path_points: list = []  # their (x, y), map frame
        self._path_xy = np.zeros((0, 2))

    # --- path --------------------------------------------------------------------------------------

    def _start(self, x: float, y: float):
        import carla
        from hdmap.coords import ros_to_carla_location
        wp = self.carla_map.get_waypoint(ros_to_carla_location(x, y, 0.0), project_to_road=True,
                                         lane_type=carla.LaneType.Driving)
        self._path_wps = [wp]
        self._path_points = [self._xy(wp)]

    @staticmethod
    def _xy(waypoint) -> tuple[float, float]:
        from hdmap.coords import carla_location_to_ros
        x, y, _ = carla_location_to_ros(waypoint.transform.location)
        return x, y

    def _update_path(self, x: float, y: float, yaw: float) -> None:
        cfg = self.config
        if not self._path_wps:
            self._start(x, y)
        # Drop points behind the rear axle (keep one so the path starts behind us).
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        drop = 0
        while len(self._path_wps) - drop > 2:
            nx, ny = self._path_points[drop + 1]
            if (nx - x) * cos_yaw + (ny - y) * sin_yaw < 0:
                drop += 1
            else:
                break
        del self._path_wps[:drop], self._path_points[:drop]
        near = self._path_points[0]
        if math.hypot(near[0] - x, near[1] - y) > 8.0:  # lost the path (e.g. pushed off): start again
            self._start(x, y)
        while len(self._path_wps) * cfg.path_step < cfg.horizon:
            options = self._path_wps[-1].next(cfg.path_step)
            if not options:
                break
            options = sorted(options, key=lambda w: (w.road_id, w.lane_id, w.s))
            chosen = options[int(self.rng.integers(len(options)))] if len(options) > 1 else options[0]
            self._path_wps.append(chosen)
            self._path_points.append(self._xy(chosen))
        self._path_xy = np.array(self._path_points)

    # --- control -----------------------------------------------------------------------------------

    def step(self, state) -> Command:
        ego, cfg, p = state.ego, self.config, self.vehicle
        self._update_path(ego.x, ego.y, ego.yaw)
        path = self._path_xy
        if len(path) < 2:
            return Command(0.0, -p.max_decel, ego.stamp)
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        ego_xy = np.array([ego.x, ego.y])
        s_ego = s[int(np.argmin(np.linalg.norm(path - ego_xy, axis=1)))]

        # Pure pursuit from the rear axle.
        lookahead = max(cfg.lookahead_min, cfg.lookahead_time * ego.v)
        target = path[min(int(np.searchsorted(s, s_ego + lookahead)), len(path) - 1)]
        dx, dy = target - ego_xy
        local_y = -math.sin(ego.yaw) * dx + math.cos(ego.yaw) * dy
        dist2 = max(dx * dx + dy * dy, 1e-6)
        steer = math.atan(2.0 * p.wheelbase * local_y / dist2)

        gap, lead_speed = self._nearest_obstacle(state, path, s, s_ego)
        accel = self._idm(ego.v, gap, lead_speed)
        return Command(float(np.clip(steer, -p.max_steer, p.max_steer)), float(accel), ego.stamp)

    def _nearest_obstacle(self, state, path, s, s_ego) -> tuple[float, float]:
        """Bumper-to-bumper gap (m) to the first thing on the path ahead and its speed along it."""
        cfg, p = self.config, self.vehicle
        front = p.length - p.rear_overhang  # rear axle -> front bumper
        best_gap, best_speed = math.inf, cfg.target_speed
        actors = state.actors
        if len(actors):  # only those that can be near the path ahead
            reach = float(s[-1]) + 10.0
            actors = actors.select(np.hypot(actors.center[:, 0] - state.ego.x, actors.center[:, 1] - state.ego.y) < reach)
        if len(actors):
            distance, k = cKDTree(path).query(actors.center[:, :2])  # nearest path point per actor
            half = 0.5 * np.maximum(actors.size[:, 1], actors.size[:, 0] * 0.5)
            on_path = distance < half + 0.5 * p.width + cfg.corridor_margin
            ahead = s[k] - s_ego > 0.0
            for i in np.flatnonzero(on_path & ahead):
                gap = s[k[i]] - s_ego - front - 0.5 * actors.size[i, 0]
                if gap < best_gap:
                    tangent = path[min(k[i] + 1, len(path) - 1)] - path[max(k[i] - 1, 0)]
                    tangent /= max(np.linalg.norm(tangent), 1e-9)
                    best_gap, best_speed = gap, max(0.0, float(actors.velocity[i] @ tangent))
        stop_states = {LightState.RED} | ({LightState.YELLOW} if cfg.stop_on_yellow else set())
        lights = state.traffic_lights
        if lights and len(path) >= 2:
            positions = np.array([light.position for light in lights])
            d = np.linalg.norm(positions[:, None, :] - path[None], axis=2)  # (L, K)
            k_all = np.argmin(d, axis=1)
            near_path = np.flatnonzero(d[np.arange(len(lights)), k_all] <= 2.0)
            path_lanes = {(w.road_id, w.section_id, w.lane_id) for w in self._path_wps} if len(near_path) else set()
            for j in near_path:
                light, k = lights[j], int(k_all[j])
                # The state of the junction lane we will take, where the light says (turns differ).
                lane_states = getattr(light, "lane_states", {})
                light_state = next((st for key, st in lane_states.items() if key in path_lanes), light.state)
                if light_state not in stop_states or k + 1 >= len(path):
                    continue
                yaw = getattr(light, "yaw", None)
                heading = math.atan2(*(path[k + 1] - path[k])[::-1])
                if yaw is not None and abs(math.atan2(math.sin(heading - yaw), math.cos(heading - yaw))) > 0.6:
                    continue
                gap = s[k] - s_ego - front
                if gap > -0.5 and gap + 1.0 < best_gap:  # passed the line already: keep going
                    best_gap, best_speed = gap + 1.0, 0.0
        return best_gap, best_speed

    def _idm(self, v: float, gap: float, lead_speed: float) -> float:
        cfg, p = self.config, self.vehicle
        free = 1.0 - (v / max(cfg.target_speed, 0.1)) ** 4
        if math.isinf(gap):
            return float(np.clip(cfg.accel * free, -p.max_decel, p.max_accel))
        desired = cfg.min_gap + v * cfg.time_headway + v * (v - lead_speed) / (2 * math.sqrt(cfg.accel * cfg.comfortable_decel))
        interaction = (max(desired, cfg.min_gap) / max(gap, 0.1)) ** 2
        return float(np.clip(cfg.accel * (free - interaction), -p.max_decel, p.max_accel))
