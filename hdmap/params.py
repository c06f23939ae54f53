"""HD map parameters: defaults here, overrides in ``hdmap/config/hdmap.param.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adstack.config import load_params

DEFAULT_PARAM_FILE = Path(__file__).resolve().parent / "config" / "hdmap.param.yaml"
KMH = 1.0 / 3.6


@dataclass
class HDMapParams:
    waypoint_spacing_m: float = 1.0
    lane_change_penalty_m: float = 30.0
    lane_change_length_m: float = 15.0
    lane_change_min_stretch_m: float = 10.0
    route_spacing_m: float = 1.0
    heading_tolerance_rad: float = 1.5707963
    snap_max_distance_m: float = 10.0
    snap_ambiguity_m: float = 1.0
    backward_tolerance_m: float = 2.0
    default_speed_kmh_town: float = 50.0
    default_speed_kmh_low_speed: float = 30.0
    default_speed_kmh_rural: float = 70.0
    default_speed_kmh_motorway: float = 90.0
    default_speed_kmh_other: float = 50.0

    @classmethod
    def load(cls, path: str | Path | None = None) -> "HDMapParams":
        return load_params(cls, path or DEFAULT_PARAM_FILE)

    def default_speed_mps(self, road_type: str | None) -> float:
        """Speed limit for an OpenDRIVE road type that states no speed of its own."""
        kmh = {
            "town": self.default_speed_kmh_town,
            "lowSpeed": self.default_speed_kmh_low_speed,
            "pedestrian": self.default_speed_kmh_low_speed,
            "bicycle": self.default_speed_kmh_low_speed,
            "rural": self.default_speed_kmh_rural,
            "motorway": self.default_speed_kmh_motorway,
            "townExpressway": self.default_speed_kmh_rural,
        }.get(road_type or "", self.default_speed_kmh_other)
        return kmh * KMH
