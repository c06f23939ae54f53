"""Planning node: the route's planner (the expert) behind the safety layer.

Inputs: tracked objects (map frame; or the simulator's ground truth), kinematic state, traffic-light
states, and the route (loaded from the same route file and id as the map server, so the node needs no
message to start planning). Triggered by the kinematic state, planning at ``planner_hz`` of *sensor*
time; each trajectory is stamped with the kinematic state it was planned from.

Never silent, never garbage: objects older than ``objects_timeout_s`` (sensor time) or a planner that
fails give a controlled stop (the safety layer's minimal-risk manoeuvre); a kinematic state silent for
``odometry_timeout_s`` (node clock) gives a controlled stop from the last known state. Malformed,
non-finite, repeated or older inputs are dropped; each kind is logged once and counted on /diagnostics.

``sync_timeout_s > 0`` is for lockstep simulation and replay (``adstack launch sim``): a planning cycle
waits (up to that wall time) for objects and light states stamped with its kinematic state, so the
graph plans on the same inputs as the in-process loop whatever order DDS delivers them in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from adstack import topics
from adstack.node import (Diagnostics, StageTimer, StalenessWatchdog, declare_params, latched_qos, now_s, param_file,
                          reliable_qos, run_node)
from adstack.node_io import (receive_odometry, MAX_OBJECTS, ReceivedCounter, StampGuard, check_sequence_length,
                             check_traffic_signals, msg_class)
from adstack.types import EgoState, TrafficLight
from planning.cycle import PlanningCycle
from planning.safety import SafetyConfig, SafetyLayer

try:
    from rclpy.node import Node
except ImportError:
    Node = object

TRAFFIC_LIGHT_TABLE = "/simulation/traffic_light_table"
STAMP_EPS_S = 1e-6
MAX_LIGHT_GROUPS = 10_000


@dataclass
class PlanningNodeConfig:
    routes: str = ""
    route_id: str = ""
    map: str = ""
    map_dirs: str = ""  # comma-separated
    planner: str = "expert"
    planner_hz: float = 10.0
    objects_timeout_s: float = 0.5  # sensor time: older objects -> controlled stop
    use_ground_truth_objects: bool = False  # plan on the simulator's ground truth instead of tracks
    odometry_timeout_s: float = 1.0  # node clock: no kinematic state this long -> controlled stop (0: off)
    sync_timeout_s: float = 0.0  # lockstep sim/replay: wait this long (wall) for inputs stamped like the odometry
    diagnostics_period_s: float = 1.0


def lights_from_table(table: dict, states: list[TrafficLight]) -> list[TrafficLight]:
    """States from the message + positions and lanes from the table (group id -> static light)."""
    out = []
    for light in states:
        static = table.get(str(light.id))
        if static is None:
            continue
        out.append(TrafficLight(static["id"], light.state, np.asarray(static["position"], float),
                                tuple(tuple(l) for l in static["lanes"])))
    return out


class PlanningNode(Node):
    def __init__(self):
        super().__init__("planner")
        self.params = declare_params(self, PlanningNodeConfig, param_file("planning", "planning_node"))
        p = self.params
        self.diag = Diagnostics(self, "planning", period_s=p.diagnostics_period_s)
        self.timer = StageTimer(self)
        # the rules (inputs, cycles, planning behind the safety layer), shared with the replay
        self.cycle = PlanningCycle(None, SafetyLayer(SafetyConfig.load()), p.planner_hz, p.objects_timeout_s,
                                   self.diag.problem)
        self.light_table: dict = {}
        self.last_ego: EgoState | None = None
        self.pending: tuple[EgoState, float] | None = None  # (kinematic state, wall deadline) in sync mode
        self.odom_order = StampGuard()
        self.received = ReceivedCounter(self.diag)
        self.watchdog = StalenessWatchdog({"kinematic_state": p.odometry_timeout_s}, start=now_s(self))
        self.stopped_for_silence = False
        self.pub = self.create_publisher(msg_class("Trajectory"), "output/trajectory", reliable_qos())
        objects_topic = topics.GROUND_TRUTH_OBJECTS if p.use_ground_truth_objects else "input/objects"
        objects_type = "TrackedObjects"
        self.create_subscription(msg_class(objects_type), objects_topic, self.on_objects, reliable_qos())
        # Reliable, as Autoware publishes /localization/kinematic_state: each one triggers a cycle.
        self.create_subscription(msg_class("Odometry"), "input/kinematic_state", self.on_odometry, reliable_qos())
        self.create_subscription(msg_class("TrafficLightGroupArray"), "input/traffic_signals", self.on_lights, reliable_qos())
        self.create_subscription(msg_class("String"), TRAFFIC_LIGHT_TABLE, self.on_light_table, latched_qos())
        if p.odometry_timeout_s > 0:
            self.create_timer(min(0.1, p.odometry_timeout_s / 2), self.check_silence)
        if p.sync_timeout_s > 0:
            self.create_timer(0.005, self.check_pending)
        self._load_route()

    def _load_route(self) -> None:
        p = self.params
        if not p.routes or not p.route_id:
            self.diag.problem("no_route", "parameters routes and route_id are empty: commanding a stop", level=2)
            return
        try:
            from sim.drive import load_route_from_params, make_planner
            _, hdmap, route = load_route_from_params(p)
            self.cycle.planner = make_planner(p.planner, hdmap, route)
        except Exception as exc:
            self.diag.problem("route_setup_failed", f"{type(exc).__name__}: {exc}", level=2)

    # ------------------------------------------------------------------ inputs
    def on_objects(self, msg) -> None:
        from adstack.ros_convert import MalformedMessage, boxes_from_objects
        self.received("objects")
        topic = "input/objects"
        try:
            check_sequence_length(msg, "objects", MAX_OBJECTS, topic)
            boxes = boxes_from_objects(msg)
        except MalformedMessage as exc:
            self.diag.problem(f"malformed_objects.{exc.kind}", str(exc), level=2)
            return
        except Exception as exc:
            self.diag.problem("malformed_objects", f"{type(exc).__name__}: {exc}", level=2)
            return
        if self.cycle.on_objects(boxes, topic):
            self.try_pending()

    def on_lights(self, msg) -> None:
        from adstack.ros_convert import MalformedMessage, time_to_sec, traffic_lights_from_msg
        self.received("traffic_signals")
        topic = "input/traffic_signals"
        try:
            check_sequence_length(msg, "traffic_light_groups", MAX_LIGHT_GROUPS, topic)
            check_traffic_signals(msg, topic)
            lights = lights_from_table(self.light_table, traffic_lights_from_msg(msg))
            stamp = time_to_sec(msg.stamp)
        except MalformedMessage as exc:
            self.diag.problem(f"malformed_traffic_signals.{exc.kind}", str(exc), level=2)
            return
        except Exception as exc:
            self.diag.problem("malformed_traffic_signals", f"{type(exc).__name__}: {exc}", level=2)
            return
        if self.cycle.on_lights(lights, stamp):
            self.try_pending()

    def on_light_table(self, msg) -> None:
        self.received("traffic_light_table")
        try:
            table = {str(k): v for k, v in json.loads(msg.data).items()}
            for v in table.values():  # validate now: a bad entry must fail here, not in every cycle
                np.asarray(v["position"], float)
                tuple(tuple(l) for l in v["lanes"]), v["id"]
            self.light_table = table
        except Exception as exc:
            self.diag.problem("malformed_light_table", f"{type(exc).__name__}: {exc}", level=2)

    def on_odometry(self, msg) -> None:
        ego, jumped_back = receive_odometry(self, msg, self.odom_order, "odometry_")
        if ego is None:
            return
        if jumped_back:
            self.pending = None
        self.last_ego = ego
        self.watchdog.feed("kinematic_state", now_s(self))
        self.stopped_for_silence = False
        if not self.cycle.cycle_due(ego, jumped_back):
            return
        if self.pending is not None:  # superseded: plan it with what there is
            self.plan(self.pending[0])
            self.pending = None
        if self.params.sync_timeout_s > 0 and not self.inputs_ready(ego.stamp):
            self.pending = (ego, time.monotonic() + self.params.sync_timeout_s)
            return
        self.plan(ego)

    # ------------------------------------------------------------------ sync (lockstep) mode
    def inputs_ready(self, t: float) -> bool:
        return self.cycle.objects_stamp >= t - STAMP_EPS_S and self.cycle.lights_stamp >= t - STAMP_EPS_S

    def try_pending(self) -> None:
        if self.pending is not None and self.inputs_ready(self.pending[0].stamp):
            ego, self.pending = self.pending[0], None
            self.plan(ego)

    def check_pending(self) -> None:
        if self.pending is not None and time.monotonic() > self.pending[1]:
            ego, self.pending = self.pending[0], None
            self.diag.problem("sync_timeout", "objects or light states for this cycle did not come in time: "
                                              "planning on the latest ones")
            self.plan(ego)

    # ------------------------------------------------------------------ planning
    def check_silence(self) -> None:
        """No kinematic state for ``odometry_timeout_s``: command a stop from the last one, once."""
        if not self.watchdog.stale(now_s(self)) or self.stopped_for_silence:
            return
        self.stopped_for_silence = True
        self.diag.problem("stale_input.kinematic_state",
                          f"no kinematic state for {self.params.odometry_timeout_s:g} s: commanding a controlled stop",
                          level=2)
        if self.last_ego is not None:
            self.plan(self.last_ego, stale=["kinematic_state"])

    def plan(self, ego: EgoState, stale: list[str] | None = None) -> None:
        from adstack.ros_convert import trajectory_to_msg
        with self.timer.measure(ego.stamp):
            traj, status = self.cycle.plan(ego, stale)
            if status.action == "minimal_risk_stop":
                self.diag.problem("minimal_risk_stop", "; ".join(status.reasons))
            elif status.action != "pass":  # the safety layer overruled the planner: counted by action
                self.diag.problem(f"safety.{status.action}", "; ".join(status.reasons))
            self.diag.set_value("safety", status.action)
        self.pub.publish(trajectory_to_msg(traj))


def main(args=None) -> int:
    return run_node(PlanningNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
