"""nuScenes-style detection metrics on ``adstack.types.Boxes``, one Boxes per frame.

Follows the nuScenes detection benchmark (Caesar et al. 2020, "nuScenes: A multimodal dataset for
autonomous driving", section 3.1; nuscenes-devkit ``eval/detection/algo.py``):

- Matching: per class, predictions sorted by descending score (ties: later index first, as the
  devkit's sort does) greedily take the nearest untaken ground truth of that class in the same frame
  by BEV centre distance; a match needs distance < threshold. Thresholds 0.5, 1, 2, 4 m.
- AP: precision against recall interpolated at 101 recall points 0..1 (precision 0 beyond the
  highest recall reached); points at recall <= min_recall dropped; precision reduced by min_precision
  and clipped at 0; mean divided by (1 - min_precision). No monotone precision envelope (the devkit
  uses none). mAP: mean over classes of the mean over thresholds.
- TP errors at the 2 m threshold, each a running mean over matches in score order, read at the
  interpolated recall points and averaged from just above min_recall up to the highest recall
  reached; 1.0 when that range is empty:
  ATE = BEV centre distance (m); ASE = 1 - IoU of the boxes with centres and headings aligned;
  AOE = smallest yaw difference (rad), period 2 pi (pi for classes listed in ``pi_periodic_classes``).
- Filters: boxes farther than ``class_range_m`` from the sensor (BEV) are dropped, ground truth and
  predictions alike; at most ``max_boxes_per_frame`` predictions per frame (highest scores kept).
- NDS-like score: (5 mAP + sum over the three TP errors of (1 - min(1, mean error))) / 8. The real
  NDS also has velocity and attribute errors, which these detectors do not produce.

Deliberate differences: a class with no ground truth at all has AP and errors ``None`` and is left out
of the means (the devkit scores it 0, which suits a benchmark whose every split has every class, not
three KITTI frames); frames have no ego-distance field, so distance is measured from the frame origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adstack.types import Boxes, ObjectClass

TP_METRICS = ("trans_err", "scale_err", "orient_err")
TP_METRIC_NAMES = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE"}


@dataclass(frozen=True)
class DetectionEvalConfig:
    class_names: tuple = ("VEHICLE", "PEDESTRIAN", "CYCLIST")  # ObjectClass names
    dist_thresholds_m: tuple = (0.5, 1.0, 2.0, 4.0)
    tp_threshold_m: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_frame: int = 500
    class_range_m: dict = field(default_factory=lambda: {"VEHICLE": 50.0, "PEDESTRIAN": 40.0, "CYCLIST": 40.0})
    pi_periodic_classes: tuple = ()   # nuScenes: barriers, whose front is undefined
    recall_points: int = 101
    mean_ap_weight: float = 5.0

    def __post_init__(self):
        if not 0 <= self.min_precision < 1 or not 0 <= self.min_recall <= 1:
            raise ValueError("min_precision must be in [0, 1) and min_recall in [0, 1]")
        if self.tp_threshold_m not in self.dist_thresholds_m:
            raise ValueError("tp_threshold_m must be one of dist_thresholds_m")
        for name in self.class_names:
            ObjectClass[name]  # noqa: B018 -- raises KeyError on an unknown class name


@dataclass
class MatchCurve:
    """Recall, precision, confidence and running-mean TP errors at the interpolated recall points."""

    recall: np.ndarray
    precision: np.ndarray
    confidence: np.ndarray
    errors: dict
    n_gt: int
    n_pred: int
    n_tp: int

    @property
    def max_recall_index(self) -> int:
        nonzero = np.flatnonzero(self.confidence)
        return int(nonzero[-1]) if len(nonzero) else 0


def center_distance(a_xy: np.ndarray, b_xy: np.ndarray) -> np.ndarray:
    """Pairwise BEV centre distance, (A, 2) x (B, 2) -> (A, B)."""
    return np.linalg.norm(a_xy[:, None, :2] - b_xy[None, :, :2], axis=-1)


def scale_iou(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """IoU of two boxes with the same centre and heading: only their (l, w, h) differ."""
    inter = np.prod(np.minimum(size_a, size_b), axis=-1)
    return inter / (np.prod(size_a, axis=-1) + np.prod(size_b, axis=-1) - inter)


def yaw_difference(yaw_a, yaw_b, period: float = 2 * np.pi) -> np.ndarray:
    """Smallest absolute heading difference in [0, pi] with the given periodicity."""
    diff = (np.asarray(yaw_a) - np.asarray(yaw_b) + period / 2) % period - period / 2
    diff = np.where(diff > np.pi, diff - 2 * np.pi, diff)
    return np.abs(diff)


def filter_frame(boxes: Boxes, cls: int, range_m: float, max_boxes: int | None = None) -> Boxes:
    keep = (boxes.label == cls) & (np.hypot(boxes.center[:, 0], boxes.center[:, 1]) <= range_m)
    out = boxes.select(keep)
    if max_boxes is not None and len(out) > max_boxes:
        out = out.select(np.argsort(-out.score, kind="stable")[:max_boxes])
    return out


def accumulate(gt_frames: list[Boxes], pred_frames: list[Boxes], cls: int, dist_threshold: float,
               config: DetectionEvalConfig) -> MatchCurve:
    """Greedy matching of one class at one distance threshold over all frames -> MatchCurve."""
    if len(gt_frames) != len(pred_frames):
        raise ValueError(f"{len(gt_frames)} ground-truth frames but {len(pred_frames)} prediction frames")
    name = ObjectClass(cls).name
    range_m = config.class_range_m.get(name, math.inf)
    period = np.pi if name in config.pi_periodic_classes else 2 * np.pi
    # Limit predictions per frame over all classes first, as the devkit does when loading results.
    gts = [filter_frame(g, cls, range_m) for g in gt_frames]
    preds = [filter_frame(_top_k(p, config.max_boxes_per_frame), cls, range_m) for p in pred_frames]
    n_gt = sum(len(g) for g in gts)
    n_pred = sum(len(p) for p in preds)
    points = np.linspace(0.0, 1.0, config.recall_points)
    if n_gt == 0:
        return MatchCurve(points, np.zeros_like(points), np.zeros_like(points),
                          {k: np.ones_like(points) for k in TP_METRICS}, 0, n_pred, 0)
    frame_of = np.concatenate([np.full(len(p), f) for f, p in enumerate(preds)] + [np.zeros(0, int)]).astype(int)
    index_in_frame = np.concatenate([np.arange(len(p)) for p in preds] + [np.zeros(0, int)]).astype(int)
    scores = np.concatenate([p.score for p in preds] + [np.zeros(0)])
    order = np.lexsort((np.arange(len(scores)), scores))[::-1]   # score desc, then index desc
    taken = [np.zeros(len(g), dtype=bool) for g in gts]
    distances = [center_distance(p.center, g.center) for p, g in zip(preds, gts)]
    is_tp = np.zeros(len(order), dtype=bool)
    conf = scores[order]
    match_errors = {k: [] for k in TP_METRICS}
    match_conf = []
    for rank, pred_index in enumerate(order):
        f, j = frame_of[pred_index], index_in_frame[pred_index]
        if len(gts[f]) == 0:
            continue
        d = np.where(taken[f], np.inf, distances[f][j])
        g = int(np.argmin(d))
        if d[g] < dist_threshold:
            taken[f][g] = True
            is_tp[rank] = True
            match_errors["trans_err"].append(d[g])
            match_errors["scale_err"].append(1.0 - float(scale_iou(gts[f].size[g], preds[f].size[j])))
            match_errors["orient_err"].append(float(yaw_difference(gts[f].yaw[g], preds[f].yaw[j], period)))
            match_conf.append(conf[rank])
    n_tp = int(is_tp.sum())
    if n_tp == 0:
        return MatchCurve(points, np.zeros_like(points), np.zeros_like(points),
                          {k: np.ones_like(points) for k in TP_METRICS}, n_gt, n_pred, 0)
    tp = np.cumsum(is_tp).astype(float)
    fp = np.cumsum(~is_tp).astype(float)
    precision = tp / (tp + fp)
    recall = tp / n_gt
    precision_i = np.interp(points, recall, precision, right=0)
    confidence_i = np.interp(points, recall, conf, right=0)
    errors = {}
    match_conf = np.asarray(match_conf)
    for key, values in match_errors.items():
        running_mean = np.cumsum(values) / np.arange(1, len(values) + 1)
        # Read the running mean at the confidence of each recall point (np.interp needs ascending x).
        errors[key] = np.interp(confidence_i[::-1], match_conf[::-1], running_mean[::-1])[::-1]
    return MatchCurve(points, precision_i, confidence_i, errors, n_gt, n_pred, n_tp)


def average_precision(curve: MatchCurve, min_recall: float, min_precision: float) -> float:
    first = round(100 * min_recall) + 1   # the devkit excludes the min-recall point itself
    prec = np.clip(np.asarray(curve.precision[first:], dtype=float) - min_precision, 0.0, None)
    return float(np.mean(prec)) / (1.0 - min_precision)


def tp_error(curve: MatchCurve, min_recall: float, key: str) -> float:
    first = round(100 * min_recall) + 1
    last = curve.max_recall_index
    if last < first:
        return 1.0
    return float(np.mean(curve.errors[key][first:last + 1]))


def evaluate(gt_frames: list[Boxes], pred_frames: list[Boxes], config: DetectionEvalConfig | None = None) -> dict:
    """Per-class AP at every threshold, TP errors, mAP, mean errors and the NDS-like score (a dict
    ready for JSON: floats, or None where a class has no ground truth)."""
    config = config or DetectionEvalConfig()
    per_class = {}
    for name in config.class_names:
        cls = int(ObjectClass[name])
        curves = {th: accumulate(gt_frames, pred_frames, cls, th, config) for th in config.dist_thresholds_m}
        n_gt = curves[config.tp_threshold_m].n_gt
        entry = {"n_gt": n_gt, "n_pred": curves[config.tp_threshold_m].n_pred,
                 "n_tp_at_tp_threshold": curves[config.tp_threshold_m].n_tp,
                 "recall_at_tp_threshold": (curves[config.tp_threshold_m].n_tp / n_gt) if n_gt else None}
        if n_gt == 0:
            entry.update({"ap": {str(th): None for th in config.dist_thresholds_m}, "mean_ap": None,
                          **{TP_METRIC_NAMES[k]: None for k in TP_METRICS}})
        else:
            aps = {str(th): average_precision(c, config.min_recall, config.min_precision) for th, c in curves.items()}
            entry["ap"] = aps
            entry["mean_ap"] = float(np.mean(list(aps.values())))
            for key in TP_METRICS:
                entry[TP_METRIC_NAMES[key]] = tp_error(curves[config.tp_threshold_m], config.min_recall, key)
        per_class[name] = entry
    scored = [e for e in per_class.values() if e["mean_ap"] is not None]
    result = {"classes": per_class, "n_frames": len(gt_frames),
              "config": {"dist_thresholds_m": list(config.dist_thresholds_m), "tp_threshold_m": config.tp_threshold_m,
                         "min_recall": config.min_recall, "min_precision": config.min_precision,
                         "class_range_m": dict(config.class_range_m)}}
    if not scored:
        result.update({"mAP": None, "mATE": None, "mASE": None, "mAOE": None, "NDS_like": None})
        return result
    result["mAP"] = float(np.mean([e["mean_ap"] for e in scored]))
    tp_scores = []
    for key in TP_METRICS:
        mean_err = float(np.mean([e[TP_METRIC_NAMES[key]] for e in scored]))
        result[f"m{TP_METRIC_NAMES[key]}"] = mean_err
        tp_scores.append(1.0 - min(1.0, mean_err))
    result["NDS_like"] = (config.mean_ap_weight * result["mAP"] + sum(tp_scores)) / (config.mean_ap_weight + len(TP_METRICS))
    return result


def format_table(result: dict) -> str:
    """The evaluation as a fixed-width text table."""
    ths = result["config"]["dist_thresholds_m"]
    head = f"{'class':<11}{'GT':>5}{'pred':>6}" + "".join(f"{'AP@' + format(t, 'g'):>8}" for t in ths) + \
        f"{'AP':>7}{'ATE':>7}{'ASE':>7}{'AOE':>7}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, w: f"{'-':>{w}}" if v is None else f"{v:>{w}.3f}"  # noqa: E731
    for name, e in result["classes"].items():
        lines.append(f"{name.lower():<11}{e['n_gt']:>5}{e['n_pred']:>6}" + "".join(fmt(e["ap"][str(t)], 8) for t in ths)
                     + fmt(e["mean_ap"], 7) + fmt(e["ATE"], 7) + fmt(e["ASE"], 7) + fmt(e["AOE"], 7))
    lines.append("-" * len(head))
    lines.append(f"mAP {_f(result['mAP'])}  mATE {_f(result['mATE'])}  mASE {_f(result['mASE'])}  "
                 f"mAOE {_f(result['mAOE'])}  NDS-like {_f(result['NDS_like'])}  ({result['n_frames']} frames)")
    return "\n".join(lines)


def _f(v):
    return "-" if v is None else f"{v:.3f}"


def _top_k(boxes: Boxes, k: int) -> Boxes:
    if len(boxes) <= k:
        return boxes
    return boxes.select(np.sort(np.argsort(-boxes.score, kind="stable")[:k]))
