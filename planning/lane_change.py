"""Gap acceptance for the route's lane changes.

``hdmap.routing`` blends a lane change into the route path over ``lane_change_length_m``. Before the
blend starts, the expert checks the target lane: a vehicle beside the ego, or close behind and
faster, or close ahead and slower, makes the gap unsafe, and the expert holds before the blend
(a stop line at its start) until the gap opens. Once the blend has begun it is committed.
"""

from __future__ import annotations

import numpy as np

from adstack.types import Boxes, ObjectClass
from planning.expert_config import LaneChangeConfig


DEFAULT_BLEND_LENGTH_M = 15.0


class LaneChanges:
    def __init__(self, hdmap, route_view, config: LaneChangeConfig):
        self.config = config
        # The blend length is the map's (hdmap.params.lane_change_length_m), which drew the route.
        params = getattr(hdmap, "params", None)
        self.blend_length_m = float(getattr(params, "lane_change_length_m", DEFAULT_BLEND_LENGTH_M))
        lanes = getattr(hdmap, "lanes", {}) if hdmap is not None else {}
        idx = np.asarray(getattr(route_view, "lane_change_indices", []), dtype=np.int64)
        self.changes = []  # (s_blend_start, s_blend_end, target centreline (M,2), its tangents, its s)
        for c in idx:
            key = route_view.lane_keys[int(c)]
            lane = lanes.get(key)
            if lane is None:
                continue
            s_mid = float(route_view.s[int(c)])
            half = self.blend_length_m / 2
            d = np.gradient(lane.centerline, axis=0)
            tangent = d / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
            self.changes.append((s_mid - half, s_mid + half, lane.centerline, tangent, lane.s))

    def hold_lines(self, actors: Boxes | None, ego_xy: np.ndarray, ego_v: float, s_ego: float, s_front: float,
                   ego_length_m: float) -> list[float]:
        """Route arc lengths to hold at (the start of blends whose target gap is not safe now)."""
        if not self.changes:
            return []
        cfg = self.config
        out = []
        for start, end, centre, tangent, lane_s in self.changes:
            if s_front > start + 1.0 or start - s_front > cfg.check_distance_m or end < s_ego:
                continue  # committed, too far ahead, or done
            if actors is None or len(actors) == 0:
                continue
            vehicles = actors.label != int(ObjectClass.PEDESTRIAN)
            if not vehicles.any():
                continue
            pos = actors.center[vehicles, :2]
            vel = actors.velocity[vehicles]
            d2 = np.sum((pos[:, None, :] - centre[None]) ** 2, axis=2)
            j = np.argmin(d2, axis=1)
            in_lane = np.sqrt(d2[np.arange(len(j)), j]) < cfg.lane_half_width_m
            if not in_lane.any():
                continue
            ego_j = int(np.argmin(np.sum((centre - ego_xy) ** 2, axis=1)))
            rel = lane_s[j] - lane_s[ego_j]  # + ahead of the ego, along the target lane
            v_along = np.einsum("ij,ij->i", vel, tangent[j])
            half_len = 0.5 * actors.size[vehicles, 0]
            rear_need = cfg.rear_gap_m + half_len + cfg.closing_time_s * np.maximum(v_along - ego_v, 0.0)
            front_need = cfg.front_gap_m + half_len + ego_length_m + cfg.closing_time_s * np.maximum(ego_v - v_along, 0.0)
            unsafe = in_lane & (rel > -rear_need) & (rel < front_need)
            if unsafe.any():
                out.append(start)
        return out
