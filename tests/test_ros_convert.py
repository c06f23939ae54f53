"""Conversions adstack <-> ROS 2 messages: round trips with rclpy and rosbags message objects,
byte-identical CDR from both, and validation of malformed PointCloud2 messages."""

import numpy as np
import pytest

from adstack import ros_convert as rc
from adstack.errors import DataError
from adstack.types import Boxes, Command, EgoState, LightState, ObjectClass, PointCloud, TrafficLight, Trajectory

rclpy_serialization = pytest.importorskip("rclpy.serialization")


def _autoware_built() -> bool:
    try:
        import autoware_control_msgs.msg  # noqa: F401
        import autoware_perception_msgs.msg  # noqa: F401
        import autoware_planning_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


needs_autoware = pytest.mark.skipif(not _autoware_built(), reason="Autoware messages not built for rclpy "
                                    "(scripts/build_msgs.sh); the rosbags path is tested regardless")
ROSBAGS = rc.RosbagsFactory()
FACTORIES = [pytest.param(rc.RclpyFactory(), id="rclpy"), pytest.param(ROSBAGS, id="rosbags")]


def _values():
    rng = np.random.default_rng(3)
    cloud = PointCloud(rng.normal(size=(300, 4)).astype(np.float32), "lidar_top", 1700000000.123456789)
    labelled = PointCloud(cloud.points, "lidar_top", 2.5, rng.integers(0, 4, 300), rng.integers(-1, 20, 300))
    ego = EgoState(x=100.5, y=-20.25, yaw=-2.9, v=12.0, z=1.5, yaw_rate=-0.3, stamp=12.05)
    boxes = Boxes(rng.normal(size=(5, 3)) * 20, rng.uniform(0.5, 5, (5, 3)), rng.uniform(-np.pi, np.pi, 5),
                  [1, 2, 3, 0, 1], rng.uniform(0.1, 1, 5), rng.normal(size=(5, 2)) * 3, [0, 1, 2, 3, 2**40],
                  "map", 12.0)
    traj = Trajectory(np.column_stack([np.linspace(0, 30, 16), np.linspace(0, 3, 16), np.full(16, 0.1),
                                       np.linspace(8, 10, 16), np.linspace(0, 3, 16)]), "map", 12.0)
    return cloud, labelled, ego, boxes, traj


def _cdr_roundtrip(msg, factory):
    """Serialize and deserialize with the library that made ``msg``."""
    if factory.kind == "rclpy":
        return rclpy_serialization.deserialize_message(rclpy_serialization.serialize_message(msg), type(msg))
    name = rc.msg_typename(msg)
    return ROSBAGS.store.deserialize_cdr(ROSBAGS.store.serialize_cdr(msg, name), name)


@pytest.mark.parametrize("factory", FACTORIES)
def test_standard_round_trips(factory):
    cloud, labelled, ego, boxes, traj = _values()
    back = rc.pointcloud_from_msg(_cdr_roundtrip(rc.pointcloud_to_msg(cloud, factory), factory))
    np.testing.assert_array_equal(back.points, cloud.points)
    assert back.frame_id == "lidar_top" and back.stamp == pytest.approx(cloud.stamp, abs=1e-6)
    assert back.labels is None
    back = rc.pointcloud_from_msg(_cdr_roundtrip(rc.pointcloud_to_msg(labelled, factory), factory))
    np.testing.assert_array_equal(back.labels, labelled.labels)
    np.testing.assert_array_equal(back.actor_ids, labelled.actor_ids)

    e = rc.ego_from_odometry(_cdr_roundtrip(rc.odometry_to_msg(ego, factory=factory), factory))
    assert (e.x, e.y, e.z, e.yaw, e.v, e.yaw_rate, e.stamp) == pytest.approx(
        (ego.x, ego.y, ego.z, ego.yaw, ego.v, ego.yaw_rate, ego.stamp))

    markers = _cdr_roundtrip(rc.boxes_to_markers(boxes, factory=factory), factory)
    assert [m.action for m in markers.markers] == [rc.MARKER_DELETEALL] + [rc.MARKER_ADD] * 5
    assert markers.markers[3].scale.x == pytest.approx(boxes.size[2, 0])
    path = _cdr_roundtrip(rc.trajectory_to_path(traj, factory=factory), factory)
    assert [p.pose.position.x for p in path.poses] == pytest.approx(list(traj.points[:, 0]))

    diag = rc.diagnostic_array_msg([rc.diagnostic_status_msg("lidar", rc.DIAG_WARN, "late", {"dropped": 3},
                                                             factory=factory)], 5.0, factory)
    diag = _cdr_roundtrip(diag, factory)
    assert rc.diagnostic_level(diag.status[0]) == rc.DIAG_WARN
    assert [(kv.key, kv.value) for kv in diag.status[0].values] == [("dropped", "3")]


def _autoware_factories():
    return [pytest.param(rc.RclpyFactory(), id="rclpy", marks=needs_autoware), pytest.param(ROSBAGS, id="rosbags")]


@pytest.mark.parametrize("factory", _autoware_factories())
def test_autoware_round_trips(factory):
    _, _, _, boxes, traj = _values()
    for convert in (rc.detected_objects_to_msg, rc.tracked_objects_to_msg):
        back = rc.boxes_from_objects(_cdr_roundtrip(convert(boxes, factory), factory))
        np.testing.assert_allclose(back.center, boxes.center)
        np.testing.assert_allclose(back.size, boxes.size, rtol=1e-6)  # Vector3 is float64, score float32
        np.testing.assert_allclose(np.angle(np.exp(1j * (back.yaw - boxes.yaw))), 0, atol=1e-12)
        np.testing.assert_allclose(back.velocity, boxes.velocity, atol=1e-12)
        np.testing.assert_allclose(back.score, boxes.score, rtol=1e-6)
        np.testing.assert_array_equal(back.label, boxes.label)
        assert back.frame_id == "map" and back.stamp == pytest.approx(12.0)
    tracked = _cdr_roundtrip(rc.tracked_objects_to_msg(boxes, factory), factory)
    np.testing.assert_array_equal(rc.boxes_from_objects(tracked).ids, boxes.ids)
    # Autoware's twist is in the object's own frame: a box moving along its heading has only vx.
    ahead = Boxes([[0, 0, 0]], [[4, 2, 1.5]], [np.pi / 2], [ObjectClass.VEHICLE], velocity=[[0, 5]])
    twist = rc.detected_objects_to_msg(ahead, factory).objects[0].kinematics.twist_with_covariance.twist.linear
    assert (twist.x, twist.y) == pytest.approx((5, 0), abs=1e-12)

    back = rc.trajectory_from_msg(_cdr_roundtrip(rc.trajectory_to_msg(traj, factory), factory))
    np.testing.assert_allclose(back.points[:, :3], traj.points[:, :3], atol=1e-12)
    np.testing.assert_allclose(back.points[:, 3:], traj.points[:, 3:], atol=1e-5)  # float32 speed

    cmd = rc.command_from_msg(_cdr_roundtrip(rc.command_to_msg(Command(-0.2, 1.25, 3.5), factory=factory), factory))
    assert (cmd.steer, cmd.accel, cmd.stamp) == pytest.approx((-0.2, 1.25, 3.5), rel=1e-6)

    lights = [TrafficLight("17", LightState.GREEN, np.zeros(2)), TrafficLight("tls_a", LightState.OFF, np.zeros(2)),
              TrafficLight("3", LightState.UNKNOWN, np.zeros(2))]
    back = rc.traffic_lights_from_msg(_cdr_roundtrip(rc.traffic_lights_to_msg(lights, 9.0, factory), factory))
    assert [(b.id, b.state) for b in back] == [("17", LightState.GREEN),
                                               (str(rc.traffic_light_group_id("tls_a")), LightState.OFF),
                                               ("3", LightState.UNKNOWN)]


@pytest.mark.parametrize("frame_id", ["m", "map", "base_lnk", "velodyne_top"])  # every start offset mod 8
@pytest.mark.parametrize("n", [0, 1, 2, 9])
@pytest.mark.parametrize("tracked", [False, True])
def test_fast_objects_cdr_equals_the_serializer(frame_id, n, tracked):
    rng = np.random.default_rng(n)
    boxes = Boxes(rng.normal(size=(n, 3)) * 30, rng.uniform(0.5, 5, (n, 3)), rng.uniform(-4, 4, n),
                  rng.integers(0, 5, n), rng.uniform(0, 1, n), rng.normal(size=(n, 2)) * np.array([[1], [0]] * 5)[:n],
                  rng.integers(-1, 10**12, n), frame_id, 77.125)
    convert = rc.tracked_objects_to_msg if tracked else rc.detected_objects_to_msg
    msg = convert(boxes, ROSBAGS)
    reference = bytes(ROSBAGS.store.serialize_cdr(msg, rc.msg_typename(msg)))
    assert rc.objects_to_cdr(boxes, tracked, ROSBAGS.store) == reference


@pytest.mark.parametrize("frame_id", ["m", "map", "base_lnk", "velodyne_top"])  # every start offset mod 8
@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_fast_trajectory_cdr_equals_the_serializer(frame_id, n):
    rng = np.random.default_rng(n)
    t = np.sort(rng.uniform(0, 8, n))
    t[:1] = 0.0
    if n > 2:
        t[2] = 0.9999999999  # rounds up to a whole second
    traj = Trajectory(np.column_stack([rng.normal(size=(n, 2)) * 100, rng.uniform(-4, 4, n), rng.uniform(0, 20, n), t]),
                      frame_id, 12.375)
    msg = rc.trajectory_to_msg(traj, ROSBAGS)
    reference = bytes(ROSBAGS.store.serialize_cdr(msg, rc.msg_typename(msg)))
    assert rc.trajectory_to_cdr(traj, ROSBAGS.store) == reference


@pytest.mark.parametrize("frame_id", ["m", "map", "base_lnk", "velodyne_top"])  # every start offset mod 8
@pytest.mark.parametrize("ns", ["x", "objects", "ground_truth"])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 9, 60])
def test_fast_box_markers_cdr_equals_the_serializer(frame_id, ns, n):
    rng = np.random.default_rng(n)
    boxes = Boxes(rng.normal(size=(n, 3)) * 30, rng.uniform(0.5, 5, (n, 3)), rng.uniform(-4, 4, n),
                  rng.integers(0, 7, n), None, None, None, frame_id, 77.125 + n)  # labels 5, 6: no colour of their own
    reference = bytes(ROSBAGS.store.serialize_cdr(rc.boxes_to_markers(boxes, ns, ROSBAGS),
                                                  "visualization_msgs/msg/MarkerArray"))
    assert rc.boxes_to_markers_cdr(boxes, ns, ROSBAGS.store) == reference


@pytest.mark.parametrize("frame_id", ["m", "lidar", "lidar_top", "velodyne_top"])  # every start offset mod 8
@pytest.mark.parametrize("n", [0, 1, 3, 5000])
@pytest.mark.parametrize("labelled", [True, False])
def test_fast_pointcloud_cdr_equals_the_serializer(frame_id, n, labelled):
    rng = np.random.default_rng(n)
    cloud = PointCloud(rng.normal(size=(n, 4)).astype(np.float32) * 30, frame_id, 3.25 + n,
                       rng.integers(0, 5, n).astype(np.int32) if labelled else None,
                       rng.integers(-1, 400, n) if labelled else None)
    reference = bytes(ROSBAGS.store.serialize_cdr(rc.pointcloud_to_msg(cloud, ROSBAGS), "sensor_msgs/msg/PointCloud2"))
    assert rc.pointcloud_to_cdr(cloud, ROSBAGS.store) == reference


def test_from_cdr():
    _, _, ego, boxes, _ = _values()
    back = rc.from_cdr(rc.objects_to_cdr(boxes, tracked=True), "autoware_perception_msgs/msg/TrackedObjects")
    np.testing.assert_array_equal(back.ids, boxes.ids)
    odom = rc.odometry_to_msg(ego, factory=ROSBAGS)
    e = rc.from_cdr(ROSBAGS.store.serialize_cdr(odom, "nav_msgs/msg/Odometry"), "nav_msgs/msg/Odometry")
    assert (e.x, e.yaw) == pytest.approx((ego.x, ego.yaw))
    with pytest.raises(KeyError, match="no adstack conversion"):
        rc.from_cdr(b"", "std_msgs/msg/Empty")


def _same_cdr(build):
    """rclpy and rosbags must encode the same value the same way. Fast CDR leaves alignment
    padding bytes uninitialised, so compare after normalising rclpy's bytes through rosbags."""
    rclpy_msg = build(rc.RclpyFactory())
    via_rclpy = rclpy_serialization.serialize_message(rclpy_msg)
    msg = build(ROSBAGS)
    name = rc.msg_typename(msg)
    via_rosbags = bytes(ROSBAGS.store.serialize_cdr(msg, name))
    assert len(via_rclpy) == len(via_rosbags)
    assert bytes(ROSBAGS.store.serialize_cdr(ROSBAGS.store.deserialize_cdr(via_rclpy, name), name)) == via_rosbags
    # and rclpy reads what rosbags wrote
    back = rclpy_serialization.serialize_message(rclpy_serialization.deserialize_message(via_rosbags, type(rclpy_msg)))
    assert bytes(ROSBAGS.store.serialize_cdr(ROSBAGS.store.deserialize_cdr(back, name), name)) == via_rosbags


def test_rclpy_and_rosbags_write_identical_cdr_standard():
    cloud, labelled, ego, boxes, _ = _values()
    _same_cdr(lambda f: rc.pointcloud_to_msg(labelled, f))
    _same_cdr(lambda f: rc.odometry_to_msg(ego, factory=f))
    _same_cdr(lambda f: rc.boxes_to_markers(boxes, factory=f))


@needs_autoware
def test_rclpy_and_rosbags_write_identical_cdr_autoware():
    _, _, _, boxes, traj = _values()
    _same_cdr(lambda f: rc.tracked_objects_to_msg(boxes, f))
    _same_cdr(lambda f: rc.detected_objects_to_msg(boxes, f))
    _same_cdr(lambda f: rc.trajectory_to_msg(traj, f))
    _same_cdr(lambda f: rc.command_to_msg(Command(0.1, -1, 2), factory=f))


@pytest.mark.parametrize("factory", FACTORIES)
def test_image_round_trip_and_bgr(factory):
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = _cdr_roundtrip(rc.image_to_msg(rgb, 3.25, "cam_front", factory), factory)
    back, stamp, frame = rc.image_from_msg(msg)
    np.testing.assert_array_equal(back, rgb)
    assert (stamp, frame) == (3.25, "cam_front")
    bgr = rc.image_to_msg(rgb[:, :, ::-1], 0.0, factory=ROSBAGS)
    bgr.encoding = "bgr8"
    np.testing.assert_array_equal(rc.image_from_msg(bgr)[0], rgb)


def test_malformed_image():
    msg = rc.image_to_msg(np.zeros((4, 5, 3), np.uint8), 0.0, factory=ROSBAGS)
    msg.encoding = "mono16"
    with pytest.raises(rc.MalformedMessage, match="encoding"):
        rc.image_from_msg(msg)
    msg = rc.image_to_msg(np.zeros((4, 5, 3), np.uint8), 0.0, factory=ROSBAGS)
    msg.data = msg.data[:-1]
    with pytest.raises(rc.MalformedMessage) as err:
        rc.image_from_msg(msg)
    assert err.value.kind == "truncated"


# ---------------------------------------------------------------------------------------------
# Malformed PointCloud2


def _cloud_msg(n=10, factory=ROSBAGS, **overrides):
    msg = rc.pointcloud_to_msg(PointCloud(np.arange(4 * n, dtype=np.float32).reshape(n, 4)), factory)
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


def _field(name, offset, datatype=rc.FLOAT32, count=1):
    return ROSBAGS.make("sensor_msgs/msg/PointField", name=name, offset=offset, datatype=datatype, count=count)


@pytest.mark.parametrize("kind, overrides", [
    ("missing_field", dict(fields=[_field("x", 0), _field("y", 4), _field("intensity", 12)])),
    ("field_type", dict(fields=[_field("x", 0, datatype=8), _field("y", 4), _field("z", 8)])),
    ("field_overflow", dict(fields=[_field("x", 0), _field("y", 4), _field("z", 14)])),
    ("duplicate_field", dict(fields=[_field("x", 0), _field("y", 4), _field("z", 8), _field("z", 12)])),
    ("truncated", dict(data=np.zeros(16 * 10 - 3, np.uint8))),
    ("size_mismatch", dict(data=np.zeros(16 * 10 + 16, np.uint8))),
    ("empty", dict(width=0, row_step=0, data=np.zeros(0, np.uint8))),
    ("too_large", dict(width=10**7, row_step=16 * 10**7)),
    ("bad_step", dict(row_step=15 * 10)),
    ("big_endian", dict(is_bigendian=True)),
])
def test_malformed_pointcloud2_is_rejected_with_a_kind(kind, overrides):
    with pytest.raises(rc.MalformedMessage) as err:
        rc.decode_pointcloud2(_cloud_msg(**overrides), topic="/sensing/lidar/points")
    assert err.value.kind == kind
    assert isinstance(err.value, DataError)
    assert str(err.value).startswith(f"/sensing/lidar/points: {kind}:")


def test_malformed_rclpy_pointcloud2_truncated():
    msg = _cloud_msg(factory=rc.RclpyFactory())
    msg.data = bytes(msg.data)[:-5]
    with pytest.raises(rc.MalformedMessage) as err:
        rc.pointcloud_from_msg(msg)
    assert err.value.kind == "truncated"


def test_not_a_pointcloud():
    with pytest.raises(rc.MalformedMessage) as err:
        rc.pointcloud_from_msg(rc.string_msg("hello", ROSBAGS))
    assert err.value.kind == "not_pointcloud2"


def test_empty_cloud_allowed_when_asked():
    cloud, dropped = rc.decode_pointcloud2(_cloud_msg(width=0, row_step=0, data=np.zeros(0, np.uint8)),
                                           allow_empty=True)
    assert len(cloud) == 0 and dropped == 0


def test_nonfinite_points_are_dropped_and_counted():
    points = np.arange(40, dtype=np.float32).reshape(10, 4)
    points[2, 0] = np.nan
    points[5, 2] = np.inf
    points[7, 3] = -np.inf  # bad intensity also drops the point
    msg = rc.pointcloud_to_msg(PointCloud(points, "lidar", 1.0, np.arange(10), np.arange(10)), ROSBAGS)
    cloud, dropped = rc.decode_pointcloud2(msg)
    assert dropped == 3
    keep = [0, 1, 3, 4, 6, 8, 9]
    np.testing.assert_array_equal(cloud.points, points[keep])
    np.testing.assert_array_equal(cloud.labels, keep)
    # the same without labels (the 16-byte fast path)
    cloud, dropped = rc.decode_pointcloud2(rc.pointcloud_to_msg(PointCloud(points), ROSBAGS))
    assert dropped == 3
    np.testing.assert_array_equal(cloud.points, points[keep])


def test_foreign_layout_with_padding_extra_fields_and_no_intensity():
    """A Velodyne-like layout: x y z float32, ring uint16, time float32, padded to 32 bytes per
    point and padded rows (organised 2 x 3 cloud), and no intensity field."""
    height, width, point_step = 2, 3, 32
    row_step = width * point_step + 8
    dtype = np.dtype({"names": ["x", "y", "z", "ring", "time"], "formats": ["<f4", "<f4", "<f4", "<u2", "<f4"],
                      "offsets": [0, 4, 8, 16, 20], "itemsize": point_step})
    rows = np.zeros((height, row_step), np.uint8)
    xyz = np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)
    for r in range(height):
        rec = np.zeros(width, dtype)
        rec["x"], rec["y"], rec["z"], rec["ring"] = xyz[r, :, 0], xyz[r, :, 1], xyz[r, :, 2], r
        rows[r, : width * point_step] = np.frombuffer(rec.tobytes(), np.uint8)
        rows[r, width * point_step:] = 0xFF  # padding bytes must be ignored
    fields = [_field("x", 0), _field("y", 4), _field("z", 8), _field("ring", 16, datatype=4), _field("time", 20)]
    msg = _cloud_msg(height=height, width=width, point_step=point_step, row_step=row_step, fields=fields,
                     data=rows.reshape(-1), is_dense=False)
    cloud, dropped = rc.decode_pointcloud2(msg)
    assert dropped == 0
    np.testing.assert_array_equal(cloud.points[:, :3], xyz.reshape(-1, 3))
    np.testing.assert_array_equal(cloud.points[:, 3], 0)


def test_stamps_split_exactly():
    assert rc.stamp_to_sec_nsec(1.5) == (1, 500_000_000)
    assert rc.stamp_to_sec_nsec(-0.25) == (-1, 750_000_000)
    assert rc.time_to_sec(rc.time_msg(1700000000.000000001, ROSBAGS)) == pytest.approx(1700000000.0, abs=1e-6)


@needs_autoware
def test_built_type_hashes_equal_rosbags():
    """scripts/build_msgs.sh's rosidl output and the rosbags typestore agree on every type hash,
    so live topics and logs carry the same types."""
    import json
    from pathlib import Path

    import autoware_perception_msgs

    from adstack.msgs import msg_definitions

    # <prefix>/lib/pythonX.Y/site-packages/autoware_perception_msgs/__init__.py -> <prefix>/share
    share = Path(autoware_perception_msgs.__file__).resolve().parents[4] / "share"
    checked = 0
    for name in msg_definitions():
        pkg, _, msg = name.split("/")
        description = json.loads((share / pkg / "msg" / f"{msg}.json").read_text())
        own = [h["hash_string"] for h in description["type_hashes"] if h["type_name"] == name]
        assert own == [ROSBAGS.store.hash_rihs01(name)], name
        checked += 1
    assert checked == 20


def test_predicted_objects_are_read_as_boxes():
    """Autoware's planners consume PredictedObjects; reading them gives the boxes back."""
    f = ROSBAGS
    obj = f.make("autoware_perception_msgs/msg/PredictedObject",
                 object_id=f.make("unique_identifier_msgs/msg/UUID", uuid=rc.uuid_from_id(42)),
                 existence_probability=0.8,
                 classification=[f.make("autoware_perception_msgs/msg/ObjectClassification", label=2, probability=0.3),
                                 f.make("autoware_perception_msgs/msg/ObjectClassification", label=7, probability=0.7)],
                 kinematics=f.make("autoware_perception_msgs/msg/PredictedObjectKinematics",
                                   initial_pose_with_covariance=f.make("geometry_msgs/msg/PoseWithCovariance",
                                                                       pose=rc.pose_msg(1, 2, 0, 0.5, f))),
                 shape=f.make("autoware_perception_msgs/msg/Shape", dimensions=rc.vector3_msg(0.6, 0.6, 1.8, f)))
    msg = f.make("autoware_perception_msgs/msg/PredictedObjects", header=rc.header_msg(4.0, "map", f), objects=[obj])
    name = "autoware_perception_msgs/msg/PredictedObjects"
    boxes = rc.from_cdr(f.store.serialize_cdr(msg, name), name)
    assert boxes.ids.tolist() == [42]
    assert boxes.label.tolist() == [ObjectClass.PEDESTRIAN]  # the most probable class
    assert boxes.center[0].tolist() == [1, 2, 0] and boxes.yaw[0] == pytest.approx(0.5)
