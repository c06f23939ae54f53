"""What the stage nodes share at their boundary: the message classes of the node graph, resolved once
(rclpy message types; Autoware's are built by scripts/build_msgs.sh into the venv, or come from apt on
a ROS 2 install), and the checks every input passes before a core sees it (ROS-free: they work on
the converted adstack values)."""

from __future__ import annotations

import math

import numpy as np

from adstack.ros_convert import MalformedMessage, RclpyFactory

TYPES = {
    "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "Odometry": "nav_msgs/msg/Odometry",
    "Path": "nav_msgs/msg/Path",
    "String": "std_msgs/msg/String",
    "MarkerArray": "visualization_msgs/msg/MarkerArray",
    "DetectedObjects": "autoware_perception_msgs/msg/DetectedObjects",
    "TrackedObjects": "autoware_perception_msgs/msg/TrackedObjects",
    "TrafficLightGroupArray": "autoware_perception_msgs/msg/TrafficLightGroupArray",
    "Trajectory": "autoware_planning_msgs/msg/Trajectory",
    "Control": "autoware_control_msgs/msg/Control",
    "Clock": "rosgraph_msgs/msg/Clock",
    "Float64": "std_msgs/msg/Float64",
}


def msg_class(short_name: str):
    return RclpyFactory.message_class(TYPES[short_name])


# --------------------------------------------------------------------------------------------
# Input validation shared by the stage nodes (ROS-free: works on the converted adstack values).
#
# A message that converts is not yet a message a core may see: NaN/Inf, absurd sizes, a wrong frame
# or a stamp from the past would poison a Kalman filter or a planner for good. Each check raises
# MalformedMessage(kind, ...) with a short ``kind`` that the node counts on /diagnostics.

MAX_OBJECTS = 2_000  # far more than any sensor sees around a car; more is garbage
MAX_TRAJECTORY_POINTS = 10_000
MAX_ABS_COORD_M = 1e6  # map coordinates beyond 1000 km are garbage, not a place
MAX_ABS_SPEED_MPS = 200.0
MAP_FRAME = "map"


def check_sequence_length(msg, field: str, limit: int, topic: str | None = None) -> None:
    """Reject an oversized sequence before converting it element by element (cheap: ``len``)."""
    n = len(getattr(msg, field))
    if n > limit:
        raise MalformedMessage("too_large", f"{n} {field} exceeds the limit of {limit}", topic)


def check_ego(ego, topic: str | None = None):
    """An EgoState with finite, plausible pose and speed, else MalformedMessage."""
    values = (ego.x, ego.y, ego.z, ego.yaw, ego.v, ego.yaw_rate)
    if not all(math.isfinite(v) for v in values):
        raise MalformedMessage("nonfinite", "NaN/Inf in the kinematic state", topic)
    if abs(ego.x) > MAX_ABS_COORD_M or abs(ego.y) > MAX_ABS_COORD_M or abs(ego.v) > MAX_ABS_SPEED_MPS:
        raise MalformedMessage("out_of_range", f"pose ({ego.x:.3g}, {ego.y:.3g}) or speed {ego.v:.3g} is implausible",
                               topic)
    return ego


def receive_odometry(node, msg, order, kind_prefix: str = "odometry_"):
    """Decode and check one kinematic state for a stage node; every problem goes to ``node.diag``.

    ``order`` is the node's stamp-order checker for this input. Returns ``(ego, jumped_back)``:
    ``ego`` is None when the message was dropped (malformed, duplicate or out-of-order stamp);
    ``jumped_back`` says the stamps went back (a new run), which each node handles its own way."""
    from adstack.ros_convert import ego_from_odometry
    node.received("kinematic_state")
    try:
        ego = check_ego(ego_from_odometry(msg), "input/kinematic_state")
    except MalformedMessage as exc:
        node.diag.problem(f"malformed_odometry.{exc.kind}", str(exc), level=2)
        return None, False
    except Exception as exc:
        node.diag.problem("malformed_odometry", f"{type(exc).__name__}: {exc}", level=2)
        return None, False
    result = order.check(ego.stamp)
    if result in ("duplicate_stamp", "out_of_order_stamp"):
        node.diag.problem(f"{kind_prefix}{result}", f"kinematic state stamped {ego.stamp:.3f}: dropped")
        return None, False
    if result == "clock_jump_back":
        node.diag.problem(f"{kind_prefix}clock_jump_back", "kinematic state stamps jumped back: a new run")
        return ego, True
    return ego, False


def clean_boxes(boxes, topic: str | None = None, frame_id: str | None = MAP_FRAME):
    """(boxes without non-finite or implausible objects, number dropped); a wrong frame is an error.

    Single bad objects are dropped rather than the whole message, as bad lidar points are: one
    garbage box must not hide the other objects from the planner."""
    if frame_id is not None and boxes.frame_id != frame_id:
        raise MalformedMessage("wrong_frame", f"objects in frame {boxes.frame_id!r}, expected {frame_id!r}", topic)
    if len(boxes) == 0:
        return boxes, 0
    with np.errstate(invalid="ignore"):
        good = (np.isfinite(boxes.center).all(1) & np.isfinite(boxes.size).all(1) & np.isfinite(boxes.yaw)
                & np.isfinite(boxes.velocity).all(1) & np.isfinite(boxes.score)
                & (np.abs(boxes.center[:, :2]) <= MAX_ABS_COORD_M).all(1) & (boxes.size >= 0).all(1)
                & (boxes.size <= 100.0).all(1) & (np.abs(boxes.velocity) <= MAX_ABS_SPEED_MPS).all(1))
    dropped = int(len(boxes) - np.count_nonzero(good))
    return (boxes.select(good) if dropped else boxes), dropped


def check_trajectory(traj, topic: str | None = None, frame_id: str | None = MAP_FRAME):
    if frame_id is not None and traj.frame_id != frame_id:
        raise MalformedMessage("wrong_frame", f"trajectory in frame {traj.frame_id!r}, expected {frame_id!r}", topic)
    if len(traj) and not np.isfinite(traj.points).all():
        raise MalformedMessage("nonfinite", "NaN/Inf in the trajectory", topic)
    return traj


class StampGuard:
    """Orders one input's stamps: ``check(stamp)`` returns

    * ``"ok"``: newer than the last accepted one (accepted);
    * ``"duplicate_stamp"`` / ``"out_of_order_stamp"``: not newer (drop it);
    * ``"clock_jump_back"``: older by more than ``reset_after_s``: a new run (a replay restarted, the
      simulator reset) or the previous stamp was garbage from the future; accepted, and the node
      should reset its state. Without this one absurd future stamp would block the input for good.
    """

    def __init__(self, reset_after_s: float = 5.0):
        self.reset_after_s = reset_after_s
        self.last: float | None = None

    def check(self, stamp: float) -> str:
        last = self.last
        if last is not None and stamp <= last:
            if last - stamp > self.reset_after_s:
                self.last = stamp
                return "clock_jump_back"
            return "duplicate_stamp" if stamp == last else "out_of_order_stamp"
        self.last = stamp
        return "ok"

    def reset(self) -> None:
        self.last = None


GRID_EPS = 1e-6  # stamps are sums of float ticks: 0.30000000000000004 is on the 0.1 s grid


def new_period(stamp: float, last: float, period_s: float) -> bool:
    """True when ``stamp`` falls into a later period of the sensor-time grid (0, period, 2 period, ...)
    than ``last``. On the grid, not relative to the last plan, so the cycles stay where the lockstep
    simulator publishes objects (and where the in-process loop plans) even after a missed message."""
    if last == -np.inf:
        return True
    return np.floor(stamp / period_s + GRID_EPS) > np.floor(last / period_s + GRID_EPS)


# autoware_perception_msgs/TrafficLightElement constants: colours UNKNOWN..WHITE, shapes UNKNOWN and
# CIRCLE..CROSS, status UNKNOWN and SOLID_OFF..FLASHING. A value outside them is not a light state.
LIGHT_COLORS = frozenset(range(0, 5))
LIGHT_SHAPES = frozenset([0, *range(5, 15)])
LIGHT_STATUSES = frozenset([0, 15, 16, 17])


def check_traffic_signals(msg, topic: str | None = None) -> None:
    """Every element's colour, shape and status is a defined constant and its confidence in [0, 1]."""
    for group in msg.traffic_light_groups:
        for e in group.elements:
            if int(e.color) not in LIGHT_COLORS or int(e.shape) not in LIGHT_SHAPES or int(e.status) not in LIGHT_STATUSES:
                raise MalformedMessage("unknown_value", f"light group {group.traffic_light_group_id}: colour {e.color}, "
                                       f"shape {e.shape}, status {e.status} are not all defined", topic)
            if not 0.0 <= float(e.confidence) <= 1.0:  # NaN fails too
                raise MalformedMessage("bad_confidence", f"confidence {e.confidence} outside [0, 1]", topic)


class ReceivedCounter:
    """Messages received per input, shown on /diagnostics as ``received.<input>`` (so a test or an
    operator can tell a silent input from a rejected one)."""

    def __init__(self, diag):
        self.diag = diag
        self.counts: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        n = self.counts[name] = self.counts.get(name, 0) + 1
        self.diag.set_value(f"received.{name}", n)
