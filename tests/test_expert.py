"""The privileged expert on real maps (CARLA Town01, esmini fabriksgatan), in closed loop with
control.Controller and sim/vehicle.py's bicycle (tests/kinematic_bicycle.py where that is missing).

Actors and lights are scripted; every test checks an outcome in the world (where the ego's bumper
ended up, the distance it kept), not the expert's internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from adstack.errors import DataError
from adstack.paths import shared_data_dir
from adstack.types import Boxes, EgoState, LightState, ObjectClass, TrafficLight
from control import Controller, ControllerConfig, VehicleLimits
from planning.expert import Expert
from planning.expert_config import DEFAULT_PARAMS, ExpertConfig

hdmap = pytest.importorskip("hdmap")
MAPS = shared_data_dir() / "maps"
DT = 0.05
PLAN_EVERY = 2  # expert at 10 Hz, controller at 20 Hz


def _vehicle():
    """sim/vehicle.py's bicycle if it is there, else the test bicycle; both with the pose at the rear axle."""
    try:
        from sim.vehicle import BicycleModel, VehicleParams
    except ImportError:
        BicycleModel = None
    if BicycleModel is not None:
        params = VehicleParams()
        limits = VehicleLimits(wheelbase_m=params.wheelbase, max_steer_rad=min(0.6, params.max_steer),
                               max_steer_rate_rad_s=params.max_steer_rate, max_accel_mps2=params.max_accel,
                               max_decel_mps2=params.max_decel, max_jerk_mps3=params.max_jerk)
        model = BicycleModel(params)

        class Car:
            def reset(self, x, y, yaw, v):
                model.reset(EgoState(x, y, yaw, v))

            def state(self):
                return model.state

            def tick(self, cmd, dt):
                model.step(cmd, dt)
        return Car(), limits
    from kinematic_bicycle import KinematicBicycle

    class Car:
        def reset(self, x, y, yaw, v):
            self.m = KinematicBicycle(x, y, yaw, v)

        def state(self):
            return self.m.state()

        def tick(self, cmd, dt):
            self.m.tick(cmd, dt)
    return Car(), VehicleLimits()


@dataclass
class Log:
    t: list = field(default_factory=list)
    s: list = field(default_factory=list)  # ego rear axle along the route
    v: list = field(default_factory=list)
    xy: list = field(default_factory=list)
    yaw: list = field(default_factory=list)
    lateral: list = field(default_factory=list)
    reason: list = field(default_factory=list)
    min_clearance: list = field(default_factory=list)  # from the ego box to the nearest actor box

    def arrays(self):
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


def ego_corners(x, y, yaw, cfg: ExpertConfig) -> np.ndarray:
    front = cfg.ego.rear_axle_to_front_m
    back = cfg.ego.length_m - front
    b = Boxes(center=[[x + math.cos(yaw) * (front - back) / 2, y + math.sin(yaw) * (front - back) / 2, 0.0]],
              size=[[cfg.ego.length_m, cfg.ego.width_m, 1.5]], yaw=[yaw], label=[1])
    return b.corners_xy()[0]


def box_clearance(a_corners: np.ndarray, boxes: Boxes) -> float:
    """Smallest distance between the ego rectangle and any actor rectangle (0 when they overlap)."""
    if len(boxes) == 0:
        return math.inf
    import shapely

    ego = shapely.Polygon(a_corners)
    return float(min(ego.distance(shapely.Polygon(c)) for c in boxes.corners_xy()))


def closed_loop(expert: Expert, start, seconds: float, actors_fn=None, lights_fn=None, stop_when_done=True) -> dict:
    car, limits = _vehicle()
    ctrl = Controller(ControllerConfig(limits=limits))
    car.reset(*start)
    log = Log()
    plan = None
    for k in range(int(round(seconds / DT))):
        t = k * DT
        ego = car.state()
        actors = actors_fn(t) if actors_fn else Boxes()
        if k % PLAN_EVERY == 0:
            plan = expert.step(ego, actors, lights_fn(t) if lights_fn else [], t)
        cmd = ctrl.step(ego, plan, t)
        log.t.append(t)
        log.s.append(expert.debug.route_s)
        log.v.append(ego.v)
        log.xy.append((ego.x, ego.y))
        log.yaw.append(ego.yaw)
        log.lateral.append(expert.debug.lateral_m)
        log.reason.append(expert.debug.reason)
        log.min_clearance.append(box_clearance(ego_corners(ego.x, ego.y, ego.yaw, expert.config), actors))
        car.tick(cmd, DT)
        if stop_when_done and expert.done:
            break
    return log.arrays()


@pytest.fixture(scope="module")
def town01():
    return hdmap.load_map(MAPS / "carla" / "Town01.xodr")


@pytest.fixture(scope="module")
def fabriksgatan():
    return hdmap.load_map(MAPS / "esmini" / "fabriksgatan_traffic_lights.xodr")


def straight_route(town01):
    """Town01 road 15, lane -1: 307 m straight, heading -y."""
    return town01.route((-2.0, -15.0, -math.pi / 2), (-2.0, -300.0, -math.pi / 2))


def along_route(route, s, speed=0.0):
    """Pose and velocity of something on the route at arc length s moving along it at ``speed``."""
    x, y = np.interp(s, route.s, route.path[:, 0]), np.interp(s, route.s, route.path[:, 1])
    yaw = float(np.interp(s, route.s, np.unwrap(route.yaw)))
    return x, y, yaw, speed * np.array([math.cos(yaw), math.sin(yaw)])


def light_at_lane_end(hdmap_, key, state, light_id="tl"):
    """A light as sim.world reports it: at the incoming lane's stop line (its end), with the lane's yaw."""
    lane = hdmap_.lanes[key]
    light = TrafficLight(light_id, state, lane.centerline[-1].copy(), ((str(key[0]), key[2]),))
    light.yaw = float(lane.heading[-1])
    return light


# ---------------------------------------------------------------------------------------------- tests
def test_completes_a_leaderboard_route_without_actors(town01):
    spec = hdmap.load_routes(shared_data_dir() / "routes" / "leaderboard1_routes_training.xml")[0]
    route = hdmap.dense_route(town01, spec)
    expert = Expert(town01, route)
    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 0.0), 200.0)
    assert expert.done, f"stopped at {log['s'][-1]:.0f} of {route.total_length:.0f} m"
    assert np.abs(log["lateral"]).max() < 1.0  # stayed in its lane through every junction turn
    limit = np.interp(log["s"], route.s, route.speed_limit)
    assert np.all(log["v"] <= limit + 0.5)  # obeyed the map's speed limits
    assert log["t"][-1] < 1.3 * route.total_length / 11.176 + 30  # and did not dawdle


@pytest.mark.parametrize("where", ["fabriksgatan", "town01"])
def test_stops_before_a_red_light_and_goes_on_green(where, town01, fabriksgatan):
    if where == "fabriksgatan":
        m, key = fabriksgatan, (3, 0, -1)
        route = m.route((-60.0, -17.0, None), tuple(m.lanes[(2, 0, 1)].centerline[40]) + (None,))
    else:
        m, key = town01, (4, 0, -1)
        lane = m.lanes[key]
        after = m.lanes[m.lanes[lane.successors[0]].successors[0]]
        route = m.route((lane.centerline[150][0], lane.centerline[150][1], 0.0), tuple(after.centerline[30]) + (None,))
    green_at = 30.0
    lights = lambda t: [light_at_lane_end(m, key, LightState.RED if t < green_at else LightState.GREEN)]
    expert = Expert(m, route)
    stop_line = m.lanes[key].centerline[-1]
    line_s = float(route.s[np.argmin(np.hypot(*(route.path - stop_line).T))])
    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 8.0), 60.0, lights_fn=lights)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    red = log["t"] < green_at
    assert front[red].max() < line_s, "the bumper crossed the stop line on red"
    assert line_s - front[red][-1] < 4.0  # stopped close to the line, not far back
    assert log["v"][red][-20:].max() < 0.05  # standing
    assert log["reason"][red][-1].startswith("red_light")
    assert front.max() > line_s + 20.0  # went on after green


def test_goes_through_a_yellow_light_it_cannot_stop_for(town01):
    key = (4, 0, -1)
    lane = town01.lanes[key]
    after = town01.lanes[town01.lanes[lane.successors[0]].successors[0]]
    route = town01.route((lane.centerline[190][0], lane.centerline[190][1], 0.0), tuple(after.centerline[30]) + (None,))
    # At 11 m/s, 12 m from the line, stopping would take 5 m/s^2: more than a yellow light deserves.
    expert = Expert(town01, route)
    stop_line = lane.centerline[-1]
    line_s = float(route.s[np.argmin(np.hypot(*(route.path - stop_line).T))])
    start = float(line_s - expert.config.ego.rear_axle_to_front_m - 12.0)
    x, y, yaw, _ = along_route(route, start)
    expert2 = Expert(town01, route)
    log = closed_loop(expert2, (x, y, yaw, 11.0), 6.0,
                      lights_fn=lambda t: [light_at_lane_end(town01, key, LightState.YELLOW)])
    assert (log["s"] + expert2.config.ego.rear_axle_to_front_m).max() > line_s + 5.0  # did not brake in the box
    assert not any(r.startswith("yellow_light") for r in log["reason"])  # (it slows for the turn only)


def test_follows_a_slower_leader_at_a_safe_gap(town01):
    route = straight_route(town01)
    expert = Expert(town01, route)
    lead_speed, lead_start = 5.0, 40.0

    def actors(t):
        x, y, yaw, vel = along_route(route, lead_start + lead_speed * t, lead_speed)
        return Boxes(center=[[x, y, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw], label=[ObjectClass.VEHICLE],
                     velocity=[vel], ids=[7])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 35.0, actors_fn=actors)
    assert log["min_clearance"].min() > 2.0  # never closer than 2 m, bumper to bumper
    late = log["t"] > 25.0
    assert np.abs(log["v"][late] - lead_speed).max() < 0.3  # settled to the leader's speed
    gap = log["min_clearance"][late]
    idm = expert.config.idm
    assert np.all(gap > idm.min_gap_vehicle_m + 0.5 * idm.time_headway_s * lead_speed)
    assert np.all(gap < idm.min_gap_vehicle_m + 2.0 * idm.time_headway_s * lead_speed + 3.0)
    assert all(r == "leader:7" for r in log["reason"][late])


def test_stops_for_a_stopped_leader_and_waits(town01):
    route = straight_route(town01)
    expert = Expert(town01, route)
    x, y, yaw, _ = along_route(route, 60.0)
    standing = Boxes(center=[[x, y, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw], label=[ObjectClass.VEHICLE], ids=[3])
    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 11.0), 30.0,
                      actors_fn=lambda t: standing)
    assert log["min_clearance"].min() > 2.0
    assert log["min_clearance"][-1] < 6.0  # queued up behind it
    assert log["v"][-40:].max() < 0.05


@pytest.mark.parametrize("side", [-1.0, 1.0], ids=["from_right", "from_left"])
def test_yields_to_a_pedestrian_crossing_its_path(town01, side):
    route = straight_route(town01)
    expert = Expert(town01, route)
    cross_s, walk_speed = 45.0, 1.4
    x0, y0, yaw, _ = along_route(route, cross_s)
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    start = np.array([x0, y0]) + side * 6.0 * left  # on the pavement, 6 m beside the lane centre
    walk = -side * walk_speed * left  # straight across the road

    def actors(t):
        p = start + walk * t
        return Boxes(center=[[p[0], p[1], 0.9]], size=[[0.5, 0.5, 1.8]], yaw=[math.atan2(walk[1], walk[0])],
                     label=[ObjectClass.PEDESTRIAN], velocity=[walk], ids=[42])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 25.0, actors_fn=actors)
    assert log["min_clearance"].min() > 1.0, "came within 1 m of the pedestrian"
    assert any(r == "yield:42" or r == "in_path:42" for r in log["reason"])
    assert log["s"][-1] > cross_s + 20.0  # went on once the pedestrian had crossed


def test_waits_for_a_pedestrian_standing_in_the_lane(town01):
    route = straight_route(town01)
    expert = Expert(town01, route)
    x, y, yaw, _ = along_route(route, 50.0)
    moves_at = 20.0

    def actors(t):
        # Stands on the lane centre, then walks off to the right at 1.4 m/s.
        offset = max(t - moves_at, 0.0) * 1.4
        p = np.array([x, y]) + offset * np.array([math.sin(yaw), -math.cos(yaw)])
        vel = [0.0, 0.0] if t < moves_at else list(1.4 * np.array([math.sin(yaw), -math.cos(yaw)]))
        return Boxes(center=[[p[0], p[1], 0.9]], size=[[0.5, 0.5, 1.8]], yaw=[0.0], label=[ObjectClass.PEDESTRIAN],
                     velocity=[vel], ids=[5])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 40.0, actors_fn=actors)
    assert log["min_clearance"].min() > 2.0
    waiting = (log["t"] > 12.0) & (log["t"] < moves_at)
    assert log["v"][waiting].max() < 0.05
    assert log["s"][-1] > 80.0  # went on after the pedestrian left


def test_yields_to_a_vehicle_crossing_at_a_junction(fabriksgatan):
    """Ego goes straight through fabriksgatan's junction; a car crosses from the right without stopping."""
    m = fabriksgatan
    route = m.route((-60.0, -17.0, None), tuple(m.lanes[(1, 0, -1)].centerline[10]) + (None,))
    expert = Expert(m, route)
    # The crossing car drives lane (0,0,1) -> junction lane (9,0,-1) -> (2,0,1): from the south, across.
    path = np.vstack([m.lanes[(0, 0, 1)].centerline, m.lanes[(9, 0, -1)].centerline, m.lanes[(2, 0, 1)].centerline])
    s_path = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    entry = float(s_path[len(m.lanes[(0, 0, 1)].centerline) - 1])
    speed = 6.0

    def actors(t):
        s = entry - 45.0 + speed * t  # reaches the junction ~7.5 s in, about when the ego would
        x, y = np.interp(s, s_path, path[:, 0]), np.interp(s, s_path, path[:, 1])
        yaw = float(np.interp(s, s_path, np.unwrap(np.arctan2(*np.gradient(path, axis=0).T[::-1]))))
        return Boxes(center=[[x, y, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw], label=[ObjectClass.VEHICLE],
                     velocity=[[speed * math.cos(yaw), speed * math.sin(yaw)]], ids=[9])

    start_s = float(route.s[np.argmin(np.hypot(*(route.path - m.lanes[(3, 0, -1)].centerline[-1]).T))]) - 50.0
    x, y, yaw, _ = along_route(route, max(start_s, 0.0))
    log = closed_loop(expert, (x, y, yaw, 8.0), 30.0, actors_fn=actors)
    assert log["min_clearance"].min() > 1.0
    assert expert.done or log["s"][-1] > route.total_length - 5.0


def test_ignores_oncoming_and_parallel_traffic(town01):
    """Cars in the opposite lane and passing pedestrians on the pavement do not slow the ego."""
    route = straight_route(town01)
    expert = Expert(town01, route)

    def actors(t):
        xs, ys, yaw, _ = along_route(route, 150.0 - 8.0 * t)
        left = np.array([-math.sin(yaw), math.cos(yaw)])
        car = np.array([xs, ys]) + 4.0 * left  # the lane to the left, driving towards us
        ped = np.array(along_route(route, 30.0 + 1.2 * t)[:2]) - 4.5 * left  # walking along the right pavement
        fwd = np.array([math.cos(yaw), math.sin(yaw)])
        return Boxes(center=[[car[0], car[1], 0.75], [ped[0], ped[1], 0.9]], size=[[4.6, 1.9, 1.5], [0.5, 0.5, 1.8]],
                     yaw=[yaw + math.pi, yaw], label=[ObjectClass.VEHICLE, ObjectClass.PEDESTRIAN],
                     velocity=[-8.0 * fwd, 1.2 * fwd], ids=[1, 2])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 12.0, actors_fn=actors)
    assert log["v"][log["t"] > 3.0].min() > 9.5
    assert set(log["reason"]) <= {"free", "route_end"}


def test_step_is_robust_to_bad_inputs(town01):
    route = straight_route(town01)
    expert = Expert(town01, route)
    ego = EgoState(route.path[3, 0], route.path[3, 1], route.yaw[3], 5.0)
    for actors in (None, Boxes(), Boxes(center=[[np.nan, 0, 0]], size=[[4, 2, 1.5]], yaw=[0.0], label=[1])):
        traj = expert.step(ego, actors, None, 0.0)
        assert len(traj) > 10 and np.all(np.isfinite(traj.points))
    # Far off the route (e.g. after a crash): still a finite plan back along the route.
    lost = EgoState(route.path[50, 0] + 30.0, route.path[50, 1], route.yaw[50], 0.0)
    assert np.all(np.isfinite(expert.step(lost, None, [], 1.0).points))


def test_params_file_loads_and_rejects_bad_values(tmp_path):
    cfg = ExpertConfig.load(DEFAULT_PARAMS)
    assert cfg == ExpertConfig()  # the shipped file states the defaults (planners built without it agree)
    bad = tmp_path / "bad.param.yaml"
    bad.write_text("expert:\n  ros__parameters:\n    idm:\n      time_headwy_s: 1.0\n")
    with pytest.raises(DataError, match="unknown parameter"):
        ExpertConfig.load(bad)
    bad.write_text("expert:\n  ros__parameters:\n    profile_step_s: 2.0\n")
    with pytest.raises(DataError, match="profile_step_s"):
        ExpertConfig.load(bad)


@pytest.mark.parametrize("other_offset_m", [-3.0, 8.0], ids=["alongside", "ahead"])
def test_lane_change_waits_for_a_gap(other_offset_m):
    """Town06 road 40: the route moves one lane left; a car drives in that lane beside or just ahead."""
    town06 = hdmap.load_map(MAPS / "carla" / "Town06.xodr")
    source, target = town06.lanes[(40, 0, -6)], town06.lanes[(40, 0, -5)]
    route = town06.route((250.0, float(source.centerline[0, 1]), 0.0), (450.0, float(target.centerline[0, 1]), 0.0))
    assert len(route.lane_change_indices) == 1
    expert = Expert(town06, route)
    speed = expert.config.speed.max_speed_mps  # as fast as the ego will go: it cannot just pull ahead
    y_target = float(np.interp(250.0, target.centerline[:, 0], target.centerline[:, 1]))

    def actors(t):
        x = 250.0 + other_offset_m + speed * t
        return Boxes(center=[[x, y_target, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[0.0], label=[ObjectClass.VEHICLE],
                     velocity=[[speed, 0.0]], ids=[11])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], speed), 40.0, actors_fn=actors)
    assert log["min_clearance"].min() > 0.5, "cut into the other car"
    assert expert.done
    # It had to wait for the gap (or, behind a car it would pass only slowly, stayed behind it).
    assert any(r.startswith(("lane_change_gap", "adjacent")) for r in log["reason"])


def test_holds_on_red_with_the_bumper_already_over_the_line(town01):
    """Stopped over the line (say, for a pedestrian on the crossing) when the light turns red: stay."""
    key = (4, 0, -1)
    lane = town01.lanes[key]
    after = town01.lanes[town01.lanes[lane.successors[0]].successors[0]]
    route = town01.route((lane.centerline[150][0], lane.centerline[150][1], 0.0), tuple(after.centerline[30]) + (None,))
    expert = Expert(town01, route)
    line_s = float(route.s[np.argmin(np.hypot(*(route.path - lane.centerline[-1]).T))])
    x, y, yaw, _ = along_route(route, line_s - expert.config.ego.rear_axle_to_front_m + 1.5)  # bumper 1.5 m over
    green_at = 10.0
    lights = lambda t: [light_at_lane_end(town01, key, LightState.RED if t < green_at else LightState.GREEN)]
    log = closed_loop(expert, (x, y, yaw, 0.0), 20.0, lights_fn=lights)
    red = log["t"] < green_at
    assert log["v"][red].max() < 0.05
    assert log["reason"][red][-1].startswith("red_light_hold")
    assert log["s"][-1] > line_s + 20.0


def test_passes_pedestrians_at_the_kerb_slowly_without_stopping(town01):
    route = straight_route(town01)
    expert = Expert(town01, route)
    x, y, yaw, _ = along_route(route, 60.0)
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    kerb = np.array([x, y]) + 3.0 * right  # 3 m right of the lane centre, standing
    ped = Boxes(center=[[kerb[0], kerb[1], 0.9]], size=[[0.5, 0.5, 1.8]], yaw=[0.0], label=[ObjectClass.PEDESTRIAN], ids=[8])
    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 11.0), 15.0, actors_fn=lambda t: ped)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    passing = (front > 57.0) & (front < 60.0)
    assert log["v"][passing].max() < expert.config.actors.kerb_speed_mps + 0.5
    assert log["v"].min() > 2.0  # slowed down, did not stop
    assert log["min_clearance"].min() > 1.0


def test_deadlock_creeps_past_a_car_poking_into_the_corridor(town01):
    """A car stands across the road with its nose 0.2 m short of the ego's path edge plus margin:
    the expert waits (it might move), then after deadlock_time_s squeezes past slowly."""
    route = straight_route(town01)
    expert = Expert(town01, route)
    x, y, yaw, _ = along_route(route, 40.0)
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    centre = np.array([x, y]) + 3.5 * left  # perpendicular car, its nose 3.5 - 2.3 = 1.2 m from the path
    car = Boxes(center=[[centre[0], centre[1], 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw - math.pi / 2],
                label=[ObjectClass.VEHICLE], ids=[13])
    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 8.0), 60.0, actors_fn=lambda t: car)
    stopped = log["v"] < 0.05
    assert stopped.sum() * DT > expert.config.deadlock_time_s - 1.0  # it waited first
    assert log["s"][-1] > 60.0  # then got past
    assert log["min_clearance"].min() > 0.1


@pytest.mark.parametrize("other_speed", [10.5, 5.0], ids=["slightly_slower", "much_slower"])
def test_does_not_creep_up_alongside_a_car_in_the_next_lane(other_speed):
    """Town06 road 40, lane -6; a car drives ahead in lane -5. The ego passes a much slower car,
    but stays behind one it could pass only slowly (alongside, its lane change could not be avoided)."""
    town06 = hdmap.load_map(MAPS / "carla" / "Town06.xodr")
    lane, other_lane = town06.lanes[(40, 0, -6)], town06.lanes[(40, 0, -5)]
    y0 = float(np.interp(200.0, lane.centerline[:, 0], lane.centerline[:, 1]))
    route = town06.route((150.0, y0, 0.0), (560.0, y0, 0.0))
    expert = Expert(town06, route)
    y_other = float(np.interp(200.0, other_lane.centerline[:, 0], other_lane.centerline[:, 1]))

    def actors(t):
        return Boxes(center=[[190.0 + other_speed * t, y_other, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[0.0],
                     label=[ObjectClass.VEHICLE], velocity=[[other_speed, 0.0]], ids=[21])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 25.0, actors_fn=actors)
    other_rear = 190.0 + other_speed * log["t"] - 2.3
    ego_front = log["xy"][:, 0] + expert.config.ego.rear_axle_to_front_m
    if other_speed > 10.0:
        assert np.all(ego_front < other_rear)  # never alongside
        assert abs(log["v"][-1] - other_speed) < 0.5
    else:
        assert (log["xy"][:, 0] - 0.95 > other_rear + 4.6).any()  # passed it completely


@pytest.mark.slow
def test_drives_a_leaderboard_route_in_sumo_traffic(tmp_path):
    """Town01 route 0 in the embedded world with SUMO traffic and pedestrians, scored as LB 1.0."""
    drive = pytest.importorskip("sim.drive")
    opts = drive.DriveOptions(routes=str(shared_data_dir() / "routes" / "leaderboard1_routes_training.xml"),
                              route_id="0", out=str(tmp_path), map_dirs=[str(MAPS / "carla")], lidar=False,
                              log=False, bev=False, progress=False, variant="lb1")
    result, code, _ = drive.drive(opts)
    assert code == 0
    assert result["route_completion"] == 100.0
    assert result["infractions_by_type"]["collisions_pedestrian"] == 0
    assert result["driving_score"] >= 90.0, result["infractions"]


def test_stops_for_a_pedestrian_before_the_crossing_not_on_it(fabriksgatan):
    """A pedestrian crosses just past the junction (where SUMO puts its crossings): the ego waits
    at the junction's entrance, not inside the junction nor with its bumper on the crossing."""
    m = fabriksgatan
    route = m.route((-60.0, -17.0, None), tuple(m.lanes[(1, 0, -1)].centerline[10]) + (None,))
    expert = Expert(m, route)
    junction = np.flatnonzero(expert.route.is_junction)
    exit_s = float(route.s[junction[-1]])
    cross_s = exit_s + 1.5
    x, y, yaw, _ = along_route(route, cross_s)
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    start = np.array([x, y]) - 4.0 * left
    walk = 0.7 * left  # slowly: still on the road when the ego arrives

    def actors(t):
        p = start + walk * t
        return Boxes(center=[[p[0], p[1], 0.9]], size=[[0.5, 0.5, 1.8]], yaw=[yaw + math.pi / 2],
                     label=[ObjectClass.PEDESTRIAN], velocity=[walk], ids=[77])

    start_s = float(route.s[junction[0]]) - 40.0
    x0, y0, yaw0, _ = along_route(route, start_s)
    log = closed_loop(expert, (x0, y0, yaw0, 8.0), 40.0, actors_fn=actors)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    waiting = log["v"] < 0.05
    assert waiting.any()
    # Waited off the crossing, and outside the junction: not in the way of cross traffic.
    assert front[waiting].max() < float(route.s[junction[0]])
    assert log["min_clearance"].min() > 1.0
    assert log["s"][-1] > cross_s + 5.0  # and went on


def test_does_not_queue_inside_a_junction(fabriksgatan):
    """A car stands just past the junction: queued behind it the ego would stand inside the junction
    (in the way of cross traffic) and on the exit crossing. It waits at the junction's entrance
    instead, and drives through once the car has gone."""
    m = fabriksgatan
    route = m.route((-60.0, -17.0, None), tuple(m.lanes[(1, 0, -1)].centerline[10]) + (None,))
    expert = Expert(m, route)
    junction = np.flatnonzero(expert.route.is_junction)
    entry_s, exit_s = float(route.s[junction[0]]), float(route.s[junction[-1]])
    car_s, leaves_at = exit_s + 4.5, 20.0  # its rear 2.2 m past the exit: no room for the ego behind it

    def actors(t):
        if t >= leaves_at:  # gone round the next corner (the route ends 10 m past the junction)
            return Boxes()
        x, y, yaw, vel = along_route(route, car_s)
        return Boxes(center=[[x, y, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw], label=[ObjectClass.VEHICLE],
                     velocity=[vel], ids=[31])

    x0, y0, yaw0, _ = along_route(route, entry_s - 40.0)
    log = closed_loop(expert, (x0, y0, yaw0, 8.0), 40.0, actors_fn=actors)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    waiting = (log["t"] > 12.0) & (log["t"] < leaves_at)
    assert log["v"][waiting].max() < 0.05
    assert "queue:31" in set(log["reason"])
    assert front[log["t"] < leaves_at].max() < entry_s  # never entered while there was no room past it
    assert log["min_clearance"].min() > 1.0
    assert log["s"][-1] > exit_s + 5.0  # went through once the car had gone


def test_passes_a_pedestrian_walking_along_the_pavement(town01):
    """A pedestrian walks towards the ego at the road edge 2.2 m beside the lane centre: no stop
    (stopping for such walkers leaves the ego standing where they later step onto a crossing),
    but a slow pass."""
    route = straight_route(town01)
    expert = Expert(town01, route)
    x, y, yaw, _ = along_route(route, 70.0)
    right = np.array([math.sin(yaw), -math.cos(yaw)])
    start = np.array([x, y]) + 2.2 * right
    walk = -1.3 * np.array([math.cos(yaw), math.sin(yaw)])  # towards the ego, along the road

    def actors(t):
        p = start + walk * t
        return Boxes(center=[[p[0], p[1], 0.9]], size=[[0.5, 0.6, 1.8]], yaw=[yaw + math.pi],
                     label=[ObjectClass.PEDESTRIAN], velocity=[walk], ids=[61])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 10.0), 15.0, actors_fn=actors)
    assert log["v"].min() > 2.0  # did not stop
    assert log["v"][log["reason"] == "free"].size < len(log["v"])  # but it did slow down for it
    assert log["min_clearance"].min() > 0.6


def test_waits_at_the_entry_for_a_pedestrian_walking_to_the_exit_crossing(fabriksgatan):
    """A pedestrian walks along the pavement towards the crossing where the route leaves the
    junction (SUMO's walkers step onto it without looking): the ego does not enter the junction
    while the walker is at or about to reach that crossing."""
    m = fabriksgatan
    route = m.route((-60.0, -17.0, None), tuple(m.lanes[(1, 0, -1)].centerline[-1]) + (None,))
    expert = Expert(m, route)
    junction = np.flatnonzero(expert.route.is_junction)
    entry_s, exit_s = float(route.s[junction[0]]), float(route.s[junction[-1]])
    ped_s0, walk = exit_s + 9.0, 1.3

    def ped_s(t):
        return ped_s0 - walk * t

    def actors(t):
        x, y, yaw, _ = along_route(route, ped_s(t))
        right = np.array([math.sin(yaw), -math.cos(yaw)])
        p = np.array([x, y]) + 2.8 * right
        vel = -walk * np.array([math.cos(yaw), math.sin(yaw)])
        return Boxes(center=[[p[0], p[1], 0.9]], size=[[0.5, 0.6, 1.8]], yaw=[yaw + math.pi],
                     label=[ObjectClass.PEDESTRIAN], velocity=[vel], ids=[44])

    x0, y0, yaw0, _ = along_route(route, entry_s - 45.0)
    log = closed_loop(expert, (x0, y0, yaw0, 8.0), 30.0, actors_fn=actors, stop_when_done=False)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    rear = log["s"] - (expert.config.ego.length_m - expert.config.ego.rear_axle_to_front_m)
    at_crossing = np.abs(ped_s(log["t"]) - exit_s) < 2.0
    assert at_crossing.any()
    # While the walker is at the exit crossing the ego is either before the junction or through it.
    assert np.all((front[at_crossing] < entry_s) | (rear[at_crossing] > exit_s + 1.0))
    assert log["min_clearance"].min() > 0.6
    assert log["s"][-1] > exit_s + 5.0


def test_yields_to_crossing_cars_clear_of_the_nearer_lane(town01):
    """Cars cross the road away from any map junction (a driveway, SUMO's own junction): the ego
    yields to one in the far lane of the crossed road, and stands far enough back that the next
    one, in the nearer lane, passes clear of its bumper."""
    route = straight_route(town01)
    expert = Expert(town01, route)
    far_s, near_s = 60.0, 56.5

    def crosser(s, side, offset, start_t, speed, car_id):
        x, y, yaw, _ = along_route(route, s)
        left = np.array([-math.sin(yaw), math.cos(yaw)])
        heading = -side * left
        return lambda t: (np.array([x, y]) + side * offset * left + heading * speed * (t - start_t), heading * speed, car_id)

    # A slow one from the left that the ego stops for; then a fast one from the right, in the nearer lane.
    cars = [crosser(far_s, 1.0, 12.0, 0.0, 1.5, 51), crosser(near_s, -1.0, 25.0, 8.0, 7.0, 52)]

    def actors(t):
        states = [c(t) for c in cars]
        return Boxes(center=[[p[0], p[1], 0.75] for p, _, _ in states], size=[[4.6, 1.9, 1.5]] * len(states),
                     yaw=[math.atan2(v[1], v[0]) for _, v, _ in states], label=[ObjectClass.VEHICLE] * len(states),
                     velocity=[v for _, v, _ in states], ids=[i for _, _, i in states])

    log = closed_loop(expert, (route.path[0, 0], route.path[0, 1], route.yaw[0], 8.0), 20.0, actors_fn=actors)
    assert any(r == "yield:51" for r in log["reason"])
    assert log["min_clearance"].min() > 1.5  # (standing a plain gap behind the first: ~1.0 m)


def test_enters_the_junction_when_the_queue_past_it_never_clears(fabriksgatan):
    """The same car past the junction never moves: after deadlock_time_s the ego stops waiting at
    the entrance and queues into the junction behind it (rather than be blocked for good)."""
    m = fabriksgatan
    route = m.route((-60.0, -17.0, None), tuple(m.lanes[(1, 0, -1)].centerline[10]) + (None,))
    expert = Expert(m, route)
    junction = np.flatnonzero(expert.route.is_junction)
    entry_s, exit_s = float(route.s[junction[0]]), float(route.s[junction[-1]])
    x, y, yaw, vel = along_route(route, exit_s + 4.5)
    car = Boxes(center=[[x, y, 0.75]], size=[[4.6, 1.9, 1.5]], yaw=[yaw], label=[ObjectClass.VEHICLE], velocity=[vel],
                ids=[32])
    x0, y0, yaw0, _ = along_route(route, entry_s - 40.0)
    log = closed_loop(expert, (x0, y0, yaw0, 8.0), 50.0, actors_fn=lambda t: car)
    front = log["s"] + expert.config.ego.rear_axle_to_front_m
    assert front[log["t"] < 20.0].max() < entry_s  # waited at the entrance first
    assert front[-1] > entry_s + 2.0  # then queued into the junction
    assert log["min_clearance"].min() > 0.5


def test_compiled_idm_rollout_equals_the_python_reference():
    """simulate_on_envelope (numba) gives simulate's numbers with envelope_speed as v0_of_s, over
    random obstacles, envelopes, kerb pedestrians and creep caps."""
    from planning.expert_config import IdmConfig
    from planning.speed_profile import envelope_speed, simulate, simulate_on_envelope

    rng = np.random.default_rng(11)
    cfg = IdmConfig()
    for _ in range(300):
        n = int(rng.integers(0, 6))
        s_obs, v_obs = rng.uniform(-2, 80, n), rng.uniform(0, 12, n) * (rng.random(n) < 0.6)
        gaps = rng.choice([0.5, 3.0], n)
        env_s = np.cumsum(rng.uniform(0.5, 2.0, 200))
        env_v = np.clip(np.cumsum(rng.normal(0, 0.3, 200)) + 8.0, 0.0, 14.0)
        offset, preview = rng.uniform(0, 5), rng.uniform(0, 1.5)
        creep = math.inf if rng.random() < 0.7 else rng.uniform(0.5, 2.0)
        kerb = np.sort(rng.uniform(0, 60, int(rng.integers(0, 4))))
        v0, s0 = rng.uniform(0, 14), rng.uniform(0, 20)
        args = (kerb.tolist(), 1.5 ** 2, 2.0 * 1.5)
        ref = simulate(v0, s0, s_obs, v_obs, gaps,
                       lambda s, v: envelope_speed(s, v, env_s, env_v, offset, preview, creep, *args),
                       cfg, 0.1, 8.0, s0 + 60.0)
        got = simulate_on_envelope(v0, s0, s_obs, v_obs, gaps, env_s, env_v, offset, preview, creep, kerb, *args[1:],
                                   cfg, 0.1, 8.0, s0 + 60.0)
        for a, b in zip(ref[:3], got[:3]):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        assert got[3] == pytest.approx(ref[3], abs=1e-12) and got[4] == ref[4]
