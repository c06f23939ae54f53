"""``adstack replay BAG --out DIR``: feed a recorded rosbag2 drive through the stack (sim/replay.py)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory (MCAP or sqlite3) or a .mcap file, e.g. a drive's log.mcap")
    parser.add_argument("--out", required=True, help="output directory: replay.mcap, replay.json")
    parser.add_argument("--model", default="default",
                        help="detector: default (shipped learned model, else classical) | classical | model directory")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="playback speed: 0 as fast as possible (default), 1.0 recorded timing")
    parser.add_argument("--topic-map", nargs="+", action="extend", default=[], metavar="ROLE=TOPIC",
                        help="use these topics: lidar=/points odom=/odom gt=/objects route=/route lights=/signals")
    parser.add_argument("--routes", default="",
                        help="Leaderboard route file for planning and control (default: the route in the bag)")
    parser.add_argument("--route-id", default="", help="id of the route in --routes")
    parser.add_argument("--map", default="", help="map name or .xodr (default: the route's town)")
    parser.add_argument("--map-dir", action="append", default=[], metavar="DIR",
                        help="directory with <Town>.xodr (repeatable)")
    parser.add_argument("--graph", default="inprocess", choices=["inprocess", "ros2"],
                        help="inprocess: call the cores; ros2: the lidar_detector, tracker, planner and controller "
                             "nodes over DDS, checked against the in-process result")
    parser.add_argument("--domain-id", type=int, default=None, help="ros2: ROS_DOMAIN_ID (default: a random one no other node here uses)")
    parser.add_argument("--viz", action="store_true", help="serve the replay live to Foxglove on 127.0.0.1")
    parser.add_argument("--viz-port", type=int, default=8765)
    parser.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from sim.replay import MissingTopics, ReplayOptions, format_report, parse_topic_map, replay

    opts = ReplayOptions(bag=args.bag, out=args.out, model=args.model, rate=args.rate,
                         topic_map=parse_topic_map(args.topic_map), graph=args.graph, viz=args.viz,
                         viz_port=args.viz_port, domain_id=args.domain_id, progress=not args.quiet,
                         routes=args.routes, route_id=args.route_id, map=args.map, map_dirs=args.map_dir)
    try:
        report = replay(opts)
    except MissingTopics as err:
        print(f"the bag holds:\n{err.listing}", file=sys.stderr)
        raise
    print(format_report(report))
    print(f"wrote {args.out}/replay.mcap, {args.out}/replay.json")
    eq = report.get("equivalence")
    return 1 if eq is not None and not eq["same"] else 0
