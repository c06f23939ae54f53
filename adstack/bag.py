"""rosbag2 logs (MCAP; sqlite3 for reading too) of adstack data, without a ROS installation.

Written with rosbags, in CDR, with Autoware's message types registered from ``adstack/msgs`` so
``ros2 bag``, Foxglove, mcap-ros2-support and Autoware tools read them. Each ``write_*`` takes an
adstack value and an optional log time (default: the value's own stamp, never wall time), so the
same inputs give the same message bytes.

    with BagWriter("out/drive") as bag:
        bag.write_pointcloud("/sensing/lidar/points", cloud)
        bag.write_objects("/perception/object_recognition/tracking/objects", tracks)

    reader = BagReader("out/drive")
    reader.topics            # {topic: TopicInfo(type, count)}
    for topic, t_ns, value in reader.read_values(): ...
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from adstack import ros_convert as rc
from adstack.errors import DataError, UserError
from adstack.msgs import typestore
from adstack.types import Boxes, Command, EgoState, PointCloud, TrafficLight, Trajectory

DEFAULT_TOPICS = {
    "pointcloud": "/sensing/lidar/points",
    "odometry": "/localization/kinematic_state",
    "detections": "/perception/object_recognition/detection/objects",
    "tracks": "/perception/object_recognition/tracking/objects",
    "trajectory": "/planning/trajectory",
    "command": "/control/command/control_cmd",
    "traffic_lights": "/perception/traffic_light_recognition/traffic_signals",
    "diagnostics": "/diagnostics",
}
MARKERS_SUFFIX = "/debug/markers"


def _ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))


class BagWriter:
    """Writes a rosbag2 directory ``path`` (``metadata.yaml`` + one ``.mcap`` or ``.db3`` file).

    ``markers=True`` also writes a visualization_msgs/MarkerArray beside objects and trajectories
    (topic + ``/debug/markers``) for viewers that do not know Autoware's types.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", overwrite: bool = False, markers: bool = True):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise UserError("already exists (pass overwrite=True to replace it)", self.path)
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise UserError(f"unknown storage {storage!r}; choose from {sorted(plugins)}")
        self.store = typestore()
        self.factory = rc.RosbagsFactory(self.store)
        self.markers = markers
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        self._writer.open()
        self._connections: dict[str, object] = {}
        self._open = True

    # -- context manager -----------------------------------------------------------------------
    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    # -- generic ---------------------------------------------------------------------------------
    def write_msg(self, topic: str, msg, t_ns: int, typename: str | None = None) -> None:
        """Write a rosbags message object (from ``self.factory``) at log time ``t_ns``."""
        typename = typename or rc.msg_typename(msg)
        self.write_cdr(topic, typename, self.store.serialize_cdr(msg, typename), t_ns)

    def write_cdr(self, topic: str, typename: str, data: bytes, t_ns: int) -> None:
        """Write already-serialized CDR bytes (e.g. from :func:`ros_convert.objects_to_cdr`)."""
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, typename, typestore=self.store)
            self._connections[topic] = conn
        elif conn.msgtype != typename:
            raise DataError(f"topic {topic} has type {conn.msgtype}, cannot also write {typename}", self.path)
        self._writer.write(conn, int(t_ns), data)

    # -- typed -----------------------------------------------------------------------------------
    def write_pointcloud(self, topic: str, cloud: PointCloud, t: float | None = None) -> None:
        self.write_cdr(topic, "sensor_msgs/msg/PointCloud2", rc.pointcloud_to_cdr(cloud, self.store),
                       _ns(cloud.stamp if t is None else t))

    def write_odometry(self, topic: str, ego: EgoState, t: float | None = None,
                       frame_id: str = "map", child_frame_id: str = "base_link") -> None:
        msg = rc.odometry_to_msg(ego, frame_id, child_frame_id, self.factory)
        self.write_msg(topic, msg, _ns(ego.stamp if t is None else t))

    def write_objects(self, topic: str, boxes: Boxes, t: float | None = None, tracked: bool | None = None) -> None:
        """DetectedObjects, or TrackedObjects when ``tracked``.

        A topic keeps one type. ``tracked=None`` decides on the topic's first write: tracked when
        any id is >= 0; for an empty first frame, when the topic name says so (``tracking`` or
        ``ground_truth``). Later frames follow the topic's type; ids >= 0 on a detections topic
        are an error rather than silently dropped.
        """
        conn = self._connections.get(topic)
        has_ids = bool(len(boxes)) and bool((boxes.ids >= 0).any())
        if tracked is None:
            if conn is not None:
                tracked = conn.msgtype.endswith("/TrackedObjects")
                if not tracked and has_ids:
                    raise DataError(f"topic {topic} holds DetectedObjects but these boxes carry track ids; "
                                    "pass tracked=True on its first write", self.path)
            elif len(boxes):
                tracked = has_ids
            else:
                tracked = "tracking" in topic or "ground_truth" in topic
        t_ns = _ns(boxes.stamp if t is None else t)
        typename = "autoware_perception_msgs/msg/" + ("TrackedObjects" if tracked else "DetectedObjects")
        self.write_cdr(topic, typename, rc.objects_to_cdr(boxes, tracked, self.store), t_ns)
        if self.markers:
            self.write_cdr(topic + MARKERS_SUFFIX, "visualization_msgs/msg/MarkerArray",
                           rc.boxes_to_markers_cdr(boxes, topic.rsplit("/", 2)[-2], self.store), t_ns)

    def write_trajectory(self, topic: str, traj: Trajectory, t: float | None = None) -> None:
        t_ns = _ns(traj.stamp if t is None else t)
        self.write_cdr(topic, "autoware_planning_msgs/msg/Trajectory", rc.trajectory_to_cdr(traj, self.store), t_ns)
        if self.markers:
            self.write_msg(topic + MARKERS_SUFFIX, rc.trajectory_to_markers(traj, factory=self.factory), t_ns)

    def write_command(self, topic: str, cmd: Command, t: float | None = None) -> None:
        self.write_msg(topic, rc.command_to_msg(cmd, factory=self.factory), _ns(cmd.stamp if t is None else t))

    def write_traffic_lights(self, topic: str, lights: list[TrafficLight], stamp: float,
                             t: float | None = None) -> None:
        msg = rc.traffic_lights_to_msg(lights, stamp, self.factory)
        self.write_msg(topic, msg, _ns(stamp if t is None else t))

    def write_image(self, topic: str, rgb, stamp: float, frame_id: str = "camera", t: float | None = None) -> None:
        """H x W x 3 uint8 RGB as sensor_msgs/Image rgb8."""
        self.write_msg(topic, rc.image_to_msg(rgb, stamp, frame_id, self.factory), _ns(stamp if t is None else t))

    def write_tf(self, ego: EgoState, parent: str = "map", child: str = "base_link", topic: str = "/tf",
                 t: float | None = None) -> None:
        """The ego pose as a ``parent`` -> ``child`` transform, so viewers can follow the car."""
        tf = rc.transform_msg(parent, child, ego.x, ego.y, ego.z, ego.yaw, ego.stamp, self.factory)
        self.write_msg(topic, rc.tf_msg([tf], self.factory), _ns(ego.stamp if t is None else t))

    def write_diagnostics(self, topic: str, statuses: list[tuple], stamp: float) -> None:
        """``statuses``: (name, level, message, {key: value}) tuples."""
        msgs = [rc.diagnostic_status_msg(*s, factory=self.factory) for s in statuses]
        self.write_msg(topic, rc.diagnostic_array_msg(msgs, stamp, self.factory), _ns(stamp))

    def write_json(self, topic: str, data: dict, t: float) -> None:
        """A std_msgs/String holding ``data`` as JSON with sorted keys (deterministic)."""
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_json_default)
        self.write_msg(topic, rc.string_msg(text, self.factory), _ns(t))


def _json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@dataclass(frozen=True)
class TopicInfo:
    type: str
    count: int


class BagReader:
    """Reads a rosbag2 directory (MCAP or sqlite3) or a bare ``.mcap`` file.

    Types come from the bag's own definitions when it carries them, else from Jazzy's standard
    types plus adstack's Autoware definitions.
    """

    def __init__(self, path: str | Path):
        from rosbags.highlevel import AnyReader
        from rosbags.highlevel.anyreader import AnyReaderError

        self.path = Path(path)
        if not self.path.exists():
            raise UserError("bag not found", self.path)
        self._reader = AnyReader([self.path], default_typestore=typestore())
        try:
            self._reader.open()
        except AnyReaderError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"not a readable rosbag2/MCAP bag: {reason}", self.path) from None
        counts: dict[str, list] = {}
        for conn in self._reader.connections:
            entry = counts.setdefault(conn.topic, [conn.msgtype, 0])
            entry[1] += conn.msgcount
        self.topics = {topic: TopicInfo(msgtype, count) for topic, (msgtype, count) in sorted(counts.items())}

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time)

    def messages(self, topics: list[str] | None = None) -> Iterator[tuple[str, int, object]]:
        """(topic, log time ns, decoded message) in log-time order."""
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        for conn, t_ns, raw in self._reader.messages(connections=conns):
            yield conn.topic, int(t_ns), self._reader.deserialize(raw, conn.msgtype)

    def read_values(self, topics: list[str] | None = None) -> Iterator[tuple[str, int, object]]:
        """(topic, log time ns, adstack value) for topics of a type adstack knows (PointCloud2,
        Odometry, Autoware objects/trajectory/control/traffic lights, String as parsed JSON)."""
        known = [t for t, info in self.topics.items()
                 if (info.type in rc.FROM_MSG or info.type == "std_msgs/msg/String")
                 and (topics is None or t in topics)]
        for topic, t_ns, msg in self.messages(known):
            typename = self.topics[topic].type
            if typename == "std_msgs/msg/String":
                try:
                    yield topic, t_ns, json.loads(msg.data)
                except json.JSONDecodeError:
                    yield topic, t_ns, msg.data
            else:
                yield topic, t_ns, rc.from_msg(msg, typename)
