"""Static scenery along the roads, so the lidar sees clutter a detector must reject.

``place_scenery(hdmap, seed)`` puts building blocks set back from the road edges, street-light poles
and sign posts at the kerb, and a post with a signal housing at each of the map's traffic lights,
all as world-frame ``Boxes`` with label STATIC. Nothing stands on a driving lane: every footprint is
checked against a raster of the map's drivable area (``HDMap.is_drivable`` sampled once on a grid)
and its distance transform, and against the scenery placed before it.

The lidar reads a scenery box's material from its shape (``sim.lidar.scenery_material``): thin
plates are retro-reflective signs, slender posts metal, small boxes signal housings, the rest
buildings. The sizes below respect those rules.

``SceneryIndex`` is a uniform grid over the boxes: ``query(x, y)`` returns those within the lidar's
range of a position, because Town maps hold thousands of boxes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import distance_transform_cdt, distance_transform_edt
from scipy.spatial import cKDTree

from adstack.config import load_params
from adstack.errors import DataError
from adstack.paths import cache_dir
from adstack.types import Boxes, ObjectClass

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "scenery.param.yaml"
SCENERY_VERSION = 1  # bump when placement changes, to invalidate cached placements


@dataclass
class SceneryConfig:
    raster_resolution_m: float = 0.5  # grid on which the drivable area is sampled
    # building blocks: footprint along the road x depth, height; gap between neighbours
    building_length_min_m: float = 8.0
    building_length_max_m: float = 25.0
    building_depth_min_m: float = 8.0
    building_depth_max_m: float = 20.0
    building_height_min_m: float = 4.0
    building_height_max_m: float = 25.0
    building_setback_min_m: float = 4.0  # from the nearest driving lane (a sidewalk's width)
    building_setback_max_m: float = 9.0
    building_gap_min_m: float = 2.0
    building_gap_max_m: float = 12.0
    building_probability: float = 0.8  # chance that a free lot gets a building
    # street-light poles at the kerb
    pole_spacing_m: float = 30.0
    pole_kerb_offset_m: float = 1.0  # posts' near side this far outside the lane edge
    pole_width_m: float = 0.3
    pole_height_m: float = 7.0
    # sign posts with a retro-reflective plate facing the traffic
    sign_spacing_m: float = 90.0
    sign_post_height_m: float = 2.0
    sign_plate_size_m: float = 0.8
    # traffic-light posts at the map's traffic lights
    light_post_width_m: float = 0.3
    light_post_height_m: float = 4.5
    light_housing_size_m: float = 0.4
    light_housing_height_m: float = 1.0
    light_search_radius_m: float = 8.0  # how far a post may move to get off the roadway
    clearance_m: float = 0.5  # poles and posts keep this far from driving lanes
    # index
    index_cell_m: float = 50.0
    query_radius_m: float = 110.0  # default: the lidar's range plus a margin for the mounting offset

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DataError(f"{name} must be a finite number >= 0, got {value!r}", "SceneryConfig")
        for what in ("length", "depth", "height", "setback", "gap"):
            lo, hi = f"building_{what}_min_m", f"building_{what}_max_m"
            if getattr(self, lo) > getattr(self, hi):
                raise DataError(f"{lo} must not exceed {hi}", "SceneryConfig")
        if self.raster_resolution_m <= 0 or self.index_cell_m <= 0:
            raise DataError("raster_resolution_m and index_cell_m must be positive", "SceneryConfig")
        if self.building_probability > 1:
            raise DataError("building_probability must be in [0, 1]", "SceneryConfig")

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "SceneryConfig":
        return load_params(cls, path)


def _rect_samples(center_xy, length, width, yaw, spacing):
    """(K,2) points on a grid over a rotated rectangle, edges included."""
    nx = max(2, int(math.ceil(length / spacing)) + 1)
    ny = max(2, int(math.ceil(width / spacing)) + 1)
    u, v = np.meshgrid(np.linspace(-length / 2, length / 2, nx), np.linspace(-width / 2, width / 2, ny))
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([center_xy[0] + c * u.ravel() - s * v.ravel(), center_xy[1] + s * u.ravel() + c * v.ravel()], 1)


def _densify(polyline, step):
    """Points along a polyline no farther apart than ``step``."""
    seg = np.diff(polyline, axis=0)
    n = np.maximum(1, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / step).astype(np.int64))
    t = np.concatenate([np.arange(k) / k for k in n]) if len(n) else np.zeros(0)
    start = np.repeat(polyline[:-1], n, axis=0)
    return np.vstack([start + np.repeat(seg, n, axis=0) * t[:, None], polyline[-1:]])


class _Raster:
    """Drivable area, distance to it, and cells taken by placed scenery, on one grid."""

    def __init__(self, bounds, resolution, is_drivable, lanes):
        x0, y0, x1, y1 = bounds
        self.origin = np.array([x0, y0])
        self.res = resolution
        self.shape = (int(math.ceil((x1 - x0) / resolution)) + 1, int(math.ceil((y1 - y0) / resolution)) + 1)
        # The drivable test is slow (about 2 us a point), so it runs only in a band around the lane
        # centre lines: a lane's area lies within half its width of its centre line.
        on_centerline = np.zeros(self.shape, dtype=bool)
        half_width_max = 0.0
        for centerline, width in lanes:
            dense = _densify(centerline, resolution / 2)
            idx, inside = self.cells(dense)
            on_centerline[idx[inside, 0], idx[inside, 1]] = True
            half_width_max = max(half_width_max, float(np.max(width)) / 2)
        reach_cells = int(math.ceil((half_width_max + 2 * resolution) / resolution)) + 1
        # chessboard distance never exceeds the Euclidean one, so this band holds every lane cell
        band = distance_transform_cdt(~on_centerline, metric="chessboard") <= reach_cells
        ix, iy = np.nonzero(band)
        drivable = np.zeros(self.shape, dtype=bool)
        band_xy = np.stack([x0 + ix * resolution, y0 + iy * resolution], 1)
        drivable[ix, iy] = np.asarray(is_drivable(band_xy), dtype=bool)
        # distance of each cell to the nearest drivable cell; cell centres are exact samples, the
        # area between them is off by at most half a cell diagonal, which callers add to margins
        self.distance = distance_transform_edt(~drivable) * resolution
        self.taken = np.zeros(self.shape, dtype=bool)
        self.slack = resolution * math.sqrt(0.5)

    def cells(self, xy):
        idx = np.rint((xy - self.origin) / self.res).astype(np.int64)
        inside = (idx[:, 0] >= 0) & (idx[:, 1] >= 0) & (idx[:, 0] < self.shape[0]) & (idx[:, 1] < self.shape[1])
        return idx, inside

    def free(self, samples, min_distance):
        """All samples inside the grid, at least ``min_distance`` from the road, on no placed scenery."""
        idx, inside = self.cells(samples)
        if not inside.all():
            return False
        return bool(np.all(self.distance[idx[:, 0], idx[:, 1]] >= min_distance + self.slack)
                    and not self.taken[idx[:, 0], idx[:, 1]].any())

    def take(self, samples):
        idx, inside = self.cells(samples)
        self.taken[idx[inside, 0], idx[inside, 1]] = True


def _resample(polyline, spacing, start, width, z):
    """Points every ``spacing`` metres along a polyline from arc length ``start``: (K,2) points,
    headings, arc lengths, and the lane width and ground z interpolated there."""
    seg = np.diff(polyline, axis=0)
    seg_len = np.hypot(seg[:, 0], seg[:, 1])
    if len(seg) == 0 or seg_len.sum() < 1e-6:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
    s = np.concatenate([[0.0], np.cumsum(seg_len)])
    target = np.arange(start, s[-1], spacing)
    x, y = np.interp(target, s, polyline[:, 0]), np.interp(target, s, polyline[:, 1])
    seg_idx = np.clip(np.searchsorted(s, target, side="right") - 1, 0, len(seg) - 1)
    heading = np.arctan2(seg[seg_idx, 1], seg[seg_idx, 0])
    return np.stack([x, y], 1), heading, target, np.interp(target, s, width), np.interp(target, s, z)


def place_scenery_from_lanes(centerlines: Sequence[np.ndarray], widths: Sequence[np.ndarray],
                             is_drivable: Callable[[np.ndarray], np.ndarray], traffic_lights_xy=(),
                             seed: int = 0, config: SceneryConfig | None = None,
                             centerline_z: Sequence[np.ndarray] | None = None,
                             furnished: Sequence[bool] | None = None) -> Boxes:
    """Scenery from lane centre polylines (M,2), their widths (M,) and a vectorized drivable test.

    ``centerlines`` must cover every driving lane (junctions included): the drivable test is
    sampled only near them. ``furnished`` (default: all) says along which lanes to place scenery.
    Walks both edges of every furnished lane: a sign post every ``sign_spacing_m``, a pole every
    ``pole_spacing_m`` at the kerb, and building lots one after another set back from the road;
    a candidate that would touch a driving lane or earlier scenery is dropped. Deterministic in
    ``seed`` and the lane order.
    """
    cfg = config or SceneryConfig()
    rng = np.random.default_rng(seed)
    lanes = [(np.asarray(c, dtype=np.float64).reshape(-1, 2),
              np.broadcast_to(np.asarray(w, dtype=np.float64), (len(c),))) for c, w in zip(centerlines, widths)]
    lanes_z = [np.zeros(len(c)) for c, _ in lanes] if centerline_z is None else \
        [np.broadcast_to(np.asarray(z, dtype=np.float64).reshape(-1), (len(c),))
         for (c, _), z in zip(lanes, centerline_z)]
    if not lanes:
        return Boxes()
    all_points = np.vstack([c for c, _ in lanes])
    all_z = np.concatenate(lanes_z)
    margin = cfg.building_setback_max_m + cfg.building_depth_max_m + cfg.building_length_max_m + 5.0
    lo, hi = all_points.min(axis=0) - margin, all_points.max(axis=0) + margin
    raster = _Raster((lo[0], lo[1], hi[0], hi[1]), cfg.raster_resolution_m, is_drivable, lanes)
    if furnished is not None:
        keep = [bool(f) for f in furnished]
        lanes = [lane for lane, k in zip(lanes, keep) if k]
        lanes_z = [z for z, k in zip(lanes_z, keep) if k]
    spacing = cfg.raster_resolution_m
    boxes: list[tuple] = []  # (x, y, z_centre, length, width, height, yaw)

    def add(x, y, z_base, length, width, height, yaw, samples):
        raster.take(samples)
        boxes.append((x, y, z_base + height / 2, length, width, height, yaw))

    def post_fits(x, y, length, width, yaw):
        """A post's footprint plus clearance: checked point by point against the drivable test itself
        (posts stand close to the kerb, closer than the raster's half-cell error)."""
        samples = _rect_samples((x, y), length + 2 * cfg.clearance_m, width + 2 * cfg.clearance_m, yaw, 0.1)
        idx, inside = raster.cells(samples)
        if not inside.all() or raster.taken[idx[:, 0], idx[:, 1]].any():
            return False, samples
        return not np.asarray(is_drivable(samples), dtype=bool).any(), samples

    # street furniture first (it stands at the kerb), then buildings behind it
    for (centerline, width), z in zip(lanes, lanes_z):
        for side in (1.0, -1.0):
            for kind, step in (("sign", cfg.sign_spacing_m), ("pole", cfg.pole_spacing_m)):
                if step <= 0:
                    continue
                points, headings, _, widths_at, z_at = _resample(centerline, step, rng.uniform(0.0, step), width, z)
                for (px, py), heading, lane_width, base in zip(points, headings, widths_at, z_at):
                    normal = np.array([-math.sin(heading), math.cos(heading)]) * side
                    if kind == "pole":
                        length = width_across = cfg.pole_width_m
                    else:  # the plate reaches across, towards the road: stand it back by half its width
                        length, width_across = 0.08, cfg.sign_plate_size_m
                    x, y = np.array([px, py]) + normal * (lane_width / 2 + cfg.pole_kerb_offset_m + width_across / 2)
                    fits, samples = post_fits(x, y, length, width_across, heading)
                    if not fits:
                        continue
                    if kind == "pole":
                        add(x, y, base, cfg.pole_width_m, cfg.pole_width_m, cfg.pole_height_m, heading, samples)
                    else:
                        add(x, y, base, 0.08, 0.08, cfg.sign_post_height_m, heading, samples)
                        # the plate faces this lane's traffic: its thin side along the lane
                        boxes.append((x, y, base + cfg.sign_post_height_m + cfg.sign_plate_size_m / 2, 0.05,
                                      cfg.sign_plate_size_m, cfg.sign_plate_size_m, heading))

    for (centerline, width), z in zip(lanes, lanes_z):
        for side in (1.0, -1.0):
            points, headings, arc, widths_at, z_at = _resample(centerline, 1.0, 0.0, width, z)
            if len(points) < 2:
                continue
            s = rng.uniform(0.0, cfg.building_gap_max_m)
            while s < arc[-1]:
                length = rng.uniform(cfg.building_length_min_m, cfg.building_length_max_m)
                depth = rng.uniform(cfg.building_depth_min_m, cfg.building_depth_max_m)
                height = rng.uniform(cfg.building_height_min_m, cfg.building_height_max_m)
                setback = rng.uniform(cfg.building_setback_min_m, cfg.building_setback_max_m)
                gap = rng.uniform(cfg.building_gap_min_m, cfg.building_gap_max_m)
                build = rng.random() < cfg.building_probability
                mid = min(int(s + length / 2), len(points) - 1)
                if build:
                    heading = float(headings[mid])
                    normal = np.array([-math.sin(heading), math.cos(heading)]) * side
                    center = points[mid] + normal * (widths_at[mid] / 2 + setback + depth / 2)
                    samples = _rect_samples(center, length, depth, heading, min(1.0, spacing * 2))
                    if raster.free(samples, cfg.building_setback_min_m):
                        add(center[0], center[1], float(z_at[mid]), length, depth, height, heading,
                            _rect_samples(center, length + 2 * cfg.building_gap_min_m,
                                          depth + 2 * cfg.building_gap_min_m, heading, spacing))
                s += length + gap

    # traffic-light posts: at the signal, or the nearest spot off the roadway within the search radius
    if len(traffic_lights_xy):
        tree = cKDTree(all_points)
        size = max(cfg.light_post_width_m, cfg.light_housing_size_m)
        rings = [(0.0, 0.0)] + [(r * math.cos(a), r * math.sin(a))
                                for r in np.arange(0.5, cfg.light_search_radius_m + 1e-9, 0.5)
                                for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
        for tx, ty in np.asarray(traffic_lights_xy, dtype=np.float64).reshape(-1, 2):
            base = float(all_z[tree.query([tx, ty])[1]])
            for dx, dy in rings:
                fits, samples = post_fits(tx + dx, ty + dy, size, size, 0.0)
                if fits:
                    x, y = tx + dx, ty + dy
                    post = cfg.light_post_width_m
                    add(x, y, base, post, post, cfg.light_post_height_m, 0.0, samples)
                    boxes.append((x, y, base + cfg.light_post_height_m + cfg.light_housing_height_m / 2,
                                  cfg.light_housing_size_m, cfg.light_housing_size_m, cfg.light_housing_height_m, 0.0))
                    break

    return _static_boxes(np.array(boxes).reshape(-1, 7))


def _static_boxes(arr: np.ndarray) -> Boxes:
    """Boxes (label STATIC, map frame) from rows (x, y, z_centre, length, width, height, yaw)."""
    return Boxes(arr[:, 0:3], arr[:, 3:6], arr[:, 6], np.full(len(arr), int(ObjectClass.STATIC)), frame_id="map")


def place_scenery(hdmap, seed: int = 0, config: SceneryConfig | None = None, use_cache: bool = True) -> Boxes:
    """Scenery for an ``hdmap.HDMap`` along its lanes outside junctions, off its drivable area, and
    at its traffic lights. Results are cached under ``adstack.paths.cache_dir()/scenery``, keyed by
    the map file's content, the seed, the config and ``SCENERY_VERSION`` (a large Town takes seconds)."""
    cfg = config or SceneryConfig()
    cache_path = _cache_path(hdmap, seed, cfg) if use_cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            with np.load(cache_path) as data:
                arr = data["boxes"]
            return _static_boxes(arr)
        except (OSError, KeyError, ValueError):
            pass  # unreadable cache entry: place again and overwrite it
    boxes = _place_on_map(hdmap, seed, cfg)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, boxes=np.c_[boxes.center, boxes.size, boxes.yaw])
        os.replace(tmp, cache_path)  # atomic: concurrent workers never read half a file
    return boxes


def _cache_path(hdmap, seed: int, cfg: SceneryConfig) -> Path | None:
    xodr = getattr(hdmap, "xodr_path", None)
    if xodr is None or not Path(xodr).is_file():
        return None
    digest = hashlib.sha256(Path(xodr).read_bytes())
    digest.update(json.dumps([SCENERY_VERSION, int(seed), dataclasses.asdict(cfg)], sort_keys=True).encode())
    return cache_dir() / "scenery" / f"{Path(xodr).stem}-{digest.hexdigest()[:20]}.npz"


def _place_on_map(hdmap, seed: int, cfg: SceneryConfig) -> Boxes:
    lanes = [lane for _, lane in sorted(hdmap.lanes.items(), key=lambda kv: str(kv[0]))]
    lights = [signal.position for signal in getattr(hdmap, "traffic_lights", [])]
    return place_scenery_from_lanes([l.centerline for l in lanes], [l.width for l in lanes], hdmap.is_drivable,
                                    np.array(lights).reshape(-1, 2), seed=seed, config=cfg,
                                    centerline_z=[getattr(l, "z", np.zeros(len(l.centerline))) for l in lanes],
                                    furnished=[not l.is_junction for l in lanes])


class SceneryIndex:
    """Uniform grid over scenery boxes: ``query(x, y)`` returns the boxes within a radius, fast."""

    def __init__(self, boxes: Boxes, cell_m: float = 50.0, radius_m: float = 110.0):
        self.boxes = boxes
        self.cell_m = float(cell_m)
        self.radius_m = float(radius_m)
        self._reach = np.hypot(boxes.size[:, 0], boxes.size[:, 1]) / 2  # footprint circumradius
        self._cells: dict[tuple[int, int], np.ndarray] = {}
        self._by_cell: dict[tuple[int, int], np.ndarray] = {}  # query candidates per cell of the query point
        self._last = None  # (indices, Boxes) of the last query
        if len(boxes):
            lo = np.floor((boxes.center[:, :2] - self._reach[:, None]) / self.cell_m).astype(np.int64)
            hi = np.floor((boxes.center[:, :2] + self._reach[:, None]) / self.cell_m).astype(np.int64)
            buckets: dict[tuple[int, int], list[int]] = {}
            for i in range(len(boxes)):
                for ix in range(lo[i, 0], hi[i, 0] + 1):
                    for iy in range(lo[i, 1], hi[i, 1] + 1):
                        buckets.setdefault((ix, iy), []).append(i)
            self._cells = {key: np.array(v, dtype=np.int64) for key, v in buckets.items()}

    @classmethod
    def from_map(cls, hdmap, seed: int = 0, config: SceneryConfig | None = None,
                 use_cache: bool = True) -> "SceneryIndex":
        cfg = config or SceneryConfig()
        boxes = place_scenery(hdmap, seed=seed, config=cfg, use_cache=use_cache)
        return cls(boxes, cfg.index_cell_m, cfg.query_radius_m)

    def __len__(self) -> int:
        return len(self.boxes)

    def query_indices(self, x: float, y: float, radius_m: float | None = None) -> np.ndarray:
        """Sorted indices of the boxes whose footprint circle comes within the radius of (x, y)."""
        radius = self.radius_m if radius_m is None else float(radius_m)
        if radius == self.radius_m:  # the lidar's query, every tick: candidates cached per grid cell
            candidates = self._cell_candidates(int(math.floor(x / self.cell_m)), int(math.floor(y / self.cell_m)))
        else:
            candidates = self._candidates(x - radius, x + radius, y - radius, y + radius)
        if not len(candidates):
            return candidates
        near = np.hypot(self.boxes.center[candidates, 0] - x, self.boxes.center[candidates, 1] - y) \
            - self._reach[candidates] <= radius
        return candidates[near]

    def _candidates(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        """Sorted indices of the boxes bucketed in the cells that the rectangle touches."""
        ix0, iy0 = int(math.floor(x0 / self.cell_m)), int(math.floor(y0 / self.cell_m))
        ix1, iy1 = int(math.floor(x1 / self.cell_m)), int(math.floor(y1 / self.cell_m))
        found = [self._cells[(ix, iy)] for ix in range(ix0, ix1 + 1) for iy in range(iy0, iy1 + 1)
                 if (ix, iy) in self._cells]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    def _cell_candidates(self, ix: int, iy: int) -> np.ndarray:
        """Candidates for any query point in cell (ix, iy): the boxes of every cell that a query
        square around such a point can touch. A box passing the distance test lies in a cell of the
        query's own square, so filtering these gives exactly what the uncached query gives."""
        found = self._by_cell.get((ix, iy))
        if found is None:
            c, r = self.cell_m, self.radius_m + 1.0  # 1 m more: rounding at the cell borders
            found = self._by_cell[(ix, iy)] = self._candidates(ix * c - r, (ix + 1) * c + r, iy * c - r,
                                                               (iy + 1) * c + r)
        return found

    def query(self, x: float, y: float, radius_m: float | None = None) -> Boxes:
        """Boxes whose footprint may come within ``radius_m`` (default: the lidar range) of (x, y).

        While the set of boxes stays the same (consecutive ticks of a drive) the same ``Boxes`` object
        is returned: treat it as read-only."""
        idx = self.query_indices(x, y, radius_m)
        last = self._last
        if last is not None and np.array_equal(last[0], idx):
            return last[1]
        found = self.boxes.select(idx)
        self._last = (idx, found)
        return found
