"""Tracking node: DetectedObjects (map frame) in, TrackedObjects out, one tracker step per message.

Every message is checked before the tracker sees it (a NaN would poison its Kalman filters for good):
oversized arrays, a wrong frame and repeated or older stamps are dropped, single non-finite or absurd
objects are removed; each kind of problem is logged once and counted on /diagnostics.
"""

from __future__ import annotations

from adstack.node import (Diagnostics, StageTimer, StalenessWatchdog, declare_params, now_s, param_file, reliable_qos,
                          run_node)
from adstack.node_io import MAX_OBJECTS, ReceivedCounter, StampGuard, check_sequence_length, clean_boxes, msg_class
from fusion.tracker import MultiObjectTracker, TrackerConfig

try:
    from rclpy.node import Node
except ImportError:  # documented: nodes need rclpy
    Node = object


class TrackingNode(Node):
    def __init__(self):
        super().__init__("tracker")
        self.params = declare_params(self, TrackerConfig, param_file("fusion", "tracker"))
        # Node-side settings that are not the tracker core's (TrackerConfig stays ROS-free).
        period_s = self.declare_parameter("diagnostics_period_s", 1.0).value
        self.input_timeout_s = float(self.declare_parameter("input_timeout_s", 0.5).value)  # 0: off
        self.core = MultiObjectTracker(self.params)
        self.diag = Diagnostics(self, "tracking", period_s=period_s)
        self.timer = StageTimer(self)
        self.order = StampGuard()
        self.received = ReceivedCounter(self.diag)
        self.pub = self.create_publisher(msg_class("TrackedObjects"), "output/objects", reliable_qos())
        self.create_subscription(msg_class("DetectedObjects"), "input/objects", self.on_objects, reliable_qos())
        self.watchdog = StalenessWatchdog({"objects": self.input_timeout_s}, start=now_s(self))
        self.reported_silence = False
        if self.input_timeout_s > 0:
            self.create_timer(min(0.1, self.input_timeout_s / 2), self.check_silence)

    def check_silence(self) -> None:
        """No detections (good or bad) for ``input_timeout_s``: reported once per silence, on /diagnostics."""
        if self.watchdog.stale(now_s(self)) and not self.reported_silence:
            self.reported_silence = True
            self.diag.problem("stale_input.objects", f"no detections for {self.input_timeout_s:g} s", level=2)

    def on_objects(self, msg) -> None:
        from adstack.ros_convert import MalformedMessage, boxes_from_objects, tracked_objects_to_msg
        self.received("objects")
        self.watchdog.feed("objects", now_s(self))
        self.reported_silence = False
        topic = "input/objects"
        try:
            check_sequence_length(msg, "objects", MAX_OBJECTS, topic)
            boxes, dropped = clean_boxes(boxes_from_objects(msg), topic)
        except MalformedMessage as exc:
            self.diag.problem(f"malformed_objects.{exc.kind}", str(exc), level=2)
            return
        except Exception as exc:  # a bad message is reported and dropped; the node keeps going
            self.diag.problem("malformed_objects", f"{type(exc).__name__}: {exc}", level=2)
            return
        if dropped:
            self.diag.problem("nonfinite_objects", f"{dropped} objects with NaN/Inf or absurd values dropped")
        order = self.order.check(boxes.stamp)
        if order in ("duplicate_stamp", "out_of_order_stamp"):
            self.diag.problem(order, f"objects stamped {boxes.stamp:.3f}, last {self.order.last:.3f}: dropped")
            return
        if order == "clock_jump_back":
            self.diag.problem("clock_jump_back", "stamps jumped back: a new run, tracks reset")
            self.core = MultiObjectTracker(self.params)
        with self.timer.measure(boxes.stamp):
            try:
                tracks = self.core.step(boxes, boxes.stamp)
            except Exception as exc:  # a core bug must not take the node down; start afresh
                self.diag.problem("tracker_failed", f"{type(exc).__name__}: {exc}", level=2)
                self.core = MultiObjectTracker(self.params)
                return
        tracks.frame_id = boxes.frame_id
        tracks.stamp = boxes.stamp
        self.pub.publish(tracked_objects_to_msg(tracks))
        self.diag.set_value("tracks", len(tracks))


def main(args=None) -> int:
    return run_node(TrackingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
