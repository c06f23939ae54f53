"""Hand-computed cases for every Leaderboard scoring rule (sim/scoring.py, sim/infractions.py).

Geometry used throughout: a straight two-lane road along +x. Lane A (key ("r", -1)) has its centre
on y = 0 and runs along +x; lane B (key ("r", 1)) has its centre on y = 3.5 and runs along -x;
both 3.5 m wide. Routes run along lane A and are sampled every 1 m, so route point i sits at x = i;
the car at x = k + 0.5 is ahead of points 0..k.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adstack.types import Boxes, EgoState, LightState, ObjectClass, TrafficLight
from sim.infractions import (
    CollisionMonitor, RoutePath, rectangles_overlap, box_corners, segments_intersect,
)
from sim.scoring import (
    LB1, LB2, InfractionEvent, LaneSample, RouteResult, RouteScorer, StopLine, StopSign,
    global_record, infraction_penalty, results_json, route_record, variant_by_name, write_results_json,
)

LANE_W = 3.5
EGO_BOX = (4.0, 2.0)


def two_lane_road(x: float, y: float) -> LaneSample:
    if abs(y - 0.0) <= abs(y - 3.5):
        return LaneSample(("r", -1), x, 0.0, 0.0, LANE_W, False)
    return LaneSample(("r", 1), x, 3.5, math.pi, LANE_W, False)


def straight_route(length: float) -> np.ndarray:
    return np.array([[0.0, 0.0], [length, 0.0]])


def make(length=100.0, variant=LB2, **kw) -> RouteScorer:
    kw.setdefault("lane_of", two_lane_road)
    return RouteScorer(straight_route(length), variant, start_t=0.0, **kw)


def drive(scorer, xs, y=0.0, v=5.0, t0=0.0, dt=0.5, yaw=0.0, **kw):
    """One tick per x; ``y`` and ``v`` may be callables of x. Returns the last tick time."""
    t = t0
    for i, x in enumerate(xs):
        t = t0 + i * dt
        yy = y(x) if callable(y) else y
        vv = v(x) if callable(v) else v
        scorer.update(t, EgoState(x=float(x), y=float(yy), yaw=yaw, v=float(vv)), EGO_BOX, **kw)
    return t


def xs(a, b):
    """x = a+0.5, a+1.5, ..., b+0.5 (ticks between route points)."""
    return np.arange(a, b + 1) + 0.5


# ----------------------------------------------------------------------------- variants, penalties


def test_variant_constants_are_the_leaderboards():
    assert variant_by_name("1.0") is LB1 and variant_by_name("LB2") is LB2 and variant_by_name("2") is LB2
    with pytest.raises(ValueError):
        variant_by_name("3.0")
    for v in (LB1, LB2):  # same fixed penalties in both (statistics_manager.py)
        assert (v.penalty_collision_pedestrian, v.penalty_collision_vehicle, v.penalty_collision_layout,
                v.penalty_red_light, v.penalty_stop_sign) == (0.5, 0.6, 0.65, 0.7, 0.8)
    assert LB1.penalty_scenario_timeout is None and LB2.penalty_scenario_timeout == 0.7
    assert LB2.penalty_yield_emergency_vehicle == 0.7 and LB2.min_speed_base == 0.7
    assert "min_speed_infractions" not in LB1.infraction_keys and "scenario_timeouts" in LB2.infraction_keys


def ev(key, value=None):
    return InfractionEvent(key, 0.0, 0.0, 0.0, key, value=value)


def test_penalty_product_lb1():
    events = [ev("collisions_pedestrian"), ev("collisions_vehicle"), ev("collisions_layout"),
              ev("red_light"), ev("stop_infraction"), ev("outside_route_lanes", 20.0)]
    # 0.5 * 0.6 * 0.65 * 0.7 * 0.8 * (1 - 0.2)
    assert infraction_penalty(events, LB1) == pytest.approx(0.087360)
    # route-ending events carry no penalty
    assert infraction_penalty([ev("route_dev"), ev("vehicle_blocked"), ev("route_timeout")], LB1) == 1.0


def test_penalty_product_lb2_adds_scenario_events_and_min_speed():
    events = [ev("collisions_vehicle"), ev("scenario_timeouts"), ev("yield_emergency_vehicle_infractions"),
              ev("min_speed_infractions", 60.0)]
    # 0.6 * 0.7 * 0.7 * (1 - 0.3 * (1 - 0.6)) = 0.294 * 0.88
    assert infraction_penalty(events, LB2) == pytest.approx(0.25872)
    assert infraction_penalty([ev("min_speed_infractions", 100.0)], LB2) == pytest.approx(1.0)
    assert infraction_penalty([ev("min_speed_infractions", 0.0)], LB2) == pytest.approx(0.7)


# ----------------------------------------------------------------------------- route completion


def test_route_path_resamples_every_metre():
    rp = RoutePath.from_polyline([[0, 0], [10, 0], [10, 5.5]], lane_keys=["a", "b", "c"])
    assert len(rp) == 17  # 0..15 m plus the 15.5 m end point
    assert rp.length_m == pytest.approx(15.5)
    assert np.allclose(rp.xy[12], [10, 2])
    assert np.allclose(rp.tangent[3], [1, 0]) and np.allclose(rp.tangent[12], [0, 1])
    assert rp.lane_keys[3] == "a" and rp.lane_keys[12] == "b"
    with pytest.raises(ValueError):
        RoutePath.from_polyline([[0, 0]])
    with pytest.raises(ValueError):
        RoutePath.from_polyline([[0, 0], [0, 0]])


def test_completion_counts_points_the_car_is_ahead_of():
    s = make(100.0)
    drive(s, xs(0, 50))  # last tick x = 50.5: ahead of point 50
    assert s.route_completion == 50.0
    r = s.result()
    assert r.status == "Failed" and r.route_completion == 50.0 and r.driving_score == 50.0


def test_completion_is_window_limited():
    s = make(100.0)
    drive(s, [0.5, 40.5])  # a jump: only points up to index 0+2 can be checked
    assert s.route_completion == 2.0


def test_completion_snaps_to_100_above_99_percent_within_10_m():
    s = make(250.0)
    drive(s, xs(0, 248))  # 248/250 = 99.2 % and 1.5 m from the end
    assert s.done
    r = s.result()
    assert r.route_completion == 100.0 and r.status == "Perfect" and r.driving_score == 100.0
    assert LB1 is not None
    s1 = make(250.0, variant=LB1)
    drive(s1, xs(0, 248))
    assert s1.result().status == "Completed"  # LB1 has no 'Perfect'; 124 s < int(0.8 * 250 + 5)


def test_completion_does_not_snap_farther_than_10_m():
    s = make(2000.0, variant=LB1)
    drive(s, xs(0, 1985), dt=0.1)  # 99.25 % but 14.5 m from the end
    assert not s.done
    assert s.route_completion == pytest.approx(99.25)


# ----------------------------------------------------------------------------- route-ending rules


def test_route_deviation_beyond_30_m_ends_route_with_frozen_completion():
    s = make(100.0)
    drive(s, xs(0, 40))
    # nearest route point 31 m away; x = 40.9 passes no new point (so no outside-lanes metre either)
    s.update(41.0, EgoState(x=40.9, y=31.0, yaw=0.0, v=5.0), EGO_BOX)
    assert s.done
    drive(s, xs(42, 100), t0=42.0)  # ignored after the end
    r = s.result()
    assert r.status == "Failed - Agent deviated from the route"
    assert r.route_completion == 40.0
    assert len(r.infractions["route_dev"]) == 1 and r.infraction_penalty == 1.0


def test_route_deviation_by_driving_too_much_of_the_route_unsafely():
    # 20 m beside the route is 'unsafe' (over 15 m); more than 30 % of 100 m that way is a deviation.
    # At x = k + 0.5 the nearest of two equidistant points is the later one (k + 1), so the
    # unsafe length after that tick is k + 1 metres: > 30 first at k = 30.
    s = make(100.0)
    drive(s, xs(0, 60), y=20.0)
    r = s.result()
    assert r.status == "Failed - Agent deviated from the route"
    assert r.route_completion == 30.0
    ok = make(100.0)
    drive(ok, xs(0, 60), y=14.0)
    assert not ok.done


def test_agent_blocked_after_180_s_below_0_1_mps():
    s = make(1000.0, variant=LB1)
    drive(s, xs(0, 10), dt=1.0)  # t = 0..10 moving
    t = drive(s, [10.6] * 182, v=0.05, t0=11.0, dt=1.0)  # t = 11..192 standing
    r = s.result()
    assert r.status == "Failed - Agent got blocked"
    assert r.infractions["vehicle_blocked"][0].t == 191.0  # 191 - 10 > 180; 190 - 10 is not
    assert r.route_completion == pytest.approx(1.0)  # 10 of 1000 m
    assert t == 192.0


def test_blocked_check_can_be_switched_off_in_lb2():
    s = make(1000.0)
    drive(s, xs(0, 2))
    s.set_blocked_check_active(False, 3.0)
    drive(s, [2.6] * 200, v=0.0, t0=3.0)
    assert not s.done


def test_route_timeout_lb1_is_0_8_s_per_metre_plus_5():
    s = make(100.0, variant=LB1)  # int(0.8 * 100 + 5) = 85 s
    assert s.timeout.budget_s == 85.0
    drive(s, [5.5] * 90, v=1.0, dt=1.0)  # t = 0..89, holding position at 'speed'
    r = s.result()
    assert r.status == "Failed - Agent timed out"
    assert r.infractions["route_timeout"][0].t == 86.0
    assert [e.message for e in r.infractions["route_timeout"]] == ["Route timeout."]
    assert r.route_completion == 5.0


def test_route_timeout_lb2_grows_with_progress_at_10_percent_of_speed_limit():
    s = make(100.0, speed_limit_mps=10.0)  # 1 s per metre advanced, on top of 300 s
    drive(s, xs(0, 20), dt=1.0)  # t = 0..20; the car is ahead of point 20
    assert s.timeout.budget_s == pytest.approx(320.0)
    drive(s, [20.5] * 310, v=1.0, t0=21.0, dt=1.0)
    r = s.result()
    assert r.status == "Failed - Agent timed out" and r.infractions["route_timeout"][0].t == 321.0
    assert r.num_infractions == 1


# ----------------------------------------------------------------------------- collisions


def test_rectangle_overlap_and_segment_intersection():
    ego = box_corners(0, 0, 0, 4, 2)
    others = np.stack([box_corners(3.9, 0, 0, 4, 2), box_corners(4.1, 0, 0, 4, 2),
                       box_corners(1.9, 1.8, math.pi / 4, 2, 2), box_corners(3.5, 2.0, math.pi / 4, 2, 2)])
    assert rectangles_overlap(ego, others).tolist() == [True, False, True, False]
    assert segments_intersect((0, 0), (2, 0), (1, -1), (1, 1))
    assert segments_intersect((0, 0), (2, 0), (2, -1), (2, 1))  # touching
    assert not segments_intersect((0, 0), (2, 0), (2.1, -1), (2.1, 1))


V, P, S = int(ObjectClass.VEHICLE), int(ObjectClass.PEDESTRIAN), int(ObjectClass.STATIC)


def test_collision_dedup_lb1_same_actor_5_s_and_3_m_spots():
    m = CollisionMonitor(LB1)
    assert m.contact(0.0, 0.0, 0.0, 2.0, 5, V).key == "collisions_vehicle"
    assert m.contact(1.0, 0.5, 0.0, 2.0, 5, V) is None  # same actor
    assert m.contact(1.0, 1.0, 0.0, 2.0, 6, P) is None  # within 3 m of the first spot
    m.forget(2.0, 4.0, 0.0)
    assert m.contact(2.0, 4.0, 0.0, 2.0, 6, P).key == "collisions_pedestrian"  # 4 m > 3 m
    m.forget(8.0, 20.0, 0.0)  # spots 16 and 20 m away are forgotten; 6 s > 5 s forgets actor 6
    assert m.spots == [] and m.last_id is None
    assert m.contact(8.0, 20.0, 0.0, 2.0, 6, P).key == "collisions_pedestrian"
    assert m.contact(15.0, 30.0, 0.0, 2.0, 0, S).key == "collisions_layout"  # 10 m from spot (20, 0)


def test_collision_scenery_and_unknown_lb1():
    m = CollisionMonitor(LB1)
    assert m.contact(0.0, 30.0, 0.0, 2.0, 0, S).key == "collisions_layout"
    assert m.last_id is None
    assert m.contact(0.1, 30.5, 0.0, 2.0, 0, S) is None  # 0.5 m from the spot
    m.forget(0.2, 34.0, 0.0)
    assert m.contact(0.2, 34.0, 0.0, 2.0, 0, S).key == "collisions_layout"  # 4 m from the spot
    assert m.contact(0.3, 40.0, 0.0, 2.0, 9, int(ObjectClass.UNKNOWN)) is None  # untyped: ignored
    assert m.last_id is None  # ... and not registered
    m.forget(0.4, 50.0, 0.0)
    assert m.contact(0.4, 50.0, 0.0, 2.0, -1, V).key == "collisions_vehicle"  # actor without an id
    m.forget(0.5, 54.0, 0.0)
    assert m.contact(0.5, 54.0, 0.0, 2.0, -1, V).key == "collisions_vehicle"  # not taken for 'the same'


def test_collision_dedup_lb2_radius_5_and_not_at_fault_when_stopped():
    m = CollisionMonitor(LB2)
    assert m.contact(0.0, 0.0, 0.0, 0.05, 5, V) is None  # car standing: not its fault
    assert m.contact(0.1, 0.0, 0.0, 2.0, 5, V).key == "collisions_vehicle"
    assert m.contact(0.2, 4.0, 0.0, 2.0, 6, P) is None  # within 5 m of the last spot
    m.forget(0.3, 5.5, 0.0)
    assert m.contact(0.3, 5.5, 0.0, 2.0, 6, P).key == "collisions_pedestrian"
    m.forget(3.0, 11.0, 0.0)
    assert m.contact(3.0, 11.0, 0.0, 2.0, 6, P) is None  # same actor within 5 s
    m.forget(5.4, 11.0, 0.0)  # 5.1 s > 5 s since t = 0.3: actor 6 forgotten
    assert m.last_id is None
    assert m.contact(5.4, 11.0, 0.0, 2.0, 6, P).key == "collisions_pedestrian"


def test_collisions_from_boxes_are_typed_and_counted_once():
    actors = Boxes(center=[[12.0, 0.0, 0.0], [40.0, 1.0, 0.0], [70.0, 0.0, 0.0]],
                   size=[[4.0, 2.0, 1.5], [0.6, 0.6, 1.8], [4.0, 2.0, 1.5]], yaw=[0.0, 0.0, 0.0],
                   label=[V, P, V], ids=[11, 12, 99])
    scenery = Boxes(center=[[60.0, -1.5, 0.0]], size=[[1.0, 1.0, 3.0]], yaw=[0.0], label=[S])
    s = make(100.0, ego_id=99)  # actor 99 is the ego itself
    drive(s, xs(0, 100), actors=actors, static_boxes=scenery)
    r = s.result()
    assert [e.other_id for e in r.infractions["collisions_vehicle"]] == [11]
    assert [e.other_id for e in r.infractions["collisions_pedestrian"]] == [12]
    assert [e.other_id for e in r.infractions["collisions_layout"]] == [0]
    assert r.infraction_penalty == pytest.approx(0.6 * 0.5 * 0.65)
    assert r.status == "Completed" and r.driving_score == pytest.approx(100 * 0.195)
    # first contact: ego front (x + 2) reaches the vehicle's back (10) at x = 8 -> tick x = 8.5
    assert r.infractions["collisions_vehicle"][0].t == 8 * 0.5


# ----------------------------------------------------------------------------- outside route lanes


def test_outside_lanes_counts_wrong_direction_lane_metres():
    # lane B (opposite direction) for ticks x = 20.5 .. 39.5: route points 20..39 = 20 m of 100
    s = make(100.0, variant=LB1)
    drive(s, xs(0, 100), y=lambda x: 3.5 if 20 < x < 40 else 0.0)
    r = s.result()
    (e,) = r.infractions["outside_route_lanes"]
    assert e.value == pytest.approx(20.0) and e.distance_m == pytest.approx(20.0)
    assert r.infraction_penalty == pytest.approx(0.8)
    assert e.message == "Agent went outside its route lanes for about 20.0 meters (20.0% of the completed route)"


def test_outside_lanes_allowance_differs_lb1_lb2():
    # 2.4 m off the lane A centre: > 1.75 + 0.5 (LB2) but not > 1.75 + 1.3 (LB1); 10 route metres
    y = lambda x: -2.4 if 10 < x < 20 else 0.0
    s1, s2 = make(100.0, variant=LB1), make(100.0, variant=LB2)
    drive(s1, xs(0, 100), y=y)
    drive(s2, xs(0, 100), y=y)
    assert s1.result().infractions["outside_route_lanes"] == []
    r2 = s2.result()
    assert r2.infractions["outside_route_lanes"][0].value == pytest.approx(10.0)
    assert r2.infraction_penalty == pytest.approx(0.9) and r2.status == "Completed"


def test_outside_lanes_junction_exit_uses_vehicle_yaw():
    # a junction piece at 30 < x < 40; leaving it onto a lane whose direction opposes the car's
    # yaw by more than 120 deg turns 'wrong lane' on
    def lane(x, y):
        if 30 < x < 40:
            return LaneSample(("j", 0), x, 0.0, 0.0, LANE_W, True)
        if x >= 40:
            return LaneSample(("r2", 1), x, 0.0, math.pi, LANE_W, False)
        return LaneSample(("r", -1), x, 0.0, 0.0, LANE_W, False)

    s = make(100.0, lane_of=lane)
    drive(s, xs(0, 100))
    r = s.result()
    assert r.infractions["outside_route_lanes"][0].value == pytest.approx(61.0)  # points 40..100 of 1..100


def test_offroad_distance_is_reported():
    s = make(100.0, is_drivable=lambda p: not (50 < p[0] < 60))
    drive(s, xs(0, 100))
    assert s.result().offroad_distance_m == pytest.approx(10.0)  # ticks 50.5 .. 59.5 add 1 m each


# ----------------------------------------------------------------------------- red lights, stop signs


def red_light(state=LightState.RED):
    return [TrafficLight(id="L1", state=state, position=np.array([31.0, -3.0]))]


STOP_L1 = [StopLine("L1", 30.0, 0.0, 0.0, LANE_W, ("r", -1))]


def test_red_light_counted_once_when_the_tail_crosses_the_stop_line():
    # tail segment spans x-3 .. x-1.6 (half length 2): it touches x = 30 for 31.6 <= x <= 33
    s = make(100.0, stop_lines=STOP_L1)
    drive(s, [25.5, 27.5, 29.5, 31.5, 31.7, 32.0, 32.5, 32.9, 34.5] + list(xs(35, 100)), dt=0.5,
          traffic_lights=red_light())
    r = s.result()
    (e,) = r.infractions["red_light"]
    assert e.t == 2.0  # the tick at x = 31.7
    assert r.infraction_penalty == pytest.approx(0.7)
    g = make(100.0, stop_lines=STOP_L1)
    drive(g, xs(0, 100), traffic_lights=red_light(LightState.GREEN))
    assert g.result().infractions["red_light"] == []


def test_red_light_stop_line_width_differs_lb1_lb2():
    # 1.5 m left of the lane centre: beyond 0.4 * 3.5 = 1.4 (LB1), within 0.6 * 3.5 = 2.1 (LB2)
    counts = []
    for v in (LB1, LB2):
        s = make(100.0, variant=v, stop_lines=STOP_L1)
        drive(s, xs(20, 40), y=1.5, traffic_lights=red_light())
        counts.append(len(s.result().infractions["red_light"]))
    assert counts == [0, 1]


def test_red_light_needs_tail_on_the_stop_lines_lane_and_heading_along_it():
    s = make(100.0, stop_lines=[StopLine("L1", 30.0, 0.0, 0.0, LANE_W, ("other", 1))])
    drive(s, xs(20, 40), traffic_lights=red_light())
    assert s.result().infractions["red_light"] == []


SIGN = [StopSign(3, 30.0, 0.0, 1.5, 1.75)]


def test_stop_sign_lb2_run_without_stopping():
    s = make(100.0, stop_signs=SIGN)
    drive(s, xs(0, 100), dt=0.2)
    (e,) = s.result().infractions["stop_infraction"]
    # the box grown by 1.2 spans 28.2 < x < 31.8: the car's lane point and the 8 points ahead are
    # all past it first at x = 32.5 (tick 32)
    assert e.t == pytest.approx(32 * 0.2)
    assert s.result().infraction_penalty == pytest.approx(0.8)


def test_stop_sign_lb2_stop_before_the_line_is_fine():
    s = make(100.0, stop_signs=SIGN)
    drive(s, xs(0, 100), v=lambda x: 0.0 if x == 28.5 else 5.0, dt=0.2)
    assert s.result().infractions["stop_infraction"] == []


def test_stop_sign_lb1_requires_entering_the_trigger_area():
    s = make(100.0, variant=LB1, stop_signs=SIGN)
    drive(s, xs(0, 100), dt=0.2)
    (e,) = s.result().infractions["stop_infraction"]
    assert e.t == pytest.approx(31 * 0.2)  # the car centre leaves the open box 28.5 < x < 31.5 at 31.5
    # passing beside it (centre never inside the box) is no LB1 infraction
    s2 = make(100.0, variant=LB1, stop_signs=[StopSign(3, 30.0, 0.0, 1.5, 1.75)])
    drive(s2, xs(0, 100), y=lambda x: -2.0 if 25 < x < 35 else 0.0, dt=0.2)
    assert s2.result().infractions["stop_infraction"] == []


# ----------------------------------------------------------------------------- LB2-only events


def test_min_speed_per_checkpoint_lb2():
    traffic = Boxes(center=[[50.0, 50.0, 0.0]], size=[[4.0, 2.0, 1.5]], yaw=[0.0], label=[V],
                    velocity=[[10.0, 0.0]], ids=[1])
    speed = lambda x: 5.0 if x < 26 else (10.0 if x < 78 else 7.5)
    s = make(100.0)
    drive(s, xs(0, 100), v=speed, actors=traffic)
    r = s.result()
    assert [e.value for e in r.infractions["min_speed_infractions"]] == [50.0, 75.0]
    # (1 - 0.3 * 0.5) * (1 - 0.3 * 0.25)
    assert r.infraction_penalty == pytest.approx(0.85 * 0.925)
    assert s.min_speed.values == [50.0, 100.0, 100.0, 75.0]
    s1 = make(100.0, variant=LB1)
    drive(s1, xs(0, 100), v=speed, actors=traffic)
    assert s1.result().infraction_penalty == 1.0  # no such rule in 1.0


def test_scenario_timeout_and_yield_to_emergency_vehicle_lb2():
    ev_box = Boxes(center=[[5.0, 3.5, 0.0]], size=[[5.0, 2.0, 2.0]], yaw=[0.0], label=[V], ids=[42])
    s = make(100.0)
    s.watch_emergency_vehicle(42)
    drive(s, xs(0, 30), actors=ev_box)  # the car stays ahead of the EV
    assert s.end_emergency_vehicle_watch(31.0, 42).key == "yield_emergency_vehicle_infractions"
    s.report_scenario_timeout(31.0, "Accident_1")
    r = s.result()
    assert r.infraction_penalty == pytest.approx(0.49)
    ok = make(100.0)
    ok.watch_emergency_vehicle(42)
    drive(ok, xs(0, 3), actors=Boxes(center=[[20.0, 3.5, 0.0]], size=[[5.0, 2.0, 2.0]], yaw=[0.0], label=[V], ids=[42]))
    assert ok.end_emergency_vehicle_watch(4.0, 42) is None
    with pytest.raises(ValueError):
        make(100.0, variant=LB1).report_scenario_timeout(1.0)


# ----------------------------------------------------------------------------- aggregation


def result(variant, rc, pen_events, length, status=None, route_id="r", index=0):
    grouped = {k: [] for k in variant.infraction_keys}
    for e in pen_events:
        grouped[e.key].append(e)
    pen = infraction_penalty(pen_events, variant)
    return RouteResult(variant, route_id, index, status or ("Completed" if rc == 100 else "Failed"),
                       rc, pen, max(rc * pen, 0.0), grouped, length, 10.0)


def test_global_record_means_and_infractions_per_km_lb2():
    a = result(LB2, 100.0, [ev("collisions_vehicle")], 100.0, route_id="RouteScenario_0_rep0", index=0)
    out = InfractionEvent("outside_route_lanes", 0, 0, 0, "m", value=10.0, distance_m=20.0)
    b = result(LB2, 50.0, [out], 200.0, route_id="RouteScenario_1_rep0", index=1)
    g = global_record([a, b])
    assert g["scores_mean"]["score_composed"] == pytest.approx((60.0 + 45.0) / 2)
    assert g["scores_mean"]["score_route"] == pytest.approx(75.0)
    assert g["scores_mean"]["score_penalty"] == pytest.approx(0.75)
    # driven km = 0.1 * 1.0 + 0.2 * 0.5 = 0.2
    assert g["infractions"]["collisions_vehicle"] == pytest.approx(5.0)
    assert g["infractions"]["outside_route_lanes"] == pytest.approx(0.02)  # km outside, not per km
    assert g["status"] == "Failed" and g["meta"]["exceptions"] == [["RouteScenario_1_rep0", 1, "Failed"]]
    assert g["scores_std_dev"]["score_composed"] == pytest.approx(round(math.sqrt(2 * 7.5 ** 2), 3))


def test_global_record_infractions_per_km_lb1_sums_route_rates():
    a = result(LB1, 100.0, [ev("collisions_vehicle")], 100.0)  # 1 / 0.1 km
    b = result(LB1, 50.0, [ev("collisions_vehicle"), ev("red_light")], 200.0)  # 1 / 0.1 km
    g = global_record([a, b])
    assert g["infractions"]["collisions_vehicle"] == pytest.approx(20.0)
    assert g["infractions"]["red_light"] == pytest.approx(10.0)
    assert g["scores"]["score_composed"] == pytest.approx((60.0 + 50 * 0.42) / 2)
    zero = result(LB1, 0.0, [ev("collisions_vehicle")], 100.0)  # no distance: floor of 0.001 km
    assert global_record([zero])["infractions"]["collisions_vehicle"] == pytest.approx(1000.0)
    assert global_record([zero])["scores_std_dev"]["score_route"] == "NaN"
    with pytest.raises(ValueError):
        global_record([a, result(LB2, 1.0, [], 1.0)])


def test_results_json_layout_and_atomic_write(tmp_path):
    s = make(100.0)
    drive(s, xs(0, 100))
    r = s.result(duration_system_s=1.23456)
    doc = results_json([r])
    rec = doc["_checkpoint"]["records"][0]
    assert set(rec) >= {"route_id", "index", "status", "num_infractions", "infractions", "scores", "meta"}
    assert rec["scores"] == {"score_route": 100.0, "score_penalty": 1.0, "score_composed": 100.0}
    assert rec["meta"] == {"route_length": 100.0, "duration_game": 50.0, "duration_system": 1.235}
    assert set(rec["infractions"]) == set(LB2.infraction_keys)
    assert doc["_checkpoint"]["progress"] == [1, 1] and len(doc["values"]) == len(doc["labels"]) == 15
    path = write_results_json(tmp_path / "out" / "results.json", [r])
    assert json.loads(path.read_text())["_checkpoint"]["global_record"]["status"] == "Perfect"
    assert list((tmp_path / "out").iterdir()) == [path]
    r1 = result(LB1, 100.0, [], 100.0)
    doc1 = results_json([r1])
    assert "num_infractions" not in doc1["_checkpoint"]["records"][0]
    assert len(doc1["values"]) == 12 and doc1["values"][0] == "100.000"
    assert route_record(r1)["status"] == "Completed"


def test_bad_input_is_rejected():
    s = make(100.0)
    with pytest.raises(ValueError):
        s.update(0.0, EgoState(x=float("nan"), y=0.0, yaw=0.0), EGO_BOX)
    s.update(1.0, EgoState(x=0.5, y=0.0, yaw=0.0), EGO_BOX)
    with pytest.raises(ValueError):
        s.update(0.5, EgoState(x=0.5, y=0.0, yaw=0.0), EGO_BOX)
    with pytest.raises(ValueError):
        s.update(2.0, EgoState(x=0.5, y=0.0, yaw=0.0), (0.0, 2.0))
    with pytest.raises(TypeError):
        RouteScorer(straight_route(10.0), "2.0")


# ----------------------------------------------------------------------------- lights with geometry


from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass
class LaneSignal(TrafficLight):
    """A light as one incoming lane sees it (like the embedded world's per-lane signals)."""

    yaw: float = 0.0
    map_signal_id: str = ""


def test_red_light_from_a_lights_own_stop_geometry():
    s = make(100.0)  # no map stop lines
    sig = [LaneSignal(id="J1:e0_0", state=LightState.RED, position=np.array([30.0, 0.0]), lanes=(("r", -1),), yaw=0.0)]
    drive(s, xs(20, 40), traffic_lights=sig)
    (e,) = s.result().infractions["red_light"]
    assert e.message == "Agent ran a red light J1:e0_0 at (x=30.0, y=0.0, z=0.0)"
    assert e.to_dict()["position"] == [30.0, 0.0] and e.to_dict()["key"] == "red_light"


def test_map_stop_line_takes_the_state_of_the_light_governing_its_lane():
    s = make(100.0, stop_lines=STOP_L1)
    plain = [TrafficLight(id="X7", state=LightState.RED, position=np.array([31.0, -3.0]), lanes=(("r", -1),)),
             TrafficLight(id="L1", state=LightState.GREEN, position=np.array([31.0, -3.0]))]
    drive(s, xs(20, 40), traffic_lights=plain)
    assert [e.message for e in s.result().infractions["red_light"]] == ["Agent ran a red light L1 at (x=30.0, y=0.0, z=0.0)"]


def test_a_light_with_its_own_geometry_replaces_the_map_line_of_its_signal():
    # the map puts L1's line at x = 30; the world's signal for L1 stands at x = 45 (junction entrance)
    s = make(100.0, stop_lines=STOP_L1)
    sig = [LaneSignal(id="J1:e0_0", state=LightState.RED, position=np.array([45.0, 0.0]), lanes=(("r", -1),),
                      yaw=0.0, map_signal_id="L1"),
           LaneSignal(id="J1:w0_0", state=LightState.RED, position=np.array([33.0, 3.5]), lanes=(("r", 1),),
                      yaw=math.pi, map_signal_id="L9")]
    drive(s, xs(20, 60), traffic_lights=sig)
    (e,) = s.result().infractions["red_light"]
    assert e.message == "Agent ran a red light J1:e0_0 at (x=45.0, y=0.0, z=0.0)"
    assert e.t == pytest.approx((47 - 20) * 0.5)  # tail (x-3 .. x-1.6) first touches x = 45 at tick x = 47.5


def test_wrong_direction_check_can_be_switched_off_in_lb2():
    s = make(100.0)
    s.set_wrong_direction_check_active(False)
    drive(s, xs(0, 100), y=lambda x: 3.5 if 20 < x < 40 else 0.0)
    assert s.result().infractions["outside_route_lanes"] == []


def test_entry_status_follows_the_route_statuses():
    ok = result(LB2, 100.0, [], 100.0, status="Perfect")
    crashed = result(LB2, 10.0, [], 100.0, status="Failed - Simulation crashed")
    assert results_json([ok])["entry_status"] == "Finished" and results_json([ok])["eligible"] is True
    doc = results_json([ok, crashed])
    assert doc["entry_status"] == "Crashed" and doc["eligible"] is False
    blocked = result(LB1, 10.0, [], 100.0, status="Failed - Agent got blocked")
    assert results_json([blocked])["entry_status"] == "Finished with agent errors"
