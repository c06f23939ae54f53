"""Voxelizer: hard and dynamic modes against a plain reference, limits, edges, and numba == torch."""

from __future__ import annotations

import os

# Passive OpenMP waiting, set before torch loads: with spinning threads a busy shared machine made
# the training test 10x slower (see perception/detector/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from adstack.errors import DataError
from perception.voxelizer import VoxelConfig, Voxelizer, voxelize_dynamic, voxelize_hard
from perception.voxelizer_torch import voxelize_dynamic_torch, voxelize_hard_torch

PILLARS = VoxelConfig(point_cloud_range=(-10, -8, -3, 10, 8, 1), voxel_size=(0.5, 0.5, 4.0), max_points_per_voxel=5, max_voxels=300)
VOXELS_3D = VoxelConfig(point_cloud_range=(-6, -6, -2, 6, 6, 2), voxel_size=(0.3, 0.3, 0.25), max_points_per_voxel=3, max_voxels=2000)


def random_cloud(n, seed=0, spread=11.0, columns=4):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-spread, spread, (n, columns)).astype(np.float32)
    points[:, 2] = rng.uniform(-3.5, 2.5, n)
    # Clumps, so that voxels overflow max_points_per_voxel.
    points[: n // 4, :3] = (rng.normal(0, 0.2, (n // 4, 3)) + [1.0, 1.0, -1.0]).astype(np.float32)
    return points[rng.permutation(n)]


def reference_hard(points, cfg):
    """Straightforward Python statement of the hard-voxelization rules (test oracle)."""
    lo, size = cfg.float32_range_min(), cfg.float32_voxel_size()
    grid = cfg.grid_size
    order, members, coords = [], {}, {}
    for p in points:
        f = (p[:3] - lo) / size  # float32 arithmetic, as the kernels do
        if not all(0 <= f[i] < grid[i] for i in range(3)):
            continue
        cell = tuple(int(v) for v in f)
        if cell not in members:
            if len(order) == cfg.max_voxels:
                continue
            order.append(cell)
            members[cell] = []
        if len(members[cell]) < cfg.max_points_per_voxel:
            members[cell].append(p)
    voxels = np.zeros((len(order), cfg.max_points_per_voxel, points.shape[1]), np.float32)
    for v, cell in enumerate(order):
        voxels[v, :len(members[cell])] = members[cell]
    coords = np.array([[c[2], c[1], c[0]] for c in order], np.int32).reshape(-1, 3)
    return voxels, coords, np.array([len(members[c]) for c in order], np.int32)


@pytest.mark.parametrize("cfg", [PILLARS, VOXELS_3D], ids=["pillars", "voxels3d"])
def test_hard_matches_the_reference_rules(cfg):
    points = random_cloud(3000, seed=1)
    got = voxelize_hard(points, cfg)
    want = reference_hard(points, cfg)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got[2].max() == cfg.max_points_per_voxel  # the clump overflowed


def test_hard_keeps_the_first_max_voxels():
    cfg = VoxelConfig(point_cloud_range=PILLARS.point_cloud_range, voxel_size=PILLARS.voxel_size, max_points_per_voxel=5, max_voxels=20)
    points = random_cloud(2000, seed=2)
    voxels, coords, counts = voxelize_hard(points, cfg)
    assert len(voxels) == 20
    full = voxelize_hard(points, PILLARS)
    np.testing.assert_array_equal(coords, full[1][:20])
    np.testing.assert_array_equal(voxels, full[0][:20])


def test_range_edges_and_non_finite_points():
    cfg = PILLARS
    points = np.array([[-10, -8, -3, 1],            # the minimum corner: inside
                       [10, 0, 0, 2],               # x == x_max: outside (half-open range)
                       [9.999, 7.999, 0.999, 3],    # just inside the maximum corner
                       [np.nan, 0, 0, 4], [0, np.inf, 0, 5], [0, 0, -3.0001, 6]], np.float32)
    voxels, coords, counts = voxelize_hard(points, cfg)
    assert coords.tolist() == [[0, 0, 0], [0, 31, 39]]
    assert voxels[:, 0, 3].tolist() == [1, 3]
    dynamic = voxelize_dynamic(points, cfg)
    assert dynamic["point_voxel"].tolist() == [0, -1, 1, -1, -1, -1]
    assert (dynamic["point_coords"][[1, 3, 4, 5]] == -1).all()


def test_dynamic_assigns_every_in_range_point():
    points = random_cloud(5000, seed=3)
    d = voxelize_dynamic(points, VOXELS_3D)
    inside = d["point_voxel"] >= 0
    np.testing.assert_array_equal(d["voxel_coords"][d["point_voxel"][inside]], d["point_coords"][inside])
    assert d["num_points"].sum() == inside.sum()
    assert d["num_points"].max() > VOXELS_3D.max_points_per_voxel  # no per-voxel cap in dynamic mode
    hard = voxelize_hard(points, VoxelConfig(**{**VOXELS_3D.__dict__, "max_voxels": 10**6}))
    np.testing.assert_array_equal(hard[1], d["voxel_coords"])  # same voxels, same order


def test_reused_buffers_give_fresh_results():
    voxelizer = Voxelizer(PILLARS)
    a, b = random_cloud(1500, seed=4), random_cloud(800, seed=5)
    first = [x.copy() for x in voxelizer.hard(a)]
    voxelizer.hard(b)
    again = voxelizer.hard(a)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("cfg", [PILLARS, VOXELS_3D], ids=["pillars", "voxels3d"])
@pytest.mark.parametrize("columns", [4, 5])
def test_torch_gives_identical_voxels(cfg, columns):
    points = random_cloud(6000, seed=6, columns=columns)
    points[:10, :3] = [-10, -8, -3]  # exact edges too
    points[10:20, 0] = 10.0
    numba_hard = voxelize_hard(points, cfg)
    torch_hard = voxelize_hard_torch(torch.from_numpy(points), cfg)
    for a, b in zip(numba_hard, torch_hard):
        assert b.dtype in (torch.float32, torch.int32)
        np.testing.assert_array_equal(a, b.numpy())
    numba_dyn = voxelize_dynamic(points, cfg)
    torch_dyn = voxelize_dynamic_torch(torch.from_numpy(points), cfg)
    for key in numba_dyn:
        np.testing.assert_array_equal(numba_dyn[key], torch_dyn[key].numpy(), err_msg=key)


def test_torch_and_numba_agree_on_a_real_scan():
    from adstack.paths import shared_data_dir

    path = shared_data_dir() / "lidar/kitti/training/velodyne/000000.bin"
    if not path.is_file():
        pytest.skip("shared KITTI scan not present")
    points = np.fromfile(path, np.float32).reshape(-1, 4)
    cfg = VoxelConfig(point_cloud_range=(0, -39.68, -3, 69.12, 39.68, 1), voxel_size=(0.16, 0.16, 4),
                      max_points_per_voxel=32, max_voxels=16000)  # PointPillars KITTI
    for a, b in zip(voxelize_hard(points, cfg), voxelize_hard_torch(torch.from_numpy(points), cfg)):
        np.testing.assert_array_equal(a, b.numpy())


def test_empty_cloud_and_bad_input():
    empty = np.zeros((0, 4), np.float32)
    assert [len(x) for x in voxelize_hard(empty, PILLARS)] == [0, 0, 0]
    assert [len(x) for x in voxelize_hard_torch(torch.from_numpy(empty), PILLARS)] == [0, 0, 0]
    assert len(voxelize_dynamic(empty, PILLARS)["voxel_coords"]) == 0
    with pytest.raises(DataError, match=r"\(N, >=3\)"):
        voxelize_hard(np.zeros(12, np.float32), PILLARS)
    with pytest.raises(DataError, match="voxel_size must be positive"):
        VoxelConfig(voxel_size=(0.2, 0, 1))
    with pytest.raises(DataError, match="mode must be one of"):
        VoxelConfig(mode="soft")
