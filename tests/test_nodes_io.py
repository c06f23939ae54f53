"""The ROS-free input checks every stage node applies (adstack/node_io.py)."""

from __future__ import annotations

import numpy as np
import pytest

from adstack.node_io import (StampGuard, check_ego, check_trajectory, check_traffic_signals, clean_boxes,
                             new_period)
from adstack.ros_convert import MalformedMessage
from adstack.types import Boxes, EgoState, Trajectory


def test_stamp_guard_orders_and_resets_on_a_jump_back():
    guard = StampGuard(reset_after_s=5.0)
    assert [guard.check(t) for t in (1.0, 1.1, 1.1, 1.05, 1.2)] == [
        "ok", "ok", "duplicate_stamp", "out_of_order_stamp", "ok"]
    assert guard.check(1e6) == "ok"  # a stamp from the future is accepted once ...
    assert guard.check(2.0) == "clock_jump_back"  # ... and does not block the real ones after it
    assert guard.check(2.1) == "ok"


def test_planning_grid_survives_a_missed_cycle_and_float_sums():
    assert new_period(0.05, -np.inf, 0.1)  # the first one plans, wherever it falls
    assert new_period(0.1, 0.05, 0.1) and not new_period(0.15, 0.1, 0.1)  # back on the grid at once
    t = 0.0
    for _ in range(6):
        t += 0.05  # 0.30000000000000004
    assert new_period(t, 0.2, 0.1)
    assert new_period(0.299999999, 0.2, 0.1)  # 0.3 s after a round trip through nanoseconds


def test_check_ego_rejects_nonfinite_and_absurd_states():
    check_ego(EgoState(x=1.0, y=2.0, yaw=0.1, v=3.0))
    for bad, kind in ((EgoState(np.nan, 0.0, 0.0), "nonfinite"), (EgoState(0.0, 0.0, 0.0, v=np.inf), "nonfinite"),
                      (EgoState(1e9, 0.0, 0.0), "out_of_range"), (EgoState(0.0, 0.0, 0.0, v=500.0), "out_of_range")):
        with pytest.raises(MalformedMessage) as err:
            check_ego(bad)
        assert err.value.kind == kind


def test_clean_boxes_drops_only_the_bad_objects_and_refuses_a_wrong_frame():
    b = Boxes([[1, 2, 0], [np.nan, 0, 0], [5, 5, 0], [1e9, 0, 0]], [[4, 2, 1.5], [4, 2, 1.5], [4, -1, 1.5], [4, 2, 1.5]],
              [0, 0, 0, 0], [1, 1, 1, 1], None, None, [7, 8, 9, 10], "map", 3.0)
    kept, dropped = clean_boxes(b)
    assert dropped == 3 and kept.ids.tolist() == [7] and kept.stamp == 3.0
    with pytest.raises(MalformedMessage, match="wrong_frame"):
        clean_boxes(Boxes(frame_id="base_link"))


def test_check_trajectory_and_traffic_signals():
    good = Trajectory(np.zeros((3, 5)), "map", 1.0)
    check_trajectory(good)
    bad = Trajectory(np.full((3, 5), np.nan), "map", 1.0)
    with pytest.raises(MalformedMessage, match="nonfinite"):
        check_trajectory(bad)
    pytest.importorskip("autoware_perception_msgs.msg")
    from autoware_perception_msgs.msg import TrafficLightElement, TrafficLightGroup, TrafficLightGroupArray

    def lights(**element):
        return TrafficLightGroupArray(traffic_light_groups=[TrafficLightGroup(
            traffic_light_group_id=3, elements=[TrafficLightElement(**{"color": 1, "shape": 5, "status": 16,
                                                                       "confidence": 1.0, **element})])])
    check_traffic_signals(lights())
    for element, kind in (({"color": 9}, "unknown_value"), ({"status": 3}, "unknown_value"),
                          ({"confidence": float("nan")}, "bad_confidence")):
        with pytest.raises(MalformedMessage) as err:
            check_traffic_signals(lights(**element))
        assert err.value.kind == kind
