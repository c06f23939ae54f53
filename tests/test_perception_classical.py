"""Classical detector on synthetic scenes whose answer is known: sloped ground, a car, a person, a wall."""

import math

import numpy as np
import pytest

from adstack.errors import UserError
from adstack.types import ObjectClass
from perception.classical import (ClassicalConfig, ClassicalDetector, edge_fraction, fit_l_shapes, height_above_ground,
                                  load_config, suppress_duplicates)

RNG = np.random.default_rng(1)
SENSOR_HEIGHT_M = 1.8
SLOPE = 0.06  # 6 % uphill along +x: the ground rises 3 m over 50 m


def ground_z(x, y):
    return -SENSOR_HEIGHT_M + SLOPE * x + 0.02 * y


def ground_points(spacing=0.25, extent=45.0):
    g = np.arange(-extent, extent, spacing)
    x, y = np.meshgrid(g, g)
    x, y = x.ravel(), y.ravel()
    keep = np.hypot(x, y) > 3.0
    x, y = x[keep], y[keep]
    return np.c_[x, y, ground_z(x, y) + RNG.normal(0, 0.02, x.size)]


def box_surface(cx, cy, length, width, height, yaw, spacing=0.1):
    """Points on the four vertical faces and the roof of a box standing on the sloped ground."""
    faces = []
    for u in np.arange(-length / 2, length / 2 + 1e-9, spacing):
        for v in (-width / 2, width / 2):
            faces.append((u, v))
    for v in np.arange(-width / 2, width / 2 + 1e-9, spacing):
        for u in (-length / 2, length / 2):
            faces.append((u, v))
    uv = np.array(faces)
    zs = np.arange(0.1, height + 1e-9, spacing)
    uv = np.repeat(uv, len(zs), axis=0)
    z = np.tile(zs, len(faces))
    c, s = math.cos(yaw), math.sin(yaw)
    x = cx + uv[:, 0] * c - uv[:, 1] * s
    y = cy + uv[:, 0] * s + uv[:, 1] * c
    return np.c_[x, y, ground_z(x, y) + z]


def cloud(*parts):
    xyz = np.vstack(parts)
    return np.c_[xyz, np.zeros(len(xyz))].astype(np.float32)


CAR = dict(cx=15.0, cy=-4.0, length=4.6, width=1.9, height=1.5, yaw=0.35)
PERSON = dict(cx=8.0, cy=5.0, length=0.5, width=0.5, height=1.75, yaw=0.0)
WALL = dict(cx=5.0, cy=14.0, length=25.0, width=0.3, height=2.5, yaw=0.0)


@pytest.fixture(scope="module")
def detector():
    return ClassicalDetector(load_config())


def test_sloped_ground_alone_gives_no_boxes(detector):
    points = cloud(ground_points())
    height = height_above_ground(points[:, :3].astype(np.float64), detector.config)
    # The slope is followed, not cut: heights stay within the noise, below the obstacle clearance.
    assert np.percentile(np.abs(height), 99.9) < 0.2
    assert np.abs(height).max() < detector.config.ground_clearance_m
    assert len(detector.detect(points)) == 0


def test_car_person_wall(detector):
    points = cloud(ground_points(), box_surface(**CAR), box_surface(**PERSON), box_surface(**WALL))
    boxes = detector.detect(points)
    assert np.isfinite(boxes.center).all() and np.isfinite(boxes.size).all()
    cars = boxes.select(boxes.label == ObjectClass.VEHICLE)
    people = boxes.select(boxes.label == ObjectClass.PEDESTRIAN)
    assert len(cars) == 1 and len(people) == 1, (boxes.label, boxes.center)
    assert np.hypot(cars.center[0, 0] - CAR["cx"], cars.center[0, 1] - CAR["cy"]) < 0.2
    yaw_err = abs((cars.yaw[0] - CAR["yaw"] + math.pi / 2) % math.pi - math.pi / 2)  # L-shape: heading mod pi
    assert yaw_err < math.radians(3)
    np.testing.assert_allclose(cars.size[0], [CAR["length"], CAR["width"], CAR["height"]], atol=0.25)
    car_ground = ground_z(CAR["cx"], CAR["cy"])
    assert cars.center[0, 2] == pytest.approx(car_ground + CAR["height"] / 2, abs=0.2)
    assert np.hypot(people.center[0, 0] - PERSON["cx"], people.center[0, 1] - PERSON["cy"]) < 0.3
    # Nothing near the wall: it is too long and thin for any class.
    assert not (np.abs(boxes.center[:, 1] - WALL["cy"]) < 1.0).any()
    assert ((boxes.score > 0) & (boxes.score <= 1)).all()


def test_car_seen_from_one_corner_is_completed(detector):
    # Only the two faces towards the sensor (an L): the box centre must still land near the car's.
    car = box_surface(**CAR)
    c, s = math.cos(CAR["yaw"]), math.sin(CAR["yaw"])
    local_u = (car[:, 0] - CAR["cx"]) * c + (car[:, 1] - CAR["cy"]) * s
    local_v = -(car[:, 0] - CAR["cx"]) * s + (car[:, 1] - CAR["cy"]) * c
    visible = (np.isclose(local_u, -CAR["length"] / 2) | np.isclose(local_v, CAR["width"] / 2)) & (car[:, 2] < 5)
    # Shrink the visible faces so the L is shorter than a typical car: 3 m x 1.5 m.
    visible &= (local_u < -CAR["length"] / 2 + 3.0) & (local_v > CAR["width"] / 2 - 1.5)
    boxes = detector.detect(cloud(ground_points(), car[visible]))
    cars = boxes.select(boxes.label == ObjectClass.VEHICLE)
    assert len(cars) == 1
    # The true centre of a 3 x 1.5 car seen there, grown to 4.5 x 1.85 away from the sensor:
    assert np.hypot(cars.center[0, 0] - CAR["cx"], cars.center[0, 1] - CAR["cy"]) < 1.2
    assert cars.size[0, 0] == pytest.approx(4.5, abs=0.2)


def test_l_shape_kernel_recovers_rotation():
    for yaw in (0.0, 0.3, -0.7, 1.2):
        pts = box_surface(0.0, 0.0, 4.0, 2.0, 0.2, yaw)[:, :2]
        rect = fit_l_shapes(pts, np.array([0]), np.array([len(pts)]), math.radians(1.0), 0.01)[0]
        err = abs((rect[4] - yaw + math.pi / 2) % math.pi - math.pi / 2)
        assert err < math.radians(1.5)
        np.testing.assert_allclose(rect[2:4], [4.0, 2.0], atol=0.1)
        np.testing.assert_allclose(rect[:2], [0, 0], atol=0.05)


def test_empty_and_tiny_inputs(detector):
    assert len(detector.detect(np.zeros((0, 4), np.float32))) == 0
    assert len(detector.detect(np.array([[5, 5, -1.7, 0]], np.float32))) == 0
    nan_cloud = cloud(ground_points(extent=10))
    nan_cloud[::7, 0] = np.nan
    assert len(detector.detect(nan_cloud)) == 0


def test_config_file_matches_dataclass_defaults():
    assert load_config() == ClassicalConfig()
    with pytest.raises(ValueError):
        ClassicalConfig(ground_window_m=0.1).validate()


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.param.yaml"
    path.write_text("classical_detector:\n  ros__parameters:\n    ground_cell_m: -1.0\n")
    with pytest.raises(UserError, match="bad.param.yaml.*ground_cell_m"):
        load_config(path)
    path.write_text("classical_detector:\n  ros__parameters:\n    groundcell: 1.0\n")
    with pytest.raises(UserError, match="unknown parameter"):
        load_config(path)


def test_edge_fraction_tells_outline_from_blob():
    outline = box_surface(0.0, 0.0, 4.0, 2.0, 0.2, 0.0)[:, :2]
    blob = RNG.uniform([-2, -1], [2, 1], size=(400, 2))
    xy = np.vstack([outline, blob])
    counts = np.array([len(outline), len(blob)])
    rect = np.array([[0, 0, 4, 2, 0], [0, 0, 4, 2, 0]], dtype=float)
    on_outline, in_blob = edge_fraction(xy, counts, rect, 0.2)
    assert on_outline == pytest.approx(1.0)
    # A uniform blob: the share of a 4 x 2 rectangle within 0.2 m of its outline is 1 - 3.6 * 1.6 / 8.
    assert in_blob == pytest.approx(1 - 3.6 * 1.6 / 8, abs=0.06)


def test_suppress_duplicates_keeps_best_per_class():
    xy = np.array([[0, 0], [0.5, 0], [0.4, 0.1], [10, 0]], dtype=float)
    label = np.array([1, 1, 2, 1])
    score = np.array([0.5, 0.9, 0.3, 0.1])
    assert list(suppress_duplicates(xy, label, score, 1.0)) == [1, 2, 3]
