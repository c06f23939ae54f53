"""``adstack bench``: benchmarks that print JSON.

Each benchmark measures what it names on this machine, in this run; where a ratio is reported, its
baseline is measured in the same run. Machines are shared and noisy: repeat runs and read the median.
"""

from __future__ import annotations

import argparse
import json
import platform
import os
import time

HELP = "benchmarks printing JSON (sim, lidar, voxelizer, detector)"


def _bench_sim(args):
    from sim.bench import bench_sim
    return bench_sim(seconds=args.seconds, map_name=args.map)


def _bench_lidar(args):
    from sim.bench_lidar import bench_lidar
    return bench_lidar(n_actors=args.actors, frames=args.frames)


def _bench_voxelizer(args):
    from perception.bench import bench_voxelizer
    return bench_voxelizer()


def _bench_detector(args):
    from perception.bench import bench_detector
    return bench_detector(args.model, runs=args.runs)


def _bench_tracker(args):
    from fusion.bench import bench_tracker
    return bench_tracker(n_objects=args.actors if args.actors != 50 else 100)


BENCHMARKS = {"tracker": _bench_tracker, "sim": _bench_sim, "lidar": _bench_lidar, "voxelizer": _bench_voxelizer, "detector": _bench_detector}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=sorted(BENCHMARKS), help="what to measure")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--map", default="Town01", help="sim: map name or .xodr path")
    parser.add_argument("--seconds", type=float, default=30.0, help="sim: simulated seconds")
    parser.add_argument("--actors", type=int, default=50, help="lidar: actors in range")
    parser.add_argument("--frames", type=int, default=100, help="lidar: frames to time")
    parser.add_argument("--model", default=None, help="detector: model directory (default: the shipped model)")
    parser.add_argument("--runs", type=int, default=100, help="detector: timed runs")


def run(args) -> int:
    started = time.perf_counter()
    result = BENCHMARKS[args.which](args)
    result = {"benchmark": args.which, **result,
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "loadavg_1min": os.getloadavg()[0]},
              "bench_wall_s": round(time.perf_counter() - started, 2)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0
