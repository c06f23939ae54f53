"""The control node's rules without ROS: ``ControlCycle``.

The node (control/control_node.py) and the replay's in-process stack (sim/replay.py) both run their
inputs through this one class:
- a trajectory is checked (``check_trajectory``); one older than the last by up to 5 s is dropped,
  by more it is a new run (a clock that jumped back) and is taken;
- a kinematic state whose clock jumped back forgets the trajectory;
- each kinematic state gets one command from the ``Controller`` core on the latest trajectory,
  stamped with that state; a core that raises is reset and commands a controlled stop.

Problems go to ``report(kind, message, level)``; ``core.debug.status`` tells what the command was
(``ok`` or why it stops).
"""

from __future__ import annotations

from typing import Callable

from adstack.node_io import MalformedMessage, check_trajectory
from adstack.types import Command, EgoState

Report = Callable[..., None]  # report(kind, message, level=1)
NEW_RUN_JUMP_S = 5.0  # a trajectory this much older than the last one is a new run, not a late one


class ControlCycle:
    def __init__(self, core, report: Report):
        self.core = core  # control.Controller
        self.report = report
        self.trajectory = None

    def on_trajectory(self, trajectory, topic: str = "input/trajectory") -> bool:
        """Take a trajectory; False if it was dropped."""
        try:
            trajectory = check_trajectory(trajectory, topic)
        except MalformedMessage as exc:
            self.report(f"malformed_trajectory.{exc.kind}", str(exc), level=2)
            return False
        if self.trajectory is not None and trajectory.stamp < self.trajectory.stamp:
            if self.trajectory.stamp - trajectory.stamp <= NEW_RUN_JUMP_S:
                self.report("trajectory_out_of_order_stamp", "trajectory older than the last one: dropped")
                return False
            self.report("trajectory_clock_jump_back", "trajectory stamps jumped back: a new run")
        self.trajectory = trajectory
        return True

    def on_clock_jump_back(self) -> None:
        self.trajectory = None  # the core resets itself when its time goes back

    def command(self, ego: EgoState) -> Command:
        """The command for this kinematic state, stamped with it."""
        try:
            command = self.core.step(ego, self.trajectory, ego.stamp)
        except Exception as exc:  # a core bug must not take the node down: stop, start afresh
            self.report("controller_failed", f"{type(exc).__name__}: {exc}", level=2)
            self.core.reset()
            command = self.core.step(ego, None, ego.stamp)
        command.stamp = ego.stamp
        return command
