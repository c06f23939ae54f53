"""The vehicle's actuator limits: one dataclass shared by the controller and the simulated vehicle.

The simulator's bicycle model (``sim/vehicle.py``) imports this so the plant and the controller agree
on what the car can do.
"""

from __future__ import annotations

from dataclasses import dataclass

from adstack.errors import DataError


@dataclass
class VehicleLimits:
    """Geometry and actuator limits of the ego vehicle (SI units, radians, front-wheel angle)."""

    wheelbase_m: float = 2.85  # sim/vehicle.py and sim/config/world.param.yaml use 2.85
    max_steer_rad: float = 0.6
    max_steer_rate_rad_s: float = 0.7
    max_accel_mps2: float = 3.0
    max_decel_mps2: float = 8.0  # positive number: the strongest braking, accel >= -max_decel
    max_jerk_mps3: float = 10.0
    emergency_jerk_mps3: float = 40.0  # how fast the brakes may come on in an emergency (Command.emergency)

    def __post_init__(self):
        for name in ("wheelbase_m", "max_steer_rad", "max_steer_rate_rad_s", "max_accel_mps2",
                     "max_decel_mps2", "max_jerk_mps3", "emergency_jerk_mps3"):
            value = getattr(self, name)
            if not (value > 0.0):
                raise DataError(f"vehicle limit {name} must be > 0, got {value!r}", "VehicleLimits")
