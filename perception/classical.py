"""Classical lidar detector: ground removal, BEV clustering, L-shape boxes, size-based classes.

A fallback when no learned model is loaded and a yardstick for the learned one. Every step works on
whole arrays; the per-cluster searches are numba kernels; Python loops run over boxes, never points.

1. Ground: the lowest point in each ``ground_cell_m`` cell, then a grey-scale morphological opening
   (min filter, then max filter) over ``ground_window_m``, the max filter reading only cells that
   hold returns (an empty cell is often the shadow behind an object). Opening removes anything
   narrower than the window (cars, people, poles: their cells hold no ground return, only the
   object's underside) and reproduces planes and slopes exactly, so sloped roads stay ground. Points
   more than ``ground_clearance_m`` above that surface are obstacles, up to ``max_obstacle_height_m``.
2. Clusters: obstacle points rasterised on a ``cluster_cell_m`` BEV grid, grown by
   ``cluster_dilation_cells`` (sparse far returns), connected components (8-neighbour).
3. Boxes: for each cluster, the rectangle orientation maximising the closeness criterion of
   Zhang et al. 2017, "Efficient L-Shape Fitting for Vehicle Detection Using Laser Scanners": points
   near two perpendicular edges, the visible sides of a car. Boxes smaller than the class's typical
   size are grown to it away from the sensor, since the hidden sides are behind the visible ones; a
   lone thin line as long as a car is wide is taken for a vehicle seen end-on.
4. Classes from footprint and height above ground; walls, buildings, kerbs and poles (too long, too
   wide, too flat, too thin) are rejected, and vehicles need most of their points on the box outline
   (``vehicle_min_edge_fraction``), which filled blobs of vegetation lack. The score multiplies size
   likeness, point support for the range, and that outline share.
5. Clusters too big for any class have their dominant line (a wall, fence or hedge the object
   touches) stripped and are clustered again, ``wall_strip_passes`` times, keeping vehicles only.
   Same-class boxes closer than ``duplicate_fraction`` x the typical length are one object.

Headings come from the box outline, so they are known modulo pi (front and back look alike).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

from adstack.config import load_params
from adstack.errors import DataError
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
    wall_strip_passes: int = 2            # passes that strip wall lines off too-big clusters (0: off)
    duplicate_fraction: float = 0.4       # same-class centres closer than this x typical length: one object
    min_cluster_points: int = 5
    edge_band_m: float = 0.2              # "on the outline" for the edge-fraction test
    max_cluster_points: int = 20000
    lshape_angle_step_deg: float = 2.0
    lshape_min_distance_m: float = 0.01   # clamp in the closeness criterion
    # Class gates: (length, width, height) ranges in metres and typical sizes used for scoring and
    # for completing boxes seen from one side.
    vehicle_length_m: tuple[float, ...] = (1.0, 12.0)
    vehicle_width_m: tuple[float, ...] = (0.5, 3.2)
    vehicle_height_m: tuple[float, ...] = (0.9, 4.0)
    vehicle_typical_lwh_m: tuple[float, ...] = (4.5, 1.85, 1.6)
    vehicle_end_face_m: tuple[float, ...] = (1.4, 2.3)  # a lone thin line this long: a vehicle's front or back
    vehicle_min_edge_fraction: float = 0.5  # share of points on the box outline (see edge_fraction)
    pedestrian_length_m: tuple[float, ...] = (0.15, 1.2)
    pedestrian_width_m: tuple[float, ...] = (0.1, 1.0)
    pedestrian_height_m: tuple[float, ...] = (1.0, 2.1)
    pedestrian_typical_lwh_m: tuple[float, ...] = (0.7, 0.6, 1.75)
    cyclist_length_m: tuple[float, ...] = (1.2, 2.3)
    cyclist_width_m: tuple[float, ...] = (0.2, 1.0)
    cyclist_height_m: tuple[float, ...] = (1.0, 2.1)
    cyclist_typical_lwh_m: tuple[float, ...] = (1.8, 0.6, 1.7)
    wall_aspect: float = 5.0              # length / width above this: a wall, fence or kerb line
    points_for_full_score: int = 60       # returns that earn the full support factor at 15 m range
    score_size_sigma: float = 0.25        # log-size tolerance of the size-likeness factor
    end_on_score_factor: float = 0.7      # a lone face says less than an L
    min_score: float = 0.05

    def validate(self) -> "ClassicalConfig":
        positive = ("range_m", "ground_cell_m", "ground_window_m", "cluster_cell_m", "lshape_angle_step_deg",
                    "lshape_min_distance_m", "max_obstacle_height_m", "wall_aspect")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("wall_strip_passes", "duplicate_fraction", "cluster_dilation_cells", "min_cluster_points"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
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
    """Parameters from a ``*.param.yaml`` (default: config/classical.param.yaml), checked."""
    path = Path(path or DEFAULT_CONFIG)
    try:
        return load_params(ClassicalConfig, path).validate()
    except (ValueError, TypeError) as err:
        raise DataError(str(err), path) from None


class ClassicalDetector:
    """``ClassicalDetector(config).detect(points) -> Boxes`` on an (N, 4) float32 cloud, sensor frame."""

    def __init__(self, config: ClassicalConfig | None = None):
        self.config = (config or load_config()).validate()
        self.last_timing_ms: dict[str, float] = {}
        # Same-class centres closer than this fraction of the class's typical length: one object.
        self._duplicate_distance = {int(ObjectClass.VEHICLE): self.config.vehicle_typical_lwh_m[0],
                                    int(ObjectClass.PEDESTRIAN): self.config.pedestrian_typical_lwh_m[0],
                                    int(ObjectClass.CYCLIST): self.config.cyclist_typical_lwh_m[0]}
        self._duplicate_distance = {k: v * self.config.duplicate_fraction for k, v in self._duplicate_distance.items()}

    def detect(self, points: np.ndarray, frame_id: str = "lidar", stamp: float = 0.0) -> Boxes:
        cfg = self.config
        t0 = time.perf_counter()
        points = np.asarray(points, dtype=np.float32)
        xyz = _crop(points.reshape(-1, points.shape[-1] if points.ndim == 2 else 4)[:, :3], cfg)
        height = height_above_ground(xyz, cfg)
        t1 = time.perf_counter()
        obstacle = (height > cfg.ground_clearance_m) & (height < cfg.max_obstacle_height_m)
        obs = _Obstacles(xyz[obstacle], height[obstacle])
        cluster = cluster_bev(obs.xyz, cfg.range_m, cfg.cluster_cell_m, cfg.cluster_dilation_cells)
        t2 = time.perf_counter()
        found = self._classify_clusters(obs, cluster)
        # Further passes: a cluster too big for any class is often a vehicle touching a wall, fence or
        # hedge. Strip each such cluster's dominant line (the wall), cluster the rest again, and keep
        # the pieces that are vehicles. Walls and buildings stay rejected.
        remaining = found.pop("leftover_points")
        for _ in range(cfg.wall_strip_passes):
            if not remaining.any():
                break
            sub = _Obstacles(obs.xyz[remaining], obs.height[remaining])
            # No growing here: the gap left by the stripped wall is narrow.
            pieces = self._classify_clusters(sub, cluster_bev(sub.xyz, cfg.range_m, cfg.cluster_cell_m, 0))
            next_remaining = np.zeros_like(remaining)
            next_remaining[np.flatnonzero(remaining)[pieces.pop("leftover_points")]] = True
            remaining = next_remaining
            # Only vehicles: what is left of a building is often person-sized.
            pieces["label"] = np.where(pieces["label"] == int(ObjectClass.VEHICLE), pieces["label"], 0)
            found = {k: np.concatenate([found[k], pieces[k]]) for k in found}
        keep = found["label"] > 0
        found = {k: v[keep] for k, v in found.items()}
        keep = suppress_duplicates(found["center"][:, :2], found["label"], found["score"], self._duplicate_distance)
        t3 = time.perf_counter()
        self.last_timing_ms = {"ground": 1e3 * (t1 - t0), "cluster": 1e3 * (t2 - t1), "boxes": 1e3 * (t3 - t2),
                               "total": 1e3 * (t3 - t0)}
        return Boxes(found["center"][keep], found["size"][keep], found["yaw"][keep], found["label"][keep],
                     found["score"][keep], frame_id=frame_id, stamp=stamp)

    def _classify_clusters(self, obs: "_Obstacles", cluster: np.ndarray) -> dict:
        """Box, class and score per cluster, and ``leftover_points``: the points of clusters too big
        for any class that are off their cluster's dominant line, for the next pass."""
        cfg = self.config
        empty = {"center": np.zeros((0, 3)), "size": np.zeros((0, 3)), "yaw": np.zeros(0), "edge_fraction": np.zeros(0),
                 "label": np.zeros(0, dtype=np.int32), "score": np.zeros(0),
                 "leftover_points": np.zeros(len(cluster), dtype=bool)}
        if not (cluster >= 0).any():
            return empty
        point_index = np.flatnonzero(cluster >= 0)
        point_index = point_index[np.argsort(cluster[point_index], kind="stable")]
        ids = cluster[point_index]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        counts = np.diff(np.r_[starts, len(ids)])
        size_ok = (counts >= cfg.min_cluster_points) & (counts <= cfg.max_cluster_points)
        if not size_ok.any():
            return empty
        # Keep the points of clusters of a workable size, still grouped by cluster.
        members = np.repeat(size_ok, counts)
        point_index = point_index[members]
        counts = counts[size_ok]
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        xyz = obs.xyz[point_index]
        height = obs.height[point_index]
        ground_z = xyz[:, 2] - height
        rect = fit_l_shapes(xyz[:, :2].astype(np.float64), starts, counts,
                            np.deg2rad(cfg.lshape_angle_step_deg), cfg.lshape_min_distance_m)
        cx, cy, length, width, yaw = rect.T
        top = np.maximum.reduceat(height, starts)                   # height above ground of the top
        bottom_z = np.minimum.reduceat(ground_z, starts)            # local ground under the cluster
        edge = edge_fraction(xyz[:, :2], counts, rect, cfg.edge_band_m)
        label, score, length_c, width_c, cx_c, cy_c, yaw_c = _classify(cx, cy, length, width, yaw, top, counts, edge, cfg)
        too_big = (label == 0) & ((length > cfg.vehicle_length_m[1]) | (width > cfg.vehicle_width_m[1])
                                  | (length >= cfg.wall_aspect * np.maximum(width, 0.05) + 1.0))
        in_big = np.repeat(too_big, counts)
        off_edge = ~on_dominant_line(xyz[:, :2], counts, rect, cfg.edge_band_m)
        leftover_points = np.zeros(len(cluster), dtype=bool)
        leftover_points[point_index[in_big & off_edge]] = True
        return {"center": np.stack([cx_c, cy_c, bottom_z + top / 2], 1), "size": np.stack([length_c, width_c, top], 1),
                "yaw": yaw_c, "label": label, "score": score, "edge_fraction": edge, "leftover_points": leftover_points}


class _Obstacles:
    """Obstacle points and their heights above the ground."""

    def __init__(self, xyz: np.ndarray, height: np.ndarray):
        self.xyz = xyz
        self.height = height


def suppress_duplicates(xy: np.ndarray, label: np.ndarray, score: np.ndarray, distance_m) -> np.ndarray:
    """Indices of boxes kept after dropping any box whose centre lies within the class's distance
    (``distance_m``: a number, or a dict class -> metres) of a better-scored box of the same class:
    pieces of one object found twice."""
    if len(xy) == 0:
        return np.arange(len(xy))
    order = np.argsort(-score, kind="stable")
    label = label[order]
    limit = (np.array([distance_m.get(int(c), 0.0) for c in label]) if isinstance(distance_m, dict)
             else np.full(len(label), float(distance_m)))
    dist = np.linalg.norm(xy[order, None, :] - xy[None, order, :], axis=-1)
    same = label[:, None] == label[None, :]
    suppressed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):       # loop over boxes (tens), not points
        if not suppressed[i]:
            suppressed[i + 1:] |= (dist[i, i + 1:] < limit[i]) & same[i, i + 1:]
    return np.sort(order[~suppressed])


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


def cluster_bev(xyz: np.ndarray, range_m: float, cell_m: float, dilation_cells: int) -> np.ndarray:
    """Cluster id per point (-1 none) from 8-connected components of the BEV occupancy grid."""
    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    # The grid spans only the points' bounding box (plus the growth margin): the split pass often
    # works on a few objects, and a full-range grid at 0.1 m would be 1.4 M cells.
    margin = dilation_cells + 1
    lo = np.maximum(xyz[:, :2].min(axis=0), -range_m) - margin * cell_m
    hi = np.minimum(xyz[:, :2].max(axis=0), range_m) + margin * cell_m
    nx, ny = (np.ceil((hi - lo) / cell_m).astype(np.int64) + 1)
    ix = np.clip(((xyz[:, 0] - lo[0]) / cell_m).astype(np.int64), 0, nx - 1)
    iy = np.clip(((xyz[:, 1] - lo[1]) / cell_m).astype(np.int64), 0, ny - 1)
    occupied = np.zeros((nx, ny), dtype=bool)
    occupied[ix, iy] = True
    grown = ndimage.binary_dilation(occupied, iterations=dilation_cells) if dilation_cells > 0 else occupied
    components, _ = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    return components[ix, iy].astype(np.int64) - 1


@numba.njit(cache=True)
def _extents(xy, s, m, c, sn):
    """Min and max of points s..s+m projected on the axes (c, sn) and (-sn, c)."""
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
    return min1, max1, min2, max2


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
            min1, max1, min2, max2 = _extents(xy, s, m, c, sn)
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
        min1, max1, min2, max2 = _extents(xy, s, m, c, sn)
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


def edge_fraction(xy: np.ndarray, counts: np.ndarray, rect: np.ndarray, band_m: float) -> np.ndarray:
    """Per cluster, the share of its points within ``band_m`` of the fitted rectangle's outline.

    Lidar sees a vehicle's outer surfaces, so its points hug two edges of the box (an L) or one (an
    I); vegetation and clutter fill the footprint. ``xy`` is sorted by cluster, ``counts`` per cluster.
    """
    per_point = np.repeat(rect, counts, axis=0)
    c, s = np.cos(per_point[:, 4]), np.sin(per_point[:, 4])
    dx, dy = xy[:, 0] - per_point[:, 0], xy[:, 1] - per_point[:, 1]
    u, v = np.abs(dx * c + dy * s), np.abs(-dx * s + dy * c)
    to_edge = np.minimum(per_point[:, 2] / 2 - u, per_point[:, 3] / 2 - v)
    near = (to_edge <= band_m).astype(np.float64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    return np.add.reduceat(near, starts) / counts


def on_dominant_line(xy: np.ndarray, counts: np.ndarray, rect: np.ndarray, band_m: float) -> np.ndarray:
    """Per point, whether it lies within ``band_m`` of the line, parallel to one of its cluster's
    rectangle axes, that holds the most points: for a vehicle parked against a wall, the wall."""
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    return _dominant_line_kernel(np.ascontiguousarray(xy, dtype=np.float64), starts, counts.astype(np.int64),
                                 np.ascontiguousarray(rect), band_m)


@numba.njit(cache=True)
def _dominant_line_kernel(xy, starts, counts, rect, band_m):
    on_line = np.zeros(xy.shape[0], dtype=np.bool_)
    bin_m = band_m
    for k in range(starts.shape[0]):
        s, m = starts[k], counts[k]
        c, sn = np.cos(rect[k, 4]), np.sin(rect[k, 4])
        best_count, best_axis, best_centre = -1, 0, 0.0
        for axis in range(2):
            half = (rect[k, 2] if axis == 1 else rect[k, 3]) / 2 + bin_m
            n_bins = int(2 * half / bin_m) + 1
            hist = np.zeros(n_bins, dtype=np.int64)
            for i in range(s, s + m):
                dx, dy = xy[i, 0] - rect[k, 0], xy[i, 1] - rect[k, 1]
                coord = -dx * sn + dy * c if axis == 0 else dx * c + dy * sn   # axis 0: lines along the length
                b = int((coord + half) / bin_m)
                if 0 <= b < n_bins:
                    hist[b] += 1
            for b in range(n_bins):
                if hist[b] > best_count:
                    best_count, best_axis, best_centre = hist[b], axis, (b + 0.5) * bin_m - half
        for i in range(s, s + m):
            dx, dy = xy[i, 0] - rect[k, 0], xy[i, 1] - rect[k, 1]
            coord = -dx * sn + dy * c if best_axis == 0 else dx * c + dy * sn
            on_line[i] = abs(coord - best_centre) <= band_m
    return on_line


def _classify(cx, cy, length, width, yaw, height, counts, edge, cfg: ClassicalConfig):
    """Label (0 = rejected), score, and boxes completed to the typical size where seen from one side
    (length, width, centre x, centre y, and yaw, turned by 90 degrees for vehicles seen end-on)."""
    n = len(cx)
    length, width, yaw = length.copy(), width.copy(), yaw.copy()
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
        typical = np.asarray(getattr(cfg, f"{name}_typical_lwh_m"), dtype=float)
        end_on = np.zeros(n, dtype=bool)
        if cls == ObjectClass.VEHICLE:
            # A vehicle seen end-on at range is one thin line as long as the car is wide.
            lo, hi = cfg.vehicle_end_face_m
            end_on = ((label == 0) & (length >= lo) & (length <= hi) & (width < w0)
                      & (height >= h0) & (height <= h1))
            fits |= end_on
            fits &= edge >= cfg.vehicle_min_edge_fraction
        if not fits.any():
            continue
        label[fits] = int(cls)
        if cls == ObjectClass.VEHICLE:
            # Turn end-on faces so that their long axis is the (unseen) length of the vehicle.
            yaw[end_on] = np.where(yaw[end_on] > 0, yaw[end_on] - np.pi / 2, yaw[end_on] + np.pi / 2)
            length[end_on], width[end_on] = width[end_on].copy(), length[end_on].copy()
        new_l, new_w, new_cx, new_cy = _complete_box(cx[fits], cy[fits], length[fits], width[fits], yaw[fits], typical)
        out_l[fits], out_w[fits], out_cx[fits], out_cy[fits] = new_l, new_w, new_cx, new_cy
        # Size likeness on the measured footprint: smaller than typical is what a partial view looks
        # like and costs nothing; larger, and any height mismatch, cost a log-normal penalty.
        log_l = np.maximum(np.log(np.maximum(length[fits], 1e-3) / typical[0]), 0.0)
        log_w = np.maximum(np.log(np.maximum(width[fits], 1e-3) / typical[1]), 0.0)
        log_h = np.log(np.maximum(height[fits], 1e-3) / typical[2])
        size_likeness = np.exp(-0.5 * (log_l ** 2 + log_w ** 2 + log_h ** 2) / cfg.score_size_sigma ** 2)
        # Support: returns per object fall with the square of range; full marks at the reference count
        # scaled from 15 m.
        range_m = np.maximum(np.hypot(cx[fits], cy[fits]), 15.0)
        expected = np.maximum(cfg.points_for_full_score * (15.0 / range_m) ** 2, 8.0)
        support = np.minimum(1.0, counts[fits] / expected)
        partial = np.where(end_on[fits], cfg.end_on_score_factor, 1.0)
        if cls == ObjectClass.VEHICLE:
            partial = partial * edge[fits]   # outlines, not filled blobs (vegetation)
        score[fits] = np.clip(size_likeness * (0.3 + 0.7 * support) * partial, cfg.min_score, 1.0)
    return label, score, out_l, out_w, out_cx, out_cy, yaw


def _complete_box(cx, cy, length, width, yaw, typical):
    """Grow boxes shorter or narrower than their class's typical size, away from the sensor.

    A car seen end-on or side-on shows one face (a person, the near half of the body); its box centre then lies behind that face by half
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
