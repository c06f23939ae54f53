"""Actors as longitudinal constraints on the route: leaders, things standing in the path, crossers.

All actors are handled at once as arrays. Each actor is predicted at constant velocity over a short
horizon, every predicted footprint is projected onto the route window (arc length ``along`` and
signed ``lateral`` offset), and a footprint counts as *in the path* when the ego's swept corridor
(half its width + the actor's half extent across the path + a margin) covers it. Then:

- in the path now, ahead of the ego front: an obstacle at its near edge, moving with the speed
  component along the path if it heads the same way (a leader, standing or not), coming at the ego
  if it is oncoming, else standing;
- not in the path now but predicted to enter it: a crossing actor. Pedestrians are always yielded
  to; vehicles when they would get there before the ego is through (plus a margin). Vehicles that
  move parallel or anti-parallel to the path beside it (the next lane, oncoming traffic) are lane
  traffic, not crossers, and are left to the first rule if they ever enter the path;
- a vehicle in the next lane just ahead that the ego would pass only slowly is followed like a
  leader: the ego does not creep up alongside it, where its lane change could not be braked away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adstack.types import Boxes, ObjectClass
from planning.expert_config import ExpertConfig
from planning.route_view import RouteView, wrap_angle

KIND_LEADER = 0  # in the path, moving along it
KIND_STANDING = 1  # in the path, standing or moving across
KIND_CROSSING = 2  # predicted to enter the path
KIND_ADJACENT = 3  # in the next lane just ahead, about as fast as the ego: do not creep up beside it

# Pedestrians that reach the junction's exit crossing within this also count: about the time the
# ego needs from a standstill at the entry until its tail has cleared the exit crossing.
EXIT_CROSSING_LOOKAHEAD_S = 6.0
RELAXED_MARGIN_M = 0.1  # deadlock mode: lateral margin to vehicles
RELAXED_MIN_GAP_M = 1.0  # deadlock mode: standstill gap to vehicles


@dataclass
class ActorObstacles:
    """Obstacles along the route: s (near edge, route arc length), speed along the route, min gap."""

    s: np.ndarray
    speed: np.ndarray
    min_gap: np.ndarray
    kind: np.ndarray
    ids: np.ndarray
    label: np.ndarray
    # Arc lengths of pedestrians standing or walking at the kerb beside the path, ahead: pass them
    # slowly, they may step out (a SUMO pedestrian waiting at a crossing starts at full speed).
    caution_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @staticmethod
    def empty() -> "ActorObstacles":
        z = np.zeros(0)
        return ActorObstacles(z, z, z, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def actor_obstacles(actors: Boxes | None, route: RouteView, window: slice, ego_xy: np.ndarray, s_front: float,
                    s_rear: float, arrival_time, config: ExpertConfig, relaxed: bool = False,
                    ego_speed: float = 0.0) -> ActorObstacles:
    """Constraints from ``actors`` (map frame) on the route points ``window``.

    ``arrival_time(s)`` -> the ego's planned arrival time at route arc length s (array in, array out).
    ``relaxed``: deadlock mode: the lateral margin and standstill gap to vehicles shrink (never to pedestrians).
    """
    if actors is None or len(actors) == 0:
        return ActorObstacles.empty()
    ac = config.actors
    path, tangent, normal = route.path[window], route.tangent[window], route.normal[window]
    s_path = route.s[window]
    finite = np.isfinite(actors.center[:, :2]).all(axis=1) & np.isfinite(actors.velocity).all(axis=1)
    near = finite & (np.hypot(*(np.where(finite[:, None], actors.center[:, :2], 1e9) - ego_xy).T) < ac.range_m)
    if near.any():
        # Only actors that could reach the corridor within the horizon: distance to the path now
        # minus the distance they can travel (no prediction, no per-step work for the rest).
        c = actors.center[near, :2]
        reach = (config.ego.width_m / 2 + 0.5 * np.hypot(actors.size[near, 0], actors.size[near, 1])
                 + ac.lateral_margin_pedestrian_m + ac.kerb_zone_m
                 + np.hypot(*actors.velocity[near].T) * ac.prediction_horizon_s)
        near[np.flatnonzero(near)] = _min_dist2(c, path) < reach ** 2
    if not near.any():
        return ActorObstacles.empty()
    a = actors.select(near)
    n = len(a)

    taus = np.arange(0.0, ac.prediction_horizon_s + 1e-9, ac.prediction_step_s)  # (K,)
    pred = a.center[:, None, :2] + a.velocity[:, None, :] * taus[None, :, None]  # (N,K,2)
    flat = pred.reshape(-1, 2)
    j = np.argmin(_dist2(flat, path), axis=1)
    rel = flat - path[j]
    along = (s_path[j] + np.einsum("ij,ij->i", rel, tangent[j])).reshape(n, -1)
    lateral = np.einsum("ij,ij->i", rel, normal[j]).reshape(n, -1)
    # Outside the window's ends the projection is extrapolated; the far end is no constraint anyway.
    beyond = (j == len(path) - 1).reshape(n, -1) & (along > s_path[-1])

    path_yaw_now = np.arctan2(tangent[j.reshape(n, -1)[:, 0], 1], tangent[j.reshape(n, -1)[:, 0], 0])
    rel_yaw = wrap_angle(a.yaw - path_yaw_now)
    half_len, half_wid = a.size[:, 0] / 2, a.size[:, 1] / 2
    extent_across = np.abs(half_len * np.sin(rel_yaw)) + np.abs(half_wid * np.cos(rel_yaw))
    extent_along = np.abs(half_len * np.cos(rel_yaw)) + np.abs(half_wid * np.sin(rel_yaw))
    is_ped = a.label == int(ObjectClass.PEDESTRIAN)
    margin = np.where(is_ped, ac.lateral_margin_pedestrian_m, ac.lateral_margin_vehicle_m)
    # A pedestrian walking along the path (the pavement beside it) is passed like lane traffic, with
    # a smaller margin: stopping for it leaves the ego standing where it walks onto a crossing later.
    # It is still passed slowly (kerb), and yielded to once it turns to cross.
    walking_along = (is_ped & (np.hypot(a.velocity[:, 0], a.velocity[:, 1]) > ac.moving_speed_mps)
                     & ((np.abs(rel_yaw) < ac.parallel_heading_rad) | (np.abs(rel_yaw) > np.pi - ac.parallel_heading_rad)))
    margin = np.where(walking_along, ac.lateral_margin_pedestrian_along_m, margin)
    if relaxed:  # deadlock: squeeze past vehicles, and past pedestrians standing beside the body
        standing_ped = is_ped & (np.hypot(a.velocity[:, 0], a.velocity[:, 1]) <= ac.moving_speed_mps)
        margin = np.where(is_ped, np.where(walking_along | standing_ped, ac.lateral_margin_pedestrian_along_m,
                                           ac.lateral_margin_pedestrian_m), RELAXED_MARGIN_M)
    half_corridor = config.ego.width_m / 2 + extent_across + margin
    # On a curve the body swings out on the outer side only (lateral opposite to the curvature's sign);
    # the inner side, where pedestrians wait at the corner, keeps the plain corridor.
    outer = (lateral * route.curvature[window][j].reshape(n, -1)) < 0.0
    sweep = np.where(outer, route.body_sweep[window][j].reshape(n, -1), 0.0)
    inside = (np.abs(lateral) < half_corridor[:, None] + sweep) & ~beyond
    ahead = along + extent_along[:, None] > s_front
    # Beside or behind the ego body: not ours to brake for (and a rear-ender cannot be braked away).
    not_behind = along + extent_along[:, None] > s_rear + 0.5
    in_path = inside & ahead & not_behind

    speed_along = np.einsum("ij,ij->i", a.velocity, tangent[j.reshape(n, -1)[:, 0]])
    speed = np.hypot(a.velocity[:, 0], a.velocity[:, 1])
    moving = speed > ac.moving_speed_mps
    aligned = np.abs(rel_yaw) < ac.parallel_heading_rad
    anti_aligned = np.abs(rel_yaw) > np.pi - ac.parallel_heading_rad

    now = in_path[:, 0]
    s_now = along[:, 0] - extent_along
    leader = now & aligned & ~is_ped  # a queue too: standing vehicles heading our way are leaders at 0 m/s
    out_s = [s_now[now]]
    # Leaders move on at their speed; an oncoming vehicle in the path comes at us (negative speed);
    # anything else in the path is taken as standing.
    oncoming = anti_aligned & ~is_ped
    out_v = [np.where(leader, np.maximum(speed_along, 0.0), np.where(oncoming, np.minimum(speed_along, 0.0), 0.0))[now]]
    out_kind = [np.where(leader, KIND_LEADER, KIND_STANDING)[now]]
    out_idx = [np.flatnonzero(now)]

    later = in_path[:, 1:].any(axis=1) & ~now & moving
    lane_traffic = (aligned | anti_aligned) & ~is_ped
    crossing = later & ~lane_traffic
    if crossing.any():
        first = np.argmax(in_path[:, 1:], axis=1) + 1  # first predicted step in the path
        rows = np.flatnonzero(crossing)
        k = first[rows]
        s_entry = along[rows, k] - extent_along[rows]
        t_entry = taus[k]
        # The ego is through the conflict when its rear has passed the far edge of the actor.
        t_ego_clear = arrival_time(s_entry + 2 * extent_along[rows] + config.ego.length_m)
        yield_now = is_ped[rows] | (t_entry < t_ego_clear + ac.yield_time_margin_s)
        rows, s_entry = rows[yield_now], s_entry[yield_now]
        out_s.append(s_entry)
        out_v.append(np.zeros(len(rows)))
        out_kind.append(np.full(len(rows), KIND_CROSSING))
        out_idx.append(rows)

    kerb = (is_ped & ~now & ~in_path[:, 1:].any(axis=1) & ~beyond[:, 0]
            & (np.abs(lateral[:, 0]) < half_corridor + (ac.lateral_margin_pedestrian_m - margin) + ac.kerb_zone_m)
            & (along[:, 0] > s_front) & (along[:, 0] < s_front + ac.kerb_lookahead_m))
    caution_s = along[kerb, 0]

    # Moving vehicles in the next lane just ahead that the ego would overtake only slowly: stay
    # behind them rather than drive alongside (where a lane change of theirs cannot be braked
    # away). A queue standing in the next lane is passed.
    closing = ego_speed - speed_along
    adjacent = (~now & aligned & ~is_ped & ~beyond[:, 0]
                & (np.abs(lateral[:, 0]) >= half_corridor) & (np.abs(lateral[:, 0]) < half_corridor + ac.adjacent_lane_m)
                & (s_now > s_front) & (s_now < s_front + ac.adjacent_lookahead_m)
                & (closing < ac.min_overtake_speed_mps) & (speed_along > ac.adjacent_min_speed_mps))
    if adjacent.any():
        rows = np.flatnonzero(adjacent)
        out_s.append(s_now[rows])
        out_v.append(np.maximum(speed_along[rows], 0.0))
        out_kind.append(np.full(len(rows), KIND_ADJACENT))
        out_idx.append(rows)

    idx = np.concatenate(out_idx).astype(np.int64)
    label = a.label[idx].astype(np.int64)
    min_gap = np.where(label == int(ObjectClass.PEDESTRIAN), config.idm.min_gap_pedestrian_m,
                       config.idm.min_gap_vehicle_m)
    if relaxed:
        min_gap = np.where(label == int(ObjectClass.PEDESTRIAN), min_gap, RELAXED_MIN_GAP_M)
    return ActorObstacles(np.concatenate(out_s), np.concatenate(out_v), min_gap, np.concatenate(out_kind).astype(np.int64),
                          a.ids[idx], label, caution_s)


def _dist2(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """(P,W) squared distances, as |p|^2 - 2 p.q + |q|^2 (one matrix product, no (P,W,2) temporary)."""
    return (np.einsum("ij,ij->i", points, points)[:, None] - 2.0 * points @ path.T
            + np.einsum("ij,ij->i", path, path)[None, :])


def _min_dist2(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    return np.maximum(_dist2(points, path).min(axis=1), 0.0)


def pedestrians_crossing_near(actors: Boxes | None, route: RouteView, window: slice, s_lo: float, s_hi: float,
                              max_lateral_m: float, moving_speed_mps: float) -> np.ndarray:
    """Ids of pedestrians on or at the route between arc lengths s_lo and s_hi, now or within
    EXIT_CROSSING_LOOKAHEAD_S: walking within ``max_lateral_m`` of it, or standing on the road within the corridor."""
    if actors is None or len(actors) == 0:
        return np.zeros(0, np.int64)
    peds = (actors.label == int(ObjectClass.PEDESTRIAN)) & np.isfinite(actors.center[:, :2]).all(axis=1)
    if not peds.any():
        return np.zeros(0, np.int64)
    path, tangent, normal, s_path = route.path[window], route.tangent[window], route.normal[window], route.s[window]
    vel = np.nan_to_num(actors.velocity[peds])
    speed = np.hypot(vel[:, 0], vel[:, 1])
    near = np.zeros(len(speed), dtype=bool)
    # Where they are now and where they will be by the time the ego could be through the junction.
    for horizon_s in (0.0, 0.5 * EXIT_CROSSING_LOOKAHEAD_S, EXIT_CROSSING_LOOKAHEAD_S):
        xy = actors.center[peds, :2] + vel * horizon_s
        j = np.argmin(_dist2(xy, path), axis=1)
        rel = xy - path[j]
        along = s_path[j] + np.einsum("ij,ij->i", rel, tangent[j])
        lateral = np.einsum("ij,ij->i", rel, normal[j])
        # Walking across, or along the pavement into the crossing zone: SUMO's walkers turn onto a
        # crossing without looking at the ego, so one that will be there counts whichever way it walks.
        crossing = (speed > moving_speed_mps) & (np.abs(lateral) < max_lateral_m)
        standing_on_road = (speed <= moving_speed_mps) & (np.abs(lateral) < route.config.ego.width_m / 2 + 1.0)
        near |= (along > s_lo) & (along < s_hi) & (crossing | standing_on_road)
    return actors.ids[np.flatnonzero(peds)[near]]
