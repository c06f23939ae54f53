"""``adstack drive``: drive one Leaderboard route in the embedded world and score it."""

from __future__ import annotations

import argparse
import sys


def add_drive_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``drive`` and ``eval``."""
    parser.add_argument("--map-dir", action="append", default=[], metavar="DIR",
                        help="where to find <Town>.xodr, after the built-in maps (repeatable)")
    parser.add_argument("--planner", default="expert", choices=["expert"])  # = sim.drive.PLANNERS (imported lazily)
    parser.add_argument("--perception", default="ground_truth", choices=["ground_truth", "lidar"],
                        help="objects the planner sees: ground truth, or detections on the simulated lidar")
    parser.add_argument("--seconds", type=float, default=None, help="cap on simulated time (default: route timeout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="lb1", choices=["lb1", "lb2"], help="Leaderboard scoring rules")
    parser.add_argument("--no-lidar", action="store_true", help="do not simulate the lidar")
    parser.add_argument("--vehicles", type=int, default=None, help="SUMO vehicles (default: world config)")
    parser.add_argument("--pedestrians", type=int, default=None, help="SUMO pedestrians (default: world config)")
    parser.add_argument("--no-log", action="store_true", help="do not write log.mcap")
    parser.add_argument("--log-lidar-hz", type=float, default=1.0,
                        help="lidar sweeps per second in log.mcap (10 = every sweep, ~16 MB a second: what "
                             "`adstack replay` needs to replay the stack as it ran; default 1)")
    parser.add_argument("--no-safety", action="store_true",
                        help="run the planner without the safety layer (the planning node always uses it)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routes", required=True, help="Leaderboard route file (1.0 or 2.0 XML)")
    parser.add_argument("--route-id", required=True, help="id of the route to drive")
    parser.add_argument("--map", default=None, help="map name or .xodr (default: the route's town)")
    parser.add_argument("--out", required=True, help="output directory: result.json, log.mcap, bev.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--viz", action="store_true", help="serve the drive live to Foxglove on 127.0.0.1:8765")
    add_drive_options(parser)


def options_from_args(args, route_id: str, out: str):
    from sim.drive import DriveOptions
    return DriveOptions(routes=args.routes, route_id=route_id, out=out, map_name=getattr(args, "map", None),
                        map_dirs=args.map_dir, planner=args.planner, perception=args.perception,
                        seconds=args.seconds, seed=args.seed, variant=args.variant, lidar=not args.no_lidar,
                        vehicles=args.vehicles, pedestrians=args.pedestrians, log=not args.no_log,
                        progress=not getattr(args, "quiet", False),
                        safety=not getattr(args, "no_safety", False), viz=getattr(args, "viz", False),
                        log_lidar_hz=args.log_lidar_hz)


def run(args) -> int:
    from sim.drive import drive
    result, code, _ = drive(options_from_args(args, args.route_id, args.out))
    print(f"route {result['route_id']} ({result['town']}): {result['status']}")
    print(f"  driving score {result['driving_score']:.2f} = route completion {result['route_completion']:.2f}% "
          f"x infraction penalty {result['infraction_penalty']:.3f}")
    print(f"  infractions: {len(result['infractions'])} "
          + ", ".join(f"{k} {v}" for k, v in result["infractions_by_type"].items() if v))
    print(f"  driven {result['distance_driven_m']:.0f} m of {result['route_length_m']:.0f} m in "
          f"{result['simulated_s']:.1f} s simulated, {result['wall_s']:.1f} s wall ({result['realtime_factor']:.1f}x real time)")
    print(f"  wrote {args.out}/result.json, log.mcap, bev.png")
    sys.stdout.flush()
    return code
