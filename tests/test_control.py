"""Closed-loop tests of control.Controller on a kinematic bicycle (tests/kinematic_bicycle.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adstack.errors import DataError
from adstack.types import EgoState, Trajectory
from control import Controller, ControllerConfig, VehicleLimits
from control.config import DEFAULT_PARAMS, LateralConfig
from kinematic_bicycle import KinematicBicycle

DT = 0.05


def path_trajectory(xy: np.ndarray, speed, stamp: float = 0.0) -> Trajectory:
    """A trajectory along the polyline ``xy`` at ``speed`` (scalar or per point)."""
    d = np.diff(xy, axis=0)
    yaw = np.arctan2(d[:, 1], d[:, 0])
    yaw = np.append(yaw, yaw[-1])
    s = np.concatenate([[0.0], np.cumsum(np.hypot(d[:, 0], d[:, 1]))])
    v = np.broadcast_to(np.asarray(speed, dtype=float), s.shape)
    # Time stamps consistent with the speeds (constant acceleration between points).
    v_mean = np.maximum(0.5 * (v[1:] + v[:-1]), 0.1)
    t = np.concatenate([[0.0], np.cumsum(np.diff(s) / v_mean)])
    return Trajectory(np.column_stack([xy, yaw, v, t]), stamp=stamp)


def straight(length=300.0):
    x = np.arange(0.0, length, 1.0)
    return np.column_stack([x, np.zeros_like(x)])


def circle(radius=25.0):
    # Nearly one lap counter-clockwise, starting at the origin heading +x (centre at (0, R)).
    th = np.linspace(-math.pi / 2, 3 * math.pi / 2 - 0.2, 600)
    return np.column_stack([radius * np.cos(th), radius * np.sin(th) + radius])


def lane_change(width=3.5, length=40.0):
    x = np.arange(0.0, 300.0, 0.5)
    # Smooth (cosine) lateral shift between x = 60 and 60 + length.
    u = np.clip((x - 60.0) / length, 0.0, 1.0)
    return np.column_stack([x, width * (1 - np.cos(math.pi * u)) / 2])


def run_closed_loop(ctrl, traj_fn, car, seconds, dt=DT):
    """Drive ``car`` for ``seconds``; ``traj_fn(t)`` gives the trajectory each tick. Returns the log."""
    log = {"t": [], "x": [], "y": [], "v": [], "steer": [], "accel": [], "cte": [], "status": [], "emergency": []}
    for k in range(int(round(seconds / dt))):
        t = k * dt
        ego = car.state()
        cmd = ctrl.step(ego, traj_fn(t), t)
        for key, val in (("t", t), ("x", ego.x), ("y", ego.y), ("v", ego.v), ("steer", cmd.steer),
                         ("accel", cmd.accel), ("cte", ctrl.debug.cross_track_m), ("status", ctrl.debug.status),
                         ("emergency", cmd.emergency)):
            log[key].append(val)
        car.tick(cmd, dt)
    return {k: np.asarray(v) for k, v in log.items()}


def assert_within_limits(log, limits: VehicleLimits, dt=DT):
    eps = 1e-9
    assert np.all(np.abs(log["steer"]) <= limits.max_steer_rad + eps)
    assert np.all(np.abs(np.diff(log["steer"])) <= limits.max_steer_rate_rad_s * dt + eps)
    assert np.all(log["accel"] <= limits.max_accel_mps2 + eps)
    assert np.all(log["accel"] >= -limits.max_decel_mps2 - eps)
    daccel = np.diff(log["accel"])
    # Braking may come on at the emergency jerk only on commands flagged as emergencies.
    brake_jerk = np.where(log["emergency"][1:], limits.emergency_jerk_mps3, limits.max_jerk_mps3)
    assert np.all(daccel <= limits.max_jerk_mps3 * dt + eps)
    assert np.all(daccel >= -brake_jerk * dt - eps)


def fresh(traj: Trajectory):
    """The same geometry re-stamped every tick, as a planner running at the control rate would."""
    return lambda t: Trajectory(traj.points, stamp=t)


METHODS = ["pure_pursuit", "stanley"]


def make_controller(method):
    return Controller(ControllerConfig(lateral=LateralConfig(method=method)))


@pytest.mark.parametrize("method", METHODS)
def test_tracks_straight_line_from_an_offset(method):
    ctrl = make_controller(method)
    car = KinematicBicycle(x=0.0, y=1.0, yaw=0.1, v=8.0)  # 1 m left of the line, pointing away
    log = run_closed_loop(ctrl, fresh(path_trajectory(straight(), 10.0)), car, 20.0)
    assert abs(log["cte"][0]) > 0.9
    settled = np.abs(log["cte"][log["t"] > 8.0])
    assert settled.max() < 0.05, settled.max()
    assert abs(log["v"][-1] - 10.0) < 0.2
    assert_within_limits(log, ctrl.config.limits)


@pytest.mark.parametrize("pose_offset_m", [0.0, 1.35], ids=["pose_rear_axle", "pose_centre"])
@pytest.mark.parametrize("method", METHODS)
def test_tracks_circle(method, pose_offset_m):
    radius = 25.0
    ctrl = Controller(ControllerConfig(lateral=LateralConfig(method=method), rear_axle_offset_m=pose_offset_m))
    car = KinematicBicycle(x=0.0, y=0.0, yaw=0.0, v=8.0, pose_offset_m=pose_offset_m)
    log = run_closed_loop(ctrl, fresh(path_trajectory(circle(radius), 8.0)), car, 17.0)  # 136 m of 157
    # Distance from the circle's centre is the cross-track error, independent of the controller's own estimate.
    radial_error = np.abs(np.hypot(log["x"], log["y"] - radius) - radius)
    assert radial_error[log["t"] > 3.0].max() < 0.25, radial_error[log["t"] > 3.0].max()
    assert abs(np.mean(log["v"][log["t"] > 5.0]) - 8.0) < 0.3
    assert_within_limits(log, ctrl.config.limits)


@pytest.mark.parametrize("method", METHODS)
def test_tracks_lane_change(method):
    ctrl = make_controller(method)
    path = lane_change()
    car = KinematicBicycle(x=0.0, y=0.0, yaw=0.0, v=12.0)
    log = run_closed_loop(ctrl, fresh(path_trajectory(path, 12.0)), car, 15.0)
    assert log["y"][-1] == pytest.approx(3.5, abs=0.05)  # ended in the target lane
    assert np.abs(log["cte"]).max() < 0.3, np.abs(log["cte"]).max()
    assert_within_limits(log, ctrl.config.limits)


def test_speed_step_response_without_overshoot():
    ctrl = Controller()
    path = straight(500.0)
    car = KinematicBicycle(v=0.0)

    def traj(t):  # stand still for 1 s, then a step to 10 m/s, then a step down to 4 m/s at 15 s
        speed = 0.0 if t < 1.0 else (10.0 if t < 15.0 else 4.0)
        return Trajectory(path_trajectory(path, speed).points, stamp=t)

    log = run_closed_loop(ctrl, traj, car, 30.0)
    up = log["v"][(log["t"] > 1.0) & (log["t"] < 15.0)]
    down = log["v"][log["t"] > 15.0]
    assert log["v"][log["t"] < 1.0].max() == 0.0  # a stop target holds the car at rest
    assert up.max() < 10.0 + 0.3, up.max()  # overshoot bound
    assert abs(up[-1] - 10.0) < 0.1
    assert down.min() > 4.0 - 0.3, down.min()
    assert abs(down[-1] - 4.0) < 0.1
    # Rise time: the car accelerates at the limit, 10 m/s at 3 m/s^2 is 3.3 s plus jerk and lag.
    reached = log["t"][(log["t"] > 1.0) & (log["v"] > 9.0)]
    assert reached[0] - 1.0 < 6.0
    assert_within_limits(log, ctrl.config.limits)


def test_stops_at_the_end_of_a_stopping_trajectory():
    """A plan that brakes to a stop at x = 40 m: the car stops near there and stays stopped."""
    x = np.arange(0.0, 60.0, 0.5)
    v = np.sqrt(np.clip(2 * 2.0 * (40.0 - x), 0.0, None))  # 2 m/s^2 braking to rest at x = 40
    v = np.minimum(v, 10.0)
    traj = path_trajectory(np.column_stack([x, np.zeros_like(x)]), v)
    car = KinematicBicycle(v=10.0)
    ctrl = Controller()
    log = run_closed_loop(ctrl, fresh(traj), car, 20.0)
    assert log["v"][-40:].max() == 0.0
    assert 38.0 < log["x"][-1] < 41.0, log["x"][-1]


def test_commands_stay_within_limits_under_extreme_requests():
    """A path with right-angle kinks, starting pointed away from it, and speed steps 0 <-> 25 m/s."""
    limits = VehicleLimits()
    ctrl = Controller()
    car = KinematicBicycle(x=0.0, y=-3.0, yaw=-2.5, v=2.0)  # pointing away from the path
    pts = np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 30.0], [-240.0, 30.0]])
    dense = np.concatenate([np.linspace(pts[i], pts[i + 1], 100, endpoint=False) for i in range(3)])

    def traj(t):
        return Trajectory(path_trajectory(dense, 25.0 if (t // 3.0) % 2 == 0 else 0.0).points, stamp=t)

    log = run_closed_loop(ctrl, traj, car, 12.0)
    # The requests did hit the limits, so the clamp was exercised.
    assert np.abs(log["steer"]).max() == pytest.approx(limits.max_steer_rad)
    assert log["accel"].max() == pytest.approx(limits.max_accel_mps2)
    assert log["accel"].min() == pytest.approx(-limits.max_decel_mps2)
    assert_within_limits(log, limits)


@pytest.mark.parametrize("kind", ["empty", "stale", "nan", "none"])
def test_bad_trajectory_gives_controlled_stop(kind):
    ctrl = Controller()
    car = KinematicBicycle(v=10.0)
    good = path_trajectory(straight(), 10.0)

    def traj(t):
        if t < 1.0:
            return Trajectory(good.points, stamp=t)
        if kind == "empty":
            return Trajectory(stamp=t)
        if kind == "stale":
            return Trajectory(good.points, stamp=0.95)  # the planner stopped publishing at 0.95 s
        if kind == "nan":
            bad = good.points.copy()
            bad[5, 0] = np.nan
            return Trajectory(bad, stamp=t)
        return None

    log = run_closed_loop(ctrl, traj, car, 8.0)
    after = log["t"] > 1.0 + ctrl.config.stale_timeout_s
    expected = {"empty": "empty_trajectory", "none": "empty_trajectory", "stale": "stale_trajectory",
                "nan": "invalid_trajectory"}[kind]
    assert set(log["status"][after]) == {expected}
    # Braking at the configured controlled-stop rate (not an emergency), reached under the jerk limit.
    assert log["accel"][after].min() == pytest.approx(-ctrl.config.safe_stop_decel_mps2)
    assert not log["emergency"].any()
    assert log["v"][-1] == 0.0
    stop_distance = log["x"][-1] - log["x"][np.argmax(after)]
    assert stop_distance < 10.0**2 / (2 * ctrl.config.safe_stop_decel_mps2) + 10.0 * 0.6
    assert np.abs(log["y"]).max() < 0.1  # a stale path is still tracked; otherwise the wheel is held straight
    assert_within_limits(log, ctrl.config.limits)


def test_trajectory_driven_past_is_a_stop():
    ctrl = Controller()
    traj = path_trajectory(straight(20.0), 10.0)
    cmd = ctrl.step(EgoState(x=30.0, y=0.0, yaw=0.0, v=10.0), Trajectory(traj.points, stamp=0.0), 0.0)
    assert ctrl.debug.status == "trajectory_exhausted"
    assert cmd.accel < 0


def test_params_file_loads_and_rejects_bad_values(tmp_path):
    cfg = ControllerConfig.load(DEFAULT_PARAMS)
    assert cfg == ControllerConfig()  # the shipped file states the defaults
    assert cfg.limits.wheelbase_m == VehicleLimits().wheelbase_m and cfg.lateral.method in ("pure_pursuit", "stanley")
    bad = tmp_path / "bad.param.yaml"
    bad.write_text("controller:\n  ros__parameters:\n    lateral:\n      method: mpcc\n")
    with pytest.raises(DataError, match="lateral.method"):
        ControllerConfig.load(bad)
    bad.write_text("controller:\n  ros__parameters:\n    limits:\n      max_decel_mps2: -1.0\n")
    with pytest.raises(DataError, match="max_decel_mps2"):
        ControllerConfig.load(bad)
    bad.write_text("controller:\n  ros__parameters:\n    lookahed_min_m: 3.0\n")
    with pytest.raises(DataError, match="unknown parameter"):
        ControllerConfig.load(bad)


def test_closed_loop_with_the_simulator_vehicle():
    """The same controller on sim/vehicle.py's bicycle (its own limits and wheelbase)."""
    vehicle = pytest.importorskip("sim.vehicle")
    params = vehicle.VehicleParams()
    limits = VehicleLimits(wheelbase_m=params.wheelbase, max_steer_rad=min(0.6, params.max_steer),
                           max_steer_rate_rad_s=params.max_steer_rate, max_accel_mps2=params.max_accel,
                           max_decel_mps2=params.max_decel, max_jerk_mps3=params.max_jerk)
    ctrl = Controller(ControllerConfig(limits=limits))
    model = vehicle.BicycleModel(params)
    model.reset(EgoState(x=0.0, y=0.0, yaw=0.0, v=0.0))
    traj = path_trajectory(lane_change(), 12.0)
    errors = []
    for k in range(int(15.0 / DT)):
        t = k * DT
        cmd = ctrl.step(model.state, Trajectory(traj.points, stamp=t), t)
        errors.append(abs(ctrl.debug.cross_track_m))
        model.step(cmd, DT)
    assert model.state.y == pytest.approx(3.5, abs=0.05)
    assert abs(model.state.v - 12.0) < 0.2
    assert max(errors) < 0.3


def test_hard_braking_request_is_an_emergency():
    """A plan that suddenly stops 12 m ahead at 12 m/s: flagged emergency, brakes build up fast."""
    ctrl = Controller()
    car = KinematicBicycle(v=12.0)
    x = np.arange(0.0, 100.0, 0.5)

    def traj(t):
        v = np.full_like(x, 12.0) if t < 1.0 else np.where(x < 12.0 + 12.0 * 1.0, 12.0 * np.clip((24.0 - x) / 12.0, 0, 1), 0.0)
        return Trajectory(path_trajectory(np.column_stack([x, np.zeros_like(x)]), v).points, stamp=t)

    log = run_closed_loop(ctrl, traj, car, 5.0)
    assert log["emergency"].any()
    hard = log["accel"] <= -ctrl.config.limits.max_decel_mps2 + 1e-9
    first = np.argmax(log["emergency"])
    assert hard.any() and log["t"][np.argmax(hard)] - log["t"][first] < 0.4  # full braking within 0.4 s
    assert_within_limits(log, ctrl.config.limits)


def test_a_stop_planned_within_one_point_brakes_fully():
    """An expert's emergency stop: 8 m/s now, 0 at the next point 1 m on, i.e. -32 m/s^2.
    A central-difference gradient read at the preview point would see about nothing of it."""
    from control.controller import plan_acceleration

    x = np.arange(0.0, 30.0, 1.0)
    v = np.where(x < 0.5, 8.0, 0.0)
    assert plan_acceleration(x, v, 0.2) == pytest.approx(-32.0)
    assert plan_acceleration(x, np.full_like(x, 5.0), 3.0) == 0.0
    ctrl = Controller()
    traj = Trajectory(np.column_stack([x, np.zeros_like(x), np.zeros_like(x), v, x / 8.0]), stamp=0.0)
    cmds = [ctrl.step(EgoState(x=0.0, y=0.0, yaw=0.0, v=8.0), traj, 0.05 * k) for k in range(6)]
    assert all(c.emergency for c in cmds)
    assert cmds[-1].accel == pytest.approx(-ctrl.config.limits.max_decel_mps2)
