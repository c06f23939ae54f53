"""The ego's kinematic bicycle: actuator limits hold and the geometry is exact."""

import math

import numpy as np
import pytest

from adstack.errors import DataError
from adstack.types import Command, EgoState
from sim.vehicle import BicycleModel, VehicleParams

DT = 0.05


def drive(model, commands):
    return [model.step(c, DT) for c in commands]


def test_steering_angle_moves_at_most_max_steer_rate_and_stays_within_max_steer():
    p = VehicleParams()
    model = BicycleModel(p)
    model.reset(EgoState(0.0, 0.0, 0.0, v=5.0))
    states = drive(model, [Command(steer=1.5)] * 40 + [Command(steer=-1.5)] * 60)
    steer = np.array([0.0] + [s.steer for s in states])
    assert np.abs(np.diff(steer)).max() <= p.max_steer_rate * DT + 1e-12
    assert np.abs(steer).max() == pytest.approx(p.max_steer)
    assert steer[-1] == pytest.approx(-p.max_steer)


def test_acceleration_obeys_jerk_and_bounds_and_speed_stays_in_range():
    p = VehicleParams(max_speed=12.0)
    model = BicycleModel(p)
    model.reset(EgoState(0.0, 0.0, 0.0, v=5.0))
    commands = [Command(accel=10.0)] * 30 + [Command(accel=-20.0)] * 30 + [Command(accel=2.0)] * 200
    states = drive(model, commands)
    v = np.array([5.0] + [s.v for s in states])
    accel = np.diff(v) / DT
    moving = (v[1:] > 0) & (v[1:] < p.max_speed) & (v[:-1] > 0)  # where no speed bound acted
    assert accel.max() <= p.max_accel + 1e-9 and accel.min() >= -p.max_decel - 1e-9
    jerk = np.diff(accel) / DT
    both = moving[1:] & moving[:-1]
    assert np.abs(jerk[both]).max() <= p.max_jerk + 1e-6
    assert v.min() == 0.0 and v.max() == pytest.approx(p.max_speed)  # stops, no reverse; capped
    assert states[-1].accel == pytest.approx(0.0)
    # The reported acceleration is the achieved one.
    assert np.allclose([s.accel for s in states], accel)


def test_emergency_command_brakes_with_the_emergency_jerk():
    p = VehicleParams()
    normal, emergency = BicycleModel(p), BicycleModel(p)
    for m in (normal, emergency):
        m.reset(EgoState(0.0, 0.0, 0.0, v=15.0))
    a_normal = drive(normal, [Command(accel=-8.0)] * 5)[-1].accel
    a_emergency = drive(emergency, [Command(accel=-8.0, emergency=True)] * 5)[-1].accel
    assert a_normal == pytest.approx(-p.max_jerk * DT * 5)
    assert a_emergency == pytest.approx(-p.max_decel)


def test_constant_steer_drives_a_circle_of_radius_wheelbase_over_tan_steer():
    p = VehicleParams(max_steer_rate=100.0)
    model = BicycleModel(p)
    steer = 0.3
    model.reset(EgoState(10.0, -5.0, 0.4, v=6.0, steer=steer))
    states = drive(model, [Command(steer=steer, accel=0.0)] * 400)
    xy = np.array([(s.x, s.y) for s in states])
    radius = p.wheelbase / math.tan(steer)
    # The centre lies to the left of the start pose, at distance R.
    centre = np.array([10.0, -5.0]) + radius * np.array([-math.sin(0.4), math.cos(0.4)])
    assert np.allclose(np.linalg.norm(xy - centre, axis=1), radius, atol=1e-9)
    assert states[-1].yaw_rate == pytest.approx(6.0 / radius)
    travelled = 6.0 * DT * 400
    heading_change = travelled / radius
    d = states[-1].yaw - (0.4 + heading_change)
    assert abs(math.atan2(math.sin(d), math.cos(d))) < 1e-9


def test_garbage_command_brakes_and_never_yields_nan():
    model = BicycleModel()
    model.reset(EgoState(0.0, 0.0, 0.0, v=10.0))
    states = drive(model, [Command(steer=float("nan"), accel=float("inf") * 0)] * 100)
    assert all(math.isfinite(s.x) and math.isfinite(s.y) and math.isfinite(s.yaw) for s in states)
    assert states[-1].v == 0.0


def test_impossible_parameters_are_rejected():
    with pytest.raises(DataError, match="wheelbase"):
        VehicleParams(wheelbase=0.0)
    with pytest.raises(DataError, match="rear_overhang"):
        VehicleParams(length=3.0, wheelbase=2.8, rear_overhang=0.5)
