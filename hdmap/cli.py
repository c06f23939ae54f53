"""``adstack map NAME_OR_PATH [--map-dir D] [--route X1 Y1 X2 Y2]``: summarize a map, optionally route."""

from __future__ import annotations

import math
import time

HELP = "inspect a map: lanes, junctions, traffic lights, a route between two poses"


def add_arguments(parser) -> None:
    parser.add_argument("map", metavar="NAME_OR_PATH", help="a .xodr path, a built-in map (junction4, grid_town, Town01) "
                                                           "or a name found as <map-dir>/<name>.xodr")
    parser.add_argument("--map-dir", action="append", default=[], metavar="D",
                        help="directory searched for <name>.xodr (repeatable; default: the shared CARLA maps)")
    parser.add_argument("--route", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"),
                        help="route between two points (right-handed map frame, metres); "
                             "each snaps to its nearest driving lane")
    parser.add_argument("--yaw", nargs=2, type=float, metavar=("YAW1_DEG", "YAW2_DEG"),
                        help="headings of the route's start and goal (degrees, counter-clockwise from +x)")
    parser.add_argument("--params", metavar="YAML", help="hdmap parameter file (default hdmap/config/hdmap.param.yaml)")


def run(args) -> int:
    from adstack.paths import shared_data_dir
    from hdmap.map import load_map
    from hdmap.params import HDMapParams

    map_dirs = list(args.map_dir) or [shared_data_dir() / "maps" / "carla"]
    params = HDMapParams.load(args.params) if args.params else None
    t0 = time.perf_counter()
    hdmap = load_map(args.map, map_dirs=map_dirs, params=params)
    load_s = time.perf_counter() - t0
    x0, y0, x1, y1 = hdmap.bounds
    print(f"map:            {hdmap.name} ({hdmap.xodr_path})")
    print(f"driving lanes:  {len(hdmap.lanes)} ({sum(l.is_junction for l in hdmap.lanes.values())} inside junctions)")
    print(f"junctions:      {len(hdmap.junction_ids)}")
    print(f"traffic lights: {len(hdmap.traffic_lights)} governing {sum(len(t.lanes) for t in hdmap.traffic_lights)} lanes")
    print(f"stop signs:     {len(hdmap.stop_signs)}")
    print(f"lane length:    {hdmap.total_lane_length / 1000.0:.2f} km")
    print(f"extent:         x {x0:.0f}..{x1:.0f} m, y {y0:.0f}..{y1:.0f} m")
    print(f"load time:      {load_s:.2f} s")
    if args.route:
        yaw0, yaw1 = (math.radians(a) for a in args.yaw) if args.yaw else (None, None)
        t0 = time.perf_counter()
        route = hdmap.route((args.route[0], args.route[1], yaw0), (args.route[2], args.route[3], yaw1))
        plan_ms = (time.perf_counter() - t0) * 1e3
        print(f"route length:   {route.total_length:.1f} m, {len(route.path)} points, {len(route.lane_sequence)} lanes, "
              f"{len(route.lane_change_indices)} lane changes ({plan_ms:.1f} ms)")
    return 0
