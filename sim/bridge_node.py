"""Simulation bridge: the embedded world as a ROS 2 node, stepped in lockstep with the stack.

It publishes the lidar cloud, the kinematic state, ground-truth objects and traffic-light states for
simulation time T, then waits for the control command stamped T (the controller stamps its command
with the odometry it answered) before advancing the world by one tick. A command that does not come
within ``command_timeout_s`` of wall time is replaced by the previous one and counted on
/diagnostics, so a slow or dead node degrades the drive instead of hanging it. When the route ends
it writes ``result.json`` (the same record as ``adstack drive``) and exits.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adstack import topics
from adstack.node import Diagnostics, declare_params, latched_qos, param_file, reliable_qos
from adstack.node_io import msg_class
from adstack.types import Command

try:
    from rclpy.node import Node
except ImportError:
    Node = object


FIRST_STATE_REPEAT_S = 3.0


@dataclass
class BridgeConfig:
    routes: str = ""
    route_id: str = ""
    map: str = ""
    map_dirs: str = ""
    seed: int = 0
    seconds: float = 0.0  # 0: the route's own timeout ends it
    out: str = "runs/launch"
    variant: str = "lb1"
    planner: str = "expert"  # for the record in result.json: the planning node's planner
    lidar: bool = True
    vehicles: int = -1  # -1: world config default
    pedestrians: int = -1
    publish_ground_truth_as_detections: bool = True
    ground_truth_radius_m: float = 80.0
    first_command_timeout_s: float = 60.0  # wall time for the graph to come up
    graph_wait_s: float = 30.0  # wall time to wait for the stack's subscribers before the first tick
    graph_settle_s: float = 1.0  # and then this long, so that both ends of every link have matched
    min_odometry_subscribers: int = 2  # planner and controller
    objects_every_ticks: int = 2  # ground truth and light states every this many ticks (10 Hz at 20 Hz)
    command_timeout_s: float = 2.0  # wall time per tick before the last command is reused
    log: bool = True
    diagnostics_period_s: float = 1.0


class SimBridgeNode(Node):
    def __init__(self):
        super().__init__("sim_bridge")
        self.params = declare_params(self, BridgeConfig, param_file("sim", "bridge"))
        self.diag = Diagnostics(self, "sim bridge", period_s=self.params.diagnostics_period_s)
        # Reliable writers (best-effort readers match them too): in lockstep a lost sample is a lost tick.
        # Simulation time for the graph (launch/graph.yaml `sim_time`: the other nodes use_sim_time):
        # published first each tick, so a node's clock has reached a message's stamp when it arrives.
        self.pub_clock = self.create_publisher(msg_class("Clock"), "/clock", reliable_qos())
        self.pub_cloud = self.create_publisher(msg_class("PointCloud2"), "output/pointcloud", reliable_qos(2))
        self.pub_odom = self.create_publisher(msg_class("Odometry"), "output/kinematic_state", reliable_qos())
        self.pub_gt = self.create_publisher(msg_class("TrackedObjects"), "output/ground_truth_objects", reliable_qos())
        self.pub_det = self.create_publisher(msg_class("DetectedObjects"), "/perception/object_recognition/detection/objects",
                                             reliable_qos())
        self.pub_lights = self.create_publisher(msg_class("TrafficLightGroupArray"), "output/traffic_signals", reliable_qos())
        self.pub_table = self.create_publisher(msg_class("String"), "/simulation/traffic_light_table", latched_qos())
        self.pub_status = self.create_publisher(msg_class("String"), "output/status", reliable_qos())
        self.create_subscription(msg_class("Control"), "input/control_cmd", self.on_command, reliable_qos())
        # The plans go into log.mcap as `adstack drive` logs them.
        self.create_subscription(msg_class("Trajectory"), topics.TRAJECTORY, self.on_trajectory, reliable_qos())
        # Every stage's debug figures (adstack.node.StageTimer), summarised into result.json: pipeline
        # latency in simulation time (the nodes use_sim_time), processing time in wall time.
        self.stage_figures: dict[str, dict[str, list]] = {}
        for name in self._stack_node_names():
            for figure in ("pipeline_latency_ms", "processing_time_ms"):
                self.create_subscription(msg_class("Float64"), f"/{name}/debug/{figure}",
                                         lambda msg, n=name, f=figure: self.on_stage_figure(n, f, msg), 100)
        self.command = Command()
        self.pending: Command | None = None
        self.late_commands = 0
        self.finished = False
        self.session = self._start_session()
        self.waiting_since = time.monotonic()
        self.first = True
        self.started = False  # first state published (after the graph came up)
        self.graph_ready_since: float | None = None
        self.first_published_at = 0.0
        if self.session is not None:
            self.create_timer(0.002, self.spin_once)

    def graph_ready(self) -> bool:
        """Every consumer of the first tick is there: a state published before DDS matched it is lost."""
        p = self.params
        subs = [self.pub_odom.get_subscription_count() >= p.min_odometry_subscribers,
                self.pub_lights.get_subscription_count() >= 1,
                self.count_publishers(self.resolve_topic_name("input/control_cmd")) >= 1]
        if p.publish_ground_truth_as_detections:
            subs.append(self.pub_det.get_subscription_count() >= 1)
        return all(subs)

    def start_when_ready(self) -> None:
        now = time.monotonic()
        if self.graph_ready():
            if self.graph_ready_since is None:
                self.graph_ready_since = now
            if now - self.graph_ready_since < self.params.graph_settle_s:
                return
        elif now - self.waiting_since < self.params.graph_wait_s:
            return
        else:
            self.diag.problem("graph_incomplete", "not every node of the stack subscribed in time: starting anyway")
        self.started = True
        self.publish_state()
        self.waiting_since = self.first_published_at = time.monotonic()

    def _start_session(self):
        from sim.drive import DriveOptions, RouteSession, load_route
        p = self.params
        self.opts = DriveOptions(routes=p.routes, route_id=p.route_id, out=p.out, map_name=p.map or None,
                                 map_dirs=[d for d in p.map_dirs.split(",") if d], seed=p.seed,
                                 seconds=p.seconds or None, variant=p.variant, lidar=p.lidar, planner=p.planner,
                                 perception="ground_truth" if p.publish_ground_truth_as_detections else "lidar",
                                 vehicles=None if p.vehicles < 0 else p.vehicles,
                                 pedestrians=None if p.pedestrians < 0 else p.pedestrians, log=p.log)
        out = Path(p.out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            spec, hdmap, route = load_route(self.opts)
            return RouteSession(self.opts, spec, hdmap, route, out)
        except Exception as exc:
            from sim.drive import STATUS_SETUP_FAILED, _failure_result, _write_json
            self.diag.problem("route_setup_failed", f"{type(exc).__name__}: {exc}", level=2)
            _write_json(out / "result.json", _failure_result(self.opts, STATUS_SETUP_FAILED, str(exc), 0.0))
            self.finished = True
            return None

    def on_command(self, msg) -> None:
        from adstack.ros_convert import command_from_msg
        try:
            cmd = command_from_msg(msg)
        except Exception as exc:
            self.diag.problem("malformed_command", f"{type(exc).__name__}: {exc}", level=2)
            return
        if not (np.isfinite(cmd.steer) and np.isfinite(cmd.accel)):
            self.diag.problem("nonfinite_command", "NaN/Inf in the control command: ignored", level=2)
            return
        if self.session is not None and cmd.stamp + 1e-6 >= self.session.state.t:
            self.pending = cmd

    @staticmethod
    def _stack_node_names() -> list[str]:
        try:
            from adstack.launch_graph import load_graph
            return [spec.name for spec in load_graph()["sim"] if spec.module != "sim.bridge_node"]
        except Exception:  # no description (an unusual install): no figures, nothing else lost
            return []

    def on_stage_figure(self, node: str, figure: str, msg) -> None:
        value = float(msg.data)
        if np.isfinite(value):
            self.stage_figures.setdefault(node, {}).setdefault(figure, []).append(value)

    def stage_summary(self) -> dict:
        """{node: {figure: {n, p50, p99, max}}} over the run."""
        out = {}
        for node, figures in sorted(self.stage_figures.items()):
            out[node] = {f: {"n": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                             "max": float(np.max(v))} for f, v in sorted(figures.items()) if v}
        return out

    def on_trajectory(self, msg) -> None:
        from adstack.ros_convert import trajectory_from_msg
        if self.session is None or self.finished:
            return
        try:
            self.session.log_plan(trajectory_from_msg(msg))
        except Exception as exc:
            self.diag.problem("malformed_trajectory", f"{type(exc).__name__}: {exc}")

    def publish_state(self) -> None:
        from adstack import ros_convert as rc
        state = self.session.state
        self.pub_clock.publish(msg_class("Clock")(clock=rc.time_msg(state.t)))
        self.pub_odom.publish(rc.odometry_to_msg(state.ego))
        if state.lidar is not None:  # stamped with its sweep's end: with the default delivery, the previous tick
            self.pub_cloud.publish(rc.pointcloud_to_msg(state.lidar))
        if self.first or self.session.tick_count % max(1, self.params.objects_every_ticks) == 0:
            near = np.hypot(state.actors.center[:, 0] - state.ego.x, state.actors.center[:, 1] - state.ego.y) \
                <= self.params.ground_truth_radius_m
            gt = state.actors.select(near)
            gt.stamp = state.t
            self.pub_gt.publish(rc.tracked_objects_to_msg(gt))
            if self.params.publish_ground_truth_as_detections:
                self.pub_det.publish(rc.detected_objects_to_msg(gt))
            self.pub_lights.publish(rc.traffic_lights_to_msg(state.traffic_lights, state.t))
        if self.first:
            table = {str(rc.traffic_light_group_id(l.id)): {"id": l.id, "position": np.asarray(l.position).tolist(),
                                                             "lanes": [list(x) for x in l.lanes]}
                     for l in state.traffic_lights}
            self.pub_table.publish(rc.string_msg(json.dumps(table)))

    def spin_once(self) -> None:
        if self.finished or self.session is None:
            return
        if not self.started:
            self.start_when_ready()
            return
        limit = self.params.first_command_timeout_s if self.first else self.params.command_timeout_s
        if self.pending is None:
            if self.first and time.monotonic() - self.first_published_at > FIRST_STATE_REPEAT_S:
                # A node that had not matched yet lost the first state: say it again (the nodes that
                # did get it drop the repeat as a duplicate stamp).
                self.diag.problem("first_state_repeated", "no command for the first state yet: publishing it again")
                self.publish_state()
                self.first_published_at = time.monotonic()
            if time.monotonic() - self.waiting_since < limit:
                return
            self.late_commands += 1
            self.diag.problem("late_command", "no control command in time: reusing the previous one")
            if self.first:  # the graph never came up
                self.session.agent_crashed("no control command from the stack")
                self.finish()
                return
            command = self.command
        else:
            command = self.pending
        self.pending = None
        self.first = False
        self.command = command
        state = self.session.step(command)
        if self.session.tick_count % 20 == 0:
            from adstack.ros_convert import string_msg
            rc_, pen, ds = self.session.scorer.current_scores()
            self.pub_status.publish(string_msg(json.dumps({"t": state.t, "route_completion": rc_,
                                                           "infraction_penalty": pen, "driving_score": ds})))
        if self.session.done:
            self.finish()
            return
        self.publish_state()
        self.waiting_since = time.monotonic()

    def finish(self) -> None:
        self.finished = True
        result, _ = self.session.finish({"graph": "ros2 (adstack launch sim)", "late_commands": self.late_commands,
                                         "bridge_problems": dict(self.diag.problems.counts),
                                         "stages": self.stage_summary()})
        print(f"sim_bridge: route {result['route_id']}: {result['status']}, driving score "
              f"{result['driving_score']:.2f}", file=sys.stderr, flush=True)
        raise SystemExit(0)


def main(args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = SimBridgeNode()
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.05)
    except SystemExit:
        pass
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None and node.session is not None and not node.finished:
            node.session.agent_crashed("interrupted")
            try:
                node.finish()
            except SystemExit:
                pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
