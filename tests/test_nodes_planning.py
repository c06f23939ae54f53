"""The planning node, running as its own process on a real route: it drives while its inputs are fresh,
commands a controlled stop (speeds falling to zero) while objects or the kinematic state are stale,
drops malformed, non-finite and out-of-order inputs (each kind counted, logged once), and recovers."""

from __future__ import annotations

import numpy as np
import pytest

from adstack import ros_convert as rc
from adstack.types import Boxes
from test_nodes_harness import REPO, NodeProcess, Probe, domain_id_for, needs_autoware, odometry

pytestmark = needs_autoware

NODE = "planner"
ROUTES = REPO / "sim" / "routes" / "grid_town.xml"
START_X, START_Y, START_YAW = 101.75, -50.328, np.pi / 2  # route 1 of grid_town, heading +y
SPEED = 6.0


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from autoware_perception_msgs.msg import TrackedObjects
    from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg
    from nav_msgs.msg import Odometry

    from adstack import topics

    domain = domain_id_for(__name__)
    node = NodeProcess(NODE, domain, tmp_path_factory.mktemp("planner") / f"{NODE}.log",
                       {"routes": str(ROUTES), "route_id": "1", "diagnostics_period_s": 0.2,
                        "odometry_timeout_s": 0.5, "objects_timeout_s": 0.5})
    probe = Probe(domain)
    try:
        objects = probe.publisher(TrackedObjects, topics.TRACKED_OBJECTS)
        odom = probe.publisher(Odometry, topics.KINEMATIC_STATE)
        outputs = probe.collect(TrajectoryMsg, topics.TRAJECTORY)
        assert probe.wait_matched(objects) and probe.wait_matched(odom), node.log()
        assert probe.wait_diagnostics(NODE), node.log()
        yield node, probe, objects, odom, outputs
    finally:
        node.stop()
        probe.close()


def _ego_at(t: float):
    """On the route's first straight, 6 m/s along +y, 1 m per 1/6 s."""
    return odometry(START_X, START_Y + SPEED * (t - 1.0), START_YAW, SPEED, t)


def _trajectory_at(probe, outputs, t: float, timeout_s: float = 30.0):
    def found():
        return [m for m in outputs if abs(rc.time_to_sec(m.header.stamp) - t) < 1e-6]
    probe.spin_until(lambda: bool(found()), timeout_s)
    hits = found()
    return rc.trajectory_from_msg(hits[-1]) if hits else None


def _drive(probe, objects, odom, outputs, stamps, with_objects: bool):
    trajectories = []
    for t in stamps:
        if with_objects:
            objects.publish(rc.tracked_objects_to_msg(Boxes(frame_id="map", stamp=t)))
            probe.spin_for(0.01)
        odom.publish(_ego_at(t))
        trajectories.append(_trajectory_at(probe, outputs, t))
    return trajectories


def _is_controlled_stop(traj) -> bool:
    v = traj.points[:, 3]
    return bool(v[0] > 0.5 * SPEED and np.all(np.diff(v) <= 1e-6) and v[-1] == pytest.approx(0.0, abs=1e-6))


def test_drives_on_fresh_inputs_and_stops_in_a_controlled_way_while_they_are_stale(running):
    node, probe, objects, odom, outputs = running
    fresh = _drive(probe, objects, odom, outputs, [1.0 + 0.1 * k for k in range(6)], with_objects=True)
    assert all(t is not None for t in fresh), node.log()
    assert fresh[-1].points[:, 3].max() > 1.0 and not _is_controlled_stop(fresh[-1])  # it drives
    assert probe.spin_until(lambda: probe.values(NODE).get("safety") == "pass", 10.0), probe.values(NODE)

    # Objects go silent, the kinematic state keeps coming: after objects_timeout_s a controlled stop.
    stale = _drive(probe, objects, odom, outputs, [1.6 + 0.1 * k for k in range(10)], with_objects=False)
    assert all(t is not None for t in stale), node.log()
    stops = [t for t in stale if _is_controlled_stop(t)]
    assert len(stops) >= 4 and all(_is_controlled_stop(t) for t in stale[6:]), [t.points[:, 3] for t in stale]
    assert probe.wait_count(NODE, "minimal_risk_stop", 4), probe.counts(NODE)
    assert len(node.log_lines_with("]: minimal_risk_stop: stale inputs: objects")) == 1, node.log()

    # Back to fresh objects: it drives again.
    again = _drive(probe, objects, odom, outputs, [2.6 + 0.1 * k for k in range(3)], with_objects=True)
    assert again[-1] is not None and not _is_controlled_stop(again[-1])
    assert node.alive()


def test_silent_kinematic_state_gives_a_stop_from_the_last_one(running):
    node, probe, objects, odom, outputs = running
    _drive(probe, objects, odom, outputs, [5.0, 5.1], with_objects=True)
    n_before = len(outputs)
    assert probe.wait_count(NODE, "stale_input.kinematic_state", 1, 10.0), probe.counts(NODE)  # 0.5 s of silence
    assert probe.spin_until(lambda: len(outputs) > n_before, 10.0)
    stop = rc.trajectory_from_msg(outputs[-1])
    assert rc.time_to_sec(outputs[-1].header.stamp) == pytest.approx(5.1)  # stamped with the input it came from
    assert _is_controlled_stop(stop), stop.points[:, 3]
    assert len(node.log_lines_with("]: stale_input.kinematic_state: ")) == 1
    assert node.alive()


def test_malformed_and_out_of_order_inputs_are_dropped_counted_and_logged_once(running):
    node, probe, objects, odom, outputs = running
    _drive(probe, objects, odom, outputs, [8.0], with_objects=True)
    bad = _ego_at(8.05)
    bad.pose.pose.position.x = float("nan")
    far = _ego_at(8.06)
    far.pose.pose.position.x = 1e12
    nan_objects = Boxes([[110.0, -40.0, 0.0], [np.nan, 0.0, 0.0]], [[4.5, 1.9, 1.6]] * 2, [0.0, 0.0], [1, 1],
                        None, None, [1, 2], "map", 8.05)
    wrong_frame = Boxes(frame_id="base_link", stamp=8.06)
    for _ in range(2):
        odom.publish(bad)
        odom.publish(far)
        odom.publish(_ego_at(8.0))  # duplicate
        odom.publish(_ego_at(7.9))  # older
        objects.publish(rc.tracked_objects_to_msg(nan_objects))
        objects.publish(rc.tracked_objects_to_msg(wrong_frame))
        probe.spin_for(0.05)
    kinds = ["malformed_odometry.nonfinite", "malformed_odometry.out_of_range", "odometry_duplicate_stamp",
             "odometry_out_of_order_stamp", "nonfinite_objects", "malformed_objects.wrong_frame"]
    for kind in kinds:
        assert probe.wait_count(NODE, kind, 1, 10.0), (kind, probe.counts(NODE))
    for kind in kinds:
        assert len(node.log_lines_with(f"]: {kind}: ")) == 1, (kind, node.log())
    # None of them made a trajectory; the next good input does, and it is finite.
    after = _drive(probe, objects, odom, outputs, [8.1, 8.2], with_objects=True)
    assert after[-1] is not None and np.isfinite(after[-1].points).all()
    assert {round(rc.time_to_sec(m.header.stamp), 3) for m in outputs} & {8.05, 8.06, 7.9} == set()
    assert node.alive()
