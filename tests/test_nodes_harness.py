"""Harness for the tests against real running stage nodes (tests/test_nodes_*.py, test_fuzz_nodes.py),
and tests of the harness itself.

:class:`NodeProcess` starts a node of launch/graph.yaml as its own process, exactly as ``adstack launch``
does (the module, its parameter file, its remappings, ``-p`` overrides), on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) and a test-unique ``ROS_DOMAIN_ID``. :class:`Probe` is the
test side: one rclpy node in its own context that publishes inputs, collects outputs and keeps the
latest ``/diagnostics`` status of every node.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from adstack import ros_convert as rc  # noqa: E402
from adstack.launch_graph import all_nodes  # noqa: E402
from adstack.launch_runner import DOMAIN_ID_RANGE, domain_in_use, free_domain_id, node_command  # noqa: E402
from adstack.types import Boxes, EgoState, PointCloud, Trajectory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0  # a node's imports and set-up on a loaded 2-core machine


def autoware_available() -> bool:
    try:
        import autoware_control_msgs.msg  # noqa: F401
        import autoware_perception_msgs.msg  # noqa: F401
        import autoware_planning_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


needs_autoware = pytest.mark.skipif(not autoware_available(),
                                    reason="Autoware messages not built for rclpy (scripts/build_msgs.sh)")


def domain_id_for(name: str) -> int:
    """A ROS_DOMAIN_ID per test module and process that no other node on this machine is using, so
    parallel runs (other modules, other people's tests) do not hear each other."""
    return free_domain_id(random.Random(f"{name}:{os.getpid()}"))


def ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class NodeProcess:
    """A node of launch/graph.yaml in its own process; its console output goes to ``log_path``."""

    def __init__(self, name: str, domain_id: int, log_path: Path, params: dict | None = None):
        spec = {n.name: n for n in all_nodes()}[name]
        self.name = name
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(node_command(spec, params or {}), cwd=REPO, env=ros_env(domain_id),
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines_with(self, text: str) -> list[str]:
        return [line for line in self.log().splitlines() if text in line]

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGINT (what ``adstack launch`` and ``ros2 launch`` send) and wait; kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Probe:
    """The test side: publishers for inputs, collectors for outputs, the latest /diagnostics per node."""

    def __init__(self, domain_id: int, name: str = "probe"):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read by rcl at init
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.diagnostics: dict[str, object] = {}  # node name -> latest DiagnosticStatus
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            self.diagnostics[status.name.split(":")[0]] = status

    def publisher(self, msg_type, topic: str, qos=None):
        from adstack.node import reliable_qos
        return self.node.create_publisher(msg_type, topic, qos or reliable_qos(depth=50))

    def collect(self, msg_type, topic: str, qos=None) -> list:
        """Subscribe; the returned list fills with the messages as they arrive."""
        from adstack.node import reliable_qos
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos or reliable_qos(depth=1000))
        return received

    def spin_until(self, predicate, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return bool(predicate())

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def wait_matched(self, publisher, count: int = 1, timeout_s: float = START_TIMEOUT_S) -> bool:
        return self.spin_until(lambda: publisher.get_subscription_count() >= count, timeout_s)

    def wait_diagnostics(self, node_name: str, timeout_s: float = START_TIMEOUT_S) -> bool:
        return self.spin_until(lambda: node_name in self.diagnostics, timeout_s)

    def values(self, node_name: str) -> dict[str, str]:
        status = self.diagnostics.get(node_name)
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def counts(self, node_name: str) -> dict[str, int]:
        return {k[len("count."):]: int(v) for k, v in self.values(node_name).items() if k.startswith("count.")}

    def wait_count(self, node_name: str, kind: str, at_least: int = 1, timeout_s: float = 30.0) -> bool:
        return self.spin_until(lambda: self.counts(node_name).get(kind, 0) >= at_least, timeout_s)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# ---------------------------------------------------------------------------------------------
# Good inputs


def odometry(x: float, y: float, yaw: float, v: float, stamp: float):
    return rc.odometry_to_msg(EgoState(x=x, y=y, yaw=yaw, v=v, stamp=stamp))


def synthetic_cloud_points(seed: int = 0) -> np.ndarray:
    """Ground 1.8 m below the sensor and the two visible faces (an L) of a car 8-12.5 m ahead:
    the classical detector finds one vehicle centred near (10.25, 0) in the sensor frame."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(-30, 30, 0.5), np.arange(-30, 30, 0.5))
    ground = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, -1.8), np.full(gx.size, 0.2)])
    n = 600
    face = np.column_stack([np.full(n, 8.0), rng.uniform(-0.9, 0.9, n), rng.uniform(-1.5, -0.3, n)])
    side = np.column_stack([rng.uniform(8.0, 12.5, n), np.full(n, -0.9), rng.uniform(-1.5, -0.3, n)])
    car = np.column_stack([np.vstack([face, side]), np.full(2 * n, 0.5)])
    return np.vstack([ground, car]).astype(np.float32)


def cloud_msg(points: np.ndarray, stamp: float):
    return rc.pointcloud_to_msg(PointCloud(points, "lidar", stamp))


def boxes(n: int, stamp: float, x0: float = 20.0, frame_id: str = "map", seed: int = 0) -> Boxes:
    rng = np.random.default_rng(seed)
    center = np.column_stack([x0 + 8.0 * np.arange(n), rng.uniform(-3, 3, n), np.zeros(n)])
    return Boxes(center, np.tile([4.5, 1.9, 1.6], (n, 1)), np.zeros(n), np.ones(n, np.int32), np.full(n, 0.9),
                 np.tile([5.0, 0.0], (n, 1)), np.arange(n), frame_id, stamp)


def straight_trajectory(x: float, y: float, v: float, stamp: float, n: int = 40) -> Trajectory:
    s = np.arange(n) * 1.0
    t = s / max(v, 0.1)
    return Trajectory(np.column_stack([x + s, np.full(n, y), np.zeros(n), np.full(n, v), t]), "map", stamp)


# ---------------------------------------------------------------------------------------------
# Tests of the harness itself


def test_a_free_domain_is_free_and_a_used_one_is_seen(tmp_path):
    domain = domain_id_for(__name__ + ".free")
    assert DOMAIN_ID_RANGE[0] <= domain <= DOMAIN_ID_RANGE[1]
    assert not domain_in_use(domain)
    probe = Probe(domain, name="occupant")
    try:
        assert domain_in_use(domain)
    finally:
        probe.close()


def test_synthetic_cloud_gives_one_vehicle():
    pytest.importorskip("numba")
    from perception.classical import ClassicalDetector

    found = ClassicalDetector().detect(synthetic_cloud_points())
    assert len(found) == 1 and abs(found.center[0, 0] - 10.25) < 1.0 and abs(found.center[0, 1]) < 1.0


@needs_autoware
def test_a_node_process_starts_reports_and_stops_cleanly(tmp_path):
    """The smallest round trip: a stage node comes up, reports on /diagnostics, exits 0 on SIGINT."""
    domain = domain_id_for(__name__)
    node = NodeProcess("tracker", domain, tmp_path / "tracker.log", {"diagnostics_period_s": 0.2})
    probe = Probe(domain)
    try:
        assert probe.wait_diagnostics("tracker"), node.log()
        assert node.alive()
    finally:
        code = node.stop()
        probe.close()
    assert code == 0, node.log()
