"""OpenDRIVE HD map through ``carla.Map``: lanes, lane graph, signals and fast geometric queries.

``load_map(name_or_path)`` finds a .xodr, checks it, parses it with CARLA's own OpenDRIVE parser
(``carla.Map``, no server needed) and converts everything to REP-103 right-handed coordinates via
``hdmap.coords`` (the only place that knows CARLA's y flip). Lanes are CARLA's (road, section, lane)
driving lanes sampled every ``waypoint_spacing_m``; the routing graph lives in ``hdmap.routing``.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import shapely
from numba import njit
from scipy.spatial import cKDTree

from adstack.errors import DataError, UserError
from adstack.paths import cache_dir
from hdmap.coords import carla_location_to_ros, carla_to_ros_yaw, wrap_angle
from hdmap.params import HDMapParams, KMH

LaneKey = tuple  # (road_id, section_id, lane_id), as CARLA numbers them

TRAFFIC_LIGHT_TYPE = "1000001"  # OpenDRIVE dynamic signal type CARLA reads as a traffic light
STOP_SIGN_TYPE = "206"          # German StVO sign 206 "Halt! Vorfahrt gewähren", OpenDRIVE's stop sign

POLYGON_OVERLAP_M = 0.05
HEADING_WEIGHT_M_PER_RAD = 1.0  # nearest-lane score: metres of distance one radian of heading error costs
LANE_CHANGE_RIGHT = 1  # bits of carla.LaneChange (NONE=0, Right=1, Left=2, Both=3)
LANE_CHANGE_LEFT = 2


@dataclass(eq=False)
class Lane:
    """One driving lane of one lane section, in right-handed map coordinates.

    centerline (M,2) m, z (M,) m, s (M,) arc length from the lane's start in its driving direction,
    width (M,) m, heading (M,) rad, road_s (M,) the OpenDRIVE road s of each sample.
    """

    key: LaneKey
    centerline: np.ndarray
    z: np.ndarray
    s: np.ndarray
    width: np.ndarray
    heading: np.ndarray
    road_s: np.ndarray
    length: float
    speed_limit: float  # m/s
    is_junction: bool
    junction_id: int  # -1 outside junctions
    successors: list = field(default_factory=list)
    predecessors: list = field(default_factory=list)
    left: LaneKey | None = None   # same-direction driving neighbour, whatever the marking says
    right: LaneKey | None = None
    # The longest stretch (s_from, s_to) of this lane along which the marking allows changing into
    # ``left`` / ``right``; None where it never does. ``lane_change_left``/``_right``: that stretch
    # is at least lane_change_min_stretch_m long (or half the lane), so a legal change fits.
    lane_change_left_range: tuple | None = None
    lane_change_right_range: tuple | None = None
    lane_change_left: bool = False
    lane_change_right: bool = False

    @property
    def road_id(self) -> int:
        return self.key[0]

    @property
    def lane_id(self) -> int:
        return self.key[2]

    @cached_property
    def left_boundary(self) -> np.ndarray:
        return self.centerline + _left_normals(self.heading) * (0.5 * self.width)[:, None]

    @cached_property
    def right_boundary(self) -> np.ndarray:
        return self.centerline - _left_normals(self.heading) * (0.5 * self.width)[:, None]

    @cached_property
    def polygon(self) -> shapely.Polygon:
        """The lane's area, reaching ``POLYGON_OVERLAP_M`` past both ends so joined lanes union without slivers."""
        ends = np.stack([self.heading[0], self.heading[-1]])
        direction = np.stack([np.cos(ends), np.sin(ends)], axis=-1) * POLYGON_OVERLAP_M
        left, right = self.left_boundary.copy(), self.right_boundary.copy()
        left[0] -= direction[0]
        right[0] -= direction[0]
        left[-1] += direction[1]
        right[-1] += direction[1]
        poly = shapely.Polygon(np.vstack([left, right[::-1]]))
        return poly if poly.is_valid else poly.buffer(0)

    def interpolate(self, s) -> np.ndarray:
        """(K,) arc lengths -> (K,3) x, y, z on the centreline (clamped to the lane)."""
        s = np.asarray(s, dtype=np.float64)
        return np.stack([np.interp(s, self.s, self.centerline[:, 0]), np.interp(s, self.s, self.centerline[:, 1]),
                         np.interp(s, self.s, self.z)], axis=-1)

    def s_at_road_s(self, road_s: float) -> float:
        """Lane arc length at OpenDRIVE road coordinate ``road_s``."""
        if self.road_s[-1] >= self.road_s[0]:
            return float(np.interp(road_s, self.road_s, self.s))
        return float(np.interp(road_s, self.road_s[::-1], self.s[::-1]))


@dataclass(eq=False)
class StopLine:
    """Where a vehicle on ``lane`` stops for signal ``signal_id``: segment (2,2) left end first."""

    signal_id: str
    kind: str  # 'traffic_light' or 'stop_sign'
    lane: LaneKey
    segment: np.ndarray
    s: float  # along the lane


@dataclass(eq=False)
class MapSignal:
    """A traffic light or stop sign: all OpenDRIVE signal references with one id merged."""

    id: str
    kind: str
    position: np.ndarray  # (2,) where the signal stands
    lanes: tuple = ()     # governed LaneKeys
    stop_lines: dict = field(default_factory=dict)  # LaneKey -> (2,2) segment


@dataclass
class LanesNearby:
    """Fixed-size lane context in the EGO frame (x forward, y left), ready for a learned planner.

    points (max_lanes, points_per_lane, 2) float32, evenly spaced along each lane's part inside the
    radius in its driving direction; mask (max_lanes,) bool; speed_limit (max_lanes,) float32 m/s;
    is_junction (max_lanes,) bool; keys: list of LaneKey or None. Rows sorted nearest lane first.
    """

    points: np.ndarray
    mask: np.ndarray
    speed_limit: np.ndarray
    is_junction: np.ndarray
    keys: list


def _left_normals(heading: np.ndarray) -> np.ndarray:
    return np.stack([-np.sin(heading), np.cos(heading)], axis=-1)


class HDMap:
    """A loaded map. Build it with ``load_map``; everything in right-handed coordinates."""

    def __init__(self, name: str, xodr_path: Path, carla_map, road_types: dict, params: HDMapParams | None = None,
                 road_sections: dict | None = None):
        self.name = name
        self.xodr_path = Path(xodr_path)
        self.carla_map = carla_map
        self.params = params or HDMapParams()
        self._road_types = road_types
        self._road_sections = road_sections or {}  # road id -> [section start s..., road length]
        self.lanes: dict[LaneKey, Lane] = {}
        self._explicit_speed: set = set()
        self._build_lanes()
        if not self.lanes:
            raise DataError("the map has no driving lanes", self.xodr_path)
        self._build_index()
        self.traffic_lights: list[MapSignal] = self._signals(TRAFFIC_LIGHT_TYPE, "traffic_light")
        self.stop_signs: list[MapSignal] = self._signals(STOP_SIGN_TYPE, "stop_sign")
        self._stop_lines_by_lane: dict[LaneKey, list[StopLine]] = defaultdict(list)
        self._lights_by_lane: dict[LaneKey, list[MapSignal]] = defaultdict(list)
        for signal in self.traffic_lights + self.stop_signs:
            for key, segment in signal.stop_lines.items():
                lane = self.lanes[key]
                s = float(lane.s[np.argmin(np.linalg.norm(lane.centerline - segment.mean(axis=0), axis=1))])
                self._stop_lines_by_lane[key].append(StopLine(signal.id, signal.kind, key, segment, s))
                if signal.kind == "traffic_light":
                    self._lights_by_lane[key].append(signal)
        from hdmap.routing import build_lane_graph  # routing imports this module

        self.graph = build_lane_graph(self)

    # ------------------------------------------------------------------ building
    def _build_lanes(self) -> None:
        import carla

        spacing = self.params.waypoint_spacing_m
        starts: dict[LaneKey, object] = {}
        successors: dict[LaneKey, list] = defaultdict(list)
        for a, b in self.carla_map.get_topology():
            ka, kb = _key(a), _key(b)
            starts.setdefault(ka, a)
            starts.setdefault(kb, b)
            if kb not in successors[ka]:
                successors[ka].append(kb)
        # Lanes in no topology pair (a road without links): start them where their section begins
        # in their driving direction. (``previous_until_lane_start`` would segfault there.)
        for w in self.carla_map.generate_waypoints(spacing):
            k = _key(w)
            if k not in starts:
                bounds = self._road_sections.get(k[0])
                start = None
                if bounds is not None and k[1] + 1 < len(bounds):
                    lo, hi = bounds[k[1]], bounds[k[1] + 1]
                    for start_s in ((lo, lo + 1e-3) if k[2] < 0 else (hi, hi - 1e-3)):
                        start = self.carla_map.get_waypoint_xodr(k[0], k[2], start_s)
                        if start is not None:
                            break
                starts[k] = start if start is not None and _key(start) == k else w

        driving = carla.LaneType.Driving
        for key, start in starts.items():
            if start.lane_type != driving:
                continue
            waypoints = [start] + [w for w in start.next_until_lane_end(spacing) if _key(w) == key]
            rows = np.array([(t.location.x, t.location.y, t.location.z, t.rotation.yaw, w.s, w.lane_width, int(w.lane_change))
                             for w in waypoints for t in (w.transform,)], dtype=np.float64)
            if len(rows) == 1:  # a lane shorter than the spacing: add its end point
                end = start.next(0.01)
                if end:
                    t = end[0].transform
                    rows = np.vstack([rows, [t.location.x, t.location.y, t.location.z, t.rotation.yaw, end[0].s,
                                             end[0].lane_width, rows[0, 6]]])
                else:
                    continue
            xy = np.column_stack([rows[:, 0], -rows[:, 1]])  # right-handed: see hdmap.coords
            heading = np.unwrap(carla_to_ros_yaw(rows[:, 3]))
            step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
            raw_s = np.concatenate([[0.0], np.cumsum(step)])
            # CARLA spaces waypoints by road s; outer lanes of curves are longer, so resample to at
            # most ``spacing`` of lane arc length.
            s = np.linspace(0.0, raw_s[-1], max(2, int(math.ceil(raw_s[-1] / spacing - 1e-9)) + 1))
            xy = np.column_stack([np.interp(s, raw_s, xy[:, 0]), np.interp(s, raw_s, xy[:, 1])])
            nearest_raw = np.rint(np.interp(s, raw_s, np.arange(len(raw_s)))).astype(np.int64)  # flags don't interpolate
            rows = np.column_stack([np.interp(s, raw_s, rows[:, c]) for c in range(6)] + [rows[nearest_raw, 6]])
            mid = waypoints[len(waypoints) // 2]
            lane_change = rows[:, 6].astype(np.int64)
            is_junction = bool(mid.is_junction)
            lane = Lane(
                key=key, centerline=xy, z=rows[:, 2].copy(), s=s, width=rows[:, 5].copy(),
                heading=wrap_angle(np.interp(s, raw_s, heading)), road_s=rows[:, 4].copy(), length=float(s[-1]),
                speed_limit=self._speed_limit(key, float(np.median(rows[:, 4]))),
                is_junction=is_junction, junction_id=int(mid.junction_id) if is_junction else -1,
                successors=list(successors.get(key, [])),
                lane_change_left_range=None if is_junction else _longest_run(s, (lane_change & LANE_CHANGE_LEFT) > 0),
                lane_change_right_range=None if is_junction else _longest_run(s, (lane_change & LANE_CHANGE_RIGHT) > 0),
            )
            lane.left = _same_direction_neighbour(mid, mid.get_left_lane(), driving)
            lane.right = _same_direction_neighbour(mid, mid.get_right_lane(), driving)
            self.lanes[key] = lane
        for key, lane in self.lanes.items():
            lane.successors = [k for k in lane.successors if k in self.lanes]
            lane.left = lane.left if lane.left in self.lanes else None
            lane.right = lane.right if lane.right in self.lanes else None
            min_stretch = min(self.params.lane_change_min_stretch_m, 0.5 * lane.length)
            for side in ("left", "right"):
                if getattr(lane, side) is None:
                    setattr(lane, f"lane_change_{side}_range", None)
                stretch = getattr(lane, f"lane_change_{side}_range")
                setattr(lane, f"lane_change_{side}", stretch is not None and stretch[1] - stretch[0] >= min_stretch - 1e-9)
            for k in lane.successors:
                self.lanes[k].predecessors.append(key)
        # CARLA towns give speeds on normal roads only; a junction lane without its own takes the
        # lower of the explicit limits of the lanes it joins (not the generic town default).
        for key, lane in self.lanes.items():
            if lane.is_junction and key not in self._explicit_speed:
                joined = [self.lanes[k].speed_limit for k in lane.predecessors + lane.successors if k in self._explicit_speed]
                if joined:
                    lane.speed_limit = min(joined)

    def _speed_limit(self, key: LaneKey, road_s: float) -> float:
        """The road <type> speed at ``road_s``; else the default for its road type (params)."""
        entries = self._road_types.get(key[0])
        if not entries:
            return self.params.default_speed_mps(None)
        chosen = entries[0]
        for entry in entries:
            if entry[0] <= road_s + 1e-6:
                chosen = entry
        _, road_type, speed = chosen
        if speed is None:
            return self.params.default_speed_mps(road_type)
        self._explicit_speed.add(key)
        return speed

    def _build_index(self) -> None:
        self._lane_keys = list(self.lanes)
        self._lane_list = [self.lanes[k] for k in self._lane_keys]
        counts = np.array([len(l.s) for l in self._lane_list])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._points = np.vstack([l.centerline for l in self._lane_list])
        self._point_s = np.concatenate([l.s for l in self._lane_list])
        self._point_lane = np.repeat(np.arange(len(self._lane_list)), counts)
        self._point_count = counts[self._point_lane]
        self._tree = cKDTree(self._points)
        self.section_lanes: dict[tuple, list] = defaultdict(list)  # (road, section, lane_id > 0) -> keys
        for key in self._lane_keys:
            self.section_lanes[(key[0], key[1], key[2] > 0)].append(key)
        # Per sample, the segment to the next sample of its lane (a lane's last sample repeats the
        # segment before it; queries never start a segment there).
        step = np.diff(self._points, axis=0, append=self._points[-1:])
        last = self._offsets[1:] - 1
        step[last] = step[last - 1]
        self._seg_len = np.maximum(np.hypot(step[:, 0], step[:, 1]), 1e-9)
        self._seg_dir = step / self._seg_len[:, None]
        self._seg_heading = np.arctan2(step[:, 1], step[:, 0])

    def _signals(self, type_code: str, kind: str) -> list[MapSignal]:
        import carla

        merged: dict[str, MapSignal] = {}
        for landmark in self.carla_map.get_all_landmarks_of_type(type_code):
            signal = merged.get(landmark.id)
            if signal is None:
                x, y, _ = carla_location_to_ros(landmark.transform.location)
                signal = merged[landmark.id] = MapSignal(id=str(landmark.id), kind=kind, position=np.array([x, y]))
            for low, high in landmark.get_lane_validities():
                for lane_id in range(min(low, high), max(low, high) + 1):
                    if lane_id == 0:
                        continue
                    wp = self.carla_map.get_waypoint_xodr(landmark.road_id, lane_id, landmark.s)
                    if wp is None or wp.lane_type != carla.LaneType.Driving or _key(wp) not in self.lanes:
                        continue
                    key = _key(wp)
                    cx, cy, _ = carla_location_to_ros(wp.transform.location)
                    heading = carla_to_ros_yaw(wp.transform.rotation.yaw)
                    half = 0.5 * wp.lane_width * np.array([-math.sin(heading), math.cos(heading)])
                    signal.stop_lines[key] = np.array([[cx, cy] + half, [cx, cy] - half])
        for signal in merged.values():
            signal.lanes = tuple(signal.stop_lines)
        return list(merged.values())

    # ------------------------------------------------------------------ summaries
    @property
    def junction_ids(self) -> list[int]:
        return sorted({l.junction_id for l in self._lane_list if l.junction_id >= 0})

    @property
    def total_lane_length(self) -> float:
        return float(sum(l.length for l in self._lane_list))

    @cached_property
    def drivable_area(self):
        """Union of all driving-lane polygons (shapely), built on first use and prepared."""
        area = shapely.union_all([l.polygon for l in self._lane_list])
        shapely.prepare(area)
        return area

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        lo, hi = self._points.min(axis=0), self._points.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def speed_limit(self, key: LaneKey) -> float:
        return self.lanes[key].speed_limit

    def stop_lines_for_lane(self, key: LaneKey) -> list[StopLine]:
        return list(self._stop_lines_by_lane.get(key, ()))

    def traffic_lights_for_lane(self, key: LaneKey) -> list[MapSignal]:
        return list(self._lights_by_lane.get(key, ()))

    def stop_lines_on_route(self, route) -> list[tuple[int, StopLine]]:
        """Stop lines (traffic lights and stop signs) the route crosses, in driving order.

        Each as (index of the route point nearest the line, StopLine). A line the route starts
        beyond, or ends before, is left out.
        """
        keys = route.lane_keys
        run_starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]] + [len(keys)]
        spacing = self.params.route_spacing_m
        found = []
        for begin, end in zip(run_starts[:-1], run_starts[1:]):
            for line in self._stop_lines_by_lane.get(keys[begin], ()):
                centre = line.segment.mean(axis=0)
                gap = np.linalg.norm(route.path[begin:end] - centre, axis=1)
                i = begin + int(np.argmin(gap))
                if gap[i - begin] > 2.0 * spacing:
                    continue
                # Where along the route the line lies; a lane's points start up to one spacing
                # after the lane does, so between lanes allow that much slack.
                tangent = np.array([math.cos(route.yaw[i]), math.sin(route.yaw[i])])
                along = route.s[i] + float(np.dot(centre - route.path[i], tangent))
                low = route.s[begin] - (spacing if begin > 0 else 0.0)
                high = route.s[end - 1] + (spacing if end < len(keys) else 0.0)
                if low - 1e-6 <= along <= high + 1e-6:
                    found.append((min(int(np.searchsorted(route.s, along - 1e-6)), len(keys) - 1), line))
        return sorted(found, key=lambda item: item[0])

    # ------------------------------------------------------------------ queries
    def _segment_candidates(self, xy: np.ndarray, k: int):
        """Projections of each (N,2) point onto the two lane segments beside each of its k nearest
        lane samples: lane index, segment index, t along it, distance, lateral (left +), all (N, 2k)."""
        k = min(k, len(self._points))
        _, idx = self._tree.query(xy, k=k)
        idx = idx.reshape(len(xy), k)
        lane_idx = self._point_lane[idx]
        start = self._offsets[lane_idx]
        local = idx - start
        last_segment = self._point_count[idx] - 2
        seg = np.concatenate([start + np.clip(local - 1, 0, last_segment), start + np.clip(local, 0, last_segment)], axis=1)
        lane_idx = np.concatenate([lane_idx, lane_idx], axis=1)
        direction, length = self._seg_dir[seg], self._seg_len[seg]
        rel = xy[:, None, :] - self._points[seg]
        t = np.clip(rel[..., 0] * direction[..., 0] + rel[..., 1] * direction[..., 1], 0.0, length)
        off = rel - direction * t[..., None]
        distance = np.hypot(off[..., 0], off[..., 1])
        lateral = direction[..., 0] * rel[..., 1] - direction[..., 1] * rel[..., 0]
        return lane_idx, seg, t, distance, lateral

    def _project_many(self, xy: np.ndarray, yaw: np.ndarray | None, k: int, require_heading: bool):
        """Best lane-segment projection of each of the (N,2) points ``xy`` among its k nearest points.

        Returns lane index (N,) (-1 where no candidate qualifies), distance, lateral (left +), s.
        With ``yaw`` a candidate must head within ``heading_tolerance_rad``; when none of a point's
        candidates does, the nearest of any heading is used unless ``require_heading``.
        """
        lane_idx, seg, t, distance, lateral = self._segment_candidates(xy, k)
        score = distance.copy()
        if yaw is not None:
            dyaw = np.abs(wrap_angle(self._seg_heading[seg] - yaw[:, None]))
            ok = dyaw <= self.params.heading_tolerance_rad
            score += HEADING_WEIGHT_M_PER_RAD * dyaw
            any_ok = ok.any(axis=1)
            score = np.where(ok | ~any_ok[:, None], score, np.inf)
        else:
            any_ok = np.ones(len(xy), dtype=bool)
        best = np.argmin(score, axis=1)
        rows = np.arange(len(xy))
        out_lane = lane_idx[rows, best]
        if require_heading:
            out_lane = np.where(any_ok, out_lane, -1)
        return (out_lane, distance[rows, best], lateral[rows, best], self._point_s[seg[rows, best]] + t[rows, best],
                any_ok)

    def _query(self, xy, yaw, require_heading: bool):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        yaw = None if yaw is None else np.broadcast_to(np.asarray(yaw, dtype=np.float64), (len(xy),))
        result = self._project_many(xy, yaw, 16, require_heading)
        # Points whose 16 nearest samples all head the wrong way (a wrong-way car on a two-way
        # road, a pose beside a junction): look further before giving up on the heading.
        retry = np.flatnonzero(~result[4])
        if len(retry):
            wider = self._project_many(xy[retry], yaw[retry], 128, require_heading)
            for full, part in zip(result, wider):
                full[retry] = part
        return result[:4]

    def nearest_lanes(self, xy, yaw=None) -> tuple[list, np.ndarray, np.ndarray]:
        """Vectorized ``nearest_lane`` for (N,2) points (and optional (N,) or scalar yaw).

        Returns (keys: list of N LaneKeys, lateral (N,) m left positive, s (N,) m along each lane).
        """
        lane_idx, _, lateral, s = self._query(xy, yaw, require_heading=False)
        keys = [self._lane_keys[i] for i in lane_idx.tolist()]
        return keys, lateral, s

    def nearest_lane(self, x: float, y: float, yaw: float | None = None) -> tuple[LaneKey, float, float]:
        """Nearest driving lane to (x, y): (key, lateral offset m, left positive, s along the lane).

        With ``yaw`` only lanes heading within ``heading_tolerance_rad`` count, unless no such lane
        is near, in which case the nearest lane of any heading is returned. Where lanes overlap (in
        junctions) the better aligned one wins: each radian of heading error counts as 1 m.
        """
        if yaw is None:
            # one point, any heading (scoring asks every tick): the same candidates and arithmetic
            # as _segment_candidates in one compiled loop instead of ~40 numpy calls on tiny arrays
            x, y = float(x), float(y)
            _, idx = self._tree.query((x, y), k=min(16, len(self._points)))
            lane, lateral, s = _nearest_projection(np.atleast_1d(idx).astype(np.int64), x, y, self._point_lane,
                                                   self._offsets, self._point_count, self._points, self._seg_dir,
                                                   self._seg_len, self._point_s)
            return self._lane_keys[lane], lateral, s
        lane_idx, _, lateral, s = self._query((x, y), yaw, require_heading=False)
        return self._lane_keys[int(lane_idx[0])], float(lateral[0]), float(s[0])

    def snap_candidates(self, x: float, y: float, yaw: float | None = None, what: str = "pose") -> list:
        """Lanes a route may start or end on at (x, y): [(key, s, distance_m)], nearest first.

        The nearest lane heading within ``heading_tolerance_rad`` of ``yaw`` (any, when yaw is None)
        and every other such lane no more than ``snap_ambiguity_m`` farther: where junction lanes
        overlap the router then takes whichever gives the shortest route. UserError when no lane
        qualifies within ``snap_max_distance_m``.
        """
        p = self.params
        xy = np.array([[float(x), float(y)]])
        for k in (16, 128):
            lane_idx, seg, t, distance, _ = self._segment_candidates(xy, k)
            lane_idx, seg, t, distance = lane_idx[0], seg[0], t[0], distance[0]
            ok = distance <= p.snap_max_distance_m
            if yaw is not None:
                ok &= np.abs(wrap_angle(self._seg_heading[seg] - float(yaw))) <= p.heading_tolerance_rad
            if ok.any():
                break
        else:
            heading = "" if yaw is None else f" heading {math.degrees(yaw):.0f} deg"
            raise UserError(f"{what} ({x:.1f}, {y:.1f}){heading} is not within {p.snap_max_distance_m:g} m "
                            f"of a driving lane going that way", self.xodr_path)
        lane_idx, s_along, distance = lane_idx[ok], self._point_s[seg[ok]] + t[ok], distance[ok]
        order = np.lexsort((distance, lane_idx))  # per lane, its nearest segment first
        lanes, first = np.unique(lane_idx[order], return_index=True)
        nearest = distance[order][first]
        keep = nearest <= nearest.min() + p.snap_ambiguity_m
        found = sorted(zip(nearest[keep].tolist(), lanes[keep].tolist(), s_along[order][first][keep].tolist()))
        return [(self._lane_keys[i], s, d) for d, i, s in found]

    def snap(self, x: float, y: float, yaw: float | None = None, what: str = "pose") -> tuple[LaneKey, float]:
        """The nearest lane a route may start or end on at (x, y) and the s there (UserError if none)."""
        key, s, _ = self.snap_candidates(x, y, yaw, what)[0]
        return key, s

    def is_drivable(self, xy) -> np.ndarray:
        """(N,2) points -> (N,) bool, True inside the union of driving lanes."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return shapely.contains_xy(self.drivable_area, xy[:, 0], xy[:, 1])

    def lanes_in_radius(self, x: float, y: float, yaw: float, radius: float, max_lanes: int = 32,
                        points_per_lane: int = 20) -> LanesNearby:
        """Lanes with centreline points within ``radius`` of (x, y), resampled in the ego frame."""
        points = np.zeros((max_lanes, points_per_lane, 2), dtype=np.float32)
        mask = np.zeros(max_lanes, dtype=bool)
        speed = np.zeros(max_lanes, dtype=np.float32)
        junction = np.zeros(max_lanes, dtype=bool)
        keys: list = [None] * max_lanes
        idx = np.asarray(self._tree.query_ball_point((x, y), radius), dtype=np.int64)
        if len(idx):
            lane_idx = self._point_lane[idx]
            dist = np.linalg.norm(self._points[idx] - (x, y), axis=1)
            order = np.lexsort((dist, lane_idx))  # by lane, nearest first within a lane
            lane_sorted, first = np.unique(lane_idx[order], return_index=True)
            min_dist = dist[order][first]
            s_min = np.minimum.reduceat(self._point_s[idx][order], first)
            s_max = np.maximum.reduceat(self._point_s[idx][order], first)
            chosen = np.argsort(min_dist, kind="stable")[:max_lanes]
            cos_y, sin_y = math.cos(yaw), math.sin(yaw)
            rotation = np.array([[cos_y, -sin_y], [sin_y, cos_y]])  # ego->map; rows below use its transpose
            for row, c in enumerate(chosen):
                lane = self._lane_list[lane_sorted[c]]
                xyz = lane.interpolate(np.linspace(s_min[c], s_max[c], points_per_lane))
                points[row] = (xyz[:, :2] - (x, y)) @ rotation
                mask[row] = True
                speed[row] = lane.speed_limit
                junction[row] = lane.is_junction
                keys[row] = lane.key
        return LanesNearby(points=points, mask=mask, speed_limit=speed, is_junction=junction, keys=keys)

    def route(self, start_xyyaw, goal_xyyaw):
        """Shortest route between two poses (x, y, yaw); see ``hdmap.routing.plan_route``."""
        from hdmap.routing import plan_route

        return plan_route(self, [start_xyyaw, goal_xyyaw])

    def __repr__(self) -> str:
        return (f"HDMap({self.name!r}, lanes={len(self.lanes)}, junctions={len(self.junction_ids)}, "
                f"traffic_lights={len(self.traffic_lights)})")


def _longest_run(s: np.ndarray, allowed: np.ndarray) -> tuple | None:
    """(s_from, s_to) of the longest run of True samples, or None; a run reaches half-way to the
    neighbouring samples, so a lane allowed everywhere gets (0, length)."""
    if not allowed.any():
        return None
    edges = np.diff(np.concatenate([[0], allowed.astype(np.int8), [0]]))
    begins, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    mids = np.concatenate([[s[0]], 0.5 * (s[1:] + s[:-1]), [s[-1]]])
    lengths = mids[ends + 1] - mids[begins]
    i = int(np.argmax(lengths))
    return float(mids[begins[i]]), float(mids[ends[i] + 1])


def _key(waypoint) -> LaneKey:
    return (int(waypoint.road_id), int(waypoint.section_id), int(waypoint.lane_id))


def _same_direction_neighbour(waypoint, neighbour, driving) -> LaneKey | None:
    if neighbour is None or neighbour.lane_type != driving:
        return None
    if neighbour.lane_id * waypoint.lane_id <= 0 or neighbour.road_id != waypoint.road_id:
        return None
    return _key(neighbour)


# ---------------------------------------------------------------------- loading
_SPEED_UNITS = {"m/s": 1.0, "km/h": KMH, "mph": 0.44704}
_LOADED: dict[tuple, HDMap] = {}


def _read_xodr(path: Path) -> tuple[str, dict, dict]:
    """Check a .xodr before CARLA sees it (carla.Map may crash or return nothing on garbage).

    Returns its text; per road id, [(s, road type, speed m/s or None)] from ``<type>``; per road
    id, its lane sections' start s followed by the road length.
    """
    if not path.is_file():
        raise UserError("map file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read map: {exc}", path) from None
    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as exc:
        raise DataError(f"not valid OpenDRIVE XML: {exc}", path) from None
    if root.tag != "OpenDRIVE":
        raise DataError(f"not an OpenDRIVE file: root element is <{root.tag}>, expected <OpenDRIVE>", path)
    roads = root.findall("road")
    if not roads:
        raise DataError("OpenDRIVE file has no <road> elements", path)
    _check_structure(root, path)
    road_types: dict[int, list] = {}
    road_sections: dict[int, list] = {}
    for road in roads:
        try:
            road_id = int(road.get("id"))
            road_sections[road_id] = sorted(float(sec.get("s")) for sec in road.findall("lanes/laneSection")) + [
                float(road.get("length"))]
            entries = []
            for t in road.findall("type"):
                speed = t.find("speed")
                mps = None
                if speed is not None and speed.get("max") not in (None, "no limit", "undefined"):
                    mps = float(speed.get("max")) * _SPEED_UNITS.get(speed.get("unit", "m/s"), 1.0)
                entries.append((float(t.get("s", 0.0)), t.get("type"), mps))
        except (TypeError, ValueError) as exc:
            raise DataError(f"bad road id or <type> in road {road.get('id')!r}: {exc}", path) from None
        road_types[road_id] = sorted(entries, key=lambda e: e[0])
    return text, road_types, road_sections


_GEOMETRY_ATTRS = {"line": (), "arc": ("curvature",), "spiral": ("curvStart", "curvEnd"), "poly3": ("a", "b", "c", "d"),
                   "paramPoly3": ("aU", "bU", "cU", "dU", "aV", "bV", "cV", "dV")}


def _check_structure(root, path: Path) -> None:
    """Reject the structural faults that make carla.Map crash the process or misread silently
    (found by feeding it broken files: a road without <planView> segfaults, a lane section
    without <center> raises from generate_waypoints, non-numeric coordinates read as 0)."""

    def number(elem, attr, where):
        value = elem.get(attr)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: <{elem.tag}> {attr}={value!r} is not a number", path) from None

    road_ids = {road.get("id") for road in root.findall("road")}
    junction_ids = {junction.get("id") for junction in root.findall("junction")}
    for junction in root.findall("junction"):
        for connection in junction.findall("connection"):
            for attr in ("incomingRoad", "connectingRoad"):
                if connection.get(attr) not in road_ids:
                    raise DataError(f"junction {junction.get('id')!r}: {attr} {connection.get(attr)!r} does not exist", path)
    seen = set()
    for road in root.findall("road"):
        where = f"road {road.get('id')!r}"
        if road.get("id") in seen:
            raise DataError(f"{where}: duplicate road id", path)
        seen.add(road.get("id"))
        if number(road, "length", where) <= 0.0:
            raise DataError(f"{where}: length must be positive", path)
        geometries = road.findall("planView/geometry")
        if not geometries:
            raise DataError(f"{where}: no <planView><geometry>", path)
        for geometry in geometries:
            for attr in ("s", "x", "y", "hdg", "length"):
                number(geometry, attr, where)
            shape = next((child for child in geometry if child.tag in _GEOMETRY_ATTRS), None)
            if shape is None:
                raise DataError(f"{where}: a <geometry> has none of {sorted(_GEOMETRY_ATTRS)}", path)
            for attr in _GEOMETRY_ATTRS[shape.tag]:
                number(shape, attr, where)
        for link in road.findall("link/*"):
            if link.tag in ("predecessor", "successor"):
                kind, target = link.get("elementType", "road"), link.get("elementId")
                if (kind == "road" and target not in road_ids) or (kind == "junction" and target not in junction_ids):
                    raise DataError(f"{where}: {link.tag} {kind} {target!r} does not exist", path)
        if road.get("junction", "-1") != "-1" and road.get("junction") not in junction_ids:
            raise DataError(f"{where}: junction {road.get('junction')!r} does not exist", path)
        sections = road.findall("lanes/laneSection")
        if not sections:
            raise DataError(f"{where}: no <lanes><laneSection>", path)
        for section in sections:
            number(section, "s", where)
            if section.find("center") is None:
                raise DataError(f"{where}: a <laneSection> has no <center> lane", path)
            for side in ("left", "right"):
                for lane in section.findall(f"{side}/lane"):
                    widths = lane.findall("width") or lane.findall("border")
                    if not widths:
                        raise DataError(f"{where}: lane {lane.get('id')!r} has no <width>", path)
                    for width in widths:
                        for attr in ("sOffset", "a", "b", "c", "d"):
                            number(width, attr, where)


def _resolve(name_or_path: str | os.PathLike, map_dirs) -> Path:
    from hdmap import assets, generated

    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix.lower() == ".xodr" or os.sep in text or candidate.is_file():
        if not candidate.is_file():
            raise UserError("map file not found", candidate)
        return candidate.resolve()
    if text in generated.BUILTIN:
        target = cache_dir() / "maps" / f"{text}.xodr"
        content = generated.generate(generated.BUILTIN[text])
        if not target.is_file() or target.read_text() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            partial.write_text(content)
            partial.replace(target)  # atomic: concurrent loaders never read half a file
        return target
    # Explicit directories come before the download so tests and offline machines never need it.
    for directory in map_dirs:
        path = Path(directory).expanduser() / f"{text}.xodr"
        if path.is_file():
            return path.resolve()
    if text in assets.MEMBERS:
        return assets.fetch(text)
    searched = ", ".join(str(d) for d in map_dirs) or "no --map-dir given"
    raise UserError(f"unknown map {text!r}: not a .xodr path, not a built-in map {sorted(generated.BUILTIN) + sorted(assets.MEMBERS)}, "
                    f"and no {text}.xodr in map dirs ({searched})")


def load_map(name_or_path: str | os.PathLike, map_dirs=(), params: HDMapParams | None = None) -> HDMap:
    """Load a map by .xodr path or by name (built-in generated map, Town01, or ``<dir>/<name>.xodr``).

    Maps loaded with default parameters are kept per file (path, size, mtime) in this process, so
    several stages calling ``load_map`` share one HDMap.
    """
    import carla

    path = _resolve(name_or_path, tuple(map_dirs))
    stat = path.stat()
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if params is None and cache_key in _LOADED:
        return _LOADED[cache_key]
    text, road_types, road_sections = _read_xodr(path)
    try:
        carla_map = carla.Map(path.stem, text)
        hdmap = HDMap(path.stem, path, carla_map, road_types, params, road_sections)
    except (RuntimeError, IndexError) as exc:  # CARLA's C++ checks surface as these
        raise DataError(f"carla.Map could not use the OpenDRIVE: {exc}", path) from None
    if params is None:
        _LOADED[cache_key] = hdmap
    return hdmap


@njit(cache=True)
def _nearest_projection(idx, x, y, point_lane, offsets, point_count, points, seg_dir, seg_len, point_s):
    """``_segment_candidates`` + the nearest candidate for one point and its nearest samples
    ``idx``: (lane index, lateral, s). Candidates in the same order (every sample's segment before
    it, then every sample's own), so ties resolve as ``np.argmin`` over them does."""
    best, best_lane, best_lateral, best_s = np.inf, 0, 0.0, 0.0
    for half in range(2):
        for j in range(len(idx)):
            i = idx[j]
            lane = point_lane[i]
            start = offsets[lane]
            last_segment = point_count[i] - 2
            local = i - start - 1 + half
            seg = start + min(max(local, 0), last_segment)
            dx, dy = seg_dir[seg, 0], seg_dir[seg, 1]
            rx, ry = x - points[seg, 0], y - points[seg, 1]
            t = min(max(rx * dx + ry * dy, 0.0), seg_len[seg])
            distance = np.hypot(rx - dx * t, ry - dy * t)
            if distance < best:
                best, best_lane, best_lateral, best_s = distance, lane, dx * ry - dy * rx, point_s[seg] + t
    return best_lane, best_lateral, best_s
