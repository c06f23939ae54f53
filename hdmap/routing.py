"""Lane graph and routing: shortest route by length, lane changes costed, dense 1 m paths.

Graph nodes are LaneKeys. A ``follow`` edge u->v (v a successor of u) costs u's length: taking it
means driving all of u. A ``lane_change`` edge u->v (v beside u, marking allows it, outside
junctions) costs ``lane_change_penalty_m``: the car moves across at the same fraction of the
section and then drives v. Start and goal sit part-way along lanes, so each query adds a START node
with edges to the successors of every lane reachable sideways from the start lane (cost: the rest of
that lane plus penalties) and a GOAL node reached from every lane that can change sideways into the
goal lane (cost: the goal's distance along it plus penalties).

A route is then a list of groups: lanes side by side joined by lane changes, driven from fraction
f_in to f_out of the section. Inside a group the path blends from one lane centre to the next over
``lane_change_length_m`` (a smoothstep), and the whole polyline is resampled at ``route_spacing_m``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from adstack.errors import UserError

FOLLOW, LANE_CHANGE = "follow", "lane_change"
_GRAPH_LOCK = threading.Lock()


@dataclass
class Route:
    """A dense route in map coordinates: path (N,2) m at ~1 m spacing, yaw (N,) rad, s (N,) m."""

    path: np.ndarray
    yaw: np.ndarray
    s: np.ndarray
    lane_keys: list                 # LaneKey of each point
    lane_change_indices: np.ndarray  # indices where the path has moved into the next lane sideways
    speed_limit: np.ndarray         # (N,) m/s
    total_length: float
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def lane_sequence(self) -> list:
        """Lanes in driving order, each once per visit."""
        return [k for i, k in enumerate(self.lane_keys) if i == 0 or k != self.lane_keys[i - 1]]

    def __len__(self) -> int:
        return len(self.path)


def build_lane_graph(hdmap) -> nx.DiGraph:
    graph = nx.DiGraph()
    penalty = hdmap.params.lane_change_penalty_m
    for key, lane in hdmap.lanes.items():
        graph.add_node(key)
        for succ in lane.successors:
            graph.add_edge(key, succ, cost=lane.length, kind=FOLLOW)
        for side in ("left", "right"):
            if getattr(lane, f"lane_change_{side}_range") is not None:
                graph.add_edge(key, getattr(lane, side), cost=penalty, kind=LANE_CHANGE,
                               legal=getattr(lane, f"lane_change_{side}"))
    return graph


def lateral_chains(hdmap, key, f_from: float = 0.0, f_to: float = 1.0, leaderboard: bool = False) -> dict:
    """Lanes reachable from ``key`` by lane changes alone -> the chain of lanes to them.

    Legal mode: each change needs the marking to allow it (``Lane.lane_change_left``/``_right``)
    somewhere between fractions ``f_from`` and ``f_to`` of the section, after the change before it.
    Leaderboard mode: as CARLA's GlobalRoutePlanner, a change is possible wherever the marking
    allows it anywhere along the lane.
    """
    chains = {key: [key]}
    for side in ("left", "right"):
        chain, lane, f_prev = [key], hdmap.lanes[key], f_from
        while True:
            nxt, stretch = getattr(lane, side), getattr(lane, f"lane_change_{side}_range")
            if nxt is None or stretch is None or nxt in chains:
                break
            if not leaderboard:
                if not getattr(lane, f"lane_change_{side}"):
                    break
                length = max(lane.length, 1e-9)
                low, high = max(stretch[0] / length, f_prev), min(stretch[1] / length, f_to)
                if low > high + 1e-9:
                    break
                f_prev = low
            chain = chain + [nxt]
            chains[nxt] = chain
            lane = hdmap.lanes[nxt]
    return chains


def _section_mates(hdmap, key) -> list:
    """Lanes of the same road section driving the same way as ``key`` (``key`` included)."""
    return hdmap.section_lanes[(key[0], key[1], key[2] > 0)]


def _plan_leg(hdmap, start, goal, what=("start", "goal"), leaderboard: bool = False) -> list:
    """Groups [(lane keys side by side, f_in, f_out)] from pose ``start`` to pose ``goal``.

    Every snap candidate of the start and of the goal (see ``HDMap.snap_candidates``) enters the
    search, its snap distance added to the cost, so overlapping junction lanes resolve to the one
    that actually leads to the goal. ``leaderboard``: lane changes as CARLA's GlobalRoutePlanner
    allows them (see ``lateral_chains``), else only where a legal change fits.
    """
    p = hdmap.params
    starts = hdmap.snap_candidates(*_pose(start), what=what[0])
    goals = hdmap.snap_candidates(*_pose(goal), what=what[1])
    penalty = p.lane_change_penalty_m

    best_cost, best_groups = math.inf, None
    start_chains = []
    for start_key, start_s, start_d in starts:
        f_start = start_s / max(hdmap.lanes[start_key].length, 1e-9)
        start_chains.append((f_start, start_d, lateral_chains(hdmap, start_key, f_start, 1.0, leaderboard)))
        for goal_key, goal_s, goal_d in goals:  # reachable along the start section, no junction between
            goal_length = hdmap.lanes[goal_key].length
            f_goal = goal_s / max(goal_length, 1e-9)
            chains = lateral_chains(hdmap, start_key, f_start, max(f_goal, f_start), leaderboard)
            if goal_key not in chains:
                continue
            ahead_m = (f_goal - f_start) * goal_length
            if ahead_m >= -p.backward_tolerance_m:
                cost = max(ahead_m, 0.0) + penalty * (len(chains[goal_key]) - 1) + start_d + goal_d
                if cost < best_cost:
                    best_cost, best_groups = cost, [(chains[goal_key], f_start, max(f_goal, f_start))]

    # START and GOAL join the shared graph only for this search (under a lock: copying the graph
    # for every leg cost 8 ms on Town04, more than the search itself).
    start_node, goal_node = ("START",), ("GOAL",)
    with _GRAPH_LOCK:
        graph = hdmap.graph
        graph.add_nodes_from([start_node, goal_node])
        try:
            for f_start, start_d, chains in start_chains:
                for key, chain in chains.items():
                    lane = hdmap.lanes[key]
                    cost = (1.0 - f_start) * lane.length + penalty * (len(chain) - 1) + start_d
                    for succ in lane.successors:
                        if not graph.has_edge(start_node, succ) or graph[start_node][succ]["cost"] > cost:
                            graph.add_edge(start_node, succ, cost=cost, chain=chain, f=f_start)
            for goal_key, goal_s, goal_d in goals:
                goal_length = hdmap.lanes[goal_key].length
                f_goal = goal_s / max(goal_length, 1e-9)
                for key in _section_mates(hdmap, goal_key):
                    chain = lateral_chains(hdmap, key, 0.0, f_goal, leaderboard).get(goal_key)
                    if chain is None:
                        continue
                    cost = f_goal * goal_length + penalty * (len(chain) - 1) + goal_d
                    if not graph.has_edge(key, goal_node) or graph[key][goal_node]["cost"] > cost:
                        graph.add_edge(key, goal_node, cost=cost, chain=chain, f=f_goal)
            try:
                weight = "cost" if leaderboard else _legal_cost
                cost, nodes = nx.single_source_dijkstra(graph, start_node, goal_node, weight=weight)
                groups = _groups_from_nodes(graph, nodes)
            except nx.NetworkXNoPath:
                cost, groups = math.inf, None
        finally:
            graph.remove_nodes_from([start_node, goal_node])
    if groups is not None and cost < best_cost:
        best_cost, best_groups = cost, groups
    if best_groups is None:
        raise UserError(f"no route from {what[0]} {_fmt_pose(start)} (lane {starts[0][0]}) to {what[1]} "
                        f"{_fmt_pose(goal)} (lane {goals[0][0]}) in the lane graph", hdmap.xodr_path)
    return best_groups


def _legal_cost(u, v, data):
    """Edge cost for legal routing: None hides lane changes whose allowed stretch is too short."""
    return None if data.get("legal") is False else data["cost"]


def _groups_from_nodes(graph, nodes) -> list:
    first_edge = graph[nodes[0]][nodes[1]]
    last_edge = graph[nodes[-2]][nodes[-1]]
    steps = [(k, LANE_CHANGE) for k in first_edge["chain"]]  # the first lane's kind is irrelevant
    inner = nodes[1:-1]
    steps.append((inner[0], FOLLOW))
    for u, v in zip(inner[:-1], inner[1:]):
        steps.append((v, graph[u][v]["kind"]))
    steps.extend((k, LANE_CHANGE) for k in last_edge["chain"][1:])
    groups: list = []
    for i, (key, kind) in enumerate(steps):
        if i == 0 or kind == FOLLOW:
            groups.append([[key], 0.0, 1.0])
        else:
            groups[-1][0].append(key)
    groups[0][1] = first_edge["f"]
    groups[-1][2] = last_edge["f"]
    return [tuple(g) for g in groups]


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _lane_change_centres(hdmap, keys, lanes, f_in: float, f_out: float, leaderboard: bool) -> np.ndarray:
    """Where (section fraction) each change of a group happens: an even share of [f_in, f_out]
    each, moved (legal mode) into the stretch its marking allows, in order."""
    changes = len(lanes) - 1
    span = f_out - f_in
    centres, f_prev = [], f_in
    for i in range(changes):
        lane = lanes[i]
        side = "left" if lane.left == keys[i + 1] else "right"
        stretch = None if leaderboard else getattr(lane, f"lane_change_{side}_range")
        length = max(lane.length, 1e-9)
        low, high = (stretch[0] / length, stretch[1] / length) if stretch else (f_in, f_out)
        low, high = max(low, f_prev, f_in), min(high, f_out)
        if low > high:
            low = high = min(max(f_prev, f_in), f_out)
        share_low, share_high = f_in + i * span / changes, f_in + (i + 1) * span / changes
        a, b = max(low, share_low), min(high, share_high)
        centre = 0.5 * (a + b) if a <= b else 0.5 * (low + high)
        centres.append(centre)
        f_prev = centre
    return np.array(centres)


def _sample_group(hdmap, keys, f_in, f_out, leaderboard: bool = False, step_m=0.25):
    """Raw polyline of one group: (K,3) xyz and (K,) index into ``keys`` of the lane each sample is on."""
    lanes = [hdmap.lanes[k] for k in keys]
    mean_length = float(np.mean([l.length for l in lanes]))
    span = f_out - f_in
    n = max(2, int(math.ceil(span * mean_length / step_m)) + 1)
    f = np.linspace(f_in, f_out, n)
    centres_xyz = np.stack([lane.interpolate(f * lane.length) for lane in lanes])  # (k+1, n, 3)
    xyz = centres_xyz[0].copy()
    which = np.zeros(n, dtype=np.int64)
    changes = len(lanes) - 1
    if changes:
        centres = _lane_change_centres(hdmap, keys, lanes, f_in, f_out, leaderboard)
        half = hdmap.params.lane_change_length_m / 2.0 / max(mean_length, 1e-9)
        bounds = np.concatenate([[f_in], centres, [f_out]])
        for i in range(changes):
            # The blend stays inside the group and clear of the neighbouring changes.
            half_window = max(min(half, (bounds[i + 1] - bounds[i]) / (1 if i == 0 else 2),
                                  (bounds[i + 2] - bounds[i + 1]) / (1 if i == changes - 1 else 2)), 1e-9)
            blend = _smoothstep((f - (centres[i] - half_window)) / (2.0 * half_window))
            xyz += blend[:, None] * (centres_xyz[i + 1] - centres_xyz[i])
            which += f >= centres[i]
    return xyz, which


def _build_route(hdmap, legs: list, spacing: float, start_yaw: float | None, leaderboard: bool = False) -> Route:
    xyz_parts, key_parts, change_parts = [], [], []
    for groups in legs:
        for keys, f_in, f_out in groups:
            xyz, which = _sample_group(hdmap, keys, f_in, f_out, leaderboard)
            lane_keys = [keys[i] for i in which]
            change = np.zeros(len(which), dtype=bool)
            change[1:] = which[1:] != which[:-1]
            if xyz_parts:  # drop the first sample where it repeats the previous group's last one
                if np.linalg.norm(xyz[0, :2] - xyz_parts[-1][-1, :2]) < 1e-3:
                    xyz, lane_keys, change = xyz[1:], lane_keys[1:], change[1:]
            if len(xyz):
                xyz_parts.append(xyz)
                key_parts.extend(lane_keys)
                change_parts.append(change)
    xyz = np.vstack(xyz_parts)
    change = np.concatenate(change_parts)
    step = np.linalg.norm(np.diff(xyz[:, :2], axis=0), axis=1)
    raw_s = np.concatenate([[0.0], np.cumsum(step)])
    total = float(raw_s[-1])
    s = np.arange(0.0, total, spacing) if total > 0 else np.zeros(1)
    if total - s[-1] > 1e-6:
        s = np.append(s, total)
    path = np.column_stack([np.interp(s, raw_s, xyz[:, 0]), np.interp(s, raw_s, xyz[:, 1])])
    z = np.interp(s, raw_s, xyz[:, 2])
    raw_index = np.clip(np.searchsorted(raw_s, s, side="right") - 1, 0, len(raw_s) - 1)
    lane_keys = [key_parts[i] for i in raw_index]
    change_at = np.unique(np.clip(np.searchsorted(s, raw_s[change], side="left"), 0, len(s) - 1))
    if len(path) >= 2:
        d = np.gradient(path, axis=0)
        yaw = np.arctan2(d[:, 1], d[:, 0])
    else:
        yaw = np.array([start_yaw if start_yaw is not None else hdmap.lanes[lane_keys[0]].heading[0]])
    speed = np.array([hdmap.lanes[k].speed_limit for k in lane_keys])
    return Route(path=path, yaw=yaw, s=s, lane_keys=lane_keys, lane_change_indices=change_at.astype(np.int64),
                 speed_limit=speed, total_length=total, z=z)


def plan_route(hdmap, poses, spacing: float | None = None, leaderboard: bool = False) -> Route:
    """Route through ``poses`` [(x, y, yaw or None), ...] in order, each leg the shortest one.

    ``leaderboard=True`` plans lane changes as CARLA's GlobalRoutePlanner does (possible wherever
    the lane's marking allows one anywhere along it), so dense Leaderboard routes match CARLA's;
    by default only where a legal change of ``lane_change_min_stretch_m`` fits.
    """
    if len(poses) < 2:
        raise UserError(f"a route needs at least two poses, got {len(poses)}", hdmap.xodr_path)
    legs = []
    for i in range(len(poses) - 1):
        names = ("start", "goal") if len(poses) == 2 else (f"waypoint {i}", f"waypoint {i + 1}")
        legs.append(_plan_leg(hdmap, poses[i], poses[i + 1], names, leaderboard))
    return _build_route(hdmap, legs, spacing or hdmap.params.route_spacing_m, _pose(poses[0])[2], leaderboard)


def _pose(pose) -> tuple:
    pose = tuple(pose)
    if len(pose) == 2:
        return float(pose[0]), float(pose[1]), None
    yaw = pose[2]
    return float(pose[0]), float(pose[1]), (None if yaw is None or (isinstance(yaw, float) and math.isnan(yaw)) else float(yaw))


def _fmt_pose(pose) -> str:
    x, y, yaw = _pose(pose)
    return f"({x:.1f}, {y:.1f})" + ("" if yaw is None else f" yaw {math.degrees(yaw):.0f} deg")
