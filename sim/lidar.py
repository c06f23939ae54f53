"""Simulated spinning lidar: numba ray casting against the ground, actors and static scenery.

The sensor is modelled as a spinning multi-beam lidar: ``channels`` beams spread linearly over the
vertical field of view, fired at ``columns`` evenly spaced azimuths per revolution. Column ``c``
points at azimuth ``-pi + (c + 0.5) * 2 pi / columns`` in the sensor frame, so a revolution starts
behind the sensor and turns counter-clockwise (seen from above: rear, right, front, left).

Returns come from
- the ground: a plane at ``ground_z`` under the sensor, optionally tilted (``ground_slope``);
- actors (``adstack.types.Boxes`` in the world frame), shaped per class from their box: a vehicle is
  a body box plus a smaller cabin on top, a pedestrian is legs plus upper body, a cyclist is a thin
  bicycle plus a rider; every part stays inside the ground-truth box, so box labels stay exact;
- scenery (``Boxes`` with label STATIC), whose material (building, pole, sign, light housing) is read
  from its shape (see ``scenery_material``).

Each ray is tested only against the primitives whose azimuth interval (seen from the sensor, in the
sensor frame) contains the ray's column: for a convex body not crossing the sensor's z axis that
interval is exact, because every beam of one column shares that column's azimuth whatever the
mounting roll and pitch.

Noise and dropout are deterministic: a seeded ``numpy.random.Generator`` draws a table of 2^16
standard-normal samples once and one 64-bit key per cast; inside the kernel one counter-based hash
(splitmix64) of that key and the ray's index gives the ray's dropout draw (48 bits) and the index of
its Gaussian sample (16 bits). This keeps the kernel free of shared random state and per-ray
transcendental functions: Box-Muller per ray cost 0.95 ms of a 1.5 ms frame.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from adstack.config import load_params
from adstack.errors import DataError
from adstack.types import Boxes, EgoState, ObjectClass, PointCloud

DEFAULT_PARAMS = Path(__file__).resolve().parent / "config" / "lidar.param.yaml"

GAUSS_TABLE_SIZE = 1 << 16  # must match the 16-bit index mask in _cast
GROUND_LABEL = 0  # ground points carry label 0 (ObjectClass.UNKNOWN's value) and actor id -1
STATIC_LABEL = int(ObjectClass.STATIC)

# Material indices into the reflectivity table built from LidarConfig.
MAT_ASPHALT, MAT_PAINT, MAT_GLASS, MAT_PERSON, MAT_METAL, MAT_BUILDING, MAT_RETRO = range(7)


@dataclass
class LidarConfig:
    """Sensor model; defaults are a 64-beam 10 Hz spinning lidar on the roof (sim/config/lidar.param.yaml)."""

    channels: int = 64
    vertical_fov_min_deg: float = -25.0
    vertical_fov_max_deg: float = 15.0
    # Optional explicit beam elevations (deg, ascending, one per channel) for sensors whose beams are
    # not evenly spaced, e.g. an HDL-64E; empty: ``channels`` beams evenly over the vertical FOV.
    channel_elevations_deg: tuple[float, ...] = ()
    columns: int = 1024  # azimuth steps per revolution
    range_max_m: float = 100.0
    range_min_m: float = 1.0  # returns closer than this are dropped (they still block the beam)
    rate_hz: float = 10.0  # revolutions per second
    # Mounting pose of the sensor relative to the ego base frame (REP-103, radians).
    mount_x_m: float = 0.0
    mount_y_m: float = 0.0
    mount_z_m: float = 1.8
    mount_roll_rad: float = 0.0
    mount_pitch_rad: float = 0.0
    mount_yaw_rad: float = 0.0
    range_noise_sigma_m: float = 0.02
    dropout_probability: float = 0.01
    # Intensity = reflectivity * cos(incidence) * exp(-attenuation * range), in [0, 1]. 0.004 /m is
    # CARLA's default atmosphere_attenuation_rate for its ray-cast lidar. Retro-reflectors skip the
    # cosine term: they return light towards the source at any incidence.
    intensity_attenuation_per_m: float = 0.004
    reflectivity_asphalt: float = 0.10
    reflectivity_car_paint: float = 0.50
    reflectivity_glass: float = 0.20
    reflectivity_person: float = 0.20
    reflectivity_metal: float = 0.45
    reflectivity_building: float = 0.35
    reflectivity_retroreflective: float = 0.95
    frame_id: str = "lidar"
    # Threads casting a SpinningLidar's sweep (1: all on the calling thread). The kernels release the
    # GIL, so a background thread casts one tick's columns while the caller steps the simulation
    # (SUMO) to the next; results are the same, bit for bit, for any number of threads.
    cast_threads: int = 2

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise DataError(message, "LidarConfig")

        need(1 <= self.channels <= 512, f"channels must be in [1, 512], got {self.channels}")
        need(8 <= self.columns <= 16384, f"columns must be in [8, 16384], got {self.columns}")
        need(-89.0 <= self.vertical_fov_min_deg < self.vertical_fov_max_deg <= 89.0,
             "vertical FOV must satisfy -89 <= vertical_fov_min_deg < vertical_fov_max_deg <= 89")
        if self.channel_elevations_deg:
            elevations = np.asarray(self.channel_elevations_deg, dtype=np.float64)
            need(elevations.shape == (self.channels,),
                 f"channel_elevations_deg needs one value per channel ({self.channels}), got {elevations.size}")
            need(bool(np.all(np.diff(elevations) > 0)), "channel_elevations_deg must be strictly ascending")
            need(bool(np.all(np.abs(elevations) <= 89.0)), "channel_elevations_deg must lie in [-89, 89]")
            self.channel_elevations_deg = tuple(float(e) for e in elevations)
        need(0.0 <= self.range_min_m < self.range_max_m, "range must satisfy 0 <= range_min_m < range_max_m")
        need(1 <= self.cast_threads <= 16, f"cast_threads must be in [1, 16], got {self.cast_threads}")
        need(self.rate_hz > 0.0, f"rate_hz must be positive, got {self.rate_hz}")
        need(self.range_noise_sigma_m >= 0.0, "range_noise_sigma_m must be >= 0")
        need(0.0 <= self.dropout_probability < 1.0, "dropout_probability must be in [0, 1)")
        need(self.intensity_attenuation_per_m >= 0.0, "intensity_attenuation_per_m must be >= 0")
        for name in ("asphalt", "car_paint", "glass", "person", "metal", "building", "retroreflective"):
            value = getattr(self, f"reflectivity_{name}")
            need(0.0 <= value <= 1.0, f"reflectivity_{name} must be in [0, 1], got {value}")

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "LidarConfig":
        return load_params(cls, path)

    @property
    def mount_pose(self) -> tuple[float, float, float, float, float, float]:
        return (self.mount_x_m, self.mount_y_m, self.mount_z_m,
                self.mount_roll_rad, self.mount_pitch_rad, self.mount_yaw_rad)

    def reflectivity_table(self) -> np.ndarray:
        return np.array([self.reflectivity_asphalt, self.reflectivity_car_paint, self.reflectivity_glass,
                         self.reflectivity_person, self.reflectivity_metal, self.reflectivity_building,
                         self.reflectivity_retroreflective])


# ----------------------------------------------------------------------------------------------
# Poses

def rotation_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation matrix R = Rz(yaw) Ry(pitch) Rx(roll) (fixed-axis roll, pitch, yaw as in ROS)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def _rpy_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    pitch = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    return math.atan2(rot[2, 1], rot[2, 2]), pitch, math.atan2(rot[1, 0], rot[0, 0])


def sensor_pose_from_ego(ego: EgoState, config: LidarConfig) -> tuple[float, float, float, float, float, float]:
    """World pose (x, y, z, roll, pitch, yaw) of a sensor mounted on the ego (ego roll = pitch = 0)."""
    rot_ego = rotation_rpy(0.0, 0.0, ego.yaw)
    mount = np.array([config.mount_x_m, config.mount_y_m, config.mount_z_m])
    position = np.array([ego.x, ego.y, ego.z]) + rot_ego @ mount
    rot = rot_ego @ rotation_rpy(config.mount_roll_rad, config.mount_pitch_rad, config.mount_yaw_rad)
    return (float(position[0]), float(position[1]), float(position[2]), *_rpy_from_rotation(rot))


# ----------------------------------------------------------------------------------------------
# Shapes: boxes -> primitive boxes with a material

# Thresholds of scenery_material (metres).
SIGN_PLATE_MAX_THICKNESS_M = 0.12
POST_MAX_FOOTPRINT_M = 0.6
POST_MIN_HEIGHT_M = 1.5


@njit(cache=True, fastmath=False, nogil=True)
def _scenery_material_one(length, width, height):
    if min(length, width) <= SIGN_PLATE_MAX_THICKNESS_M:
        return MAT_RETRO
    if max(length, width) <= POST_MAX_FOOTPRINT_M:
        return MAT_METAL if height >= POST_MIN_HEIGHT_M else MAT_PAINT
    return MAT_BUILDING


def scenery_material(size: np.ndarray) -> np.ndarray:
    """Material of scenery boxes from their (N,3) size: thin plates are retro-reflective signs,
    slender posts are metal poles, small boxes are light housings (paint), the rest buildings."""
    size = np.asarray(size, dtype=np.float64).reshape(-1, 3)
    footprint_min, footprint_max = size[:, :2].min(axis=1), size[:, :2].max(axis=1)
    post = footprint_max <= POST_MAX_FOOTPRINT_M
    material = np.full(size.shape[0], MAT_BUILDING, dtype=np.int32)
    material[post & (size[:, 2] >= POST_MIN_HEIGHT_M)] = MAT_METAL
    material[post & (size[:, 2] < POST_MIN_HEIGHT_M)] = MAT_PAINT
    material[footprint_min <= SIGN_PLATE_MAX_THICKNESS_M] = MAT_RETRO  # same order as the kernel
    return material


# Per-class shapes: each row one primitive box cut from the actor's box, along its own axes, as
# fractions of its size: label, x offset (of length), length, width, bottom, top (of height),
# material, cap on the width (m). Every part stays inside the box, so box labels stay exact.
SHAPE_PARTS = np.array([
    # vehicle: body over the whole footprint up to 55 % of the height, a cabin set back on top
    [ObjectClass.VEHICLE, 0.0, 1.0, 1.0, 0.0, 0.55, MAT_PAINT, np.inf],
    [ObjectClass.VEHICLE, -0.08, 0.55, 0.9, 0.55, 1.0, MAT_GLASS, np.inf],
    # pedestrian: narrower legs, then torso and head
    [ObjectClass.PEDESTRIAN, 0.0, 0.8, 0.6, 0.0, 0.47, MAT_PERSON, np.inf],
    [ObjectClass.PEDESTRIAN, 0.0, 1.0, 1.0, 0.47, 1.0, MAT_PERSON, np.inf],
    # cyclist: a thin bicycle over the whole length, a rider above its middle
    [ObjectClass.CYCLIST, 0.0, 1.0, 1.0, 0.0, 0.6, MAT_METAL, 0.16],
    [ObjectClass.CYCLIST, -0.05, 0.45, 0.8, 0.35, 1.0, MAT_PERSON, 0.5],
], dtype=np.float64)


@njit(cache=True, fastmath=False, nogil=True)
def _expand_boxes(center, size, yaw, label, ids, as_scenery, parts, origin, range_max):
    """Primitive boxes (centre, half size, yaw, material, label, actor id) of the boxes that can come
    within ``range_max`` of ``origin``. Actors get their class's parts from ``parts``; scenery (and
    actors of other classes) one box with a material read from its shape."""
    n = center.shape[0]
    n_parts = np.zeros(n, np.int64)
    for i in range(n):
        dx, dy, dz = center[i, 0] - origin[0], center[i, 1] - origin[1], center[i, 2] - origin[2]
        reach = 0.5 * math.sqrt(size[i, 0] ** 2 + size[i, 1] ** 2 + size[i, 2] ** 2)
        if math.sqrt(dx * dx + dy * dy + dz * dz) - reach > range_max:
            continue
        if not as_scenery:
            for r in range(parts.shape[0]):
                if parts[r, 0] == label[i]:
                    n_parts[i] += 1
        if n_parts[i] == 0:
            n_parts[i] = 1
    total = n_parts.sum()
    out_center = np.empty((total, 3))
    out_half = np.empty((total, 3))
    out_yaw = np.empty(total)
    out_material = np.empty(total, np.int32)
    out_label = np.empty(total, np.int32)
    out_actor = np.empty(total, np.int64)
    k = 0
    for i in range(n):
        if n_parts[i] == 0:
            continue
        length, width, height = size[i, 0], size[i, 1], size[i, 2]
        c, s = math.cos(yaw[i]), math.sin(yaw[i])
        bottom = center[i, 2] - height / 2
        shaped = False
        if not as_scenery:
            for r in range(parts.shape[0]):
                if parts[r, 0] != label[i]:
                    continue
                shaped = True
                dx = parts[r, 1] * length
                out_center[k, 0] = center[i, 0] + c * dx
                out_center[k, 1] = center[i, 1] + s * dx
                out_center[k, 2] = bottom + height * (parts[r, 4] + parts[r, 5]) / 2
                out_half[k, 0] = length * parts[r, 2] / 2
                out_half[k, 1] = min(width * parts[r, 3], parts[r, 7]) / 2
                out_half[k, 2] = height * (parts[r, 5] - parts[r, 4]) / 2
                out_yaw[k] = yaw[i]
                out_material[k] = int(parts[r, 6])
                out_label[k] = label[i]
                out_actor[k] = ids[i]
                k += 1
        if not shaped:
            out_center[k, 0] = center[i, 0]
            out_center[k, 1] = center[i, 1]
            out_center[k, 2] = center[i, 2]
            out_half[k, 0] = length / 2
            out_half[k, 1] = width / 2
            out_half[k, 2] = height / 2
            out_yaw[k] = yaw[i]
            out_material[k] = _scenery_material_one(length, width, height)
            out_label[k] = STATIC_LABEL if as_scenery else label[i]
            out_actor[k] = -1 if as_scenery else ids[i]
            k += 1
    return out_center, out_half, out_yaw, out_material, out_label, out_actor


def box_primitives(boxes: Boxes, as_scenery: bool, origin=(0.0, 0.0, 0.0), range_max_m: float = np.inf):
    """(center, half_size, yaw, material, label, actor_id) arrays of the primitive boxes the lidar
    casts against: per-class shapes for actors, one box per scenery box (label STATIC, id -1)."""
    return _expand_boxes(boxes.center, boxes.size, boxes.yaw, boxes.label, boxes.ids, as_scenery, SHAPE_PARTS,
                         np.asarray(origin, dtype=np.float64), float(range_max_m))


# ----------------------------------------------------------------------------------------------
# Kernels

_U64_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, fastmath=False, nogil=True)
def _splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, fastmath=False, nogil=True)
def _primitive_bounds(prim_center, prim_half, prim_cos_yaw, prim_sin_yaw, origin, rot_world_to_sensor,
                      columns, range_max, elevation):
    """Per primitive: the columns lo..hi (modulo ``columns``; hi < lo: culled) and channels ch_lo..ch_hi
    that can hit it, a lower bound on the range at which a ray can meet it, and the primitives in
    order of that bound (``_column_lists`` turns this into per-column lists for a column range)."""
    n_prim = prim_center.shape[0]
    step = 2.0 * math.pi / columns
    lo = np.zeros(n_prim, np.int64)
    hi = np.full(n_prim, -1, np.int64)  # hi < lo: primitive culled
    min_dist = np.empty(n_prim)  # lower bound of the range at which a ray can meet the primitive
    ch_lo = np.zeros(n_prim, np.int64)
    ch_hi = np.full(n_prim, elevation.shape[0] - 1, np.int64)
    corner_sign = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    xs = np.empty(8)
    ys = np.empty(8)
    zs = np.empty(8)
    for p in range(n_prim):
        cx = prim_center[p, 0] - origin[0]
        cy = prim_center[p, 1] - origin[1]
        cz = prim_center[p, 2] - origin[2]
        hx, hy, hz = prim_half[p, 0], prim_half[p, 1], prim_half[p, 2]
        min_dist[p] = math.sqrt(cx * cx + cy * cy + cz * cz) - math.sqrt(hx * hx + hy * hy + hz * hz)
        if min_dist[p] > range_max:
            continue
        # corners in the sensor frame
        k = 0
        for s in range(4):
            ax = corner_sign[s, 0] * hx
            ay = corner_sign[s, 1] * hy
            wx = cx + prim_cos_yaw[p] * ax - prim_sin_yaw[p] * ay
            wy = cy + prim_sin_yaw[p] * ax + prim_cos_yaw[p] * ay
            for z_sign in (-1.0, 1.0):
                wz = cz + z_sign * hz
                xs[k] = rot_world_to_sensor[0, 0] * wx + rot_world_to_sensor[0, 1] * wy + rot_world_to_sensor[0, 2] * wz
                ys[k] = rot_world_to_sensor[1, 0] * wx + rot_world_to_sensor[1, 1] * wy + rot_world_to_sensor[1, 2] * wz
                zs[k] = rot_world_to_sensor[2, 0] * wx + rot_world_to_sensor[2, 1] * wy + rot_world_to_sensor[2, 2] * wz
                k += 1
        mx = 0.0
        my = 0.0
        for k in range(8):
            mx += xs[k]
            my += ys[k]
        mx /= 8.0
        my /= 8.0
        # Elevation bounds: over the box, sensor-frame z lies in [z_min, z_max] (corners bound a linear
        # function) and the distance from the sensor's z axis in [rho_min, rho_max] (centre +- the
        # projected circumradius); elevation = atan2(z, rho) is then bounded by these extremes.
        z_min = zs.min()
        z_max = zs.max()
        radius = 0.0
        for k in range(8):
            radius = max(radius, math.sqrt((xs[k] - mx) ** 2 + (ys[k] - my) ** 2))
        rho_c = math.sqrt(mx * mx + my * my)
        rho_min = max(0.0, rho_c - radius)
        rho_max = rho_c + radius
        el_hi = math.atan2(z_max, rho_min if z_max > 0.0 else rho_max)
        el_lo = math.atan2(z_min, rho_min if z_min < 0.0 else rho_max)
        ch_lo[p] = np.searchsorted(elevation, el_lo - 1e-9)
        ch_hi[p] = np.searchsorted(elevation, el_hi + 1e-9) - 1
        if ch_hi[p] < ch_lo[p]:
            continue  # passes between two beams or outside the vertical field of view
        full = mx * mx + my * my < 1e-12
        a_min = 0.0
        a_max = 0.0
        ref = 0.0
        if not full:
            ref = math.atan2(my, mx)
            a_min = math.pi
            a_max = -math.pi
            for k in range(8):
                if xs[k] * xs[k] + ys[k] * ys[k] < 1e-18:
                    full = True  # a corner on the sensor's axis: every azimuth can see it
                    break
                d = math.atan2(ys[k], xs[k]) - ref
                if d > math.pi:
                    d -= 2.0 * math.pi
                elif d < -math.pi:
                    d += 2.0 * math.pi
                a_min = min(a_min, d)
                a_max = max(a_max, d)
            # a convex body whose projection holds the axis spans at least pi: treat as full circle
            if a_max - a_min >= math.pi - 1e-9:
                full = True
        if full:
            lo[p] = 0
            hi[p] = columns - 1
        else:
            lo[p] = int(math.ceil((ref + a_min + math.pi) / step - 0.5 - 1e-9))
            hi[p] = int(math.floor((ref + a_max + math.pi) / step - 0.5 + 1e-9))
            if hi[p] - lo[p] + 1 >= columns:
                lo[p] = 0
                hi[p] = columns - 1
    # Lists sorted nearest first, so a ray stops testing once no later primitive can beat its hit.
    order = np.argsort(min_dist)
    return lo, hi, min_dist, ch_lo, ch_hi, order


@njit(cache=True, fastmath=False, nogil=True)
def _column_lists(lo, hi, order, columns, start_col, end_col):
    """CSR lists (offsets over the local columns of [start_col, end_col), primitive indices nearest
    first) of the primitives each column can hit."""
    n_prim = lo.shape[0]
    n_local = end_col - start_col
    counts = np.zeros(n_local + 1, np.int64)
    for p in range(n_prim):
        for j in range(lo[p], hi[p] + 1):
            c = j % columns
            if start_col <= c < end_col:
                counts[c - start_col + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    indices = np.empty(offsets[-1], np.int64)
    for p in order:
        for j in range(lo[p], hi[p] + 1):
            c = j % columns
            if start_col <= c < end_col:
                indices[fill[c - start_col]] = p
                fill[c - start_col] += 1
    return offsets, indices


@njit(cache=True, fastmath=False, nogil=True)
def _cast(origin, rot_sensor_to_world, cos_el, sin_el, cos_az, sin_az, start_col, end_col,
          offsets, indices, prim_min_dist, prim_ch_lo, prim_ch_hi,
          prim_center, prim_half, prim_cos_yaw, prim_sin_yaw, prim_material, prim_label, prim_actor,
          ground_label, ground_z, ground_slope_x, ground_slope_y, range_min, range_max,
          noise_sigma, gauss_table, dropout, key, attenuation, reflectivity,
          out_range, out_intensity, out_label, out_actor, out_first_col):
    """Nearest hit per ray of columns [start_col, end_col): range (-1: no return), intensity, label and
    actor id of what it hit. The outputs are (column - out_first_col, channel): a whole revolution's
    arrays (out_first_col 0), of which only these columns are written, or a chunk's own.
    ``offsets`` are over the local columns (``_column_lists`` of the same range)."""
    n_channels = cos_el.shape[0]
    r = rot_sensor_to_world
    ox, oy, oz = origin[0], origin[1], origin[2]
    ground_norm = math.sqrt(1.0 + ground_slope_x * ground_slope_x + ground_slope_y * ground_slope_y)
    retro = MAT_RETRO
    # the sensor origin in each primitive's own frame: the same for every ray, so computed once
    n_prim = prim_center.shape[0]
    local_x = np.empty(n_prim)
    local_y = np.empty(n_prim)
    local_z = np.empty(n_prim)
    for p in range(n_prim):
        c, s = prim_cos_yaw[p], prim_sin_yaw[p]
        px, py, pz = ox - prim_center[p, 0], oy - prim_center[p, 1], oz - prim_center[p, 2]
        local_x[p] = c * px + s * py
        local_y[p] = -s * px + c * py
        local_z[p] = pz
    # Per column: every ray's direction and ground hit, then each primitive of the column's list
    # against just the channels that can reach it (no per-ray scan past primitives out of its
    # channel range), then every ray's return. Each ray still meets the primitives nearest first
    # and skips those that cannot beat its current hit, so the result is the ray-by-ray one.
    ray_dx = np.empty(n_channels)
    ray_dy = np.empty(n_channels)
    ray_dz = np.empty(n_channels)
    ray_best = np.empty(n_channels)
    ray_cos = np.empty(n_channels)
    ray_prim = np.empty(n_channels, np.int64)
    for local in range(end_col - start_col):
        col = start_col + local
        row = col - out_first_col
        for ch in range(n_channels):
            sx = cos_el[ch] * cos_az[col]
            sy = cos_el[ch] * sin_az[col]
            sz = sin_el[ch]
            dx = r[0, 0] * sx + r[0, 1] * sy + r[0, 2] * sz
            dy = r[1, 0] * sx + r[1, 1] * sy + r[1, 2] * sz
            dz = r[2, 0] * sx + r[2, 1] * sy + r[2, 2] * sz
            ray_dx[ch] = dx
            ray_dy[ch] = dy
            ray_dz[ch] = dz
            ray_best[ch] = math.inf
            ray_cos[ch] = 0.0
            ray_prim[ch] = -2
            # ground plane z = ground_z + slope_x * (x - ox) + slope_y * (y - oy), seen from above
            denom = dz - ground_slope_x * dx - ground_slope_y * dy
            if denom < 0.0 and oz > ground_z:
                ray_best[ch] = (ground_z - oz) / denom
                ray_cos[ch] = -denom / ground_norm
                ray_prim[ch] = -1
        for m in range(offsets[local], offsets[local + 1]):
            p = indices[m]
            min_dist = prim_min_dist[p]
            c, s = prim_cos_yaw[p], prim_sin_yaw[p]
            lx, ly, pz = local_x[p], local_y[p], local_z[p]
            hx, hy, hz = prim_half[p, 0], prim_half[p, 1], prim_half[p, 2]
            for ch in range(prim_ch_lo[p], prim_ch_hi[p] + 1):
                best = ray_best[ch]
                if min_dist >= best:
                    continue
                dx, dy, dz = ray_dx[ch], ray_dy[ch], ray_dz[ch]
                ux = c * dx + s * dy
                uy = -s * dx + c * dy
                t_near = -math.inf
                t_far = math.inf
                near_cos = 0.0
                hit = True
                for axis in range(3):
                    if axis == 0:
                        pos, u, h = lx, ux, hx
                    elif axis == 1:
                        pos, u, h = ly, uy, hy
                    else:
                        pos, u, h = pz, dz, hz
                    if abs(u) < 1e-12:
                        if abs(pos) > h:
                            hit = False
                            break
                        continue
                    t1 = (-h - pos) / u
                    t2 = (h - pos) / u
                    if t1 > t2:
                        t1, t2 = t2, t1
                    if t1 > t_near:
                        t_near = t1
                        near_cos = abs(u)
                    if t2 < t_far:
                        t_far = t2
                    if t_near > t_far:
                        hit = False
                        break
                # a sensor inside a primitive sees nothing of it (t_near <= 0)
                if hit and t_near > 0.0 and t_near < best:
                    ray_best[ch] = t_near
                    ray_cos[ch] = near_cos
                    ray_prim[ch] = p
        for ch in range(n_channels):
            best, best_cos, best_prim = ray_best[ch], ray_cos[ch], ray_prim[ch]
            out_range[row, ch] = -1.0
            out_intensity[row, ch] = 0.0
            if best_prim >= 0:
                out_label[row, ch] = prim_label[best_prim]
                out_actor[row, ch] = prim_actor[best_prim]
            else:
                out_label[row, ch] = ground_label
                out_actor[row, ch] = -1
            # beams ending closer than range_min are lost, but they were blocked all the same
            if best_prim == -2 or best > range_max or best < range_min:
                continue
            # one hash per ray: its high 48 bits draw the dropout, its low 16 bits pick a Gaussian sample
            bits = _splitmix64(key ^ (np.uint64(col * n_channels + ch) * _U64_GOLDEN))
            if dropout > 0.0 and (float(bits >> np.uint64(16)) + 1.0) * (1.0 / 281474976710656.0) <= dropout:
                continue
            rng = best + noise_sigma * gauss_table[bits & np.uint64(0xFFFF)]
            if rng < range_min or rng > range_max:
                continue
            material = 0 if best_prim == -1 else prim_material[best_prim]
            cos_term = 1.0 if material == retro else best_cos
            intensity = reflectivity[material] * cos_term * math.exp(-attenuation * rng)
            out_range[row, ch] = rng
            out_intensity[row, ch] = min(1.0, max(0.0, intensity))


@njit(cache=True, fastmath=False, nogil=True)
def _cast_span(lo, hi, order, columns, origin, rot_sensor_to_world, cos_el, sin_el, cos_az, sin_az, start_col,
               end_col, prim_min_dist, prim_ch_lo, prim_ch_hi, prim_center, prim_half, prim_cos_yaw, prim_sin_yaw,
               prim_material, prim_label, prim_actor, ground_label, ground_z, ground_slope_x, ground_slope_y,
               range_min, range_max, noise_sigma, gauss_table, dropout, key, attenuation, reflectivity,
               out_range, out_intensity, out_label, out_actor, out_first_col):
    """``_column_lists`` and ``_cast`` in one call: a background thread needs the GIL again only
    when the whole span is done (each return to Python waits for the GIL, which the simulation's
    thread may hold for milliseconds)."""
    offsets, indices = _column_lists(lo, hi, order, columns, start_col, end_col)
    _cast(origin, rot_sensor_to_world, cos_el, sin_el, cos_az, sin_az, start_col, end_col, offsets, indices,
          prim_min_dist, prim_ch_lo, prim_ch_hi, prim_center, prim_half, prim_cos_yaw, prim_sin_yaw,
          prim_material, prim_label, prim_actor, ground_label, ground_z, ground_slope_x, ground_slope_y,
          range_min, range_max, noise_sigma, gauss_table, dropout, key, attenuation, reflectivity,
          out_range, out_intensity, out_label, out_actor, out_first_col)


@njit(cache=True, fastmath=False, nogil=True)
def _bounds_and_cast(origin, rot_sensor_to_world, rot_world_to_sensor, elevation, columns, cos_el, sin_el, cos_az,
                     sin_az, start_col, end_col, prim_center, prim_half, prim_cos_yaw, prim_sin_yaw, prim_material,
                     prim_label, prim_actor, ground_label, ground_z, ground_slope_x, ground_slope_y, range_min,
                     range_max, noise_sigma, gauss_table, dropout, key, attenuation, reflectivity, out_range,
                     out_intensity, out_label, out_actor, out_first_col):
    """``_primitive_bounds`` and ``_cast_span`` in one call (a handed-off cast: one GIL release)."""
    bounds = _primitive_bounds(prim_center, prim_half, prim_cos_yaw, prim_sin_yaw, origin, rot_world_to_sensor,
                               columns, range_max, elevation)
    lo, hi, min_dist, ch_lo, ch_hi, order = bounds
    _cast_span(lo, hi, order, columns, origin, rot_sensor_to_world, cos_el, sin_el, cos_az, sin_az, start_col,
               end_col, min_dist, ch_lo, ch_hi, prim_center, prim_half, prim_cos_yaw, prim_sin_yaw, prim_material,
               prim_label, prim_actor, ground_label, ground_z, ground_slope_x, ground_slope_y, range_min, range_max,
               noise_sigma, gauss_table, dropout, key, attenuation, reflectivity, out_range, out_intensity,
               out_label, out_actor, out_first_col)
    return bounds


@njit(cache=True, fastmath=False, nogil=True)
def _compact(out_range, out_intensity, out_label, out_actor, start_col, end_col, cos_el, sin_el, cos_az, sin_az):
    """Points (N,4) x, y, z, intensity in the sensor frame, labels and actor ids of the returns of
    columns [start_col, end_col), column by column."""
    n = _count_returns(out_range, start_col, end_col)
    points = np.empty((n, 4), np.float32)
    labels = np.empty(n, np.int32)
    actors = np.empty(n, np.int64)
    _compact_into(out_range, out_intensity, out_label, out_actor, start_col, end_col, cos_el, sin_el, cos_az, sin_az,
                  points, labels, actors)
    return points, labels, actors


@njit(cache=True, fastmath=False, nogil=True)
def _compact_into(out_range, out_intensity, out_label, out_actor, start_col, end_col, cos_el, sin_el, cos_az, sin_az,
                  points, labels, actors):
    """``_compact`` into given arrays (long enough); returns the number of points written."""
    n_channels = out_range.shape[1]
    i = 0
    for col in range(start_col, end_col):
        for ch in range(n_channels):
            rng = out_range[col, ch]
            if rng < 0.0:
                continue
            points[i, 0] = rng * cos_el[ch] * cos_az[col]
            points[i, 1] = rng * cos_el[ch] * sin_az[col]
            points[i, 2] = rng * sin_el[ch]
            points[i, 3] = out_intensity[col, ch]
            labels[i] = out_label[col, ch]
            actors[i] = out_actor[col, ch]
            i += 1
    return i


@njit(cache=True, fastmath=False, nogil=True)
def _count_returns(out_range, start_col, end_col):
    n = 0
    for col in range(start_col, end_col):
        for ch in range(out_range.shape[1]):
            if out_range[col, ch] >= 0.0:
                n += 1
    return n


# ----------------------------------------------------------------------------------------------

class Lidar:
    """Ray-cast lidar. ``scan`` casts a whole revolution at one world state, ``scan_partial`` a range
    of columns (a spinning sensor's share of one simulation tick; see ``SpinningLidar``).

    ``scan`` and ``scan_partial`` cast on the calling thread. ``SpinningLidar`` (with
    ``config.cast_threads > 1``) queues casts in chunks of ``CHUNK_COLUMNS`` columns that
    ``cast_threads - 1`` background threads and the calling thread take in turn (the kernels release
    the GIL). Every ray's result depends only on its own column, the cast's primitives and its key,
    so the clouds are the same, bit for bit, whatever the number of threads."""

    def __init__(self, config: LidarConfig | None = None, seed: int = 0, warm_up: bool = True):
        self.config = config or LidarConfig()
        self.rng = np.random.default_rng(seed)
        cfg = self.config
        elevation = np.deg2rad(np.asarray(cfg.channel_elevations_deg, dtype=np.float64) if cfg.channel_elevations_deg
                               else np.linspace(cfg.vertical_fov_min_deg, cfg.vertical_fov_max_deg, cfg.channels))
        self.elevation_rad = elevation
        self.azimuth_rad = -np.pi + (np.arange(cfg.columns) + 0.5) * (2 * np.pi / cfg.columns)
        self._cos_el, self._sin_el = np.cos(elevation), np.sin(elevation)
        self._cos_az, self._sin_az = np.cos(self.azimuth_rad), np.sin(self.azimuth_rad)
        self._reflectivity = cfg.reflectivity_table()
        # 2^16 standard-normal samples drawn once from the seeded generator; each ray picks one by hash
        self._gauss_table = self.rng.standard_normal(GAUSS_TABLE_SIZE)
        # per-ray scratch reused between casts: fresh 1 MB arrays each frame cost page faults
        self._buffers = ray_buffers(cfg)
        self._pool = None
        self._pool_pid = None
        self._queue = _CastQueue(self)
        self.cast_cpu_s = 0.0  # CPU time spent in the ray casts, summed over all threads (benchmarks)
        if warm_up:  # compile (or load the cached kernels) now, not inside the first tick
            Lidar(cfg, seed=0, warm_up=False).scan_partial(0, 1, (0, 0, 1.8, 0, 0, 0), Boxes(
                center=[[5.0, 0.0, 1.0]], size=[[4.0, 2.0, 1.5]], yaw=[0.0], label=[1]), None, 0.0)
            _count_returns(self._buffers[0], 0, 0)

    def sensor_pose(self, ego: EgoState) -> tuple[float, float, float, float, float, float]:
        """World pose of this sensor on ``ego`` (its mounting pose composed with the ego pose)."""
        return sensor_pose_from_ego(ego, self.config)

    def scan(self, sensor_pose_world, actors: Boxes | None = None, scenery: Boxes | None = None,
             ground_z: float | None = None, stamp: float = 0.0, ground_slope=(0.0, 0.0)) -> PointCloud:
        """One full revolution cast at one world state. See ``scan_partial`` for the arguments."""
        return self.scan_partial(0, self.config.columns, sensor_pose_world, actors, scenery, ground_z,
                                 stamp=stamp, ground_slope=ground_slope)

    def scan_partial(self, start_col: int, end_col: int, sensor_pose_world, actors: Boxes | None = None,
                     scenery: Boxes | None = None, ground_z: float | None = None, stamp: float = 0.0,
                     ground_slope=(0.0, 0.0)) -> PointCloud:
        """Cast columns ``[start_col, end_col)``; points in the sensor frame, column by column.

        sensor_pose_world: (x, y, z, roll, pitch, yaw) of the sensor in the world, or an ``EgoState``
            (the sensor pose is then the ego pose composed with the configured mounting pose).
        actors: world-frame boxes; the label picks the shape, ``ids`` become the points' actor ids.
        scenery: world-frame static boxes (label STATIC), e.g. from ``SceneryIndex.query``.
        ground_z: height of the ground plane below the sensor (default: the ego's z, else 0).
        ground_slope: (dz/dx, dz/dy) of the ground plane in the world frame, about the sensor's xy.
        """
        cfg = self.config
        if not (0 <= start_col <= end_col <= cfg.columns):
            raise ValueError(f"columns [{start_col}, {end_col}) outside [0, {cfg.columns}]")
        job = self._prepare(sensor_pose_world, actors, scenery, ground_z, ground_slope)
        # On this thread alone: a second thread halves a frame on an idle machine, but on the shared
        # 2-core machine it doubled the median (3.3 ms instead of 1.2 ms with 50 actors, load 10).
        # SpinningLidar overlaps its casts with the simulation instead.
        self._cast_columns(job, start_col, end_col, self._buffers)
        points, labels, actor_ids = _compact(*self._buffers, start_col, end_col, self._cos_el, self._sin_el,
                                             self._cos_az, self._sin_az)
        return PointCloud(points, frame_id=cfg.frame_id, stamp=float(stamp), labels=labels, actor_ids=actor_ids)

    # --- the steps of a cast (SpinningLidar runs them on different threads) -----------------------

    def _prepare(self, sensor_pose_world, actors, scenery, ground_z, ground_slope) -> tuple:
        """Everything a cast needs, on the calling thread: the pose, the primitives (fresh arrays, so
        the caller may change its boxes afterwards) and the cast's noise key (drawn in call order)."""
        cfg = self.config
        if isinstance(sensor_pose_world, EgoState):
            if ground_z is None:
                ground_z = sensor_pose_world.z
            sensor_pose_world = self.sensor_pose(sensor_pose_world)
        pose = np.asarray(sensor_pose_world, dtype=np.float64).reshape(-1)
        if pose.shape[0] != 6 or not np.all(np.isfinite(pose)):
            raise ValueError("sensor pose must be 6 finite numbers (x, y, z, roll, pitch, yaw), "
                             f"got {sensor_pose_world!r}")
        ground_z = 0.0 if ground_z is None else float(ground_z)
        origin = pose[:3].copy()
        rot = rotation_rpy(*pose[3:])
        parts = [box_primitives(boxes, as_scenery, origin, cfg.range_max_m)
                 for boxes, as_scenery in ((actors, False), (scenery, True)) if boxes is not None and len(boxes)]
        if len(parts) == 1:
            center, half, yaw, material, label, actor_id = parts[0]
        elif parts:
            center, half, yaw, material, label, actor_id = (np.concatenate(arrays) for arrays in zip(*parts))
        else:
            center, half, yaw = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
            material, label, actor_id = np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)
        key = np.uint64(self.rng.integers(0, 2**63, dtype=np.int64))
        # the culling bounds are computed by the first thread that casts a chunk of this job ([None]
        # until then; two threads computing them at once get the same arrays)
        return (origin, rot, center, half, np.cos(yaw), np.sin(yaw), material, label, actor_id, ground_z,
                float(ground_slope[0]), float(ground_slope[1]), key, [None])

    def _cast_columns(self, job: tuple, start_col: int, end_col: int, buffers: tuple, first_col: int = 0) -> None:
        """Cast columns [start_col, end_col) of a prepared job into ``buffers`` (row = column -
        first_col); the kernels release the GIL, so this runs in parallel with Python on other threads.
        A job whose culling bounds nobody computed yet gets them in the same kernel call."""
        cfg = self.config
        cpu_start = time.thread_time()
        origin, rot, center, half, cos_yaw, sin_yaw, material, label, actor_id, ground_z, slope_x, slope_y, key, \
            cached = job
        out_range, out_intensity, out_label, out_actor = buffers
        bounds = cached[0]
        if bounds is None:
            cached[0] = _bounds_and_cast(
                origin, rot, np.ascontiguousarray(rot.T), self.elevation_rad, cfg.columns, self._cos_el, self._sin_el,
                self._cos_az, self._sin_az, start_col, end_col, center, half, cos_yaw, sin_yaw, material, label,
                actor_id, GROUND_LABEL, ground_z, slope_x, slope_y, cfg.range_min_m, cfg.range_max_m,
                cfg.range_noise_sigma_m, self._gauss_table, cfg.dropout_probability, key,
                cfg.intensity_attenuation_per_m, self._reflectivity, out_range, out_intensity, out_label, out_actor,
                first_col)
        else:
            lo, hi, min_dist, ch_lo, ch_hi, order = bounds
            _cast_span(lo, hi, order, cfg.columns, origin, rot, self._cos_el, self._sin_el, self._cos_az,
                       self._sin_az, start_col, end_col, min_dist, ch_lo, ch_hi, center, half, cos_yaw, sin_yaw,
                       material, label, actor_id, GROUND_LABEL, ground_z, slope_x, slope_y, cfg.range_min_m,
                       cfg.range_max_m, cfg.range_noise_sigma_m, self._gauss_table, cfg.dropout_probability, key,
                       cfg.intensity_attenuation_per_m, self._reflectivity, out_range, out_intensity, out_label,
                       out_actor, first_col)
        with self._queue.lock:  # casts finish on several threads
            self.cast_cpu_s += time.thread_time() - cpu_start

    def _bounds(self, job: tuple) -> tuple:
        """The job's culling bounds (``_primitive_bounds``), computed on first use."""
        bounds = job[-1]
        if bounds[0] is None:
            origin, rot, center, half, cos_yaw, sin_yaw = job[:6]
            bounds[0] = _primitive_bounds(center, half, cos_yaw, sin_yaw, origin, np.ascontiguousarray(rot.T),
                                          self.config.columns, self.config.range_max_m, self.elevation_rad)
        return bounds[0]

    def _cast_split(self, job: tuple, start_col: int, end_col: int, buffers: tuple) -> None:
        """Cast columns [start_col, end_col) now, with the background threads' help, and wait."""
        self._cast_later(job, start_col, end_col, buffers)
        self._queue.finish()

    def _cast_later(self, job: tuple, start_col: int, end_col: int, buffers: tuple, handoff: bool = False,
                    sweep: "_Sweep | None" = None, completes: bool = False) -> None:
        """Queue the cast for the background threads; ``_queue.finish()`` completes it. ``handoff``:
        one chunk that a background thread casts (a single kernel call, bounds included) while the
        caller goes on. ``sweep``: the revolution these columns belong to (``completes``: its last
        ones), compacted by whichever thread casts its last chunk."""
        if self.config.cast_threads <= 1:
            if sweep is not None:
                sweep.add_chunks(1, completes)
            self._cast_columns(job, start_col, end_col, buffers)
            if sweep is not None:
                sweep.chunk_done()
        else:
            self._queue.put(job, start_col, end_col, buffers, handoff=handoff, sweep=sweep, completes=completes)

    def worker_pool(self) -> ThreadPoolExecutor:
        """The background threads (``cast_threads - 1``, at least one), started on first use."""
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child has no threads
            self._pool = ThreadPoolExecutor(max(1, self.config.cast_threads - 1), thread_name_prefix="lidar-cast")
            self._pool_pid = os.getpid()
        return self._pool

    def close(self) -> None:
        """Stop the background threads (they also stop when the Lidar is garbage collected)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._queue.finish()
            self._pool.shutdown(wait=True)
        self._pool = None


# Casts are queued in chunks of this many columns (1/8 revolution) that any thread may take.
CHUNK_COLUMNS = 128
# How long the caller waits for a background thread to pick up a handed-off cast before going on: an
# idle core wakes the thread in tens of microseconds; a loaded machine may take milliseconds
# (the GIL: see _CastQueue). A cast nobody took by ``finish`` is cast by the caller.
PICKUP_TIMEOUT_S = 0.0005
# How long ``finish`` waits for a chunk a background thread is casting before casting it itself: on
# an idle core it is done in well under a millisecond; on a loaded machine the thread may wait
# milliseconds for a core, and the simulation should not wait with it.
FINISH_TIMEOUT_S = 0.001

_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)


class _CastQueue:
    """Chunks of prepared casts that the lidar's background threads and the caller take in turn.

    Background threads take chunks from the back of the queue, the caller (``finish``) from the
    front; every chunk is cast straight into its revolution's buffers (disjoint columns). ``finish``
    casts what nobody took, waits up to FINISH_TIMEOUT_S for the chunks being cast and casts the
    late ones itself (same columns, same values). A late thread that still writes into a buffer set
    is a straggler: ``wait_for_stragglers`` holds the next revolution on that set until it is gone.
    Every ray's result depends only on its column and the cast's inputs, so the outcome is the same
    whoever casts which chunk.

    The GIL: the simulation's thread holds it through SUMO's step (libsumo does not release it), so
    a background thread that needs it waits up to ``sys.getswitchinterval()`` (5 ms). Hence a
    background thread's chunk is one kernel call, and ``put(handoff=True)`` waits, with the GIL
    released, until a thread has taken the chunk and is casting it without the GIL."""

    def __init__(self, lidar: "Lidar"):
        self.lidar = lidar
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)  # a chunk was taken or finished
        self._queued: deque = deque()  # chunks: [state, job, start, end, buffers, sweep]
        self._taken: list = []  # chunks background threads took since the last finish
        self._stragglers: dict[int, int] = {}  # id(buffers) -> abandoned chunks still being cast into them
        self._error: BaseException | None = None
        self.chunks_cast_here = 0  # by the caller: queued ones nobody took, plus late ones
        self.chunks_recast = 0  # of those, taken by a background thread that was not done in time
        self.chunks_from_background = 0

    def put(self, job: tuple, start_col: int, end_col: int, buffers: tuple, handoff: bool = False,
            sweep: "_Sweep | None" = None, completes: bool = False) -> None:
        """Queue columns [start_col, end_col). ``handoff``: as one chunk, for a background thread to
        cast while the caller goes on; returns once a thread has taken it (or after PICKUP_TIMEOUT_S).
        ``sweep``/``completes``: see ``Lidar._cast_later``."""
        step = max(1, (end_col - start_col) if handoff else CHUNK_COLUMNS)
        with self.lock:
            starts = range(start_col, end_col, step)
            if sweep is not None:  # counted before any of them can finish
                sweep.add_chunks(len(starts), completes)
            for start in starts:
                self._queued.append([_QUEUED, job, start, min(end_col, start + step), buffers, sweep])
        pool = self.lidar.worker_pool()
        for _ in range(self.lidar.config.cast_threads - 1):
            pool.submit(self._work)
        if handoff:
            with self._changed:
                self._changed.wait_for(lambda: not self._queued, PICKUP_TIMEOUT_S)

    def _cast(self, chunk: list) -> None:
        self.lidar._cast_columns(chunk[1], chunk[2], chunk[3], chunk[4])

    def _work(self) -> None:
        """A background thread: cast queued chunks until none is left."""
        while True:
            with self.lock:
                if not self._queued:
                    return
                chunk = self._queued.pop()
                chunk[0] = _RUNNING
                self._taken.append(chunk)
                self._changed.notify_all()
            error = None
            try:
                self._cast(chunk)
            except BaseException as exc:  # re-raised on the caller's thread by finish()
                error = exc
            with self.lock:
                mine = chunk[0] == _RUNNING  # else the caller cast it meanwhile and did the accounting
                if mine:
                    chunk[0] = _DONE
                    self.chunks_from_background += 1
                    if error is not None:
                        self._error = error
                else:
                    key = id(chunk[4])
                    self._stragglers[key] -= 1
                    if not self._stragglers[key]:
                        del self._stragglers[key]
                self._changed.notify_all()
            if mine and error is None and chunk[5] is not None:
                chunk[5].chunk_done()

    def finish(self) -> None:
        """Complete every queued cast: cast here what no background thread took, wait a little for
        the chunks being cast, cast here the ones still not done."""
        while True:
            with self.lock:
                chunk = self._queued.popleft() if self._queued else None
                if chunk is not None:
                    chunk[0] = _DONE
            if chunk is None:
                break
            self.chunks_cast_here += 1
            self._cast(chunk)
            if chunk[5] is not None:
                chunk[5].chunk_done()
        with self._changed:
            self._changed.wait_for(lambda: all(c[0] != _RUNNING for c in self._taken), FINISH_TIMEOUT_S)
            late = [c for c in self._taken if c[0] == _RUNNING]
            for chunk in late:
                chunk[0] = _ABANDONED
                self._stragglers[id(chunk[4])] = self._stragglers.get(id(chunk[4]), 0) + 1
            self._taken = []
            error, self._error = self._error, None
        if error is not None:
            raise error
        for chunk in late:  # its thread has no core (or is slow): cast it here, same values
            self.chunks_cast_here += 1
            self.chunks_recast += 1
            self._cast(chunk)
            if chunk[5] is not None:
                chunk[5].chunk_done()

    def wait_for_stragglers(self, buffers: tuple) -> None:
        """Block until no abandoned chunk is still being cast into ``buffers`` (before reusing them)."""
        with self._changed:
            self._changed.wait_for(lambda: id(buffers) not in self._stragglers)


def ray_buffers(config: LidarConfig) -> tuple:
    """Per-ray outputs over a whole revolution, (column, channel): range (-1: no return),
    intensity, label, actor id."""
    shape = (config.columns, config.channels)
    return (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int32),
            np.empty(shape, np.int64))


class _Sweep:
    """One revolution of a ``SpinningLidar``: its ray buffers, its parts (start, end, sensor pose),
    the chunks still being cast. Once it is complete, the thread that casts its last chunk also
    compacts it into points (usually the background thread, off the simulation's critical path)."""

    def __init__(self, lidar: Lidar, buffers: tuple, remote=None, set_index: int = 0):
        self.lidar = lidar
        self.buffers = buffers
        self.remote = remote  # a LidarProcess casting it (in buffer set ``set_index``), or None
        self.set_index = set_index
        self.remote_parts = 0  # parts sent to the lidar process (none: compacted here)
        self.parts: list[tuple[int, int, tuple]] = []
        self.outstanding = 0  # chunks queued and not yet cast
        self.complete = False  # every part queued
        self.compacted: tuple | None = None  # (points, labels, actor_ids)
        self.stamp = 0.0
        self.final_pose: tuple = ()

    def add_chunks(self, n: int, completes: bool) -> None:
        """Under the queue's lock (or on the only thread)."""
        self.outstanding += n
        self.complete = self.complete or completes

    def chunk_done(self) -> None:
        with self.lidar._queue.lock:
            self.outstanding -= 1
            ready = self.complete and self.outstanding == 0
        if ready:
            self.compact()

    def compact(self) -> tuple:
        if self.compacted is None and self.remote_parts:
            self.compacted = self.remote.frame(self.set_index)  # compacted by the lidar process
        if self.compacted is None:
            lidar = self.lidar
            self.compacted = _compact(*self.buffers, self.parts[0][0], self.parts[-1][1], lidar._cos_el,
                                      lidar._sin_el, lidar._cos_az, lidar._sin_az)
        return self.compacted


class SpinningLidar:
    """Spreads a lidar's revolution over simulation ticks, as a spinning sensor does.

    Each ``tick`` casts the columns the sensor sweeps during that tick (``columns * rate * tick_s``,
    e.g. half a revolution for 10 Hz and 0.05 s ticks; fractional shares carry over) at that tick's
    world state and sensor pose. A complete revolution is a frame stamped with the time of the tick
    that completed it. ``deliver_next_tick=False``: that tick returns it; ``True``: the next tick
    does (one tick of sensor latency, as a driver publishes a scan after its last packet), so the
    completing tick's share is cast in the background while the caller steps the simulation too.
    ``tick`` returns None on the other ticks; ``pending_stamp`` is the stamp of a frame that the
    next tick will deliver.

    Frames: by default each column stays in the sensor frame of the tick that cast it, as a raw
    sensor reports it. With ``motion_compensate=True`` the earlier ticks' points are moved into the
    sensor frame of the completing tick (what a driver's deskewing with odometry does), so the
    static world lines up in one frame; moving actors still show where they were when swept.

    Threads (``config.cast_threads > 1``): a tick prepares its cast (pose, primitives, noise key:
    everything taken from that tick's world state, copied) and hands it to the background thread,
    which casts while the caller steps the simulation to the next tick. With same-tick delivery the
    completing tick queues its share in chunks, casts every chunk nobody has started and waits for
    the rest. Each column still sees the world state of the tick it belongs to, and the frames are
    identical, bit for bit, to a single-threaded run, whichever delivery.
    """

    def __init__(self, lidar: Lidar, tick_s: float = 0.05, motion_compensate: bool = False,
                 deliver_next_tick: bool = False, process: bool = False):
        cols_per_tick = lidar.config.columns * lidar.config.rate_hz * tick_s
        if tick_s <= 0 or cols_per_tick > lidar.config.columns + 1e-9:
            raise ValueError(f"tick_s={tick_s} must be positive and at most one revolution (1/rate_hz)")
        self.lidar = lidar
        self.tick_s = float(tick_s)
        self.motion_compensate = bool(motion_compensate)
        self.deliver_next_tick = bool(deliver_next_tick)
        self._cols_per_tick = cols_per_tick
        # Two revolutions' buffers, used in turn: a revolution waiting for delivery keeps its own
        # while the next one's first columns are cast. With ``process`` they are shared with the
        # lidar process (sim/lidar_process.py), which casts everything.
        self._remote = None
        # with a lidar process: cast the next shares on the calling thread instead (into the shared
        # buffers; the process still compacts). The world sets it from how busy its caller is.
        self.cast_here = False
        if process:
            from sim.lidar_process import LidarProcess
            self._remote = LidarProcess(lidar)
            self._buffer_sets = tuple(rays for rays, _ in self._remote.sets)
        else:
            self._buffer_sets = (ray_buffers(lidar.config), ray_buffers(lidar.config))
        self._revolution = 0
        self._ticks = 0
        self._done = 0  # columns cast in total
        self._sweep = _Sweep(lidar, self._buffer_sets[0])  # the revolution being swept
        self._pending: _Sweep | None = None  # a complete revolution awaiting delivery

    def _new_sweep(self) -> _Sweep:
        set_index = self._revolution % 2
        buffers = self._buffer_sets[set_index]
        if self._remote is None:
            self.lidar._queue.wait_for_stragglers(buffers)  # a thread still writing there (very late) first
        # (the lidar process casts in order: the next revolution there starts after this one ends)
        return _Sweep(self.lidar, buffers, self._remote, set_index)

    @property
    def process(self):
        """The ``LidarProcess`` casting for this lidar, or None (threads)."""
        return self._remote

    @property
    def cast_cpu_s(self) -> float:
        """CPU time spent in the casts so far, all threads and the lidar process."""
        return self.lidar.cast_cpu_s + (self._remote.cast_cpu_s if self._remote is not None else 0.0)

    @property
    def pending_stamp(self) -> float | None:
        return None if self._pending is None else self._pending.stamp

    def reset(self) -> None:
        self._wait()
        if self._remote is not None:
            self._remote.discard_frames()
        self._ticks = 0
        self._done = 0
        self._sweep = self._new_sweep()
        self._pending = None

    def close(self) -> None:
        """Wait for background casts and stop the lidar process; the Lidar's threads stay
        (``Lidar.close`` stops them)."""
        try:
            if self._remote is None or self._remote.alive:  # (a dead one has an error reported already)
                self._wait()
        finally:
            if self._remote is not None:
                self._remote.close()

    def flush(self) -> PointCloud | None:
        """The frame awaiting delivery (completed on the last tick), now; None if there is none."""
        if self._pending is None:
            return None
        if self._remote is None:
            self._wait()
        frame = self._assemble(self._pending)  # (from the lidar process: waits for that frame only)
        self._pending = None
        return frame

    def _wait(self) -> None:
        if self._remote is not None:
            self._remote.sync()
        else:
            self.lidar._queue.finish()

    def tick(self, stamp: float, sensor_pose_world, actors: Boxes | None = None, scenery: Boxes | None = None,
             ground_z: float | None = None, ground_slope=(0.0, 0.0)) -> PointCloud | None:
        """Advance one tick. ``sensor_pose_world`` as in ``Lidar.scan_partial`` (a 6-tuple or an EgoState)."""
        lidar = self.lidar
        frame = self.flush()  # the revolution completed last tick, if any: collected first
        if isinstance(sensor_pose_world, EgoState):
            if ground_z is None:
                ground_z = sensor_pose_world.z
            sensor_pose_world = lidar.sensor_pose(sensor_pose_world)
        pose = tuple(float(v) for v in sensor_pose_world)
        columns = lidar.config.columns
        self._ticks += 1
        target = int(math.floor(self._ticks * self._cols_per_tick + 1e-6))
        while self._done < target:
            start = self._done % columns
            end = min(columns, start + (target - self._done))
            job = lidar._prepare(pose, actors, scenery, ground_z, ground_slope)
            sweep = self._sweep
            sweep.parts.append((start, end, pose))
            self._done += end - start
            completes = end == columns
            if completes:
                sweep.stamp, sweep.final_pose = float(stamp), pose
            if self._remote is not None:
                compact = (sweep.parts[0][0], end) if completes else None
                if self.cast_here:
                    lidar._cast_columns(job, start, end, sweep.buffers)
                    if compact is not None and sweep.remote_parts:  # (else compacted here on delivery)
                        self._remote.compact(sweep.set_index, *compact)
                else:
                    sweep.remote_parts += 1
                    self._remote.cast(sweep.set_index, job, start, end, compact)
                if completes and self.deliver_next_tick:
                    self._pending = sweep
                elif completes:
                    frame = self._assemble(sweep)  # waits for the lidar process
            elif completes and not self.deliver_next_tick:
                lidar._bounds(job)  # this thread casts at once: its bounds first, not by two threads at once
                lidar._cast_later(job, start, end, sweep.buffers, sweep=sweep, completes=True)
                self._wait()  # this thread casts what is left, then the revolution is complete
                frame = self._assemble(sweep)
            else:
                lidar._cast_later(job, start, end, sweep.buffers, handoff=True, sweep=sweep, completes=completes)
                if completes:
                    self._pending = sweep
            if completes:
                self._revolution += 1
                self._sweep = self._new_sweep()
        return frame

    def _assemble(self, sweep: _Sweep) -> PointCloud:
        lidar = self.lidar
        points, labels, actor_ids = sweep.compact()  # usually done already, by the thread that cast the last chunk
        stamp, final_pose, parts, buffers = sweep.stamp, sweep.final_pose, sweep.parts, sweep.buffers
        if self.motion_compensate:
            rot_final = rotation_rpy(*final_pose[3:])
            first = 0
            for start, end, pose in parts:
                last = first + _count_returns(buffers[0], start, end)
                if pose != final_pose:
                    # sensor frame of the part -> world -> sensor frame of the completing tick
                    rot = rot_final.T @ rotation_rpy(*pose[3:])
                    shift = rot_final.T @ (np.asarray(pose[:3]) - np.asarray(final_pose[:3]))
                    part = points[first:last]
                    part[:, :3] = (part[:, :3].astype(np.float64) @ rot.T + shift).astype(np.float32)
                first = last
        return PointCloud(points, frame_id=lidar.config.frame_id, stamp=float(stamp), labels=labels,
                          actor_ids=actor_ids)


def load_lidar_config(path: str | Path = DEFAULT_PARAMS) -> LidarConfig:
    return LidarConfig.load(path)
