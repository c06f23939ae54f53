"""Labelled lidar frames from the embedded world, written as a sharded dataset (perception/dataset.py).

The plan is a deterministic list of runs: every (map, seed) pair gets its own traffic density and
sensor noise drawn from the configured choices with that seed, so the same arguments always describe
the same dataset. Each run is one shard, written atomically (temporary name, then rename). A killed
collection leaves only complete shards; running the same command again skips them and resumes.

Frames are cast as full, instantaneous revolutions (not spread over ticks) so that every label box
is exactly where the points are; the drive between frames uses the normal 20 Hz world.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adstack.errors import UserError
from adstack.types import Boxes, Command

CLASS_RANGE_M = 60.0  # boxes beyond this from the sensor are not labelled (too few points to learn from)


@dataclass
class CollectConfig:
    frames_per_run: int = 40
    seconds_between_frames: float = 0.5  # decorrelates consecutive frames
    vehicles_choices: tuple = (40, 80, 120)
    pedestrians_choices: tuple = (60, 120, 200)
    range_noise_choices_m: tuple = (0.01, 0.02, 0.04)
    dropout_choices: tuple = (0.0, 0.01, 0.05)
    warmup_s: float = 3.0
    label_range_m: float = CLASS_RANGE_M


@dataclass
class RunSpec:
    map_name: str
    seed: int
    vehicles: int
    pedestrians: int
    range_noise_m: float
    dropout: float

    @property
    def shard_name(self) -> str:
        stem = Path(self.map_name).stem
        return f"{stem}-seed{self.seed:04d}.npz"


def plan_runs(maps: list[str], frames: int, config: CollectConfig, first_seed: int = 0) -> list[RunSpec]:
    """Enough runs, round-robin over ``maps``, to give about ``frames`` frames in total."""
    n_runs = max(len(maps), math.ceil(frames / config.frames_per_run))
    runs = []
    for k in range(n_runs):
        map_name = maps[k % len(maps)]
        seed = first_seed + k
        rng = np.random.default_rng([seed, 7919])
        runs.append(RunSpec(map_name, seed, int(rng.choice(config.vehicles_choices)),
                            int(rng.choice(config.pedestrians_choices)),
                            float(rng.choice(config.range_noise_choices_m)), float(rng.choice(config.dropout_choices))))
    return runs


def sensor_frame_boxes(actors: Boxes, pose: tuple) -> Boxes:
    """Map-frame boxes in the sensor frame at ``pose`` = (x, y, z, roll, pitch, yaw) (roll, pitch ~ 0)."""
    from sim.world import boxes_to_frame
    x, y, z, _, _, yaw = pose
    return boxes_to_frame(actors, x, y, z, yaw, "lidar")


def collect_run(spec: RunSpec, frames: int, config: CollectConfig, map_dirs=(), progress=None):
    """Drive one run and return its frames (perception.dataset.Frame)."""
    from hdmap import load_map
    from perception.dataset import Frame, count_points_in_boxes
    from sim.lidar import Lidar, load_lidar_config
    from sim.world import World, WorldConfig, _load_scenery
    from sim.lane_follower import LaneFollower

    hdmap = load_map(spec.map_name, map_dirs=map_dirs)
    world_cfg = WorldConfig()
    world_cfg.lidar = False  # frames are cast here, whole, so labels match the points exactly
    world_cfg.traffic.vehicles = spec.vehicles
    world_cfg.traffic.pedestrians = spec.pedestrians
    world_cfg.traffic.warmup_s = config.warmup_s
    lidar_cfg = load_lidar_config()
    lidar_cfg.range_noise_sigma_m = spec.range_noise_m
    lidar_cfg.dropout_probability = spec.dropout
    lidar = Lidar(lidar_cfg, seed=spec.seed)
    scenery = _load_scenery(hdmap)
    out = []
    with World(hdmap, world_cfg, seed=spec.seed) as world:
        state = world.reset(None)
        driver = LaneFollower(hdmap.carla_map, world_cfg.vehicle, seed=spec.seed)
        ticks_between = max(1, int(round(config.seconds_between_frames / world_cfg.dt)))
        for k in range(frames):
            for _ in range(ticks_between):
                state = world.tick(driver.step(state))
            ego = state.ego
            pose = lidar.sensor_pose(ego)
            nearby = scenery.query(ego.x, ego.y) if scenery is not None else None
            cloud = lidar.scan(pose, state.actors, nearby, ego.z)
            boxes = sensor_frame_boxes(state.actors, pose)
            keep = np.hypot(boxes.center[:, 0], boxes.center[:, 1]) <= config.label_range_m
            boxes = boxes.select(keep)
            boxes.stamp = state.t
            out.append(Frame(cloud.points, boxes, np.array([ego.x, ego.y, ego.z, ego.yaw]), state.t,
                             count_points_in_boxes(cloud.points, boxes),
                             None if cloud.labels is None else cloud.labels.astype(np.int8)))
            if progress:
                progress(k + 1, frames)
    return out


def collect(out_dir: str | Path, maps: list[str], frames: int, val_maps: list[str], config: CollectConfig,
            map_dirs=(), first_seed: int = 0, log=print) -> dict:
    """Collect into ``out_dir``; returns the manifest. Complete shards already there are kept."""
    from perception.dataset import write_manifest, write_shard

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_maps = list(dict.fromkeys(list(maps) + list(val_maps)))
    if not all_maps:
        raise UserError("no maps given (--maps)")
    runs = plan_runs(all_maps, frames, config, first_seed)
    started = time.perf_counter()
    shards = []
    for i, spec in enumerate(runs):
        path = out_dir / spec.shard_name
        if path.is_file():
            log(f"[{i + 1}/{len(runs)}] {path.name}: already complete, kept")
        else:
            t0 = time.perf_counter()
            frames_here = collect_run(spec, config.frames_per_run, config, map_dirs)
            write_shard(path, frames_here, spec.map_name, spec.seed)
            log(f"[{i + 1}/{len(runs)}] {path.name}: {len(frames_here)} frames, {spec.vehicles} vehicles, "
                f"{spec.pedestrians} pedestrians, noise {spec.range_noise_m} m, dropout {spec.dropout} "
                f"({time.perf_counter() - t0:.1f} s)")
        shards.append(path.name)
    splits = {"train": [m for m in maps if m not in val_maps], "val": list(val_maps)}
    write_manifest(out_dir, splits, config={"collect": asdict(config), "runs": [asdict(r) for r in runs],
                                            "maps": all_maps, "frames_requested": frames})
    manifest = json.loads((out_dir / "dataset.json").read_text())
    log(f"dataset: {out_dir} ({sum(s['frames'] for s in manifest['shards'])} frames in {len(shards)} shards, "
        f"{time.perf_counter() - started:.0f} s)")
    return manifest
