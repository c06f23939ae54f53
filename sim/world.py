"""The embedded world: the map's road network, SUMO traffic and lights, the ego, a spinning lidar.

One ``tick(command)`` advances everything by ``dt`` in a fixed order, synchronously:

1. the ego (kinematic bicycle, ``sim.vehicle``) applies the command within its actuator limits;
2. SUMO's step to this tick, launched at the end of the last one, is collected: vehicles,
   cyclists, pedestrians and traffic lights, read back into the map frame;
3. the step to the next tick is launched: the ego is placed into SUMO (``moveToXY``) where it will
   be, so that traffic reacts to it (``BicycleModel.predict`` with this tick's command; the next
   command is not known yet), and SUMO steps by ``dt``. With ``traffic_process`` (the default)
   SUMO does this in its own process (``sim.traffic_process``) while the lidar casts and the
   caller plans; without, right here (one core; the same states bit for bit);
4. the lidar casts the share of its revolution that falls into this tick (``sim.lidar``); a full
   revolution (every 1 / rate_hz s), stamped with the time of the tick that completed it, comes
   back as ``WorldState.lidar`` on the next tick (``lidar_delivery: next_tick``, the default: one
   tick of sensor latency, during which the last share is cast on the lidar's background thread
   while SUMO steps) or on that same tick (``same_tick``). ``WorldState.lidar_ego`` and
   ``lidar_actors`` are the ego and the actors at the frame's stamp, to go with it.

Same map, config, seed and commands -> the same states, bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from adstack.config import load_params
from adstack.errors import DataError
from adstack.types import Boxes, Command, EgoState, PointCloud, TrafficLight
from sim.traffic import Traffic, TrafficConfig, build_net
from sim.traffic_process import TrafficProcess
from sim.vehicle import BicycleModel, VehicleParams

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "world.param.yaml"


@dataclass
class WorldConfig:
    dt: float = 0.05  # s per tick (20 Hz)
    lidar: bool = True  # cast the lidar (sim/lidar.py); off: WorldState.lidar stays None
    lidar_params: str = ""  # a LidarConfig param file; "" -> sim/config/lidar.param.yaml
    # "spinning": each tick casts the columns swept during it (a real sensor's rolling sweep);
    # "snapshot": the whole revolution at once, on the tick it completes (exact labels, cheaper).
    lidar_mode: str = "spinning"
    scenery: bool = True  # static scenery in the lidar (sim/scenery.py), where available
    # spinning mode: "next_tick" delivers a frame one tick after the tick that completes it (its
    # last share is cast in the background meanwhile: ~20 % faster ticks); "same_tick" on that tick
    lidar_delivery: str = "next_tick"
    # SUMO steps in its own process, in parallel with the lidar and the caller (sim/traffic_process.py)
    traffic_process: bool = True
    # spinning mode: the casts run in their own process (sim/lidar_process.py), not in a thread ...
    lidar_process: bool = True
    # ... while the caller spends at least this long between ticks (a planner, scoring, logging: the
    # other core has time for them); with a lighter caller this thread casts while SUMO steps
    lidar_process_caller_ms: float = 0.8
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    vehicle: VehicleParams = field(default_factory=VehicleParams)

    def __post_init__(self):
        if not 0 < self.dt <= 0.5:
            raise DataError(f"dt must be in (0, 0.5] s, got {self.dt}", "world")
        if self.lidar_mode not in ("spinning", "snapshot"):
            raise DataError(f"lidar_mode must be 'spinning' or 'snapshot', got {self.lidar_mode!r}", "world")
        if self.lidar_delivery not in ("next_tick", "same_tick"):
            raise DataError(f"lidar_delivery must be 'next_tick' or 'same_tick', got {self.lidar_delivery!r}",
                            "world")

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "WorldConfig":
        return load_params(cls, path)


@dataclass
class WorldState:
    t: float  # simulation time (s)
    tick: int
    ego: EgoState  # rear-axle pose (base_link), map frame
    actors: Boxes  # every SUMO road user but the ego, map frame, ids stable per actor
    traffic_lights: list[TrafficLight]  # one per (signal, incoming lane); see sim.traffic.StopLineSignal
    lidar: PointCloud | None = None  # a complete revolution, sensor frame, stamped; None on other ticks
    lidar_labels: np.ndarray | None = None  # (N,) ObjectClass per lidar point (0: ground)
    ego_box: Boxes | None = None  # the ego's own box, map frame, id 0
    lidar_ego: EgoState | None = None  # the ego at lidar.stamp (the sensor pose of the completing tick)
    lidar_actors: Boxes | None = None  # the actors at lidar.stamp, map frame (ground truth for the frame)

    @cached_property
    def actors_ego(self) -> Boxes:
        """The actors in the ego frame (base_link); velocities absolute, rotated. Computed on first
        use: most consumers want the map frame, and the transform costs 5 % of a tick."""
        return boxes_to_frame(self.actors, self.ego.x, self.ego.y, self.ego.z, self.ego.yaw, "base_link")


def boxes_to_frame(boxes: Boxes, x: float, y: float, z: float, yaw: float, frame_id: str) -> Boxes:
    """Express map-frame ``boxes`` in the frame at pose (x, y, z, yaw): positions, yaws, velocities."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot_t = np.array([[c, s], [-s, c]])  # map -> frame
    center = boxes.center.copy()
    center[:, :2] = (boxes.center[:, :2] - (x, y)) @ rot_t.T
    center[:, 2] -= z
    rel_yaw = np.arctan2(np.sin(boxes.yaw - yaw), np.cos(boxes.yaw - yaw))
    return Boxes(center, boxes.size, rel_yaw, boxes.label, boxes.score, boxes.velocity @ rot_t.T, boxes.ids,
                 frame_id, boxes.stamp)


class World:
    """``World(map, config, seed)``; ``reset(ego_pose)``; then ``tick(command)`` per step."""

    def __init__(self, map, config: WorldConfig | None = None, seed: int = 0):
        self.map = map
        self.config = config or WorldConfig()
        self.seed = int(seed)
        if self.seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}", "world")
        self.net_path = build_net(map.xodr_path)
        # first, so that the SUMO process loads while this one sets up the lidar
        traffic_type = TrafficProcess if self.config.traffic_process else Traffic
        self.traffic = traffic_type(self.net_path, self.config.traffic, self.config.dt, self.seed)
        self.vehicle = BicycleModel(self.config.vehicle)
        self.lidar = None
        self.scenery = None
        if self.config.lidar:
            from sim.lidar import Lidar, SpinningLidar, load_lidar_config
            lidar_cfg = load_lidar_config(self.config.lidar_params) if self.config.lidar_params else load_lidar_config()
            if self.config.dt * lidar_cfg.rate_hz > 1.0 + 1e-9:
                raise DataError(f"dt {self.config.dt} s is longer than one lidar revolution (rate_hz "
                                f"{lidar_cfg.rate_hz}): use a shorter dt or turn the lidar off", "world")
            self.lidar = SpinningLidar(Lidar(lidar_cfg, seed=self.seed), tick_s=self.config.dt,
                                       deliver_next_tick=self.config.lidar_delivery == "next_tick",
                                       process=self.config.lidar_process and self.config.lidar_mode == "spinning")
            # snapshot mode: a revolution every this many ticks (the rate rounded to whole ticks)
            self._ticks_per_revolution = max(1, int(round(1.0 / (lidar_cfg.rate_hz * self.config.dt))))
            self._lidar_range_m = lidar_cfg.range_max_m + math.hypot(lidar_cfg.mount_x_m, lidar_cfg.mount_y_m)
            if self.config.scenery:
                self.scenery = load_scenery(map, self.seed)
        self._flat_z = _flat_height(map)  # a flat map (Town01) needs no per-tick height lookup
        self.state: WorldState | None = None
        self._previous: tuple | None = None  # (ego, actors) of the last tick: a delivered frame's stamp
        self._tick_end: float | None = None  # when the last tick returned to the caller (wall clock)
        self._caller_s: float | None = None  # the caller's time between ticks, smoothed
        self.timing = {"traffic_s": 0.0, "lidar_s": 0.0, "lidar_frames": 0, "ticks": 0}
        self._tick = 0

    # --- ground height from the map ------------------------------------------------------------

    def ground_z(self, x: float, y: float) -> float:
        """Road height under (x, y): the nearest lane's centre height from carla.Map."""
        if self._flat_z is not None:
            return self._flat_z
        carla_map = getattr(self.map, "carla_map", None)
        if carla_map is None:
            return 0.0
        from hdmap.coords import ros_to_carla_location
        wp = carla_map.get_waypoint(ros_to_carla_location(x, y, 0.0), project_to_road=True)
        return 0.0 if wp is None else float(wp.transform.location.z)

    # --- lifecycle -------------------------------------------------------------------------------

    def reset(self, ego_pose=None) -> WorldState:
        """Start (or restart) the world with the ego at ``ego_pose``: an ``EgoState``, an
        (x, y, yaw[, v]) tuple in the map frame (rear axle), or None for a seeded random lane pose."""
        rng = np.random.default_rng(self.seed)
        if ego_pose is None:
            ego_pose = self.traffic.random_drive_pose(rng)
        if isinstance(ego_pose, EgoState):
            ego = EgoState(ego_pose.x, ego_pose.y, ego_pose.yaw, ego_pose.v)
        else:
            values = [float(v) for v in ego_pose]
            if len(values) not in (3, 4) or not all(math.isfinite(v) for v in values):
                raise DataError(f"ego pose must be finite (x, y, yaw[, v]), got {ego_pose!r}", "world.reset")
            ego = EgoState(*values[:3], v=values[3] if len(values) == 4 else 0.0)
        ego.z = self.ground_z(ego.x, ego.y)
        ego = self.vehicle.reset(ego)
        p = self.config.vehicle
        self.traffic.start(ego_size=(p.length, p.width, p.height))
        self._annotate_signals()
        self._place_ego(ego)
        self.traffic.step()
        self.traffic.refill()
        # Let traffic get moving before the ego's first tick, with the ego already in place.
        for _ in range(int(round(self.config.traffic.warmup_s / self.config.dt))):
            self._place_ego(ego)
            self.traffic.step()
        if self.lidar is not None:
            self.lidar.reset()
        self._tick = 0
        self._previous = None
        self.timing = {"traffic_s": 0.0, "lidar_s": 0.0, "lidar_frames": 0, "ticks": 0}
        self.state = self._observe(ego, *self.traffic.observe(), None)
        # what the ego does until the first command: keep its steering, neither speed up nor brake
        self._launch(self.vehicle.predict(Command(ego.steer, 0.0), self.config.dt))
        return self.state

    def _annotate_signals(self) -> None:
        """Tie SUMO's signalised lanes to HD map lanes, so a planner finds the light for its lane.

        Incoming lane: the map lane 1 m before the stop line with the same heading. Junction lane
        per link: the successor of the incoming lane that leads to the link's out-lane (else the
        map lane under the middle of SUMO's junction path). Map signal: the nearest OpenDRIVE
        traffic-light stop line on those lanes."""
        m = self.map
        if not (hasattr(m, "nearest_lane") and hasattr(m, "lanes")):
            return
        for sl in self.traffic.signal_lanes:
            direction = np.array([math.cos(sl.yaw), math.sin(sl.yaw)])
            key, _, _ = m.nearest_lane(*(sl.position - direction), sl.yaw)
            sl.map_lane = key
            successors = m.lanes[key].successors
            for link in sl.links:
                out_point = link.out_start + np.array([math.cos(link.out_yaw), math.sin(link.out_yaw)])
                exit_key, _, _ = m.nearest_lane(*out_point, link.out_yaw)
                found = [j for j in successors if j == exit_key or exit_key in m.lanes[j].successors]
                if len(found) != 1 and len(link.via_shape) >= 2:
                    k = len(link.via_shape) // 2
                    d = link.via_shape[k] - link.via_shape[k - 1]
                    via_key, _, _ = m.nearest_lane(*link.via_shape[k], math.atan2(d[1], d[0]))
                    found = [via_key] if via_key in successors or not found else found
                link.map_lane = found[0] if found else None
            best, best_d = "", 15.0  # m: farther than this is another approach's signal
            stop_lines_for_lane = getattr(m, "stop_lines_for_lane", None)
            if stop_lines_for_lane is not None:
                for lane in [key] + [l.map_lane for l in sl.links if l.map_lane is not None]:
                    for stop in stop_lines_for_lane(lane):
                        d = float(np.linalg.norm(stop.segment.mean(axis=0) - sl.position))
                        if stop.kind == "traffic_light" and d < best_d:
                            best, best_d = stop.signal_id, d
            sl.map_signal_id = best
        # SUMO also guesses signals at nodes that are no junction of the map (a pedestrian crossing
        # on a bend, a road split): no map junction lane leaves them. Those are switched off.
        at_junction = {sl.tls_id for sl in self.traffic.signal_lanes for link in sl.links
                       if link.map_lane is not None and m.lanes[link.map_lane].is_junction}
        self.traffic.switch_off({sl.tls_id for sl in self.traffic.signal_lanes} - at_junction)
        self.traffic.signals_changed()

    def flush_lidar(self) -> PointCloud | None:
        """The lidar frame completed on the last tick that ``next_tick`` delivery would hand out on
        the next one (stamped, as always, with its sweep's end); None if there is none. For the end of
        a run: ``state.lidar_ego`` and ``lidar_actors`` of that frame are the last state's ego and actors."""
        if self.lidar is None or self.config.lidar_mode != "spinning":
            return None
        cloud = self.lidar.flush()
        self.timing["lidar_frames"] += cloud is not None
        return cloud

    def close(self) -> None:
        try:
            if self.lidar is not None:
                self.lidar.close()  # background casts finish (and the lidar process ends)
                self.lidar.lidar.close()  # and its threads stop
        finally:
            self.traffic.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one tick --------------------------------------------------------------------------------

    def tick(self, command: Command) -> WorldState:
        if self.state is None:
            raise RuntimeError("World.tick before World.reset")
        dt = self.config.dt
        start = time.perf_counter()
        if self._tick_end is not None and self.lidar is not None and self.lidar.process is not None:
            self._choose_lidar_caster(start - self._tick_end)
        ego = self.vehicle.step(command, dt)
        self._tick += 1
        ego.stamp = self._tick * dt
        ego.z = self.ground_z(ego.x, ego.y)
        actors, lights = self.traffic.observe()  # SUMO's step to this tick
        self._launch(self.vehicle.predict(command, dt))  # and on to the next, while the rest runs
        mid = time.perf_counter()
        self.state = self._observe(ego, actors, lights, True)
        self.timing["traffic_s"] += mid - start
        self.timing["ticks"] += 1
        self._tick_end = time.perf_counter()
        return self.state

    def _choose_lidar_caster(self, caller_s: float) -> None:
        """Who casts the next lidar share: the lidar process while the caller is busy between ticks
        (then the other core casts as the caller works), else this thread (while SUMO steps on the
        other core). Only the speed depends on it: the frames are the same bit for bit."""
        self._caller_s = caller_s if self._caller_s is None else 0.95 * self._caller_s + 0.05 * caller_s
        threshold = 1e-3 * self.config.lidar_process_caller_ms
        if self._caller_s > 1.1 * threshold:
            self.lidar.cast_here = False
        elif self._caller_s < 0.9 * threshold:
            self.lidar.cast_here = True

    def _box_center_xy(self, ego: EgoState) -> tuple[float, float]:
        """The centre of the ego's box (map frame) for its rear-axle pose."""
        offset = self.config.vehicle.center_offset
        return ego.x + offset * math.cos(ego.yaw), ego.y + offset * math.sin(ego.yaw)

    def _place_ego(self, ego: EgoState) -> None:
        self.traffic.set_ego(self._box_center_xy(ego), ego.yaw, ego.v, self.config.vehicle.length)

    def _launch(self, ego_next: EgoState) -> None:
        """Place the ego where it will be at the next tick and start SUMO's step to it."""
        self.traffic.advance(self._box_center_xy(ego_next), ego_next.yaw, ego_next.v, self.config.vehicle.length)

    def ego_box(self, ego: EgoState) -> Boxes:
        p = self.config.vehicle
        c = (*self._box_center_xy(ego), ego.z + p.height / 2)
        v = (ego.v * math.cos(ego.yaw), ego.v * math.sin(ego.yaw))
        return Boxes([c], [[p.length, p.width, p.height]], [ego.yaw], [1], None, [v], [0], "map", ego.stamp)

    def _observe(self, ego: EgoState, raw, lights, cast_lidar) -> WorldState:
        t = self._tick * self.config.dt
        actors = raw.boxes(t)
        cloud = None
        cloud_ego, cloud_actors = ego, actors
        if cast_lidar and self.lidar is not None:
            start = time.perf_counter()
            scenery = self.scenery.query(ego.x, ego.y) if self.scenery is not None else None
            # Only actors the beams can reach (range + half the largest box diagonal) go to the caster.
            reach = self._lidar_range_m + 0.5 * float(np.hypot(actors.size[:, 0], actors.size[:, 1]).max(initial=0.0))
            visible = actors.select(np.hypot(actors.center[:, 0] - ego.x, actors.center[:, 1] - ego.y) < reach)
            if self.config.lidar_mode == "spinning":
                cloud = self.lidar.tick(t, ego, visible, scenery, ego.z)
                if cloud is not None and self.lidar.deliver_next_tick:
                    cloud_ego, cloud_actors = self._previous  # completed last tick
            elif self._tick % self._ticks_per_revolution == 0:
                cloud = self.lidar.lidar.scan(ego, visible, scenery, ego.z, stamp=t)
            self.timing["lidar_s"] += time.perf_counter() - start
            self.timing["lidar_frames"] += cloud is not None
        self._previous = (ego, actors)
        return WorldState(t, self._tick, ego, actors, lights, cloud,
                          None if cloud is None else cloud.labels, self.ego_box(ego),
                          cloud_ego if cloud is not None else None, cloud_actors if cloud is not None else None)


def _flat_height(map) -> float | None:
    """The road height if every lane of the map lies within 1 cm of one height, else None."""
    lanes = getattr(map, "lanes", None)
    if not lanes:
        return None
    z = np.concatenate([np.asarray(lane.z, dtype=np.float64).reshape(-1) for lane in lanes.values()])
    return float(np.median(z)) if len(z) and float(z.max() - z.min()) < 0.01 else None


def load_scenery(map, seed: int = 0):
    """Static scenery for the lidar (``sim.scenery.SceneryIndex``), if that module is present."""
    try:
        from sim import scenery
    except ImportError:
        return None
    builder = getattr(scenery, "SceneryIndex", None)
    if builder is None:
        return None
    return builder.from_map(map, seed=seed) if hasattr(builder, "from_map") else None


_load_scenery = load_scenery  # the name sim/collect.py imports
