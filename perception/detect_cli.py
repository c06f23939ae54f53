"""``adstack detect FILE --model classical|DIR --out DIR``: detect objects in one recorded scan.

Writes ``boxes.json`` (the boxes, the model, the timing) and ``bev.png`` (points by height, boxes by
class, ground truth dashed green when ``--labels`` is given).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from adstack.errors import UserError
from adstack.types import ObjectClass

HELP = "detect objects in one recorded lidar scan (KITTI .bin, nuScenes .pcd.bin, .pcd)"


def add_arguments(parser) -> None:
    parser.add_argument("file", help="scan: KITTI .bin, nuScenes .pcd.bin or .pcd (ascii/binary)")
    parser.add_argument("--model", default="classical",
                        help="'classical', 'learned' (the shipped model) or a trained model folder; default classical")
    parser.add_argument("--format", default="auto", choices=["auto", "kitti", "nuscenes", "pcd"],
                        help="scan format; auto tells it from the file name")
    parser.add_argument("--out", required=True, help="output folder for boxes.json and bev.png")
    parser.add_argument("--config", default=None, help="classical detector parameters (*.param.yaml)")
    parser.add_argument("--labels", default=None,
                        help="optional ground truth to draw: KITTI label .txt, nuScenes info .json or boxes .json")
    parser.add_argument("--calib", default=None, help="KITTI calibration for --labels (default ../calib/NAME.txt)")
    parser.add_argument("--range", type=float, default=50.0, dest="range_m", help="half-width of the picture, m")


def make_detector(model: str, config_path: str | None = None):
    """An object with ``detect(points) -> Boxes``: the classical detector, the shipped learned model
    (``learned``) or a trained model folder (``perception.detector.LidarDetector``)."""
    if model == "classical":
        from perception.classical import ClassicalDetector, load_config
        return ClassicalDetector(load_config(config_path))
    model_dir = None if model == "learned" else Path(model)
    if model_dir is not None and not model_dir.is_dir():
        raise UserError("model must be 'classical', 'learned' (the shipped model) or an existing model folder", model_dir)
    try:
        from perception.detector import LidarDetector
    except ImportError as exc:
        raise UserError(f"the learned detector is not available in this installation ({exc})") from None
    return LidarDetector.from_dir(model_dir)


def timed_detect(detector, points: np.ndarray):
    start = time.perf_counter()
    boxes = detector.detect(points)
    return boxes, 1e3 * (time.perf_counter() - start)


def run(args) -> int:
    from perception.bev import render_bev
    from perception.io import boxes_to_json, load_labels, load_scan

    points = load_scan(args.file, args.format)
    labels = load_labels(args.labels, args.calib) if args.labels else None
    detector = make_detector(args.model, args.config)
    detector.detect(points)  # warm-up: first-call compile and allocation time is not detection time
    boxes, latency_ms = timed_detect(detector, points)
    if len(boxes) and not (np.isfinite(boxes.center).all() and np.isfinite(boxes.size).all() and np.isfinite(boxes.yaw).all()):
        raise RuntimeError("detector returned non-finite boxes")  # a bug, not a user error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"scan": str(args.file), "model": args.model, "n_points": int(len(points)),
              "latency_ms": round(latency_ms, 2), **boxes_to_json(boxes)}
    (out / "boxes.json").write_text(json.dumps(record, indent=1))
    counts = {ObjectClass(c).name.lower(): int(n) for c, n in zip(*np.unique(boxes.label, return_counts=True))}
    render_bev(out / "bev.png", points, boxes, labels, range_m=args.range_m,
               title=f"{Path(args.file).name}: {args.model}, {len(boxes)} boxes {counts}")
    print(f"{len(points)} points -> {len(boxes)} boxes {counts} in {latency_ms:.1f} ms; "
          f"wrote {out / 'boxes.json'} and {out / 'bev.png'}")
    return 0
