"""Control node: Trajectory + kinematic state in, Control command out, one step per kinematic state.

Each command is stamped with the kinematic state it answers. A silent, stale, empty or invalid
trajectory makes the core command a controlled stop (see control/README.md); a watchdog on the node
clock does the same from the last known state if the kinematic state itself stops arriving
(``odometry_timeout_s``). Malformed, non-finite, repeated or older inputs are dropped; each kind of
problem is logged once and counted on /diagnostics.

``sync_trajectory_period_s > 0`` is for lockstep simulation and replay (``adstack launch sim``): when a
new trajectory is due for this kinematic state (the planner plans every that many seconds of sensor
time), the step waits up to ``sync_timeout_s`` of wall time for the trajectory stamped with it, so the
graph follows the same plan as the in-process loop whatever order DDS delivers the two in.
"""

from __future__ import annotations

import time

import numpy as np

from adstack.node import (Diagnostics, StageTimer, StalenessWatchdog, declare_params, now_s, param_file, reliable_qos,
                          run_node)
from adstack.node_io import (receive_odometry, MAX_TRAJECTORY_POINTS, ReceivedCounter, StampGuard, check_sequence_length,
                             msg_class, new_period)
from adstack.types import Command, EgoState
from control import Controller, ControllerConfig
from control.cycle import ControlCycle

try:
    from rclpy.node import Node
except ImportError:
    Node = object

STAMP_EPS_S = 1e-6
# Node-side settings, apart from ControllerConfig (the ROS-free core's parameters).
NODE_PARAMS = {"diagnostics_period_s": 1.0, "odometry_timeout_s": 1.0, "sync_trajectory_period_s": 0.0,
               "sync_timeout_s": 1.0}


class ControlNode(Node):
    def __init__(self):
        super().__init__("controller")
        self.params = declare_params(self, ControllerConfig, param_file("control", "controller"))
        node = {name: float(self.declare_parameter(name, default).value) for name, default in NODE_PARAMS.items()}
        self.node_params = node
        self.core = Controller(self.params)
        self.diag = Diagnostics(self, "control", period_s=node["diagnostics_period_s"])
        self.timer = StageTimer(self)
        self.cycle = ControlCycle(self.core, self.diag.problem)  # the rules, shared with the replay
        self.odom_order = StampGuard()
        self.received = ReceivedCounter(self.diag)
        self.last_ego: EgoState | None = None
        self.pending: tuple[EgoState, float] | None = None  # (kinematic state, wall deadline) in sync mode
        self.watchdog = StalenessWatchdog({"kinematic_state": node["odometry_timeout_s"]}, start=now_s(self))
        self.stopped_for_silence = False
        self.pub = self.create_publisher(msg_class("Control"), "output/control_cmd", reliable_qos())
        self.create_subscription(msg_class("Trajectory"), "input/trajectory", self.on_trajectory, reliable_qos())
        # Reliable, as Autoware publishes /localization/kinematic_state: each one triggers a cycle.
        self.create_subscription(msg_class("Odometry"), "input/kinematic_state", self.on_odometry, reliable_qos())
        if node["odometry_timeout_s"] > 0:
            self.create_timer(min(0.1, node["odometry_timeout_s"] / 2), self.check_silence)
        if node["sync_trajectory_period_s"] > 0:
            self.create_timer(0.005, self.check_pending)

    def on_trajectory(self, msg) -> None:
        from adstack.ros_convert import MalformedMessage, trajectory_from_msg
        self.received("trajectory")
        topic = "input/trajectory"
        try:
            check_sequence_length(msg, "points", MAX_TRAJECTORY_POINTS, topic)
            trajectory = trajectory_from_msg(msg)
        except MalformedMessage as exc:
            self.diag.problem(f"malformed_trajectory.{exc.kind}", str(exc), level=2)
            return
        except Exception as exc:
            self.diag.problem("malformed_trajectory", f"{type(exc).__name__}: {exc}", level=2)
            return
        if not self.cycle.on_trajectory(trajectory, topic):
            return
        trajectory = self.cycle.trajectory
        if self.pending is not None and trajectory.stamp >= self.pending[0].stamp - STAMP_EPS_S:
            ego, self.pending = self.pending[0], None
            self.control(ego)

    def on_odometry(self, msg) -> None:
        ego, jumped_back = receive_odometry(self, msg, self.odom_order, "")
        if ego is None:
            return
        if jumped_back:
            self.cycle.on_clock_jump_back()
        self.watchdog.feed("kinematic_state", now_s(self))
        self.stopped_for_silence = False
        if self.pending is not None:  # superseded: answer it with what there is
            self.control(self.pending[0])
            self.pending = None
        period = self.node_params["sync_trajectory_period_s"]
        if period > 0:
            last = -np.inf if self.cycle.trajectory is None else self.cycle.trajectory.stamp
            if new_period(ego.stamp, last, period):  # the planner owes a trajectory for this state
                self.pending = (ego, time.monotonic() + self.node_params["sync_timeout_s"])
                return
        self.control(ego)

    def check_pending(self) -> None:
        if self.pending is not None and time.monotonic() > self.pending[1]:
            ego, self.pending = self.pending[0], None
            self.diag.problem("sync_timeout", "no trajectory for this kinematic state in time: using the last one")
            self.control(ego)

    def check_silence(self) -> None:
        """No kinematic state for ``odometry_timeout_s``: one controlled-stop command from the last one."""
        if not self.watchdog.stale(now_s(self)) or self.stopped_for_silence:
            return
        self.stopped_for_silence = True
        self.diag.problem("stale_input.kinematic_state", f"no kinematic state for "
                          f"{self.node_params['odometry_timeout_s']:g} s: commanding a controlled stop", level=2)
        if self.last_ego is not None:
            from adstack.ros_convert import command_to_msg
            # Not a core step (its clock is sensor time, and none has passed): hold the wheel, brake.
            command = Command(steer=float(self.core._last_steer or 0.0), accel=self.core._controlled_stop(self.last_ego),
                              stamp=self.last_ego.stamp)
            self.pub.publish(command_to_msg(command))

    def control(self, ego: EgoState) -> None:
        from adstack.ros_convert import command_to_msg
        self.last_ego = ego
        with self.timer.measure(ego.stamp):
            command = self.cycle.command(ego)
        if self.core.debug.status != "ok":
            self.diag.problem(self.core.debug.status, "commanding a controlled stop")
        self.diag.set_value("status", self.core.debug.status)
        self.pub.publish(command_to_msg(command))


def main(args=None) -> int:
    return run_node(ControlNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
