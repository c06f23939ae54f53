"""Safety layer: passes clear paths, stops before obstacles, controlled stop on stale or bad input."""

import math

import numpy as np

from adstack.types import Boxes, EgoState, Trajectory
from planning.safety import SafetyConfig, SafetyLayer


def straight(v=10.0, length=60.0):
    x = np.arange(0, length, 1.0)
    t = x / v
    return Trajectory(np.column_stack([x, np.zeros_like(x), np.zeros_like(x), np.full_like(x, v), t]))


def car(x, y, vx=0.0, vy=0.0, yaw=0.0, oid=7):
    return Boxes([[x, y, 0.8]], [[4.5, 1.9, 1.5]], [yaw], [1], None, [[vx, vy]], [oid])


def stop_point(traj):
    stopped = np.flatnonzero(traj.points[:, 3] <= 1e-6)
    s = np.concatenate([[0], np.cumsum(np.hypot(np.diff(traj.points[:, 0]), np.diff(traj.points[:, 1])))])
    return s[stopped[0]] if len(stopped) else math.inf


def test_clear_path_passes_unchanged():
    layer = SafetyLayer()
    traj = straight()
    out, status = layer.check(EgoState(0, 0, 0, 10), traj, car(20, 6.0), 0.0)
    assert status.ok and status.action == "pass"
    assert np.array_equal(out.points, traj.points)


def test_stops_before_a_stopped_car_in_the_path():
    cfg = SafetyConfig()
    out, status = SafetyLayer(cfg).check(EgoState(0, 0, 0, 10), straight(), car(30, 0.0), 0.0)
    assert not status.ok and status.conflict_object_id == 7
    # The ego's front (rear axle + offset + half length) stays behind the car's rear bumper.
    front_at_stop = stop_point(out) + cfg.ego_center_offset_m + cfg.ego_length_m / 2
    assert front_at_stop <= 30 - 4.5 / 2
    assert stop_point(out) > 5  # but it does not stop absurdly early


def test_crossing_object_predicted_into_the_path_triggers_a_stop():
    # 20 m ahead, 10 m to the left, moving right at 5 m/s: it reaches the path in about 2 s.
    out, status = SafetyLayer().check(EgoState(0, 0, 0, 10), straight(), car(20, 10, vy=-5, yaw=-math.pi / 2), 0.0)
    assert not status.ok


def test_emergency_when_comfortable_braking_is_not_enough():
    out, status = SafetyLayer().check(EgoState(0, 0, 0, 15), straight(v=15), car(14, 0), 0.0)
    assert status.action == "emergency_stop"


def test_stale_inputs_and_garbage_give_a_controlled_stop():
    layer = SafetyLayer()
    ego = EgoState(0, 0, 0, 10)
    out, status = layer.check(ego, straight(), None, 0.0, stale_inputs=["objects"])
    assert status.action == "minimal_risk_stop"
    decel_distance = 10 ** 2 / (2 * layer.config.stop_decel_mps2)
    assert abs(stop_point(out) - decel_distance) < 1.5
    bad = straight()
    bad.points[3, 0] = np.nan
    out, status = layer.check(ego, bad, None, 0.0)
    assert status.action == "minimal_risk_stop" and np.all(np.isfinite(out.points))
    out, status = layer.check(ego, None, None, 0.0)
    assert status.action == "minimal_risk_stop" and len(out) >= 2


def test_broad_phase_changes_no_decision():
    """The reach filter only skips work: on random scenes with many far and near actors, curved
    paths and fast crossers, the verdict equals the full disc test's (filter disabled)."""
    rng = np.random.default_rng(3)
    full = SafetyLayer()
    full._within_reach = lambda objects, *args: objects  # every object through the disc test
    fast = SafetyLayer()
    conflicts = 0
    for _ in range(200):
        v = rng.uniform(0, 15)
        s = np.linspace(0, 60, 61)
        curvature = rng.uniform(-0.03, 0.03)
        yaw = curvature * s
        x = np.concatenate([[0], np.cumsum(np.cos(yaw[:-1]))])
        y = np.concatenate([[0], np.cumsum(np.sin(yaw[:-1]))])
        traj = Trajectory(np.column_stack([x, y, yaw, np.full_like(s, v), s / max(v, 0.5)]))
        n = 150
        objects = Boxes(np.column_stack([rng.uniform(-80, 120, n), rng.uniform(-80, 80, n), np.full(n, 0.8)]),
                        np.column_stack([rng.uniform(0.5, 9, n), rng.uniform(0.5, 2.6, n), np.full(n, 1.5)]),
                        rng.uniform(-math.pi, math.pi, n), np.ones(n, int), None, rng.uniform(-15, 15, (n, 2)),
                        np.arange(n))
        a_traj, a = full.check(EgoState(0, 0, 0, v), traj, objects, 0.0)
        b_traj, b = fast.check(EgoState(0, 0, 0, v), traj, objects, 0.0)
        assert (a.ok, a.action, a.conflict_object_id) == (b.ok, b.action, b.conflict_object_id)
        assert np.array_equal(a_traj.points, b_traj.points)
        conflicts += not a.ok
    assert 20 < conflicts < 180  # the scenes exercise both verdicts


def test_a_car_behind_or_in_the_rear_does_not_hold_the_ego():
    """A follower standing close behind, or one stuck in the ego's rear after a collision: stopping
    cannot avoid it, so the plan passes. The same car ahead, or cutting in from behind into the
    front half, is still braked for."""
    layer = SafetyLayer()
    cfg = layer.config
    ego = EgoState(0, 0, 0, 3.0)
    rear_bumper = cfg.ego_center_offset_m - cfg.ego_length_m / 2  # x of the ego's rear
    for x in (rear_bumper - 2.25 - 0.3, rear_bumper - 2.25 + 1.0):  # 0.3 m behind; 1 m into the rear
        _, status = layer.check(ego, straight(3.0), car(x, 0.0, oid=218), 0.0)
        assert status.ok, (x, status)
    _, status = layer.check(ego, straight(3.0), car(12.0, 0.0), 0.0)
    assert not status.ok
    # from behind-left at 12 m/s, cutting into the lane ahead within the horizon
    _, status = layer.check(EgoState(0, 0, 0, 3.0), straight(3.0), car(-6.0, 3.5, vx=12.0, vy=-1.5, yaw=-0.12), 0.0)
    assert not status.ok


def walker(x, y, vx=0.0, vy=0.0, oid=5):
    return Boxes([[x, y, 0.9]], [[0.5, 0.6, 1.75]], [math.atan2(vy, vx) if vx or vy else 0.0], [2], None, [[vx, vy]],
                 [oid])


def test_a_walker_in_the_path_counts_even_if_it_would_walk_clear():
    """A pedestrian 7 m ahead, 0.4 m off the path, crossing at 1.2 m/s: at constant velocity it clears
    before the car arrives, but walkers stop or turn at once, so it is also checked standing there.
    One walking along the kerb 2.2 m to the side is passed."""
    layer = SafetyLayer()
    ego = EgoState(0, 0, 0, 3.9)
    _, status = layer.check(ego, straight(3.9), walker(7.0 + 1.35, -0.4, vy=-1.2), 0.0)
    assert not status.ok and status.conflict_object_id == 5
    _, status = layer.check(ego, straight(3.9), walker(7.0, -2.2, vx=1.3), 0.0)
    assert status.ok
