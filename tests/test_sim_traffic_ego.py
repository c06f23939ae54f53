"""How SUMO's road users treat the ego (sim/traffic.py's TrafficConfig): walkers and a vehicle standing
on their crossing, walkers about to walk into the standing ego, cars inserted on top of it."""

from contextlib import contextmanager

import pytest

from adstack.config import from_dict
from adstack.errors import DataError
from adstack.paths import shared_data_dir
from sim.traffic import Traffic, TrafficConfig, build_net


def test_walkers_wait_longer_for_a_vehicle_on_their_crossing():
    """SUMO's default lets walkers squeeze through a vehicle standing on their crossing after 10 s,
    which walks them into an ego waiting there for a queue: the world starts SUMO with the
    configured (longer) jam time."""
    cfg = TrafficConfig(vehicles=0, pedestrians=0)
    assert cfg.pedestrian_crossing_jam_s > 10.0
    traffic = Traffic(build_net(shared_data_dir() / "maps" / "carla" / "Town01.xodr"), cfg, 0.05, 0)
    traffic.start()
    try:
        value = traffic._ts.simulation.getOption("pedestrian.striping.jamtime.crossing")
        assert float(value) == pytest.approx(cfg.pedestrian_crossing_jam_s)
    finally:
        traffic.close()


def test_drivers_waiting_at_a_junction_grow_impatient_as_configured():
    """How long SUMO's drivers wait before taking any gap is the world's parameter (a left turner
    facing steady oncoming traffic blocked Town03 route 29, and the ego behind it, with 180 s)."""
    cfg = TrafficConfig(vehicles=0, pedestrians=0, time_to_impatience_s=45.0)
    traffic = Traffic(build_net(shared_data_dir() / "maps" / "carla" / "Town01.xodr"), cfg, 0.05, 0)
    traffic.start()
    try:
        assert float(traffic._ts.simulation.getOption("time-to-impatience")) == pytest.approx(cfg.time_to_impatience_s)
    finally:
        traffic.close()


@pytest.mark.parametrize("field, value", [("pedestrian_crossing_jam_s", 0.0), ("walker_hold_max_s", -1.0),
                                          ("spawn_clearance_m", -5.0), ("time_to_impatience_s", 0.0)])
def test_bad_ego_related_traffic_parameters_are_rejected(field, value):
    with pytest.raises(DataError, match=field):
        from_dict(TrafficConfig, {field: value})


def test_walkers_stop_short_of_the_standing_ego_and_walk_on_after():
    """SUMO's pavements cut into the map's lanes at junction corners, where walkers walked through
    a car standing in the lane. A walker about to walk into the standing ego is stopped, and walks
    on once the ego has gone."""
    import numpy as np
    from adstack.types import ObjectClass
    cfg = TrafficConfig(vehicles=0, pedestrians=30)
    traffic = Traffic(build_net(shared_data_dir() / "maps" / "carla" / "Town01.xodr"), cfg, 0.05, 5)
    traffic.start(ego_size=(4.7, 1.9, 1.5))
    try:
        traffic.refill()
        for _ in range(40):
            traffic.step()
        a = traffic.actors()
        walking = np.flatnonzero((a.label == int(ObjectClass.PEDESTRIAN)) & (a.speed > 0.8))
        assert len(walking)
        k = int(walking[0])
        sid = a.sumo_ids[k]
        heading = np.array([np.cos(a.yaw[k]), np.sin(a.yaw[k])])
        ego_xy = a.center[k, :2] + 3.5 * heading  # across its way, 3.5 m ahead
        ego_yaw = float(a.yaw[k] + np.pi / 2)

        def gap_to_ego():
            p = traffic.actors()
            j = p.sumo_ids.index(sid)
            rel = p.center[j, :2] - ego_xy
            along = abs(rel @ np.array([np.cos(ego_yaw), np.sin(ego_yaw)])) - 4.7 / 2
            across = abs(rel @ np.array([-np.sin(ego_yaw), np.cos(ego_yaw)])) - 1.9 / 2
            return max(along, across), p.speed[j]

        for _ in range(100):  # 5 s: the walker would have crossed the ego's box
            traffic.set_ego(ego_xy, ego_yaw, 0.0, 4.7)
            traffic.step()
            gap, _ = gap_to_ego()
            assert gap > 0.2
        assert gap_to_ego()[1] < 0.1  # stopped, not walked round
        far = ego_xy + 200.0
        for _ in range(40):  # the ego has gone: the walker walks on
            traffic.set_ego(far, ego_yaw, 5.0, 4.7)
            traffic.step()
        assert gap_to_ego()[1] > 0.5
    finally:
        traffic.close()


def _nearest_new_car(spawn_clearance_m: float) -> float:
    """Distance from the ego to the nearest car after 300 cars have been inserted around it."""
    import numpy as np
    cfg = TrafficConfig(vehicles=300, pedestrians=0, spawn_clearance_m=spawn_clearance_m)
    traffic = Traffic(build_net(shared_data_dir() / "maps" / "carla" / "Town01.xodr"), cfg, 0.05, 2)
    traffic.start(ego_size=(4.7, 1.9, 1.5))
    try:
        x, y, yaw = traffic.random_drive_pose(np.random.default_rng(4))
        traffic.set_ego((x, y), yaw, 0.0, 4.7)
        traffic.step()
        traffic.refill()
        traffic.set_ego((x, y), yaw, 0.0, 4.7)
        traffic.step()
        a = traffic.actors()
        return float(np.hypot(a.center[:, 0] - x, a.center[:, 1] - y).min())
    finally:
        traffic.close()


def test_no_car_is_inserted_on_top_of_the_ego():
    """SUMO inserts a new car at a free place on its first edge, but may not see the ego there;
    cars do not start on edges that pass close to the ego."""
    assert _nearest_new_car(0.0) < 20.0  # without the rule, cars start around it (13 m here)
    assert _nearest_new_car(TrafficConfig().spawn_clearance_m) > TrafficConfig().spawn_clearance_m - 5.0


@contextmanager
def _running_town01(cfg: TrafficConfig, seed: int, warm_steps: int = 40):
    """SUMO traffic on Town01 with the ego's size known, populated and stepped ``warm_steps`` ticks."""
    traffic = Traffic(build_net(shared_data_dir() / "maps" / "carla" / "Town01.xodr"), cfg, 0.05, seed)
    traffic.start(ego_size=(4.7, 1.9, 1.5))
    try:
        traffic.refill()
        for _ in range(warm_steps):
            traffic.step()
        yield traffic
    finally:
        traffic.close()


def test_a_walker_stuck_at_the_ego_leaves_after_the_longest_hold():
    """A walker head-on in front of the standing ego would be waited for by the ego in turn: after
    walker_hold_max_s it is taken out (and a new one put elsewhere), never walked into the car."""
    import numpy as np
    from adstack.types import ObjectClass
    with _running_town01(TrafficConfig(vehicles=0, pedestrians=30, walker_hold_max_s=2.0), seed=5) as traffic:
        a = traffic.actors()
        k = int(np.flatnonzero((a.label == int(ObjectClass.PEDESTRIAN)) & (a.speed > 0.8))[0])
        sid = a.sumo_ids[k]
        ego_xy = a.center[k, :2] + 3.5 * np.array([np.cos(a.yaw[k]), np.sin(a.yaw[k])])
        for _ in range(80):  # 4 s
            traffic.set_ego(ego_xy, float(a.yaw[k] + np.pi), 0.0, 4.7)  # facing it
            traffic.step()
        assert sid not in traffic._ts.person.getIDList()


def test_a_car_left_standing_inside_the_ego_after_a_collision_is_taken_out():
    """SUMO leaves a car that drove into the ego where it is, waiting at a negative gap, and the
    ego cannot pull away from a box inside its own: after stuck_in_ego_s it is taken out."""
    import numpy as np
    from adstack.types import ObjectClass
    with _running_town01(TrafficConfig(vehicles=10, pedestrians=0, stuck_in_ego_s=1.0), seed=6) as traffic:
        a = traffic.actors()
        k = int(np.flatnonzero(a.label == int(ObjectClass.VEHICLE))[0])
        sid = a.sumo_ids[k]
        traffic._ts.vehicle.setSpeed(sid, 0.0)  # it stands (as after running into the ego)
        for _ in range(120):
            traffic.step()
        a = traffic.actors()
        k = a.sumo_ids.index(sid)
        ego_xy = a.center[k, :2] + 1.5 * np.array([np.cos(a.yaw[k]), np.sin(a.yaw[k])])  # overlapping it
        for i in range(10):  # 0.5 s: not yet
            traffic.set_ego(ego_xy, float(a.yaw[k]), 0.0, 4.7)
            traffic.step()
            traffic.actors()
        assert sid in traffic._ts.vehicle.getIDList()
        for i in range(30):
            traffic.set_ego(ego_xy, float(a.yaw[k]), 0.0, 4.7)
            traffic.step()
            traffic.actors()
        assert sid not in traffic._ts.vehicle.getIDList()
