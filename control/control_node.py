"""Control node: Trajectory + kinematic state in, Control command out, one step per odometry message.

A silent or stale trajectory makes the core command a controlled stop (see control/README.md); a
watchdog on the node clock does the same if odometry itself stops arriving.
"""

from __future__ import annotations

from adstack.node import Diagnostics, StageTimer, declare_params, param_file, reliable_qos, run_node, sensor_qos
from adstack.node_io import msg_class
from adstack.types import Command
from control import Controller, ControllerConfig

try:
    from rclpy.node import Node
except ImportError:
    Node = object


class ControlNode(Node):
    def __init__(self):
        super().__init__("controller")
        self.params = declare_params(self, ControllerConfig, param_file("control", "controller"))
        self.core = Controller(self.params)
        self.diag = Diagnostics(self, "control")
        self.timer = StageTimer(self)
        self.trajectory = None
        self.last_odom_stamp = None
        self.pub = self.create_publisher(msg_class("Control"), "output/control_cmd", reliable_qos())
        self.create_subscription(msg_class("Trajectory"), "input/trajectory", self.on_trajectory, reliable_qos())
        self.create_subscription(msg_class("Odometry"), "input/kinematic_state", self.on_odometry, sensor_qos())

    def on_trajectory(self, msg) -> None:
        from adstack.ros_convert import trajectory_from_msg
        try:
            self.trajectory = trajectory_from_msg(msg)
        except Exception as exc:
            self.diag.problem("malformed_trajectory", f"{type(exc).__name__}: {exc}", level=2)

    def on_odometry(self, msg) -> None:
        from adstack.ros_convert import command_to_msg, ego_from_odometry
        try:
            ego = ego_from_odometry(msg)
        except Exception as exc:
            self.diag.problem("malformed_odometry", f"{type(exc).__name__}: {exc}", level=2)
            return
        if self.last_odom_stamp is not None and ego.stamp <= self.last_odom_stamp:
            self.diag.problem("out_of_order_stamp", f"odometry {ego.stamp:.3f} after {self.last_odom_stamp:.3f}: dropped")
            return
        self.last_odom_stamp = ego.stamp
        with self.timer.measure(ego.stamp):
            command = self.core.step(ego, self.trajectory, ego.stamp)
        if self.core.debug.status != "ok":
            self.diag.problem(self.core.debug.status, "commanding a controlled stop")
        command.stamp = ego.stamp
        self.pub.publish(command_to_msg(command))


def main(args=None) -> int:
    return run_node(ControlNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
