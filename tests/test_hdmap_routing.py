"""Routing on the lane graph: generated junction, Town01, a lane change on Town04, impossible routes."""

import math

import numpy as np
import pytest

from adstack.errors import UserError
from adstack.paths import shared_data_dir
from hdmap import HDMapParams, Route, load_map

MAPS = shared_data_dir() / "maps" / "carla"
needs_shared = pytest.mark.skipif(not (MAPS / "Town01.xodr").is_file(), reason="shared CARLA maps not present")


@pytest.fixture(scope="module")
def junction4():
    return load_map("junction4")


def _check_dense(route: Route, spacing=1.0):
    n = len(route.path)
    assert route.path.shape == (n, 2) and route.yaw.shape == (n,) and route.s.shape == (n,)
    assert len(route.lane_keys) == n and route.speed_limit.shape == (n,)
    steps = np.linalg.norm(np.diff(route.path, axis=0), axis=1)
    assert steps.max() <= spacing + 1e-6 and steps[:-1].min() >= spacing * 0.95  # even spacing, short last step
    assert route.s[-1] == pytest.approx(route.total_length)
    heading = np.arctan2(np.diff(route.path[:, 1]), np.diff(route.path[:, 0]))
    turn = np.abs(np.angle(np.exp(1j * np.diff(heading))))
    assert turn.max() < 0.35  # no kinks: at most 20 deg between consecutive 1 m steps


def test_left_turn_through_junction(junction4):
    route = junction4.route((-80.0, -1.75, 0.0), (1.75, 60.0, math.pi / 2))
    _check_dense(route)
    assert route.lane_sequence == [(3, 0, 1), route.lane_sequence[1], (2, 0, -1)]
    turn = junction4.lanes[route.lane_sequence[1]]
    assert turn.is_junction
    expected = (80.0 - 10.0) + turn.length + (60.0 - 10.0)
    assert route.total_length == pytest.approx(expected, abs=0.5)
    np.testing.assert_allclose(route.path[0], [-80.0, -1.75], atol=0.05)
    np.testing.assert_allclose(route.path[-1], [1.75, 60.0], atol=0.05)
    assert route.yaw[0] == pytest.approx(0.0, abs=0.02) and route.yaw[-1] == pytest.approx(math.pi / 2, abs=0.02)
    assert len(route.lane_change_indices) == 0
    np.testing.assert_allclose(route.speed_limit, 50 / 3.6)


def test_goal_ahead_on_the_same_lane_and_yaw_picks_the_direction(junction4):
    route = junction4.route((30.0, -1.75, 0.0), (90.0, -1.5, 0.0))
    assert route.lane_sequence == [(1, 0, -1)] and route.total_length == pytest.approx(60.0, abs=0.01)
    _check_dense(route)
    # Same points, facing west: that lane leads into the junction and the east arm's outbound lane is
    # a dead end, so from (90, 1.75) westbound the goal 60 m east can't be reached.
    with pytest.raises(UserError, match="junction4.xodr: no route from start"):
        junction4.route((90.0, 1.5, math.pi), (30.0, -1.75, 0.0))


def test_impossible_and_off_map_poses(junction4):
    with pytest.raises(UserError, match="junction4.xodr: no route"):
        junction4.route((-80.0, -1.75, 0.0), (80.0, 1.75, math.pi))  # would need a U-turn
    with pytest.raises(UserError, match=r"junction4.xodr: goal \(60.0, 60.0\).*not within 10 m"):
        junction4.route((-80.0, -1.75, 0.0), (60.0, 60.0, 0.0))


def test_grid_town_route_crosses_several_junctions():
    grid = load_map("grid_town")
    # From the south-west stub heading east to the far north-east corner heading north.
    route = grid.route((-40.0, -1.75, 0.0), (201.75, 140.0, math.pi / 2))
    _check_dense(route)
    junctions = {grid.lanes[k].junction_id for k in route.lane_sequence} - {-1}
    assert len(junctions) >= 3
    manhattan = (201.75 + 40.0) + (140.0 + 1.75)
    assert manhattan - 20.0 < route.total_length < manhattan  # a shortest grid path: two turns cut corners


@needs_shared
def test_town01_route_is_connected_and_on_lanes():
    town = load_map("Town01", map_dirs=[MAPS])
    route = town.route((100.0, -2.0, 0.0), (300.0, -200.0, None))
    _check_dense(route)
    sequence = route.lane_sequence
    for a, b in zip(sequence[:-1], sequence[1:]):
        assert b in town.lanes[a].successors or b in (town.lanes[a].left, town.lanes[a].right)
    for point, key in zip(route.path[::10], route.lane_keys[::10]):
        k, lateral, _ = town.nearest_lane(*point)
        assert abs(lateral) < 0.2
    assert route.total_length >= np.hypot(200.0, 198.0)


@needs_shared
def test_lane_change_is_costed_and_placed():
    town = load_map("Town04", map_dirs=[MAPS])
    lane = max((l for l in town.lanes.values() if l.lane_change_left and l.length > 300), key=lambda l: l.length)
    target = town.lanes[lane.left]
    start = (*lane.centerline[10], float(lane.heading[10]))
    goal = (*target.centerline[-10], float(target.heading[-10]))
    route = town.route(start, goal)
    _check_dense(route)
    assert route.lane_sequence == [lane.key, target.key]
    assert len(route.lane_change_indices) == 1
    i = int(route.lane_change_indices[0])
    assert route.lane_keys[i - 1] == lane.key and route.lane_keys[i] == target.key
    # The path moves across by one lane width, within lane_change_length_m, without overshooting.
    lateral = np.array([town.nearest_lane(*p, yaw=y)[1] if k == lane.key else 0.0
                        for p, y, k in zip(route.path, route.yaw, route.lane_keys)])
    assert np.all(np.abs(lateral[: i - 10]) < 0.05)
    # A huge penalty makes the planner prefer any lane-change-free way, or fail, never pay it twice.
    expensive = load_map(town.xodr_path, params=HDMapParams(lane_change_penalty_m=1e6))
    try:
        alternative = expensive.route(start, goal)
    except UserError:
        return
    assert len(alternative.lane_change_indices) <= 1
    if len(alternative.lane_change_indices) == 0:
        assert alternative.total_length > route.total_length


def test_stop_lines_on_route(junction4):
    route = junction4.route((-80.0, -1.75, 0.0), (1.75, 60.0, math.pi / 2))
    (index, line), = junction4.stop_lines_on_route(route)
    assert line.kind == "traffic_light" and line.lane == (3, 0, 1)
    np.testing.assert_allclose(route.path[index], [-10.5, -1.75], atol=0.6)
    beyond = junction4.route((-10.2, -1.75, 0.0), (1.75, 60.0, math.pi / 2))  # starts past the line
    assert junction4.stop_lines_on_route(beyond) == []


@needs_shared
def test_lane_change_edges_follow_the_markings():
    import carla

    town = load_map("Town04", map_dirs=[MAPS])
    allowed = short = never = 0
    left_bit = int(carla.LaneChange.Left)
    for key, lane in town.lanes.items():
        if lane.left is None:
            continue
        assert lane.left[2] * key[2] > 0 and lane.left[:2] == key[:2]  # same direction, same section
        waypoints = [town.carla_map.get_waypoint_xodr(key[0], key[2], float(s)) for s in lane.road_s]
        inner = np.array([w is not None for w in waypoints])
        flags = np.array([w is not None and int(w.lane_change) & left_bit > 0 for w in waypoints])
        stretch = lane.lane_change_left_range
        assert town.graph.has_edge(key, lane.left) == (stretch is not None)
        if stretch is None:
            never += 1
            assert lane.is_junction or not flags.any()
            continue
        inside = (lane.s > stretch[0]) & (lane.s < stretch[1]) & inner
        assert flags[inside].all()  # the stretch is all broken marking
        assert town.graph[key][lane.left]["legal"] == lane.lane_change_left
        if lane.lane_change_left:
            allowed += 1
            assert stretch[1] - stretch[0] >= min(10.0, lane.length / 2) - 1e-6
        else:
            short += 1
    assert allowed > 20 and never > 0


@needs_shared
def test_leaderboard_mode_changes_lanes_where_the_planner_would():
    """Town06 route 40: lane -5 of road 50 may change right only in its first 34 m (broken, then
    solid). From 60 m on, CARLA's GlobalRoutePlanner still links the lanes, so the Leaderboard route
    changes lanes there; a legal route must go round the block instead."""
    town = load_map("Town06", map_dirs=[MAPS])
    lane, right = town.lanes[(50, 0, -5)], town.lanes[(50, 0, -6)]
    assert lane.right == right.key and lane.lane_change_right
    assert lane.lane_change_right_range[0] == 0.0 and 30.0 < lane.lane_change_right_range[1] < 40.0
    start = (*lane.centerline[60], None)
    goal = (*right.centerline[95], None)
    from hdmap.routing import plan_route

    leaderboard = plan_route(town, [start, goal], leaderboard=True)
    assert leaderboard.lane_sequence == [lane.key, right.key] and leaderboard.total_length < 40.0
    legal = plan_route(town, [start, goal])
    assert legal.total_length > 300.0 and right.key == legal.lane_keys[-1]


def test_overlapping_junction_lanes_resolve_to_the_one_that_leads_to_the_goal(junction4):
    # At the junction entry the incoming lane ends and the straight, left and right lanes start.
    candidates = junction4.snap_candidates(-10.0, -1.75, 0.0)
    assert {k for k, _, _ in candidates} == {(3, 0, 1)} | set(junction4.lanes[(3, 0, 1)].successors)
    for goal, arm in [((1.75, 60.0, math.pi / 2), (2, 0, -1)), ((60.0, -1.75, 0.0), (1, 0, -1)),
                      ((-1.75, -60.0, -math.pi / 2), (4, 0, -1))]:
        route = junction4.route((-10.0, -1.75, 0.0), goal)
        assert route.lane_sequence[-1] == arm and len(route.lane_sequence) == 2
        assert route.total_length < 90.0
