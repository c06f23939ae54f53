"""Voxelize a lidar cloud on the CPU with numba: hard (fixed buffers) and dynamic (per point) modes.

Semantics follow the hard and dynamic voxelization of second.pytorch / mmcv, which PointPillars and
CenterPoint configurations assume:

- a point belongs to the voxel ``floor((p - range_min) / voxel_size)`` (float32 arithmetic) when
  ``0 <= (p - range_min) / voxel_size < grid`` on every axis; other points (and NaN) are dropped;
- hard mode: voxels are numbered in the order their first point appears in the cloud; a voxel keeps
  its first ``max_points_per_voxel`` points; voxels after the first ``max_voxels`` are dropped.
  Outputs: ``voxels (M, P, C)`` zero padded, ``coords (M, 3)`` int32 as (z, y, x), ``num_points (M,)``;
- dynamic mode: no limits; each point gets its voxel's coords (or -1) and the index of its voxel,
  voxels numbered in order of first appearance as in hard mode.

``perception.voxelizer_torch`` gives identical outputs on a GPU; tests check the two agree.
Voxels are looked up in an open-addressing hash table sized from the number of voxels, not the grid,
so a fine 3D grid (CenterPoint's 0.075 m voxels) costs no more memory than a coarse pillar grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from adstack.errors import DataError

MODES = ("hard", "dynamic")


@dataclass
class VoxelConfig:
    """Grid and limits. ``point_cloud_range`` is (x_min, y_min, z_min, x_max, y_max, z_max) in metres."""

    point_cloud_range: tuple = (-51.2, -51.2, -3.0, 51.2, 51.2, 3.0)
    voxel_size: tuple = (0.32, 0.32, 6.0)  # a pillar: one voxel over the whole z range
    max_points_per_voxel: int = 20
    max_voxels: int = 16000
    mode: str = "hard"

    def __post_init__(self):
        self.point_cloud_range = tuple(float(v) for v in self.point_cloud_range)
        self.voxel_size = tuple(float(v) for v in self.voxel_size)
        if len(self.point_cloud_range) != 6 or len(self.voxel_size) != 3:
            raise DataError("point_cloud_range needs 6 numbers and voxel_size 3", "voxel config")
        if any(v <= 0 for v in self.voxel_size):
            raise DataError(f"voxel_size must be positive, got {self.voxel_size}", "voxel config")
        if any(self.point_cloud_range[i + 3] <= self.point_cloud_range[i] for i in range(3)):
            raise DataError(f"point_cloud_range max must exceed min, got {self.point_cloud_range}", "voxel config")
        if self.max_points_per_voxel < 1 or self.max_voxels < 1:
            raise DataError("max_points_per_voxel and max_voxels must be >= 1", "voxel config")
        if self.mode not in MODES:
            raise DataError(f"mode must be one of {MODES}, got {self.mode!r}", "voxel config")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Cells along (x, y, z), rounded as the reference implementations do."""
        return tuple(int(round((self.point_cloud_range[i + 3] - self.point_cloud_range[i]) / self.voxel_size[i]))
                     for i in range(3))

    def float32_range_min(self) -> np.ndarray:
        return np.asarray(self.point_cloud_range[:3], dtype=np.float32)

    def float32_voxel_size(self) -> np.ndarray:
        return np.asarray(self.voxel_size, dtype=np.float32)


_HASH_MULTIPLIER = np.uint64(11400714819323198485)  # 2**64 / golden ratio: Fibonacci hashing


def _table_bits(n_keys: int) -> int:
    """Bits of a power-of-two table with load factor <= 0.5."""
    return max(4, int(math.ceil(math.log2(max(2 * n_keys, 16)))))


@numba.njit(cache=True, inline="always")
def _cell(points, i, range_min, voxel_size, gx, gy, gz):
    """(cx, cy, cz) of point i, or cx = -1 when outside the grid or not finite."""
    fx = (points[i, 0] - range_min[0]) / voxel_size[0]
    fy = (points[i, 1] - range_min[1]) / voxel_size[1]
    fz = (points[i, 2] - range_min[2]) / voxel_size[2]
    # The comparisons are False for NaN, so non-finite points drop out here.
    if not (fx >= 0 and fx < gx and fy >= 0 and fy < gy and fz >= 0 and fz < gz):
        return -1, -1, -1
    return int(fx), int(fy), int(fz)


@numba.njit(cache=True, inline="always")
def _find_or_insert(keys, values, key, shift, new_value, may_insert):
    """Slot value for ``key``; inserts ``new_value`` if absent and allowed, else returns -1."""
    mask = keys.shape[0] - 1
    slot = np.int64((np.uint64(key) * _HASH_MULTIPLIER) >> np.uint64(shift))
    while True:
        stored = keys[slot]
        if stored == key:
            return values[slot]
        if stored == -1:
            if not may_insert:
                return -1
            keys[slot] = key
            values[slot] = new_value
            return new_value
        slot = (slot + 1) & mask


@numba.njit(cache=True)
def _voxelize_hard_kernel(points, range_min, voxel_size, gx, gy, gz, max_points, max_voxels,
                          keys, values, shift, voxels, coords, num_points):
    keys[:] = -1
    n_voxels = 0
    n_features = points.shape[1]
    for i in range(points.shape[0]):
        cx, cy, cz = _cell(points, i, range_min, voxel_size, gx, gy, gz)
        if cx < 0:
            continue
        key = (np.int64(cz) * gy + cy) * gx + cx
        voxel = _find_or_insert(keys, values, key, shift, n_voxels, n_voxels < max_voxels)
        if voxel < 0:
            continue
        if voxel == n_voxels:  # new voxel: clear its padding and record where it is
            voxels[voxel, :, :] = 0
            num_points[voxel] = 0
            coords[voxel, 0] = cz
            coords[voxel, 1] = cy
            coords[voxel, 2] = cx
            n_voxels += 1
        k = num_points[voxel]
        if k < max_points:
            for f in range(n_features):
                voxels[voxel, k, f] = points[i, f]
            num_points[voxel] = k + 1
    return n_voxels


@numba.njit(cache=True)
def _voxelize_dynamic_kernel(points, range_min, voxel_size, gx, gy, gz, keys, values, shift,
                             point_coords, point_voxel, voxel_coords, num_points):
    keys[:] = -1
    n_voxels = 0
    for i in range(points.shape[0]):
        cx, cy, cz = _cell(points, i, range_min, voxel_size, gx, gy, gz)
        if cx < 0:
            point_coords[i, 0] = -1
            point_coords[i, 1] = -1
            point_coords[i, 2] = -1
            point_voxel[i] = -1
            continue
        point_coords[i, 0] = cz
        point_coords[i, 1] = cy
        point_coords[i, 2] = cx
        key = (np.int64(cz) * gy + cy) * gx + cx
        voxel = _find_or_insert(keys, values, key, shift, n_voxels, True)
        if voxel == n_voxels:
            voxel_coords[voxel, 0] = cz
            voxel_coords[voxel, 1] = cy
            voxel_coords[voxel, 2] = cx
            num_points[voxel] = 0
            n_voxels += 1
        num_points[voxel] += 1
        point_voxel[i] = voxel
    return n_voxels


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise DataError(f"points must be an (N, >=3) array, got shape {points.shape}", "voxelizer")
    return np.ascontiguousarray(points, dtype=np.float32)


class Voxelizer:
    """Reusable voxelizer: buffers are allocated once and reused, so a call allocates only views.

    The arrays returned by ``hard`` are views into those buffers, valid until the next call; copy
    them to keep them.
    """

    def __init__(self, config: VoxelConfig):
        self.config = config
        self._range_min = config.float32_range_min()
        self._voxel_size = config.float32_voxel_size()
        self._grid = config.grid_size
        self._buffers: dict = {}

    def _hard_buffers(self, n_features: int):
        cfg = self.config
        if self._buffers.get("features") != n_features:
            bits = _table_bits(cfg.max_voxels)
            self._buffers = {
                "features": n_features, "bits": bits,
                "keys": np.empty(1 << bits, np.int64), "values": np.empty(1 << bits, np.int64),
                "voxels": np.empty((cfg.max_voxels, cfg.max_points_per_voxel, n_features), np.float32),
                "coords": np.empty((cfg.max_voxels, 3), np.int32),
                "num_points": np.empty(cfg.max_voxels, np.int32),
            }
        return self._buffers

    def hard(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(voxels (M, P, C) float32, coords (M, 3) int32 (z, y, x), num_points (M,) int32)."""
        points = _check_points(points)
        cfg, b = self.config, self._hard_buffers(points.shape[1])
        gx, gy, gz = self._grid
        n = _voxelize_hard_kernel(points, self._range_min, self._voxel_size, gx, gy, gz,
                                  cfg.max_points_per_voxel, cfg.max_voxels, b["keys"], b["values"],
                                  64 - b["bits"], b["voxels"], b["coords"], b["num_points"])
        return b["voxels"][:n], b["coords"][:n], b["num_points"][:n]

    def dynamic(self, points: np.ndarray) -> dict:
        """Per point: ``point_coords (N, 3)`` (z, y, x; -1 outside) and ``point_voxel (N,)`` (-1 outside);
        per voxel: ``voxel_coords (M, 3)`` and ``num_points (M,)``, in order of first appearance."""
        points = _check_points(points)
        n_points = points.shape[0]
        bits = _table_bits(n_points)
        keys, values = np.empty(1 << bits, np.int64), np.empty(1 << bits, np.int64)
        point_coords = np.empty((n_points, 3), np.int32)
        point_voxel = np.empty(n_points, np.int32)
        voxel_coords = np.empty((n_points, 3), np.int32)
        num_points = np.empty(n_points, np.int32)
        gx, gy, gz = self._grid
        n = _voxelize_dynamic_kernel(points, self._range_min, self._voxel_size, gx, gy, gz, keys, values,
                                     64 - bits, point_coords, point_voxel, voxel_coords, num_points)
        return {"point_coords": point_coords, "point_voxel": point_voxel,
                "voxel_coords": voxel_coords[:n], "num_points": num_points[:n]}

    def __call__(self, points: np.ndarray):
        return self.hard(points) if self.config.mode == "hard" else self.dynamic(points)


def voxelize_hard(points: np.ndarray, config: VoxelConfig):
    """One-off hard voxelization; returns copies (see ``Voxelizer.hard``)."""
    return tuple(a.copy() for a in Voxelizer(config).hard(points))


def voxelize_dynamic(points: np.ndarray, config: VoxelConfig) -> dict:
    return Voxelizer(config).dynamic(points)
