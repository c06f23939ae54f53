"""``adstack eval detector --model M --data DIR``: nuScenes-style metrics over labelled scans.

``DIR`` is either a dataset written by ``adstack collect`` (``dataset.json`` + shards; ``--split``
picks the maps) or a folder of recorded scans with labels (KITTI layout, nuScenes ``.pcd.bin`` +
``_info.json``, or scan + ``.boxes.json``; see ``perception.io.find_labelled_frames``). Prints a table
and writes ``metrics.json`` and ``predictions.json`` to ``--out``.

``sim/eval_cli.py`` owns ``adstack eval`` and calls ``run_detector_eval(args)`` for its ``detector``
target; ``add_arguments``/``run`` give the same job as a stand-alone subcommand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

HELP = "evaluate a lidar detector on labelled scans (nuScenes-style AP, ATE, ASE, AOE)"
DEFAULT_CLASSES = "VEHICLE,PEDESTRIAN,CYCLIST"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="'classical', 'learned' or a trained model folder")
    parser.add_argument("--data", required=True,
                        help="collected dataset (dataset.json) or folder of labelled scans (KITTI, nuScenes, .boxes.json)")
    parser.add_argument("--split", default="val", help="split of a collected dataset ('all' for every shard)")
    parser.add_argument("--out", default="runs/eval-detector", help="folder for metrics.json and predictions.json")
    parser.add_argument("--config", default=None, help="classical detector parameters (*.param.yaml)")
    parser.add_argument("--classes", default=DEFAULT_CLASSES, help="comma-separated ObjectClass names")


def labelled_frames(data: str | Path, split: str = "val") -> Iterator[tuple]:
    """(name, points, ground truth, region filter or None) for every frame under ``data``."""
    from perception.io import find_labelled_frames, load_scan

    data = Path(data)
    if (data / "dataset.json").is_file():
        from perception.dataset import ShardDataset
        dataset = ShardDataset(data, split)
        for i in range(len(dataset)):
            frame = dataset.frame(i)
            boxes = frame.boxes
            if frame.box_num_points is not None:  # nuScenes counts only boxes that some lidar point hits
                boxes = boxes.select(np.asarray(frame.box_num_points) >= 1)
            yield f"{split}/{i:06d}", frame.points, boxes, None
        return
    for frame in find_labelled_frames(data):
        yield frame.name, load_scan(frame.scan_path, frame.scan_format), frame.load_ground_truth(), frame.in_labelled_region


def evaluate_detector(detector, frames, class_names=("VEHICLE", "PEDESTRIAN", "CYCLIST")) -> tuple[dict, dict]:
    """Run ``detector`` on every frame of ``labelled_frames`` and score it.
    Returns (metrics dict, {frame name: predicted Boxes})."""
    from perception.detect_cli import timed_detect
    from perception.metrics import DetectionEvalConfig, evaluate

    gts, preds, names, latencies = [], [], [], []
    for k, (name, points, gt, region) in enumerate(frames):
        if k == 0:
            detector.detect(points)  # warm-up: first-call compile time is not detection time
        boxes, ms = timed_detect(detector, points)
        # Unlabelled parts of a scan (outside KITTI's camera view) must not count as false positives.
        if region is not None:
            boxes = boxes.select(region(boxes))
        gts.append(gt)
        preds.append(boxes)
        names.append(name)
        latencies.append(ms)
    if not names:
        from adstack.errors import UserError
        raise UserError("no frames to evaluate")
    result = evaluate(gts, preds, DetectionEvalConfig(class_names=tuple(class_names)))
    result["latency_ms"] = {"mean": float(np.mean(latencies)), "max": float(np.max(latencies))}
    result["frames"] = names
    return result, dict(zip(names, preds))


def run(args) -> int:
    from adstack.errors import UserError
    from adstack.types import ObjectClass
    from perception.detect_cli import make_detector
    from perception.io import boxes_to_json
    from perception.metrics import format_table

    if not getattr(args, "model", None) or not getattr(args, "data", None):
        raise UserError("eval detector needs --model and --data")
    classes = [c.strip().upper() for c in (getattr(args, "classes", None) or DEFAULT_CLASSES).split(",") if c.strip()]
    unknown = [c for c in classes if c not in ObjectClass.__members__]
    if unknown:
        raise UserError(f"unknown class(es) {unknown}; known: {list(ObjectClass.__members__)}")
    detector = make_detector(args.model, getattr(args, "config", None))
    result, preds = evaluate_detector(detector, labelled_frames(args.data, getattr(args, "split", "val") or "val"),
                                      classes)
    result.update({"model": args.model, "data": str(args.data)})
    out = Path(getattr(args, "out", None) or "runs/eval-detector")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "predictions.json").write_text(json.dumps({name: boxes_to_json(p) for name, p in preds.items()}))
    print(format_table(result))
    print(f"latency mean {result['latency_ms']['mean']:.1f} ms, max {result['latency_ms']['max']:.1f} ms; "
          f"wrote {out / 'metrics.json'}")
    return 0


# The name sim/eval_cli.py calls, and aliases.
run_detector_eval = run
run_detector = run
add_detector_arguments = add_arguments
