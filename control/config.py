"""Controller parameters, validated from ``control/config/controller.param.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adstack.config import load_params
from adstack.errors import DataError
from control.limits import VehicleLimits

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "controller.param.yaml"
LATERAL_METHODS = ("pure_pursuit", "stanley")


@dataclass
class LateralConfig:
    method: str = "pure_pursuit"
    # Pure pursuit: look-ahead distance from the rear axle = clip(min + time * speed, min, max).
    lookahead_min_m: float = 3.0
    lookahead_time_s: float = 0.6
    lookahead_max_m: float = 20.0
    # Stanley, from the front axle: steer = heading_gain * heading error - atan(gain * cross-track / (speed + softening)).
    stanley_gain: float = 1.5
    stanley_softening_mps: float = 1.0
    stanley_heading_gain: float = 1.0


@dataclass
class LongitudinalConfig:
    kp_per_s: float = 1.0  # accel per speed error (m/s^2 per m/s)
    ki_per_s2: float = 0.1
    integral_zone_mps: float = 1.0  # integrate only when this close to the target, so steps do not overshoot
    integral_limit_mps2: float = 1.0
    speed_preview_s: float = 0.3  # read the target speed this far ahead along the path (actuator lag)
    speed_preview_min_m: float = 1.0  # ... and at least this far (a plan from standstill starts at 0 m/s)
    feedforward: bool = True  # add the trajectory's own acceleration at the car ((v1^2 - v0^2) / 2 ds)
    stop_speed_mps: float = 0.2  # below this with a stop target: hold the brake
    stop_hold_decel_mps2: float = 1.5


@dataclass
class ControllerConfig:
    limits: VehicleLimits = field(default_factory=VehicleLimits)
    lateral: LateralConfig = field(default_factory=LateralConfig)
    longitudinal: LongitudinalConfig = field(default_factory=LongitudinalConfig)
    # Where the ego pose sits: distance from the pose point back to the rear axle. 0: the pose is the
    # rear axle (Autoware's base_link, as sim/vehicle.py reports it); a CARLA actor's centre: ~wheelbase/2.
    rear_axle_offset_m: float = 0.0
    nominal_dt_s: float = 0.05  # used on the first step, when there is no previous time
    # A trajectory older than this (by its stamp) is stale: controlled stop.
    stale_timeout_s: float = 0.5
    safe_stop_decel_mps2: float = 4.0  # controlled stop on a stale, empty or invalid trajectory
    # A plan that asks for harder braking than this is an emergency: the command says so and the
    # braking may build up at limits.emergency_jerk_mps3 (sim/vehicle.py honours Command.emergency).
    emergency_decel_mps2: float = 5.0

    def __post_init__(self):
        if self.lateral.method not in LATERAL_METHODS:
            raise DataError(f"lateral.method must be one of {LATERAL_METHODS}, got {self.lateral.method!r}",
                            "ControllerConfig")
        if not (0.0 < self.safe_stop_decel_mps2 <= self.limits.max_decel_mps2):
            raise DataError("safe_stop_decel_mps2 must be in (0, limits.max_decel_mps2]", "ControllerConfig")
        if not (self.lateral.lookahead_min_m > 0 and self.lateral.lookahead_max_m >= self.lateral.lookahead_min_m):
            raise DataError("need 0 < lookahead_min_m <= lookahead_max_m", "ControllerConfig")

    @staticmethod
    def load(path: str | Path = DEFAULT_PARAMS) -> "ControllerConfig":
        return load_params(ControllerConfig, path)
