"""Static scenery for the lidar: placement off the roads, kinds and sizes, the spatial index."""

import math

import numpy as np
import pytest
import shapely

from adstack.errors import DataError
from adstack.types import Boxes, ObjectClass
from sim.lidar import MAT_BUILDING, MAT_METAL, MAT_PAINT, MAT_RETRO, Lidar, LidarConfig, scenery_material
from sim.scenery import (DEFAULT_PARAMS, SceneryConfig, SceneryIndex, place_scenery, place_scenery_from_lanes)

ROAD_HALF_WIDTH = 3.5  # two 3.5 m lanes either side of y = 0


def crossroads():
    """Two straight two-lane roads crossing at (150, 0): lane centres, widths, drivable test, lights."""
    xs = np.linspace(0.0, 300.0, 61)
    centerlines = [np.c_[xs, np.full_like(xs, -1.75)], np.c_[xs[::-1], np.full_like(xs, 1.75)],
                   np.c_[np.full_like(xs, 151.75), xs - 150.0], np.c_[np.full_like(xs, 148.25), 150.0 - xs]]
    widths = [np.full(len(xs), 3.5)] * 4

    def is_drivable(xy):
        xy = np.asarray(xy).reshape(-1, 2)
        along_x = (np.abs(xy[:, 1]) < ROAD_HALF_WIDTH) & (xy[:, 0] >= 0) & (xy[:, 0] <= 300)
        along_y = (np.abs(xy[:, 0] - 150.0) < ROAD_HALF_WIDTH) & (np.abs(xy[:, 1]) <= 150)
        return along_x | along_y

    lights = np.array([[150.0, 0.0], [140.0, 5.0], [160.0, -5.0]])  # the first stands mid-junction
    return centerlines, widths, is_drivable, lights


def footprint_samples(boxes: Boxes, spacing=0.1):
    out = []
    for c, (l, w, _), yaw in zip(boxes.center, boxes.size, boxes.yaw):
        u, v = np.meshgrid(np.linspace(-l / 2, l / 2, max(2, int(l / spacing) + 1)),
                           np.linspace(-w / 2, w / 2, max(2, int(w / spacing) + 1)))
        cs, sn = math.cos(yaw), math.sin(yaw)
        out.append(np.c_[c[0] + cs * u.ravel() - sn * v.ravel(), c[1] + sn * u.ravel() + cs * v.ravel()])
    return out


@pytest.fixture(scope="module")
def placed():
    centerlines, widths, is_drivable, lights = crossroads()
    return place_scenery_from_lanes(centerlines, widths, is_drivable, lights, seed=3), is_drivable, lights


def test_config_file_matches_defaults_and_rejects_bad_values(tmp_path):
    assert SceneryConfig.load(DEFAULT_PARAMS) == SceneryConfig()
    with pytest.raises(DataError, match="building_length_min_m"):
        SceneryConfig(building_length_min_m=30.0)


def test_scenery_never_touches_a_driving_lane(placed):
    boxes, is_drivable, _ = placed
    assert len(boxes) > 50
    assert np.all(boxes.label == ObjectClass.STATIC)
    for samples in footprint_samples(boxes):
        assert not is_drivable(samples).any()


def test_kinds_sizes_and_setbacks(placed):
    boxes, _, lights = placed
    material = scenery_material(boxes.size)
    buildings = material == MAT_BUILDING
    assert buildings.sum() > 20 and (material == MAT_METAL).sum() > 10 and (material == MAT_RETRO).sum() > 2
    # buildings stand at least building_setback_min_m from the road
    cfg = SceneryConfig()
    for samples in footprint_samples(boxes.select(buildings), spacing=0.5):
        off_x = np.abs(samples[:, 1]) - ROAD_HALF_WIDTH
        off_y = np.abs(samples[:, 0] - 150.0) - ROAD_HALF_WIDTH
        # distance to the nearer road (a lower bound beyond the road ends); 0.5: raster cell slack
        assert np.min(np.minimum(off_x, off_y)) >= cfg.building_setback_min_m - 0.5
    assert np.all(boxes.size[buildings] >= np.array([8.0, 8.0, 4.0]) - 1e-9)
    # one signal housing per traffic light, on a post within the search radius of the signal
    housings = boxes.select(material == MAT_PAINT)
    assert len(housings) == len(lights)
    for light in lights:
        d = np.hypot(*(housings.center[:, :2] - light).T)
        assert d.min() <= cfg.light_search_radius_m
    # every box stands on the ground (z = 0 here) or on its post
    bottoms = boxes.center[:, 2] - boxes.size[:, 2] / 2
    assert np.all(bottoms >= -1e-9)


def test_no_two_boxes_overlap(placed):
    boxes, _, _ = placed
    polygons = [shapely.Polygon(c) for c in boxes.corners_xy()]
    tree = shapely.STRtree(polygons)
    z_lo = boxes.center[:, 2] - boxes.size[:, 2] / 2
    z_hi = boxes.center[:, 2] + boxes.size[:, 2] / 2
    for i, j in tree.query(polygons, predicate="intersects").T:
        if i < j and polygons[i].intersection(polygons[j]).area > 1e-6:
            assert min(z_hi[i], z_hi[j]) - max(z_lo[i], z_lo[j]) <= 1e-6, (i, j)  # stacked, not overlapping


def test_placement_is_deterministic_in_the_seed():
    centerlines, widths, is_drivable, lights = crossroads()
    a = place_scenery_from_lanes(centerlines, widths, is_drivable, lights, seed=1)
    b = place_scenery_from_lanes(centerlines, widths, is_drivable, lights, seed=1)
    c = place_scenery_from_lanes(centerlines, widths, is_drivable, lights, seed=2)
    assert np.array_equal(a.center, b.center) and np.array_equal(a.size, b.size)
    assert len(a) != len(c) or not np.array_equal(a.center, c.center)


def test_index_returns_every_box_within_the_radius(placed):
    boxes, _, _ = placed
    index = SceneryIndex(boxes, cell_m=20.0, radius_m=60.0)
    polygons = [shapely.Polygon(c) for c in boxes.corners_xy()]
    rng = np.random.default_rng(0)
    for x, y in rng.uniform([-20, -100], [320, 100], (20, 2)):
        got = set(index.query_indices(x, y).tolist())
        truth = {i for i, p in enumerate(polygons) if p.distance(shapely.Point(x, y)) <= 60.0}
        assert truth <= got
        # and nothing far beyond: a box's centre is at most radius + its half diagonal away
        reach = np.hypot(boxes.size[:, 0], boxes.size[:, 1]) / 2
        assert all(math.hypot(boxes.center[i, 0] - x, boxes.center[i, 1] - y) <= 60.0 + reach[i] + 1e-9 for i in got)
    assert len(index.query(150.0, 0.0)) == len(index.query_indices(150.0, 0.0))
    assert len(index.query(5000.0, 5000.0)) == 0


def test_lidar_sees_the_scenery(placed):
    boxes, _, _ = placed
    index = SceneryIndex(boxes)
    lidar = Lidar(LidarConfig(), seed=0)
    cloud = lidar.scan((100.0, -1.75, 1.8, 0.0, 0.0, 0.0), None, index.query(100.0, -1.75), 0.0)
    static = cloud.labels == ObjectClass.STATIC
    assert static.sum() > 1000
    assert np.all(cloud.actor_ids[static] == -1)
    # retro-reflective sign plates are the brightest returns
    assert cloud.points[static, 3].max() > 0.8


def test_town01_scenery_from_the_hd_map(tmp_path, monkeypatch):
    hdmap_map = pytest.importorskip("hdmap.map")
    try:
        town = hdmap_map.load_map("Town01")
    except Exception as exc:  # the map asset may not be fetched on this machine
        pytest.skip(f"Town01 not available: {exc}")
    monkeypatch.setenv("ADSTACK_CACHE", str(tmp_path))
    boxes = place_scenery(town, seed=0)
    cached = list((tmp_path / "scenery").glob("Town01-*.npz"))
    assert len(cached) == 1
    again = place_scenery(town, seed=0)  # from the cache
    assert np.array_equal(again.center, boxes.center) and np.array_equal(again.yaw, boxes.yaw)
    assert len(list((tmp_path / "scenery").glob("*.npz"))) == 1
    place_scenery(town, seed=1)
    assert len(list((tmp_path / "scenery").glob("*.npz"))) == 2
    material = scenery_material(boxes.size)
    assert (material == MAT_BUILDING).sum() > 50 and (material == MAT_METAL).sum() > 50
    assert (material == MAT_PAINT).sum() >= 0.9 * len(town.traffic_lights)
    for samples in footprint_samples(boxes, spacing=0.25):
        assert not town.is_drivable(samples).any()
    index = SceneryIndex.from_map(town, seed=0)
    lane = next(iter(town.lanes.values()))
    x, y = lane.centerline[len(lane.centerline) // 2]
    near = index.query(x, y)
    assert 0 < len(near) < len(index)
