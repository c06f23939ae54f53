"""Lidar detection node: PointCloud2 (sensor frame) in, DetectedObjects (map frame) out.

Every cloud is validated at the boundary (field layout, truncation, NaN/Inf, empty, absurd size):
a bad one is reported on /diagnostics (each kind logged once) and dropped, never fatal; so are
repeated or older stamps and malformed kinematic states. Detections are placed in the map frame with
the kinematic state nearest in time to the cloud's stamp; a cloud newer than every kinematic state so
far waits for the next one (the two come on different topics, in either order), so the graph uses the
same pose as the in-process loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from adstack.node import (Diagnostics, StageTimer, StalenessWatchdog, declare_params, now_s, param_file, reliable_qos,
                          run_node, sensor_qos)
from adstack.node_io import receive_odometry, ReceivedCounter, StampGuard, msg_class

try:
    from rclpy.node import Node
except ImportError:
    Node = object


ODOMETRY_QOS_DEPTH = 50  # poses are matched to clouds by stamp: keep a few sweeps' worth


@dataclass
class LidarNodeConfig:
    enabled: bool = True  # false: the node runs but detects nothing (e.g. ground truth stands in)
    model: str = "default"  # default (shipped learned model, else classical) | classical | a model directory
    mount_x_m: float = 0.0
    mount_y_m: float = 0.0
    mount_z_m: float = 1.8
    mount_yaw_rad: float = 0.0
    max_points: int = 1_000_000  # more than this is garbage, not a sweep
    max_pose_age_s: float = 0.2  # a cloud with no kinematic state this close in time is dropped
    diagnostics_period_s: float = 1.0
    # true: subscribe to clouds reliably (bag replay, tests: every cloud, however big, arrives; a
    # best-effort sensor driver does not match it). false: best effort, as sensor data goes.
    reliable_input: bool = False
    input_timeout_s: float = 0.5  # node clock: no cloud this long -> stale_input.pointcloud (0: off)


class LidarDetectionNode(Node):
    def __init__(self):
        super().__init__("lidar_detector")
        self.params = declare_params(self, LidarNodeConfig, param_file("perception", "lidar_node"))
        self.diag = Diagnostics(self, "lidar detection", period_s=self.params.diagnostics_period_s)
        self.timer = StageTimer(self)
        self.poses = deque(maxlen=100)
        self.cloud_order = StampGuard()
        self.pose_order = StampGuard()
        self.received = ReceivedCounter(self.diag)
        self.waiting_cloud = None  # a cloud that came before the kinematic state of its stamp
        self.perception = None
        if self.params.enabled:
            from perception.pipeline import LidarPerception, make_detector
            p = self.params
            self.perception = LidarPerception(make_detector(p.model), (p.mount_x_m, p.mount_y_m, p.mount_z_m,
                                                                      p.mount_yaw_rad), track=False)
        self.pub = self.create_publisher(msg_class("DetectedObjects"), "output/objects", reliable_qos())
        if self.perception is not None:  # disabled: no subscriptions, so nobody sends it 2 MB clouds
            cloud_qos = reliable_qos() if self.params.reliable_input else sensor_qos()
            self.create_subscription(msg_class("PointCloud2"), "input/pointcloud", self.on_cloud, cloud_qos)
            # Reliable, as Autoware's /localization/kinematic_state: a lost pose costs a whole cloud.
            self.create_subscription(msg_class("Odometry"), "input/kinematic_state", self.on_odometry,
                                     reliable_qos(ODOMETRY_QOS_DEPTH))
            timeout = self.params.input_timeout_s
            self.watchdog = StalenessWatchdog({"pointcloud": timeout}, start=now_s(self))
            self.reported_silence = False
            if timeout > 0:
                self.create_timer(min(0.1, timeout / 2), self.check_silence)

    def on_odometry(self, msg) -> None:
        ego, jumped_back = receive_odometry(self, msg, self.pose_order, "odometry_")
        if ego is None:
            return
        if jumped_back:
            self.poses.clear()
        self.poses.append(ego)
        cloud = self.waiting_cloud
        if cloud is not None and ego.stamp >= cloud.stamp:
            self.waiting_cloud = None
            pose = self.pose_near(cloud.stamp)
            if pose is None:
                self.diag.problem("no_pose", "no kinematic state near the cloud's stamp: dropped")
            else:
                self.detect(cloud, pose)

    def check_silence(self) -> None:
        """No cloud (good or bad) for ``input_timeout_s``: reported once per silence, on /diagnostics."""
        if self.watchdog.stale(now_s(self)) and not self.reported_silence:
            self.reported_silence = True
            self.diag.problem("stale_input.pointcloud", f"no cloud for {self.params.input_timeout_s:g} s", level=2)

    def on_cloud(self, msg) -> None:
        from adstack.ros_convert import MalformedMessage, decode_pointcloud2
        self.received("pointcloud")
        self.watchdog.feed("pointcloud", now_s(self))
        self.reported_silence = False
        try:
            cloud, dropped = decode_pointcloud2(msg, max_points=self.params.max_points, allow_empty=True,
                                                topic="input/pointcloud")
        except MalformedMessage as exc:
            self.diag.problem(f"malformed_pointcloud.{exc.kind}", str(exc), level=2)
            return
        except Exception as exc:
            self.diag.problem("malformed_pointcloud", f"{type(exc).__name__}: {exc}", level=2)
            return
        if dropped:
            self.diag.problem("nonfinite_points", f"{dropped} NaN/Inf points dropped")
        newest = self.poses[-1].stamp if self.poses else -float("inf")
        if cloud.stamp > newest:  # the kinematic state of its stamp is still on its way (another topic)
            if self.waiting_cloud is not None:
                self.diag.problem("no_pose", "no kinematic state near the cloud's stamp: dropped")
            self.waiting_cloud = cloud
            return
        pose = self.pose_near(cloud.stamp)
        if pose is None:
            self.diag.problem("no_pose", "no kinematic state near the cloud's stamp: dropped")
            return
        self.detect(cloud, pose)

    def pose_near(self, stamp: float):
        pose = min(self.poses, key=lambda e: abs(e.stamp - stamp), default=None)
        if pose is None or abs(pose.stamp - stamp) > self.params.max_pose_age_s:
            return None
        return pose

    def detect(self, cloud, pose) -> None:
        from adstack.ros_convert import detected_objects_to_msg
        order = self.cloud_order.check(cloud.stamp)
        if order in ("duplicate_stamp", "out_of_order_stamp"):
            self.diag.problem(order, f"cloud stamped {cloud.stamp:.3f} after {self.cloud_order.last:.3f}: dropped")
            return
        if order == "clock_jump_back":
            self.diag.problem("clock_jump_back", "cloud stamps jumped back: a new run")
        with self.timer.measure(cloud.stamp):
            if len(cloud) == 0:
                from adstack.types import Boxes
                boxes = Boxes(frame_id="map", stamp=cloud.stamp)
                self.diag.problem("empty_cloud", "a cloud with no points: no detections")
            else:
                try:
                    boxes = self.perception.detect(cloud, pose)
                except Exception as exc:  # a detector bug must not take the node down
                    self.diag.problem("detector_failed", f"{type(exc).__name__}: {exc}", level=2)
                    return
        boxes.stamp = cloud.stamp
        self.pub.publish(detected_objects_to_msg(boxes))
        self.diag.set_value("detections", len(boxes))


def main(args=None) -> int:
    return run_node(LidarDetectionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
