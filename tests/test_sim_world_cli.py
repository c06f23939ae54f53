"""``adstack sim``: a short run writes a rosbag2 MCAP that rosbags and mcap-ros2-support read back."""

import json

import pytest

from adstack import cli
from adstack.paths import shared_data_dir

CARLA_MAPS = str(shared_data_dir() / "maps" / "carla")


def sim(out, *extra, seconds="3"):
    return cli.main(["sim", "--map", "Town01", "--map-dir", CARLA_MAPS, "--seconds", seconds, "--seed", "0",
                     "--vehicles", "30", "--pedestrians", "30", "--out", str(out), *extra])


def payloads(bag_dir):
    from mcap.reader import make_reader
    (path,) = bag_dir.glob("*.mcap")
    with open(path, "rb") as f:
        return [(channel.topic, message.log_time, message.data)
                for _, channel, message in make_reader(f).iter_messages(log_time_order=True)]


def test_short_run_writes_a_readable_bag_with_the_right_counts(tmp_path, capsys):
    from rosbags.highlevel import AnyReader
    out = tmp_path / "run"
    assert sim(out) == 0
    summary_line = capsys.readouterr().out
    assert "Simulated 3.0 s of Town01" in summary_line and "30 lidar frames" in summary_line
    counts, types = {}, {}
    with AnyReader([out / "bag"]) as reader:
        for conn in reader.connections:
            counts[conn.topic] = counts.get(conn.topic, 0) + conn.msgcount
            types[conn.topic] = conn.msgtype
        points_conn = next(c for c in reader.connections if c.topic == "/sensing/lidar/points")
        _, _, raw = next(reader.messages(connections=[points_conn]))
        cloud = reader.deserialize(raw, points_conn.msgtype)
        lights_conn = next(c for c in reader.connections if "traffic_signals" in c.topic)
        _, _, raw = next(reader.messages(connections=[lights_conn]))
        light_groups = reader.deserialize(raw, lights_conn.msgtype).traffic_light_groups
    assert counts["/sensing/lidar/points"] == 30  # 10 Hz
    assert counts["/localization/kinematic_state"] == 60  # every 0.05 s tick
    assert counts["/control/command/control_cmd"] == 60
    assert counts["/simulation/ground_truth/objects"] == 30
    assert counts["/simulation/ground_truth/objects/debug/markers"] == 30
    assert counts["/perception/traffic_light_recognition/traffic_signals"] == 30
    assert types["/sensing/lidar/points"] == "sensor_msgs/msg/PointCloud2"
    assert types["/localization/kinematic_state"] == "nav_msgs/msg/Odometry"
    assert types["/simulation/ground_truth/objects/debug/markers"] == "visualization_msgs/msg/MarkerArray"
    assert [f.name for f in cloud.fields][:4] == ["x", "y", "z", "intensity"] and cloud.width > 10000

    # Light group ids are the OpenDRIVE signal ids of the map (as Autoware's ids name map elements).
    from hdmap.map import load_map
    assert {int(g.traffic_light_group_id) for g in light_groups} == \
        {int(s.id) for s in load_map("Town01", map_dirs=[CARLA_MAPS]).traffic_lights}

    # mcap-ros2-support decodes the same file without rosbags.
    from mcap_ros2.reader import read_ros2_messages
    (mcap_path,) = (out / "bag").glob("*.mcap")
    odometry = [m.ros_msg for m in read_ros2_messages(str(mcap_path), topics=["/localization/kinematic_state"])]
    assert len(odometry) == 60 and odometry[-1].child_frame_id == "base_link"

    lines = (out / "ground_truth.jsonl").read_text().splitlines()
    assert len(lines) == 30
    frame = json.loads(lines[-1])
    assert frame["t"] == pytest.approx(3.0) and len(frame["actors"]) >= 50
    assert json.loads((out / "summary.json").read_text())["lidar_frames"] == 30


def test_same_seed_gives_identical_message_payloads(tmp_path):
    assert sim(tmp_path / "a", seconds="1") == 0
    assert sim(tmp_path / "b", seconds="1") == 0
    a, b = payloads(tmp_path / "a" / "bag"), payloads(tmp_path / "b" / "bag")
    assert len(a) == len(b) > 50
    assert a == b


def test_same_seed_same_bytes_across_processes_and_hash_seeds(tmp_path):
    import os
    import subprocess
    import sys
    for name, hash_seed in (("p1", "1"), ("p2", "2")):
        proc = subprocess.run([sys.executable, "-m", "adstack.cli", "sim", "--map", "Town01", "--map-dir", CARLA_MAPS,
                               "--seconds", "1", "--seed", "3", "--vehicles", "30", "--pedestrians", "30", "--no-lidar",
                               "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert proc.returncode == 0, proc.stderr
    assert payloads(tmp_path / "p1" / "bag") == payloads(tmp_path / "p2" / "bag")
    assert (tmp_path / "p1" / "ground_truth.jsonl").read_bytes() == (tmp_path / "p2" / "ground_truth.jsonl").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--map", "NoSuchTown"], "unknown map"),
    (["--map", "{bad}"], "not valid OpenDRIVE XML"),
    (["--map", "Town01", "--seconds", "-1"], "--seconds"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.xodr"
    bad.write_text("<OpenDRIVE><road")
    args = [str(bad) if a == "{bad}" else a for a in args]
    rc = cli.main(["sim", "--map-dir", CARLA_MAPS, "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_existing_output_is_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert sim(out, seconds="0.1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
