"""Fuzz the running stage nodes: 10,000 randomized malformed messages on every input topic of the
lidar detector, tracker, planner and controller (each its own process, as `adstack launch` starts
them), then good inputs: every node must still be alive and answer with sane output.

Messages come from a pool of randomized variants per topic (building 10,000 nested rclpy messages
one by one would take minutes), each sent with a fresh random stamp. DDS may drop some of a burst
(that is what queues of depth 10 do); the test reports how many each node processed, from its
/diagnostics counts.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from adstack import ros_convert as rc
from adstack import topics
from adstack.types import Boxes
from test_nodes_harness import (REPO, NodeProcess, Probe, boxes, cloud_msg, domain_id_for, needs_autoware, odometry,
                                straight_trajectory, synthetic_cloud_points)

pytestmark = needs_autoware

MESSAGES_PER_TOPIC = 10_000
POOL_SIZE = 200
FUZZ_STAMP_MAX_S = 1e6  # fuzz stamps lie in [0, 1e6) s; the good inputs after them come later
GOOD_T = 2e6
NODES = ("lidar_detector", "tracker", "planner", "controller")
ROUTE_START = (101.75, -50.328, np.pi / 2)  # grid_town route 1

WEIRD_FLOATS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, -1e308, 1e-310, 3.4e38, 1e6, -1.0])


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.junk = self.rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()

    def real(self) -> float:
        r = self.rng.random()
        if r < 0.4:
            return float(self.rng.choice(WEIRD_FLOATS))
        return float(self.rng.normal() * 10.0 ** self.rng.integers(0, 7))

    def uint(self, bits: int) -> int:
        return int(self.rng.choice([0, 1, 2, 3, 16, 255, (1 << bits) - 1, int(self.rng.integers(0, 1 << min(bits, 62)))
                                    % (1 << bits)]))

    def text(self) -> str:
        return str(self.rng.choice(["map", "", "base_link", "lidar", "m\u00e4p", "map ", "/map", "x" * 300]))

    def stamp(self, msg_time) -> None:
        t = float(self.rng.uniform(0.0, FUZZ_STAMP_MAX_S))
        msg_time.sec, msg_time.nanosec = int(t), int(self.rng.choice([int((t % 1) * 1e9), 999_999_999, 1_500_000_000]))

    def pose(self, pose) -> None:
        p, q = pose.position, pose.orientation
        p.x, p.y, p.z = self.real(), self.real(), self.real()
        q.x, q.y, q.z, q.w = self.real(), self.real(), self.real(), self.real()

    # ---- one randomized malformed message per input type
    def pointcloud(self):
        from sensor_msgs.msg import PointField
        # small clouds (<= 1,500 points), so that the node spends its time on many messages, not on one
        good_points = synthetic_cloud_points(int(self.rng.integers(0, 1000)))[:: int(self.rng.integers(10, 60))]
        msg = cloud_msg(good_points, 0.0)
        mode = self.rng.integers(0, 5)
        if mode == 0:  # random layout and header
            names = ["x", "y", "z", "intensity", "ring", "t", "", "x"]
            msg.fields = [PointField(name=str(self.rng.choice(names)), offset=self.uint(8),
                                     datatype=int(self.rng.integers(0, 12)), count=int(self.rng.integers(0, 4)))
                          for _ in range(self.rng.integers(0, 6))]
            msg.point_step, msg.row_step = self.uint(8), self.uint(16)
            msg.width, msg.height = self.uint(32), self.uint(8)
        elif mode == 1:  # right layout, wrong amount of data
            n = len(msg.data)
            cut = int(self.rng.integers(0, n + 64))
            msg.data = (bytes(msg.data) + self.junk[:64])[:cut] if cut != n else bytes(msg.data)[:-1]
        elif mode == 2:  # garbage bytes where the points go: NaN, Inf, 1e38 ...
            data = bytearray(msg.data)
            start = int(self.rng.integers(0, max(1, len(data) - 4096)))
            data[start:start + 4096] = self.junk[start % 1000: start % 1000 + min(4096, len(data) - start)]
            msg.data = bytes(data)
        elif mode == 3:  # header says big, small, zero or absurd
            msg.width = int(self.rng.choice([0, 1, 2_000_000, 4_294_967_295]))
            msg.height = int(self.rng.choice([0, 1, 2, 255]))
            msg.is_bigendian = bool(self.rng.integers(0, 2))
        else:  # a field pointing past the point, or duplicated
            msg.fields[int(self.rng.integers(0, 4))].offset = int(self.rng.choice([13, 14, 15, 16, 1 << 31]))
        msg.header.frame_id = self.text()
        return msg

    def odometry(self):
        msg = odometry(0.0, 0.0, 0.0, 0.0, 0.0)
        self.pose(msg.pose.pose)
        tw = msg.twist.twist
        tw.linear.x, tw.linear.y, tw.angular.z = self.real(), self.real(), self.real()
        msg.header.frame_id = self.text()
        return msg

    def _objects(self, tracked: bool):
        n = int(self.rng.integers(0, 8))
        b = boxes(n, 0.0, seed=int(self.rng.integers(0, 1000)))
        msg = rc.tracked_objects_to_msg(b) if tracked else rc.detected_objects_to_msg(b)
        for obj in msg.objects:
            self.pose(obj.kinematics.pose_with_covariance.pose)
            d = obj.shape.dimensions
            d.x, d.y, d.z = self.real(), self.real(), self.real()
            obj.kinematics.twist_with_covariance.twist.linear.x = self.real()
            obj.existence_probability = self.real()
            for c in obj.classification:
                c.label, c.probability = self.uint(8), self.real()
            if self.rng.random() < 0.2:
                obj.classification = []
            if tracked:
                obj.object_id.uuid = self.rng.integers(0, 256, 16, dtype=np.uint8)
        msg.header.frame_id = self.text()
        return msg

    def detected_objects(self):
        return self._objects(False)

    def tracked_objects(self):
        return self._objects(True)

    def trajectory(self):
        n = int(self.rng.integers(0, 30))
        msg = rc.trajectory_to_msg(straight_trajectory(0.0, 0.0, 5.0, 0.0, n=max(n, 1)))
        msg.points = msg.points[:n]
        for p in msg.points:
            self.pose(p.pose)
            p.longitudinal_velocity_mps = self.real()
            p.time_from_start.sec = int(self.rng.integers(-(1 << 31), 1 << 31))
        msg.header.frame_id = self.text()
        return msg

    def traffic_signals(self):
        from autoware_perception_msgs.msg import TrafficLightElement, TrafficLightGroup, TrafficLightGroupArray
        groups = [TrafficLightGroup(traffic_light_group_id=int(self.rng.integers(-(1 << 62), 1 << 62)),
                                    elements=[TrafficLightElement(color=self.uint(8), shape=self.uint(8),
                                                                  status=self.uint(8), confidence=self.real())
                                              for _ in range(self.rng.integers(0, 4))])
                  for _ in range(self.rng.integers(0, 6))]
        return TrafficLightGroupArray(traffic_light_groups=groups)

    def light_table(self):
        from std_msgs.msg import String
        choices = ['{"1": {"id": "a", "position": [1, 2], "lanes": [[1, 2, 3]]}}', "[]", "null", "{", "",
                   '{"5": {"id": 3, "position": "x", "lanes": 7}}', '{"7": {"position": [NaN, 1e999]}}',
                   self.junk[: int(self.rng.integers(0, 200))].decode("latin-1")]
        return String(data=str(self.rng.choice(choices)))


def _stamp_of(msg):
    if hasattr(msg, "header"):
        return msg.header.stamp
    return getattr(msg, "stamp", None)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    domain = domain_id_for(__name__)
    logs = tmp_path_factory.mktemp("fuzz")
    common = {"diagnostics_period_s": 0.25}
    params = {"lidar_detector": {**common, "model": "classical", "reliable_input": True},
              "tracker": common, "controller": {**common, "odometry_timeout_s": 0.5},
              "planner": {**common, "routes": str(REPO / "sim" / "routes" / "grid_town.xml"), "route_id": "1",
                          "odometry_timeout_s": 0.5}}
    nodes = {name: NodeProcess(name, domain, logs / f"{name}.log", params[name]) for name in NODES}
    probe = Probe(domain, name="fuzzer")
    try:
        for name in NODES:
            assert probe.wait_diagnostics(name), nodes[name].log()
        yield nodes, probe
    finally:
        codes = {name: node.stop() for name, node in nodes.items()}
        probe.close()
        assert all(code == 0 for code in codes.values()), codes  # and each exits cleanly on SIGINT


def _total(probe, name: str) -> int:
    return sum(probe.counts(name).values())


def _received(probe, name: str, input_name: str) -> int:
    return int(probe.values(name).get(f"received.{input_name}", 0))


def test_ten_thousand_malformed_messages_per_input_topic_then_sane_output(graph):
    from autoware_perception_msgs.msg import DetectedObjects, TrackedObjects, TrafficLightGroupArray
    from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import String

    from adstack.node import latched_qos, reliable_qos
    from planning.planning_node import TRAFFIC_LIGHT_TABLE

    nodes, probe = graph
    fuzz = Fuzzer(seed=7)
    inputs = [  # (topic, type, make, consumers, the consumers' name for the input)
        (topics.LIDAR_POINTS, PointCloud2, fuzz.pointcloud, ["lidar_detector"], "pointcloud"),
        (topics.KINEMATIC_STATE, Odometry, fuzz.odometry, ["lidar_detector", "planner", "controller"], "kinematic_state"),
        (topics.DETECTED_OBJECTS, DetectedObjects, fuzz.detected_objects, ["tracker"], "objects"),
        (topics.TRACKED_OBJECTS, TrackedObjects, fuzz.tracked_objects, ["planner"], "objects"),
        (topics.TRAFFIC_SIGNALS, TrafficLightGroupArray, fuzz.traffic_signals, ["planner"], "traffic_signals"),
        (TRAFFIC_LIGHT_TABLE, String, fuzz.light_table, ["planner"], "traffic_light_table"),
        (topics.TRAJECTORY, TrajectoryMsg, fuzz.trajectory, ["controller"], "trajectory"),
    ]
    report = {}
    for topic, msg_type, make, consumers, input_name in inputs:
        qos = latched_qos() if topic == TRAFFIC_LIGHT_TABLE else reliable_qos(depth=100)
        pub = probe.publisher(msg_type, topic, qos)
        assert probe.wait_matched(pub, len(consumers)), topic
        pool = [make() for _ in range(POOL_SIZE)]
        before = {name: _total(probe, name) for name in consumers}
        received_before = {name: _received(probe, name, input_name) for name in consumers}
        t0 = time.perf_counter()
        for i in range(MESSAGES_PER_TOPIC):
            msg = pool[int(fuzz.rng.integers(0, POOL_SIZE))]
            stamp = _stamp_of(msg)
            if stamp is not None:
                fuzz.stamp(stamp)
            pub.publish(msg)
            if i % 100 == 99:  # let the nodes breathe: a burst, not a flood that only fills queues
                probe.spin_for(0.002)
        send_s = time.perf_counter() - t0
        probe.spin_for(1.0)
        for name in consumers:
            assert nodes[name].alive(), (topic, nodes[name].log()[-3000:])
        probe.spin_for(0.5)  # one more /diagnostics period
        report[topic] = {"sent": MESSAGES_PER_TOPIC, "send_s": round(send_s, 2),
                         "received": {n: _received(probe, n, input_name) - received_before[n] for n in consumers},
                         "problems_counted": {n: _total(probe, n) - before[n] for n in consumers}}
        probe.node.destroy_publisher(pub)
    print(json.dumps(report, indent=1))
    for topic, row in report.items():  # the nodes saw the garbage (not every sample: queues drop bursts)
        assert all(v > 0 for v in row["received"].values()), (topic, row)
        assert all(v > 0 for v in row["problems_counted"].values()), (topic, row)

    # Sane output afterwards, for good inputs stamped after every fuzz stamp.
    sane = _sane_after_fuzz(probe, nodes)
    assert all(sane.values()), (sane, {n: probe.counts(n) for n in NODES})
    assert all(node.alive() for node in nodes.values())


def _sane_after_fuzz(probe, nodes) -> dict:
    from autoware_control_msgs.msg import Control
    from autoware_perception_msgs.msg import DetectedObjects, TrackedObjects
    from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import PointCloud2

    from adstack.node import reliable_qos

    detections = probe.collect(DetectedObjects, topics.DETECTED_OBJECTS)
    tracks = probe.collect(TrackedObjects, topics.TRACKED_OBJECTS)
    trajectories = probe.collect(TrajectoryMsg, topics.TRAJECTORY)
    commands = probe.collect(Control, topics.CONTROL_COMMAND)
    cloud_pub = probe.publisher(PointCloud2, topics.LIDAR_POINTS)
    odom_pub = probe.publisher(Odometry, topics.KINEMATIC_STATE, reliable_qos(depth=100))
    det_pub = probe.publisher(DetectedObjects, topics.DETECTED_OBJECTS)
    for pub, n in ((cloud_pub, 1), (odom_pub, 3), (det_pub, 1)):
        assert probe.wait_matched(pub, n)
    for sub_topic in (topics.DETECTED_OBJECTS, topics.TRACKED_OBJECTS, topics.TRAJECTORY, topics.CONTROL_COMMAND):
        assert probe.spin_until(lambda t=sub_topic: probe.node.count_publishers(t) >= 1, 30.0), sub_topic

    x0, y0, yaw0 = ROUTE_START
    points = synthetic_cloud_points()
    ok = {}
    for k in range(10):  # 1 s of good data at 10 Hz: the pipeline runs end to end again
        t = GOOD_T + 0.1 * k
        odom_pub.publish(odometry(x0, y0 + 0.5 * k, yaw0, 5.0, t))
        probe.spin_for(0.02)
        cloud_pub.publish(cloud_msg(points, t))
        if not probe.spin_until(lambda t=t: any(_sec(m.header.stamp) == pytest.approx(t) for m in detections), 30.0):
            return {"lidar_detector": f"no detections for the good cloud at {t}"}
        probe.spin_for(0.05)
    det = rc.boxes_from_objects(next(m for m in detections if _sec(m.header.stamp) == pytest.approx(GOOD_T + 0.9)))
    ok["lidar_detector"] = len(det) == 1 and np.isfinite(det.center).all()
    # the tracker turned those detections into tracks (the lidar node's output is the tracker's input)
    ok["tracker"] = probe.spin_until(lambda: any(_sec(m.header.stamp) >= GOOD_T + 0.5 and len(m.objects) >= 1
                                                 for m in tracks), 10.0)
    last_track = rc.boxes_from_objects(tracks[-1]) if tracks else Boxes()
    ok["tracker"] = ok["tracker"] and np.isfinite(last_track.center).all() and np.isfinite(last_track.velocity).all()
    # the planner planned on them, the controller followed
    ok["planner"] = probe.spin_until(lambda: any(_sec(m.header.stamp) >= GOOD_T + 0.5 for m in trajectories), 10.0)
    if ok["planner"]:
        traj = rc.trajectory_from_msg([m for m in trajectories if _sec(m.header.stamp) >= GOOD_T][-1])
        ok["planner"] = (len(traj) >= 2 and np.isfinite(traj.points).all() and (traj.points[:, 3] >= -1e-9).all()
                         and traj.points[:, 3].max() < 30.0)
    ok["controller"] = probe.spin_until(lambda: any(_sec(m.stamp) >= GOOD_T + 0.5 for m in commands), 10.0)
    if ok["controller"]:
        cmd = rc.command_from_msg([m for m in commands if _sec(m.stamp) >= GOOD_T][-1])
        ok["controller"] = bool(np.isfinite([cmd.steer, cmd.accel]).all() and abs(cmd.steer) <= 0.6
                                and -8.0 <= cmd.accel <= 3.0)
    print("sane after fuzz:", ok)
    return ok


def _sec(t) -> float:
    return rc.time_to_sec(t)
