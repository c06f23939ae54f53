"""CARLA Leaderboard route files (1.0 and 2.0 formats) and their dense interpolation.

1.0: ``<routes><route id town><waypoint x y z pitch roll yaw/>...</route></routes>``
2.0: ``<routes><route id town><waypoints><position x y z/>...</waypoints><scenarios>...</route></routes>``

Coordinates in the files are CARLA's (left-handed, yaw in degrees); ``RouteSpec`` holds them
converted to right-handed metres and radians. ``dense_route`` then does what the Leaderboard's
``interpolate_trajectory`` does with CARLA's GlobalRoutePlanner: plan the shortest lane route
between each pair of consecutive waypoints and join the legs, here on our own lane graph (the pip
carla wheel has no ``agents`` package) at ``spacing`` metres.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adstack.errors import DataError, UserError
from hdmap.coords import carla_to_ros_xy, carla_to_ros_yaw
from hdmap.routing import Route, plan_route


@dataclass
class RouteSpec:
    id: str
    town: str
    waypoints: np.ndarray             # (N,3) right-handed x, y, z
    yaw: np.ndarray | None = None     # (N,) rad where the file gives yaw (1.0 format)
    source: str = ""                  # the file it came from
    format: str = "1.0"
    scenarios: list = field(default_factory=list)  # 2.0: raw <scenario> attributes, for the scenario runner
    weather: dict = field(default_factory=dict)


def _float(elem, attr, path, route_id, default=None):
    value = elem.get(attr)
    if value is None:
        if default is not None:
            return default
        raise DataError(f"route {route_id!r}: <{elem.tag}> has no {attr!r} attribute", path)
    try:
        return float(value)
    except ValueError:
        raise DataError(f"route {route_id!r}: <{elem.tag}> {attr}={value!r} is not a number", path) from None


def load_routes(path: str | Path) -> list[RouteSpec]:
    """Parse a Leaderboard 1.0 or 2.0 route file into RouteSpecs (right-handed coordinates)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("route file not found", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"not valid XML: {exc}", path) from None
    if root.tag != "routes":
        raise DataError(f"root element is <{root.tag}>, expected <routes>", path)
    specs = []
    for route in root.findall("route"):
        route_id = route.get("id")
        town = route.get("town") or route.get("map")
        if route_id is None or town is None:
            raise DataError(f"a <route> lacks its id or town attribute (id={route_id!r}, town={town!r})", path)
        container = route.find("waypoints")
        if container is not None:  # 2.0
            points = container.findall("position")
            fmt = "2.0"
        else:
            points = route.findall("waypoint")
            fmt = "1.0"
        if len(points) < 2:
            raise DataError(f"route {route_id!r} has {len(points)} waypoint(s); at least 2 are needed", path)
        carla_xyz = np.array([[_float(p, a, path, route_id, 0.0 if a == "z" else None) for a in "xyz"] for p in points])
        xyz = carla_xyz.copy()
        xyz[:, :2] = carla_to_ros_xy(carla_xyz[:, :2])
        yaw = None
        if fmt == "1.0" and all(p.get("yaw") is not None for p in points):
            yaw = carla_to_ros_yaw(np.array([_float(p, "yaw", path, route_id) for p in points]))
        weather = dict(route.find("weather").attrib) if route.find("weather") is not None else {}
        scenarios = [dict(s.attrib) for s in route.iter("scenario")]
        specs.append(RouteSpec(id=str(route_id), town=town, waypoints=xyz, yaw=yaw, source=str(path), format=fmt,
                               scenarios=scenarios, weather=weather))
    if not specs:
        raise DataError("no <route> elements", path)
    return specs


def dense_route(hdmap, route_spec_or_waypoints, spacing: float = 1.0, yaw=None, use_yaw: bool = False) -> Route:
    """Interpolate sparse route waypoints through the lane graph into a dense Route.

    Accepts a RouteSpec or an (N,2)/(N,3) array of right-handed waypoints (with optional (N,) yaw).
    Like the Leaderboard, which hands only the waypoints' locations to the GlobalRoutePlanner, each
    waypoint snaps to the nearest driving lane whatever its heading; the yaw in 1.0 files is not
    reliable (route 13 of routes_training.xml has a waypoint whose yaw points against its lane).
    ``use_yaw=True`` snaps only to lanes heading within ``heading_tolerance_rad`` of the yaw.
    Lane changes follow the GlobalRoutePlanner's rule too: possible wherever the lane's marking
    allows one anywhere along it (``plan_route(..., leaderboard=True)``).
    """
    if isinstance(route_spec_or_waypoints, RouteSpec):
        waypoints = route_spec_or_waypoints.waypoints
        yaw = route_spec_or_waypoints.yaw if use_yaw else None
    else:
        waypoints = np.asarray(route_spec_or_waypoints, dtype=np.float64)
    if waypoints.ndim != 2 or waypoints.shape[1] < 2:
        raise UserError(f"route waypoints must be (N,2) or (N,3), got shape {waypoints.shape}")
    if not use_yaw:
        yaw = None
    yaws = [None] * len(waypoints) if yaw is None else list(np.asarray(yaw, dtype=np.float64))
    poses = [(float(w[0]), float(w[1]), y) for w, y in zip(waypoints, yaws)]
    return plan_route(hdmap, poses, spacing, leaderboard=True)
