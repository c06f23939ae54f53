"""Replay (sim/replay.py): a synthetic drive whose answer is known, written as a rosbag2 log, fed
through the stack; missing topics on a real third-party bag; remapping; timing; pose and ground-truth
selection in time."""

import json
import math
import time

import numpy as np
import pytest

from adstack import topics
from adstack.bag import BagReader, BagWriter
from adstack.paths import shared_data_dir
from adstack.types import Boxes, EgoState, ObjectClass, PointCloud
from sim.replay import (GroundTruth, MissingTopics, PoseBuffer, ReplayOptions, format_report, parse_topic_map, replay,
                        resolve_topics)

RNG = np.random.default_rng(3)
MOUNT_Z_M = 1.8  # perception/config/lidar_node.param.yaml
EGO_SPEED_MPS = 5.0
CAR = dict(id=11, x=22.0, y=-4.0, length=4.6, width=1.9, height=1.5, yaw=0.3, label=ObjectClass.VEHICLE)
PERSON = dict(id=12, x=14.0, y=5.0, length=0.5, width=0.5, height=1.75, yaw=0.0, label=ObjectClass.PEDESTRIAN)
PERSON_VY_MPS = -1.0


def ego_at(t):
    return EgoState(x=EGO_SPEED_MPS * t, y=0.0, yaw=0.0, v=EGO_SPEED_MPS, stamp=t)


def actors_at(t):
    person = dict(PERSON, y=PERSON["y"] + PERSON_VY_MPS * t)
    return [CAR, person]


def box_surface(a, spacing=0.1):
    """Points on the four vertical faces of a box standing on the ground (z = 0), map frame."""
    u_long = np.arange(-a["length"] / 2, a["length"] / 2 + 1e-9, spacing)
    u_wide = np.arange(-a["width"] / 2, a["width"] / 2 + 1e-9, spacing)
    uv = np.concatenate([np.c_[u_long, np.full_like(u_long, -a["width"] / 2)], np.c_[u_long, np.full_like(u_long, a["width"] / 2)],
                         np.c_[np.full_like(u_wide, -a["length"] / 2), u_wide], np.c_[np.full_like(u_wide, a["length"] / 2), u_wide]])
    zs = np.arange(0.1, a["height"] + 1e-9, spacing)
    uv = np.repeat(uv, len(zs), axis=0)
    z = np.tile(zs, len(uv) // len(zs))
    c, s = math.cos(a["yaw"]), math.sin(a["yaw"])
    return np.c_[a["x"] + uv[:, 0] * c - uv[:, 1] * s, a["y"] + uv[:, 0] * s + uv[:, 1] * c, z]


def scan_at(t) -> PointCloud:
    """A labelled cloud in the lidar frame: flat ground around the ego plus the two actors."""
    ego = ego_at(t)
    g = np.arange(-30.0, 30.0, 0.3)
    gx, gy = [a.ravel() for a in np.meshgrid(g, g)]
    keep = np.hypot(gx, gy) > 3.0
    ground = np.c_[gx[keep] + ego.x, gy[keep], RNG.normal(0, 0.02, keep.sum())]
    parts, ids = [ground], [np.full(len(ground), -1)]
    for a in actors_at(t):
        pts = box_surface(a)
        parts.append(pts)
        ids.append(np.full(len(pts), a["id"]))
    xyz = np.vstack(parts)
    xyz[:, 0] -= ego.x                 # map -> lidar (ego yaw 0, lidar 1.8 m above the ground)
    xyz[:, 2] -= MOUNT_Z_M
    actor_ids = np.concatenate(ids).astype(np.int32)
    labels = np.zeros(len(xyz), np.int32)
    return PointCloud(np.c_[xyz, np.ones(len(xyz))], "lidar", t, labels=labels, actor_ids=actor_ids)


def truth_at(t) -> Boxes:
    acts = actors_at(t)
    return Boxes([[a["x"], a["y"], a["height"] / 2] for a in acts], [[a["length"], a["width"], a["height"]] for a in acts],
                 [a["yaw"] for a in acts], [a["label"] for a in acts], ids=[a["id"] for a in acts], stamp=t)


def write_drive_bag(path, seconds=1.0, lidar_topic=topics.LIDAR_POINTS, odom_topic=topics.KINEMATIC_STATE,
                    storage="mcap", truth=True):
    """A log shaped like `adstack drive`'s: odometry 20 Hz, clouds 10 Hz, ground truth 2 Hz, route."""
    with BagWriter(path, storage=storage) as bag:
        bag.write_json(topics.ROUTE, {"path": [[0.0, 0.0], [100.0, 0.0]]}, 0.0)
        for k in range(int(round(seconds * 20))):
            t = 0.05 * (k + 1)
            bag.write_odometry(odom_topic, ego_at(t), t)
            if k % 2 == 1:
                bag.write_pointcloud(lidar_topic, scan_at(t), t)
            if truth and k % 10 == 9:
                bag.write_objects(topics.GROUND_TRUTH_OBJECTS, truth_at(t), t, tracked=True)
    return path


@pytest.fixture(scope="module")
def drive_bag(tmp_path_factory):
    return write_drive_bag(tmp_path_factory.mktemp("bag") / "log")


@pytest.fixture(scope="module")
def replayed(drive_bag, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    report = replay(ReplayOptions(bag=str(drive_bag), out=str(out), model="classical", progress=False))
    return out, report


def test_replay_detects_the_known_objects_and_scores_them(replayed):
    out, report = replayed
    assert report["frames"] == {"clouds": 10, "processed": 10, "dropped": {}, "nonfinite_points_dropped": 0}
    assert report["topics"]["gt"] == topics.GROUND_TRUTH_OBJECTS
    det = report["metrics"]["detection"]["classes"]
    # Ground truth exists at 0.5 s and 1.0 s; clouds at 0.1 .. 1.0 s: interpolation covers 0.5 .. 1.0 s (6 frames).
    assert report["metrics"]["frames"] == 6
    assert det["VEHICLE"]["n_gt"] == 6 and det["PEDESTRIAN"]["n_gt"] == 6
    assert det["VEHICLE"]["recall_at_tp_threshold"] == 1.0
    assert det["VEHICLE"]["ap"]["2.0"] > 0.9
    assert det["PEDESTRIAN"]["recall_at_tp_threshold"] == 1.0
    assert "boxes hit by >= 1 lidar point" in report["metrics"]["ground_truth_filter"]
    # The tracker confirms tracks after two hits and keeps ids: a 10 Hz replay is tracked.
    assert report["metrics"]["tracking"]["classes"]["VEHICLE"]["recall_at_tp_threshold"] > 0.8
    for stage in ("decode", "detect", "track"):
        lat = report["latency_ms"][stage]
        assert lat["n"] == 10 and 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert json.loads((out / "replay.json").read_text())["frames"]["processed"] == 10
    text = format_report(report)
    assert "AP@2m" in text and "vehicle" in text and "p99" in text


def test_replay_log_holds_every_output_in_map_frame(replayed):
    out, _ = replayed
    assert (out / "replay.mcap").is_file()  # one file that Foxglove opens directly
    with BagReader(out / "replay.mcap") as reader:
        t = reader.topics
        for topic in (topics.LIDAR_POINTS, topics.KINEMATIC_STATE, topics.DETECTED_OBJECTS, topics.TRACKED_OBJECTS,
                      topics.DETECTED_OBJECTS + "/debug/markers", topics.TRACKED_OBJECTS + "/debug/markers",
                      topics.GROUND_TRUTH_OBJECTS, topics.ROUTE, "/tf"):
            assert topic in t, topic
        assert t[topics.DETECTED_OBJECTS].count == 10 and t[topics.KINEMATIC_STATE].count == 20
        assert t[topics.TRACKED_OBJECTS].type == "autoware_perception_msgs/msg/TrackedObjects"
        dets = [v for _, _, v in reader.read_values([topics.DETECTED_OBJECTS])]
        tracks = [v for _, _, v in reader.read_values([topics.TRACKED_OBJECTS])]
    last = dets[-1]
    truth = truth_at(1.0)
    car = last.select(last.label == ObjectClass.VEHICLE)
    assert len(car) == 1 and np.hypot(*(car.center[0, :2] - truth.center[0, :2])) < 0.5  # map frame, not lidar frame
    assert last.stamp == pytest.approx(1.0)
    assert (tracks[-1].ids > 0).all() and len(tracks[-1]) >= 2


def test_replay_matches_calling_the_pipeline_directly(replayed, drive_bag):
    """The replay's detections are the detector's on the same cloud and the nearest pose: nothing added."""
    from perception.pipeline import LidarPerception, make_detector
    out, _ = replayed
    perception = LidarPerception(make_detector("classical"), (0.0, 0.0, MOUNT_Z_M, 0.0), track=False)
    with BagReader(drive_bag) as src, BagReader(out / "replay.mcap") as dst:
        cloud = [v for _, _, v in src.read_values([topics.LIDAR_POINTS])][4]
        recorded = [v for _, _, v in dst.read_values([topics.DETECTED_OBJECTS])][4]
    direct = perception.detect(cloud, ego_at(cloud.stamp))
    assert len(direct) == len(recorded)
    np.testing.assert_allclose(recorded.center, direct.center, atol=1e-9)
    np.testing.assert_array_equal(recorded.label, direct.label)


def test_bag_without_lidar_lists_topics_and_exits_2(capsys, tmp_path):
    from adstack.cli import main
    bag = shared_data_dir() / "bags" / "nav2_turtlebot.mcap"
    if not bag.is_file():
        pytest.skip("shared nav2 bag not present")
    code = main(["replay", str(bag), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "/odom" in err and "nav_msgs/msg/Odometry" in err and "2639" in err  # the listing
    assert "no sensor_msgs/msg/PointCloud2 topic" in err and "--topic-map lidar=" in err
    assert not (tmp_path / "out" / "replay.mcap").exists()


def test_topic_map_sqlite3_and_recorded_timing(tmp_path):
    bag = write_drive_bag(tmp_path / "bag", seconds=0.5, lidar_topic="/velodyne/points", odom_topic="/odom",
                          storage="sqlite3", truth=False)
    # Two clouds topics would be ambiguous; here odom is the only Odometry topic and is found by type.
    with BagReader(bag) as reader:
        roles = resolve_topics(reader.topics, parse_topic_map(["lidar=/velodyne/points"]), bag)
        assert roles["odom"] == "/odom" and roles["gt"] is None
        with pytest.raises(MissingTopics, match="no such topic"):
            resolve_topics(reader.topics, parse_topic_map(["lidar=/nope"]), bag)
        with pytest.raises(MissingTopics, match="has type nav_msgs/msg/Odometry"):
            resolve_topics(reader.topics, parse_topic_map(["lidar=/odom"]), bag)
    wall0 = time.perf_counter()
    report = replay(ReplayOptions(bag=str(bag), out=str(tmp_path / "out"), model="classical", rate=2.0,
                                  topic_map={"lidar": "/velodyne/points"}, progress=False))
    # 0.45 s of log at twice the recorded speed cannot take less than 0.225 s.
    assert time.perf_counter() - wall0 >= 0.45 / 2.0
    assert report["frames"]["processed"] == 5
    assert report["metrics"] is None and "no ground-truth" in report["metrics_note"]
    with pytest.raises(Exception, match="ROLE=TOPIC"):
        parse_topic_map(["lidar"])


def test_clouds_without_a_near_pose_are_dropped_and_counted(tmp_path):
    with BagWriter(tmp_path / "bag") as bag:
        bag.write_odometry(topics.KINEMATIC_STATE, ego_at(0.0), 0.0)
        bag.write_pointcloud(topics.LIDAR_POINTS, scan_at(0.1), 0.1)   # pose 0.1 s away: accepted (limit 0.2 s)
        bag.write_pointcloud(topics.LIDAR_POINTS, scan_at(0.5), 0.5)   # 0.5 s away: dropped
        bag.write_pointcloud(topics.LIDAR_POINTS, scan_at(0.05), 0.6)  # stamped before the previous cloud: dropped
    # --viz on a free port: the live view is fed alongside (its content is tested in test_viz.py).
    report = replay(ReplayOptions(bag=str(tmp_path / "bag"), out=str(tmp_path / "out"), model="classical",
                                  viz=True, viz_port=0, progress=False))
    assert report["frames"]["processed"] == 1
    assert report["frames"]["dropped"] == {"no_pose": 1, "out_of_order_stamp": 1}


def test_pose_buffer_takes_the_nearest_sample_like_the_lidar_node():
    poses = PoseBuffer([ego_at(t) for t in (0.3, 0.0, 0.1, 0.2)])
    assert poses.nearest(0.14, 0.2).stamp == pytest.approx(0.1)
    assert poses.nearest(0.15, 0.2).stamp == pytest.approx(0.1)  # a tie goes to the earlier sample, as min() does
    assert poses.nearest(0.6, 0.2) is None
    assert [p.stamp for p in poses.up_to(0.2)] == pytest.approx([0.0, 0.1, 0.2])


def test_ground_truth_is_interpolated_per_object_id():
    a = Boxes([[0, 0, 0], [10, 0, 0]], [[4, 2, 1.5]] * 2, [0.0, 3.1], [1, 2], ids=[1, 2], stamp=1.0)
    b = Boxes([[2, 0, 0], [5, 5, 0]], [[4, 2, 1.5]] * 2, [0.2, -3.1], [1, 1], ids=[1, 3], stamp=1.5)
    gt = GroundTruth([b, a])
    mid = gt.at(1.1)   # nearer to a: object 2 (only in a) comes from a; object 3 (only in b) does not
    assert sorted(mid.ids.tolist()) == [1, 2]
    one = mid.select(mid.ids == 1)
    assert one.center[0, 0] == pytest.approx(0.4) and one.yaw[0] == pytest.approx(0.04)
    late = gt.at(1.4)
    assert sorted(late.ids.tolist()) == [1, 3]
    assert gt.at(1.02) is a          # within 50 ms: the frame itself
    assert gt.at(0.5) is None and gt.at(2.0) is None   # no extrapolation
    wrap = GroundTruth([Boxes([[0, 0, 0]], [[1, 1, 1]], [3.1], [1], ids=[7], stamp=0.0),
                        Boxes([[0, 0, 0]], [[1, 1, 1]], [-3.1], [1], ids=[7], stamp=1.0)]).at(0.5)
    assert abs(abs(math.atan2(math.sin(wrap.yaw[0]), math.cos(wrap.yaw[0]))) - math.pi) < 1e-6  # through pi, not 0
