"""SUMO and the lidar in their own processes (sim/traffic_process.py, sim/lidar_process.py): the
same world, bit for bit, as everything in this process, and clear errors when a child dies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adstack.paths import shared_data_dir
from adstack.types import Command
from sim.lane_follower import LaneFollower
from sim.vehicle import BicycleModel, VehicleParams
from sim.world import World, WorldConfig

TICKS = 90


@pytest.fixture(scope="module")
def town01():
    from hdmap import load_map
    return load_map(shared_data_dir() / "maps" / "carla" / "Town01.xodr")


def _config(traffic_process: bool, lidar_process: bool) -> WorldConfig:
    cfg = WorldConfig.load()
    cfg.traffic.vehicles, cfg.traffic.pedestrians = 40, 40
    cfg.traffic_process, cfg.lidar_process = traffic_process, lidar_process
    return cfg


def _run(hd_map, cfg: WorldConfig, caster=None):
    """TICKS ticks behind the lane follower; ``caster(world)`` replaces the world's choice of who
    casts the lidar. Returns the states and the flushed last frame."""
    world = World(hd_map, cfg, seed=4)
    if caster is not None:
        world._choose_lidar_caster = lambda caller_s: caster(world)
    try:
        state = world.reset(None)
        driver = LaneFollower(hd_map.carla_map, cfg.vehicle, seed=4)
        states = []
        for _ in range(TICKS):
            state = world.tick(driver.step(state))
            states.append(state)
        return states, world.flush_lidar()
    finally:
        world.close()


def _same_cloud(a, b) -> bool:
    return (a.stamp == b.stamp and np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.actor_ids, b.actor_ids))


def test_child_processes_give_the_world_of_one_process_bit_for_bit(town01):
    reference, last_reference = _run(town01, _config(False, False))
    # lidar shares cast here and in the lidar process in turn, revolutions mixing both
    mixed, last_mixed = _run(town01, _config(True, True),
                             caster=lambda w: setattr(w.lidar, "cast_here", w._tick % 3 == 0))
    assert any(s.ego.v > 1.0 for s in reference)  # the ego drives, so where SUMO has it matters
    frames = 0
    for a, b in zip(reference, mixed):
        assert (a.ego.x, a.ego.y, a.ego.yaw, a.ego.v) == (b.ego.x, b.ego.y, b.ego.yaw, b.ego.v)
        assert np.array_equal(a.actors.ids, b.actors.ids)
        assert np.array_equal(a.actors.center, b.actors.center) and np.array_equal(a.actors.velocity, b.actors.velocity)
        assert [(l.id, l.state) for l in a.traffic_lights] == [(l.id, l.state) for l in b.traffic_lights]
        assert (a.lidar is None) == (b.lidar is None)
        if a.lidar is not None:
            frames += 1
            assert _same_cloud(a.lidar, b.lidar)
            assert np.array_equal(a.lidar_actors.center, b.lidar_actors.center)
    assert frames >= TICKS // 2 - 2
    assert _same_cloud(last_reference, last_mixed)


def test_the_world_chooses_who_casts_by_how_busy_its_caller_is(town01):
    cfg = _config(True, True)
    cfg.lidar = True
    world = World(town01, cfg, seed=1)
    try:
        world.reset(None)
        for _ in range(100):
            world._choose_lidar_caster(0.0001)  # a caller that hardly works between ticks
        assert world.lidar.cast_here
        for _ in range(100):
            world._choose_lidar_caster(0.005)  # a planner's 5 ms
        assert not world.lidar.cast_here
    finally:
        world.close()


@pytest.mark.parametrize("child", ["traffic", "lidar"])
def test_a_dead_child_process_is_a_clear_error(town01, child):
    cfg = _config(True, True)
    world = World(town01, cfg, seed=2)
    try:
        world.reset(None)
        world.lidar.cast_here = False
        world._choose_lidar_caster = lambda caller_s: None
        world.tick(Command())
        proc = world.traffic._proc if child == "traffic" else world.lidar.process._proc
        proc.kill()
        proc.wait()
        name = "SUMO" if child == "traffic" else "lidar"
        with pytest.raises(RuntimeError, match=f"the {name} process ended"):
            for _ in range(4):  # the lidar is waited for on the tick after a revolution completes
                world.tick(Command())
    finally:
        world.close()


def test_children_end_with_their_parents_connection(town01):
    """A child whose parent goes away without closing it (a crash) ends on its own."""
    world = World(town01, _config(True, True), seed=0)
    world.reset(None)
    procs = [world.traffic._proc, world.lidar.process._proc]
    world.traffic._conn.close()  # what the operating system does to a parent that dies
    world.lidar.process._conn.close()
    for proc in procs:
        assert proc.wait(timeout=20) == 0


def test_predict_is_step_without_stepping():
    model = BicycleModel(VehicleParams())
    from adstack.types import EgoState
    model.reset(EgoState(1.0, 2.0, 0.3, 8.0))
    command = Command(steer=0.2, accel=-3.0)
    before = model.state
    predicted = model.predict(command, 0.05)
    assert model.state is before
    stepped = model.step(command, 0.05)
    assert (predicted.x, predicted.y, predicted.yaw, predicted.v) == (stepped.x, stepped.y, stepped.yaw, stepped.v)
    assert math.isclose(stepped.v, 8.0 + stepped.accel * 0.05)
