"""Classical lidar detector: ground removal, BEV clustering, L-shape boxes, size-based classes.

A fallback when no learned model is loaded and a yardstick for the learned one. Every step works on
whole arrays; the per-cluster box search is one numba kernel.

1. Ground: the lowest point in each ``ground_cell_m`` cell, then a grey-scale morphological opening
   (min filter, then max filter) over ``ground_window_m``, the max filter reading only cells that
   hold returns. Opening removes anything narrower than the window (cars, people, poles: their cells
   hold no ground return, only the object's underside) and reproduces planes and slopes exactly, so
   sloped roads stay ground. Points more than
   ``ground_clearance_m`` above that surface are obstacles, up to ``max_obstacle_height_m``.
2. Clusters: obstacle points rasterised on a ``cluster_cell_m`` BEV grid, grown by
   ``cluster_dilation_cells`` (sparse far returns), connected components (8-neighbour).
3. Boxes: for each cluster, the rectangle orientation maximising the closeness criterion of
   Zhang et al. 2017, "Efficient L-Shape Fitting for Vehicle Detection Using Laser Scanners": points
   near two perpendicular edges, the visible sides of a car. Boxes seen from one side are grown to
   the class's typical size away from the sensor, since the hidden sides are behind the visible ones.
4. Classes from footprint and height above ground; walls, buildings, vegetation, kerbs and poles
   (too long, too wide, too flat, too thin) are rejected. The score says how close the box is to the
   class's typical size and how many points support it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

from adstack.config import load_params
from adstack.types import Boxes, ObjectClass

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "classical.param.yaml"


@dataclass
class ClassicalConfig:
    range_m: float = 60.0                 # square crop |x|, |y| <= range_m around the sensor
    self_filter_radius_m: float = 2.0     # drop returns from the ego vehicle's own body
    min_z_m: float = -4.0                 # sensor-frame z band kept (sensor height ~1.7-1.9 m)
    max_z_m: float = 4.0
    ground_cell_m: float = 0.5
    ground_window_m: float = 4.0          # wider than any vehicle you want to keep off the ground
    ground_clearance_m: float = 0.25      # height above the ground surface where obstacles begin
    max_obstacle_height_m: float = 3.5    # above it: canopy, overhangs, ceilings
    cluster_cell_m: float = 0.2
    cluster_dilation_cells: int = 1
    min_cluster_points: int = 5
    max_cluster_points: int = 20000
    lshape_angle_step_deg: float = 2.0
    lshape_min_distance_m: float = 0.01   # clamp in the closeness criterion
    # Class gates: (length, width, height) ranges in metres and typical sizes used for scoring and
    # for completing boxes seen from one side.
    vehicle_length_m: tuple = (1.0, 12.0)
    vehicle_width_m: tuple = (0.5, 3.2)
    vehicle_height_m: tuple = (0.9, 4.0)
    vehicle_typical_lwh_m: tuple = (4.5, 1.85, 1.6)
    pedestrian_length_m: tuple = (0.15, 1.2)
    pedestrian_width_m: tuple = (0.1, 1.0)
    pedestrian_height_m: tuple = (1.0, 2.1)
    pedestrian_typical_lwh_m: tuple = (0.7, 0.6, 1.75)
    cyclist_length_m: tuple = (1.2, 2.3)
    cyclist_width_m: tuple = (0.2, 1.0)
    cyclist_height_m: tuple = (1.0, 2.1)
    cyclist_typical_lwh_m: tuple = (1.8, 0.6, 1.7)
    wall_aspect: float = 5.0              # length / width above this: a wall, fence or kerb line
    points_for_full_score: int = 60       # support that earns the full point-count factor
    min_score: float = 0.05

    def validate(self) -> "ClassicalConfig":
        positive = ("range_m", "ground_cell_m", "ground_window_m", "cluster_cell_m", "lshape_angle_step_deg",
                    "lshape_min_distance_m", "max_obstacle_height_m", "wall_aspect")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ground_window_m < self.ground_cell_m:
            raise ValueError("ground_window_m must be at least ground_cell_m")
        for name in ("vehicle", "pedestrian", "cyclist"):
            for dim in ("length_m", "width_m", "height_m"):
                lo, hi = getattr(self, f"{name}_{dim}")
                if not 0 <= lo < hi:
                    raise ValueError(f"{name}_{dim} must be [low, high] with 0 <= low < high")
            if len(getattr(self, f"{name}_typical_lwh_m")) != 3:
                raise ValueError(f"{name}_typical_lwh_m needs three numbers")
        return self


def load_config(path: str | Path | None = None) -> ClassicalConfig:
    return load_params(ClassicalConfig, path or DEFAULT_CONFIG).validate()


class ClassicalDetector:
    """``ClassicalDetector(config).detect(points) -> Boxes`` on an (N, 4) float32 cloud, sensor frame."""

    def __init__(self, config: ClassicalConfig | None = None):
        self.config = (config or load_config()).validate()
        self.last_timing_ms: dict[str, float] = {}

    def detect(self, points: np.ndarray, frame_id: str = "lidar", stamp: float = 0.0) -> Boxes:
        cfg = self.config
        t0 = time.perf_counter()
        xyz = _crop(np.asarray(points, dtype=np.float32).reshape(-1, points.shape[-1])[:, :3], cfg)
        height = height_above_ground(xyz, cfg)
        t1 = time.perf_counter()
        obstacle = (height > cfg.ground_clearance_m) & (height < cfg.max_obstacle_height_m)
        obs_xyz = xyz[obstacle]
        obs_height = height[obstacle]
        ground_z = obs_xyz[:, 2] - obs_height
        cluster = cluster_bev(obs_xyz, cfg)
        t2 = time.perf_counter()
        boxes = self._boxes(obs_xyz, obs_height, ground_z, cluster, frame_id, stamp)
        t3 = time.perf_counter()
        self.last_timing_ms = {"ground": 1e3 * (t1 - t0), "cluster": 1e3 * (t2 - t1), "boxes": 1e3 * (t3 - t2),
                               "total": 1e3 * (t3 - t0)}
        return boxes

    def _boxes(self, xyz, height, ground_z, cluster, frame_id, stamp) -> Boxes:
        cfg = self.config
        keep = cluster >= 0
        if not keep.any():
            return Boxes(frame_id=frame_id, stamp=stamp)
        order = np.argsort(cluster[keep], kind="stable")
        xyz, height, ground_z, cluster = xyz[keep][order], height[keep][order], ground_z[keep][order], cluster[keep][order]
        starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]])
        counts = np.diff(np.r_[starts, len(cluster)])
        size_ok = (counts >= cfg.min_cluster_points) & (counts <= cfg.max_cluster_points)
        starts, counts = starts[size_ok], counts[size_ok]
        if len(starts) == 0:
            return Boxes(frame_id=frame_id, stamp=stamp)
        rect = fit_l_shapes(xyz[:, :2].astype(np.float64), starts, counts,
                            np.deg2rad(cfg.lshape_angle_step_deg), cfg.lshape_min_distance_m)
        cx, cy, length, width, yaw = rect.T
        top = np.maximum.reduceat(height, starts)                   # height above ground of the top
        bottom_z = np.minimum.reduceat(ground_z, starts)            # local ground under the cluster
        label, score, length, width, cx, cy = _classify(cx, cy, length, width, yaw, top, counts, cfg)
        good = label > 0
        center = np.stack([cx, cy, bottom_z + top / 2], 1)[good]
        size = np.stack([length, width, top], 1)[good]
        return Boxes(center, size, yaw[good], label[good], score[good], frame_id=frame_id, stamp=stamp)


def _crop(xyz: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    r2 = xyz[:, 0] ** 2 + xyz[:, 1] ** 2
    keep = ((np.abs(xyz[:, 0]) <= cfg.range_m) & (np.abs(xyz[:, 1]) <= cfg.range_m)
            & (r2 >= cfg.self_filter_radius_m ** 2) & (xyz[:, 2] >= cfg.min_z_m) & (xyz[:, 2] <= cfg.max_z_m)
            & np.isfinite(xyz).all(axis=1))
    return xyz[keep]


def height_above_ground(xyz: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    """Height of each point above the estimated ground surface (metres; ground points ~0)."""
    if len(xyz) == 0:
        return np.zeros(0)
    cell = cfg.ground_cell_m
    n = int(np.ceil(2 * cfg.range_m / cell)) + 1
    ix = np.clip(((xyz[:, 0] + cfg.range_m) / cell).astype(np.int64), 0, n - 1)
    iy = np.clip(((xyz[:, 1] + cfg.range_m) / cell).astype(np.int64), 0, n - 1)
    flat = ix * n + iy
    lowest = np.full(n * n, np.inf)
    np.minimum.at(lowest, flat, xyz[:, 2].astype(np.float64))
    lowest = lowest.reshape(n, n)
    window = max(1, int(round(cfg.ground_window_m / cell)) | 1)   # odd, so the window is centred
    eroded = ndimage.minimum_filter(lowest, size=window, mode="constant", cval=np.inf)
    # Only cells holding returns take part in the max filter: an empty cell is often the shadow
    # behind an object, and its window then sees nothing but the object (a car would become ground).
    eroded[np.isinf(lowest)] = -np.inf
    ground = ndimage.maximum_filter(eroded, size=window, mode="constant", cval=-np.inf)
    # A cell with points always has a finite opening; guard anyway so no NaN/inf leaks out.
    ground_at_point = ground.reshape(-1)[flat]
    ground_at_point = np.where(np.isfinite(ground_at_point), ground_at_point, lowest.reshape(-1)[flat])
    return xyz[:, 2] - ground_at_point


def cluster_bev(xyz: np.ndarray, cfg: ClassicalConfig) -> np.ndarray:
    """Cluster id per point (-1 none) from 8-connected components of the BEV occupancy grid."""
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    cell = cfg.cluster_cell_m
    n = int(np.ceil(2 * cfg.range_m / cell)) + 1
    ix = np.clip(((xyz[:, 0] + cfg.range_m) / cell).astype(np.int64), 0, n - 1)
    iy = np.clip(((xyz[:, 1] + cfg.range_m) / cell).astype(np.int64), 0, n - 1)
    occupied = np.zeros((n, n), dtype=bool)
    occupied[ix, iy] = True
    grown = ndimage.binary_dilation(occupied, iterations=cfg.cluster_dilation_cells) if cfg.cluster_dilation_cells > 0 else occupied
    components, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    return components[ix, iy].astype(np.int64) - 1


@numba.njit(cache=True)
def fit_l_shapes(xy, starts, counts, angle_step, min_distance):
    """(K, 5) rectangles [cx, cy, length, width, yaw] for K clusters of sorted points.

    For each heading in [0, pi/2) the points are projected on the two box axes; the closeness score
    sums 1 / distance of each point to its nearest edge (clamped at ``min_distance``), so headings
    that put many points on two edges win. Yaw is the heading of the longer side, in (-pi/2, pi/2].
    """
    k_count = starts.shape[0]
    out = np.zeros((k_count, 5))
    n_angles = max(1, int(np.pi / 2 / angle_step))
    for k in range(k_count):
        s = starts[k]
        m = counts[k]
        best_score = -1.0
        best_theta = 0.0
        for a in range(n_angles):
            theta = a * angle_step
            c = np.cos(theta)
            sn = np.sin(theta)
            min1 = 1e18
            max1 = -1e18
            min2 = 1e18
            max2 = -1e18
            for i in range(s, s + m):
                p1 = xy[i, 0] * c + xy[i, 1] * sn
                p2 = -xy[i, 0] * sn + xy[i, 1] * c
                min1 = min(min1, p1)
                max1 = max(max1, p1)
                min2 = min(min2, p2)
                max2 = max(max2, p2)
            score = 0.0
            for i in range(s, s + m):
                p1 = xy[i, 0] * c + xy[i, 1] * sn
                p2 = -xy[i, 0] * sn + xy[i, 1] * c
                d1 = min(max1 - p1, p1 - min1)
                d2 = min(max2 - p2, p2 - min2)
                score += 1.0 / max(min(d1, d2), min_distance)
            if score > best_score:
                best_score = score
                best_theta = theta
        c = np.cos(best_theta)
        sn = np.sin(best_theta)
        min1 = 1e18
        max1 = -1e18
        min2 = 1e18
        max2 = -1e18
        for i in range(s, s + m):
            p1 = xy[i, 0] * c + xy[i, 1] * sn
            p2 = -xy[i, 0] * sn + xy[i, 1] * c
            min1 = min(min1, p1)
            max1 = max(max1, p1)
            min2 = min(min2, p2)
            max2 = max(max2, p2)
        m1 = 0.5 * (min1 + max1)
        m2 = 0.5 * (min2 + max2)
        cx = m1 * c - m2 * sn
        cy = m1 * sn + m2 * c
        ext1 = max1 - min1
        ext2 = max2 - min2
        if ext1 >= ext2:
            yaw = best_theta
            length, width = ext1, ext2
        else:
            yaw = best_theta + np.pi / 2
            length, width = ext2, ext1
        if yaw > np.pi / 2:
            yaw -= np.pi
        out[k, 0] = cx
        out[k, 1] = cy
        out[k, 2] = length
        out[k, 3] = width
        out[k, 4] = yaw
    return out


def _classify(cx, cy, length, width, yaw, height, counts, cfg: ClassicalConfig):
    """Label (0 = rejected), score, and boxes completed to the typical size where seen from one side."""
    n = len(cx)
    label = np.zeros(n, dtype=np.int32)
    score = np.zeros(n)
    out_l, out_w, out_cx, out_cy = length.copy(), width.copy(), cx.copy(), cy.copy()
    not_wall = length < cfg.wall_aspect * np.maximum(width, 0.05) + 1.0  # allow short thin slivers
    # Order matters: the first class whose gates pass wins, from the smallest footprint up.
    for cls, name in ((ObjectClass.PEDESTRIAN, "pedestrian"), (ObjectClass.CYCLIST, "cyclist"),
                      (ObjectClass.VEHICLE, "vehicle")):
        (l0, l1), (w0, w1), (h0, h1) = (getattr(cfg, f"{name}_{d}") for d in ("length_m", "width_m", "height_m"))
        fits = ((label == 0) & (length >= l0) & (length <= l1) & (width >= w0) & (width <= w1)
                & (height >= h0) & (height <= h1) & not_wall)
        if cls == ObjectClass.VEHICLE:
            fits &= ~((length < 2.0) & (width < 1.0) & (height > 1.0) & (height < 2.1))  # people-sized, not a car
        if not fits.any():
            continue
        typical = np.asarray(getattr(cfg, f"{name}_typical_lwh_m"), dtype=float)
        label[fits] = int(cls)
        if cls == ObjectClass.VEHICLE:
            new_l, new_w, new_cx, new_cy = _complete_box(cx[fits], cy[fits], length[fits], width[fits], yaw[fits], typical)
            out_l[fits], out_w[fits], out_cx[fits], out_cy[fits] = new_l, new_w, new_cx, new_cy
        rel = np.stack([out_l[fits] / typical[0], out_w[fits] / typical[1], height[fits] / typical[2]], 1)
        size_likeness = np.exp(-0.5 * np.sum(np.log(rel) ** 2, axis=1) / 0.35 ** 2)
        support = np.minimum(1.0, counts[fits] / cfg.points_for_full_score)
        score[fits] = np.clip(size_likeness * (0.5 + 0.5 * support), cfg.min_score, 1.0)
    return label, score, out_l, out_w, out_cx, out_cy


def _complete_box(cx, cy, length, width, yaw, typical):
    """Grow vehicle boxes shorter or narrower than typical, away from the sensor.

    A car seen end-on or side-on shows one face; its box centre then lies behind that face by half
    the hidden extent. Shift the centre along each grown axis by half the growth, on the far side.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    along = np.stack([c, s], 1)
    across = np.stack([-s, c], 1)
    centre = np.stack([cx, cy], 1)
    new_l = np.maximum(length, typical[0])
    new_w = np.maximum(width, typical[1])
    away_along = np.sign(np.sum(centre * along, axis=1))
    away_across = np.sign(np.sum(centre * across, axis=1))
    centre = (centre + along * ((new_l - length) / 2 * away_along)[:, None]
              + across * ((new_w - width) / 2 * away_across)[:, None])
    return new_l, new_w, centre[:, 0], centre[:, 1]
