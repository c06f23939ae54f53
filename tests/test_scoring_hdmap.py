"""Leaderboard scoring on a real OpenDRIVE map through hdmap (carla.Map, no server).

Map ``junction4`` (built in): four 100 m arms around one signalised junction. The route runs west
along lane (1,0,1) at y = 1.75 from x = 100, through the junction, to x = -100 (200 m, 201 points
1 m apart, so route point i sits at x = 100 - i). Light 5000 governs lane (1,0,1); its stop line
is at x = 10.5, the junction entrance at x = 10. The car is placed half-way between route points: tick i at x = 99.5 - i.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("carla")

from adstack.types import EgoState, LightState, TrafficLight  # noqa: E402
from sim.scoring import LB1, LB2, hdmap_stop_lines, scorer_from_hdmap  # noqa: E402

EGO_BOX = (4.8, 2.0)


@pytest.fixture(scope="module")
def junction():
    from hdmap.map import load_map

    hdmap = load_map("junction4")
    route = hdmap.route((100.0, 1.75, math.pi), (-100.0, 1.75, math.pi))
    assert len(route) == 201 and route.total_length == pytest.approx(200.0)
    return hdmap, route


def lights(hdmap, state):
    return [TrafficLight(id=tl.id, state=state, position=tl.position) for tl in hdmap.traffic_lights]


def drive(scorer, route, y=None, state=LightState.GREEN, hdmap=None):
    for i in range(len(route) - 1):
        p = route.path[i] + 0.5 * (route.path[i + 1] - route.path[i])
        yy = p[1] if y is None else y(p[0], p[1])
        scorer.update(i * 0.25, EgoState(x=float(p[0]), y=float(yy), yaw=float(route.yaw[i]), v=4.0), EGO_BOX,
                      traffic_lights=lights(hdmap, state))
        if scorer.done:
            break
    return scorer.result()


def test_stop_lines_come_from_the_map(junction):
    hdmap, _ = junction
    lines = {ln.light_id: ln for ln in hdmap_stop_lines(hdmap)}
    assert set(lines) == {"5000", "5001", "5002", "5003"}
    ln = lines["5000"]
    # the map's line (x = 10.5) moved to the junction entrance, the end of lane (1,0,1) at x = 10
    assert ln.lane_key == (1, 0, 1) and (ln.x, ln.y) == pytest.approx((10.0, 1.75), abs=0.01)
    assert ln.lane_width == pytest.approx(3.5) and math.cos(ln.yaw) == pytest.approx(-1.0, abs=1e-3)


@pytest.mark.parametrize("variant", [LB1, LB2])
def test_running_the_red_light_on_a_real_map(junction, variant):
    hdmap, route = junction
    r = drive(scorer_from_hdmap(hdmap, route, variant), route, state=LightState.RED, hdmap=hdmap)
    assert r.status == "Completed" and r.route_completion == 100.0
    assert [e.message for e in r.infractions["red_light"]] == ["Agent ran a red light 5000 at (x=10.5, y=1.75, z=0.0)"]
    assert r.infraction_penalty == pytest.approx(0.7) and r.driving_score == pytest.approx(70.0)
    assert r.num_infractions == 1


def test_green_light_is_a_perfect_route_with_the_lb2_timeout_from_route_speed_limits(junction):
    hdmap, route = junction
    s = scorer_from_hdmap(hdmap, route, LB2)
    r = drive(s, route, hdmap=hdmap)
    assert r.status == "Perfect" and r.driving_score == 100.0
    # 300 s plus each metre advanced at 10 % of the speed limit; the car is ahead of point 199
    assert s.timeout.index == 199
    assert s.timeout.budget_s == pytest.approx(300.0 + 199.0 / (0.1 * route.speed_limit[0]))


@pytest.mark.parametrize("variant", [LB1, LB2])
def test_driving_in_the_opposite_lane_counts_as_outside_route_lanes(junction, variant):
    # ticks 0..39 (x = 99.5 .. 60.5) on the eastbound lane (1,0,-1) at y = -1.75: tick i passes
    # route point i from i = 1 on, so 39 of the 199 route metres driven are on the wrong lane
    hdmap, route = junction
    r = drive(scorer_from_hdmap(hdmap, route, variant), route, y=lambda x, y: -1.75 if x > 60 else y, hdmap=hdmap)
    (e,) = r.infractions["outside_route_lanes"]
    assert e.value == pytest.approx(100.0 * 39 / 199)
    assert r.infraction_penalty == pytest.approx(1.0 - 39 / 199)
    assert r.status == "Completed"


def test_off_road_driving_is_outside_lanes_and_measured(junction):
    # ticks with 40 < x < 60 at y = -8 (the road's edge is at y = -3.5): 20 ticks, 20 route metres
    hdmap, route = junction
    r = drive(scorer_from_hdmap(hdmap, route, LB2), route, y=lambda x, y: -8.0 if 40 < x < 60 else y, hdmap=hdmap)
    assert r.infractions["outside_route_lanes"][0].distance_m == pytest.approx(20.0)
    # 19 one-metre steps between off-road ticks plus the diagonal step onto the verge (sqrt(1 + 9.75^2))
    assert r.offroad_distance_m == pytest.approx(19.0 + math.hypot(1.0, 9.75), abs=1e-6)
