"""rosbag2 MCAP/sqlite3 logs: round trips, determinism, third-party readability, a real bag."""

from pathlib import Path

import numpy as np
import pytest

from adstack.bag import BagReader, BagWriter, TopicInfo
from adstack.errors import DataError, UserError
from adstack.paths import shared_data_dir
from adstack.types import Boxes, Command, EgoState, LightState, PointCloud, TrafficLight, Trajectory

TOPICS = {
    "cloud": "/sensing/lidar/points",
    "odom": "/localization/kinematic_state",
    "det": "/perception/object_recognition/detection/objects",
    "trk": "/perception/object_recognition/tracking/objects",
    "traj": "/planning/trajectory",
    "cmd": "/control/command/control_cmd",
    "tl": "/perception/traffic_light_recognition/traffic_signals",
    "json": "/adstack/events",
}


def _frame(k: int):
    rng = np.random.default_rng(k)
    t = 0.1 * k
    labels = rng.integers(0, 4, 500).astype(np.int32)
    cloud = PointCloud(rng.normal(size=(500, 4)).astype(np.float32), "lidar", t, labels, rng.integers(-1, 9, 500))
    ego = EgoState(x=10.0 + k, y=-3.0, yaw=0.7, v=8.5, z=0.2, yaw_rate=0.05, stamp=t)
    det = Boxes(rng.normal(size=(4, 3)), rng.uniform(1, 5, (4, 3)), rng.uniform(-3, 3, 4), [1, 2, 3, 0],
                rng.uniform(0, 1, 4), rng.normal(size=(4, 2)), frame_id="map", stamp=t)
    trk = Boxes(det.center, det.size, det.yaw, det.label, det.score, det.velocity, [7, 8, 9, 123456789012], "map", t)
    traj = Trajectory(np.column_stack([np.arange(10.0), np.zeros(10), np.full(10, 0.1), np.full(10, 5.0),
                                       np.arange(10) * 0.5]), "map", t)
    cmd = Command(steer=0.12, accel=-1.5, stamp=t)
    lights = [TrafficLight("42", LightState.RED, np.zeros(2)), TrafficLight("7", LightState.GREEN, np.zeros(2)),
              TrafficLight("9", LightState.YELLOW, np.zeros(2))]
    return t, cloud, ego, det, trk, traj, cmd, lights


def _write(path: Path, storage: str = "mcap", n: int = 3):
    with BagWriter(path, storage=storage) as bag:
        for k in range(n):
            t, cloud, ego, det, trk, traj, cmd, lights = _frame(k)
            bag.write_pointcloud(TOPICS["cloud"], cloud)
            bag.write_odometry(TOPICS["odom"], ego)
            bag.write_objects(TOPICS["det"], det)
            bag.write_objects(TOPICS["trk"], trk)
            bag.write_trajectory(TOPICS["traj"], traj)
            bag.write_command(TOPICS["cmd"], cmd)
            bag.write_traffic_lights(TOPICS["tl"], lights, t)
            bag.write_json(TOPICS["json"], {"frame": k, "score": np.float32(0.5)}, t)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_every_type(tmp_path, storage):
    _write(tmp_path / "bag", storage)
    reader = BagReader(tmp_path / "bag")
    assert reader.topics[TOPICS["cloud"]].type == "sensor_msgs/msg/PointCloud2"
    assert reader.topics[TOPICS["det"]].type == "autoware_perception_msgs/msg/DetectedObjects"
    assert reader.topics[TOPICS["trk"]].type == "autoware_perception_msgs/msg/TrackedObjects"
    assert reader.topics[TOPICS["traj"]].type == "autoware_planning_msgs/msg/Trajectory"
    assert reader.topics[TOPICS["cmd"]].type == "autoware_control_msgs/msg/Control"
    assert reader.topics[TOPICS["tl"]].type == "autoware_perception_msgs/msg/TrafficLightGroupArray"
    assert reader.topics[TOPICS["det"] + "/debug/markers"].type == "visualization_msgs/msg/MarkerArray"
    assert all(info.count == 3 for info in reader.topics.values())

    got = {}
    for topic, t_ns, value in reader.read_values():
        got.setdefault(topic, []).append((t_ns, value))
    for k in range(3):
        t, cloud, ego, det, trk, traj, cmd, lights = _frame(k)
        t_ns, c = got[TOPICS["cloud"]][k]
        assert t_ns == round(t * 1e9)
        np.testing.assert_array_equal(c.points, cloud.points)
        np.testing.assert_array_equal(c.labels, cloud.labels)
        np.testing.assert_array_equal(c.actor_ids, cloud.actor_ids)
        assert (c.frame_id, c.stamp) == ("lidar", pytest.approx(t))
        e = got[TOPICS["odom"]][k][1]
        assert (e.x, e.y, e.z, e.v, e.yaw_rate) == pytest.approx((ego.x, ego.y, ego.z, ego.v, ego.yaw_rate))
        assert e.yaw == pytest.approx(ego.yaw)
        for key, ref in (("det", det), ("trk", trk)):
            b = got[TOPICS[key]][k][1]
            np.testing.assert_allclose(b.center, ref.center)
            np.testing.assert_allclose(b.size, ref.size, rtol=1e-6)
            np.testing.assert_allclose(np.angle(np.exp(1j * (b.yaw - ref.yaw))), 0, atol=1e-9)
            np.testing.assert_allclose(b.velocity, ref.velocity, atol=1e-9)
            np.testing.assert_allclose(b.score, ref.score, rtol=1e-6)
            np.testing.assert_array_equal(b.label, ref.label)
        np.testing.assert_array_equal(got[TOPICS["det"]][k][1].ids, -1)
        np.testing.assert_array_equal(got[TOPICS["trk"]][k][1].ids, trk.ids)
        np.testing.assert_allclose(got[TOPICS["traj"]][k][1].points, traj.points, atol=1e-6)
        cm = got[TOPICS["cmd"]][k][1]
        assert (cm.steer, cm.accel, cm.stamp) == pytest.approx((cmd.steer, cmd.accel, cmd.stamp), rel=1e-6)
        assert [(x.id, x.state) for x in got[TOPICS["tl"]][k][1]] == [(x.id, x.state) for x in lights]
        assert got[TOPICS["json"]][k][1] == {"frame": k, "score": 0.5}


def test_same_inputs_same_bytes(tmp_path):
    _write(tmp_path / "a" / "bag")
    _write(tmp_path / "b" / "bag")
    for name in ("bag.mcap", "metadata.yaml"):
        assert (tmp_path / "a" / "bag" / name).read_bytes() == (tmp_path / "b" / "bag" / name).read_bytes()


def test_readable_by_mcap_ros2_support(tmp_path):
    from mcap_ros2.reader import read_ros2_messages

    _write(tmp_path / "bag", n=1)
    _, cloud, _, _, trk, traj, cmd, lights = _frame(0)
    seen = {}
    for m in read_ros2_messages(str(tmp_path / "bag" / "bag.mcap")):
        seen[m.channel.topic] = m.ros_msg
    assert len(seen) == 11  # 8 topics + MarkerArrays beside both objects and the trajectory
    pc = seen[TOPICS["cloud"]]
    assert [f.name for f in pc.fields] == ["x", "y", "z", "intensity", "label", "actor_id"]
    structured = np.frombuffer(bytes(pc.data), dtype=[("xyzi", "<f4", 4), ("label", "<i4"), ("actor", "<i4")])
    np.testing.assert_array_equal(structured["xyzi"], cloud.points)
    objs = seen[TOPICS["trk"]].objects
    assert [o.shape.dimensions.x for o in objs] == pytest.approx(list(trk.size[:, 0]))
    assert int.from_bytes(bytes(objs[3].object_id.uuid)[:8], "little") == 123456789012
    assert seen[TOPICS["traj"]].points[3].pose.position.x == 3.0
    assert seen[TOPICS["cmd"]].lateral.steering_tire_angle == pytest.approx(0.12)
    assert seen[TOPICS["tl"]].traffic_light_groups[0].traffic_light_group_id == 42


def test_image_and_tf(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    with BagWriter(tmp_path / "bag") as bag:
        bag.write_image("/sensing/camera/front/image_raw", rgb, 1.5, "camera_front")
        bag.write_tf(EgoState(x=3.0, y=4.0, yaw=0.5, stamp=1.5))
    reader = BagReader(tmp_path / "bag")
    assert reader.topics["/tf"].type == "tf2_msgs/msg/TFMessage"
    (_, t_ns, (image, stamp, frame)), = list(reader.read_values(["/sensing/camera/front/image_raw"]))
    np.testing.assert_array_equal(image, rgb)
    assert (t_ns, stamp, frame) == (1_500_000_000, 1.5, "camera_front")
    (_, _, tf), = list(reader.messages(["/tf"]))
    assert tf.transforms[0].child_frame_id == "base_link"
    assert tf.transforms[0].transform.translation.x == 3.0


def test_objects_topic_keeps_one_type(tmp_path):
    empty = Boxes()
    tracks = Boxes([[1, 2, 0]], [[4, 2, 1.5]], [0.0], [1], ids=[5])
    detections = Boxes([[1, 2, 0]], [[4, 2, 1.5]], [0.0], [1])
    with BagWriter(tmp_path / "bag", markers=False) as bag:
        bag.write_objects("/simulation/ground_truth/objects", empty, 0.0)  # empty first frame: by name
        bag.write_objects("/simulation/ground_truth/objects", tracks, 0.1)
        bag.write_objects("/perception/object_recognition/detection/objects", empty, 0.0)
        bag.write_objects("/perception/object_recognition/detection/objects", detections, 0.1)
        with pytest.raises(DataError, match="tracked=True"):
            bag.write_objects("/perception/object_recognition/detection/objects", tracks, 0.2)
        bag.write_objects("/custom", empty, 0.0, tracked=True)
        bag.write_objects("/custom", detections, 0.1)  # follows the topic: ids -1 in TrackedObjects
    reader = BagReader(tmp_path / "bag")
    assert reader.topics["/simulation/ground_truth/objects"].type.endswith("/TrackedObjects")
    assert reader.topics["/perception/object_recognition/detection/objects"].type.endswith("/DetectedObjects")
    assert reader.topics["/custom"] == TopicInfo("autoware_perception_msgs/msg/TrackedObjects", 2)
    ids = [v.ids.tolist() for _, _, v in reader.read_values(["/simulation/ground_truth/objects"])]
    assert ids == [[], [5]]


def test_existing_path_is_refused_unless_overwrite(tmp_path):
    _write(tmp_path / "bag", n=1)
    with pytest.raises(UserError, match="already exists"):
        BagWriter(tmp_path / "bag")
    BagWriter(tmp_path / "bag", overwrite=True).close()


def test_garbage_file_is_a_data_error(tmp_path):
    bad = tmp_path / "x.mcap"
    bad.write_bytes(b"not an mcap file at all")
    with pytest.raises(DataError):
        BagReader(bad)
    with pytest.raises(UserError, match="not found"):
        BagReader(tmp_path / "missing")


def test_reads_a_real_nav2_bag():
    path = shared_data_dir() / "bags" / "nav2_turtlebot.mcap"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    reader = BagReader(path)
    assert {"/odom", "/tf", "/tf_static", "/amcl_pose"} <= set(reader.topics)
    assert reader.topics["/odom"].type == "nav_msgs/msg/Odometry"
    first = next(v for topic, _, v in reader.read_values(["/odom"]))
    assert np.isfinite([first.x, first.y, first.yaw]).all()
