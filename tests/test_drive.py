"""Closed-loop drive: result.json, log.mcap and bev.png from a real run; failures are results too."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adstack.paths import shared_data_dir

LB1_ROUTES = shared_data_dir() / "routes" / "leaderboard1_routes_training.xml"


def write_route_file(path: Path, town: str, waypoints_ros, route_id="7"):
    """A Leaderboard 1.0 route file; waypoints given in our right-handed frame, written in CARLA's."""
    rows = "\n".join(f'      <waypoint pitch="0.0" roll="0.0" x="{x:.3f}" y="{-y:.3f}" yaw="0.0" z="0.0"/>'
                     for x, y in waypoints_ros)
    path.write_text(f'<?xml version="1.0"?>\n<routes>\n   <route id="{route_id}" town="{town}">\n{rows}\n   </route>\n</routes>\n')
    return path


def grid_route(tmp_path):
    from hdmap import load_map
    hdmap = load_map("grid_town")
    lane = hdmap.lanes[(16, 0, -1)]  # a straight 60 m lane on the generated grid
    start, end = lane.centerline[2], lane.centerline[-3]
    return write_route_file(tmp_path / "routes.xml", "grid_town", [start, end])


def run_drive(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "adstack.cli", "drive", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_drive_writes_result_log_and_picture(tmp_path):
    routes = grid_route(tmp_path)
    out = tmp_path / "out"
    proc = run_drive("--routes", routes, "--route-id", "7", "--out", out, "--seconds", "25",
                     "--vehicles", "5", "--pedestrians", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    for key in ("driving_score", "route_completion", "infraction_penalty", "infractions", "distance_driven_m",
                "simulated_s", "wall_s", "realtime_factor", "status"):
        assert key in result, key
    assert result["route_completion"] > 50  # the expert drives a clear straight lane
    assert result["driving_score"] == pytest.approx(result["route_completion"] * result["infraction_penalty"])
    assert result["distance_driven_m"] > 20
    assert (out / "bev.png").stat().st_size > 10_000

    from adstack.bag import BagReader
    with BagReader(out / "log.mcap") as bag:
        topics = bag.topics
    for topic in ("/localization/kinematic_state", "/sensing/lidar/points", "/planning/trajectory",
                  "/simulation/ground_truth/objects", "/control/command/control_cmd",
                  "/perception/traffic_light_recognition/traffic_signals"):
        assert topic in topics and topics[topic].count > 0, topic
    assert topics["/localization/kinematic_state"].type == "nav_msgs/msg/Odometry"
    assert topics["/sensing/lidar/points"].type == "sensor_msgs/msg/PointCloud2"
    # mcap-ros2-support reads the same file.
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    with open(out / "log.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        odom = [m for _, _, _, m in reader.iter_decoded_messages(topics=["/localization/kinematic_state"])]
    assert len(odom) == topics["/localization/kinematic_state"].count


def test_unknown_route_id_is_a_clear_error_with_a_result(tmp_path):
    out = tmp_path / "out"
    proc = run_drive("--routes", LB1_ROUTES, "--route-id", "no-such-route", "--out", out)
    assert proc.returncode == 2
    assert "no-such-route" in proc.stderr and "Traceback" not in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["driving_score"] == 0 and result["status"].startswith("Failed")


def test_route_off_the_map_is_a_clear_error_with_a_result(tmp_path):
    routes = write_route_file(tmp_path / "off.xml", "grid_town", [(5000.0, 5000.0), (5100.0, 5000.0)])
    out = tmp_path / "out"
    proc = run_drive("--routes", routes, "--route-id", "7", "--out", out)
    assert proc.returncode == 2, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr and "off.xml" in proc.stderr
    assert json.loads((out / "result.json").read_text())["status"].startswith("Failed")


def test_a_planner_that_raises_is_recorded_as_an_agent_crash(tmp_path, monkeypatch):
    import sim.drive as drive_mod

    class Exploding:
        def __init__(self, *a, **k):
            self.calls = 0

        def step(self, *a, **k):
            self.calls += 1
            if self.calls > 20:
                raise RuntimeError("boom")
            from planning.expert import Expert  # noqa: F401 (the real planner is not needed here)
            return None

    monkeypatch.setattr(drive_mod, "make_planner", lambda name, hdmap, route: Exploding())
    routes = grid_route(tmp_path)
    opts = drive_mod.DriveOptions(routes=str(routes), route_id="7", out=str(tmp_path / "out"), seconds=10,
                                  vehicles=0, pedestrians=0, lidar=False, progress=False)
    result, code, scored = drive_mod.drive(opts)
    assert code == 1
    assert result["status"] == "Failed - Agent crashed" and "boom" in result["failure_message"]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "Failed - Agent crashed"
