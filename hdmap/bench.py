"""``python -m hdmap.bench [MAP ...]``: load time and query rates as JSON, one line per map.

Queries sample points within 1.5 m (sigma) of lane centrelines with the lane's heading +- 0.3 rad,
as a simulation's ego and traffic would ask them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def bench(name: str, map_dirs, samples: int = 2000, seed: int = 0) -> dict:
    from hdmap.map import _LOADED, load_map

    _LOADED.clear()
    t0 = time.perf_counter()
    hdmap = load_map(name, map_dirs=map_dirs)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hdmap.drivable_area
    union_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(hdmap._points), samples)
    xy = hdmap._points[pick] + rng.normal(0.0, 1.5, (samples, 2))
    yaw = hdmap._seg_heading[pick] + rng.normal(0.0, 0.3, samples)

    def rate(fn, count):
        t0 = time.perf_counter()
        fn()
        return count / (time.perf_counter() - t0)

    lanes = list(hdmap.lanes.values())
    pairs = [(lanes[i], lanes[j]) for i, j in rng.integers(0, len(lanes), (50, 2))]

    def routes():
        for a, b in pairs:
            try:
                hdmap.route((*a.centerline[0], a.heading[0]), (*b.centerline[-1], b.heading[-1]))
            except Exception:  # unreachable pairs count too: the search still ran
                pass

    area = np.random.default_rng(seed).uniform(hdmap._points.min(0), hdmap._points.max(0), (100_000, 2))
    return {
        "map": hdmap.name, "lanes": len(hdmap.lanes), "lane_points": int(len(hdmap._points)),
        "load_and_graph_s": round(load_s, 3), "drivable_union_s": round(union_s, 3),
        "nearest_lane_per_s": round(rate(lambda: [hdmap.nearest_lane(p[0], p[1], y) for p, y in zip(xy, yaw)], samples)),
        "nearest_lanes_batch_points_per_s": round(rate(lambda: hdmap.nearest_lanes(xy, yaw), samples)),
        "is_drivable_batch_points_per_s": round(rate(lambda: hdmap.is_drivable(area), len(area))),
        "is_drivable_single_per_s": round(rate(lambda: [hdmap.is_drivable(p) for p in xy[:500]], 500)),
        "lanes_in_radius_50m_per_s": round(rate(lambda: [hdmap.lanes_in_radius(p[0], p[1], y, 50.0) for p, y in zip(xy[:300], yaw[:300])], 300)),
        "routes_per_s": round(rate(routes, len(pairs)), 1),
    }


def main(argv=None) -> int:
    from adstack.paths import shared_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", nargs="*", default=["junction4", "grid_town", "Town01", "Town04"])
    parser.add_argument("--map-dir", action="append", default=[])
    args = parser.parse_args(argv)
    map_dirs = args.map_dir or [shared_data_dir() / "maps" / "carla"]
    for name in args.maps:
        print(json.dumps(bench(name, map_dirs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
