"""Replay through the ROS 2 graph (lidar_detector, tracker, planner and controller nodes as processes,
over DDS on this machine only) gives the same detections, tracks, trajectories and commands as the
in-process replay."""

import os
import random

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("autoware_perception_msgs.msg", reason="Autoware messages not built for rclpy (scripts/build_msgs.sh)")

from adstack import topics  # noqa: E402
from adstack.bag import BagReader  # noqa: E402
from sim.replay import ReplayOptions, compare_boxes, replay  # noqa: E402
from test_replay import write_drive_bag  # noqa: E402
from test_replay_planning import demo_drive_log, inprocess_replay  # noqa: E402,F401  (fixtures)


@pytest.fixture(autouse=True)
def localhost_dds(monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def test_graph_replay_equals_inprocess_replay(tmp_path):
    bag = write_drive_bag(tmp_path / "bag", seconds=0.4)
    domain = random.Random(os.getpid()).randint(100, 230)
    graph = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "graph"), model="classical", graph="ros2",
                                 domain_id=domain, node_timeout_s=60.0, progress=False))
    inproc = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "inproc"), model="classical", progress=False))
    eq = graph["equivalence"]
    assert eq["frames"] == 4 and eq["same"], eq
    assert graph["frames"]["processed"] == inproc["frames"]["processed"] == 4
    assert graph["latency_ms"]["graph_detections_e2e"]["n"] == 4
    # The graph's recorded outputs equal the in-process ones, frame by frame.
    for topic in (topics.DETECTED_OBJECTS, topics.TRACKED_OBJECTS):
        with BagReader(tmp_path / "graph" / "replay.mcap") as a, BagReader(tmp_path / "inproc" / "replay.mcap") as b:
            ours = [v for _, _, v in a.read_values([topic])]
            theirs = [v for _, _, v in b.read_values([topic])]
        assert len(ours) == len(theirs) == 4
        for x, y in zip(ours, theirs):
            same, diff = compare_boxes(x, y)
            assert same and (x.ids == y.ids).all(), (topic, diff)
    assert {"lidar_detector.log", "tracker.log"} <= {p.name for p in (tmp_path / "graph" / "nodes").iterdir()}


def test_graph_replay_equals_inprocess_for_all_four_stages(demo_drive_log, inprocess_replay, tmp_path):
    """A real drive log (Town01, 6 s) through lidar_detector, tracker, planner and controller as
    processes: the same detections, tracks, trajectories and commands as the in-process stack."""
    from sim.replay import CONTROL_TOLERANCE, compare_commands, compare_trajectories
    inproc_out, inproc = inprocess_replay
    domain = random.Random(os.getpid() + 1).randint(100, 230)
    graph = replay(ReplayOptions(bag=str(demo_drive_log), out=str(tmp_path), model="classical", graph="ros2",
                                 domain_id=domain, node_timeout_s=60.0, progress=False))
    eq = graph["equivalence"]
    assert eq["same"], eq
    assert (eq["frames"], eq["planning_cycles"], eq["commands"]) == (6, 60, 60)
    assert eq["max_trajectory_difference"] <= CONTROL_TOLERANCE and eq["max_command_difference"] <= CONTROL_TOLERANCE
    assert "unexpected_graph_outputs" not in eq
    for stage in ("graph_trajectory_e2e", "graph_command_e2e"):
        assert graph["latency_ms"][stage]["n"] == 60
    assert graph["planning"]["safety_actions"] == inproc["planning"]["safety_actions"]
    # What the graph recorded equals what the in-process replay recorded, message by message.
    with BagReader(tmp_path / "replay.mcap") as a, BagReader(inproc_out / "replay.mcap") as b:
        for topic, same in ((topics.TRAJECTORY, compare_trajectories), (topics.CONTROL_COMMAND, compare_commands)):
            ours = [v for _, _, v in a.read_values([topic])]
            theirs = [v for _, _, v in b.read_values([topic])]
            assert len(ours) == len(theirs) == 60
            assert all(same(x, y)[0] for x, y in zip(ours, theirs)), topic
        for topic in (topics.DETECTED_OBJECTS, topics.TRACKED_OBJECTS):
            ours = [v for _, _, v in a.read_values([topic])]
            theirs = [v for _, _, v in b.read_values([topic])]
            assert len(ours) == len(theirs) == 6
            assert all(compare_boxes(x, y)[0] and (x.ids == y.ids).all() for x, y in zip(ours, theirs)), topic
    assert {"planner.log", "controller.log"} <= {p.name for p in (tmp_path / "nodes").iterdir()}
