"""The control node, running as its own process: follows a fresh trajectory, brakes to a controlled stop
when the trajectory goes stale or the kinematic state goes silent, and drops malformed, non-finite,
repeated and older inputs (each kind counted on /diagnostics, logged once)."""

from __future__ import annotations

import numpy as np
import pytest

from adstack import ros_convert as rc
from test_nodes_harness import NodeProcess, Probe, domain_id_for, needs_autoware, odometry, straight_trajectory

pytestmark = needs_autoware

NODE = "controller"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from autoware_control_msgs.msg import Control
    from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg
    from nav_msgs.msg import Odometry

    from adstack import topics

    domain = domain_id_for(__name__)
    node = NodeProcess(NODE, domain, tmp_path_factory.mktemp("controller") / f"{NODE}.log",
                       {"diagnostics_period_s": 0.2, "odometry_timeout_s": 0.5})
    probe = Probe(domain)
    try:
        traj = probe.publisher(TrajectoryMsg, topics.TRAJECTORY)
        odom = probe.publisher(Odometry, topics.KINEMATIC_STATE)
        outputs = probe.collect(Control, topics.CONTROL_COMMAND)
        assert probe.wait_matched(traj) and probe.wait_matched(odom), node.log()
        assert probe.wait_diagnostics(NODE), node.log()
        yield node, probe, traj, odom, outputs
    finally:
        node.stop()
        probe.close()


def _command_at(probe, outputs, t: float):
    def found():
        return [m for m in outputs if abs(rc.time_to_sec(m.stamp) - t) < 1e-6]
    probe.spin_until(lambda: bool(found()), 30.0)
    hits = found()
    return rc.command_from_msg(hits[-1]) if hits else None


def _step(probe, odom, outputs, t: float, x: float = 0.0, v: float = 5.0):
    odom.publish(odometry(x, 0.0, 0.0, v, t))
    return _command_at(probe, outputs, t)


def test_follows_then_stops_when_the_trajectory_goes_stale(running):
    node, probe, traj, odom, outputs = running
    traj.publish(rc.trajectory_to_msg(straight_trajectory(0.0, 0.0, 10.0, 1.0)))
    probe.spin_for(0.1)
    first = [_step(probe, odom, outputs, 1.0 + 0.05 * k, x=0.25 * k) for k in range(4)]
    assert all(c is not None for c in first), node.log()
    assert first[-1].accel > 0.0 and abs(first[-1].steer) < 0.05  # speeding up towards 10 m/s, straight
    # No new trajectory for longer than stale_timeout_s (0.5 s of sensor time): a controlled stop.
    late = [_step(probe, odom, outputs, 1.2 + 0.1 * k, x=1.0 + 0.5 * k) for k in range(10)]
    assert all(c is not None for c in late)
    assert late[-1].accel < 0.0, [c.accel for c in late]
    assert probe.wait_count(NODE, "stale_trajectory", 1, 10.0), probe.counts(NODE)
    assert len(node.log_lines_with("]: stale_trajectory: ")) == 1
    assert node.alive()


def test_silent_kinematic_state_gives_a_stop_command(running):
    node, probe, traj, odom, outputs = running
    traj.publish(rc.trajectory_to_msg(straight_trajectory(0.0, 0.0, 10.0, 5.0)))
    probe.spin_for(0.1)
    assert _step(probe, odom, outputs, 5.0) is not None
    n = len(outputs)
    assert probe.wait_count(NODE, "stale_input.kinematic_state", 1, 10.0), probe.counts(NODE)
    assert probe.spin_until(lambda: len(outputs) > n, 10.0)
    stop = rc.command_from_msg(outputs[-1])
    assert stop.stamp == pytest.approx(5.0) and stop.accel < 0.0
    assert node.alive()


def test_malformed_and_out_of_order_inputs_are_dropped_counted_and_logged_once(running):
    node, probe, traj, odom, outputs = running
    good = straight_trajectory(0.0, 0.0, 8.0, 9.0)
    traj.publish(rc.trajectory_to_msg(good))
    probe.spin_for(0.1)
    assert _step(probe, odom, outputs, 9.0) is not None
    nan_traj = straight_trajectory(0.0, 0.0, 8.0, 9.05)
    nan_traj.points[3, 1] = np.nan
    wrong_frame = straight_trajectory(0.0, 0.0, 8.0, 9.06)
    wrong_frame.frame_id = "base_link"
    bad_odom = odometry(0.0, 0.0, 0.0, 5.0, 9.07)
    bad_odom.twist.twist.linear.x = float("inf")
    for _ in range(2):
        traj.publish(rc.trajectory_to_msg(nan_traj))
        traj.publish(rc.trajectory_to_msg(wrong_frame))
        odom.publish(bad_odom)
        odom.publish(odometry(0.0, 0.0, 0.0, 5.0, 9.0))  # duplicate
        odom.publish(odometry(0.0, 0.0, 0.0, 5.0, 8.9))  # older
        probe.spin_for(0.05)
    kinds = ["malformed_trajectory.nonfinite", "malformed_trajectory.wrong_frame", "malformed_odometry.nonfinite",
             "duplicate_stamp", "out_of_order_stamp"]
    for kind in kinds:
        assert probe.wait_count(NODE, kind, 1, 10.0), (kind, probe.counts(NODE))
    for kind in kinds:
        assert len(node.log_lines_with(f"]: {kind}: ")) == 1, (kind, node.log())
    # Still following the last good trajectory, with finite, clamped commands.
    cmd = _step(probe, odom, outputs, 9.1, x=0.5)
    assert cmd is not None and np.isfinite([cmd.steer, cmd.accel]).all() and -8.0 <= cmd.accel <= 3.0
    assert cmd.accel > 0.0  # 5 m/s on an 8 m/s plan: the NaN plan did not replace it
    assert {round(rc.time_to_sec(m.stamp), 3) for m in outputs} & {9.07, 8.9} == set()
    assert node.alive()
