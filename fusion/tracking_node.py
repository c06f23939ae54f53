"""Tracking node: DetectedObjects (map frame) in, TrackedObjects out, one tracker step per message."""

from __future__ import annotations

from adstack.node import Diagnostics, StageTimer, declare_params, param_file, reliable_qos, run_node
from adstack.node_io import msg_class
from fusion.tracker import MultiObjectTracker, TrackerConfig

try:
    from rclpy.node import Node
except ImportError:  # documented: nodes need rclpy
    Node = object


class TrackingNode(Node):
    def __init__(self):
        super().__init__("tracker")
        self.params = declare_params(self, TrackerConfig, param_file("fusion", "tracker"))
        self.core = MultiObjectTracker(self.params)
        self.diag = Diagnostics(self, "tracking")
        self.timer = StageTimer(self)
        self.last_stamp = None
        self.pub = self.create_publisher(msg_class("TrackedObjects"), "output/objects", reliable_qos())
        self.create_subscription(msg_class("DetectedObjects"), "input/objects", self.on_objects, reliable_qos())

    def on_objects(self, msg) -> None:
        from adstack.ros_convert import boxes_from_objects, tracked_objects_to_msg
        try:
            boxes = boxes_from_objects(msg)
        except Exception as exc:  # a bad message is reported and dropped; the node keeps going
            self.diag.problem("malformed_objects", f"{type(exc).__name__}: {exc}", level=2)
            return
        if self.last_stamp is not None and boxes.stamp <= self.last_stamp:
            kind = "duplicate_stamp" if boxes.stamp == self.last_stamp else "out_of_order_stamp"
            self.diag.problem(kind, f"objects stamped {boxes.stamp:.3f} after {self.last_stamp:.3f}: dropped")
            return
        self.last_stamp = boxes.stamp
        with self.timer.measure(boxes.stamp):
            tracks = self.core.step(boxes, boxes.stamp)
        tracks.frame_id = boxes.frame_id
        tracks.stamp = boxes.stamp
        self.pub.publish(tracked_objects_to_msg(tracks))
        self.diag.set_value("tracks", len(tracks))


def main(args=None) -> int:
    return run_node(TrackingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
