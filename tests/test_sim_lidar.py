"""Simulated lidar: geometry of the returns, labels, noise, dropout, mounting, spinning accumulation."""

import math
import time

import numpy as np
import pytest

from adstack.errors import DataError
from adstack.types import Boxes, EgoState, ObjectClass
from sim.lidar import (DEFAULT_PARAMS, MAT_BUILDING, MAT_METAL, MAT_PAINT, MAT_RETRO, Lidar, LidarConfig,
                       SpinningLidar, box_primitives, rotation_rpy, scenery_material, sensor_pose_from_ego)

SIGMA = 0.02
TOL = 5 * SIGMA  # a range error moves a point by at most the error along the beam


def exact(**kw) -> LidarConfig:
    """No noise, no dropout: geometry checks."""
    return LidarConfig(range_noise_sigma_m=0.0, dropout_probability=0.0, **kw)


def to_world(points, pose):
    return points[:, :3].astype(np.float64) @ rotation_rpy(*pose[3:]).T + np.asarray(pose[:3])


def box_surface_distance(xyz, center, size, yaw):
    """Distance of world points to the surface of an upright box (0 on the surface)."""
    c, s = math.cos(yaw), math.sin(yaw)
    d = xyz - np.asarray(center)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    q = np.abs(local) - np.asarray(size) / 2
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = np.minimum(q.max(axis=1), 0.0)
    return np.abs(outside + inside)


def static_boxes(centers, sizes, yaws=None):
    n = len(centers)
    return Boxes(centers, sizes, np.zeros(n) if yaws is None else yaws, np.full(n, int(ObjectClass.STATIC)))


@pytest.fixture(scope="module")
def lidar():
    return Lidar(LidarConfig(), seed=0)


def test_config_file_matches_defaults_and_rejects_bad_values(tmp_path):
    assert LidarConfig.load(DEFAULT_PARAMS) == LidarConfig()
    bad = tmp_path / "bad.param.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    channels: 0\n")
    with pytest.raises(DataError, match="channels"):
        LidarConfig.load(bad)
    bad.write_text("/**:\n  ros__parameters:\n    chanels: 32\n")
    with pytest.raises(DataError, match="unknown parameter"):
        LidarConfig.load(bad)


def test_wall_at_known_distance_returns_points_on_its_surface(lidar):
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    center, size = (12.0, 0.0, 2.0), (4.0, 6.0, 4.0)  # front face at x = 10
    cloud = lidar.scan(pose, None, static_boxes([center], [size]), 0.0)
    wall = cloud.labels == ObjectClass.STATIC
    assert wall.sum() > 2000  # ~95 columns x ~35 channels
    xyz = to_world(cloud.points[wall], pose)
    assert np.all(np.abs(xyz[:, 0] - 10.0) < TOL)
    assert np.all(np.abs(xyz[:, 1]) <= 3.0 + TOL)
    assert np.all((xyz[:, 2] > -TOL) & (xyz[:, 2] < 4.0 + TOL))
    # range noise really is there, with about the configured sigma
    assert 0.5 * SIGMA < np.std(xyz[:, 0]) < 2 * SIGMA
    assert np.all(cloud.actor_ids[wall] == -1)


def test_ground_points_lie_on_the_plane(lidar):
    pose = (30.0, -7.0, 1.8, 0.0, 0.0, 0.7)
    cloud = lidar.scan(pose, None, None, 0.0)
    assert np.all(cloud.labels == 0) and np.all(cloud.actor_ids == -1)
    xyz = to_world(cloud.points, pose)
    assert np.all(np.abs(xyz[:, 2]) < TOL)
    # every beam aimed below the horizon hits the ground within range: (channels below 0 deg) x columns
    below = np.sum(lidar.elevation_rad < -math.atan2(1.8, 100.0))
    assert abs(len(cloud) - below * 1024) < 0.03 * below * 1024  # ~1 % dropout


def test_tilted_ground_plane():
    lidar = Lidar(exact(), seed=0)
    pose = (5.0, 2.0, 1.8, 0.0, 0.0, 0.0)
    cloud = lidar.scan(pose, None, None, ground_z=0.3, ground_slope=(0.05, -0.02))
    xyz = to_world(cloud.points, pose)
    expected_z = 0.3 + 0.05 * (xyz[:, 0] - 5.0) - 0.02 * (xyz[:, 1] - 2.0)
    assert len(cloud) > 10000
    assert np.allclose(xyz[:, 2], expected_z, atol=1e-3)


def test_nothing_beyond_range_and_nothing_inside_minimum_range():
    cfg = LidarConfig(range_max_m=30.0, range_min_m=1.0, range_noise_sigma_m=0.05)
    lidar = Lidar(cfg, seed=1)
    # a wall beyond range, a wall just inside it, and a post 0.6..0.8 m in front of the sensor
    scenery = static_boxes([(40.0, 0.0, 3.0), (-29.0, 0.0, 3.0), (0.7, 0.0, 1.8)],
                           [(2.0, 20.0, 6.0), (1.0, 20.0, 6.0), (0.2, 0.4, 3.6)])
    cloud = lidar.scan((0.0, 0.0, 1.8, 0.0, 0.0, 0.0), None, scenery, 0.0)
    rng = np.linalg.norm(cloud.points[:, :3], axis=1)
    assert rng.max() <= 30.0 and rng.max() > 28.0
    assert rng.min() >= 1.0
    # the near post blocks its beams although it returns nothing: no point straight ahead
    ahead = (cloud.points[:, 0] > 0) & (np.abs(cloud.points[:, 1]) < 0.1 * cloud.points[:, 0])
    assert not np.any(ahead & (cloud.points[:, 2] > -1.7))
    world = to_world(cloud.points, (0.0, 0.0, 1.8, 0.0, 0.0, 0.0))
    assert not np.any(world[:, 0] > 39.0)


def test_labels_and_actor_ids_belong_to_the_box_hit():
    lidar = Lidar(exact(), seed=0)
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    actors = Boxes(center=[(10.0, 0.0, 0.8), (0.0, 8.0, 0.875), (-9.0, -3.0, 0.85)],
                   size=[(4.6, 1.9, 1.6), (0.5, 0.6, 1.75), (1.8, 0.7, 1.7)],
                   yaw=[0.2, 0.0, 1.0], label=[1, 2, 3], ids=[11, 22, 33])
    scenery = static_boxes([(0.0, -30.0, 5.0)], [(20.0, 10.0, 10.0)])
    cloud = lidar.scan(pose, actors, scenery, 0.0)
    xyz = to_world(cloud.points, pose)
    for i, (actor_id, label) in enumerate([(11, 1), (22, 2), (33, 3)]):
        mine = cloud.actor_ids == actor_id
        assert mine.sum() > 20, actor_id
        assert np.all(cloud.labels[mine] == label)
        # every point lies inside the actor's ground-truth box (the shapes never leave it)
        c, s = math.cos(actors.yaw[i]), math.sin(actors.yaw[i])
        d = xyz[mine] - actors.center[i]
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
        assert np.all(np.abs(local) <= actors.size[i] / 2 + 1e-3)
    building = cloud.labels == ObjectClass.STATIC
    assert building.sum() > 100 and np.all(cloud.actor_ids[building] == -1)
    assert np.all(box_surface_distance(xyz[building], (0.0, -30.0, 5.0), (20.0, 10.0, 10.0), 0.0) < 1e-3)
    assert set(np.unique(cloud.actor_ids)) == {-1, 11, 22, 33}
    assert np.all(cloud.labels[cloud.actor_ids == -1] != ObjectClass.VEHICLE)


def test_vehicle_has_a_cabin_on_a_body():
    """Side view of a car: the upper part (cabin) is shorter than the body."""
    lidar = Lidar(exact(channels=128, vertical_fov_min_deg=-20.0, vertical_fov_max_deg=10.0, columns=4096), seed=0)
    actors = Boxes(center=[(0.0, 8.0, 0.75)], size=[(4.6, 1.9, 1.5)], yaw=[0.0], label=[1], ids=[1])
    cloud = lidar.scan((0.0, 0.0, 1.8, 0, 0, 0), actors, None, 0.0)
    xyz = to_world(cloud.points[cloud.actor_ids == 1], (0.0, 0.0, 1.8, 0, 0, 0))
    low, high = xyz[xyz[:, 2] < 0.6], xyz[xyz[:, 2] > 1.0]
    assert np.ptp(low[:, 0]) > 4.0
    assert 1.5 < np.ptp(high[:, 0]) < 3.0


def test_determinism_given_the_seed():
    actors = Boxes(center=[(10.0, 2.0, 0.8)], size=[(4.6, 1.9, 1.6)], yaw=[0.3], label=[1], ids=[5])
    pose = (1.0, 2.0, 1.8, 0.0, 0.0, 0.1)
    a = [Lidar(LidarConfig(), seed=5).scan(pose, actors, None, 0.0) for _ in range(2)]
    b = Lidar(LidarConfig(), seed=6).scan(pose, actors, None, 0.0)
    assert np.array_equal(a[0].points, a[1].points)
    assert np.array_equal(a[0].labels, a[1].labels) and np.array_equal(a[0].actor_ids, a[1].actor_ids)
    assert len(a[0]) != len(b) or not np.array_equal(a[0].points, b.points)


def test_dropout_removes_about_its_probability():
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    full = len(Lidar(exact(), seed=0).scan(pose, None, None, 0.0))
    dropped = len(Lidar(LidarConfig(range_noise_sigma_m=0.0, dropout_probability=0.3), seed=0).scan(pose, None, None, 0.0))
    assert abs(dropped / full - 0.7) < 0.01


def test_mounting_pose_transforms_correctly():
    cfg = exact(mount_x_m=1.2, mount_y_m=0.0, mount_z_m=1.8, mount_yaw_rad=math.pi / 2)
    lidar = Lidar(cfg, seed=0)
    ego = EgoState(x=100.0, y=50.0, yaw=math.pi / 2, z=2.0)  # facing world +y, on ground at z = 2
    pose = sensor_pose_from_ego(ego, cfg)
    assert np.allclose(pose[:3], (100.0, 51.2, 3.8)) and math.isclose(pose[5], math.pi, abs_tol=1e-9)
    # a box 15 m ahead of the ego: ahead of the ego is the sensor's -y (sensor turned left by 90 deg)
    actors = Boxes(center=[(100.0, 65.0, 2.8)], size=[(4.0, 1.0, 1.6)], yaw=[0.0], label=[1], ids=[9])
    cloud = lidar.scan(ego, actors, None)  # ground_z defaults to the ego's z
    ground = cloud.labels == 0
    assert np.allclose(cloud.points[ground, 2], -1.8, atol=1e-3)
    car = cloud.actor_ids == 9
    assert car.sum() > 50
    # near faces: body 0.5 m, cabin (90 % of the width) 0.45 m short of the box centre
    car_y = cloud.points[car, 1]
    assert np.all((car_y < -(15.0 - 1.2 - 0.5) + 1e-3) & (car_y > -(15.0 - 1.2 - 0.45) - 1e-3))
    assert np.all(np.abs(cloud.points[car, 0]) < 2.0 + 1e-3)


def test_pitched_mount_sees_a_tilted_ground():
    cfg = exact(mount_pitch_rad=0.1)  # nose down by 0.1 rad
    cloud = Lidar(cfg, seed=0).scan(EgoState(x=0.0, y=0.0, yaw=0.3), None, None)
    # in the sensor frame the ground plane is z = -1.8 / cos(0.1) + tan(0.1) * x ... use the rotation
    world = cloud.points[:, :3].astype(np.float64) @ rotation_rpy(0.0, 0.1, 0.0).T
    assert np.allclose(world[:, 2], -1.8, atol=1e-3)
    assert cloud.points[:, 2].max() > -1.0  # forward returns rise in the pitched frame


def _reference_ranges(lidar, pose, primitives, ground_z):
    """Brute force: every ray against the ground and every primitive, in numpy."""
    rot = rotation_rpy(*pose[3:])
    el, az = np.meshgrid(lidar.elevation_rad, lidar.azimuth_rad)  # (columns, channels)
    d_s = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    d = d_s @ rot.T
    o = np.asarray(pose[:3])
    best = np.full(d.shape[0], np.inf)
    down = d[:, 2] < 0
    best[down] = (ground_z - o[2]) / d[down, 2]
    for center, half, yaw in primitives:
        c, s = math.cos(yaw), math.sin(yaw)
        p = o - center
        lp = np.array([c * p[0] + s * p[1], -s * p[0] + c * p[1], p[2]])
        ld = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-half - lp) / ld, (half - lp) / ld
        near = np.nanmax(np.minimum(t1, t2), axis=1)
        far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (near <= far) & (near > 0)
        best = np.where(hit & (near < best), near, best)
    best[(best > lidar.config.range_max_m) | (best < lidar.config.range_min_m)] = np.nan
    return best


@pytest.mark.parametrize("rpy", [(0.0, 0.0, 0.0), (0.15, -0.2, 2.5)])
def test_azimuth_culling_matches_brute_force(rpy):
    """Culled casting returns exactly what testing every ray against every box returns, including
    boxes across the +-pi seam, a box over the sensor and a tilted sensor."""
    lidar = Lidar(exact(channels=16, columns=256), seed=0)
    rng = np.random.default_rng(3)
    n = 40
    centers = np.c_[rng.uniform(-25, 25, (n, 2)), rng.uniform(0.5, 3.0, n)]
    sizes = rng.uniform([0.3, 0.3, 0.5], [6.0, 3.0, 4.0], (n, 3))
    centers[0], sizes[0] = (-12.0, 0.0, 2.0), (2.0, 8.0, 4.0)   # straddles azimuth +-pi
    centers[1], sizes[1] = (1.0, 0.5, 5.5), (30.0, 24.0, 0.5)   # canopy over the sensor, off-centre
    keep = np.hypot(centers[:, 0], centers[:, 1]) > np.hypot(sizes[:, 0], sizes[:, 1]) / 2 + 0.5
    keep[1] = True
    scenery = static_boxes(centers[keep], sizes[keep], rng.uniform(-np.pi, np.pi, n)[keep])
    pose = (0.0, 0.0, 1.8, *rpy)
    cloud = lidar.scan(pose, None, scenery, 0.0)
    prims = box_primitives(scenery, as_scenery=True)
    reference = _reference_ranges(lidar, pose, list(zip(prims[0], prims[1], prims[2])), 0.0)
    got = np.linalg.norm(cloud.points[:, :3], axis=1)
    assert len(got) == np.isfinite(reference).sum()
    assert np.allclose(got, reference[np.isfinite(reference)], atol=1e-4)
    assert np.sum(cloud.labels == ObjectClass.STATIC) > 200


def test_intensity_by_material_and_distance():
    lidar = Lidar(exact(), seed=0)
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    # a retro-reflective sign plate (thin) and a building face, both facing the sensor at 10 m
    scenery = static_boxes([(10.05, 4.0, 1.8), (14.0, -6.0, 3.0)], [(0.05, 1.5, 1.5), (8.0, 6.0, 6.0)])
    cloud = lidar.scan(pose, None, scenery, 0.0)
    xyz = to_world(cloud.points, pose)
    sign = (cloud.labels == ObjectClass.STATIC) & (xyz[:, 1] > 0)
    building = (cloud.labels == ObjectClass.STATIC) & (xyz[:, 1] < 0)
    near_ground = (cloud.labels == 0) & (np.linalg.norm(xyz[:, :2], axis=1) < 10)
    i = cloud.points[:, 3]
    assert i[sign].mean() > 0.85 > i[building].mean() > i[near_ground].mean()
    assert 0.0 <= i.min() and i.max() <= 1.0
    far = lidar.scan(pose, None, static_boxes([(64.0, -36.0, 3.0)], [(8.0, 6.0, 6.0)]), 0.0)
    far_building = far.labels == ObjectClass.STATIC
    assert far_building.sum() > 10
    assert far.points[far_building, 3].mean() < i[building].mean()


def test_bad_pose_and_column_range_are_rejected(lidar):
    with pytest.raises(ValueError, match="sensor pose"):
        lidar.scan((0.0, 0.0, 1.8), None, None, 0.0)
    with pytest.raises(ValueError, match="columns"):
        lidar.scan_partial(10, 5, (0, 0, 1.8, 0, 0, 0))


def test_spinning_lidar_emits_a_full_frame_at_the_rate():
    lidar = Lidar(exact(), seed=0)
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    full = lidar.scan(pose, None, None, 0.0)
    spinning = SpinningLidar(lidar, tick_s=0.05)  # 10 Hz: half a revolution per tick
    frames = [spinning.tick(0.05 * k, pose, None, None, 0.0) for k in range(1, 9)]
    assert [f is not None for f in frames] == [False, True] * 4
    assert all(np.array_equal(f.points, full.points) for f in frames if f is not None)
    assert frames[1].stamp == pytest.approx(0.1)
    # a non-integer share per tick still yields whole frames: 0.03 s ticks at 10 Hz -> 307.2 columns
    spinning = SpinningLidar(lidar, tick_s=0.03)
    emitted = [k for k in range(1, 21) if spinning.tick(0.03 * k, pose, None, None, 0.0) is not None]
    assert emitted == [4, 7, 10, 14, 17, 20]


def test_spinning_lidar_casts_each_column_at_its_own_tick():
    lidar = Lidar(exact(), seed=0)
    pose = (0.0, 0.0, 1.8, 0.0, 0.0, 0.0)
    spinning = SpinningLidar(lidar, tick_s=0.05)
    # columns 0..511 (rear -> right -> front) are cast in the first tick, 512..1023 (left) in the second
    right = Boxes(center=[(0.0, -8.0, 0.8)], size=[(4.6, 1.9, 1.6)], yaw=[0.0], label=[1], ids=[1])
    left = Boxes(center=[(0.0, 8.0, 0.8)], size=[(4.6, 1.9, 1.6)], yaw=[0.0], label=[1], ids=[2])
    assert spinning.tick(0.05, pose, Boxes.concat([right, left]), None, 0.0) is None
    frame = spinning.tick(0.10, pose, None, None, 0.0)  # both actors gone in the second tick
    ids = set(np.unique(frame.actor_ids))
    assert 1 in ids and 2 not in ids


def test_actor_primitives_stay_inside_their_boxes():
    actors = Boxes(center=[(0.0, 0.0, 0.8)] * 4, size=[(4.6, 1.9, 1.6), (0.5, 0.6, 1.75), (1.8, 0.7, 1.7), (1.0, 1.0, 1.0)],
                   yaw=[0.5] * 4, label=[1, 2, 3, 0], ids=[1, 2, 3, 4])
    center, half, yaw, _, label, ids = box_primitives(actors, as_scenery=False)
    assert len(center) == 7  # two parts each for vehicle, pedestrian, cyclist; the unknown box as is
    assert np.array_equal(np.unique(ids, return_counts=True)[1], [2, 2, 2, 1])
    for k in range(len(center)):
        i = int(ids[k]) - 1
        corners = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)]) * half[k, :2]
        c, s = math.cos(yaw[k]), math.sin(yaw[k])
        world = corners @ np.array([[c, s], [-s, c]]) + center[k, :2]
        local = (world - actors.center[i, :2]) @ np.array([[c, -s], [s, c]])
        assert np.all(np.abs(local) <= actors.size[i, :2] / 2 + 1e-9)
        assert center[k, 2] - half[k, 2] >= actors.center[i, 2] - actors.size[i, 2] / 2 - 1e-9
        assert center[k, 2] + half[k, 2] <= actors.center[i, 2] + actors.size[i, 2] / 2 + 1e-9
        assert label[k] == actors.label[i]
    # boxes out of range are left out; scenery is one box each, label STATIC, id -1
    far = box_primitives(actors, as_scenery=False, origin=(500.0, 0.0, 0.0), range_max_m=100.0)
    assert len(far[0]) == 0
    scenery = box_primitives(actors, as_scenery=True)
    assert len(scenery[0]) == 4 and np.all(scenery[4] == ObjectClass.STATIC) and np.all(scenery[5] == -1)


def test_scenery_material_from_shape():
    sizes = [(0.05, 0.8, 0.8), (0.3, 0.3, 7.0), (0.4, 0.4, 1.0), (20.0, 10.0, 12.0)]
    assert scenery_material(sizes).tolist() == [MAT_RETRO, MAT_METAL, MAT_PAINT, MAT_BUILDING]


def test_bench_lidar_reports_numbers():
    from sim.bench_lidar import bench_lidar
    result = bench_lidar(n_actors=10, frames=2)
    assert result["lidar_ms_per_frame"] > 0 and result["points_per_frame"] > 10000


def test_motion_compensation_puts_the_sweep_in_the_last_sensor_frame():
    """A driving ego: raw, the first half's wall points sit 0.5 m off; compensated, all on the wall."""
    lidar = Lidar(exact(), seed=0)
    wall = static_boxes([(0.0, 20.0, 3.0)], [(200.0, 1.0, 6.0)])  # wall face at y = 19.5, to the left
    wall_behind = static_boxes([(-30.0, 0.0, 3.0)], [(1.0, 200.0, 6.0)])  # face at x = -29.5, behind
    scenery = Boxes.concat([wall, wall_behind])
    for compensate in (False, True):
        spinning = SpinningLidar(lidar, tick_s=0.05, motion_compensate=compensate)
        # the ego drives along +x at 10 m/s: 0.5 m per tick; columns 0..511 (rear, right) in tick 1
        spinning.tick(0.05, EgoState(x=0.0, y=0.0, yaw=0.0), None, scenery)
        frame = spinning.tick(0.10, EgoState(x=0.5, y=0.0, yaw=0.0), None, scenery)
        final = sensor_pose_from_ego(EgoState(x=0.5, y=0.0, yaw=0.0), lidar.config)
        xyz = to_world(frame.points, final)
        static = frame.labels == ObjectClass.STATIC
        behind = static & (xyz[:, 0] < -20) & (xyz[:, 1] < 0)  # rear right: azimuth in (-pi, -pi/2), tick 1
        left = static & (xyz[:, 1] > 15) & (xyz[:, 0] > -20)    # left: azimuth in (0, pi), tick 2
        assert behind.sum() > 100 and left.sum() > 100
        assert np.allclose(xyz[left, 1], 19.5, atol=1e-3)
        offset = 0.0 if compensate else 0.5  # raw: tick-1 points read as if cast from the final pose
        assert np.allclose(xyz[behind, 0], -29.5 + offset, atol=1e-3)


def test_explicit_channel_elevations(tmp_path):
    elevations = [-24.0, -10.0, -5.0, -2.0, -1.0, 0.5]
    path = tmp_path / "uneven.param.yaml"
    path.write_text("/**:\n  ros__parameters:\n    channels: 6\n    channel_elevations_deg: " + str(elevations) + "\n"
                    "    range_noise_sigma_m: 0.0\n    dropout_probability: 0.0\n")
    cfg = LidarConfig.load(path)
    cloud = Lidar(cfg, seed=0).scan((0.0, 0.0, 1.8, 0.0, 0.0, 0.0), None, None, 0.0)
    # every ground ring lies where its beam meets the plane: 1.8 / tan(-elevation) away horizontally
    ranges = np.unique(np.round(np.hypot(cloud.points[:, 0], cloud.points[:, 1]), 3))
    expected = 1.8 / np.tan(np.deg2rad(-np.array(elevations[:-1])))
    assert np.allclose(np.sort(ranges), np.sort(expected[expected < 100.0]), atol=2e-3)
    with pytest.raises(DataError, match="one value per channel"):
        LidarConfig(channels=4, channel_elevations_deg=(-2.0, -1.0))
    with pytest.raises(DataError, match="ascending"):
        LidarConfig(channels=2, channel_elevations_deg=(1.0, -1.0))


def _moving_scene(k: int):
    """Actors and an ego that move every tick, so a cast that read another tick's state would differ."""
    from sim.bench_lidar import random_scene
    actors, scenery = random_scene(40, 30, seed=5)
    shift = np.array([0.7 * k, -0.3 * k, 0.0])
    moved = Boxes(actors.center + shift, actors.size, actors.yaw + 0.05 * k, actors.label, ids=actors.ids)
    ego = EgoState(x=0.4 * k, y=0.1 * k, yaw=0.03 * k, z=0.0)
    return ego, moved, scenery


@pytest.mark.parametrize("compensate", [False, True])
def test_background_casts_equal_a_serial_sweep_bit_for_bit(compensate):
    """With cast_threads = 2 a tick's share is cast by a worker while the caller goes on (and even
    overwrites its actor arrays); the frames must equal, bit for bit, one thread's, and the raw
    sweep must equal the parts cast one by one with ``scan_partial`` from that tick's state."""
    frames = {}
    for threads, next_tick in ((1, False), (2, False), (2, True)):
        lidar = Lidar(LidarConfig(cast_threads=threads), seed=7)
        spinning = SpinningLidar(lidar, tick_s=0.03, motion_compensate=compensate,  # 307.2 columns a tick
                                 deliver_next_tick=next_tick)
        out = []
        for k in range(1, 16):
            ego, actors, scenery = _moving_scene(k)
            out.append(spinning.tick(0.03 * k, ego, actors, scenery))
            actors.center[:] = 1e3  # the caller reuses its arrays: the pending cast must not see this
        spinning.close()
        lidar.close()
        frames[threads, next_tick] = out
    assert [f is None for f in frames[1, False]] == [f is None for f in frames[2, False]]
    # delivered one tick later, with the completing tick's stamp
    assert [f is None for f in frames[1, False][:-1]] == [f is None for f in frames[2, True][1:]]
    assert sum(f is not None for f in frames[2, False]) == 4
    for a, b, c in zip(frames[1, False], frames[2, False], frames[2, True][1:]):
        if a is not None:
            for other in (b, c):
                assert np.array_equal(a.points, other.points) and np.array_equal(a.labels, other.labels)
                assert np.array_equal(a.actor_ids, other.actor_ids) and a.stamp == other.stamp
    frames[2] = frames[2, False]
    if not compensate:  # the first revolution, rebuilt from the same calls to scan_partial
        lidar = Lidar(LidarConfig(cast_threads=1), seed=7)
        parts, done = [], 0
        for k in range(1, 5):
            ego, actors, scenery = _moving_scene(k)
            end = min(1024, int(math.floor(k * 307.2 + 1e-6)))
            parts.append(lidar.scan_partial(done, end, ego, actors, scenery))
            done = end
        assert np.array_equal(np.concatenate([p.points for p in parts]), frames[2][3].points)
        assert np.array_equal(np.concatenate([p.actor_ids for p in parts]), frames[2][3].actor_ids)


def test_chunks_cast_by_any_thread_equal_one_cast():
    """The chunk queue (3 threads: two background, the caller) fills the ray buffers exactly as one
    cast of all columns does, whoever casts which chunk."""
    from sim.lidar import ray_buffers
    from sim.bench_lidar import random_scene
    actors, scenery = random_scene(50, 40, seed=2)
    pose = (0.5, -0.2, 1.8, 0.02, -0.03, 0.4)
    lidar = Lidar(LidarConfig(cast_threads=3), seed=3)
    job = lidar._prepare(pose, actors, scenery, 0.0, (0.0, 0.0))
    one, split = ray_buffers(lidar.config), ray_buffers(lidar.config)
    lidar._cast_columns(job, 0, 1024, one)
    for _ in range(3):
        lidar._cast_split(job, 0, 1024, split)
        assert all(np.array_equal(a, b) for a, b in zip(one, split))
    queue = lidar._queue
    lidar.close()
    assert (one[0] >= 0).sum() > 30000
    assert queue.chunks_cast_here + queue.chunks_from_background == 3 * 1024 // 128
    with pytest.raises(DataError, match="cast_threads"):
        LidarConfig(cast_threads=0)


def test_a_late_background_thread_changes_nothing(monkeypatch):
    """A background thread without a core: the caller waits briefly, casts the late chunks itself
    and goes on; the thread's late writes (same values) and the buffer reuse two revolutions later
    leave every frame equal, bit for bit, to a single thread's."""
    import threading
    import sim.lidar as lidar_module

    serial = Lidar(LidarConfig(cast_threads=1), seed=7)
    expected = []
    spinning = SpinningLidar(serial, tick_s=0.05)
    for k in range(1, 13):
        ego, actors, scenery = _moving_scene(k)
        expected.append(spinning.tick(0.05 * k, ego, actors, scenery))
    main = threading.main_thread()
    original = lidar_module.Lidar._cast_columns

    def slow_in_background(self, *args, **kwargs):
        if threading.current_thread() is not main:
            time.sleep(0.02)  # 20 x FINISH_TIMEOUT_S
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lidar_module.Lidar, "_cast_columns", slow_in_background)
    lidar = Lidar(LidarConfig(cast_threads=2), seed=7)
    spinning = SpinningLidar(lidar, tick_s=0.05, deliver_next_tick=True)
    got = []
    for k in range(1, 14):
        ego, actors, scenery = _moving_scene(k)
        got.append(spinning.tick(0.05 * k, ego, actors, scenery))
    spinning.close()
    lidar.close()
    assert lidar._queue.chunks_recast > 0
    for a, b in zip(expected, got[1:]):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a.points, b.points) and np.array_equal(a.actor_ids, b.actor_ids)
