"""hdmap stage: OpenDRIVE maps through carla.Map in right-handed coordinates, lane graph, routing.

    from hdmap import load_map
    m = load_map("Town01", map_dirs=[...])
    key, lateral, s = m.nearest_lane(x, y, yaw)
    route = m.route((x0, y0, yaw0), (x1, y1, yaw1))
"""

from hdmap.coords import (carla_location_to_ros, carla_to_ros_xy, carla_to_ros_yaw, ros_to_carla_location,
                          wrap_angle)
from hdmap.map import HDMap, Lane, LaneKey, LanesNearby, MapSignal, StopLine, load_map
from hdmap.params import HDMapParams
from hdmap.routes import RouteSpec, dense_route, load_routes
from hdmap.routing import Route, plan_route

__all__ = [
    "HDMap", "HDMapParams", "Lane", "LaneKey", "LanesNearby", "MapSignal", "Route", "RouteSpec", "StopLine",
    "carla_location_to_ros", "carla_to_ros_xy", "carla_to_ros_yaw", "dense_route", "load_map", "load_routes", "plan_route",
    "ros_to_carla_location", "wrap_angle",
]
