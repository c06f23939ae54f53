"""Top-down picture of a drive: lanes, route, driven path coloured by speed, actors, infractions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_COLOURS = {1: "tab:blue", 2: "tab:red", 3: "tab:orange", 4: "0.5"}


def render_drive_bev(path: str | Path, lane_polylines: list[np.ndarray], route_xy: np.ndarray,
                     driven_xy: np.ndarray, driven_speed: np.ndarray, actor_corners: np.ndarray | None = None,
                     actor_labels: np.ndarray | None = None, infractions: list[dict] | None = None,
                     title: str = "", margin_m: float = 40.0) -> Path:
    """Write a PNG. Arrays are map-frame metres; ``actor_corners`` is (N,4,2) (e.g. the last tick)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    fig, ax = plt.subplots(figsize=(10, 10), dpi=110)
    focus = route_xy if len(route_xy) else driven_xy
    if len(focus):
        lo, hi = focus.min(0) - margin_m, focus.max(0) + margin_m
        span = max(hi[0] - lo[0], hi[1] - lo[1])
        mid = (lo + hi) / 2
        lo, hi = mid - span / 2, mid + span / 2
        near = [p for p in lane_polylines if len(p) and np.any(np.all((p >= lo) & (p <= hi), axis=1))]
    else:
        near = lane_polylines
    ax.add_collection(LineCollection(near, colors="0.8", linewidths=0.6, zorder=1))
    if len(route_xy):
        ax.plot(route_xy[:, 0], route_xy[:, 1], color="tab:green", lw=5, alpha=0.35, zorder=2, label="route")
        ax.plot(*route_xy[0], "g^", ms=10, zorder=5, label="start")
        ax.plot(*route_xy[-1], "gs", ms=10, zorder=5, label="goal")
    if len(driven_xy) > 1:
        segments = np.stack([driven_xy[:-1], driven_xy[1:]], axis=1)
        lc = LineCollection(segments, cmap="viridis", linewidths=2.2, zorder=3)
        lc.set_array(np.asarray(driven_speed[:-1], dtype=float))
        ax.add_collection(lc)
        fig.colorbar(lc, ax=ax, fraction=0.035, pad=0.02, label="ego speed (m/s)")
    if actor_corners is not None and len(actor_corners):
        labels = np.zeros(len(actor_corners), int) if actor_labels is None else actor_labels
        colours = [CLASS_COLOURS.get(int(c), "k") for c in labels]
        ax.add_collection(PolyCollection(actor_corners, facecolors=colours, edgecolors="k", linewidths=0.3,
                                         alpha=0.7, zorder=4))
    for k, inf in enumerate(infractions or []):
        pos = inf.get("position")
        if pos is None:
            continue
        ax.plot(pos[0], pos[1], "rx", ms=12, mew=2.5, zorder=6, label="infraction" if k == 0 else None)
        ax.annotate(inf.get("type", "?"), (pos[0], pos[1]), fontsize=7, color="darkred", zorder=6,
                    xytext=(4, 4), textcoords="offset points")
    if len(focus):
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, map frame)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
