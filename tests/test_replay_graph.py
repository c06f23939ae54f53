"""Replay through the ROS 2 graph (lidar_detector and tracker nodes as processes, over DDS on this
machine only) gives the same detections and tracks as the in-process replay."""

import os
import random

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("autoware_perception_msgs.msg", reason="Autoware messages not built for rclpy (scripts/build_msgs.sh)")

from adstack import topics  # noqa: E402
from adstack.bag import BagReader  # noqa: E402
from sim.replay import ReplayOptions, compare_boxes, replay  # noqa: E402
from test_replay import write_drive_bag  # noqa: E402


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
