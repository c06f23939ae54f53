"""The lidar detection node, running as its own process, against malformed, repeated and good clouds.

Every bad case is sent twice: the node must survive, count each on /diagnostics, log each kind once,
and still turn the next good cloud into the right detections, stamped with that cloud's time.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_nodes_harness import (NodeProcess, Probe, cloud_msg, domain_id_for, needs_autoware, odometry,
                                synthetic_cloud_points)

pytestmark = needs_autoware

NODE = "lidar_detector"
EGO_X, EGO_Y = 100.0, 50.0  # the car is 10.25 m ahead of the sensor: (110.25, 50) in the map


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from autoware_perception_msgs.msg import DetectedObjects
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import PointCloud2

    from adstack import topics

    domain = domain_id_for(__name__)
    log = tmp_path_factory.mktemp("lidar_node") / f"{NODE}.log"
    node = NodeProcess(NODE, domain, log, {"model": "classical", "diagnostics_period_s": 0.2, "reliable_input": True})
    probe = Probe(domain)
    try:
        clouds = probe.publisher(PointCloud2, topics.LIDAR_POINTS)
        odom = probe.publisher(Odometry, topics.KINEMATIC_STATE)
        outputs = probe.collect(DetectedObjects, topics.DETECTED_OBJECTS)
        from std_msgs.msg import Float64
        timing = {name: probe.collect(Float64, f"/{NODE}/debug/{name}")
                  for name in ("processing_time_ms", "pipeline_latency_ms")}
        assert probe.wait_matched(clouds) and probe.wait_matched(odom), node.log()
        assert probe.wait_diagnostics(NODE), node.log()
        # Poses for 10.0 .. 11.0 s, one at a time: the node's odometry queue is a short best-effort one.
        for k in range(11):
            odom.publish(odometry(EGO_X, EGO_Y, 0.0, 5.0, 10.0 + 0.1 * k))
            probe.spin_for(0.03)
        probe.timing = timing
        yield node, probe, clouds, outputs
    finally:
        node.stop()
        probe.close()


def _stamps(outputs) -> list[float]:
    from adstack.ros_convert import time_to_sec
    return [round(time_to_sec(m.header.stamp), 3) for m in outputs]


def _wait_output(probe, outputs, stamp: float) -> bool:
    return probe.spin_until(lambda: stamp in _stamps(outputs), 60.0)


def _malformed_variants(good):
    """name -> (expected diagnostics kind, message)."""
    from sensor_msgs.msg import PointField

    def variant(**changes):
        msg = cloud_msg(np.zeros((0, 4), np.float32), 0.0)
        for attr in ("header", "height", "width", "fields", "is_bigendian", "point_step", "row_step", "data", "is_dense"):
            setattr(msg, attr, getattr(good, attr))
        for attr, value in changes.items():
            setattr(msg, attr, value)
        return msg

    xyz_only = [PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xy")] + \
               [PointField(name="intensity", offset=12, datatype=7, count=1)]
    x_float64 = [PointField(name="x", offset=0, datatype=8, count=1)] + list(good.fields[1:])
    overflow = list(good.fields[:3]) + [PointField(name="intensity", offset=14, datatype=7, count=1)]
    return {
        "missing z field": ("malformed_pointcloud.missing_field", variant(fields=xyz_only)),
        "x as float64": ("malformed_pointcloud.field_type", variant(fields=x_float64)),
        "field past point_step": ("malformed_pointcloud.field_overflow", variant(fields=overflow)),
        "truncated data": ("malformed_pointcloud.truncated", variant(data=bytes(good.data)[: len(good.data) // 2])),
        "data longer than header": ("malformed_pointcloud.size_mismatch", variant(data=bytes(good.data) + b"\0" * 16)),
        "big endian": ("malformed_pointcloud.big_endian", variant(is_bigendian=True)),
    }


def test_good_cloud_gives_detections_in_the_map_stamped_with_the_cloud(running):
    node, probe, clouds, outputs = running
    clouds.publish(cloud_msg(synthetic_cloud_points(), 10.0))
    assert _wait_output(probe, outputs, 10.0), node.log()
    msg = next(m for m in outputs if _stamps([m]) == [10.0])
    assert msg.header.frame_id == "map" and len(msg.objects) == 1
    p = msg.objects[0].kinematics.pose_with_covariance.pose.position
    assert abs(p.x - (EGO_X + 10.25)) < 1.0 and abs(p.y - EGO_Y) < 1.0
    # processing time and pipeline latency are published per node, one of each per processed cloud
    assert probe.spin_until(lambda: all(probe.timing.values()), 10.0)
    processing_ms = probe.timing["processing_time_ms"][-1].data
    assert 0.0 < processing_ms < 60_000.0 and np.isfinite(probe.timing["pipeline_latency_ms"][-1].data)
    assert probe.spin_until(lambda: probe.values(NODE).get("detections") == "1", 10.0)


def test_malformed_repeated_empty_and_huge_clouds_are_survived_counted_and_logged_once(running):
    node, probe, clouds, outputs = running
    points = synthetic_cloud_points()
    good = cloud_msg(points, 10.0)
    if not _wait_output(probe, outputs, 10.0):  # this test may run alone
        clouds.publish(good)
        assert _wait_output(probe, outputs, 10.0), node.log()

    expected = {}
    for name, (kind, msg) in _malformed_variants(good).items():
        expected[kind] = name
        for _ in range(2):
            clouds.publish(msg)
            probe.spin_for(0.02)
    for _ in range(2):  # the same stamp again, then an older one (its pose is still known)
        clouds.publish(cloud_msg(points, 10.0))
        probe.spin_for(0.02)
    for _ in range(2):
        clouds.publish(cloud_msg(points, 9.95))
        probe.spin_for(0.02)
    expected["duplicate_stamp"] = expected["out_of_order_stamp"] = "stamps"

    # NaN and Inf returns are dropped point by point: the rest of the cloud is still detected.
    with_nan = points.copy()
    with_nan[:40, 0] = np.nan
    with_nan[40:80, 2] = np.inf
    with_nan[80:120, 1] = -np.inf
    for stamp in (10.1, 10.2):
        clouds.publish(cloud_msg(with_nan, stamp))
        assert _wait_output(probe, outputs, stamp), node.log()
    expected["nonfinite_points"] = "NaN/Inf"
    # Zero points: an empty detection list, not an error.
    for stamp in (10.3, 10.4):
        clouds.publish(cloud_msg(np.zeros((0, 4), np.float32), stamp))
        assert _wait_output(probe, outputs, stamp), node.log()
    expected["empty_cloud"] = "zero points"
    # Two million points (32 MB): over the node's max_points, rejected before any work on them.
    huge = cloud_msg(np.zeros((2_000_000, 4), np.float32), 10.45)
    for _ in range(2):  # (a best-effort subscription would lose a 32 MB sample to UDP fragmentation)
        clouds.publish(huge)
        if probe.wait_count(NODE, "malformed_pointcloud.too_large", 1, timeout_s=15.0):
            break
    expected["malformed_pointcloud.too_large"] = "two million points"

    # Still alive and still right.
    clouds.publish(cloud_msg(points, 10.5))
    assert _wait_output(probe, outputs, 10.5), node.log()
    assert node.alive(), node.log()
    for kind in expected:
        assert probe.wait_count(NODE, kind, 1, timeout_s=10.0), (kind, probe.counts(NODE), node.log())
    counts = probe.counts(NODE)
    # Both NaN clouds and both empty ones came out (waited for above): counted twice, logged once.
    assert probe.wait_count(NODE, "nonfinite_points", 2) and probe.wait_count(NODE, "empty_cloud", 2), counts
    for kind in expected:  # each kind of problem is logged once, however often it happens
        assert len(node.log_lines_with(f"]: {kind}: ")) == 1, (kind, node.log())
    by_stamp = {s: m for s, m in zip(_stamps(outputs), outputs)}
    assert sorted(s for s in by_stamp if s >= 10.0) == [10.0, 10.1, 10.2, 10.3, 10.4, 10.5]  # nothing else got out
    assert len(by_stamp[10.1].objects) == 1 and len(by_stamp[10.3].objects) == 0 and len(by_stamp[10.5].objects) == 1
    level = probe.diagnostics[NODE].level
    assert (level[0] if isinstance(level, bytes) else int(level)) in (0, 1, 2)


def test_a_silent_cloud_input_is_reported_and_the_node_recovers(running):
    node, probe, clouds, outputs = running
    clouds.publish(cloud_msg(synthetic_cloud_points(), 10.8))
    assert _wait_output(probe, outputs, 10.8), node.log()
    before = probe.counts(NODE).get("stale_input.pointcloud", 0)
    # No cloud for longer than input_timeout_s (0.5 s): one more silence episode on /diagnostics.
    assert probe.wait_count(NODE, "stale_input.pointcloud", before + 1, 10.0), probe.counts(NODE)
    clouds.publish(cloud_msg(synthetic_cloud_points(), 10.9))
    assert _wait_output(probe, outputs, 10.9), node.log()
    assert len(node.log_lines_with("]: stale_input.pointcloud: ")) == 1 and node.alive()
