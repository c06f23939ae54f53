"""Loading maps through carla.Map and querying them; bad inputs are one-line UserErrors."""

import math

import numpy as np
import pytest

from adstack.errors import UserError
from adstack.paths import shared_data_dir
from hdmap import load_map
from hdmap.map import HDMap, Lane

MAPS = shared_data_dir() / "maps" / "carla"
needs_shared = pytest.mark.skipif(not (MAPS / "Town01.xodr").is_file(), reason="shared CARLA maps not present")


@pytest.fixture(scope="module")
def junction4() -> HDMap:
    return load_map("junction4")


@pytest.fixture(scope="module")
def town01() -> HDMap:
    if not (MAPS / "Town01.xodr").is_file():
        pytest.skip("shared CARLA maps not present")
    return load_map("Town01", map_dirs=[MAPS])


def test_generated_maps_are_written_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADSTACK_CACHE", str(tmp_path))
    for name, junctions, lights in [("junction4", 1, 4), ("grid_town", 6, 24)]:
        hdmap = load_map(name)
        assert hdmap.xodr_path == tmp_path / "maps" / f"{name}.xodr"
        assert hdmap.xodr_path.read_text().startswith("<?xml")
        assert len(hdmap.junction_ids) == junctions
        assert len(hdmap.traffic_lights) == lights
        assert all(len(t.lanes) == 1 for t in hdmap.traffic_lights)


def test_junction4_lanes(junction4):
    assert len(junction4.lanes) == 8 + 12  # 4 arms x 2 directions, 12 turning/straight connections
    for key, lane in junction4.lanes.items():
        assert isinstance(lane, Lane) and lane.key == key
        assert lane.centerline.shape == (len(lane.s), 2) and lane.centerline.dtype == np.float64
        steps = np.diff(lane.s)
        assert steps.max() <= 1.0 + 1e-6 and lane.length == pytest.approx(lane.s[-1])
        np.testing.assert_allclose(lane.width, 3.5)
        assert lane.speed_limit == pytest.approx(50 / 3.6)
        assert lane.is_junction == (lane.junction_id >= 0)
        for succ in lane.successors:  # lanes join end to start
            assert np.linalg.norm(junction4.lanes[succ].centerline[0] - lane.centerline[-1]) < 0.05
            assert key in junction4.lanes[succ].predecessors
    east_out = junction4.lanes[(1, 0, -1)]  # east arm, lane leaving the junction eastwards
    np.testing.assert_allclose(east_out.centerline[0], [10.0, -1.75], atol=1e-3)
    assert east_out.heading[0] == pytest.approx(0.0, abs=1e-4)
    assert len(junction4.lanes[(1, 0, 1)].successors) == 3  # straight, left, right


def test_traffic_lights_and_stop_lines(junction4):
    light = next(t for t in junction4.traffic_lights if (1, 0, 1) in t.lanes)
    np.testing.assert_allclose(light.position, [10.75, 4.0], atol=0.3)
    segment = light.stop_lines[(1, 0, 1)]
    # Driving west at y = +1.75, 0.5 m before the junction edge x = 10; left end (south) first.
    np.testing.assert_allclose(segment, [[10.5, 0.0], [10.5, 3.5]], atol=1e-3)
    assert junction4.traffic_lights_for_lane((1, 0, 1)) == [light]
    stops = junction4.stop_lines_for_lane((1, 0, 1))
    assert len(stops) == 1 and stops[0].kind == "traffic_light" and stops[0].s == pytest.approx(99.5, abs=0.6)
    assert junction4.stop_lines_for_lane((1, 0, -1)) == []
    assert junction4.stop_signs == []


def test_nearest_lane_respects_heading(junction4):
    key, lateral, s = junction4.nearest_lane(50.0, -1.0)
    assert key == (1, 0, -1) and lateral == pytest.approx(0.75) and s == pytest.approx(40.0)
    key, lateral, s = junction4.nearest_lane(50.0, -1.0, yaw=math.pi)  # facing west: the westbound lane
    assert key == (1, 0, 1) and lateral == pytest.approx(2.75) and s == pytest.approx(60.0)
    key, _, _ = junction4.nearest_lane(50.0, -1.0, yaw=0.2)
    assert key == (1, 0, -1)


def test_is_drivable_vectorized(junction4):
    xy = np.array([[50.0, -1.0], [50.0, 3.4], [50.0, 3.6], [50.0, -4.0], [0.0, 0.0], [40.0, 40.0], [-105.0, 1.0]])
    np.testing.assert_array_equal(junction4.is_drivable(xy), [True, True, False, False, True, False, True])
    grid = np.random.default_rng(0).uniform(-120, 120, size=(20000, 2))
    inside = junction4.is_drivable(grid)
    # The drivable area is the cross of two 7 m wide, 220 m long roads (minus the overlap).
    expected_fraction = (2 * 7.0 * 220.0 - 7.0 * 7.0) / 240.0**2
    assert inside.mean() == pytest.approx(expected_fraction, abs=0.01)


def test_lanes_in_radius_in_ego_frame(junction4):
    nearby = junction4.lanes_in_radius(50.0, -1.75, 0.0, radius=20.0, max_lanes=4, points_per_lane=10)
    assert nearby.points.shape == (4, 10, 2) and nearby.mask.tolist() == [True, True, False, False]
    assert nearby.keys[:2] == [(1, 0, -1), (1, 0, 1)] and nearby.keys[2] is None
    own = nearby.points[0]
    np.testing.assert_allclose(own[:, 1], 0.0, atol=1e-5)     # our lane runs along ego x
    np.testing.assert_allclose(own[[0, -1], 0], [-20.0, 20.0], atol=1.01)
    other = nearby.points[1]
    np.testing.assert_allclose(other[:, 1], 3.5, atol=1e-5)   # the oncoming lane is 3.5 m to our left
    assert other[0, 0] > other[-1, 0]                         # and runs towards us
    np.testing.assert_allclose(nearby.speed_limit[:2], 50 / 3.6, rtol=1e-6)
    rotated = junction4.lanes_in_radius(50.0, -1.75, math.pi / 2, radius=20.0, max_lanes=4, points_per_lane=10)
    np.testing.assert_allclose(rotated.points[0][:, 0], 0.0, atol=1e-5)  # facing north: the lane runs along -y_ego
    assert rotated.points[0][0, 1] > 0 > rotated.points[0][-1, 1]


@needs_shared
def test_town01_loads_with_traffic_lights(town01):
    assert len(town01.lanes) > 100 and len(town01.junction_ids) == 12
    assert len(town01.traffic_lights) > 10
    governed = [k for t in town01.traffic_lights for k in t.lanes]
    assert governed and all(k in town01.lanes for k in governed)
    for light in town01.traffic_lights:
        for key, segment in light.stop_lines.items():
            lane = town01.lanes[key]
            assert segment.shape == (2, 2)
            # The stop line crosses its lane: centre on the centreline, as long as the lane is wide.
            assert np.linalg.norm(segment[0] - segment[1]) == pytest.approx(lane.width.mean(), abs=0.3)
            k, lateral, _ = town01.nearest_lane(*segment.mean(axis=0), yaw=float(lane.heading[0]))
            assert abs(lateral) < 0.3
    xy = np.concatenate([l.centerline for l in town01.lanes.values()])
    assert town01.is_drivable(xy).mean() > 0.99
    assert town01.speed_limit(next(iter(town01.lanes))) > 0


@needs_shared
def test_town01_nearest_lane_recovers_lane_points(town01):
    rng = np.random.default_rng(1)
    keys = list(town01.lanes)
    for i in rng.choice(len(keys), 30, replace=False):
        lane = town01.lanes[keys[i]]
        if lane.is_junction:
            continue
        j = len(lane.s) // 2
        normal = np.array([-math.sin(lane.heading[j]), math.cos(lane.heading[j])])
        key, lateral, s = town01.nearest_lane(*(lane.centerline[j] + 0.8 * normal), yaw=float(lane.heading[j]))
        assert key == lane.key and lateral == pytest.approx(0.8, abs=0.05) and s == pytest.approx(lane.s[j], abs=0.05)


def test_missing_file_unknown_name_and_malformed_xodr(tmp_path):
    with pytest.raises(UserError, match="nowhere.xodr: map file not found"):
        load_map(tmp_path / "nowhere.xodr")
    with pytest.raises(UserError, match="unknown map 'Atlantis'"):
        load_map("Atlantis", map_dirs=[tmp_path])
    broken = tmp_path / "broken.xodr"
    broken.write_text("<OpenDRIVE><header/><road id='1'>")
    with pytest.raises(UserError, match="broken.xodr: not valid OpenDRIVE XML"):
        load_map(broken)
    wrong_root = tmp_path / "wrong.xodr"
    wrong_root.write_text("<osm><node/></osm>")
    with pytest.raises(UserError, match="wrong.xodr: not an OpenDRIVE file"):
        load_map(wrong_root)
    laneless = tmp_path / "laneless.xodr"
    laneless.write_text('<OpenDRIVE><header revMajor="1" revMinor="4"/><road id="1" length="10" junction="-1">'
                        '<planView><geometry s="0" x="0" y="0" hdg="0" length="10"><line/></geometry></planView>'
                        '<lanes><laneSection s="0"><center><lane id="0" type="none"/></center><right>'
                        '<lane id="-1" type="sidewalk"><width sOffset="0" a="2" b="0" c="0" d="0"/></lane>'
                        '</right></laneSection></lanes></road></OpenDRIVE>')
    with pytest.raises(UserError, match="laneless.xodr: the map has no driving lanes"):
        load_map(laneless)
    binary = tmp_path / "binary.xodr"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="binary.xodr"):
        load_map(binary)


def test_map_dirs_resolve_names(tmp_path):
    source = load_map("junction4").xodr_path
    (tmp_path / "mytown.xodr").write_text(source.read_text())
    hdmap = load_map("mytown", map_dirs=[tmp_path / "missing", tmp_path])
    assert hdmap.name == "mytown" and len(hdmap.lanes) == 20


_HEADER = '<OpenDRIVE><header revMajor="1" revMinor="4"/>'
_PLAN = '<planView><geometry s="0" x="0" y="0" hdg="0" length="10"><line/></geometry></planView>'
_PLAN_BAD_X = _PLAN.replace('x="0"', 'x="east"')
_LANES = ('<lanes><laneSection s="0"><center><lane id="0" type="none"/></center><right><lane id="-1" type="driving">'
          '<width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></right></laneSection></lanes>')


@pytest.mark.parametrize("road, problem", [
    # Each of these made carla.Map segfault, raise from C++ or misread silently before the checks.
    (f'<road id="1" length="10" junction="-1">{_LANES}</road>', "road '1': no <planView><geometry>"),
    (f'<road id="1" length="10" junction="-1"><link><successor elementType="road" elementId="99"/></link>{_PLAN}{_LANES}</road>',
     "road '1': successor road '99' does not exist"),
    (f'<road id="1" length="10" junction="-1">{_PLAN}<lanes><laneSection s="0"><right><lane id="-1" type="driving"/>'
     '</right></laneSection></lanes></road>', "road '1': a <laneSection> has no <center> lane"),
    (f'<road id="1" length="10" junction="-1">{_PLAN_BAD_X}{_LANES}</road>',
     "road '1': <geometry> x='east' is not a number"),
    (f'<road id="1" length="10" junction="7">{_PLAN}{_LANES}</road>', "road '1': junction '7' does not exist"),
    (f'<road id="1" length="0" junction="-1">{_PLAN}{_LANES}</road>', "road '1': length must be positive"),
])
def test_structural_faults_are_caught_before_carla(tmp_path, road, problem):
    path = tmp_path / "faulty.xodr"
    path.write_text(f"{_HEADER}{road}</OpenDRIVE>")
    with pytest.raises(UserError, match="faulty.xodr: " + problem.replace("(", r"\(")):
        load_map(path)


def test_single_unlinked_road_loads(tmp_path):
    path = tmp_path / "lonely.xodr"
    path.write_text(f'{_HEADER}<road id="1" length="10" junction="-1">{_PLAN}{_LANES}</road></OpenDRIVE>')
    hdmap = load_map(path)
    (lane,) = hdmap.lanes.values()
    np.testing.assert_allclose(lane.centerline[[0, -1]], [[0.0, -1.75], [10.0, -1.75]], atol=1e-3)
    assert lane.successors == [] and lane.predecessors == []


def test_batch_nearest_lanes_match_single_queries(junction4):
    rng = np.random.default_rng(3)
    xy = rng.uniform(-100, 100, size=(200, 2)) * rng.integers(0, 2, size=(200, 1)) + rng.normal(0, 2, (200, 2))
    yaw = rng.uniform(-math.pi, math.pi, 200)
    keys, lateral, s = junction4.nearest_lanes(xy, yaw)
    for i in range(0, 200, 7):
        key, lat, s_i = junction4.nearest_lane(*xy[i], yaw=yaw[i])
        assert keys[i] == key and lateral[i] == pytest.approx(lat) and s[i] == pytest.approx(s_i)


def test_single_point_nearest_lane_equals_the_batch_query_exactly(town01):
    """The compiled one-point path (no heading) gives the batch query's answer to the last bit:
    on lane samples (ties between a lane's two segments), between lanes and off the map."""
    rng = np.random.default_rng(5)
    lo, hi = town01._points.min(axis=0) - 30.0, town01._points.max(axis=0) + 30.0
    xy = np.vstack([rng.uniform(lo, hi, (1500, 2)), town01._points[rng.integers(0, len(town01._points), 500)]])
    keys, lateral, s = town01.nearest_lanes(xy)
    for i, (x, y) in enumerate(xy):
        assert town01.nearest_lane(x, y) == (keys[i], float(lateral[i]), float(s[i]))


@pytest.mark.parametrize("name", ["junction4", "grid_town"])
def test_generated_maps_convert_with_sumo_netconvert(tmp_path, name):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    netconvert = shutil.which("netconvert") or str(Path(sys.executable).parent / "netconvert")
    if not Path(netconvert).is_file():
        pytest.skip("SUMO netconvert not installed")
    hdmap = load_map(name)
    out = tmp_path / f"{name}.net.xml"
    proc = subprocess.run([netconvert, "--opendrive", str(hdmap.xodr_path), "-o", str(out), "--tls.guess-signals", "true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    text = out.read_text()
    assert text.count("<tlLogic ") == len(hdmap.junction_ids)
