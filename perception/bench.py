"""Benchmarks of the lidar voxelizer and the learned detector (``adstack bench voxelizer|detector``).

Both run on a 120k-point cloud shaped like a 64-beam spinning lidar in a street (``street_scan``): beams
below the horizon hit the ground, the others hit building fronts 12-40 m away, and 40 box-shaped
vehicles and pedestrians stand around. Every ray returns, so the cloud has exactly ``n_points``
points and fills as many pillars as a dense urban scan does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

# Passive OpenMP waiting before torch loads (see perception/detector/__init__.py for the measurement).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Reference voxel configurations, from the published configs (OpenPCDet tools/cfgs):
# PointPillars KITTI (pointpillar.yaml), CenterPoint-pillar nuScenes (cbgs_pp_centerpoint...),
# CenterPoint-voxel nuScenes 0.075 m (cbgs_voxel0075_res3d_centerpoint.yaml); max_voxels = test-time value.
REFERENCE_VOXEL_CONFIGS = {
    "pointpillars_kitti": dict(point_cloud_range=(0, -39.68, -3, 69.12, 39.68, 1), voxel_size=(0.16, 0.16, 4),
                               max_points_per_voxel=32, max_voxels=40000),
    "centerpoint_pillar_nuscenes": dict(point_cloud_range=(-51.2, -51.2, -5, 51.2, 51.2, 3), voxel_size=(0.2, 0.2, 8),
                                        max_points_per_voxel=20, max_voxels=30000),
    "centerpoint_voxel0075_nuscenes": dict(point_cloud_range=(-54, -54, -5, 54, 54, 3), voxel_size=(0.075, 0.075, 0.2),
                                           max_points_per_voxel=10, max_voxels=120000),
}


def street_scan(n_points: int = 120000, channels: int = 64, seed: int = 0, sensor_height_m: float = 1.8) -> np.ndarray:
    """(n_points, 4) float32 cloud in the sensor frame: one return per ray of a spinning lidar."""
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(n_points / channels))
    elevation = np.deg2rad(np.linspace(-25.0, 15.0, channels))
    azimuth = np.linspace(-np.pi, np.pi, columns, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    el, az = el.ravel()[:n_points], az.ravel()[:n_points]
    direction = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
    # Building fronts: a wall distance per azimuth sector, 12-40 m.
    sector = ((az + np.pi) / (2 * np.pi) * 36).astype(int) % 36
    wall_m = rng.uniform(12.0, 40.0, 36)[sector]
    horizontal = np.maximum(np.cos(el), 1e-6)
    ranges = wall_m / horizontal
    down = direction[:, 2] < 0
    ground_range = sensor_height_m / np.maximum(-direction[:, 2], 1e-6)
    ranges = np.where(down & (ground_range < ranges), ground_range, ranges)
    # Actors: boxes that cut rays short (a 2D test in azimuth and a height test).
    for _ in range(40):
        distance, bearing = rng.uniform(4.0, 35.0), rng.uniform(-np.pi, np.pi)
        half_width_rad = np.arctan2(rng.choice([1.0, 0.35]), distance)
        height = rng.uniform(1.5, 1.9)
        in_wedge = np.abs(np.angle(np.exp(1j * (az - bearing)))) < half_width_rad
        hit_z = distance * np.tan(el) + sensor_height_m  # height above ground where the ray reaches the actor
        hit = in_wedge & (hit_z > 0) & (hit_z < height) & (distance / horizontal < ranges)
        ranges = np.where(hit, distance / horizontal, ranges)
    ranges = ranges + rng.normal(0.0, 0.02, ranges.shape)
    points = direction * ranges[:, None]
    intensity = rng.uniform(0.05, 0.6, n_points)
    return np.column_stack([points, intensity]).astype(np.float32)


def _percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def _time(fn, runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def bench_voxelizer(n_points: int = 120000, runs: int = 50, torch_runs: int = 5) -> dict:
    """Numba hard and dynamic voxelization per configuration (ms per cloud), plus the torch version on the CPU."""
    import torch

    from perception.detector.config import DetectorConfig
    from perception.voxelizer import VoxelConfig, Voxelizer
    from perception.voxelizer_torch import voxelize_hard_torch

    points = street_scan(n_points)
    configs = {"adstack_detector": DetectorConfig().voxel}
    configs.update({name: VoxelConfig(**kw) for name, kw in REFERENCE_VOXEL_CONFIGS.items()})
    result = {"n_points": n_points, "runs": runs, "configs": {}}
    tensor = torch.from_numpy(points)
    for name, config in configs.items():
        voxelizer = Voxelizer(config)
        voxels, _, _ = voxelizer.hard(points)
        entry = {"grid": list(config.grid_size), "voxels": int(len(voxels)),
                 "hard": _percentiles(_time(lambda: voxelizer.hard(points), runs)),
                 "dynamic": _percentiles(_time(lambda: voxelizer.dynamic(points), runs)),
                 "torch_hard_cpu": _percentiles(_time(lambda: voxelize_hard_torch(tensor, config), torch_runs, warmup=1))}
        result["configs"][name] = entry
    result["ms_per_120k_hard_p50"] = result["configs"]["adstack_detector"]["hard"]["p50_ms"] * 120000 / n_points
    return result


def bench_detector(model_dir: str | Path | None = None, n_points: int = 120000, runs: int = 50,
                   device: str = "cpu") -> dict:
    """Cloud in -> boxes out latency of ``LidarDetector.detect`` (p50, p99), and its stages (p50).

    Without ``model_dir`` the shipped model is used; if there is none, an untrained network of the
    default configuration (same cost) is timed and ``weights`` says so.
    """
    import torch

    from perception.detector.config import DetectorConfig
    from perception.detector.model import SHIPPED_MODEL_DIR, WEIGHTS_FILE, LidarDetector

    if model_dir is None and not (SHIPPED_MODEL_DIR / WEIGHTS_FILE).is_file():
        detector, weights = LidarDetector(DetectorConfig(), device=device), "untrained (no shipped model)"
    else:
        detector = LidarDetector.from_dir(model_dir, device=device)
        weights = str(model_dir or SHIPPED_MODEL_DIR)
    points = street_scan(n_points)
    stages: dict[str, list[float]] = {"voxelize": [], "network": [], "decode": []}

    def once():
        detector.detect(points)
        for key in stages:
            stages[key].append(detector.last_timing_ms[key])

    samples = _time(once, runs)
    for key in stages:
        stages[key] = stages[key][-runs:]
    return {"weights": weights, "device": str(detector.device), "fp16": detector.fp16,
            "torch_threads": torch.get_num_threads(), "n_points": n_points, "runs": runs,
            "pillars": int(detector.last_timing_ms["pillars"]),
            "max_pillars": detector.config.voxel.max_voxels,
            **_percentiles(samples),
            **{f"{key}_p50_ms": round(float(np.percentile(v, 50)), 3) for key, v in stages.items()}}
