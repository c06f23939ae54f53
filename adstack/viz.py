"""Live view: the stack's state served to the Foxglove app over foxglove-sdk's WebSocket server.

``LiveView`` binds 127.0.0.1 only (default port 8765) and advertises these channels (Foxglove schemas):

| topic | schema | content |
|---|---|---|
| /sensing/lidar/points | foxglove.PointCloud | the cloud in its sensor frame (x, y, z, intensity) |
| /viz/objects | foxglove.SceneUpdate | tracks or detections: boxes coloured by class, "id class" labels |
| /viz/ground_truth | foxglove.SceneUpdate | ground-truth boxes (wireframe-light), when a log has them |
| /viz/route | foxglove.SceneUpdate | the route as a line |
| /viz/trajectory | foxglove.SceneUpdate | the planned trajectory as a line |
| /viz/ego | foxglove.SceneUpdate | the ego as a box in base_link |
| /tf | foxglove.FrameTransforms | map -> base_link (ego pose), base_link -> sensor (lidar mount) |

Open the Foxglove app, "Open connection", ``ws://127.0.0.1:8765``, and add a 3D panel with the
display frame ``map``. The MCAP logs (``adstack drive``'s log.mcap, ``adstack replay``'s
replay.mcap) open in the same app and show the same things through ROS 2 types (PointCloud2,
MarkerArray, TFMessage).

``adstack viz BAG_OR_DIR`` plays a recorded log to the live server at its recorded timing;
``adstack viz --ros`` shows the running ROS 2 graph (``adstack launch``) live.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from adstack import topics
from adstack.errors import UserError
from adstack.types import Boxes, EgoState, ObjectClass, PointCloud, Trajectory

DEFAULT_PORT = 8765
HOST = "127.0.0.1"  # never another interface: the server has no authentication
CHANNELS = {
    "cloud": topics.LIDAR_POINTS,
    "objects": "/viz/objects",
    "ground_truth": "/viz/ground_truth",
    "route": "/viz/route",
    "trajectory": "/viz/trajectory",
    "ego": "/viz/ego",
    "tf": "/tf",
}
CLASS_RGBA = {ObjectClass.UNKNOWN: (0.7, 0.7, 0.7, 0.6), ObjectClass.VEHICLE: (0.1, 0.6, 1.0, 0.6),
              ObjectClass.PEDESTRIAN: (1.0, 0.5, 0.1, 0.7), ObjectClass.CYCLIST: (0.9, 0.1, 0.9, 0.7),
              ObjectClass.STATIC: (0.5, 0.4, 0.3, 0.4)}
EGO_SIZE_M = (4.5, 2.0, 1.6)
ROUTE_PERIOD_S = 1.0  # the route does not change: re-send it this often so late clients get it


def _class_name(label: int) -> str:
    try:
        return ObjectClass(int(label)).name.lower()
    except ValueError:
        return "unknown"


class LiveView:
    """A Foxglove WebSocket server on 127.0.0.1 with the stack's channels (see the module docstring).

    ``port=0`` picks a free port; ``view.port`` tells which. Every ``publish_*`` takes the sensor or
    simulation time ``t`` (s) as the message time.
    """

    def __init__(self, port: int = DEFAULT_PORT, mount_xyz_yaw=(0.0, 0.0, 1.8, 0.0), name: str = "adstack"):
        import foxglove
        import foxglove.schemas
        from foxglove.channels import FrameTransformsChannel, PointCloudChannel, SceneUpdateChannel

        self._fg = foxglove
        self.context = foxglove.Context()
        try:
            self.server = foxglove.start_server(name=name, host=HOST, port=int(port), context=self.context)
        except Exception as exc:  # e.g. the port is taken
            raise UserError(f"cannot serve on {HOST}:{port}: {exc}") from None
        self.port = int(self.server.port)
        self.mount = tuple(float(v) for v in mount_xyz_yaw)
        ctx = self.context
        self.channels = {
            "cloud": PointCloudChannel(CHANNELS["cloud"], context=ctx),
            "tf": FrameTransformsChannel(CHANNELS["tf"], context=ctx),
            **{key: SceneUpdateChannel(CHANNELS[key], context=ctx)
               for key in ("objects", "ground_truth", "route", "trajectory", "ego")},
        }
        self._route_sent_t = -math.inf
        self._route_key = None
        self._sensor_frames: set[str] = set()

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def close(self) -> None:
        self.server.stop()

    def __enter__(self) -> "LiveView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- message building -------------------------------------------------------------------
    def _ts(self, t: float):
        sec, nsec = divmod(int(round(max(float(t), 0.0) * 1e9)), 1_000_000_000)
        return self._fg.schemas.Timestamp(sec, nsec)

    def _pose(self, x: float, y: float, z: float, yaw: float):
        s = self._fg.schemas
        return s.Pose(position=s.Vector3(x=float(x), y=float(y), z=float(z)),
                      orientation=s.Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))

    def _color(self, rgba):
        r, g, b, a = rgba
        return self._fg.schemas.Color(r=float(r), g=float(g), b=float(b), a=float(a))

    def _line_entity(self, entity_id: str, t: float, xy: np.ndarray, rgba, width_m: float, z: float = 0.1):
        s = self._fg.schemas
        points = [s.Point3(x=float(x), y=float(y), z=z) for x, y in np.asarray(xy, dtype=np.float64).reshape(-1, 2).tolist()]
        line = s.LinePrimitive(type=s.LinePrimitiveLineType.LineStrip, pose=self._pose(0, 0, 0, 0), thickness=width_m,
                               scale_invariant=False, points=points, color=self._color(rgba))
        return s.SceneEntity(timestamp=self._ts(t), frame_id="map", id=entity_id, lines=[line])

    def _log(self, key: str, message, t: float) -> None:
        self.channels[key].log(message, log_time=int(round(max(float(t), 0.0) * 1e9)))

    # -- publishing --------------------------------------------------------------------------
    def publish_ego(self, t: float, ego: EgoState, sensor_frame: str = "lidar") -> None:
        s = self._fg.schemas
        mx, my, mz, myaw = self.mount
        transforms = [
            s.FrameTransform(timestamp=self._ts(t), parent_frame_id="map", child_frame_id="base_link",
                             translation=s.Vector3(x=ego.x, y=ego.y, z=ego.z),
                             rotation=s.Quaternion(x=0.0, y=0.0, z=math.sin(ego.yaw / 2), w=math.cos(ego.yaw / 2))),
            s.FrameTransform(timestamp=self._ts(t), parent_frame_id="base_link", child_frame_id=sensor_frame,
                             translation=s.Vector3(x=mx, y=my, z=mz),
                             rotation=s.Quaternion(x=0.0, y=0.0, z=math.sin(myaw / 2), w=math.cos(myaw / 2))),
        ]
        self._log("tf", s.FrameTransforms(transforms=transforms), t)
        cube = s.CubePrimitive(pose=self._pose(0, 0, EGO_SIZE_M[2] / 2, 0),
                               size=s.Vector3(x=EGO_SIZE_M[0], y=EGO_SIZE_M[1], z=EGO_SIZE_M[2]),
                               color=self._color((0.1, 0.9, 0.3, 0.8)))
        text = s.TextPrimitive(pose=self._pose(0, 0, EGO_SIZE_M[2] + 1.0, 0), billboard=True, font_size=14.0,
                               scale_invariant=True, color=self._color((1, 1, 1, 1)), text=f"ego {ego.v * 3.6:.0f} km/h")
        entity = s.SceneEntity(timestamp=self._ts(t), frame_id="base_link", id="ego", cubes=[cube], texts=[text])
        self._log("ego", s.SceneUpdate(entities=[entity]), t)

    def publish_cloud(self, t: float, cloud: PointCloud) -> None:
        s = self._fg.schemas
        float32 = s.PackedElementFieldNumericType.Float32
        fields = [s.PackedElementField(name=name, offset=4 * i, type=float32)
                  for i, name in enumerate(("x", "y", "z", "intensity"))]
        msg = s.PointCloud(timestamp=self._ts(t), frame_id=cloud.frame_id or "lidar", pose=self._pose(0, 0, 0, 0),
                           point_stride=16, fields=fields, data=np.ascontiguousarray(cloud.points, np.float32).tobytes())
        self._log("cloud", msg, t)

    def publish_boxes(self, t: float, boxes: Boxes, key: str = "objects") -> None:
        """Boxes (any frame; usually map) as cubes with "id class" labels; replaces the previous set."""
        s = self._fg.schemas
        cubes, texts = [], []
        alpha_scale = 0.5 if key == "ground_truth" else 1.0
        for i in range(len(boxes)):
            label = int(boxes.label[i])
            rgba = CLASS_RGBA.get(label, CLASS_RGBA[ObjectClass.UNKNOWN])
            x, y, z = boxes.center[i]
            length, width, height = boxes.size[i]
            cubes.append(s.CubePrimitive(pose=self._pose(x, y, z, boxes.yaw[i]),
                                         size=s.Vector3(x=float(length), y=float(width), z=float(height)),
                                         color=self._color((*rgba[:3], rgba[3] * alpha_scale))))
            ident = int(boxes.ids[i])
            caption = (f"{ident} " if ident >= 0 else "") + _class_name(label)
            texts.append(s.TextPrimitive(pose=self._pose(x, y, z + height / 2 + 0.5, 0), billboard=True, font_size=12.0,
                                         scale_invariant=True, color=self._color((1, 1, 1, 1)), text=caption))
        entity = s.SceneEntity(timestamp=self._ts(t), frame_id=boxes.frame_id or "map", id=key, cubes=cubes, texts=texts)
        # The one entity replaces its previous version, so boxes of vanished objects disappear with it.
        self._log(key, s.SceneUpdate(entities=[entity]), t)

    def publish_trajectory(self, t: float, trajectory: Trajectory) -> None:
        self._log("trajectory", self._fg.schemas.SceneUpdate(entities=[self._line_entity(
            "trajectory", t, trajectory.points[:, :2], (0.2, 1.0, 0.2, 1.0), 0.3, z=0.2)]), t)

    def publish_route(self, t: float, route_xy: np.ndarray, force: bool = False) -> None:
        route_xy = np.asarray(route_xy, dtype=np.float64).reshape(-1, 2)
        key = (route_xy.shape, float(route_xy.sum()) if route_xy.size else 0.0)
        if not force and key == self._route_key and t - self._route_sent_t < ROUTE_PERIOD_S:
            return
        self._route_key, self._route_sent_t = key, t
        self._log("route", self._fg.schemas.SceneUpdate(entities=[self._line_entity(
            "route", t, route_xy, (0.3, 0.5, 1.0, 0.8), 1.0, z=0.05)]), t)

    def publish_state(self, t: float, ego: EgoState | None = None, cloud: PointCloud | None = None,
                      objects: Boxes | None = None, trajectory: Trajectory | None = None,
                      route_xy: np.ndarray | None = None, ground_truth: Boxes | None = None) -> None:
        """Everything at once (any piece may be None): what the in-process loops call each tick."""
        if ego is not None:
            self.publish_ego(t, ego, cloud.frame_id if cloud is not None and cloud.frame_id else "lidar")
        if cloud is not None:
            self.publish_cloud(t, cloud)
        if objects is not None:
            self.publish_boxes(t, objects, "objects")
        if ground_truth is not None:
            self.publish_boxes(t, ground_truth, "ground_truth")
        if trajectory is not None and len(trajectory):
            self.publish_trajectory(t, trajectory)
        if route_xy is not None and len(route_xy):
            self.publish_route(t, route_xy)


# --------------------------------------------------------------------------------------------
# Playing a recorded log to the live view


def find_log(path: str | Path) -> Path:
    """A bag file or rosbag2 directory, or a run directory holding replay.mcap or log.mcap."""
    path = Path(path)
    if not path.exists():
        raise UserError("not found", path)
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        for name in ("replay.mcap", "log.mcap"):
            if (path / name).exists():
                return path / name
        raise UserError("no replay.mcap, log.mcap or rosbag2 metadata.yaml in this directory", path)
    return path


def play_log(view: LiveView, path: str | Path, rate: float = 1.0, should_stop=lambda: False) -> int:
    """Publish a recorded log to ``view`` at ``rate`` x recorded timing (0: as fast as possible).
    Objects shown are tracks, else detections; ground truth beside them. Returns the message count."""
    from adstack.bag import BagReader

    wanted = {topics.LIDAR_POINTS, topics.KINEMATIC_STATE, topics.TRACKED_OBJECTS, topics.DETECTED_OBJECTS,
              topics.GROUND_TRUTH_OBJECTS, topics.TRAJECTORY, topics.ROUTE}
    count = 0
    with BagReader(find_log(path)) as reader:
        present = wanted & set(reader.topics)
        if not present:
            raise UserError(f"none of the stack's topics in this log (it has: {', '.join(reader.topics) or 'none'})", path)
        objects_topic = topics.TRACKED_OBJECTS if topics.TRACKED_OBJECTS in present else topics.DETECTED_OBJECTS
        first_ns, wall0 = None, time.perf_counter()
        route_xy = None
        for topic, t_ns, value in reader.read_values(sorted(present)):
            if should_stop():
                break
            first_ns = t_ns if first_ns is None else first_ns
            if rate > 0:
                delay = wall0 + (t_ns - first_ns) * 1e-9 / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t = t_ns * 1e-9
            if topic == topics.LIDAR_POINTS:
                view.publish_cloud(t, value)
            elif topic == topics.KINEMATIC_STATE:
                view.publish_ego(t, value)
                if route_xy is not None:
                    view.publish_route(t, route_xy)
            elif topic == objects_topic:
                view.publish_boxes(t, value, "objects")
            elif topic == topics.GROUND_TRUTH_OBJECTS:
                view.publish_boxes(t, value, "ground_truth")
            elif topic == topics.TRAJECTORY:
                view.publish_trajectory(t, value)
            elif topic == topics.ROUTE and isinstance(value, dict) and value.get("path") is not None:
                route_xy = np.asarray(value["path"], dtype=np.float64).reshape(-1, 2)
                view.publish_route(t, route_xy, force=True)
            else:
                continue
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Live ROS 2 graph to the live view


def serve_ros_graph(view: LiveView, domain_id: int | None = None, should_stop=lambda: False) -> None:
    """Subscribe to the stack's topics over DDS (as started by ``adstack launch``) and forward each
    message to ``view`` until Ctrl-C. Autoware-typed topics (objects, trajectory) need the messages
    built for rclpy (scripts/build_msgs.sh); without them only cloud, odometry and route are shown."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from adstack import ros_convert as rc
    from adstack.node import latched_qos, reliable_qos, sensor_qos
    from adstack.node_io import msg_class

    rclpy.init(domain_id=domain_id)
    node = rclpy.create_node("adstack_viz")
    frame = {"lidar": "lidar"}

    def on_cloud(msg):
        try:
            cloud, _ = rc.decode_pointcloud2(msg, allow_empty=True)
        except rc.MalformedMessage:
            return
        frame["lidar"] = cloud.frame_id or "lidar"
        view.publish_cloud(cloud.stamp, cloud)

    def on_odom(msg):
        ego = rc.ego_from_odometry(msg)
        view.publish_ego(ego.stamp, ego, frame["lidar"])

    def on_route(msg):
        xy = np.array([[p.pose.position.x, p.pose.position.y] for p in msg.poses], dtype=np.float64).reshape(-1, 2)
        view.publish_route(rc.time_to_sec(msg.header.stamp), xy, force=True)

    # Clouds and odometry: subscribed once a publisher shows up, reliably if every publisher is (the sim
    # bridge), else best effort (a lidar driver): a best-effort subscription loses most multi-MB clouds.
    pending = {topics.LIDAR_POINTS: ("PointCloud2", on_cloud), topics.KINEMATIC_STATE: ("Odometry", on_odom)}

    def subscribe_when_published():
        from rclpy.qos import ReliabilityPolicy
        for topic in list(pending):
            infos = node.get_publishers_info_by_topic(topic)
            if infos:
                reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
                kind, callback = pending.pop(topic)
                node.create_subscription(msg_class(kind), topic, callback, reliable_qos(2) if reliable else sensor_qos())

    node.create_subscription(msg_class("Path"), topics.ROUTE, on_route, latched_qos())
    try:
        node.create_subscription(msg_class("TrackedObjects"), topics.TRACKED_OBJECTS,
                                 lambda m: view.publish_boxes(rc.time_to_sec(m.header.stamp), rc.boxes_from_objects(m)),
                                 reliable_qos())
        node.create_subscription(msg_class("TrackedObjects"), topics.GROUND_TRUTH_OBJECTS,
                                 lambda m: view.publish_boxes(rc.time_to_sec(m.header.stamp), rc.boxes_from_objects(m),
                                                              "ground_truth"), reliable_qos())
        node.create_subscription(msg_class("Trajectory"), topics.TRAJECTORY,
                                 lambda m: view.publish_trajectory(rc.time_to_sec(m.header.stamp), rc.trajectory_from_msg(m)),
                                 reliable_qos())
    except ImportError as exc:
        print(f"adstack viz: showing cloud, ego and route only ({exc})", file=sys.stderr, flush=True)
    try:
        while rclpy.ok() and not should_stop():
            if pending:
                subscribe_when_published()
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# --------------------------------------------------------------------------------------------
# CLI: adstack viz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", nargs="?", help="a log to play: log.mcap / replay.mcap, a rosbag2 directory, or a run directory")
    parser.add_argument("--ros", action="store_true",
                        help="instead of a log, show the running ROS 2 graph (adstack launch) live")
    parser.add_argument("--domain-id", type=int, default=None, help="--ros: ROS_DOMAIN_ID (default: the environment's)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"WebSocket port on {HOST} (default {DEFAULT_PORT})")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed (1.0 recorded timing, 0 as fast as possible)")
    parser.add_argument("--loop", action="store_true", help="play the log again and again")
    parser.add_argument("--exit-when-done", action="store_true", help="stop serving when the log has played")


def run(args) -> int:
    if args.rate < 0:
        raise UserError(f"--rate must be >= 0, got {args.rate}")
    if bool(args.log) == bool(args.ros):
        raise UserError("give either a log to play or --ros (the live graph)")
    path = find_log(args.log) if args.log else None
    from sim.replay import lidar_node_config
    cfg = lidar_node_config()
    view = LiveView(args.port, (cfg.mount_x_m, cfg.mount_y_m, cfg.mount_z_m, cfg.mount_yaw_rad))
    print(f"adstack viz: serving {path or 'the ROS 2 graph'} on {view.url} "
          f"(Foxglove app: Open connection -> {view.url}); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        if path is None:
            serve_ros_graph(view, args.domain_id)
            return 0
        while True:
            n = play_log(view, path, args.rate)
            print(f"adstack viz: played {n} messages", file=sys.stderr, flush=True)
            if not args.loop:
                break
        if not args.exit_when_done:
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
    return 0
