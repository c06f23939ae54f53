"""``adstack sim``: run the embedded world with a lane-following ego and record it as rosbag2 MCAP.

    adstack sim --map Town01 --seconds 60 --seed 0 --out runs/town01

writes ``OUT/bag/`` (rosbag2, MCAP storage) with

    /sensing/lidar/points                  sensor_msgs/PointCloud2 (x, y, z, intensity, label, actor_id), 10 Hz
    /localization/kinematic_state          nav_msgs/Odometry, every tick (base_link = rear axle)
    /simulation/ground_truth/objects       autoware TrackedObjects within --gt-radius of the ego, every lidar
                                           period (+ /debug/markers MarkerArray)
    /perception/traffic_light_recognition/traffic_signals   autoware TrafficLightGroupArray, same period
    /control/command/control_cmd           the ego's command, every tick

and ``OUT/ground_truth.jsonl`` (one JSON object per ground-truth frame: ego, actors, stop-line signals)
and ``OUT/summary.json``. Log times are simulation time, so the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from adstack.errors import UserError

HELP = "run the embedded world (traffic, lidar) and record it as rosbag2 MCAP"

TOPIC_POINTS = "/sensing/lidar/points"
TOPIC_ODOMETRY = "/localization/kinematic_state"
TOPIC_GROUND_TRUTH = "/simulation/ground_truth/objects"
TOPIC_LIGHTS = "/perception/traffic_light_recognition/traffic_signals"
TOPIC_COMMAND = "/control/command/control_cmd"


def add_arguments(parser) -> None:
    parser.add_argument("--map", default="Town01", help="map name (Town01, ...) or path to an .xodr file")
    parser.add_argument("--map-dir", action="append", default=[], metavar="D", help="extra folder to look for maps in")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated time (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (bag/ and ground_truth.jsonl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--config", default=None, help="world parameter file (default sim/config/world.param.yaml)")
    parser.add_argument("--vehicles", type=int, default=None, help="SUMO vehicles (default from the config)")
    parser.add_argument("--pedestrians", type=int, default=None, help="SUMO pedestrians (default from the config)")
    parser.add_argument("--no-lidar", action="store_true", help="do not simulate the lidar")
    parser.add_argument("--gt-radius", type=float, default=100.0,
                        help="ground-truth objects in the bag: actors within this many metres of the ego (the lidar's "
                             "range); ground_truth.jsonl always holds all")
    parser.add_argument("--target-speed", type=float, default=8.0, help="lane follower's cruise speed (m/s)")


def load_map(name_or_path: str, map_dirs=()):
    """The project's map loader (``hdmap.load_map``): a name, a built-in map or an .xodr path."""
    import hdmap
    loader = getattr(hdmap, "load_map", None)
    if loader is None:
        from hdmap.map import load_map as loader
    return loader(name_or_path, map_dirs=tuple(map_dirs))


def _world_config(args):
    from adstack.config import load_params
    from sim.world import DEFAULT_PARAMS, WorldConfig
    config = load_params(WorldConfig, args.config or DEFAULT_PARAMS)
    if args.vehicles is not None:
        if args.vehicles < 0:
            raise UserError("--vehicles must be >= 0")
        config.traffic.vehicles = args.vehicles
    if args.pedestrians is not None:
        if args.pedestrians < 0:
            raise UserError("--pedestrians must be >= 0")
        config.traffic.pedestrians = args.pedestrians
    if args.no_lidar:
        config.lidar = False
    return config


def _gt_record(state) -> dict:
    """One ground-truth frame as plain JSON (map frame, SI units, radians)."""
    import numpy as np
    a, e = state.actors, state.ego
    r = lambda v: round(float(v), 4)  # noqa: E731  (keeps the file small and stable)
    return {
        "t": r(state.t),
        "ego": {"x": r(e.x), "y": r(e.y), "z": r(e.z), "yaw": r(e.yaw), "v": r(e.v), "accel": r(e.accel),
                "steer": r(e.steer), "box": {"center": [r(v) for v in state.ego_box.center[0]],
                                             "size": [r(v) for v in state.ego_box.size[0]]}},
        "actors": [{"id": i, "label": lb, "center": c, "size": sz, "yaw": yw, "velocity": vel}
                   for i, lb, c, sz, yw, vel in zip(a.ids.tolist(), a.label.tolist(), np.round(a.center, 4).tolist(),
                                                    np.round(a.size, 4).tolist(), np.round(a.yaw, 4).tolist(),
                                                    np.round(a.velocity, 4).tolist())],
        "traffic_lights": [{"id": tl.id, "map_signal_id": getattr(tl, "map_signal_id", ""), "state": int(tl.state),
                            "position": [r(v) for v in tl.position], "yaw": r(getattr(tl, "yaw", 0.0)),
                            "lanes": [list(x) for x in tl.lanes],
                            "lane_states": [[list(k), int(v)] for k, v in getattr(tl, "lane_states", {}).items()]}
                           for tl in state.traffic_lights],
    }


def _lights_for_bag(lights) -> list:
    """Autoware's traffic_light_group_id names the map's signal: use the OpenDRIVE signal id where
    the light has one (the SUMO id otherwise), one entry per id."""
    from adstack.types import TrafficLight
    out = {}
    for light in lights:
        light_id = getattr(light, "map_signal_id", "") or light.id
        out.setdefault(light_id, TrafficLight(light_id, light.state, light.position, light.lanes))
    return list(out.values())


def simulate(args) -> dict:
    import numpy as np

    from adstack.bag import BagWriter
    from sim.lane_follower import LaneFollower, LaneFollowerConfig
    from sim.world import World

    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise UserError(f"--seconds must be a positive number, got {args.seconds}")
    if not args.gt_radius > 0:
        raise UserError(f"--gt-radius must be positive, got {args.gt_radius}")
    if not (0 < args.target_speed < 40):
        raise UserError(f"--target-speed must be in (0, 40) m/s, got {args.target_speed}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise UserError("output folder exists and is not empty (use --overwrite)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    config = _world_config(args)
    hd_map = load_map(args.map, args.map_dir)
    world = World(hd_map, config, seed=args.seed)
    driver = LaneFollower(hd_map.carla_map, config.vehicle, LaneFollowerConfig(target_speed=args.target_speed),
                          seed=args.seed)
    ticks = int(round(args.seconds / config.dt))
    gt_every = max(1, int(round(0.1 / config.dt)))  # ground truth at the lidar's 10 Hz
    counts = {"lidar_frames": 0, "points": 0, "gt_frames": 0, "max_actors": 0, "distance_m": 0.0}
    world_s = 0.0  # inside World.tick (traffic, ego, lidar); the rest is the driver and recording
    show_progress = sys.stderr.isatty()  # a live line for people, nothing in logs and tests
    wall_start = time.perf_counter()
    try:
        state = world.reset(None)
        with BagWriter(out / "bag", overwrite=True) as bag, open(out / "ground_truth.jsonl", "w") as gt_file:
            for _ in range(ticks):
                command = driver.step(state)
                bag.write_command(TOPIC_COMMAND, command, t=state.t)
                previous = state.ego
                tick_start = time.perf_counter()
                state = world.tick(command)
                world_s += time.perf_counter() - tick_start
                counts["distance_m"] += math.hypot(state.ego.x - previous.x, state.ego.y - previous.y)
                bag.write_odometry(TOPIC_ODOMETRY, state.ego, t=state.t)
                if state.lidar is not None:
                    bag.write_pointcloud(TOPIC_POINTS, state.lidar, t=state.t)
                    counts["lidar_frames"] += 1
                    counts["points"] += len(state.lidar)
                if state.tick % gt_every == 0:
                    near = np.hypot(state.actors.center[:, 0] - state.ego.x, state.actors.center[:, 1] - state.ego.y)
                    bag.write_objects(TOPIC_GROUND_TRUTH, state.actors.select(near <= args.gt_radius), t=state.t,
                                      tracked=True)
                    bag.write_traffic_lights(TOPIC_LIGHTS, _lights_for_bag(state.traffic_lights), state.t)
                    gt_file.write(json.dumps(_gt_record(state), separators=(",", ":")) + "\n")
                    counts["gt_frames"] += 1
                counts["max_actors"] = max(counts["max_actors"], len(state.actors))
                if show_progress and state.tick % 20 == 0:
                    elapsed = time.perf_counter() - wall_start
                    print(f"\radstack sim: t={state.t:7.1f}/{ticks * config.dt:.1f} s, {len(state.actors)} actors, "
                          f"{counts['lidar_frames']} lidar frames, {state.t / max(elapsed, 1e-9):5.1f}x real time",
                          end="", file=sys.stderr, flush=True)
            last_frame = world.flush_lidar()  # swept by the last tick, due on the next: record it too
            if last_frame is not None:
                bag.write_pointcloud(TOPIC_POINTS, last_frame, t=state.t)
                counts["lidar_frames"] += 1
                counts["points"] += len(last_frame)
        if show_progress:
            print(file=sys.stderr)
    except _sumo_errors() as exc:
        raise UserError(f"SUMO failed: {str(exc).strip() or type(exc).__name__}") from None
    finally:
        timing = dict(world.timing)
        world.close()
    wall = time.perf_counter() - wall_start
    labels = state.actors.label
    from adstack.types import ObjectClass
    summary = {
        "map": getattr(hd_map, "name", str(args.map)), "seed": args.seed, "seconds": ticks * config.dt, "ticks": ticks,
        "dt": config.dt, "vehicles": int((labels == ObjectClass.VEHICLE).sum()),
        "cyclists": int((labels == ObjectClass.CYCLIST).sum()),
        "pedestrians": int((labels == ObjectClass.PEDESTRIAN).sum()), "max_actors": counts["max_actors"],
        "traffic_lights": len(state.traffic_lights), "lidar_frames": counts["lidar_frames"],
        "mean_points_per_frame": counts["points"] / max(1, counts["lidar_frames"]),
        "ground_truth_frames": counts["gt_frames"], "ego_distance_m": counts["distance_m"],
        "wall_s": wall, "realtime_factor": ticks * config.dt / wall if wall > 0 else float("inf"),
        "world_ms_per_tick": 1e3 * world_s / max(1, ticks),
        "world_realtime_factor": ticks * config.dt / world_s if world_s > 0 else float("inf"),
        "lidar_ms_per_frame": 1e3 * timing["lidar_s"] / max(1, timing["lidar_frames"]) if timing["lidar_frames"] else None,
        "bag": str(out / "bag"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _sumo_errors() -> tuple:
    try:
        import libsumo
        return (libsumo.TraCIException, libsumo.FatalTraCIError)
    except (ImportError, AttributeError):
        return ()


def summary_paragraph(s: dict) -> str:
    lidar = (f"{s['lidar_frames']} lidar frames ({s['mean_points_per_frame']:.0f} points each on average, "
             f"{s['lidar_ms_per_frame']:.2f} ms per frame to cast)" if s["lidar_frames"] else "no lidar")
    return (f"Simulated {s['seconds']:.1f} s of {s['map']} (seed {s['seed']}) in {s['ticks']} ticks of {s['dt']:.3f} s: "
            f"{s['vehicles']} vehicles, {s['cyclists']} cyclists and {s['pedestrians']} pedestrians at the end "
            f"(at most {s['max_actors']} road users at once) under {s['traffic_lights']} stop-line signals; the "
            f"lane-following ego drove {s['ego_distance_m']:.0f} m. Recorded {lidar}, {s['ground_truth_frames']} "
            f"ground-truth frames and {s['ticks']} odometry messages to {s['bag']}. Wall time {s['wall_s']:.1f} s, "
            f"{s['realtime_factor']:.1f}x real time including the driver and recording (the world alone: "
            f"{s['world_ms_per_tick']:.2f} ms per tick, {s['world_realtime_factor']:.0f}x).")


def run(args) -> int:
    summary = simulate(args)
    print(summary_paragraph(summary))
    return 0
