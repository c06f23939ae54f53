"""control stage: trajectory tracking (pure pursuit / Stanley, PI speed control) within vehicle limits."""

from control.config import ControllerConfig, LateralConfig, LongitudinalConfig
from control.controller import ControlDebug, Controller
from control.limits import VehicleLimits

__all__ = ["Controller", "ControllerConfig", "ControlDebug", "LateralConfig", "LongitudinalConfig", "VehicleLimits"]
