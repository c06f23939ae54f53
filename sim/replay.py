"""Replay a recorded rosbag2 drive through the stack and record every output.

Input: any rosbag2 bag (MCAP or sqlite3 directory, or a bare ``.mcap``) holding a
``sensor_msgs/PointCloud2`` lidar topic and a ``nav_msgs/Odometry`` topic; names are remappable.
Our own drive logs also carry ground-truth objects, which turn on the detection metrics, and the
route and traffic-light states, which turn on planning and control.

Per cloud, in bag order, the same rules as the ROS 2 nodes (perception/lidar_node.py,
fusion/tracking_node.py), so the in-process replay and the graph replay give the same outputs:

1. decode and validate the PointCloud2 (NaN/Inf points dropped and counted, empty clouds allowed);
2. take the odometry sample *nearest in time* to the cloud's stamp (not interpolated, because the
   lidar node does exactly this), dropping the cloud when none lies within ``max_pose_age_s``;
3. drop a cloud whose stamp is not after the last accepted one's (a jump back of more than a few
   seconds is a new run: accepted, and the tracker starts afresh);
4. detect (sensor frame -> map frame with that pose), then track the detections as the tracking
   node receives them (through the DetectedObjects message).

Per kinematic state, in bag order, when a route is known (the bag's, or ``--routes``/``--route-id``),
the rules of planning/planning_node.py and control/control_node.py: a planning cycle when the state
opens a new ``planner_hz`` period of sensor time, the expert on the latest *tracked* objects and light
states behind the safety layer (objects older than ``objects_timeout_s``: controlled stop), then one
command on the latest trajectory. Every input crosses a serialized message first, as in the graph.

With ``graph="ros2"`` the lidar_detector, tracker, planner and controller nodes run as processes and
get the same inputs over DDS in lockstep (:class:`GraphStack`); the in-process stack runs alongside
and the report says whether every frame, trajectory and command came out the same.

Outputs: ``OUT/replay.mcap`` (detections and tracks with marker arrays, trajectories and commands,
and the input clouds, odometry, /tf, ground truth, light states and route passed through on the
stack's standard topics), ``OUT/replay.json`` (frames, drops, per-stage latency, planning counts,
and metrics where there is ground truth), ``OUT/route.xml`` (the route planned on, when it came
from the bag).

Detection metrics follow perception/metrics.py (nuScenes-style, BEV centre distance). Ground truth
is taken at each cloud's stamp, interpolated per object id between the two bracketing ground-truth
messages; boxes are measured from the lidar (so the per-class ranges of the metric config are ranges
from the sensor); when the cloud carries per-point actor ids (ours do) ground-truth boxes hit by no
lidar point are left out, as nuScenes leaves out boxes without points.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from adstack import ros_convert as rc
from adstack import topics
from adstack.errors import UserError
from adstack.types import Boxes, EgoState, PointCloud

# Roles the replay reads: (message types accepted, default topic, required)
OBJECT_TYPES = ("autoware_perception_msgs/msg/TrackedObjects", "autoware_perception_msgs/msg/DetectedObjects",
                "autoware_perception_msgs/msg/PredictedObjects")
ROLES = {
    "lidar": (("sensor_msgs/msg/PointCloud2",), topics.LIDAR_POINTS, True),
    "odom": (("nav_msgs/msg/Odometry",), topics.KINEMATIC_STATE, True),
    "gt": (OBJECT_TYPES, topics.GROUND_TRUTH_OBJECTS, False),
    "route": (("std_msgs/msg/String",), topics.ROUTE, False),
    "lights": (("autoware_perception_msgs/msg/TrafficLightGroupArray",), topics.TRAFFIC_SIGNALS, False),
}
AUTO_PICK_ROLES = ("lidar", "odom")  # a lone topic of the right type is taken when the default is absent
OUTPUT_FILE = "replay.mcap"
REPORT_FILE = "replay.json"
GRAPHS = ("inprocess", "ros2")


@dataclass
class ReplayOptions:
    bag: str
    out: str
    model: str = "default"           # default | classical | a model directory
    rate: float = 0.0                # 0: as fast as possible; 1.0: recorded timing
    topic_map: dict = field(default_factory=dict)   # role -> topic
    graph: str = "inprocess"         # inprocess | ros2
    viz: bool = False
    viz_port: int = 8765
    domain_id: int | None = None     # ros2: ROS_DOMAIN_ID (default: a free random one)
    node_timeout_s: float = 30.0     # ros2: wait for the nodes to start / answer one cloud
    overwrite: bool = True
    progress: bool = True
    # The route for planning and control when the bag carries none (or to override it), as the
    # planning node takes it: a Leaderboard route file and id, optionally the map and map folders.
    routes: str = ""
    route_id: str = ""
    map: str = ""
    map_dirs: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Topics


class MissingTopics(UserError):
    """The bag lacks a topic the stack needs. ``listing`` is the bag's table of topics."""

    def __init__(self, message: str, path, listing: str):
        self.listing = listing
        super().__init__(message, path)


def topic_listing(bag_topics: dict) -> str:
    """The bag's topics as a table: topic, type, message count."""
    if not bag_topics:
        return "  (the bag holds no topics)"
    width = max(len(t) for t in bag_topics)
    type_width = max(len(i.type) for i in bag_topics.values())
    return "\n".join(f"  {t:<{width}}  {i.type:<{type_width}}  {i.count:>7}" for t, i in bag_topics.items())


def parse_topic_map(items: list[str] | None) -> dict:
    """``["lidar=/points", "odom=/odom"]`` -> ``{"lidar": "/points", "odom": "/odom"}``."""
    out = {}
    for item in items or []:
        role, sep, topic = item.partition("=")
        if not sep or not topic:
            raise UserError(f"--topic-map wants ROLE=TOPIC, got {item!r}")
        if role not in ROLES:
            raise UserError(f"--topic-map: unknown role {role!r}; roles: {', '.join(ROLES)}")
        out[role] = topic
    return out


def resolve_topics(bag_topics: dict, topic_map: dict, bag_path) -> dict:
    """role -> topic (None for an optional role the bag lacks). Raises MissingTopics naming what is
    missing, with the bag's listing, when a required role has no topic."""
    listing = topic_listing(bag_topics)
    roles: dict[str, str | None] = {}
    problems = []
    for role, (types, default, required) in ROLES.items():
        if role in topic_map:
            topic = topic_map[role]
            info = bag_topics.get(topic)
            if info is None:
                problems.append(f"--topic-map {role}={topic}: no such topic in the bag")
            elif info.type not in types:
                problems.append(f"--topic-map {role}={topic}: topic has type {info.type}, need {' or '.join(types)}")
            roles[role] = topic
            continue
        if default in bag_topics and bag_topics[default].type in types:
            roles[role] = default
            continue
        candidates = [t for t, i in bag_topics.items() if i.type in types]
        if role in AUTO_PICK_ROLES and len(candidates) == 1:
            roles[role] = candidates[0]
            continue
        roles[role] = None
        if required:
            if candidates:
                problems.append(f"several {types[0]} topics ({', '.join(candidates)}) and none is {default}: "
                                f"choose one with --topic-map {role}=TOPIC")
            else:
                problems.append(f"no {types[0]} topic (the stack needs one for {role}; "
                                f"looked for {default}; remap with --topic-map {role}=TOPIC)")
    if problems:
        raise MissingTopics("cannot replay: " + "; ".join(problems), bag_path, listing)
    return roles


# --------------------------------------------------------------------------------------------
# Poses and ground truth in time


class PoseBuffer:
    """Odometry samples by header stamp; ``nearest`` chooses as the lidar node does."""

    def __init__(self, poses: list[EgoState]):
        order = sorted(range(len(poses)), key=lambda i: poses[i].stamp)
        self.poses = [poses[i] for i in order]
        self.stamps = np.array([p.stamp for p in self.poses], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.poses)

    def nearest(self, stamp: float, max_age_s: float) -> EgoState | None:
        if not len(self.poses):
            return None
        i = int(np.argmin(np.abs(self.stamps - stamp)))  # first of equals, like min() over the node's deque
        pose = self.poses[i]
        return pose if abs(pose.stamp - stamp) <= max_age_s else None

    def up_to(self, stamp: float) -> list[EgoState]:
        """Samples stamped at or before ``stamp`` (what a player must publish before a cloud)."""
        return self.poses[: int(np.searchsorted(self.stamps, stamp, side="right"))]


def _wrap(angle):
    return np.arctan2(np.sin(angle), np.cos(angle))


class GroundTruth:
    """Ground-truth object frames; ``at(t)`` interpolates objects by id between the bracketing frames."""

    def __init__(self, frames: list[Boxes], max_gap_s: float = 1.0, max_age_s: float = 0.05):
        self.frames = sorted(frames, key=lambda b: b.stamp)
        self.stamps = np.array([b.stamp for b in self.frames], dtype=np.float64)
        self.max_gap_s = max_gap_s
        self.max_age_s = max_age_s

    def __len__(self) -> int:
        return len(self.frames)

    def at(self, t: float) -> Boxes | None:
        """Objects at time ``t``: a frame within ``max_age_s``, else interpolated between frames at
        most ``max_gap_s`` apart; None when neither exists (no extrapolation)."""
        if not len(self.frames):
            return None
        i = int(np.argmin(np.abs(self.stamps - t)))
        if abs(self.stamps[i] - t) <= self.max_age_s:
            return self.frames[i]
        hi = int(np.searchsorted(self.stamps, t, side="right"))
        if hi == 0 or hi == len(self.frames) or self.stamps[hi] - self.stamps[hi - 1] > self.max_gap_s:
            return None
        a, b = self.frames[hi - 1], self.frames[hi]
        w = (t - a.stamp) / (b.stamp - a.stamp)
        near = a if w <= 0.5 else b
        known_a, known_b = np.flatnonzero(a.ids >= 0), np.flatnonzero(b.ids >= 0)
        common, ia, ib = np.intersect1d(a.ids[known_a], b.ids[known_b], return_indices=True)
        ia, ib = known_a[ia], known_b[ib]
        both = Boxes(a.center[ia] * (1 - w) + b.center[ib] * w, a.size[ia],
                     a.yaw[ia] + w * _wrap(b.yaw[ib] - a.yaw[ia]), a.label[ia], a.score[ia],
                     a.velocity[ia] * (1 - w) + b.velocity[ib] * w, common, a.frame_id, t)
        # Objects in only one frame (appearing, leaving, or without ids) come from the nearer frame.
        only_near = near.select(~np.isin(near.ids, common) | (near.ids < 0))
        out = Boxes.concat([both, only_near])
        out.frame_id, out.stamp = a.frame_id, t
        return out


def sensor_pose(ego: EgoState, mount: tuple) -> tuple[float, float, float]:
    """(x, y, yaw) of a sensor mounted at (x, y, z, yaw) on the ego, in the map frame."""
    mx, my, _, myaw = mount
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    return ego.x + c * mx - s * my, ego.y + s * mx + c * my, ego.yaw + myaw


def to_sensor_frame(boxes: Boxes, origin: tuple[float, float, float]) -> Boxes:
    """Map-frame boxes in a frame at ``origin`` (x, y, yaw): the metric's ranges become ranges from the lidar."""
    ox, oy, oyaw = origin
    c, s = math.cos(oyaw), math.sin(oyaw)
    rel = boxes.center[:, :2] - (ox, oy)
    center = boxes.center.copy()
    center[:, 0] = c * rel[:, 0] + s * rel[:, 1]
    center[:, 1] = -s * rel[:, 0] + c * rel[:, 1]
    velocity = np.stack([c * boxes.velocity[:, 0] + s * boxes.velocity[:, 1],
                         -s * boxes.velocity[:, 0] + c * boxes.velocity[:, 1]], axis=1)
    return Boxes(center, boxes.size, _wrap(boxes.yaw - oyaw), boxes.label, boxes.score, velocity, boxes.ids,
                 "lidar", boxes.stamp)


def visible_ground_truth(gt: Boxes, cloud: PointCloud) -> Boxes:
    """Ground truth hit by at least one lidar point, when the cloud says which actor each point hit."""
    if cloud.actor_ids is None:
        return gt
    return gt.select(np.isin(gt.ids, np.unique(cloud.actor_ids)))


# --------------------------------------------------------------------------------------------
# The stack, in process


def lidar_node_config():
    """The lidar node's parameters (mount, limits, model) from its parameter file."""
    from adstack.config import load_params
    from adstack.node import param_file
    from perception.lidar_node import LidarNodeConfig
    return load_params(LidarNodeConfig, param_file("perception", "lidar_node"))


@dataclass
class Frame:
    """One processed cloud."""

    stamp: float
    log_ns: int
    cloud: PointCloud
    pose: EgoState
    detections: Boxes
    tracks: Boxes
    detect_ms: float = math.nan
    track_ms: float = math.nan


class CloudGate:
    """The lidar node's acceptance rules, in its order: decode and validate; a pose within
    ``max_pose_age_s``; a stamp newer than the last accepted cloud's (``adstack.node_io.StampGuard``:
    an older one is dropped, unless it is older by more than a few seconds, a new run)."""

    def __init__(self, poses: PoseBuffer, max_points: int, max_pose_age_s: float):
        from adstack.node_io import StampGuard
        self.poses = poses
        self.max_points = max_points
        self.max_pose_age_s = max_pose_age_s
        self.order = StampGuard()
        self.new_run = False   # the last accepted cloud jumped back in time: downstream state resets
        self.drops: dict[str, int] = {}
        self.nonfinite_points = 0

    def _drop(self, kind: str) -> None:
        self.drops[kind] = self.drops.get(kind, 0) + 1

    def accept(self, msg, topic: str) -> tuple[PointCloud, EgoState] | None:
        try:
            cloud, dropped = rc.decode_pointcloud2(msg, max_points=self.max_points, allow_empty=True, topic=topic)
        except rc.MalformedMessage as exc:
            self._drop(f"malformed_pointcloud.{exc.kind}")
            return None
        self.nonfinite_points += dropped
        pose = self.poses.nearest(cloud.stamp, self.max_pose_age_s)
        if pose is None:
            self._drop("no_pose")
            return None
        order = self.order.check(cloud.stamp)
        if order in ("duplicate_stamp", "out_of_order_stamp"):
            self._drop(order)
            return None
        self.new_run = order == "clock_jump_back"
        return cloud, pose


class InProcessStack:
    """Detector + tracker called directly, as the nodes call them: the tracker gets the detections
    as the tracking node receives them (through the DetectedObjects message), and starts afresh when
    the stamps jump back (a new run)."""

    name = "inprocess"

    def __init__(self, model: str, node_cfg):
        from fusion.tracker import MultiObjectTracker, TrackerConfig
        from perception.pipeline import LidarPerception, make_detector
        mount = (node_cfg.mount_x_m, node_cfg.mount_y_m, node_cfg.mount_z_m, node_cfg.mount_yaw_rad)
        self.perception = LidarPerception(make_detector(model), mount, track=False)
        self.tracker_config = TrackerConfig.load()
        self.tracker = MultiObjectTracker(self.tracker_config)

    def process(self, cloud: PointCloud, pose: EgoState, new_run: bool = False) -> tuple[Boxes, Boxes, dict]:
        pose = through_odometry(pose)  # the lidar node's pose went through an Odometry message
        t0 = time.perf_counter()
        if len(cloud) == 0:
            detections = Boxes(frame_id="map", stamp=cloud.stamp)
        else:
            detections = self.perception.detect(cloud, pose)
        detections.stamp = cloud.stamp
        t1 = time.perf_counter()
        if new_run:
            self.tracker.reset()
        received = through_messages(detections, tracked=False)
        tracks = self.tracker.step(received, received.stamp)
        tracks.frame_id, tracks.stamp = detections.frame_id, cloud.stamp
        t2 = time.perf_counter()
        return detections, tracks, {"detect": (t1 - t0) * 1e3, "track": (t2 - t1) * 1e3}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Route, planning and control, in process


ROUTE_FILE = "route.xml"
ROUTE_WAYPOINT_SPACING_M = 25.0
# The logged path is the drive's dense route rounded to 1 mm; re-planned through the lane graph it
# comes back within millimetres (4 mm on sim/routes/town01_demo.xml route 0). Half a metre apart
# means another lane was taken somewhere: then the route is not the one that was driven.
ROUTE_MATCH_TOL_M = 0.5


def planning_node_config():
    """The planning node's parameters from its parameter file (route fields filled in later)."""
    from adstack.config import load_params
    from adstack.node import param_file
    from planning.planning_node import PlanningNodeConfig
    return load_params(PlanningNodeConfig, param_file("planning", "planning_node"))


def controller_config():
    from adstack.config import load_params
    from adstack.node import param_file
    from control import ControllerConfig
    return load_params(ControllerConfig, param_file("control", "controller"))


def _route_message(reader, roles: dict) -> dict | None:
    """The last route message of the bag as a dict (ours: {"route_id", "town", "path"}), or None."""
    if not roles.get("route"):
        return None
    data = None
    for _, _, msg in reader.messages([roles["route"]]):
        try:
            value = json.loads(msg.data)
        except (ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            data = value
    return data


def route_waypoints_from_path(hdmap, path: np.ndarray, spacing_m: float = ROUTE_WAYPOINT_SPACING_M):
    """Sparse waypoints ((N,2), (N,) yaw) along a dense logged path: start, goal, and a point about
    every ``spacing_m`` that lies on no junction lane (the Leaderboard snaps each waypoint to the
    nearest lane whatever its heading, and lanes overlap in junctions)."""
    step = np.diff(path, axis=0)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(step[:, 0], step[:, 1]))])
    tangent = np.gradient(path, axis=0)
    yaw = np.arctan2(tangent[:, 1], tangent[:, 0])
    keys, _, _ = hdmap.nearest_lanes(path, yaw)
    in_junction = np.array([hdmap.lanes[k].is_junction for k in keys])
    picks = [0]
    for i in range(1, len(path) - 1):
        if s[i] - s[picks[-1]] >= spacing_m and not in_junction[i]:
            picks.append(i)
    picks.append(len(path) - 1)
    return path[picks], yaw[picks]


def _path_deviation_m(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a point of either path to the other path's points (both ~1 m spaced)."""
    from scipy.spatial import cKDTree
    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()))


@dataclass
class RoutePlan:
    """What the planner runs on: the planning node's parameters with the route set, and the map."""

    params: object          # PlanningNodeConfig (routes, route_id, map, map_dirs set)
    hdmap: object
    route: object           # hdmap.routing.Route
    info: dict


def resolve_route(opts: ReplayOptions, route_data: dict | None, out: Path) -> tuple[RoutePlan | None, str]:
    """(RoutePlan, "") or (None, why planning and control are skipped).

    ``--routes``/``--route-id`` win (a bad file or id is the user's error: UserError). Otherwise the
    bag's route message: ours holds the town and the dense path, which is re-planned through the lane
    graph from sparse waypoints written to OUT/route.xml, so that the in-process planner and the
    planning node load the very same route the way the node loads one (a route file and an id)."""
    from sim.drive import load_route_from_params
    if bool(opts.routes) != bool(opts.route_id):
        raise UserError("--routes and --route-id go together")
    params = planning_node_config()
    params.map = opts.map or ""
    params.map_dirs = ",".join(str(Path(d).resolve()) for d in opts.map_dirs)
    if opts.routes:
        params.routes, params.route_id = str(Path(opts.routes).resolve()), str(opts.route_id)
        _, hdmap, route = load_route_from_params(params)
        return RoutePlan(params, hdmap, route, {"source": "--routes", "routes": params.routes,
                                                "route_id": params.route_id, "map": hdmap.name}), ""
    if route_data is None:
        return None, (f"no route known (the bag has no route on {topics.ROUTE}; "
                      "give --routes FILE --route-id ID)")
    try:
        path = np.asarray(route_data.get("path", []), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        path = np.zeros((0, 2))
    town = opts.map and Path(opts.map).stem or str(route_data.get("town") or "")
    if len(path) < 2 or not np.isfinite(path).all():
        return None, f"the route on {topics.ROUTE} holds no usable path; give --routes FILE --route-id ID"
    if not town:
        return None, f"the route on {topics.ROUTE} names no town; give --map MAP (or --routes FILE --route-id ID)"
    from hdmap import load_map
    from hdmap.route_writer import write_route_file
    route_id = str(route_data.get("route_id", "bag"))
    try:
        hdmap = load_map(opts.map or town, map_dirs=opts.map_dirs)
        points, yaw = route_waypoints_from_path(hdmap, path)
        params.routes = str(write_route_file(out / ROUTE_FILE, town, [(route_id, points, yaw)]).resolve())
        params.route_id = route_id
        _, hdmap, route = load_route_from_params(params)
    except UserError as err:
        return None, f"the route on {topics.ROUTE} cannot be planned on {town}: {err}"
    deviation = _path_deviation_m(path, route.path)
    if deviation > ROUTE_MATCH_TOL_M:
        return None, (f"the route on {topics.ROUTE} re-planned on {hdmap.name} strays {deviation:.2f} m from the "
                      f"logged path (limit {ROUTE_MATCH_TOL_M} m); give --routes FILE --route-id ID")
    return RoutePlan(params, hdmap, route, {"source": "bag", "routes": params.routes, "route_id": route_id,
                                            "map": hdmap.name, "waypoints": len(points),
                                            "max_deviation_m": round(deviation, 4)}), ""


def light_table(hdmap, start: tuple[float, float, float]) -> dict:
    """Group id -> static light (id, position, governed lanes), as the sim bridge publishes it on
    /simulation/traffic_light_table for the planning node: our drive logs carry the light states,
    and the rest comes from the same map's SUMO net (a world with no traffic, started and closed)."""
    from sim.world import World, WorldConfig
    cfg = WorldConfig.load()
    cfg.lidar = False
    cfg.traffic.vehicles, cfg.traffic.pedestrians, cfg.traffic.warmup_s = 0, 0, 0.0
    world = World(hdmap, cfg, seed=0)
    try:
        lights = world.reset((*start, 0.0)).traffic_lights
    finally:
        world.close()
    table = {str(rc.traffic_light_group_id(light.id)): {"id": light.id, "position": np.asarray(light.position).tolist(),
                                                        "lanes": [list(x) for x in light.lanes]} for light in lights}
    return json.loads(json.dumps(table))  # as the node receives it: JSON lists, not tuples


def through_odometry(ego: EgoState) -> EgoState:
    """``ego`` as a node's subscriber sees it (through nav_msgs/Odometry: yaw through a quaternion)."""
    return rc.ego_from_odometry(_wire(rc.odometry_to_msg(ego, factory=_bag_factory())))


def through_trajectory(traj):
    """``traj`` as the controller node (and the replay's recording) sees it: through the Trajectory message."""
    return rc.trajectory_from_msg(_wire(rc.trajectory_to_msg(traj, factory=_bag_factory())))


def through_command(cmd):
    return rc.command_from_msg(_wire(rc.command_to_msg(cmd, factory=_bag_factory())))


def through_lights(lights: list, stamp: float) -> list:
    return rc.traffic_lights_from_msg(_wire(rc.traffic_lights_to_msg(lights, stamp, factory=_bag_factory())))


class _Counts(dict):
    def add(self, key: str) -> None:
        self[key] = self.get(key, 0) + 1


def _receive_ego(ego: EgoState, order, problems: _Counts, prefix: str) -> tuple[EgoState | None, bool]:
    """adstack.node_io.receive_odometry's rules on an already decoded kinematic state."""
    from adstack.node_io import MalformedMessage, check_ego
    try:
        ego = check_ego(ego, "input/kinematic_state")
    except MalformedMessage as exc:
        problems.add(f"malformed_odometry.{exc.kind}")
        return None, False
    result = order.check(ego.stamp)
    if result in ("duplicate_stamp", "out_of_order_stamp"):
        problems.add(f"{prefix}{result}")
        return None, False
    return ego, result == "clock_jump_back"


class PlanningStage:
    """The planning node (planning/planning_node.py) without ROS, on its inputs as it receives them:
    the node's own rules (``planning.cycle.PlanningCycle``: expert behind the safety layer, a cycle
    per kinematic state that opens a new period of ``planner_hz`` on the sensor-time grid, stale
    objects or a failing planner giving the safety layer's controlled stop), fed as the node feeds
    them. The node's wall-clock watchdog has no counterpart: in a replay, sensor time is the only clock."""

    def __init__(self, plan: RoutePlan, table: dict):
        from adstack.node_io import StampGuard
        from planning.cycle import PlanningCycle
        from planning.safety import SafetyConfig, SafetyLayer
        from sim.drive import make_planner
        self.params = plan.params
        self.problems, self.actions = _Counts(), _Counts()
        self.cycle = PlanningCycle(make_planner(self.params.planner, plan.hdmap, plan.route),
                                   SafetyLayer(SafetyConfig.load()), self.params.planner_hz,
                                   self.params.objects_timeout_s, lambda kind, *_, **__: self.problems.add(kind))
        self.table = table
        self.odom_order = StampGuard()
        self.light_states = self.light_states_unknown = 0

    def on_objects(self, boxes: Boxes) -> None:
        self.cycle.on_objects(boxes)

    def on_lights(self, lights: list, stamp: float) -> None:
        from planning.planning_node import lights_from_table
        n_states = len(lights)
        lights = lights_from_table(self.table, lights)
        self.light_states += n_states
        self.light_states_unknown += n_states - len(lights)  # no table entry: the node ignores them too
        self.cycle.on_lights(lights, stamp)

    def on_odometry(self, ego: EgoState):
        """The trajectory for this kinematic state when a cycle is due (else None)."""
        ego, jumped_back = _receive_ego(ego, self.odom_order, self.problems, "odometry_")
        if ego is None or not self.cycle.cycle_due(ego, jumped_back):
            return None
        return self.plan(ego)

    def plan(self, ego: EgoState):
        traj, status = self.cycle.plan(ego)
        self.actions.add(status.action)
        return traj


class ControlStage:
    """The control node (control/control_node.py) without ROS: the node's own rules
    (``control.cycle.ControlCycle``), one command per kinematic state on the latest trajectory;
    when a plan is due for this state (lockstep, ``sync_trajectory_period_s``) it is the trajectory
    planned from this very state."""

    def __init__(self):
        from adstack.node_io import StampGuard
        from control import Controller
        from control.cycle import ControlCycle
        self.core = Controller(controller_config())
        self.problems, self.statuses = _Counts(), _Counts()
        self.cycle = ControlCycle(self.core, lambda kind, *_, **__: self.problems.add(kind))
        self.odom_order = StampGuard()

    def on_trajectory(self, traj) -> None:
        self.cycle.on_trajectory(traj)

    def on_odometry(self, ego: EgoState, planned=None):
        """The command for this kinematic state (None when the state is dropped); ``planned``: the
        trajectory the planner made from it, if it made one (the node waits for it in lockstep)."""
        ego, jumped_back = _receive_ego(ego, self.odom_order, self.problems, "")
        if ego is None:
            return None
        if jumped_back:
            self.cycle.on_clock_jump_back()
        if planned is not None:
            self.on_trajectory(planned)
        command = self.cycle.command(ego)
        self.statuses.add(self.core.debug.status)
        return command


def compare_trajectories(a, b) -> tuple[bool, float]:
    """(same, max abs difference) of two trajectories as received (x, y, yaw, v, t per point)."""
    if a is None or b is None:
        return a is None and b is None, (0.0 if a is None and b is None else math.inf)
    if a.points.shape != b.points.shape or abs(a.stamp - b.stamp) > 1e-6:
        return False, math.inf
    if not len(a.points):
        return True, 0.0
    d = np.abs(a.points - b.points)
    d[:, 2] = np.abs(_wrap(a.points[:, 2] - b.points[:, 2]))
    diff = float(d.max())
    return diff <= CONTROL_TOLERANCE, diff


def compare_commands(a, b) -> tuple[bool, float]:
    if a is None or b is None:
        return a is None and b is None, (0.0 if a is None and b is None else math.inf)
    diff = max(abs(a.steer - b.steer), abs(a.accel - b.accel))
    return diff <= CONTROL_TOLERANCE and abs(a.stamp - b.stamp) <= 1e-6, diff


# Both sides compare what crossed a message (serialized to CDR: float32 speed, steering and
# acceleration; yaw through a quaternion), computed from the same inputs by the same code, and they
# agree to the bit (max difference 0.0 over 80 cycles of an 8 s Town01 drive). The tolerance only
# leaves room for float64 rounding should a library order a sum differently in another process; it
# is far below the float32 step of the message fields (~1e-7 relative), so a real difference shows.
CONTROL_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------
# The stack as the ROS 2 graph


class GraphStack:
    """The nodes of launch/graph.yaml as separate processes, fed in lockstep over DDS.

    Perception: publish the odometry up to the cloud's stamp + ``max_pose_age_s`` and the cloud, then
    wait for the detections and tracks stamped with the cloud's stamp before the next. The lidar node
    looks up the pose *nearest* its cloud's stamp, which may come after the cloud, so it gets those
    poses ahead of time on a topic of its own (``LIDAR_POSE_TOPIC``, the one remapping changed).

    Planning and control (with ``planning``): the planner and controller get the kinematic state on
    the standard topic in bag order, as the in-process stack does; after each, the player waits for
    the trajectory (when a cycle is due) and the command stamped with it. The tracks (from the
    tracker) and light states (from the player) reach the planner from other writers than the
    kinematic state, so a state goes out ``INPUT_HEAD_START_S`` after the last of them. The planner
    does not wait for inputs stamped like its state (``sync_timeout_s`` 0: our logs hold tracks and
    lights at lower rates than the state); the controller does wait for the trajectory planned from
    its state (``sync_trajectory_period_s``), as in ``adstack launch sim``. The nodes' wall-clock
    silence watchdogs are off: in lockstep the player holds sensor time while a node thinks.

    Lockstep makes the comparison with the in-process stack exact: no sample is skipped or reordered.
    """

    name = "ros2"
    PERCEPTION_NODES = ("lidar_detector", "tracker")
    PLANNING_NODES = ("planner", "controller")
    STAMP_TOLERANCE_NS = 1000  # float seconds cannot carry every nanosecond of an epoch stamp
    POSE_HEAD_START_S = 0.1  # odometry goes out at least this long before its cloud
    INPUT_HEAD_START_S = 0.1  # tracks and light states land at the planner before the next state
    LIDAR_POSE_TOPIC = "/replay/lidar/kinematic_state"

    def __init__(self, model: str, node_cfg, out: Path, domain_id: int | None = None, timeout_s: float = 30.0,
                 planning: RoutePlan | None = None, table: dict | None = None):
        import dataclasses
        import os
        import subprocess

        from adstack.launch_graph import all_nodes
        from adstack.launch_runner import free_domain_id, node_command
        from adstack.node_io import msg_class

        types = ["PointCloud2", "Odometry", "DetectedObjects", "TrackedObjects"]
        if planning is not None:
            types += ["Trajectory", "Control", "TrafficLightGroupArray", "String"]
        try:
            from rclpy.type_support import check_for_type_support
            for name in types:
                check_for_type_support(msg_class(name))
        except Exception as exc:  # ImportError, or rosidl's UnsupportedTypeSupport when a library is missing
            raise UserError(f"--graph ros2 needs rclpy and the Autoware message types: {exc}") from None
        self.node_cfg = node_cfg
        self.timeout_s = timeout_s
        self.planning = planning
        self.table = table or {}
        self.domain_id = domain_id if domain_id is not None else free_domain_id()
        specs = {n.name: n for n in all_nodes()}
        names = self.PERCEPTION_NODES + (self.PLANNING_NODES if planning is not None else ())
        self.specs = {name: specs[name] for name in names}
        lidar = self.specs["lidar_detector"]
        self.specs["lidar_detector"] = dataclasses.replace(
            lidar, remappings={**lidar.remappings, "input/kinematic_state": self.LIDAR_POSE_TOPIC})
        log_dir = Path(out) / "nodes"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env["ROS_DOMAIN_ID"] = str(self.domain_id)
        params = {"lidar_detector": {"model": str(Path(model).resolve()) if Path(model).is_dir() else model}}
        if hasattr(node_cfg, "reliable_input"):
            # A replay may not lose a cloud. At sensor QoS (best effort) Fast DDS lost most 1.6 MB
            # clouds between two processes here (0-5 of 20; 20 of 20 reliable or with 32 MB
            # shared-memory segments); a lost one would cost a resend each.
            params["lidar_detector"]["reliable_input"] = True
        if planning is not None:
            p = planning.params
            params["planner"] = {"routes": p.routes, "route_id": p.route_id, "map": p.map, "map_dirs": p.map_dirs,
                                 "odometry_timeout_s": 0.0, "sync_timeout_s": 0.0}
            params["controller"] = {"odometry_timeout_s": 0.0, "sync_trajectory_period_s": 1.0 / p.planner_hz,
                                    "sync_timeout_s": float(timeout_s)}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        for name, spec in self.specs.items():
            with open(log_dir / f"{name}.log", "w") as log:
                self.procs[name] = subprocess.Popen(node_command(spec, params.get(name, {})), env=env, stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._start_player()
        except BaseException:
            self.close()
            raise

    def _start_player(self) -> None:
        import os

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from adstack.node import latched_qos, reliable_qos
        from adstack.node_io import msg_class

        # Fast DDS reads the discovery range from this process's environment.
        saved = {"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")}
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        try:
            self.context = rclpy.Context()
            rclpy.init(context=self.context, domain_id=self.domain_id)
            self.node = rclpy.create_node("adstack_replay_player", context=self.context)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        det_remap = self.specs["lidar_detector"].remappings
        trk_remap = self.specs["tracker"].remappings
        self.cloud_pub = self.node.create_publisher(msg_class("PointCloud2"), det_remap["input/pointcloud"], reliable_qos())
        self.pose_pub = self.node.create_publisher(msg_class("Odometry"), det_remap["input/kinematic_state"],
                                                   reliable_qos())
        self.received: dict[str, dict[int, tuple[float, object]]] = {"detections": {}, "tracks": {}, "trajectory": {},
                                                                      "command": {}}
        self.node.create_subscription(msg_class("DetectedObjects"), det_remap["output/objects"],
                                      lambda m: self._on_objects("detections", m), reliable_qos(100))
        self.node.create_subscription(msg_class("TrackedObjects"), trk_remap["output/objects"],
                                      lambda m: self._on_objects("tracks", m), reliable_qos(100))
        self.n_poses_sent = 0
        self.poses_sent_at = -math.inf
        self.inputs_sent_at = -math.inf
        self.resends = 0
        self.answer_s: list[float] = []
        det_topic, trk_topic = det_remap["output/objects"], trk_remap["output/objects"]
        # Every link of the chain must exist before the first cloud: reliable, volatile topics do not
        # deliver what was published before the reader matched, and a tracker that misses the first
        # detections would make the comparison fail. The tracker's reader of the detections is the
        # second subscriber there (ours is the first); the planner's reader of the tracks likewise.
        links = [lambda: self.cloud_pub.get_subscription_count(), lambda: self.pose_pub.get_subscription_count(),
                 lambda: self.node.count_publishers(det_topic), lambda: self.node.count_publishers(trk_topic),
                 lambda: self.node.count_subscribers(det_topic) >= 2]
        if self.planning is not None:
            from planning.planning_node import TRAFFIC_LIGHT_TABLE
            plan_remap = self.specs["planner"].remappings
            ctrl_remap = self.specs["controller"].remappings
            traj_topic, cmd_topic = plan_remap["output/trajectory"], ctrl_remap["output/control_cmd"]
            self.odom_pub = self.node.create_publisher(msg_class("Odometry"), plan_remap["input/kinematic_state"],
                                                       reliable_qos())
            self.lights_pub = self.node.create_publisher(msg_class("TrafficLightGroupArray"),
                                                         plan_remap["input/traffic_signals"], reliable_qos())
            self.table_pub = self.node.create_publisher(msg_class("String"), TRAFFIC_LIGHT_TABLE, latched_qos())
            self.table_pub.publish(rc.string_msg(json.dumps(self.table)))
            self.node.create_subscription(msg_class("Trajectory"), traj_topic, self._on_trajectory, reliable_qos(100))
            self.node.create_subscription(msg_class("Control"), cmd_topic, self._on_command, reliable_qos(100))
            links += [lambda: self.odom_pub.get_subscription_count() >= 2,   # planner and controller
                      lambda: self.lights_pub.get_subscription_count(), lambda: self.table_pub.get_subscription_count(),
                      lambda: self.node.count_subscribers(trk_topic) >= 2,
                      lambda: self.node.count_publishers(traj_topic),
                      lambda: self.node.count_subscribers(traj_topic) >= 2,
                      lambda: self.node.count_publishers(cmd_topic)]
        deadline = time.monotonic() + self.timeout_s
        while not all(link() for link in links):
            self._check_alive()
            if time.monotonic() > deadline:
                raise UserError(f"the replay nodes did not come up within {self.timeout_s:g} s; see {self.log_dir}")
            self.executor.spin_once(timeout_sec=0.1)
        # What this process sees, the nodes may learn a moment later from each other.
        self._spin_for(1.0)

    def _on_objects(self, kind: str, msg) -> None:
        boxes = rc.boxes_from_objects(msg)
        self.received[kind][rc.time_to_ns(msg.header.stamp)] = (time.perf_counter(), boxes)

    def _on_trajectory(self, msg) -> None:
        stamp_ns = rc.time_to_ns(msg.header.stamp)
        self.received["trajectory"][stamp_ns] = (time.perf_counter(), rc.trajectory_from_msg(msg))

    def _on_command(self, msg) -> None:
        self.received["command"][rc.time_to_ns(msg.stamp)] = (time.perf_counter(), rc.command_from_msg(msg))

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            tail = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise UserError(f"replay node {name} exited with code {dead[name]}: {' | '.join(tail)}",
                            self.log_dir / f"{name}.log")

    def _take(self, kind: str, stamp_ns: int):
        for key in list(self.received[kind]):
            if abs(key - stamp_ns) <= self.STAMP_TOLERANCE_NS:
                return self.received[kind].pop(key)
        return None

    def send_poses(self, cloud: PointCloud, poses: PoseBuffer) -> None:
        """Publish, in stamp order, the odometry not yet sent that the lidar node may need for
        ``cloud``: stamped up to the cloud's stamp + ``max_pose_age_s``. Call it well before
        :meth:`process`: the node's executor serves a waiting cloud before waiting odometry, and a
        cloud seen before its pose is matched with an older one."""
        window = poses.up_to(cloud.stamp + self.node_cfg.max_pose_age_s)
        for ego in window[self.n_poses_sent:]:
            self.pose_pub.publish(rc.odometry_to_msg(ego))
        if len(window) > self.n_poses_sent:
            self.poses_sent_at = time.monotonic()
        self.n_poses_sent = len(window)

    def _send_cloud(self, cloud: PointCloud) -> None:
        self.cloud_pub.publish(rc.pointcloud_to_msg(cloud))

    def _spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.005)

    def _resend_after_s(self) -> float:
        """How long to wait for a cloud's detections before sending it again (a node that subscribes
        best effort, or dropped the cloud for want of a pose). A resend that crosses a slow answer is
        harmless: the node drops a repeated stamp."""
        typical = float(np.median(self.answer_s[-20:])) if self.answer_s else 1.0
        return min(2.0, max(0.3, 3.0 * typical))

    def process(self, cloud: PointCloud, poses: PoseBuffer) -> tuple[Boxes, Boxes, dict]:
        stamp_ns = int(round(cloud.stamp * 1e9))
        if self.n_poses_sent < len(poses.up_to(cloud.stamp + self.node_cfg.max_pose_age_s)):
            self.send_poses(cloud, poses)   # the caller did not
        # The node's executor serves a waiting cloud before waiting odometry: let the odometry land first.
        self._spin_for(self.POSE_HEAD_START_S - (time.monotonic() - self.poses_sent_at))
        t0 = time.perf_counter()   # latency: cloud published -> objects back
        self._send_cloud(cloud)
        deadline = time.monotonic() + self.timeout_s
        next_resend = time.monotonic() + self._resend_after_s()
        got: dict[str, tuple[float, Boxes]] = {}
        while len(got) < 2:
            self.executor.spin_once(timeout_sec=0.01)
            for kind in ("detections", "tracks"):
                if kind not in got:
                    item = self._take(kind, stamp_ns)
                    if item is not None:
                        got[kind] = item
            now = time.monotonic()
            if len(got) < 2 and now > deadline:
                self._check_alive()
                raise UserError(f"no {' and '.join(k for k in ('detections', 'tracks') if k not in got)} for the "
                                f"cloud stamped {cloud.stamp:.3f} within {self.timeout_s:g} s; see {self.log_dir}")
            if "detections" not in got and now > next_resend:
                # Lost in transport (a best-effort subscription), or dropped for want of a pose: the node
                # has not used it, so sending it again is safe (a repeat of a used one is dropped).
                self._check_alive()
                self.resends += 1
                self._send_cloud(cloud)
                next_resend = now + self._resend_after_s()
        (t_det, det), (t_trk, trk) = got["detections"], got["tracks"]
        self.answer_s.append(t_det - t0)
        self.inputs_sent_at = time.monotonic()  # the planner got the tracks about when we did
        return det, trk, {"detections_e2e": (t_det - t0) * 1e3, "tracks_e2e": (t_trk - t0) * 1e3}

    def send_lights(self, lights: list, stamp: float) -> None:
        self.lights_pub.publish(rc.traffic_lights_to_msg(lights, stamp))
        self.inputs_sent_at = time.monotonic()

    def plan_and_control(self, ego: EgoState, want_trajectory: bool, want_command: bool):
        """Publish one kinematic state (as decoded from the bag: it crosses one Odometry message, as
        the in-process stack's copy does) to the planner and controller; wait for the trajectory (when
        the in-process planner planned a cycle for it) and the command. Returns (trajectory, command,
        latencies in ms from the state's publication)."""
        stamp_ns = int(round(ego.stamp * 1e9))
        self._spin_for(self.INPUT_HEAD_START_S - (time.monotonic() - self.inputs_sent_at))
        t0 = time.perf_counter()
        self.odom_pub.publish(rc.odometry_to_msg(ego))
        wanted = [k for k, w in (("trajectory", want_trajectory), ("command", want_command)) if w]
        got: dict[str, tuple[float, object]] = {}
        deadline = time.monotonic() + self.timeout_s
        while len(got) < len(wanted):
            self.executor.spin_once(timeout_sec=0.005)
            for kind in wanted:
                if kind not in got:
                    item = self._take(kind, stamp_ns)
                    if item is not None:
                        got[kind] = item
            if len(got) < len(wanted) and time.monotonic() > deadline:
                self._check_alive()
                missing = " and ".join(k for k in wanted if k not in got)
                raise UserError(f"no {missing} for the kinematic state stamped {ego.stamp:.3f} within "
                                f"{self.timeout_s:g} s; see {self.log_dir}")
        ms = {f"{k}_e2e": (t - t0) * 1e3 for k, (t, _) in got.items()}
        return (got["trajectory"][1] if "trajectory" in got else None,
                got["command"][1] if "command" in got else None, ms)

    def unexpected(self, settle_s: float = 0.3) -> dict:
        """Outputs the graph made that the in-process stack did not (left over after the replay)."""
        self._spin_for(settle_s)
        return {k: len(v) for k, v in self.received.items() if v}

    def close(self) -> None:
        from adstack.launch_runner import stop_all

        executor, node, context = (getattr(self, k, None) for k in ("executor", "node", "context"))
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if context is not None:
            context.try_shutdown()
        self.executor = self.node = self.context = None
        stop_all(self.procs)


def through_messages(boxes: Boxes, tracked: bool) -> Boxes:
    """``boxes`` as a node's subscriber sees them: through the Autoware object message (labels map
    onto Autoware's classes, scores to float32)."""
    msg = (rc.tracked_objects_to_msg if tracked else rc.detected_objects_to_msg)(boxes, factory=_bag_factory())
    return rc.boxes_from_objects(_wire(msg))


def _wire(msg):
    """``msg`` serialized to CDR and back, as DDS carries it: float32 fields come back rounded."""
    store, name = _bag_factory().store, rc.msg_typename(msg)
    return store.deserialize_cdr(store.serialize_cdr(msg, name), name)


@lru_cache(maxsize=1)
def _bag_factory():
    return rc.RosbagsFactory()


# --------------------------------------------------------------------------------------------
# Comparison of two replays


def compare_boxes(a: Boxes, b: Boxes, tol: float = 1e-4) -> tuple[bool, float]:
    """(same, max abs difference) of two box sets in the same order: count, labels, ids exact;
    centre, size, yaw and score to ``tol`` (the graph path rounds scores through float32)."""
    if len(a) != len(b) or not np.array_equal(a.label, b.label):
        return False, math.inf
    if not len(a):
        return True, 0.0
    diff = max(float(np.abs(a.center - b.center).max()), float(np.abs(a.size - b.size).max()),
               float(np.abs(_wrap(a.yaw - b.yaw)).max()), float(np.abs(a.score - b.score).max()))
    return diff <= tol, diff


# --------------------------------------------------------------------------------------------
# Metrics and report


def latency_summary(values_ms: list[float]) -> dict:
    """p50/p99/mean/max in ms over the frames after the first; the first (loading JIT caches and
    models, first allocations) is reported on its own as ``first``."""
    v = np.asarray([x for x in values_ms if np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"n": 0, "first": None, "p50": None, "p99": None, "mean": None, "max": None}
    first, rest = float(v[0]), (v[1:] if v.size > 1 else v)
    return {"n": int(v.size), "first": round(first, 3), "p50": round(float(np.percentile(rest, 50)), 3),
            "p99": round(float(np.percentile(rest, 99)), 3), "mean": round(float(rest.mean()), 3),
            "max": round(float(rest.max()), 3)}


def detection_metrics(gt_frames: list[Boxes], pred_frames: list[Boxes]) -> dict:
    from perception.metrics import evaluate
    return evaluate(gt_frames, pred_frames)


def format_report(report: dict) -> str:
    lines = [f"replay of {report['bag']} through {report['graph']} (model {report['model']}): "
             f"{report['frames']['processed']} of {report['frames']['clouds']} clouds processed"
             + (f", dropped {report['frames']['dropped']}" if report['frames']['dropped'] else "")]
    lines.append(f"{'latency (ms)':<24}{'n':>6}{'first':>9}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    fmt = lambda v: f"{'-':>9}" if v is None else f"{v:>9.2f}"  # noqa: E731
    for stage, s in report["latency_ms"].items():
        lines.append(f"{stage:<24}{s['n']:>6}" + "".join(fmt(s[k]) for k in ("first", "p50", "p99", "mean", "max")))
    metrics = report.get("metrics")
    if metrics is None:
        lines.append(f"metrics: none ({report.get('metrics_note', 'no ground truth in the bag')})")
    else:
        lines.append(f"metrics against {metrics['ground_truth_topic']} on {metrics['frames']} frames "
                     f"({metrics['ground_truth_filter']}):")
        lines.append(f"{'stage':<11}{'class':<12}{'GT':>6}{'pred':>6}{'AP@2m':>8}{'recall@2m':>11}")
        for stage in ("detection", "tracking"):
            for name, e in metrics[stage]["classes"].items():
                if not e["n_gt"] and not e["n_pred"]:
                    continue
                ap = e["ap"].get("2.0") if e["ap"] else None
                rec = e["recall_at_tp_threshold"]
                lines.append(f"{stage:<11}{name.lower():<12}{e['n_gt']:>6}{e['n_pred']:>6}"
                             f"{'-' if ap is None else format(ap, '.3f'):>8}{'-' if rec is None else format(rec, '.3f'):>11}")
            m = metrics[stage]["mAP"]
            lines.append(f"{stage:<11}{'mAP':<12}{'':>12}{'-' if m is None else format(m, '.3f'):>8}")
    planning = report.get("planning")
    if planning is not None and "skipped" in planning:
        lines.append(f"planning and control: skipped: {planning['skipped']}")
    elif planning is not None:
        r = planning["route"]
        how = (f"re-planned from the bag's path through {r['waypoints']} waypoints, within {r['max_deviation_m']:g} m"
               if r["source"] == "bag" else f"from {r['routes']}")
        actions = ", ".join(f"{k} {v}" for k, v in sorted(planning["safety_actions"].items()))
        lights = planning["traffic_lights"]
        lines.append(f"planning: {planning['cycles']} trajectories ({planning['planner']} + safety: {actions or '-'}), "
                     f"control: {planning['commands']} commands; route {r['route_id']} on {r['map']} ({how}); "
                     f"{lights['messages']} light-state messages, {lights['table_signals']} signals in the table")
    eq = report.get("equivalence")
    if eq is not None:
        lines.append(f"graph vs in-process: {'SAME' if eq['same'] else 'DIFFERENT'} on {eq['frames']} frames, "
                     f"{eq['planning_cycles']} trajectories, {eq['commands']} commands (max difference: objects "
                     f"{eq['max_difference']:.2g}, trajectory {eq['max_trajectory_difference']:.2g}, command "
                     f"{eq['max_command_difference']:.2g}; {eq['resent_clouds']} clouds sent again)")
        for d in eq["differing_frames"][:5]:
            lines.append(f"  differs: {d['stage']} at {d['stamp']:.3f}: {d['inprocess']} in process, {d['graph']} "
                         f"from the graph, difference {d['difference']}")
        if eq.get("unexpected_graph_outputs"):
            lines.append(f"  the graph also sent: {eq['unexpected_graph_outputs']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The replay


def _read_poses_and_truth(reader, roles: dict) -> tuple[PoseBuffer, GroundTruth | None]:
    wanted = [roles["odom"]] + ([roles["gt"]] if roles["gt"] else [])
    poses, truth = [], []
    for topic, _, msg in reader.messages(wanted):
        if topic == roles["odom"]:
            poses.append(rc.ego_from_odometry(msg))
        else:
            truth.append(rc.boxes_from_objects(msg))
    return PoseBuffer(poses), (GroundTruth(truth) if roles["gt"] else None)


def replay(opts: ReplayOptions) -> dict:
    """Run the replay; writes OUT/replay.mcap and OUT/replay.json and returns the report."""
    from adstack.bag import BagReader, BagWriter

    if opts.graph not in GRAPHS:
        raise UserError(f"unknown --graph {opts.graph!r}; choose from {', '.join(GRAPHS)}")
    if opts.rate < 0 or not math.isfinite(opts.rate):
        raise UserError(f"--rate must be >= 0 (0: as fast as possible), got {opts.rate}")
    wall0 = time.perf_counter()
    out = Path(opts.out)
    with BagReader(opts.bag) as reader:
        roles = resolve_topics(reader.topics, opts.topic_map, opts.bag)
        node_cfg = lidar_node_config()
        poses, truth = _read_poses_and_truth(reader, roles)
        out.mkdir(parents=True, exist_ok=True)
        plan, skipped = resolve_route(opts, _route_message(reader, roles), out)
        planning = None
        table: dict = {}
        table_note = ""
        if plan is not None:
            if roles["lights"]:
                try:
                    table = light_table(plan.hdmap, (float(plan.route.path[0, 0]), float(plan.route.path[0, 1]),
                                                     float(plan.route.yaw[0])))
                except Exception as exc:  # the node, without a table, ignores light states: so do we
                    table_note = f"no light table ({type(exc).__name__}: {exc}): light states ignored"
            planning = (PlanningStage(plan, table), ControlStage())
        elif opts.progress:
            print(f"replay: planning and control skipped: {skipped}", file=sys.stderr, flush=True)
        inproc = InProcessStack(opts.model, node_cfg)
        graph = None
        if opts.graph == "ros2":
            graph = GraphStack(opts.model, node_cfg, out, opts.domain_id, opts.node_timeout_s, plan, table)
        view = None
        if opts.viz:
            from adstack.viz import LiveView
            view = LiveView(port=opts.viz_port, mount_xyz_yaw=(node_cfg.mount_x_m, node_cfg.mount_y_m,
                                                               node_cfg.mount_z_m, node_cfg.mount_yaw_rad))
            print(f"replay: live view on {view.url} (Foxglove app: Open connection)", file=sys.stderr, flush=True)
        tmp_bag = out / ".replay.bag"
        writer = BagWriter(tmp_bag, overwrite=True)
        try:
            frames, gate, stage_ms, compare, plan_counts = _run_loop(reader, roles, poses, node_cfg, inproc, planning,
                                                                     graph, writer, view, opts)
        finally:
            writer.close()
            if graph is not None:
                graph.close()
            if view is not None:
                view.close()
        from sim.drive import single_file_log
        single_file_log(tmp_bag, out / OUTPUT_FILE)
        n_clouds = reader.topics[roles["lidar"]].count

    report = {
        "bag": str(opts.bag), "graph": opts.graph, "model": opts.model, "rate": opts.rate,
        "topics": roles,
        "frames": {"clouds": n_clouds, "processed": len(frames), "dropped": dict(gate.drops),
                   "nonfinite_points_dropped": gate.nonfinite_points},
        "latency_ms": {stage: latency_summary(v) for stage, v in stage_ms.items()},
        "outputs": [str(out / OUTPUT_FILE), str(out / REPORT_FILE)]
                   + ([str(out / ROUTE_FILE)] if plan is not None and plan.info["source"] == "bag" else []),
    }
    if truth is None:
        report["metrics"] = None
        report["metrics_note"] = "no ground-truth objects in the bag"
    else:
        report.update(_metrics(frames, truth, roles["gt"], node_cfg))
    if plan is None:
        report["planning"] = {"skipped": skipped}
    else:
        planner, controller = planning
        report["planning"] = {
            "route": plan.info, "planner": plan.params.planner, "planner_hz": plan.params.planner_hz,
            "traffic_lights": {"table_signals": len(table), "messages": plan_counts["lights"],
                               "messages_dropped": plan_counts["lights_dropped"],
                               "states": planner.light_states, "states_not_in_table": planner.light_states_unknown,
                               **({"note": table_note} if table_note else {})},
            "cycles": plan_counts["trajectories"], "commands": plan_counts["commands"],
            "safety_actions": dict(planner.actions), "controller_status": dict(controller.statuses),
            "problems": {**{f"planning.{k}": v for k, v in planner.problems.items()},
                         **{f"control.{k}": v for k, v in controller.problems.items()}}}
    if compare is not None:
        report["equivalence"] = compare
    report["wall_s"] = round(time.perf_counter() - wall0, 3)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=_json_default))
    return report


def _metrics(frames: list[Frame], truth: GroundTruth, gt_topic: str, node_cfg) -> dict:
    mount = (node_cfg.mount_x_m, node_cfg.mount_y_m, node_cfg.mount_z_m, node_cfg.mount_yaw_rad)
    gts, dets, trks = [], [], []
    filtered = False
    for f in frames:
        gt = truth.at(f.stamp)
        if gt is None:
            continue
        if f.cloud.actor_ids is not None:
            filtered = True
        origin = sensor_pose(f.pose, mount)
        gts.append(to_sensor_frame(visible_ground_truth(gt, f.cloud), origin))
        dets.append(to_sensor_frame(f.detections, origin))
        trks.append(to_sensor_frame(f.tracks, origin))
    if not gts:
        return {"metrics": None, "metrics_note": f"no ground truth on {gt_topic} near any cloud's stamp"}
    return {"metrics": {
        "ground_truth_topic": gt_topic, "frames": len(gts),
        "ground_truth_filter": ("boxes hit by >= 1 lidar point (nuScenes)" if filtered
                                else "all boxes (the clouds carry no per-point actor ids)"),
        "detection": detection_metrics(gts, dets), "tracking": detection_metrics(gts, trks)}}


def _run_loop(reader, roles, poses, node_cfg, inproc, planning, graph, writer, view, opts):
    """The main loop over the bag in log-time order. Returns (frames, gate, stage latencies,
    comparison, planning counts)."""
    gate = CloudGate(poses, node_cfg.max_points, node_cfg.max_pose_age_s)
    frames: list[Frame] = []
    stage_ms: dict[str, list[float]] = {"decode": [], "detect": [], "track": []}
    if planning is not None:
        stage_ms.update({"plan": [], "control": []})
    if graph is not None:
        stage_ms.update({"graph_detections_e2e": [], "graph_tracks_e2e": []})
        if planning is not None:
            stage_ms.update({"graph_trajectory_e2e": [], "graph_command_e2e": []})
    eq = {"frames": 0, "planning_cycles": 0, "commands": 0, "same": True, "max_difference": 0.0,
          "max_trajectory_difference": 0.0, "max_command_difference": 0.0, "differing_frames": []}
    counts = {"lights": 0, "lights_dropped": 0, "trajectories": 0, "commands": 0}
    route_xy = None
    trajectory = None  # the latest plan (for the live view)
    first_log_ns, wall_start = None, time.perf_counter()
    wanted = [t for t in (roles["lidar"], roles["odom"], roles["gt"], roles["route"], roles["lights"]) if t]
    n_clouds = reader.topics[roles["lidar"]].count

    def compared(stage: str, stamp: float, ok: bool, diff: float, key: str, mine, theirs) -> None:
        eq["same"] &= ok
        if math.isfinite(diff):
            eq[key] = max(eq[key], diff)
        if not ok and len(eq["differing_frames"]) < 20:
            eq["differing_frames"].append({"stamp": stamp, "stage": stage, "inprocess": mine, "graph": theirs,
                                           "difference": diff if math.isfinite(diff) else None})

    for topic, log_ns, msg in reader.messages(wanted):
        if first_log_ns is None:
            first_log_ns = log_ns
        if opts.rate > 0:  # recorded timing, scaled
            delay = wall_start + (log_ns - first_log_ns) * 1e-9 / opts.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t = log_ns * 1e-9
        if topic == roles["odom"]:
            ego = rc.ego_from_odometry(msg)
            writer.write_odometry(topics.KINEMATIC_STATE, ego, t)
            writer.write_tf(ego, t=t)
            if planning is None:
                continue
            planner, controller = planning
            received = through_odometry(ego)
            t0 = time.perf_counter()
            planned = planner.on_odometry(received)
            t1 = time.perf_counter()
            planned = None if planned is None else through_trajectory(planned)
            command = controller.on_odometry(received, planned)
            t2 = time.perf_counter()
            command = None if command is None else through_command(command)
            if planned is not None:
                stage_ms["plan"].append((t1 - t0) * 1e3)
            if command is not None:
                stage_ms["control"].append((t2 - t1) * 1e3)
            if graph is not None and command is not None:
                g_traj, g_cmd, g_ms = graph.plan_and_control(ego, planned is not None, True)
                for kind, value in g_ms.items():
                    stage_ms[f"graph_{kind}"].append(value)
                if planned is not None:
                    ok, diff = compare_trajectories(planned, g_traj)
                    compared("trajectory", ego.stamp, ok, diff, "max_trajectory_difference", len(planned),
                             None if g_traj is None else len(g_traj))
                    eq["planning_cycles"] += 1
                    planned = g_traj  # record what the graph produced
                ok, diff = compare_commands(command, g_cmd)
                compared("command", ego.stamp, ok, diff, "max_command_difference",
                         [command.steer, command.accel], None if g_cmd is None else [g_cmd.steer, g_cmd.accel])
                eq["commands"] += 1
                command = g_cmd
            if planned is not None:
                trajectory = planned
                counts["trajectories"] += 1
                writer.write_trajectory(topics.TRAJECTORY, planned, t)
            if command is not None:
                counts["commands"] += 1
                writer.write_command(topics.CONTROL_COMMAND, command, t)
        elif topic == roles["gt"]:
            writer.write_objects(topics.GROUND_TRUTH_OBJECTS, rc.boxes_from_objects(msg), t, tracked=True)
        elif topic == roles["route"]:
            try:
                data = json.loads(msg.data)
                writer.write_json(topics.ROUTE, data, t)
                route_xy = np.asarray(data.get("path", []), dtype=np.float64).reshape(-1, 2)
            except (ValueError, AttributeError, TypeError):
                pass
        elif topic == roles["lights"]:
            try:  # the planning node's checks, then the states as it receives them
                from adstack.node_io import check_sequence_length, check_traffic_signals
                from planning.planning_node import MAX_LIGHT_GROUPS
                check_sequence_length(msg, "traffic_light_groups", MAX_LIGHT_GROUPS, topic)
                check_traffic_signals(msg, topic)
                stamp = rc.time_to_sec(msg.stamp)
                lights = through_lights(rc.traffic_lights_from_msg(msg), stamp)
            except Exception:
                counts["lights_dropped"] += 1
                continue
            counts["lights"] += 1
            writer.write_traffic_lights(topics.TRAFFIC_SIGNALS, lights, stamp, t)
            if planning is not None:
                planning[0].on_lights(lights, stamp)
                if graph is not None:
                    graph.send_lights(lights, stamp)
        else:
            t0 = time.perf_counter()
            accepted = gate.accept(msg, topic)
            if accepted is None:
                continue
            stage_ms["decode"].append((time.perf_counter() - t0) * 1e3)
            cloud, pose = accepted
            if graph is not None:
                graph.send_poses(cloud, poses)   # ahead of the cloud, by the in-process step's time
            detections, tracks, ms = inproc.process(cloud, pose, gate.new_run)
            stage_ms["detect"].append(ms["detect"])
            stage_ms["track"].append(ms["track"])
            if planning is not None:
                planning[0].on_objects(through_messages(tracks, tracked=True))
            if graph is not None:
                g_det, g_trk, g_ms = graph.process(cloud, poses)
                stage_ms["graph_detections_e2e"].append(g_ms["detections_e2e"])
                stage_ms["graph_tracks_e2e"].append(g_ms["tracks_e2e"])
                for stage, mine, theirs, tracked in (("detections", detections, g_det, False),
                                                     ("tracks", tracks, g_trk, True)):
                    ok, diff = compare_boxes(through_messages(mine, tracked), theirs)
                    ok = ok and np.array_equal(mine.ids, theirs.ids)
                    compared(stage, cloud.stamp, ok, diff, "max_difference", len(mine), len(theirs))
                eq["frames"] += 1
                detections, tracks = g_det, g_trk  # record what the graph produced
            frames.append(Frame(cloud.stamp, log_ns, cloud, pose, detections, tracks, ms["detect"], ms["track"]))
            writer.write_pointcloud(topics.LIDAR_POINTS, cloud, t)
            writer.write_objects(topics.DETECTED_OBJECTS, detections, t, tracked=False)
            writer.write_objects(topics.TRACKED_OBJECTS, tracks, t, tracked=True)
            if view is not None:
                view.publish_state(cloud.stamp, pose, cloud, tracks, trajectory, route_xy)
            if opts.progress and len(frames) % 10 == 0:
                print(f"replay: {len(frames)}/{n_clouds} clouds", file=sys.stderr, flush=True)
    compare = None
    if graph is not None:
        extra = graph.unexpected()
        if extra:  # outputs the in-process stack did not make (a cycle it did not plan, say)
            eq["same"] = False
            eq["unexpected_graph_outputs"] = extra
        compare = {**eq, "same": bool(eq["same"] and eq["frames"] > 0), "resent_clouds": graph.resends}
    return frames, gate, stage_ms, compare, counts


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
