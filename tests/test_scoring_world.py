"""Leaderboard scoring in the closed loop of the embedded world (carla.Map + SUMO), Town01.

A naive pure-pursuit driver follows Leaderboard 1.0 training route 0 at 8 m/s and ignores lights
and traffic, so the real world has to produce red-light runs and collisions that the scorer
records, types and prices by the Leaderboard's rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("carla")
pytest.importorskip("libsumo")

from adstack.paths import shared_data_dir  # noqa: E402
from adstack.types import Command  # noqa: E402
from sim.scoring import LB2, infraction_penalty, results_json, scorer_from_hdmap  # noqa: E402

DATA = shared_data_dir()
TOWN01 = DATA / "maps" / "carla" / "Town01.xodr"
ROUTES = DATA / "routes" / "leaderboard1_routes_training.xml"


@pytest.mark.skipif(not (TOWN01.is_file() and ROUTES.is_file()), reason="shared reference data not found")
def test_naive_driver_runs_lights_and_hits_traffic_in_the_embedded_world():
    from hdmap.map import load_map
    from hdmap.routes import dense_route, load_routes
    from sim.world import World, WorldConfig

    hdmap = load_map(TOWN01)
    spec = {str(s.id): s for s in load_routes(ROUTES)}["0"]
    route = dense_route(hdmap, spec)
    cfg = WorldConfig.load()
    cfg.lidar = False
    veh = cfg.vehicle
    world = World(hdmap, cfg, seed=0)
    try:
        yaw0 = float(route.yaw[0])
        rear = route.path[0] - veh.center_offset * np.array([math.cos(yaw0), math.sin(yaw0)])
        state = world.reset((float(rear[0]), float(rear[1]), yaw0, 0.0))
        scorer = scorer_from_hdmap(hdmap, route, LB2, start_t=state.t, route_id=str(spec.id),
                                   ego_center_offset_m=veh.center_offset)
        idx = 0
        while not scorer.done and state.t < 150.0:
            e = state.ego
            window = route.path[idx:idx + 40]
            idx += int(np.argmin(np.hypot(window[:, 0] - e.x, window[:, 1] - e.y)))
            tx, ty = route.path[min(idx + 7, len(route.path) - 1)] - (e.x, e.y)
            lx = math.cos(e.yaw) * tx + math.sin(e.yaw) * ty
            ly = -math.sin(e.yaw) * tx + math.cos(e.yaw) * ty
            steer = math.atan2(2.0 * veh.wheelbase * ly, lx * lx + ly * ly)
            state = world.tick(Command(steer=steer, accel=float(np.clip(0.8 * (8.0 - e.v), -3.0, 2.0))))
            scorer.update(state.t, state.ego, (veh.length, veh.width), state.actors, None, state.traffic_lights)
    finally:
        world.close()
    r = scorer.result()
    assert r.status == "Completed" and r.route_completion == 100.0  # it follows the route to the end
    assert len(r.infractions["red_light"]) >= 1
    collisions = r.infractions["collisions_vehicle"] + r.infractions["collisions_pedestrian"]
    assert len(collisions) >= 1
    assert all(e.other_id is not None and e.other_id > 0 for e in collisions)
    ids = [e.other_id for e in r.infractions["collisions_vehicle"]]
    assert len(ids) == len(set(ids))  # each vehicle counted once (same actor within 5 s, 5 m radius)
    events = [e for evs in r.infractions.values() for e in evs]
    assert r.infraction_penalty == pytest.approx(round(infraction_penalty(events, LB2), 6))
    assert r.driving_score == pytest.approx(round(100.0 * infraction_penalty(events, LB2), 6))
    assert r.distance_driven_m == pytest.approx(route.total_length, rel=0.1)
    doc = results_json([r])
    assert doc["_checkpoint"]["records"][0]["num_infractions"] == r.num_infractions
