"""`adstack viz --ros`: the live ROS 2 graph forwarded to a Foxglove client (DDS on this machine only)."""

import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from adstack import topics  # noqa: E402
from adstack.types import EgoState, PointCloud  # noqa: E402
from test_viz import FoxgloveClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_viz_ros_forwards_cloud_and_odometry(tmp_path):
    import rclpy

    from adstack import ros_convert as rc
    from adstack.node import reliable_qos, sensor_qos
    from adstack.node_io import msg_class

    port, domain = free_port(), random.Random(os.getpid() + 1).randint(100, 230)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    with open(tmp_path / "viz.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "adstack.cli", "viz", "--ros", "--port", str(port),
                                 "--domain-id", str(domain)], env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    client = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            try:
                client = FoxgloveClient(port)
            except OSError:
                assert proc.poll() is None, (tmp_path / "viz.log").read_text()
                assert time.monotonic() < deadline, "viz server did not start"
                time.sleep(0.2)
        channels = client.advertised()
        client.subscribe({1: channels[topics.LIDAR_POINTS]["id"], 2: channels["/tf"]["id"]})
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        rclpy.init(context=context, domain_id=domain)
        node = rclpy.create_node("viz_test_publisher", context=context)
        # A reliable cloud publisher (as the sim bridge) with 1.6 MB clouds, which a best-effort
        # subscription would mostly lose; best-effort odometry (as a driver), which it must still match.
        cloud_pub = node.create_publisher(msg_class("PointCloud2"), topics.LIDAR_POINTS, reliable_qos(2))
        odom_pub = node.create_publisher(msg_class("Odometry"), topics.KINEMATIC_STATE, sensor_qos())
        points = np.arange(400_000, dtype=np.float32).reshape(-1, 4)
        client.sock.settimeout(0.2)
        got: dict[int, bytes] = {}
        deadline = time.monotonic() + 30
        k = 0
        while len(got) < 2:   # publish until both arrive: DDS discovery takes a second or two
            assert time.monotonic() < deadline, f"nothing forwarded; viz log: {(tmp_path / 'viz.log').read_text()[-500:]}"
            k += 1
            cloud_pub.publish(rc.pointcloud_to_msg(PointCloud(points, "lidar", 1.0 + 0.1 * k)))
            odom_pub.publish(rc.odometry_to_msg(EgoState(3.0, 4.0, 0.5, stamp=1.0 + 0.1 * k)))
            try:
                for sub, _, payload in client.messages(1):
                    got[sub] = payload
            except (TimeoutError, socket.timeout):
                pass
        assert points.tobytes() in got[1]
        assert b"base_link" in got[2]
        node.destroy_node()
    finally:
        context.try_shutdown()
        if client is not None:
            client.close()
        proc.terminate()
        proc.wait(10)
