"""Planning node: the route's planner (expert or learned) behind the safety layer.

Inputs: tracked objects (map frame), kinematic state, traffic-light states, and the route (loaded from
the same route file and id as the map server, so the node needs no message to start planning).
Triggered by the kinematic state, planning at ``planner_hz`` of *sensor* time. Stale objects or
odometry, or a planner that fails, give a controlled stop (the safety layer's minimal-risk manoeuvre).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from adstack.node import Diagnostics, StageTimer, declare_params, latched_qos, param_file, reliable_qos, run_node, sensor_qos
from adstack.node_io import msg_class
from adstack.types import Boxes, TrafficLight, LightState
from planning.safety import SafetyConfig, SafetyLayer

try:
    from rclpy.node import Node
except ImportError:
    Node = object

TRAFFIC_LIGHT_TABLE = "/simulation/traffic_light_table"


@dataclass
class PlanningNodeConfig:
    routes: str = ""
    route_id: str = ""
    map: str = ""
    map_dirs: str = ""  # comma-separated
    planner: str = "expert"
    planner_hz: float = 10.0
    objects_timeout_s: float = 0.5
    use_ground_truth_objects: bool = False


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
        self.safety = SafetyLayer(SafetyConfig.load())
        self.diag = Diagnostics(self, "planning")
        self.timer = StageTimer(self)
        self.planner = None
        self.objects: Boxes | None = None
        self.objects_stamp = -np.inf
        self.lights: list[TrafficLight] = []
        self.light_table: dict = {}
        self.last_plan_stamp = -np.inf
        self.last_good = None
        self.pub = self.create_publisher(msg_class("Trajectory"), "output/trajectory", reliable_qos())
        self.create_subscription(msg_class("TrackedObjects"), "input/objects", self.on_objects, reliable_qos())
        self.create_subscription(msg_class("Odometry"), "input/kinematic_state", self.on_odometry, sensor_qos())
        self.create_subscription(msg_class("TrafficLightGroupArray"), "input/traffic_signals", self.on_lights, reliable_qos())
        self.create_subscription(msg_class("String"), TRAFFIC_LIGHT_TABLE, self.on_light_table, latched_qos())
        self._load_route()

    def _load_route(self) -> None:
        p = self.params
        if not p.routes or not p.route_id:
            self.diag.problem("no_route", "parameters routes and route_id are empty: commanding a stop", level=2)
            return
        try:
            from sim.drive import DriveOptions, load_route, make_planner
            opts = DriveOptions(routes=p.routes, route_id=p.route_id, out="", map_name=p.map or None,
                                map_dirs=[d for d in p.map_dirs.split(",") if d])
            _, hdmap, route = load_route(opts)
            self.planner = make_planner(p.planner, hdmap, route)
        except Exception as exc:
            self.diag.problem("route_setup_failed", f"{type(exc).__name__}: {exc}", level=2)

    def on_objects(self, msg) -> None:
        from adstack.ros_convert import boxes_from_objects
        try:
            boxes = boxes_from_objects(msg)
        except Exception as exc:
            self.diag.problem("malformed_objects", f"{type(exc).__name__}: {exc}", level=2)
            return
        if boxes.stamp < self.objects_stamp:
            self.diag.problem("out_of_order_stamp", "objects older than the last ones: dropped")
            return
        self.objects, self.objects_stamp = boxes, boxes.stamp

    def on_lights(self, msg) -> None:
        from adstack.ros_convert import traffic_lights_from_msg
        try:
            self.lights = lights_from_table(self.light_table, traffic_lights_from_msg(msg))
        except Exception as exc:
            self.diag.problem("malformed_traffic_signals", f"{type(exc).__name__}: {exc}", level=2)

    def on_light_table(self, msg) -> None:
        try:
            self.light_table = {str(k): v for k, v in json.loads(msg.data).items()}
        except (ValueError, AttributeError) as exc:
            self.diag.problem("malformed_light_table", str(exc), level=2)

    def on_odometry(self, msg) -> None:
        from adstack.ros_convert import ego_from_odometry, trajectory_to_msg
        try:
            ego = ego_from_odometry(msg)
        except Exception as exc:
            self.diag.problem("malformed_odometry", f"{type(exc).__name__}: {exc}", level=2)
            return
        if ego.stamp - self.last_plan_stamp < 1.0 / self.params.planner_hz - 1e-6:
            return
        self.last_plan_stamp = ego.stamp
        with self.timer.measure(ego.stamp):
            stale = []
            if ego.stamp - self.objects_stamp > self.params.objects_timeout_s:
                stale.append("objects")
            proposal = None
            if self.planner is not None and not stale:
                try:
                    proposal = self.planner.step(ego, self.objects, self.lights, ego.stamp)
                except Exception as exc:
                    self.diag.problem("planner_failed", f"{type(exc).__name__}: {exc}", level=2)
            traj, status = self.safety.check(ego, proposal, self.objects if not stale else None, ego.stamp,
                                             stale, self.last_good)
            if status.action == "minimal_risk_stop":
                self.diag.problem("minimal_risk_stop", "; ".join(status.reasons))
            elif status.action != "pass":
                self.diag.set_value("safety", status.action)
            if proposal is not None and status.action != "minimal_risk_stop":
                self.last_good = proposal
            traj.stamp = ego.stamp
        self.pub.publish(trajectory_to_msg(traj))


def main(args=None) -> int:
    return run_node(PlanningNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
