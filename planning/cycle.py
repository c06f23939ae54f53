"""The planning node's rules without ROS: ``PlanningCycle``.

The node (planning/planning_node.py) and the replay's in-process stack (sim/replay.py) both run
their inputs through this one class, so the two cannot drift apart:
- objects: cleaned (``clean_boxes``); an out-of-order stamp is dropped;
- light states: an out-of-order stamp is dropped;
- a kinematic state opens a planning cycle when it starts a new period of ``planner_hz`` on the
  sensor-time grid (a clock that jumps back starts afresh);
- a cycle plans on the latest objects and light states, behind the safety layer. Objects older than
  ``objects_timeout_s`` (sensor time), a planner that raises or a safety layer that raises give a
  controlled stop. Each trajectory is stamped with the kinematic state it was planned from.

Problems go to ``report(kind, message, level)``: the node counts them on /diagnostics, the replay
in its report. What the node alone has (decoding messages, the wall-clock watchdog, lockstep
waiting) stays in the node.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from adstack.node_io import MalformedMessage, StampGuard, clean_boxes, new_period
from adstack.types import Boxes, EgoState, TrafficLight

Report = Callable[..., None]  # report(kind, message, level=1)


class PlanningCycle:
    def __init__(self, planner, safety, planner_hz: float, objects_timeout_s: float, report: Report):
        self.planner = planner  # None: no route (every cycle is a controlled stop)
        self.safety = safety
        self.period_s = 1.0 / planner_hz
        self.objects_timeout_s = objects_timeout_s
        self.report = report
        self.objects: Boxes | None = None
        self.objects_stamp = -np.inf
        self.lights: list[TrafficLight] = []
        self.lights_stamp = -np.inf
        self.last_plan_stamp = -np.inf
        self.last_good = None  # the last proposal the safety layer let through (its fallback)
        self.objects_order, self.lights_order = StampGuard(), StampGuard()

    def on_objects(self, boxes: Boxes, topic: str = "input/objects") -> bool:
        """Take tracked objects; False if they were dropped."""
        try:
            boxes, dropped = clean_boxes(boxes, topic)
        except MalformedMessage as exc:
            self.report(f"malformed_objects.{exc.kind}", str(exc), level=2)
            return False
        if dropped:
            self.report("nonfinite_objects", f"{dropped} objects with NaN/Inf or absurd values dropped")
        order = self.objects_order.check(boxes.stamp)
        if order == "out_of_order_stamp":
            self.report("objects_out_of_order_stamp", "objects older than the last ones: dropped")
            return False
        if order == "clock_jump_back":
            self.report("objects_clock_jump_back", "object stamps jumped back: a new run")
        # A repeated stamp is harmless here (the same objects again): keep the newer copy.
        self.objects, self.objects_stamp = boxes, boxes.stamp
        return True

    def on_lights(self, lights: list[TrafficLight], stamp: float) -> bool:
        """Take light states (already tied to the map's lights); False if they were dropped."""
        order = self.lights_order.check(stamp)
        if order == "out_of_order_stamp":
            self.report("traffic_signals_out_of_order_stamp", "light states older than the last ones: dropped")
            return False
        if order == "clock_jump_back":
            self.report("traffic_signals_clock_jump_back", "light state stamps jumped back: a new run")
        self.lights, self.lights_stamp = lights, stamp
        return True

    def cycle_due(self, ego: EgoState, jumped_back: bool = False) -> bool:
        """Whether this (accepted) kinematic state opens a planning cycle; if so it is marked planned."""
        if jumped_back:
            self.last_plan_stamp, self.last_good = -np.inf, None
        if not new_period(ego.stamp, self.last_plan_stamp, self.period_s):
            return False
        self.last_plan_stamp = ego.stamp
        return True

    def plan(self, ego: EgoState, stale: list[str] | None = None):
        """(trajectory stamped ``ego.stamp``, the safety layer's status) for this state."""
        stale = list(stale or [])
        if ego.stamp - self.objects_stamp > self.objects_timeout_s:
            stale.append("objects")
        proposal = None
        if self.planner is not None and not stale:
            try:
                proposal = self.planner.step(ego, self.objects, self.lights, ego.stamp)
            except Exception as exc:
                self.report("planner_failed", f"{type(exc).__name__}: {exc}", level=2)
        try:
            traj, status = self.safety.check(ego, proposal, self.objects if not stale else None, ego.stamp, stale,
                                             self.last_good)
        except Exception as exc:  # the safety layer itself failed: the plainest stop there is
            self.report("safety_failed", f"{type(exc).__name__}: {exc}", level=2)
            traj, status = self.safety.minimal_risk(ego, None, ego.stamp, "safety layer failed")
        if proposal is not None and status.action != "minimal_risk_stop":
            self.last_good = proposal
        traj.stamp = ego.stamp
        return traj, status
