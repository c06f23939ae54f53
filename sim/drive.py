"""Closed-loop drive of one Leaderboard route in the embedded world, scored as the Leaderboard scores.

Each tick (default 20 Hz), in a fixed order and with no transport in between:
world -> (perception) -> planner (10 Hz) -> controller -> world.tick -> scorer -> log.
The outcome is ``result.json`` (score, completion, penalty, every infraction, distances, times),
``log.mcap`` (odometry, lidar, objects, trajectory, command, lights; standard types where one exists)
and ``bev.png``. Failures are results too: a route that cannot be set up or a planner that raises is
recorded with the status and the score the Leaderboard would give, and the caller exits non-zero.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adstack import topics
from adstack.errors import UserError
from adstack.types import Boxes, Command, Trajectory

STATUS_SETUP_FAILED = "Failed - Agent couldn't be set up"  # Leaderboard status for a route that never started
STATUS_SIM_CRASHED = "Failed - Simulation crashed"
STATUS_AGENT_CRASHED = "Failed - Agent crashed"
PLANNERS = ("expert",)  # the learned planner joins with its own issue
PERCEPTION_MODES = ("ground_truth", "lidar")


@dataclass
class DriveOptions:
    routes: str
    route_id: str
    out: str
    map_name: str | None = None  # if given, must match the route's town
    map_dirs: list = field(default_factory=list)
    planner: str = "expert"
    perception: str = "ground_truth"
    seconds: float | None = None  # simulated-time cap (None: the route's own timeout decides)
    seed: int = 0
    variant: str = "lb1"
    lidar: bool = True
    vehicles: int | None = None
    pedestrians: int | None = None
    log: bool = True
    bev: bool = True
    progress: bool = True
    planner_hz: float = 10.0
    safety: bool = True  # the safety layer checks every plan, as the planning node does
    log_lidar_hz: float = 1.0  # full clouds are ~1.6 MB each: log a subset of the 10 Hz sweeps
    log_objects_hz: float = 2.0  # ground truth, detections, lights and the planned trajectory
    log_state_hz: float = 10.0  # odometry and commands
    log_objects_radius_m: float = 80.0  # ground truth around the ego, not the whole town
    viz: bool = False  # serve the drive live to Foxglove (adstack.viz.LiveView, 127.0.0.1:8765)


def failed_route_result(opts: DriveOptions, status: str, wall_s: float):
    """The RouteResult the Leaderboard records for a route that failed before scoring anything."""
    from sim.scoring import RouteResult, variant_by_name
    variant = variant_by_name(opts.variant)
    return RouteResult(variant, str(opts.route_id), 0, status, 0.0, 1.0, 0.0,
                       {k: [] for k in variant.infraction_keys}, 0.0, 0.0, round(wall_s, 3))


def _failure_result(opts: DriveOptions, status: str, message: str, wall_s: float, index: int = 0) -> dict:
    """result.json for a route that failed before scoring anything."""
    return {"route_id": str(opts.route_id), "index": index, "status": status, "failure_message": message,
            "driving_score": 0.0, "route_completion": 0.0, "infraction_penalty": 1.0,
            "infractions": [], "infractions_by_type": {}, "distance_driven_m": 0.0, "route_length_m": 0.0,
            "simulated_s": 0.0, "wall_s": round(wall_s, 3), "realtime_factor": 0.0,
            "variant": opts.variant, "seed": opts.seed, "planner": opts.planner, "perception": opts.perception}


def _event_dict(ev) -> dict:
    d = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev.__dict__)
    out = {"type": d.get("key", d.get("type")), "time": d.get("t", d.get("time")),
           "position": [float(v) for v in d.get("position", d.get("xy", (math.nan, math.nan)))[:2]]}
    for k in ("message", "value", "other_id", "other_class"):
        if k in d and d[k] is not None:
            out[k] = d[k]
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return str(v)


def load_route(opts: DriveOptions):
    """(RouteSpec, HDMap, dense Route) or a UserError naming the file and the problem."""
    from hdmap import load_map
    from hdmap.routes import dense_route, load_routes

    specs = load_routes(opts.routes)
    by_id = {str(s.id): s for s in specs}
    spec = by_id.get(str(opts.route_id))
    if spec is None:
        sample = ", ".join(list(by_id)[:8]) + (" ..." if len(by_id) > 8 else "")
        raise UserError(f"no route with id {opts.route_id!r} (ids: {sample})", opts.routes)
    if opts.map_name and Path(opts.map_name).stem != spec.town and opts.map_name != spec.town:
        raise UserError(f"route {spec.id} is on {spec.town}, not on --map {opts.map_name}", opts.routes)
    hdmap = load_map(opts.map_name or spec.town, map_dirs=opts.map_dirs)
    try:
        route = dense_route(hdmap, spec)
    except UserError as err:  # name the route file and id: the map itself is fine
        problem = str(err).split(": ", 1)[-1] if err.path else str(err)
        raise UserError(f"route {spec.id} cannot be driven on {hdmap.name}: {problem}", opts.routes) from None
    return spec, hdmap, route


def load_route_from_params(params):
    """``load_route`` for a node whose parameters carry routes, route_id, map and comma-separated map_dirs."""
    return load_route(DriveOptions(routes=params.routes, route_id=params.route_id, out="",
                                   map_name=params.map or None,
                                   map_dirs=[d for d in params.map_dirs.split(",") if d]))


def make_planner(name: str, hdmap, route):
    if name == "expert":
        from planning.expert import Expert
        return Expert(hdmap, route)
    raise UserError(f"unknown planner {name!r}; choose from {PLANNERS}")


class Progress:
    """One status line, refreshed at most every ``period_s`` of wall time."""

    def __init__(self, enabled: bool, period_s: float = 2.0):
        self.enabled = enabled
        self.period_s = period_s
        self.last = -1e9

    def update(self, text: str, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last >= self.period_s):
            self.last = now
            print(text, file=sys.stderr, flush=True)


def drive(opts: DriveOptions) -> tuple[dict, int, object]:
    """Run one route; returns (result dict, exit code, sim.scoring.RouteResult).

    Always writes ``out/result.json``; bad input raises UserError after writing the failure there."""
    wall0 = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(opts.progress)
    if opts.planner not in PLANNERS:
        raise UserError(f"unknown planner {opts.planner!r}; choose from {', '.join(PLANNERS)}")
    if opts.perception not in PERCEPTION_MODES:
        raise UserError(f"unknown perception {opts.perception!r}; choose from {', '.join(PERCEPTION_MODES)}")
    if not (math.isfinite(opts.log_lidar_hz) and opts.log_lidar_hz >= 0):
        raise UserError(f"--log-lidar-hz must be a finite number >= 0, got {opts.log_lidar_hz}")
    try:
        spec, hdmap, route = load_route(opts)
    except UserError as err:
        result = _failure_result(opts, STATUS_SETUP_FAILED, str(err), time.perf_counter() - wall0)
        _write_json(out / "result.json", result)
        raise
    try:
        return _drive_loaded(opts, spec, hdmap, route, out, progress, wall0)
    except UserError as err:
        result = _failure_result(opts, STATUS_SETUP_FAILED, str(err), time.perf_counter() - wall0)
        _write_json(out / "result.json", result)
        raise


LOG_BAG_DIR = ".log.bag"


def single_file_log(bag_dir: Path, target: Path) -> Path:
    """Move the rosbag2 directory's one MCAP file to ``target`` (what Foxglove, rosbags and
    mcap-ros2-support open directly) and drop the directory."""
    import shutil
    files = sorted(bag_dir.glob("*.mcap"))
    if len(files) != 1:
        raise RuntimeError(f"expected one .mcap file in {bag_dir}, found {len(files)}")
    if target.is_dir():
        shutil.rmtree(target)
    files[0].replace(target)
    shutil.rmtree(bag_dir)
    return target


class RouteSession:
    """The world side of a scored drive: world, scorer, log and result, stepped by commands.

    ``adstack drive`` steps it in process (planner and controller called in order); the ROS 2 sim
    bridge steps it with commands that arrive over DDS. Both write the same ``result.json``.
    """

    def __init__(self, opts: DriveOptions, spec, hdmap, route, out: Path, wall0: float | None = None):
        from sim.scoring import scorer_from_hdmap, variant_by_name
        from sim.world import World, WorldConfig

        self.opts, self.spec, self.hdmap, self.route, self.out = opts, spec, hdmap, route, out
        self.wall0 = time.perf_counter() if wall0 is None else wall0
        cfg = WorldConfig.load()
        cfg.lidar = bool(opts.lidar or opts.perception == "lidar")
        if opts.vehicles is not None:
            cfg.traffic.vehicles = opts.vehicles
        if opts.pedestrians is not None:
            cfg.traffic.pedestrians = opts.pedestrians
        self.cfg = cfg
        self.vehicle = cfg.vehicle
        self.variant = variant_by_name(opts.variant)
        start_xy, start_yaw = route.path[0], float(route.yaw[0])
        # The route starts at the ego's box centre; the bicycle model's pose is the rear axle.
        rear = start_xy - self.vehicle.center_offset * np.array([math.cos(start_yaw), math.sin(start_yaw)])
        self.world = World(hdmap, cfg, seed=opts.seed)
        self.writer = None
        self.driven: list[tuple[float, float, float]] = []
        self.status_override: str | None = None
        self.failure_message: str | None = None
        self.limit_s = opts.seconds if opts.seconds else math.inf
        self.tick_count = 0
        self.objects_every = max(1, int(round(1.0 / (opts.log_objects_hz * cfg.dt))))
        self.state_every = max(1, int(round(1.0 / (opts.log_state_hz * cfg.dt))))
        self.lidar_period_s = 1.0 / opts.log_lidar_hz if opts.log_lidar_hz > 0 else math.inf
        self.next_lidar_log_t = 0.0
        self.timing: dict = {}
        self.extra: dict = {}  # more fields for result.json (e.g. how often the safety layer acted)
        try:
            self.state = self.world.reset((float(rear[0]), float(rear[1]), start_yaw, 0.0))
            self.scorer = scorer_from_hdmap(hdmap, route, self.variant, start_t=self.state.t, route_id=spec.id,
                                            ego_center_offset_m=self.vehicle.center_offset)
            if opts.log:
                from adstack.bag import BagWriter
                self.writer = BagWriter(out / LOG_BAG_DIR, overwrite=True)
                self.writer.write_json(topics.ROUTE, {"route_id": spec.id, "town": spec.town,
                                                      "path": np.round(route.path, 3)}, self.state.t)
        except BaseException:
            self.world.close()
            raise

    @property
    def done(self) -> bool:
        return self.scorer.done or self.state.t >= self.limit_s - 1e-9

    def log_plan(self, trajectory: Trajectory | None, objects: Boxes | None = None) -> None:
        if self.writer is not None and trajectory is not None and self.tick_count % self.objects_every == 0:
            self.writer.write_trajectory(topics.TRAJECTORY, trajectory, self.state.t)

    def step(self, command: Command, detections: Boxes | None = None):
        """Advance one tick with ``command``; score it and log it. Returns the new WorldState."""
        state = self.state = self.world.tick(command)
        self.tick_count += 1
        scenery = self.world.scenery.query(state.ego.x, state.ego.y) if self.world.scenery is not None else None
        self.scorer.update(state.t, state.ego, (self.vehicle.length, self.vehicle.width), state.actors, scenery,
                           state.traffic_lights)
        self.driven.append((state.ego.x, state.ego.y, state.ego.v))
        w = self.writer
        if w is not None:
            if self.tick_count % self.state_every == 0:
                w.write_odometry(topics.KINEMATIC_STATE, state.ego, state.t)
                w.write_command(topics.CONTROL_COMMAND, command, state.t)
            if self.tick_count % self.objects_every == 0:
                near = np.hypot(state.actors.center[:, 0] - state.ego.x,
                                state.actors.center[:, 1] - state.ego.y) <= self.opts.log_objects_radius_m
                w.write_objects(topics.GROUND_TRUTH_OBJECTS, state.actors.select(near), state.t)
                w.write_traffic_lights(topics.TRAFFIC_SIGNALS, state.traffic_lights, state.t)
                if detections is not None:
                    w.write_objects(topics.DETECTED_OBJECTS, detections, state.t)
            if state.lidar is not None and state.t + 1e-9 >= self.next_lidar_log_t:
                w.write_pointcloud(topics.LIDAR_POINTS, state.lidar, state.t)
                self.next_lidar_log_t = state.t + self.lidar_period_s
        return state

    def agent_crashed(self, message: str) -> None:
        self.status_override = STATUS_AGENT_CRASHED
        self.failure_message = message

    def progress_line(self) -> str:
        rc, pen, ds = self.scorer.current_scores()
        st = self.state
        return (f"route {self.spec.id} t={st.t:6.1f}s completion={rc:5.1f}% penalty={pen:.2f} score={ds:5.1f} "
                f"speed={st.ego.v * 3.6:4.0f} km/h ({st.t / max(time.perf_counter() - self.wall0, 1e-9):.1f}x real time)")

    def close(self) -> None:
        if self.world is not None:
            self.timing = dict(self.world.timing)
            self.world.close()
            self.world = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            single_file_log(self.out / LOG_BAG_DIR, self.out / "log.mcap")

    def finish(self, extra: dict | None = None):
        """Close everything, write result.json and bev.png; returns (result dict, RouteResult)."""
        from sim.scoring import route_record
        self.close()
        opts, state = self.opts, self.state
        wall_s = time.perf_counter() - self.wall0
        scored = self.scorer.result(duration_system_s=wall_s)
        status = self.status_override or scored.status
        if self.status_override is None and not scored.completed and state.t >= self.limit_s - 1e-9:
            status = f"Stopped - --seconds {opts.seconds:g} reached"
        events = [ev for evs in scored.infractions.values() for ev in evs]
        result = {
            "route_id": str(self.spec.id), "town": self.spec.town, "status": status,
            "driving_score": scored.driving_score, "route_completion": scored.route_completion,
            "infraction_penalty": scored.infraction_penalty,
            "infractions": sorted((_event_dict(e) for e in events), key=lambda e: (e["time"] or 0)),
            "infractions_by_type": {k: len(v) for k, v in scored.infractions.items()},
            "distance_driven_m": round(scored.distance_driven_m, 2), "route_length_m": round(scored.route_length_m, 2),
            "offroad_distance_m": round(scored.offroad_distance_m, 2),
            "simulated_s": round(state.t, 3), "wall_s": round(wall_s, 3),
            "realtime_factor": round(state.t / wall_s, 2) if wall_s > 0 else 0.0,
            "timing_s": {k: round(v, 3) if isinstance(v, float) else v for k, v in self.timing.items()},
            "variant": getattr(self.variant, "name", opts.variant),
            "seed": opts.seed, "planner": opts.planner, "perception": opts.perception,
            "leaderboard_record": route_record(scored),
            **self.extra,
            **(extra or {}),
        }
        if self.failure_message:
            result["failure_message"] = self.failure_message
        _write_json(self.out / "result.json", result)
        if opts.bev:
            _write_bev(self.out / "bev.png", self.hdmap, self.route, np.array(self.driven).reshape(-1, 3),
                       state.actors, result)
        if self.status_override:
            scored.status = self.status_override
        return result, scored


def _drive_loaded(opts, spec, hdmap, route, out: Path, progress: Progress, wall0: float):
    from control import Controller

    session = RouteSession(opts, spec, hdmap, route, out, wall0)
    perception = None
    view = None
    exit_code = 0
    try:
        if opts.perception == "lidar":
            from perception.pipeline import LidarPerception  # detector + tracker on the simulated lidar
            perception = LidarPerception.default()
        planner = make_planner(opts.planner, hdmap, route)
        controller = Controller()
        safety = None
        last_good = None
        if opts.safety:
            from planning.safety import SafetyConfig, SafetyLayer
            safety = SafetyLayer(SafetyConfig.load())
        if opts.viz:
            from adstack.viz import LiveView
            view = LiveView()
        plan_every = max(1, int(round(1.0 / (opts.planner_hz * session.cfg.dt))))
        trajectory: Trajectory | None = None
        state = session.state
        objects = state.actors
        while not session.done:
            if perception is None:
                objects = state.actors
            elif state.lidar is not None:
                objects = perception.step(state)
            if session.tick_count % plan_every == 0:
                try:
                    trajectory = planner.step(state.ego, objects, state.traffic_lights, state.t)
                except Exception as exc:  # the Leaderboard records an agent crash and keeps the score so far
                    session.agent_crashed(f"planner {opts.planner} raised {type(exc).__name__}: {exc}")
                    print(f"adstack drive: {session.failure_message}", file=sys.stderr)
                    traceback.print_exc(limit=3, file=sys.stderr)
                    exit_code = 1
                    break
                if safety is not None:  # the same composition as the planning node
                    proposal = trajectory
                    trajectory, safety_status = safety.check(state.ego, proposal, objects, state.t, None, last_good)
                    if proposal is not None and safety_status.action != "minimal_risk_stop":
                        last_good = proposal
                    actions = session.extra.setdefault("safety_actions", {})
                    actions[safety_status.action] = actions.get(safety_status.action, 0) + 1
                session.log_plan(trajectory)
            if view is not None:
                view.publish_state(state.t, state.ego, state.lidar, objects, trajectory, route.path)
            command = controller.step(state.ego, trajectory, state.t)
            state = session.step(command, objects if perception is not None else None)
            progress.update(session.progress_line())
    finally:
        session.close()
        if view is not None:
            view.close()
    result, scored = session.finish()
    return result, exit_code, scored


def _write_bev(path, hdmap, route, driven, actors: Boxes, result: dict) -> None:
    from sim.bev_plot import render_drive_bev
    lanes = [lane.centerline for lane in hdmap.lanes.values()]
    title = (f"route {result['route_id']} ({result['town']}): DS {result['driving_score']:.1f}, "
             f"RC {result['route_completion']:.1f}%, IP {result['infraction_penalty']:.2f}  [{result['status']}]")
    render_drive_bev(path, lanes, route.path, driven[:, :2], driven[:, 2], actors.corners_xy(), actors.label,
                     result["infractions"], title)
