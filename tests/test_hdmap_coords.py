"""The CARLA <-> right-handed conversion, checked against numbers and against the .xodr geometry."""

import math
import xml.etree.ElementTree as ET

import carla
import numpy as np
import pytest

from adstack.paths import shared_data_dir
from hdmap.coords import (carla_location_to_ros, carla_to_ros_xy, carla_to_ros_yaw, ros_to_carla_location,
                          ros_to_carla_yaw)
from hdmap.map import load_map

TOWN01 = shared_data_dir() / "maps" / "carla" / "Town01.xodr"


def test_known_carla_location_lands_on_known_right_handed_point():
    assert carla_location_to_ros(carla.Location(x=10.0, y=-4.0, z=1.5)) == (10.0, 4.0, 1.5)
    loc = ros_to_carla_location(3.0, 7.0, 0.5)
    assert (loc.x, loc.y, loc.z) == pytest.approx((3.0, -7.0, 0.5))
    xy = carla_to_ros_xy(np.array([[1.0, 2.0], [-3.0, -4.0]]))
    np.testing.assert_array_equal(xy, [[1.0, -2.0], [-3.0, 4.0]])
    # CARLA yaw +90 deg turns towards +y_carla = -y_ros: clockwise in the right-handed frame.
    assert carla_to_ros_yaw(90.0) == pytest.approx(-math.pi / 2)
    np.testing.assert_allclose(carla_to_ros_yaw(np.array([0.0, -90.0, 180.0])), [0.0, math.pi / 2, -math.pi])
    assert ros_to_carla_yaw(carla_to_ros_yaw(37.0)) == pytest.approx(37.0)


def test_round_trip_through_carla_location():
    for x, y, z in [(0.0, 0.0, 0.0), (12.5, -3.25, 1.0), (-100.0, 250.0, -2.0)]:
        assert carla_location_to_ros(ros_to_carla_location(x, y, z)) == pytest.approx((x, y, z))


def _first_line_roads(path, count=10):
    """Normal roads whose planView starts with a line: (id, x, y, hdg, width of lane -1 or None)."""
    roads = []
    for road in ET.parse(path).getroot().findall("road"):
        geometry = road.find("planView/geometry")
        if road.get("junction") != "-1" or geometry.find("line") is None:
            continue
        width = None
        section = road.find("lanes/laneSection")
        if road.find("lanes/laneOffset") is not None and float(road.find("lanes/laneOffset").get("a")) != 0.0:
            continue
        for lane in section.findall("right/lane"):
            if lane.get("id") == "-1" and lane.get("type") == "driving":
                width = float(lane.find("width").get("a"))
        if width is not None:
            roads.append((int(road.get("id")), float(geometry.get("x")), float(geometry.get("y")),
                          float(geometry.get("hdg")), width))
        if len(roads) == count:
            break
    return roads


@pytest.mark.parametrize("source", ["junction4", "Town01"])
def test_lane_start_matches_xodr_plan_view(source):
    """CARLA flips y and we flip back, so lane -1 starts half a lane right of the planView start."""
    if source == "Town01" and not TOWN01.is_file():
        pytest.skip("shared Town01.xodr not present")
    hdmap = load_map(TOWN01 if source == "Town01" else source)
    roads = _first_line_roads(hdmap.xodr_path)
    assert roads
    for road_id, x, y, hdg, width in roads:
        lane = hdmap.lanes[(road_id, 0, -1)]
        right_normal = np.array([math.sin(hdg), -math.cos(hdg)])
        expected = np.array([x, y]) + right_normal * width / 2
        np.testing.assert_allclose(lane.centerline[0], expected, atol=0.02)
        assert abs(math.remainder(lane.heading[0] - hdg, 2 * math.pi)) < 1e-3
