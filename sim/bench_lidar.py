"""Lidar ray-casting benchmark: milliseconds per full 64 x 1024 frame with actors (and scenery) in range.

``python -m sim.bench_lidar [--actors 50] [--frames 50] [--scenery 0]`` prints JSON.
The first call (JIT compile or cache load) happens in ``Lidar(...)`` and is not timed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from adstack.types import Boxes, ObjectClass
from sim.lidar import Lidar, LidarConfig

# (length, width, height) per class, metres
_CLASS_SIZE = {ObjectClass.VEHICLE: (4.6, 1.9, 1.6), ObjectClass.PEDESTRIAN: (0.5, 0.6, 1.75),
               ObjectClass.CYCLIST: (1.8, 0.7, 1.7)}


def random_scene(n_actors: int, n_scenery: int, seed: int = 0, radius_m: float = 60.0) -> tuple[Boxes, Boxes]:
    """Actors scattered 4..radius_m around the origin (60 % vehicles), scenery blocks and poles further out."""
    rng = np.random.default_rng(seed)
    classes = rng.choice([ObjectClass.VEHICLE, ObjectClass.PEDESTRIAN, ObjectClass.CYCLIST], n_actors, p=[0.6, 0.25, 0.15])
    size = np.array([_CLASS_SIZE[ObjectClass(c)] for c in classes]).reshape(-1, 3)
    dist = rng.uniform(4.0, radius_m, n_actors)
    bearing = rng.uniform(-np.pi, np.pi, n_actors)
    center = np.stack([dist * np.cos(bearing), dist * np.sin(bearing), size[:, 2] / 2], axis=1) if n_actors else np.zeros((0, 3))
    actors = Boxes(center, size, rng.uniform(-np.pi, np.pi, n_actors), classes.astype(np.int32), ids=np.arange(n_actors))
    is_building = rng.random(n_scenery) < 0.5
    s_size = np.where(is_building[:, None], rng.uniform([8, 8, 5], [25, 20, 25], (n_scenery, 3)), [0.3, 0.3, 7.0])
    s_dist = rng.uniform(15.0, 95.0, n_scenery)
    s_bearing = rng.uniform(-np.pi, np.pi, n_scenery)
    s_center = np.stack([s_dist * np.cos(s_bearing), s_dist * np.sin(s_bearing), s_size[:, 2] / 2], axis=1)
    scenery = Boxes(s_center, s_size, rng.uniform(-np.pi, np.pi, n_scenery), np.full(n_scenery, int(ObjectClass.STATIC)))
    return actors, scenery


def bench_lidar(n_actors: int = 50, frames: int = 50, n_scenery: int = 0, config: LidarConfig | None = None) -> dict:
    lidar = Lidar(config or LidarConfig(), seed=0)
    actors, scenery = random_scene(n_actors, n_scenery)
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    lidar.scan(pose, actors, scenery, 0.0)
    times, points = [], []
    for _ in range(frames):
        t0 = time.perf_counter()
        cloud = lidar.scan(pose, actors, scenery, 0.0)
        times.append(time.perf_counter() - t0)
        points.append(len(cloud))
    ms = np.array(times) * 1e3
    return {"lidar_ms_per_frame": float(np.median(ms)), "lidar_ms_p90": float(np.percentile(ms, 90)),
            "points_per_frame": float(np.mean(points)), "actors": n_actors, "scenery_boxes": n_scenery,
            "rays_per_frame": lidar.config.channels * lidar.config.columns, "frames": frames}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=50)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--scenery", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(bench_lidar(args.actors, args.frames, args.scenery)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
