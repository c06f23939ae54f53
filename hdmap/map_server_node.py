"""Map and route server: publishes the route (nav_msgs/Path) and the lane centre lines
(visualization_msgs/MarkerArray), both latched (transient local) so late subscribers get them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adstack.node import Diagnostics, declare_params, latched_qos, param_file, run_node
from adstack.node_io import msg_class
from adstack.types import Trajectory

try:
    from rclpy.node import Node
except ImportError:
    Node = object


@dataclass
class MapServerConfig:
    routes: str = ""
    route_id: str = ""
    map: str = ""
    map_dirs: str = ""  # comma-separated
    marker_radius_m: float = 0.0  # 0: every lane; else only lanes within this distance of the route


def lane_markers(hdmap, route_xy: np.ndarray | None, radius_m: float, stamp: float):
    """One LINE_STRIP marker per lane centre line (map frame)."""
    from adstack.ros_convert import RclpyFactory, header_msg
    f = RclpyFactory()
    markers = []
    for k, lane in enumerate(hdmap.lanes.values()):
        pts = lane.centerline
        if radius_m > 0 and route_xy is not None:
            d = np.min(np.hypot(pts[::5, None, 0] - route_xy[None, ::10, 0], pts[::5, None, 1] - route_xy[None, ::10, 1]))
            if d > radius_m:
                continue
        m = f.make("visualization_msgs/msg/Marker", header=header_msg(stamp, "map", f), ns="lanes", id=k,
                   type=4, action=0, scale=f.make("geometry_msgs/msg/Vector3", x=0.15, y=0.0, z=0.0),
                   color=f.make("std_msgs/msg/ColorRGBA", r=0.7, g=0.7, b=0.7, a=0.8),
                   points=[f.make("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0) for x, y in pts[::2]])
        m.pose.orientation.w = 1.0
        markers.append(m)
    return f.make("visualization_msgs/msg/MarkerArray", markers=markers)


class MapServerNode(Node):
    def __init__(self):
        super().__init__("map_server")
        self.params = declare_params(self, MapServerConfig, param_file("hdmap", "map_server"))
        self.diag = Diagnostics(self, "map server")
        self.route_pub = self.create_publisher(msg_class("Path"), "output/route", latched_qos())
        self.lanes_pub = self.create_publisher(msg_class("MarkerArray"), "output/lane_markers", latched_qos())
        self.publish_once()

    def publish_once(self) -> None:
        from adstack.ros_convert import trajectory_to_path
        p = self.params
        if not p.routes or not p.route_id:
            self.diag.problem("no_route", "parameters routes and route_id are empty: nothing to serve", level=2)
            return
        try:
            from sim.drive import load_route_from_params
            _, hdmap, route = load_route_from_params(p)
        except Exception as exc:
            self.diag.problem("route_setup_failed", f"{type(exc).__name__}: {exc}", level=2)
            return
        pts = np.column_stack([route.path, route.yaw, route.speed_limit, np.zeros(len(route.path))])
        self.route_pub.publish(trajectory_to_path(Trajectory(pts[::2], "map", 0.0)))
        self.lanes_pub.publish(lane_markers(hdmap, route.path, p.marker_radius_m, 0.0))
        self.diag.set_value("route_length_m", f"{route.total_length:.1f}")
        self.diag.set_value("lanes", len(hdmap.lanes))


def main(args=None) -> int:
    return run_node(MapServerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
