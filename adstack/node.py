"""Helpers for the thin rclpy node beside each stage's core.

A stage node is meant to read like this::

    class TrackerNode(Node):
        def __init__(self):
            super().__init__("tracker")
            self.params = declare_params(self, TrackerParams, param_file("fusion", "tracker"))
            self.core = Tracker(self.params)
            self.diag = Diagnostics(self, "tracker")
            self.timer = StageTimer(self)
            self.pub = self.create_publisher(TrackedObjects, TOPIC_OUT, reliable_qos())
            self.create_subscription(DetectedObjects, TOPIC_IN, self.on_objects, reliable_qos())

        def on_objects(self, msg):
            boxes = boxes_from_objects(msg)
            with self.timer.measure(boxes.stamp):
                tracks = self.core.step(boxes, boxes.stamp)
            self.pub.publish(tracked_objects_to_msg(tracks))

    def main():
        run_node(TrackerNode)

Everything ROS-free here (:class:`ProblemCounter`, :class:`StalenessWatchdog`) can be used by the
in-process loop too; rclpy is imported only inside the functions that need it.
"""

from __future__ import annotations

import array
import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

from adstack.config import from_dict, load_params
from adstack.errors import DataError
from adstack.paths import PACKAGE_ROOT

# --------------------------------------------------------------------------------------------
# QoS

SENSOR_QOS_DEPTH = 5
RELIABLE_QOS_DEPTH = 10


def sensor_qos(depth: int = SENSOR_QOS_DEPTH):
    """Best effort, keep last ``depth``, volatile: for lidar/camera streams, where a late sample
    is worth less than the next one (as rclpy's ``qos_profile_sensor_data``). A best-effort
    subscriber also matches a reliable publisher."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = RELIABLE_QOS_DEPTH):
    """Reliable, keep last ``depth``, volatile: for objects, trajectories and commands."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos():
    """Reliable + transient local, depth 1: for maps and routes that late joiners must get."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --------------------------------------------------------------------------------------------
# Parameters


def param_file(stage: str, name: str) -> Path:
    """``<repo>/<stage>/config/<name>.param.yaml``."""
    return PACKAGE_ROOT / stage / "config" / f"{name}.param.yaml"


def _flatten(obj, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return out


def declare_params(node, cls, yaml_path: str | Path | None = None, dynamic: bool = False):
    """Declare every field of dataclass ``cls`` as a ROS parameter and return the validated value.

    Defaults come from ``yaml_path`` (a stage's ``config/*.param.yaml``) when given, else from the
    dataclass; values given on the command line or in a launch file override them. Nested
    dataclasses become dotted names (``kalman.q_pos``). The combined values are validated by
    :func:`adstack.config.from_dict`, so a wrong type is a clear error at start-up.

    ``dynamic=False`` (default) rejects later ``ros2 param set`` calls: cores are built from
    their parameters once. ``dynamic=True`` validates each change and applies it to the returned
    object in place.
    """
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    defaults = load_params(cls, yaml_path) if yaml_path is not None else cls()
    flat = _flatten(defaults)
    for name, value in flat.items():
        # An empty list has no element type for rclpy to infer: let it take any type.
        descriptor = ParameterDescriptor(dynamic_typing=isinstance(value, list) and not value)
        try:
            node.declare_parameter(name, value, descriptor)
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise DataError(f"parameter {name!r}: {str(exc).splitlines()[0]}", f"node {node.get_name()}") from None
    values = {name: _plain(node.get_parameter(name).value) for name in flat}
    source = f"parameters of node {node.get_name()}"
    params = from_dict(cls, _nest(values), source)

    def on_set(changes):
        # The callback sees every parameter of the node (also ones declared later elsewhere, and
        # use_sim_time): judge only our own.
        ours = [p for p in changes if p.name in flat]
        if not ours:
            return SetParametersResult(successful=True)
        if not dynamic:
            return SetParametersResult(successful=False, reason="parameters are fixed at start-up")
        candidate = dict(values)
        for p in ours:
            candidate[p.name] = _plain(p.value)
        try:
            updated = from_dict(cls, _nest(candidate), source)
        except DataError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        values.update(candidate)
        _assign(params, updated)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return params


def _plain(value):
    """rclpy returns array parameters as ``array.array``; from_dict expects lists."""
    return list(value) if isinstance(value, (array.array, tuple)) else value


def _assign(target, source) -> None:
    for f in dataclasses.fields(target):
        value = getattr(source, f.name)
        if dataclasses.is_dataclass(value):
            _assign(getattr(target, f.name), value)
        else:
            setattr(target, f.name, value)


# --------------------------------------------------------------------------------------------
# Problems, diagnostics


class ProblemCounter:
    """Counts problems by kind and says whether this is the first of its kind, so a node logs
    each kind once instead of flooding the log at sensor rate. ROS-free."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.last_message: dict[str, str] = {}

    def add(self, kind: str, message: str = "") -> bool:
        """Record one problem; True when it is the first of its kind."""
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        self.last_message[kind] = message
        return n == 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Diagnostics:
    """Publishes one ``diagnostic_msgs/DiagnosticStatus`` for a node on ``/diagnostics``.

    ``problem(kind, message)`` counts a problem, logs its first occurrence and raises the level
    for the next publication; ``publish()`` (on a timer, ``period_s``) reports the worst level
    since the previous publication, the latest problem and every count so far.
    """

    def __init__(self, node, name: str | None = None, hardware_id: str = "", period_s: float = 1.0,
                 topic: str = "/diagnostics"):
        from diagnostic_msgs.msg import DiagnosticArray

        self.node = node
        self.name = f"{node.get_name()}: {name or node.get_name()}"
        self.hardware_id = hardware_id
        self.problems = ProblemCounter()
        self.values: dict[str, str] = {}
        self._level = 0
        self._message = "ok"
        self._pub = node.create_publisher(DiagnosticArray, topic, 10)
        self._timer = node.create_timer(period_s, self.publish) if period_s > 0 else None

    def problem(self, kind: str, message: str, level: int = 1) -> None:
        """Level 1 WARN, 2 ERROR (diagnostic_msgs/DiagnosticStatus)."""
        if self.problems.add(kind, message):
            # rclpy ties a severity to each call site, so ERROR and WARN need separate calls.
            text = f"{kind}: {message} (logged once; counted in /diagnostics)"
            if level >= 2:
                self.node.get_logger().error(text)
            else:
                self.node.get_logger().warning(text)
        if level >= self._level:
            self._level, self._message = level, f"{kind}: {message}"

    def set_value(self, key: str, value) -> None:
        self.values[key] = str(value)

    def status_msg(self):
        from adstack.ros_convert import diagnostic_status_msg

        values = dict(self.values)
        values.update({f"count.{k}": str(v) for k, v in sorted(self.problems.counts.items())})
        return diagnostic_status_msg(self.name, self._level, self._message, values, self.hardware_id)

    def publish(self) -> None:
        from adstack.ros_convert import diagnostic_array_msg

        stamp = self.node.get_clock().now().nanoseconds * 1e-9
        self._pub.publish(diagnostic_array_msg([self.status_msg()], stamp))
        self._level, self._message = 0, "ok"


# --------------------------------------------------------------------------------------------
# Processing time and latency


class StageTimer:
    """Publishes ``~/debug/processing_time_ms`` (wall time of the core's step) and
    ``~/debug/pipeline_latency_ms`` (node clock now minus the sensor stamp of the input), both
    ``std_msgs/Float64``. Autoware publishes these as tier4_debug_msgs/Float64Stamped, which has
    no pip wheel; a Float64 carries the same number."""

    def __init__(self, node):
        from std_msgs.msg import Float64

        self.node = node
        self._float64 = Float64
        self.processing_pub = node.create_publisher(Float64, "~/debug/processing_time_ms", 10)
        self.latency_pub = node.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.last_processing_ms = float("nan")
        self.last_latency_ms = float("nan")

    @contextmanager
    def measure(self, input_stamp: float | None = None):
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.last_processing_ms = (time.perf_counter() - t0) * 1e3
            self.processing_pub.publish(self._float64(data=self.last_processing_ms))
            if input_stamp is not None:
                now = self.node.get_clock().now().nanoseconds * 1e-9
                self.last_latency_ms = (now - float(input_stamp)) * 1e3
                self.latency_pub.publish(self._float64(data=self.last_latency_ms))


# --------------------------------------------------------------------------------------------
# Staleness


class StalenessWatchdog:
    """Tracks when each input last arrived and reports the ones older than their timeout.

    Times are whatever clock the caller uses consistently (the node clock, or sim time); an
    input that has never arrived is stale once ``start`` is older than its timeout. ROS-free.
    """

    def __init__(self, timeouts_s: dict[str, float], start: float = 0.0):
        self.timeouts_s = dict(timeouts_s)
        self.last: dict[str, float] = {}
        self.start = start

    def feed(self, name: str, now: float) -> None:
        if name not in self.timeouts_s:
            raise KeyError(f"unknown input {name!r}; known: {sorted(self.timeouts_s)}")
        self.last[name] = now

    def age(self, name: str, now: float) -> float:
        return now - self.last.get(name, self.start)

    def stale(self, now: float) -> list[str]:
        return [name for name, timeout in self.timeouts_s.items() if self.age(name, now) > timeout]


def now_s(node) -> float:
    """The node's clock (sim time when ``use_sim_time``) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


# --------------------------------------------------------------------------------------------
# main


def run_node(node_cls, args: list[str] | None = None, **kwargs) -> int:
    """``rclpy.init``, build ``node_cls(**kwargs)``, spin until Ctrl-C or SIGTERM/shutdown, clean up."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = node_cls(**kwargs)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down; a callback running at that instant fails to publish
        # ("publisher's context is invalid"). That is a clean stop, not a crash.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
