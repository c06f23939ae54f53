"""Real-data check: a detector on the three KITTI frames and the nuScenes sweep in the shared data.

    python -m perception.realdata --model classical|DIR --out DIR

Reports recall of labelled cars (KITTI ``Car``, nuScenes ``car``) within ``--max-range`` m (BEV, from
the sensor) at 2 m BEV centre distance, one-to-one greedy matching by score, counting only boxes the
detector labels VEHICLE (and, for reference, boxes of any class). Writes a BEV picture per frame
(ground truth of every class dashed green, predictions in class colours) and ``realdata.json``.
Also checks plausibility: finite numbers, sizes within ranges, centres inside the cloud's extent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adstack.errors import UserError
from adstack.paths import shared_data_dir
from adstack.types import Boxes, ObjectClass

CAR_NAMES = {"Car", "car"}
# Plausible box sizes (l, w, h) in metres for any detector on real streets: up to an articulated bus.
SIZE_LIMITS_M = ((0.05, 20.0), (0.05, 4.0), (0.05, 5.0))
EXTENT_MARGIN_M = 2.5


def match_recall(gt: Boxes, pred: Boxes, threshold_m: float) -> int:
    """Number of ground-truth boxes matched one-to-one by predictions within ``threshold_m`` (BEV)."""
    if len(gt) == 0 or len(pred) == 0:
        return 0
    taken = np.zeros(len(gt), dtype=bool)
    d_all = np.linalg.norm(pred.center[:, None, :2] - gt.center[None, :, :2], axis=-1)
    for j in np.argsort(-pred.score, kind="stable"):
        d = np.where(taken, np.inf, d_all[j])
        g = int(np.argmin(d))
        if d[g] < threshold_m:
            taken[g] = True
    return int(taken.sum())


def plausibility_problems(points: np.ndarray, boxes: Boxes) -> list[str]:
    problems = []
    for name in ("center", "size", "yaw", "score"):
        if not np.isfinite(getattr(boxes, name)).all():
            problems.append(f"non-finite {name}")
    if len(boxes) == 0:
        return problems
    for axis, (lo, hi) in enumerate(SIZE_LIMITS_M):
        bad = (boxes.size[:, axis] < lo) | (boxes.size[:, axis] > hi)
        if bad.any():
            problems.append(f"{int(bad.sum())} boxes with size[{axis}] outside [{lo}, {hi}] m")
    # Boxes completed behind a visible face may reach past the last return: allow half a car length.
    lo, hi = points[:, :3].min(axis=0) - EXTENT_MARGIN_M, points[:, :3].max(axis=0) + EXTENT_MARGIN_M
    outside = ((boxes.center < lo) | (boxes.center > hi)).any(axis=1)
    if outside.any():
        problems.append(f"{int(outside.sum())} box centres outside the cloud's extent")
    if ((boxes.score < 0) | (boxes.score > 1)).any():
        problems.append("scores outside [0, 1]")
    return problems


def run_realdata(model: str, out_dir: str | Path, data_dir: str | Path | None = None,
                 max_range_m: float = 40.0, threshold_m: float = 2.0, config_path: str | None = None) -> dict:
    from perception.bev import render_bev
    from perception.detect_cli import make_detector, timed_detect
    from perception.io import find_labelled_frames, load_scan

    data_dir = Path(data_dir) if data_dir else shared_data_dir() / "lidar"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = find_labelled_frames(data_dir)
    detector = make_detector(model, config_path)
    detector.detect(load_scan(frames[0].scan_path, frames[0].scan_format))  # compile/warm up
    per_frame = []
    for frame in frames:
        points = load_scan(frame.scan_path, frame.scan_format)
        gt_all = frame.load_ground_truth()
        cars = frame.load_ground_truth(keep=CAR_NAMES) if frame.source != "boxes-json" else gt_all.select(
            gt_all.label == int(ObjectClass.VEHICLE))
        cars = cars.select(np.hypot(cars.center[:, 0], cars.center[:, 1]) <= max_range_m)
        pred, latency_ms = timed_detect(detector, points)
        vehicles = pred.select(pred.label == int(ObjectClass.VEHICLE))
        matched = match_recall(cars, vehicles, threshold_m)
        matched_any = match_recall(cars, pred, threshold_m)
        picture = out_dir / f"{frame.name.replace('/', '_')}_bev.png"
        counts = {ObjectClass(c).name.lower(): int(n) for c, n in zip(*np.unique(pred.label, return_counts=True))}
        render_bev(picture, points, pred, gt_all, range_m=max(max_range_m + 10.0, 50.0),
                   title=f"{frame.name}: {model}; cars <= {max_range_m:g} m found {matched}/{len(cars)}")
        nearest = []
        for k in range(len(cars)):
            d = np.hypot(*(vehicles.center[:, :2] - cars.center[k, :2]).T) if len(vehicles) else np.array([np.inf])
            nearest.append(None if not np.isfinite(d.min()) else round(float(d.min()), 2))
        per_frame.append({
            "frame": frame.name, "n_points": int(len(points)), "n_boxes": int(len(pred)), "boxes_by_class": counts,
            "latency_ms": round(latency_ms, 2), "cars_in_range": int(len(cars)), "cars_found_as_vehicle": matched,
            "cars_found_any_class": matched_any, "nearest_vehicle_box_m": nearest,
            "car_range_m": [round(float(r), 1) for r in np.hypot(cars.center[:, 0], cars.center[:, 1])],
            "plausibility_problems": plausibility_problems(points, pred), "bev": str(picture)})
    n_cars = sum(f["cars_in_range"] for f in per_frame)
    summary = {
        "model": model, "data": str(data_dir), "max_range_m": max_range_m, "threshold_m": threshold_m,
        "cars_in_range": n_cars, "cars_found_as_vehicle": sum(f["cars_found_as_vehicle"] for f in per_frame),
        "cars_found_any_class": sum(f["cars_found_any_class"] for f in per_frame),
        "frames": per_frame,
    }
    summary["recall_vehicle"] = summary["cars_found_as_vehicle"] / n_cars if n_cars else None
    summary["recall_any_class"] = summary["cars_found_any_class"] / n_cars if n_cars else None
    (out_dir / "realdata.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perception.realdata", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="classical", help="'classical' or a trained model folder")
    parser.add_argument("--out", required=True, help="output folder for pictures and realdata.json")
    parser.add_argument("--data", default=None, help="labelled scans (default: shared data lidar/)")
    parser.add_argument("--max-range", type=float, default=40.0, help="count cars within this BEV range, m")
    parser.add_argument("--config", default=None, help="classical detector parameters (*.param.yaml)")
    args = parser.parse_args(argv)
    try:
        s = run_realdata(args.model, args.out, args.data, args.max_range, config_path=args.config)
    except UserError as err:
        print(f"realdata: error: {err}", file=sys.stderr)
        return 2
    for f in s["frames"]:
        print(f"{f['frame']:<40} points {f['n_points']:>7}  boxes {f['n_boxes']:>3}  cars<= {s['max_range_m']:g} m "
              f"{f['cars_found_as_vehicle']}/{f['cars_in_range']}  {f['latency_ms']:.1f} ms  "
              f"{'OK' if not f['plausibility_problems'] else f['plausibility_problems']}")
    rv = "-" if s["recall_vehicle"] is None else f"{s['recall_vehicle']:.2f}"
    ra = "-" if s["recall_any_class"] is None else f"{s['recall_any_class']:.2f}"
    print(f"recall of cars within {s['max_range_m']:g} m at {s['threshold_m']:g} m: {s['cars_found_as_vehicle']}/"
          f"{s['cars_in_range']} = {rv} as VEHICLE ({s['cars_found_any_class']}/{s['cars_in_range']} = {ra} any class)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
