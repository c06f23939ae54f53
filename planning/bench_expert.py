"""Planner step time of the expert: ``python -m planning.bench_expert [--actors 0 20 100 300]``.

Town01, Leaderboard 1.0 training route 0, every map traffic light (red), N random vehicles and
pedestrians within 60 m of the ego with random velocities; median and p90 of 200 steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from adstack.paths import shared_data_dir
from adstack.types import Boxes, EgoState, LightState, TrafficLight


def main(argv=None) -> int:
    from hdmap import dense_route, load_map, load_routes
    from planning.expert import Expert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[0, 20, 100, 300])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    data = shared_data_dir()
    hdmap = load_map(data / "maps" / "carla" / "Town01.xodr")
    route = dense_route(hdmap, load_routes(data / "routes" / "leaderboard1_routes_training.xml")[0])
    rng = np.random.default_rng(0)
    lights = [TrafficLight(str(k), LightState.RED, tl.position, ()) for k, tl in enumerate(hdmap.traffic_lights)]
    i = 300
    ego = EgoState(route.path[i, 0], route.path[i, 1], route.yaw[i], 8.0)
    for n in args.actors:
        expert = Expert(hdmap, route)
        label = rng.choice([1, 2], n)
        size = np.where(label[:, None] == 1, [4.6, 1.9, 1.5], [0.5, 0.5, 1.8])
        centre = np.column_stack([route.path[i] + rng.uniform(-60, 60, (n, 2)), np.ones(n)])
        actors = Boxes(centre, size, rng.uniform(-3, 3, n), label, velocity=rng.normal(0, 3, (n, 2)), ids=np.arange(n))
        expert.step(ego, actors, lights, 0.0)
        times = []
        for k in range(args.steps):
            start = time.perf_counter()
            expert.step(ego, actors, lights, 0.1 * (k + 1))
            times.append(time.perf_counter() - start)
        ms = np.array(times) * 1e3
        print(f"{n:4d} actors, {len(lights)} lights: median {np.median(ms):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
