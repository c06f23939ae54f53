"""Benchmark of the embedded world: SUMO traffic + ego + spinning lidar, ticks per wall second.

``bench_sim()`` runs the default world (sim/config/world.param.yaml: 100 vehicles, 100 pedestrians,
64 x 1024 lidar at 10 Hz) on Town01 with the lane-following ego and reports how many times faster
than real time the world ticks, in wall time and in this process's CPU time (the driver's time is
reported separately, not counted), and the CPU time of the world's SUMO and lidar child processes.
``adstack bench sim --json`` prints it.
"""

from __future__ import annotations

import os
import time

from adstack.paths import shared_data_dir


def bench_sim(seconds: float = 30.0, map_name: str = "Town01", seed: int = 0, lidar: bool = True,
              scenery: bool = True, lidar_mode: str = "spinning", vehicles: int | None = None,
              pedestrians: int | None = None, traffic_process: bool | None = None,
              lidar_process: bool | None = None) -> dict:
    from adstack.types import ObjectClass
    from sim.cli import load_map
    from sim.lane_follower import LaneFollower
    from sim.world import World, WorldConfig

    config = WorldConfig.load()
    config.lidar = lidar
    config.scenery = scenery
    config.lidar_mode = lidar_mode
    if traffic_process is not None:
        config.traffic_process = traffic_process
    if lidar_process is not None:
        config.lidar_process = lidar_process
    if vehicles is not None:
        config.traffic.vehicles = vehicles
    if pedestrians is not None:
        config.traffic.pedestrians = pedestrians
    map_dirs = [d for d in (shared_data_dir() / "maps" / "carla",) if d.is_dir()]
    hd_map = load_map(map_name, map_dirs)
    build_start = time.perf_counter()
    world = World(hd_map, config, seed=seed)  # converts the net on first use, compiles/loads the lidar
    state = world.reset(None)
    setup_s = time.perf_counter() - build_start
    driver = LaneFollower(hd_map.carla_map, config.vehicle, seed=seed)
    ticks = int(round(seconds / config.dt))
    world_s = world_cpu_s = main_cpu_s = driver_s = driver_cpu_s = 0.0
    actors = 0
    points = 0
    load_before = os.getloadavg()[0]
    cast_cpu_before = world.lidar.cast_cpu_s if world.lidar is not None else 0.0
    children_before = _children_cpu_s(world)
    try:
        loop_cpu_start = time.process_time()
        for _ in range(ticks):
            t0, d0 = time.perf_counter(), time.thread_time()
            command = driver.step(state)
            t1, m1 = time.perf_counter(), time.thread_time()
            state = world.tick(command)
            world_s += time.perf_counter() - t1
            main_cpu_s += time.thread_time() - m1
            driver_cpu_s += m1 - d0
            driver_s += t1 - t0
            actors = max(actors, len(state.actors))
            if state.lidar is not None:
                points += len(state.lidar)
        # every thread's CPU but the driver's: the lidar's background thread also casts while the driver runs
        world_cpu_s = time.process_time() - loop_cpu_start - driver_cpu_s
        children_cpu_s = _children_cpu_s(world) - children_before
    finally:
        timing = dict(world.timing)
        cast_cpu_s = (world.lidar.cast_cpu_s - cast_cpu_before) if world.lidar is not None else 0.0
        cast_threads = world.lidar.lidar.config.cast_threads if world.lidar is not None else 0
        world.close()
    all_cpu_s = world_cpu_s + children_cpu_s
    labels = state.actors.label
    frames = timing["lidar_frames"]
    return {
        "map": map_name, "lidar": lidar, "traffic_process": config.traffic_process,
        "lidar_process": config.lidar_process, "lidar_mode": lidar_mode, "scenery": scenery,
        "seconds": ticks * config.dt, "ticks": ticks, "dt": config.dt,
        "actors": actors, "vehicles": int((labels == ObjectClass.VEHICLE).sum()),
        "cyclists": int((labels == ObjectClass.CYCLIST).sum()),
        "pedestrians": int((labels == ObjectClass.PEDESTRIAN).sum()),
        "realtime_factor": ticks * config.dt / world_s if world_s > 0 else float("inf"),
        "world_ms_per_tick": 1e3 * world_s / max(ticks, 1),
        # CPU time of this process (all threads, driver excluded) and its children: less sensitive than wall time to
        # other users of a shared machine; with the lidar's background thread it can exceed wall time.
        "realtime_factor_cpu": ticks * config.dt / all_cpu_s if all_cpu_s > 0 else float("inf"),
        "cpu_realtime_factor": ticks * config.dt / all_cpu_s if all_cpu_s > 0 else float("inf"),
        # CPU per tick: this process without the driver (all threads, including what the lidar's
        # background thread casts while the driver runs) and the calling thread alone in World.tick
        # (the critical path when the other core is free)
        "cpu_ms_per_tick": 1e3 * world_cpu_s / max(ticks, 1),
        "main_thread_cpu_ms_per_tick": 1e3 * main_cpu_s / max(ticks, 1),
        # the SUMO and lidar child processes (sim/traffic_process.py, sim/lidar_process.py), not in
        # the two figures above; /proc counts in 10 ms clock ticks
        "children_cpu_ms_per_tick": 1e3 * children_cpu_s / max(ticks, 1),
        "traffic_ms_per_tick": 1e3 * timing["traffic_s"] / max(ticks, 1),
        # wall time the world's ticks spend in the lidar per frame (what the background thread casts
        # while SUMO and the driver run costs the ticks nothing; what it has not done, the tick casts)
        "lidar_ms_per_frame": (1e3 * timing["lidar_s"] / frames) if lidar and frames else None,
        # CPU time of the ray casts per frame, all threads: the lidar's cost whatever the overlap
        "lidar_cast_cpu_ms_per_frame": (1e3 * cast_cpu_s / frames) if lidar and frames else None,
        "lidar_cast_threads": cast_threads,
        "lidar_frames": frames, "mean_points_per_frame": points / frames if frames else 0,
        "driver_ms_per_tick": 1e3 * driver_s / max(ticks, 1), "setup_s": setup_s,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpu_count": os.cpu_count(),
        # 1, 5, 15 min load averages at the end: wall-clock figures mean little on a loaded machine
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def _children_cpu_s(world) -> float:
    """CPU seconds the world's child processes (sim.child_process.ChildProxy) have used so far."""
    from sim.child_process import ChildProxy
    children = [world.traffic, world.lidar.process if world.lidar is not None else None]
    return sum(child.cpu_s for child in children if isinstance(child, ChildProxy))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    parser = argparse.ArgumentParser(description="embedded world benchmark (JSON)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--map", default="Town01")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lidar", action="store_true")
    parser.add_argument("--no-scenery", action="store_true")
    parser.add_argument("--lidar-mode", choices=("spinning", "snapshot"), default="spinning")
    args = parser.parse_args(argv)
    print(json.dumps(bench_sim(args.seconds, args.map, args.seed, lidar=not args.no_lidar,
                               scenery=not args.no_scenery, lidar_mode=args.lidar_mode), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
