"""Bird's-eye-view pictures of a scan with boxes: points coloured by height, boxes by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adstack.types import Boxes, ObjectClass

CLASS_COLOURS = {
    int(ObjectClass.UNKNOWN): "#9e9e9e", int(ObjectClass.VEHICLE): "#1f77b4",
    int(ObjectClass.PEDESTRIAN): "#d62728", int(ObjectClass.CYCLIST): "#ff7f0e", int(ObjectClass.STATIC): "#8c564b",
}
GROUND_TRUTH_COLOUR = "#2ca02c"


def render_bev(path: str | Path, points: np.ndarray, boxes: Boxes | None = None, ground_truth: Boxes | None = None,
               range_m: float = 50.0, title: str = "", max_points: int = 150_000, dpi: int = 110) -> Path:
    """Write a BEV PNG of the sensor frame: +x is up, +y is left (REP-103: forward is up). Predictions in class colours (solid),
    ground truth in green (dashed). Returns the path written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = np.asarray(points, dtype=np.float32).reshape(-1, points.shape[-1] if np.ndim(points) == 2 else 4)
    near = (np.abs(pts[:, 0]) <= range_m) & (np.abs(pts[:, 1]) <= range_m)
    pts = pts[near]
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
    fig, ax = plt.subplots(figsize=(8, 8))
    # Plot with -y on the horizontal axis so that left of the vehicle is left in the picture.
    z_lo, z_hi = (np.percentile(pts[:, 2], [2, 98]) if len(pts) else (-2.0, 1.0))
    ax.scatter(-pts[:, 1], pts[:, 0], c=pts[:, 2], s=0.15, cmap="viridis", vmin=z_lo, vmax=z_hi,
               linewidths=0, rasterized=True)
    legend = []
    if ground_truth is not None and len(ground_truth):
        _draw(ax, ground_truth, lambda k: GROUND_TRUTH_COLOUR, "--", 1.4)
        legend.append(Line2D([], [], color=GROUND_TRUTH_COLOUR, ls="--", label="ground truth"))
    if boxes is not None and len(boxes):
        _draw(ax, boxes, lambda k: CLASS_COLOURS.get(int(boxes.label[k]), "#000000"), "-", 1.1)
        for cls in sorted(set(int(v) for v in boxes.label)):
            legend.append(Line2D([], [], color=CLASS_COLOURS.get(cls, "#000000"), label=ObjectClass(cls).name.lower()))
    ax.plot([0], [0], marker="^", color="k", ms=6)
    ax.set_xlim(-range_m, range_m)
    ax.set_ylim(-range_m, range_m)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m)")
    ax.set_ylabel("x (m)")
    if legend:
        ax.legend(handles=legend, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _draw(ax, boxes: Boxes, colour_of, style: str, width: float) -> None:
    corners = boxes.corners_xy()
    for k in range(len(boxes)):
        ring = np.vstack([corners[k], corners[k][:1]])
        colour = colour_of(k)
        ax.plot(-ring[:, 1], ring[:, 0], style, color=colour, lw=width)
        # A tick from the centre to the front face shows the heading.
        front = corners[k][[0, 3]].mean(axis=0)
        ax.plot([-boxes.center[k, 1], -front[1]], [boxes.center[k, 0], front[0]], style, color=colour, lw=width * 0.8)
