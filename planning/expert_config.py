"""Parameters of the privileged expert, validated from ``planning/config/expert.param.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adstack.config import load_params
from adstack.errors import DataError

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "expert.param.yaml"


@dataclass
class EgoGeometry:
    """The ego box relative to its pose point, the rear axle (sim/vehicle.py's base_link)."""

    length_m: float = 4.7
    width_m: float = 1.9
    rear_axle_to_front_m: float = 3.75


@dataclass
class IdmConfig:
    """Intelligent Driver Model (Treiber, Hennecke, Helbing 2000) for every longitudinal constraint."""

    max_accel_mps2: float = 2.0
    comfortable_decel_mps2: float = 2.5
    max_decel_mps2: float = 8.0  # the IDM's request is clamped to this (the vehicle's strongest braking)
    time_headway_s: float = 1.2
    accel_exponent: float = 4.0
    min_gap_vehicle_m: float = 3.0  # bumper to bumper, standing behind a vehicle
    min_gap_pedestrian_m: float = 3.0
    min_gap_stop_line_m: float = 0.5  # front bumper to the stop line


@dataclass
class SpeedConfig:
    max_speed_mps: float = 12.0  # never faster than this, whatever the map allows
    speed_limit_factor: float = 1.0  # drive at this fraction of the map's speed limit
    max_lateral_accel_mps2: float = 2.0  # curve speed: v = sqrt(a_lat / curvature)
    min_curve_speed_mps: float = 3.0
    curvature_window_m: float = 3.0  # curvature from the heading change over +- this distance
    envelope_decel_mps2: float = 2.0  # slow down for curves and lower limits at this rate, early
    envelope_preview_s: float = 1.0  # the IDM's desired speed is read this far ahead at the current speed


@dataclass
class ActorConfig:
    range_m: float = 70.0  # actors farther than this from the ego are ignored
    prediction_horizon_s: float = 4.0
    prediction_step_s: float = 0.5
    lateral_margin_vehicle_m: float = 0.4  # added to both half widths when checking the corridor
    lateral_margin_pedestrian_m: float = 1.0
    lateral_margin_pedestrian_along_m: float = 0.6  # ... for one walking along the path (on the pavement; SUMO walkers step 0.4 m sideways at corners)
    # A vehicle that will cross the path is yielded to when it arrives before the ego is past + this.
    yield_time_margin_s: float = 2.0
    parallel_heading_rad: float = 0.5  # vehicles this aligned (or anti-aligned) with the path are lane traffic
    moving_speed_mps: float = 0.5  # below this an actor counts as standing still
    adjacent_lane_m: float = 3.0  # vehicles up to this far outside the corridor are in the next lane ...
    adjacent_lookahead_m: float = 25.0  # ... and, this far ahead at most, ...
    min_overtake_speed_mps: float = 2.5  # ... are only overtaken at least this much faster
    adjacent_min_speed_mps: float = 3.0  # ... when they drive faster than this (a standing queue is passed)
    crossing_band_m: float = 4.0  # pedestrian crossings: this deep inside a junction's rim on the route
    kerb_zone_m: float = 2.0  # pedestrians this close to the corridor's edge ...
    kerb_lookahead_m: float = 40.0  # ... and this far ahead at most ...
    kerb_speed_mps: float = 4.0  # ... are passed at most this fast


@dataclass
class SignalConfig:
    match_lateral_m: float = 2.5  # a light's stop line this close to the route counts as the route's
    match_heading_rad: float = 0.8
    yellow_max_decel_mps2: float = 4.0  # on yellow: stop if this decel suffices, else go
    hold_over_line_max_speed_mps: float = 3.0  # bumper over the line on red: hold if slower than this
    map_stop_line_lookback_m: float = 10.0  # a map stop line up to this far before the light's is used
    stop_sign_wait_s: float = 1.0  # standing still this long at a stop sign, then go
    stop_sign_stopped_mps: float = 0.05


@dataclass
class LaneChangeConfig:
    check_distance_m: float = 40.0  # start checking the target lane this far before the blend
    lane_half_width_m: float = 1.8  # a vehicle this close to the target lane centre is in it
    rear_gap_m: float = 6.0  # clear space wanted behind the ego in the target lane
    front_gap_m: float = 4.0  # ... and ahead of it
    closing_time_s: float = 2.5  # plus this many seconds of closing speed


@dataclass
class ExpertConfig:
    ego: EgoGeometry = field(default_factory=EgoGeometry)
    idm: IdmConfig = field(default_factory=IdmConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    actors: ActorConfig = field(default_factory=ActorConfig)
    signals: SignalConfig = field(default_factory=SignalConfig)
    lane_change: LaneChangeConfig = field(default_factory=LaneChangeConfig)
    horizon_min_m: float = 40.0  # trajectory length ahead of the ego
    horizon_time_s: float = 8.0  # ... or this many seconds at the current speed limit, if longer
    profile_step_s: float = 0.1  # forward simulation step of the speed profile
    profile_duration_s: float = 8.0
    progress_search_m: float = 60.0  # search this far along the route for the ego's position
    lost_distance_m: float = 15.0  # farther from the route than this: search the whole route again
    deadlock_time_s: float = 20.0  # stopped this long for a yield that never clears: creep
    creep_speed_mps: float = 1.5

    def __post_init__(self):
        if not self.horizon_min_m > 5.0:
            raise DataError("horizon_min_m must be > 5", "ExpertConfig")
        if not (0.0 < self.profile_step_s <= 0.5):
            raise DataError("profile_step_s must be in (0, 0.5]", "ExpertConfig")
        if not (0.0 < self.speed.speed_limit_factor <= 1.5):
            raise DataError("speed.speed_limit_factor must be in (0, 1.5]", "ExpertConfig")

    @staticmethod
    def load(path: str | Path = DEFAULT_PARAMS) -> "ExpertConfig":
        return load_params(ExpertConfig, path)
