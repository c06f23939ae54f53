"""The embedded world with real SUMO (libsumo) on a real carla.Map: frames, traffic, lights, ego."""

import math

import numpy as np
import pytest

from adstack.errors import DataError
from adstack.paths import shared_data_dir
from adstack.types import Command, LightState, ObjectClass
from sim.traffic import build_net, sumo_angle_to_yaw, yaw_to_sumo_angle
from sim.world import World, WorldConfig

CARLA_MAPS = shared_data_dir() / "maps" / "carla"


@pytest.fixture(scope="module")
def town01():
    from hdmap.map import load_map
    return load_map("Town01", map_dirs=[CARLA_MAPS])


def run_world(hd_map, seconds, seed=0, vehicles=100, pedestrians=100, lidar=False, command=Command(0.0, 0.0),
              ego_pose=None):
    config = WorldConfig(lidar=lidar)
    config.traffic.vehicles, config.traffic.pedestrians = vehicles, pedestrians
    world = World(hd_map, config, seed=seed)
    states = [world.reset(ego_pose)]
    for _ in range(int(round(seconds / config.dt))):
        states.append(world.tick(command))
    return world, states


def test_sumo_angles_convert_to_yaw():
    # SUMO: 0 deg = north (+y), clockwise. Yaw: 0 = +x (east), counter-clockwise.
    assert sumo_angle_to_yaw(0.0) == pytest.approx(math.pi / 2)
    assert sumo_angle_to_yaw(90.0) == pytest.approx(0.0)
    assert sumo_angle_to_yaw(180.0) == pytest.approx(-math.pi / 2)
    for yaw in np.linspace(-3.1, 3.1, 13):
        assert sumo_angle_to_yaw(yaw_to_sumo_angle(yaw)) == pytest.approx(yaw)


def test_sumo_vehicles_lie_on_hdmap_lane_centres(town01):
    world, states = run_world(town01, 4.0, vehicles=100, pedestrians=0)
    world.close()
    lateral, heading_error, flipped = [], [], []
    for state in states[::20]:
        a = state.actors
        for i in np.flatnonzero(a.label != ObjectClass.PEDESTRIAN):
            key, lat, _ = town01.nearest_lane(a.center[i, 0], a.center[i, 1], a.yaw[i])
            if town01.lanes[key].is_junction:
                continue  # overlapping junction lanes: the nearest one need not be the one driven
            lateral.append(abs(lat))
            k = int(np.argmin(np.linalg.norm(town01.lanes[key].centerline - a.center[i, :2], axis=1)))
            d = town01.lanes[key].heading[k] - a.yaw[i]
            heading_error.append(abs(math.atan2(math.sin(d), math.cos(d))))
            # The same point in CARLA's left-handed frame (y flipped) must NOT fit: proves the test bites.
            _, lat_f, _ = town01.nearest_lane(a.center[i, 0], -a.center[i, 1])
            flipped.append(abs(lat_f))
    assert len(lateral) > 200
    assert np.median(lateral) < 0.5
    assert np.percentile(lateral, 90) < 1.0
    assert np.median(heading_error) < 0.05
    assert np.median(flipped) > 2.0


def test_actors_have_plausible_sizes_classes_and_stable_ids(town01):
    world, states = run_world(town01, 6.0, vehicles=60, pedestrians=40)
    world.close()
    last = states[-1].actors
    counts = np.bincount(last.label, minlength=5)
    assert counts[ObjectClass.PEDESTRIAN] == 40  # population kept
    assert 50 <= counts[ObjectClass.VEHICLE] + counts[ObjectClass.CYCLIST] <= 60
    assert counts[ObjectClass.CYCLIST] >= 1
    for label, (lo, hi) in {ObjectClass.VEHICLE: ((2.0, 0.7, 1.2), (12.0, 2.6, 4.0)),
                            ObjectClass.CYCLIST: ((1.4, 0.5, 1.4), (2.2, 1.0, 2.0)),
                            ObjectClass.PEDESTRIAN: ((0.2, 0.2, 1.5), (1.0, 1.0, 2.1))}.items():
        size = last.size[last.label == label]
        assert (size >= lo).all() and (size <= hi).all(), label
    assert np.allclose(last.center[:, 2], last.size[:, 2] / 2)  # flat Town01: boxes stand on z = 0
    assert len(set(last.ids.tolist())) == len(last) and (last.ids > 0).all()  # 0 is the ego
    # Ids are stable: an actor's id follows it, and it moves at most its speed times dt between ticks.
    for before, after in zip(states[-10:-1], states[-9:]):
        b, a = before.actors, after.actors
        common, ib, ia = np.intersect1d(b.ids, a.ids, return_indices=True)
        assert len(common) >= 0.9 * len(a)
        step = np.linalg.norm(a.center[ia, :2] - b.center[ib, :2], axis=1)
        speed = np.linalg.norm(a.velocity[ia], axis=1)
        assert (step <= speed * 0.05 + 0.6).all()  # + slack for SUMO's lane-change and junction jumps
    # Ego-frame boxes are the map-frame ones seen from the rear axle.
    s = states[-1]
    c, sn = math.cos(s.ego.yaw), math.sin(s.ego.yaw)
    x_ego = c * (last.center[:, 0] - s.ego.x) + sn * (last.center[:, 1] - s.ego.y)
    assert np.allclose(s.actors_ego.center[:, 0], x_ego)
    assert np.array_equal(s.actors_ego.ids, last.ids)


def test_traffic_reacts_to_the_ego(town01):
    """A standing ego blocks its lane: SUMO vehicles queue behind it instead of driving through."""
    world, states = run_world(town01, 25.0, seed=3, vehicles=100, pedestrians=0, command=Command(0.0, -1.0),
                              ego_pose=(150.0, -1.95, 0.0))
    world.traffic.observe()  # the step to the next tick, already launched, is done
    sumo_front = world.traffic.ego_position_sumo()
    world.close()
    ego = states[-1].ego
    assert (ego.x, ego.y, ego.v) == (150.0, -1.95, 0.0)
    front = np.array([ego.x + 4.7 - 0.95, ego.y]) + world.traffic.offset
    assert np.allclose(sumo_front, front, atol=1e-6)  # the ego is in SUMO where we put it
    overlaps, queued = 0, 0
    for s in states[1:]:
        rel = s.actors_ego
        inside = (np.abs(rel.center[:, 1]) < 1.0) & (rel.center[:, 0] > -0.95) & (rel.center[:, 0] < 3.75)
        overlaps += int(inside.sum())
    rel = states[-1].actors_ego
    queued = int(((np.abs(rel.center[:, 1]) < 1.0) & (rel.center[:, 0] < -0.95) & (rel.center[:, 0] > -40.0)
                  & (np.linalg.norm(rel.velocity, axis=1) < 0.5)).sum())
    assert overlaps == 0
    assert queued >= 1


def test_traffic_lights_have_stop_lines_on_map_lanes_and_change(town01):
    world, states = run_world(town01, 40.0, vehicles=0, pedestrians=0)
    world.close()
    lights = states[0].traffic_lights
    assert len(lights) >= 30
    for light in lights:
        assert light.state in (LightState.RED, LightState.YELLOW, LightState.GREEN)
        incoming = town01.lanes[light.lanes[0]]
        # The stop line is the end of the incoming lane, which heads the same way as the light.
        rel = light.position - incoming.centerline[-1]
        h = incoming.heading[-1]
        along, lateral = rel @ (math.cos(h), math.sin(h)), rel @ (-math.sin(h), math.cos(h))
        assert abs(lateral) < 0.5 and -2.0 < along < 2.0  # SUMO cuts lanes at its junction border
        d = incoming.heading[-1] - light.yaw
        assert abs(math.atan2(math.sin(d), math.cos(d))) < 0.2
        assert all(town01.lanes[k].is_junction for k in light.lanes[1:])
    # Every OpenDRIVE traffic light of Town01 is matched to one SUMO-controlled approach.
    matched = {l.map_signal_id for l in lights if l.map_signal_id}
    assert matched == {s.id for s in town01.traffic_lights}
    history = {l.id: {s.traffic_lights[j].state for s in states} for j, l in enumerate(lights)}
    assert sum(len(v) >= 2 for v in history.values()) >= len(lights) // 2  # lights cycle


def test_same_seed_same_world_different_seed_different_world(town01):
    def fingerprint(seed):
        world, states = run_world(town01, 1.0, seed=seed, vehicles=40, pedestrians=40, lidar=True,
                                  command=Command(0.05, 1.0))
        world.close()
        clouds = [s.lidar for s in states if s.lidar is not None]
        assert len(clouds) == 9  # 10 Hz for 1 s, each frame delivered a tick after it completes
        return ([s.actors.center for s in states], [s.ego.x for s in states], [c.points for c in clouds],
                [c.labels for c in clouds])

    a, b, c = fingerprint(7), fingerprint(7), fingerprint(8)
    for x, y in zip(a, b):
        assert all(np.array_equal(u, v) for u, v in zip(x, y))
    same = lambda u, v: u.shape == v.shape and np.array_equal(u, v)  # noqa: E731
    assert not same(a[0][-1], c[0][-1])
    assert not all(same(u, v) for u, v in zip(a[2], c[2]))


def test_lidar_sees_actors_with_their_labels(town01):
    world, states = run_world(town01, 2.0, vehicles=100, pedestrians=100, lidar=True)
    world.close()
    frames = [s for s in states if s.lidar is not None]
    assert len(frames) == 19  # 10 Hz for 2 s; the last frame is delivered on the tick after the run
    s = frames[-1]
    assert np.array_equal(s.lidar_labels, s.lidar.labels)
    hit_ids = set(s.lidar.actor_ids[s.lidar.actor_ids > 0].tolist())
    assert hit_ids and hit_ids <= set(s.lidar_actors.ids.tolist())


def test_next_tick_delivery_is_the_same_frame_one_tick_later(town01):
    """Default delivery: the frame completed at tick k comes with tick k + 1, stamped t_k, with the
    ego and actors of tick k; it is the frame same-tick delivery gives at tick k, bit for bit."""
    runs = {}
    for delivery in ("same_tick", "next_tick"):
        config = WorldConfig(lidar_delivery=delivery)
        config.traffic.vehicles, config.traffic.pedestrians = 50, 50
        world = World(town01, config, seed=5)
        runs[delivery] = [world.reset(None)] + [world.tick(Command(0.03, 1.5)) for _ in range(9)]
        world.close()
    same, late = runs["same_tick"], runs["next_tick"]
    assert [s.tick for s in same if s.lidar is not None] == [2, 4, 6, 8]
    assert [s.tick for s in late if s.lidar is not None] == [3, 5, 7, 9]
    for k in (2, 4, 6, 8):
        a, b = same[k], late[k + 1]
        assert b.lidar.stamp == a.lidar.stamp == pytest.approx(a.t)
        assert np.array_equal(a.lidar.points, b.lidar.points) and np.array_equal(a.lidar.actor_ids, b.lidar.actor_ids)
        assert (b.lidar_ego.x, b.lidar_ego.y, b.lidar_ego.yaw) == (late[k].ego.x, late[k].ego.y, late[k].ego.yaw)
        assert np.array_equal(b.lidar_actors.center, late[k].actors.center)
        assert a.lidar_actors is a.actors and a.lidar_ego is a.ego


def test_netconvert_failure_names_the_file(tmp_path):
    bad = tmp_path / "broken.xodr"
    bad.write_text('<OpenDRIVE><header/><road id="1" length="abc"><planView/></road></OpenDRIVE>')
    with pytest.raises(DataError, match="broken.xodr: netconvert failed: Error"):
        build_net(bad)


def test_bad_reset_pose_is_a_clear_error(town01):
    world = World(town01, WorldConfig(lidar=False), seed=0)
    with pytest.raises(DataError, match="ego pose"):
        world.reset((1.0, float("nan"), 0.0))
    with pytest.raises(RuntimeError):
        World(town01, WorldConfig(lidar=False)).tick(Command())


def test_world_config_file_loads_and_rejects_unknown_keys(tmp_path):
    config = WorldConfig.load()
    assert config.dt == 0.05 and config.traffic.vehicles == 100 and config.vehicle.wheelbase == 2.85
    assert [t.name for t in config.traffic.vehicle_types][-1] == "bicycle"
    bad = tmp_path / "w.param.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    traffic:\n      vehicels: 3\n")
    with pytest.raises(DataError, match="vehicels"):
        WorldConfig.load(bad)


def test_a_generated_junction_map_gets_traffic_and_its_four_lights():
    from hdmap.map import load_map
    hd_map = load_map("junction4")
    world, states = run_world(hd_map, 2.0, vehicles=20, pedestrians=10)
    world.close()
    lights = states[-1].traffic_lights
    assert {l.map_signal_id for l in lights} == {s.id for s in hd_map.traffic_lights} and len(lights) == 4
    assert len(states[-1].actors) == 30


@pytest.mark.parametrize("traffic, message", [
    ({"vehicle_types": [{"name": "tank", "vclass": "armour"}]}, "unknown SUMO vClass"),
    ({"vehicle_types": [{"name": "ego"}]}, "unique"),
    ({"vehicles": -1}, ">= 0"),
    ({"pedestrian_size": [0.5, 0.5]}, "pedestrian_size"),
])
def test_bad_traffic_parameters_are_rejected(traffic, message):
    from adstack.config import from_dict
    with pytest.raises(DataError, match=message):
        from_dict(WorldConfig, {"traffic": traffic})


def test_snapshot_lidar_points_lie_in_the_boxes_they_are_labelled_with(town01):
    from sim.lidar import rotation_rpy, sensor_pose_from_ego
    config = WorldConfig(lidar_mode="snapshot", scenery=False)
    config.traffic.vehicles, config.traffic.pedestrians = 100, 100
    world = World(town01, config, seed=2)
    state = world.reset(None)
    frames = []
    for _ in range(6):
        state = world.tick(Command(0.0, 1.0))
        if state.lidar is not None:
            frames.append(state)
    lidar_config = world.lidar.lidar.config
    world.close()
    assert [f.tick for f in frames] == [2, 4, 6]  # whole revolutions at 10 Hz
    s = frames[-1]
    pose = sensor_pose_from_ego(s.ego, lidar_config)
    xyz = s.lidar.points[:, :3].astype(np.float64) @ rotation_rpy(*pose[3:]).T + pose[:3]
    hit = s.lidar.actor_ids > 0
    assert hit.sum() > 100
    index = {int(i): k for k, i in enumerate(s.actors.ids)}
    k = np.array([index[int(i)] for i in s.lidar.actor_ids[hit]])
    rel = xyz[hit] - s.actors.center[k]
    c, sn = np.cos(s.actors.yaw[k]), np.sin(s.actors.yaw[k])
    local = np.stack([c * rel[:, 0] + sn * rel[:, 1], -sn * rel[:, 0] + c * rel[:, 1], rel[:, 2]], axis=1)
    inside = np.all(np.abs(local) <= s.actors.size[k] / 2 + 0.1, axis=1)  # + range noise
    assert inside.mean() > 0.99
    assert np.array_equal(s.lidar.labels[hit], s.actors.label[k])


def test_background_lidar_thread_changes_no_bit_of_the_world(town01, tmp_path):
    """The default lidar casts part of each revolution on a background thread (cast_threads 2) while
    SUMO steps; a world with everything on one thread must produce the same states, bit for bit."""
    from sim.lidar import DEFAULT_PARAMS
    serial = tmp_path / "serial.param.yaml"
    serial.write_text(DEFAULT_PARAMS.read_text().replace("cast_threads: 2", "cast_threads: 1"))
    runs = []
    for params in ("", str(serial)):
        config = WorldConfig(lidar_params=params)
        config.traffic.vehicles, config.traffic.pedestrians = 60, 60
        world = World(town01, config, seed=4)
        threads = world.lidar.lidar.config.cast_threads
        states = [world.reset(None)] + [world.tick(Command(0.02, 1.0)) for _ in range(8)]
        world.close()
        runs.append((threads, [s for s in states if s.lidar is not None], states))
    assert [r[0] for r in runs] == [2, 1]
    (_, frames_a, states_a), (_, frames_b, states_b) = runs
    assert len(frames_a) == len(frames_b) == 3  # ticks 3, 5, 7: a tick after each completes
    for a, b in zip(frames_a, frames_b):
        assert np.array_equal(a.lidar.points, b.lidar.points) and np.array_equal(a.lidar.actor_ids, b.lidar.actor_ids)
    assert all(np.array_equal(a.actors.center, b.actors.center) for a, b in zip(states_a, states_b))


def test_bench_sim_reports_the_issue_numbers():
    """`adstack bench sim --json` prints these keys (sim.bench.bench_sim); values from a short run."""
    from sim.bench import bench_sim
    result = bench_sim(seconds=0.5, vehicles=20, pedestrians=20)
    assert result["ticks"] == 10 and result["lidar_frames"] == 4  # delivered on ticks 3, 5, 7, 9
    for key in ("realtime_factor", "cpu_realtime_factor", "lidar_ms_per_frame", "lidar_cast_cpu_ms_per_frame",
                "main_thread_cpu_ms_per_tick"):
        assert result[key] > 0, key
    assert len(result["loadavg"]) == 3 and result["mean_points_per_frame"] > 10000
    assert result["children_cpu_ms_per_tick"] >= 0.0  # SUMO's and the lidar's processes (10 ms resolution)
    assert result["traffic_process"] and result["lidar_process"]
