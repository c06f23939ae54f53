"""The ego vehicle: a kinematic bicycle on the rear axle with actuator limits.

The pose is the rear-axle centre on the ground (Autoware's ``base_link``), map frame, REP-103.
A ``Command`` asks for a front-wheel angle and an acceleration; the actuators follow it within
their limits: the steering angle moves at most ``max_steer_rate`` per second and stays within
``max_steer``; the acceleration changes at most ``max_jerk`` per second (an emergency command may
use ``emergency_jerk``) and stays within [-max_decel, max_accel]; the speed stays in
[0, max_speed] (no reverse gear). Within one step the steering angle and acceleration are held and
the motion is integrated exactly along the resulting arc, so a constant steering angle drives a
circle of radius wheelbase / tan(steer) whatever the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adstack.errors import DataError
from adstack.types import Command, EgoState


@dataclass
class VehicleParams:
    wheelbase: float = 2.85  # m
    length: float = 4.7  # m, bumper to bumper
    width: float = 1.9  # m
    height: float = 1.5  # m
    rear_overhang: float = 0.95  # m, rear bumper to rear axle
    max_steer: float = 0.61  # rad, front-wheel angle (about 35 degrees)
    max_steer_rate: float = 0.7  # rad/s
    max_accel: float = 3.0  # m/s^2
    max_decel: float = 8.0  # m/s^2 (positive number)
    max_jerk: float = 10.0  # m/s^3, normal driving
    emergency_jerk: float = 40.0  # m/s^3, when Command.emergency is set
    max_speed: float = 25.0  # m/s

    def __post_init__(self):
        for name in ("wheelbase", "length", "width", "height", "max_steer", "max_steer_rate", "max_accel",
                     "max_decel", "max_jerk", "emergency_jerk", "max_speed"):
            if not getattr(self, name) > 0:
                raise DataError(f"vehicle parameter {name} must be > 0, got {getattr(self, name)}", "vehicle")
        if not (0 <= self.rear_overhang and self.wheelbase + self.rear_overhang <= self.length):
            raise DataError("vehicle: need 0 <= rear_overhang and wheelbase + rear_overhang <= length", "vehicle")
        if self.max_steer >= math.pi / 2:
            raise DataError("vehicle: max_steer must be below pi/2", "vehicle")

    @property
    def center_offset(self) -> float:
        """Distance from the rear axle forward to the box centre (m)."""
        return self.length / 2 - self.rear_overhang


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _wrap(angle: float) -> float:
    return math.atan2(math.sin(angle), math.cos(angle))


class BicycleModel:
    """Kinematic bicycle. ``reset(state)`` then ``step(command, dt) -> EgoState`` each tick."""

    def __init__(self, params: VehicleParams | None = None):
        self.params = params or VehicleParams()
        self.state = EgoState(0.0, 0.0, 0.0)
        self._actuator_accel = 0.0  # the acceleration the drivetrain/brakes currently apply

    def reset(self, state: EgoState) -> EgoState:
        p = self.params
        self.state = EgoState(state.x, state.y, _wrap(state.yaw), _clamp(state.v, 0.0, p.max_speed), state.z,
                              0.0, 0.0, _clamp(state.steer, -p.max_steer, p.max_steer), state.stamp)
        self.state.yaw_rate = self.state.v * math.tan(self.state.steer) / p.wheelbase
        self.state.accel = self._actuator_accel = _clamp(state.accel, -p.max_decel, p.max_accel)
        return self.state

    def step(self, command: Command, dt: float) -> EgoState:
        p, s = self.params, self.state
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        steer_goal = _clamp(float(command.steer) if math.isfinite(command.steer) else s.steer, -p.max_steer, p.max_steer)
        max_dsteer = p.max_steer_rate * dt
        steer = s.steer + _clamp(steer_goal - s.steer, -max_dsteer, max_dsteer)

        # Garbage in (NaN/inf) -> brake as hard as the jerk limit lets us: never integrate NaN.
        accel_goal = float(command.accel) if math.isfinite(command.accel) else -p.max_decel
        accel_goal = _clamp(accel_goal, -p.max_decel, p.max_accel)
        max_daccel = (p.emergency_jerk if command.emergency else p.max_jerk) * dt
        accel = self._actuator_accel + _clamp(accel_goal - self._actuator_accel, -max_daccel, max_daccel)

        # Speed stays in [0, max_speed]. When a bound stops it, the actuator settles at zero so a
        # car held at standstill does not wind up braking it must first unwind to move off.
        v_end = _clamp(s.v + accel * dt, 0.0, p.max_speed)
        achieved_accel = (v_end - s.v) / dt
        if v_end != s.v + accel * dt:
            accel = 0.0
        self._actuator_accel = accel
        distance = 0.5 * (s.v + v_end) * dt  # exact for constant acceleration within the step
        curvature = math.tan(steer) / p.wheelbase
        dyaw = distance * curvature
        if abs(dyaw) > 1e-9:
            radius = 1.0 / curvature
            x = s.x + radius * (math.sin(s.yaw + dyaw) - math.sin(s.yaw))
            y = s.y - radius * (math.cos(s.yaw + dyaw) - math.cos(s.yaw))
        else:
            x = s.x + distance * math.cos(s.yaw + dyaw / 2)
            y = s.y + distance * math.sin(s.yaw + dyaw / 2)
        self.state = EgoState(x, y, _wrap(s.yaw + dyaw), v_end, s.z, v_end * curvature, achieved_accel,
                              steer, s.stamp + dt)
        return self.state

    def predict(self, command: Command, dt: float) -> EgoState:
        """The state ``step(command, dt)`` would reach, without stepping (the model is unchanged)."""
        saved = self.state, self._actuator_accel
        try:
            return self.step(command, dt)
        finally:
            self.state, self._actuator_accel = saved
