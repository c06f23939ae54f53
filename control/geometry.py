"""Path geometry on a trajectory polyline: projection, arc length, interpolation (numpy, no loops)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def wrap_angle(a):
    """Wrap to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def arc_length(xy: np.ndarray) -> np.ndarray:
    """(K,) cumulative distance along the polyline ``xy`` (K,2), starting at 0."""
    if len(xy) == 0:
        return np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])


@dataclass
class Projection:
    s: float  # arc length of the foot point along the path
    lateral_m: float  # signed offset of the query point, left of the path positive
    path_yaw: float  # heading of the path at the foot point
    segment: int


def project(xy: np.ndarray, s: np.ndarray, point: np.ndarray) -> Projection:
    """Project ``point`` onto the polyline (closest point over all segments).

    A trajectory is short (tens to hundreds of points), so checking every segment is cheap and avoids
    snapping to the wrong branch of a path that loops back near itself.
    """
    if len(xy) == 1:
        return Projection(0.0, 0.0, 0.0, 0)
    a = xy[:-1]
    seg = xy[1:] - a
    seg_len2 = np.maximum(np.einsum("ij,ij->i", seg, seg), 1e-12)
    frac = np.clip(np.einsum("ij,ij->i", point - a, seg) / seg_len2, 0.0, 1.0)
    foot = a + frac[:, None] * seg
    dist2 = np.einsum("ij,ij->i", point - foot, point - foot)
    i = int(np.argmin(dist2))
    seg_len = float(np.sqrt(seg_len2[i]))
    tangent = seg[i] / seg_len
    rel = point - a[i]
    along = float(rel @ tangent)
    # Before the first or past the last point, extend the end segment straight so s and the
    # lateral error stay meaningful; in between, the foot point stays on its segment.
    lower = -np.inf if i == 0 else 0.0
    upper = np.inf if i == len(seg) - 1 else seg_len
    along = float(np.clip(along, lower, upper))
    lateral = float(tangent[0] * rel[1] - tangent[1] * rel[0])
    return Projection(float(s[i]) + along, lateral, float(np.arctan2(tangent[1], tangent[0])), i)


def point_at(xy: np.ndarray, s: np.ndarray, s_query: float) -> np.ndarray:
    """Point at arc length ``s_query``; beyond either end the end segment is extended straight."""
    if len(xy) == 1:
        return xy[0].copy()
    i = int(np.clip(np.searchsorted(s, s_query, side="right") - 1, 0, len(s) - 2))
    seg_len = max(s[i + 1] - s[i], 1e-9)
    return xy[i] + (s_query - s[i]) / seg_len * (xy[i + 1] - xy[i])
