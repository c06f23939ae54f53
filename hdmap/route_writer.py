"""Write CARLA Leaderboard 1.0 route files from our own routes (right-handed in, CARLA frame out).

``python -m hdmap.route_writer MAP --routes N --seed S --min-length M --out FILE`` draws N seeded
start/goal pairs on driving lanes, plans each with the lane graph, and writes sparse waypoints
(start, one per junction traversed, goal) the way Leaderboard files do; `adstack drive` turns them
back into a dense path. The project's demo routes (sim/routes/) were made with this command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from adstack.errors import UserError


def sparse_waypoints(route, hdmap, spacing_m: float = 60.0) -> np.ndarray:
    """Start, goal, and a point after every change of lane (junction turns), at most ``spacing_m`` apart."""
    keep = [0]
    keys = list(route.lane_keys)
    for i in range(1, len(keys)):
        if keys[i] != keys[i - 1] or route.s[i] - route.s[keep[-1]] >= spacing_m:
            keep.append(i)
    keep.append(len(keys) - 1)
    return np.asarray(sorted(set(keep)))


def write_route_file(path: str | Path, town: str, routes: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """``routes``: (id, (N,2|3) right-handed points, (N,) yaw rad). Written in CARLA's left-handed frame."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<routes>"]
    for route_id, pts, yaw in routes:
        lines.append(f'   <route id="{route_id}" town="{town}">')
        for p, a in zip(pts, yaw):
            z = p[2] if len(p) > 2 else 0.0
            lines.append(f'      <waypoint pitch="0.0" roll="0.0" x="{p[0]:.3f}" y="{-p[1]:.3f}" '
                         f'yaw="{-math.degrees(a):.3f}" z="{z:.3f}"/>')
        lines.append("   </route>")
    lines.append("</routes>")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_routes(hdmap, n: int, seed: int, min_length_m: float, max_length_m: float, attempts: int = 500):
    rng = np.random.default_rng(seed)
    lanes = [lane for lane in hdmap.lanes.values() if not lane.is_junction and lane.length > 30]
    out = []
    for _ in range(attempts):
        if len(out) == n:
            break
        a, b = rng.choice(len(lanes), 2, replace=False)
        la, lb = lanes[a], lanes[b]
        ia, ib = len(la.centerline) // 3, 2 * len(lb.centerline) // 3
        start = (*la.centerline[ia], float(la.heading[ia]))
        goal = (*lb.centerline[ib], float(lb.heading[ib]))
        try:
            route = hdmap.route(start, goal)
        except UserError:
            continue
        if not (min_length_m <= route.total_length <= max_length_m):
            continue
        idx = sparse_waypoints(route, hdmap)
        pts = np.column_stack([route.path[idx], np.zeros(len(idx))])
        out.append((str(len(out)), pts, route.yaw[idx]))
    return out


def main(argv=None) -> int:
    from hdmap import load_map
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("map")
    parser.add_argument("--map-dir", action="append", default=[])
    parser.add_argument("--routes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-length", type=float, default=300.0)
    parser.add_argument("--max-length", type=float, default=900.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        hdmap = load_map(args.map, map_dirs=args.map_dir)
        routes = make_routes(hdmap, args.routes, args.seed, args.min_length, args.max_length)
        write_route_file(args.out, Path(hdmap.name).stem, routes)
    except UserError as err:
        print(f"route_writer: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(routes)} routes on {hdmap.name} to {args.out}: "
          + ", ".join(f"{len(p)} waypoints" for _, p, _ in routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
