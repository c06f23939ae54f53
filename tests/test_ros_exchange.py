"""Two processes on loopback: a child publishes every adstack interface with real rclpy, this test
subscribes and converts back. Also exercises run_node (SIGINT -> clean exit), Diagnostics and
StageTimer across processes.

Run as a script (``python tests/test_ros_exchange.py PREFIX AUTOWARE``) it is the child publisher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from adstack import ros_convert as rc  # noqa: E402
from adstack.types import Boxes, Command, EgoState, LightState, PointCloud, TrafficLight, Trajectory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N_POINTS = 120_000  # a 64-beam sweep: 1.9 MB per PointCloud2


def exchange_values():
    rng = np.random.default_rng(11)
    cloud = PointCloud(rng.normal(size=(N_POINTS, 4)).astype(np.float32) * 30, "lidar", 100.5)
    ego = EgoState(x=5.0, y=-7.5, yaw=1.2, v=9.0, z=0.3, yaw_rate=0.1, stamp=100.5)
    boxes = Boxes(rng.normal(size=(6, 3)) * 10, rng.uniform(1, 4, (6, 3)), rng.uniform(-3, 3, 6), [1, 2, 3, 1, 0, 2],
                  rng.uniform(0.3, 1, 6), rng.normal(size=(6, 2)), [10, 11, 12, 13, 14, 15], "map", 100.5)
    traj = Trajectory(np.column_stack([np.arange(20.0), np.zeros(20), np.zeros(20), np.full(20, 7.0),
                                       np.arange(20) * 0.25]), "map", 100.5)
    cmd = Command(steer=0.05, accel=0.75, stamp=100.5)
    lights = [TrafficLight("301", LightState.RED, np.zeros(2)), TrafficLight("302", LightState.GREEN, np.zeros(2))]
    return cloud, ego, boxes, traj, cmd, lights


def autoware_available() -> bool:
    try:
        import autoware_control_msgs.msg  # noqa: F401
        import autoware_perception_msgs.msg  # noqa: F401
        import autoware_planning_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Child publisher


def _make_publisher_node(prefix: str, autoware: bool):
    from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401  (Diagnostics creates its own)
    from nav_msgs.msg import Odometry
    from rclpy.node import Node
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from adstack.node import Diagnostics, StageTimer, reliable_qos, sensor_qos

    class ExchangePublisher(Node):
        def __init__(self):
            super().__init__(f"exchange_pub_{os.getpid()}")
            cloud, ego, boxes, traj, cmd, lights = exchange_values()
            self.diag = Diagnostics(self, "exchange", period_s=0.2)
            self.diag.problem("malformed_cloud", "example problem", level=1)
            self.diag.problem("malformed_cloud", "example problem", level=1)
            self.stage_timer = StageTimer(self)
            self.outputs = [
                (self.create_publisher(PointCloud2, f"{prefix}/points", sensor_qos()), rc.pointcloud_to_msg(cloud)),
                (self.create_publisher(Odometry, f"{prefix}/odom", reliable_qos()), rc.odometry_to_msg(ego)),
                (self.create_publisher(MarkerArray, f"{prefix}/markers", reliable_qos()), rc.boxes_to_markers(boxes)),
            ]
            if autoware:
                from autoware_control_msgs.msg import Control
                from autoware_perception_msgs.msg import DetectedObjects, TrackedObjects, TrafficLightGroupArray
                from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg

                self.outputs += [
                    (self.create_publisher(DetectedObjects, f"{prefix}/detected", reliable_qos()),
                     rc.detected_objects_to_msg(boxes)),
                    # serialized CDR from the numpy fast path: rclpy publishes bytes as they are
                    (self.create_publisher(TrackedObjects, f"{prefix}/tracked", reliable_qos()),
                     rc.objects_to_cdr(boxes, tracked=True)),
                    (self.create_publisher(TrajectoryMsg, f"{prefix}/trajectory", reliable_qos()),
                     rc.trajectory_to_msg(traj)),
                    (self.create_publisher(Control, f"{prefix}/control", reliable_qos()), rc.command_to_msg(cmd)),
                    (self.create_publisher(TrafficLightGroupArray, f"{prefix}/lights", reliable_qos()),
                     rc.traffic_lights_to_msg(lights, 100.5)),
                ]
            self.create_timer(0.2, self.tick)

        def tick(self):
            with self.stage_timer.measure(input_stamp=None):
                for pub, msg in self.outputs:
                    pub.publish(msg)

    return ExchangePublisher


# ---------------------------------------------------------------------------------------------
# Test (subscriber)


@pytest.fixture(scope="module")
def ros_env():
    """Loopback-only discovery and a domain unlikely to be shared with a concurrent test run."""
    keys = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(os.getpid() % 100 + 1),
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    yield os.environ.copy()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def exchange(ros_env):
    """Run the child publisher once and collect the first message of every topic."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Float64
    from visualization_msgs.msg import MarkerArray

    from adstack.node import reliable_qos, sensor_qos

    autoware = autoware_available()
    prefix = f"/adstack_test_{os.getpid()}"
    child = subprocess.Popen([sys.executable, __file__, prefix, str(int(autoware))], env=ros_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    received: dict[str, object] = {}
    try:
        node = rclpy.create_node(f"exchange_sub_{os.getpid()}", context=context)

        def keep(key, convert):
            return lambda msg: received.setdefault(key, convert(msg))

        subs = [(PointCloud2, "points", rc.decode_pointcloud2, sensor_qos()),
                (Odometry, "odom", rc.ego_from_odometry, reliable_qos()),
                (MarkerArray, "markers", lambda m: m, reliable_qos())]
        if autoware:
            from autoware_control_msgs.msg import Control
            from autoware_perception_msgs.msg import DetectedObjects, TrackedObjects, TrafficLightGroupArray
            from autoware_planning_msgs.msg import Trajectory as TrajectoryMsg

            subs += [(DetectedObjects, "detected", rc.boxes_from_objects, reliable_qos()),
                     # raw subscription: CDR bytes decoded by rosbags (the fast path for object arrays)
                     (TrackedObjects, "tracked",
                      lambda data: rc.from_cdr(data, "autoware_perception_msgs/msg/TrackedObjects"), "raw"),
                     (TrajectoryMsg, "trajectory", rc.trajectory_from_msg, reliable_qos()),
                     (Control, "control", rc.command_from_msg, reliable_qos()),
                     (TrafficLightGroupArray, "lights", rc.traffic_lights_from_msg, reliable_qos())]
        for msg_type, key, convert, qos in subs:
            raw = qos == "raw"
            node.create_subscription(msg_type, f"{prefix}/{key}", keep(key, convert),
                                     reliable_qos() if raw else qos, raw=raw)
        node.create_subscription(
            DiagnosticArray, "/diagnostics",
            lambda m: [received.setdefault("diag", s) for s in m.status if f"exchange_pub_{child.pid}" in s.name], 10)
        node.create_subscription(Float64, f"/exchange_pub_{child.pid}/debug/processing_time_ms",
                                 keep("processing_ms", lambda m: m.data), 10)
        wanted = {key for _, key, _, _ in subs} | {"diag", "processing_ms"}
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 45  # discovery takes 1-2 s; a generous bound on a shared machine
        while not wanted <= set(received) and time.monotonic() < deadline and child.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        missing = wanted - set(received)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        try:
            out, _ = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
        context.try_shutdown()
    return received, missing, out, child.returncode, autoware


@pytest.mark.timeout(90)
def test_standard_interfaces_between_two_processes(exchange):
    received, missing, out, returncode, autoware = exchange
    assert not missing, f"nothing received on {sorted(missing)}; child output:\n{out}"
    assert returncode == 0, f"child did not exit cleanly on SIGINT:\n{out}"
    assert out.count("malformed_cloud: example problem") == 1, out  # logged once, counted twice

    cloud, ego, boxes, traj, cmd, lights = exchange_values()
    got_cloud, dropped = received["points"]
    assert dropped == 0
    np.testing.assert_array_equal(got_cloud.points, cloud.points)
    assert got_cloud.stamp == pytest.approx(cloud.stamp)
    e = received["odom"]
    assert (e.x, e.y, e.yaw, e.v, e.yaw_rate) == pytest.approx((ego.x, ego.y, ego.yaw, ego.v, ego.yaw_rate))
    assert len(received["markers"].markers) == len(boxes) + 1
    diag = received["diag"]
    assert rc.diagnostic_level(diag) in (rc.DIAG_OK, rc.DIAG_WARN)
    assert {kv.key: kv.value for kv in diag.values}["count.malformed_cloud"] == "2"
    assert received["processing_ms"] >= 0.0


@pytest.mark.timeout(90)
def test_autoware_interfaces_between_two_processes(exchange):
    received, missing, out, returncode, autoware = exchange
    if not autoware:
        pytest.skip("Autoware messages not built for rclpy (scripts/build_msgs.sh)")
    assert not missing, f"nothing received on {sorted(missing)}; child output:\n{out}"
    cloud, ego, boxes, traj, cmd, lights = exchange_values()
    for key in ("detected", "tracked"):
        b = received[key]
        np.testing.assert_allclose(b.center, boxes.center)
        np.testing.assert_allclose(b.velocity, boxes.velocity, atol=1e-9)
        np.testing.assert_array_equal(b.label, boxes.label)
    np.testing.assert_array_equal(received["tracked"].ids, boxes.ids)
    np.testing.assert_allclose(received["trajectory"].points, traj.points, atol=1e-6)
    c = received["control"]
    assert (c.steer, c.accel) == pytest.approx((cmd.steer, cmd.accel))
    assert [(x.id, x.state) for x in received["lights"]] == [(x.id, x.state) for x in lights]


if __name__ == "__main__":
    from adstack.node import run_node

    sys.exit(run_node(_make_publisher_node(sys.argv[1], bool(int(sys.argv[2])))))
