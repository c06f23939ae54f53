"""Tracker benchmark: ms per step with N objects (budget: 100 objects <= 2 ms on 2 CPU cores)."""

from __future__ import annotations

import time

import numpy as np

from adstack.types import Boxes
from fusion.tracker import MultiObjectTracker


def bench_tracker(n_objects: int = 100, steps: int = 200, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    start = rng.uniform(-80, 80, (n_objects, 2))
    vel = rng.uniform(-10, 10, (n_objects, 2))
    labels = rng.integers(1, 3, n_objects)
    tracker = MultiObjectTracker()
    times = []
    for k in range(steps):
        t = 0.1 * k
        xy = start + vel * t + rng.normal(0, 0.1, start.shape)
        det = Boxes(np.column_stack([xy, np.zeros(n_objects)]), np.tile([4.5, 1.9, 1.5], (n_objects, 1)),
                    np.zeros(n_objects), labels)
        t0 = time.perf_counter()
        out = tracker.step(det, t)
        times.append(time.perf_counter() - t0)
    ms = np.array(times[10:]) * 1e3
    return {"objects": n_objects, "tracks": len(out), "ms_per_step_p50": round(float(np.percentile(ms, 50)), 3),
            "ms_per_step_p99": round(float(np.percentile(ms, 99)), 3), "budget_ms": 2.0}
