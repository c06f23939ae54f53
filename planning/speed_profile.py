"""Longitudinal planning: one Intelligent Driver Model for every constraint, simulated forward.

Constraints are "obstacles" at route arc length ``s`` moving along the route at ``speed`` with a
standstill gap ``min_gap``: leaders, things in the path, crossing actors, red lights and stop lines
(standing obstacles at the line). The IDM acceleration (Treiber et al. 2000)

    a = a_max [1 - (v / v0)^delta - (s*(v, dv) / gap)^2],   s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))

is taken against the most constraining obstacle, with v0 the route's speed envelope (limits and
curves, pre-braked). Integrating it forward for a few seconds, with the obstacles moving at their
speeds, gives the speed along the path that the trajectory carries.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from planning.expert_config import IdmConfig

OVERSPEED_GAIN_PER_S = 1.5  # braking per m/s above the desired speed (capped at the comfortable decel)
NEGLIGIBLE_INTERACTION = 0.05  # fraction of max accel below which an obstacle is not reported as binding


def idm_accel(v: float, v0: float, gaps, closing, min_gaps, cfg: IdmConfig) -> tuple[float, int]:
    """IDM acceleration and the index of the binding obstacle (-1: free road)."""
    v0 = max(v0, 0.1)
    if v <= v0:
        free = cfg.max_accel_mps2 * (1.0 - (v / v0) ** cfg.accel_exponent)
    else:  # above the desired speed the IDM's free term brakes too gently to follow a falling envelope
        free = -min(OVERSPEED_GAIN_PER_S * (v - v0), cfg.comfortable_decel_mps2)
    best, which = free, -1
    sqrt_ab = 2.0 * math.sqrt(cfg.max_accel_mps2 * cfg.comfortable_decel_mps2)
    for i in range(len(gaps)):
        s_star = min_gaps[i] + max(0.0, v * cfg.time_headway_s + v * closing[i] / sqrt_ab)
        gap = max(gaps[i], 0.05)
        a = free - cfg.max_accel_mps2 * (s_star / gap) ** 2
        if a < best:
            best, which = a, i
    if free - best < NEGLIGIBLE_INTERACTION * cfg.max_accel_mps2:
        which = -1  # a far obstacle barely matters: call it free road
    return max(best, -cfg.max_decel_mps2), which


def simulate(v_start: float, s_front_start: float, s_obs, v_obs, min_gaps, v0_of_s, cfg: IdmConfig,
             dt: float, duration: float, s_limit: float):
    """Forward-integrate the IDM. Returns arrays t, s (of the ego front), v, and the first step's
    acceleration and binding obstacle index.

    ``v0_of_s(s_front, v)`` gives the desired speed there. Plain Python floats: a handful of obstacles
    and ~80 steps cost well under a millisecond, less than numpy's per-call overhead would.
    """
    s_obs = [float(x) for x in s_obs]
    v_obs = [float(x) for x in v_obs]
    min_gaps = [float(x) for x in min_gaps]
    n_steps = int(round(duration / dt))
    t_out, s_out, v_out = [0.0], [s_front_start], [v_start]
    v, s = max(v_start, 0.0), s_front_start
    first_accel, first_which = 0.0, -1
    for k in range(n_steps):
        t = k * dt
        gaps = [s_obs[i] + v_obs[i] * t - s for i in range(len(s_obs))]
        closing = [v - v_obs[i] for i in range(len(s_obs))]
        a, which = idm_accel(v, v0_of_s(s, v), gaps, closing, min_gaps, cfg)
        if k == 0:
            first_accel, first_which = a, which
        v_next = max(v + a * dt, 0.0)
        s += 0.5 * (v + v_next) * dt
        v = v_next
        t_out.append(t + dt)
        s_out.append(s)
        v_out.append(v)
        if s > s_limit or (v == 0.0 and a <= 0.0 and k > 0):
            break
    return np.array(t_out), np.array(s_out), np.array(v_out), first_accel, first_which


def envelope_speed(s_front: float, v: float, env_s, env_v, env_offset: float, preview_s: float, creep_mps: float,
                   kerb_s, kerb_v2: float, kerb_b: float) -> float:
    """The expert's desired speed with its front bumper at ``s_front``: the route's speed envelope
    read ``preview_s * v`` ahead (at route arc length ``s - env_offset``), capped by ``creep_mps``, and
    slowed to pass pedestrians at the kerb (``kerb_s``: their arc lengths) at sqrt(kerb_v2), braking
    towards each at ``kerb_b / 2``. The reference for ``simulate_on_envelope``'s kernel."""
    s_ahead = s_front + preview_s * v
    v_des = min(float(np.interp(s_ahead - env_offset, env_s, env_v)), creep_mps)
    for s_k in kerb_s:
        if s_front < s_k + 2.0:
            v_des = min(v_des, math.sqrt(kerb_v2 + kerb_b * max(s_k - s_ahead, 0.0)))
    return v_des


def simulate_on_envelope(v_start: float, s_front_start: float, s_obs, v_obs, min_gaps, env_s, env_v,
                         env_offset: float, preview_s: float, creep_mps: float, kerb_s, kerb_v2: float,
                         kerb_b: float, cfg: IdmConfig, dt: float, duration: float, s_limit: float):
    """``simulate`` with ``v0_of_s`` = ``envelope_speed``, compiled: the same numbers, about 20 times
    faster (the rollout is half of an expert step in Python)."""
    return _simulate_envelope_kernel(
        float(v_start), float(s_front_start), np.asarray(s_obs, np.float64), np.asarray(v_obs, np.float64),
        np.asarray(min_gaps, np.float64), np.asarray(env_s, np.float64), np.asarray(env_v, np.float64),
        float(env_offset), float(preview_s), float(creep_mps), np.asarray(kerb_s, np.float64).reshape(-1),
        float(kerb_v2), float(kerb_b), float(cfg.max_accel_mps2), float(cfg.comfortable_decel_mps2),
        float(cfg.max_decel_mps2), float(cfg.time_headway_s), float(cfg.accel_exponent), float(dt),
        int(round(duration / dt)), float(s_limit))


@njit(cache=True)
def _simulate_envelope_kernel(v_start, s_front_start, s_obs, v_obs, min_gaps, env_s, env_v, env_offset, preview_s,
                              creep_mps, kerb_s, kerb_v2, kerb_b, max_accel, comfortable_decel, max_decel,
                              time_headway, accel_exponent, dt, n_steps, s_limit):
    # Statement for statement idm_accel, simulate and envelope_speed above (same operation order).
    t_out = np.empty(n_steps + 1)
    s_out = np.empty(n_steps + 1)
    v_out = np.empty(n_steps + 1)
    t_out[0], s_out[0], v_out[0] = 0.0, s_front_start, v_start
    v = max(v_start, 0.0)
    s = s_front_start
    first_accel, first_which = 0.0, -1
    sqrt_ab = 2.0 * math.sqrt(max_accel * comfortable_decel)
    count = 1
    for k in range(n_steps):
        t = k * dt
        s_ahead = s + preview_s * v
        v0 = min(np.interp(s_ahead - env_offset, env_s, env_v), creep_mps)
        for j in range(kerb_s.shape[0]):
            if s < kerb_s[j] + 2.0:
                v0 = min(v0, math.sqrt(kerb_v2 + kerb_b * max(kerb_s[j] - s_ahead, 0.0)))
        v0 = max(v0, 0.1)
        if v <= v0:
            free = max_accel * (1.0 - (v / v0) ** accel_exponent)
        else:
            free = -min(OVERSPEED_GAIN_PER_S * (v - v0), comfortable_decel)
        best, which = free, -1
        for i in range(s_obs.shape[0]):
            gap_i = s_obs[i] + v_obs[i] * t - s
            s_star = min_gaps[i] + max(0.0, v * time_headway + v * (v - v_obs[i]) / sqrt_ab)
            gap = max(gap_i, 0.05)
            a_i = free - max_accel * (s_star / gap) ** 2
            if a_i < best:
                best, which = a_i, i
        if free - best < NEGLIGIBLE_INTERACTION * max_accel:
            which = -1
        a = max(best, -max_decel)
        if k == 0:
            first_accel, first_which = a, which
        v_next = max(v + a * dt, 0.0)
        s += 0.5 * (v + v_next) * dt
        v = v_next
        t_out[count], s_out[count], v_out[count] = t + dt, s, v
        count += 1
        if s > s_limit or (v == 0.0 and a <= 0.0 and k > 0):
            break
    return t_out[:count], s_out[:count], v_out[:count], first_accel, first_which
