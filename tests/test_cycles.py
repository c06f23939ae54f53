"""The planning and control nodes' rules without ROS (planning/cycle.py, control/cycle.py), which
the nodes and the replay's in-process stack share."""

from __future__ import annotations

import numpy as np

from adstack.types import Boxes, EgoState, Trajectory
from control import Controller, ControllerConfig
from control.cycle import ControlCycle
from planning.cycle import PlanningCycle
from planning.safety import SafetyConfig, SafetyLayer


class Reports(list):
    def __call__(self, kind, message="", level=1):
        self.append(kind)


class StraightPlanner:
    """Plans 8 m/s straight ahead (the planner interface: step(ego, objects, lights, t))."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls = 0

    def step(self, ego, objects, lights, t):
        self.calls += 1
        if self.fail:
            raise RuntimeError("planner bug")
        s = np.arange(0.0, 40.0, 1.0)
        return Trajectory(np.column_stack([ego.x + s, np.full_like(s, ego.y), np.zeros_like(s), np.full_like(s, 8.0),
                                           s / 8.0]), "map", t)


def _empty(stamp: float) -> Boxes:
    return Boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, int), None, None, None, "map", stamp)


def _planning(planner) -> tuple[PlanningCycle, Reports]:
    reports = Reports()
    return PlanningCycle(planner, SafetyLayer(SafetyConfig.load()), 10.0, 0.5, reports), reports


def test_planning_cycles_on_the_sensor_time_grid_and_restart_after_a_clock_jump():
    cycle, _ = _planning(StraightPlanner())
    due = [t for t in np.round(np.arange(0.0, 0.5, 0.05), 2) if cycle.cycle_due(EgoState(0, 0, 0, stamp=t))]
    assert due == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert not cycle.cycle_due(EgoState(0, 0, 0, stamp=0.05))  # an older state opens no cycle ...
    assert cycle.cycle_due(EgoState(0, 0, 0, stamp=0.05), jumped_back=True)  # ... unless it is a new run


def test_planning_plans_on_fresh_objects_and_stops_on_stale_ones_or_a_failing_planner():
    planner = StraightPlanner()
    cycle, reports = _planning(planner)
    assert cycle.on_objects(_empty(1.0)) and cycle.on_lights([], 1.0)
    traj, status = cycle.plan(EgoState(0.0, 0.0, 0.0, v=8.0, stamp=1.0))
    assert status.action == "pass" and traj.stamp == 1.0 and traj.points[-1, 3] == 8.0
    traj, status = cycle.plan(EgoState(0.0, 0.0, 0.0, v=8.0, stamp=1.6))  # objects 0.6 s old
    assert status.action == "minimal_risk_stop" and planner.calls == 1 and traj.points[-1, 3] == 0.0
    cycle.planner = StraightPlanner(fail=True)
    assert cycle.on_objects(_empty(2.0))
    traj, status = cycle.plan(EgoState(0.0, 0.0, 0.0, v=8.0, stamp=2.0))
    assert "planner_failed" in reports and status.action == "minimal_risk_stop"


def test_planning_drops_older_objects_and_light_states_and_says_so():
    cycle, reports = _planning(StraightPlanner())
    assert cycle.on_objects(_empty(2.0)) and not cycle.on_objects(_empty(1.9))
    assert cycle.objects_stamp == 2.0 and "objects_out_of_order_stamp" in reports
    assert cycle.on_lights([], 2.0) and not cycle.on_lights([], 1.95)
    assert "traffic_signals_out_of_order_stamp" in reports
    bad = Boxes([[np.nan, 0.0, 0.0]], [[4.0, 2.0, 1.5]], [0.0], [1], None, None, None, "map", 2.1)
    assert cycle.on_objects(bad) and len(cycle.objects) == 0 and "nonfinite_objects" in reports


def _trajectory(stamp: float) -> Trajectory:
    s = np.arange(0.0, 30.0, 1.0)
    return Trajectory(np.column_stack([s, np.zeros_like(s), np.zeros_like(s), np.full_like(s, 5.0), s / 5.0]), "map",
                      stamp)


def test_control_takes_the_newest_trajectory_and_a_new_run_but_not_a_late_one():
    reports = Reports()
    cycle = ControlCycle(Controller(ControllerConfig()), reports)
    assert cycle.on_trajectory(_trajectory(10.0))
    assert not cycle.on_trajectory(_trajectory(9.0)) and cycle.trajectory.stamp == 10.0
    assert "trajectory_out_of_order_stamp" in reports
    assert cycle.on_trajectory(_trajectory(1.0)) and "trajectory_clock_jump_back" in reports  # 9 s back: new run
    command = cycle.command(EgoState(0.0, 0.0, 0.0, v=4.0, stamp=1.05))
    assert command.stamp == 1.05 and cycle.core.debug.status == "ok" and command.accel > 0.0


def test_control_survives_a_failing_core_with_a_controlled_stop():
    reports = Reports()
    core = Controller(ControllerConfig())
    cycle = ControlCycle(core, reports)
    cycle.on_trajectory(_trajectory(0.0))
    real_step = core.step
    calls = []

    def step_failing_once(ego, trajectory, t):
        calls.append(trajectory)
        if len(calls) == 1:
            raise ValueError("core bug")
        return real_step(ego, trajectory, t)

    core.step = step_failing_once
    command = cycle.command(EgoState(0.0, 0.0, 0.0, v=6.0, stamp=0.05))
    assert "controller_failed" in reports and calls[-1] is None  # started afresh without the trajectory
    assert command.stamp == 0.05 and command.accel < 0.0
