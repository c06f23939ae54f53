"""Replay through planning and control (sim/replay.py): a real `adstack drive` log of Town01 (route 0
of sim/routes/town01_demo.xml, 6 s) is fed through lidar perception, tracking, the expert behind the
safety layer, and the controller, as the planning and control nodes run them; a bag without a route
skips planning with one clear line."""

import json
import math

import numpy as np
import pytest

from adstack import ros_convert as rc
from adstack import topics
from adstack.bag import BagReader, BagWriter
from adstack.paths import PACKAGE_ROOT
from sim.replay import ReplayOptions, replay
from test_replay import ego_at, scan_at, write_drive_bag

DEMO_ROUTES = PACKAGE_ROOT / "sim" / "routes" / "town01_demo.xml"
DRIVE_SECONDS = 6.0
OBJECTS_TIMEOUT_S = 0.5  # planning/config/planning_node.param.yaml


@pytest.fixture(scope="module")
def demo_drive_log(tmp_path_factory):
    """`adstack drive --map Town01 --routes sim/routes/town01_demo.xml --route-id 0 --seconds 6`:
    odometry and commands at 10 Hz, one lidar sweep a second, ground truth and light states at 2 Hz."""
    from sim.drive import DriveOptions, drive
    out = tmp_path_factory.mktemp("drive")
    drive(DriveOptions(routes=str(DEMO_ROUTES), route_id="0", map_name="Town01", out=str(out),
                       seconds=DRIVE_SECONDS, bev=False, progress=False))
    return out / "log.mcap"


@pytest.fixture(scope="module")
def inprocess_replay(demo_drive_log, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    return out, replay(ReplayOptions(bag=str(demo_drive_log), out=str(out), model="classical", progress=False))


def _log_facts(bag):
    """Per kinematic state in the log: its stamp and whether the newest cloud before it (in log
    order, as the planner gets them) is older than the planner's objects timeout."""
    stamps, stale, last_cloud = [], [], None
    with BagReader(bag) as reader:
        n_lights = reader.topics[topics.TRAFFIC_SIGNALS].count
        for topic, _, msg in reader.messages([topics.KINEMATIC_STATE, topics.LIDAR_POINTS]):
            if topic == topics.LIDAR_POINTS:
                last_cloud = rc.time_to_sec(msg.header.stamp)
            else:
                t = rc.ego_from_odometry(msg).stamp
                stamps.append(t)
                stale.append(last_cloud is None or t - last_cloud > OBJECTS_TIMEOUT_S)
    return np.array(stamps), np.array(stale), n_lights


def test_inprocess_replay_plans_and_controls_on_the_tracks(inprocess_replay, demo_drive_log):
    out, report = inprocess_replay
    stamps, stale, n_lights = _log_facts(demo_drive_log)
    plan = report["planning"]
    # The route comes from the log (town and dense path) and is re-planned to within millimetres.
    assert plan["route"]["source"] == "bag" and plan["route"]["route_id"] == "0" and plan["route"]["map"] == "Town01"
    assert plan["route"]["max_deviation_m"] < 0.05 and (out / "route.xml").is_file()
    # 10 Hz kinematic states, planner at 10 Hz: a cycle and a command for each.
    assert len(stamps) == round(DRIVE_SECONDS * 10)
    assert plan["cycles"] == plan["commands"] == len(stamps)
    # Clouds come once a second: each cycle more than objects_timeout_s after the last one is the
    # safety layer's controlled stop; every other cycle is the expert's plan on the tracks.
    actions = plan["safety_actions"]
    assert actions.get("minimal_risk_stop", 0) == int(stale.sum()) > 0
    assert sum(v for k, v in actions.items() if k != "minimal_risk_stop") == int((~stale).sum()) > 0
    # Light states reach the expert with their stop lines: the table built from the map's SUMO net
    # knows every signal the drive reported.
    lights = plan["traffic_lights"]
    assert lights["messages"] == n_lights > 0 and lights["table_signals"] > 0
    assert lights["states"] == n_lights * lights["table_signals"] and lights["states_not_in_table"] == 0
    assert plan["problems"] == {} and plan["controller_status"] == {"ok": len(stamps)}
    for stage in ("detect", "track", "plan", "control"):
        lat = report["latency_ms"][stage]
        assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert report["latency_ms"]["plan"]["n"] == report["latency_ms"]["control"]["n"] == len(stamps)

    with BagReader(out / "replay.mcap") as reader:
        assert reader.topics[topics.TRAJECTORY].type == "autoware_planning_msgs/msg/Trajectory"
        assert reader.topics[topics.CONTROL_COMMAND].type == "autoware_control_msgs/msg/Control"
        assert reader.topics[topics.TRAFFIC_SIGNALS].count == n_lights
        trajectories = [v for _, _, v in reader.read_values([topics.TRAJECTORY])]
        commands = [v for _, _, v in reader.read_values([topics.CONTROL_COMMAND])]
        route = json.loads(next(reader.messages([topics.ROUTE]))[2].data)
    route_xy = np.asarray(route["path"])
    # Each output is stamped with the kinematic state it answers, and lies on the route.
    np.testing.assert_allclose([tr.stamp for tr in trajectories], stamps, atol=1e-6)
    np.testing.assert_allclose([c.stamp for c in commands], stamps, atol=1e-6)
    for tr in trajectories:
        assert len(tr) >= 2 and np.isfinite(tr.points).all()
        gap = np.hypot(*(tr.points[:, None, :2] - route_xy[None]).transpose(2, 0, 1)).min(axis=1)
        assert gap.max() < 2.0
    steer = np.array([c.steer for c in commands])
    accel = np.array([c.accel for c in commands])
    assert np.isfinite(steer).all() and np.isfinite(accel).all()
    assert np.abs(steer).max() <= 0.6 + 1e-6 and accel.min() >= -8.0 - 1e-6 and accel.max() <= 3.0 + 1e-6
    # The expert drives off where the tracks are fresh: some plan asks for speed.
    assert max(float(tr.points[:, 3].max()) for tr in trajectories) > 1.0


def test_route_options_give_the_route_the_bag_carries(demo_drive_log, inprocess_replay, tmp_path, capsys):
    """--routes/--route-id (the file the drive used) against the route re-planned from the log: the
    same plans and commands, up to the float32 step of the command message."""
    from adstack.cli import main
    out_bag, _ = inprocess_replay
    code = main(["replay", str(demo_drive_log), "--out", str(tmp_path), "--model", "classical", "--quiet",
                 "--routes", str(DEMO_ROUTES), "--route-id", "0", "--map", "Town01"])
    assert code == 0
    text = capsys.readouterr().out
    assert f"from {DEMO_ROUTES.resolve()}" in text and "60 trajectories" in text
    report = json.loads((tmp_path / "replay.json").read_text())
    assert report["planning"]["route"]["source"] == "--routes"
    with BagReader(out_bag / "replay.mcap") as a, BagReader(tmp_path / "replay.mcap") as b:
        ours = np.array([[c.steer, c.accel] for _, _, c in a.read_values([topics.CONTROL_COMMAND])])
        theirs = np.array([[c.steer, c.accel] for _, _, c in b.read_values([topics.CONTROL_COMMAND])])
    assert ours.shape == theirs.shape == (60, 2)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert main(["replay", str(demo_drive_log), "--out", str(tmp_path / "x"), "--routes", str(DEMO_ROUTES)]) == 2
    assert "--routes and --route-id go together" in capsys.readouterr().err


def _bag_without_route(path):
    with BagWriter(path) as bag:
        for k in range(6):
            t = 0.05 * (k + 1)
            bag.write_odometry(topics.KINEMATIC_STATE, ego_at(t), t)
            if k % 2 == 1:
                bag.write_pointcloud(topics.LIDAR_POINTS, scan_at(t), t)
    return path


@pytest.mark.parametrize("kind, message", [
    ("none", "planning and control: skipped: no route known (the bag has no route on "
             f"{topics.ROUTE}; give --routes FILE --route-id ID"),
    ("no_town", f"planning and control: skipped: the route on {topics.ROUTE} names no town; give --map MAP"),
])
def test_bag_without_a_known_route_skips_planning_with_one_line(kind, message, tmp_path, capsys):
    from adstack.cli import main
    bag = _bag_without_route(tmp_path / "bag") if kind == "none" else write_drive_bag(tmp_path / "bag", seconds=0.3)
    code = main(["replay", str(bag), "--out", str(tmp_path / "out"), "--model", "classical", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    lines = [line for line in captured.out.splitlines() if "skipped" in line]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    report = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert report["planning"]["skipped"] and report["frames"]["processed"] == 3
    assert "plan" not in report["latency_ms"]
    with BagReader(tmp_path / "out" / "replay.mcap") as reader:
        assert topics.TRAJECTORY not in reader.topics and topics.CONTROL_COMMAND not in reader.topics
        assert reader.topics[topics.TRACKED_OBJECTS].count == 3
    assert not math.isnan(report["latency_ms"]["detect"]["p50"])
