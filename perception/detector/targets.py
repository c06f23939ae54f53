"""Training targets and losses of the center head (CenterPoint / CenterNet).

Each ground-truth box puts a Gaussian peak on its class's heatmap at the cell holding its centre;
the cell also carries the box regression target (sub-cell offset, z, log size, sin/cos yaw). The
heatmap loss is CenterNet's penalty-reduced focal loss; the box loss is L1 at the peak cells.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from adstack.types import Boxes
from perception.detector.config import DetectorConfig
from perception.detector.network import BOX_CODE_SIZE


def gaussian_radius(length_cells: float, width_cells: float, min_overlap: float) -> float:
    """Largest centre shift (cells) that keeps IoU >= min_overlap with the true footprint.

    The three cases of CornerNet (Law & Deng 2018): both corners shifted inward, outward, or one each
    way, each a quadratic in r; solved with the (b + sqrt(b^2 - 4ac)) / 2 form that CenterNet and
    CenterPoint use, so radii match those implementations. ``min_radius`` usually dominates.
    """
    h, w, o = length_cells, width_cells, min_overlap
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    sigma = (2 * radius + 1) / 6
    ys, xs = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    gaussian = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    height, width = heatmap.shape
    left, right = min(cx, radius), min(width - cx, radius + 1)
    top, bottom = min(cy, radius), min(height - cy, radius + 1)
    window = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    patch = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(window, patch, out=window)


def heatmap_shape(config: DetectorConfig) -> tuple[int, int, int]:
    gx, gy, _ = config.voxel.grid_size
    return len(config.classes), gy // config.out_stride, gx // config.out_stride


def cell_size(config: DetectorConfig) -> tuple[float, float]:
    return config.voxel.voxel_size[0] * config.out_stride, config.voxel.voxel_size[1] * config.out_stride


def build_targets(boxes: Boxes, config: DetectorConfig, box_num_points: np.ndarray | None = None,
                  min_points: int = 1) -> dict:
    """Targets for one frame: heatmap (K, H, W), indices (O,), box (O, 8), mask (O,).

    Boxes of other classes, outside the range, or with fewer than ``min_points`` lidar points
    (invisible to the sensor) make no target.
    """
    n_classes, height, width = heatmap_shape(config)
    cell_x, cell_y = cell_size(config)
    x_min, y_min = config.voxel.point_cloud_range[:2]
    max_objects = config.head.max_objects
    heatmap = np.zeros((n_classes, height, width), np.float32)
    indices = np.zeros(max_objects, np.int64)
    box_targets = np.zeros((max_objects, BOX_CODE_SIZE), np.float32)
    mask = np.zeros(max_objects, np.float32)
    label_to_channel = {int(label): k for k, label in enumerate(config.labels)}
    u = (boxes.center[:, 0] - x_min) / cell_x
    v = (boxes.center[:, 1] - y_min) / cell_y
    keep = (u >= 0) & (u < width) & (v >= 0) & (v < height) & np.isin(boxes.label, list(label_to_channel))
    if box_num_points is not None:
        keep &= np.asarray(box_num_points) >= min_points
    n = 0
    for i in np.flatnonzero(keep)[:max_objects]:  # a loop over boxes (tens), not points
        channel = label_to_channel[int(boxes.label[i])]
        cx, cy = int(u[i]), int(v[i])
        length, width_m, _ = boxes.size[i]
        radius = gaussian_radius(length / cell_x, width_m / cell_y, config.head.gaussian_overlap)
        _draw_gaussian(heatmap[channel], cx, cy, max(config.head.min_radius, int(radius)))
        indices[n] = cy * width + cx
        box_targets[n] = (u[i] - cx, v[i] - cy, boxes.center[i, 2], *np.log(np.maximum(boxes.size[i], 1e-3)),
                          math.sin(boxes.yaw[i]), math.cos(boxes.yaw[i]))
        mask[n] = 1
        n += 1
    return {"heatmap": heatmap, "indices": indices, "box": box_targets, "mask": mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss (alpha 2, beta 4), normalised by the number of peaks."""
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive = target.eq(1).float()
    negative_weight = torch.pow(1 - target, 4)
    positive_loss = (log_p * torch.pow(1 - p, 2) * positive).sum()
    negative_loss = (log_not_p * torch.pow(p, 2) * negative_weight * (1 - positive)).sum()
    n_positive = positive.sum().clamp(min=1)
    return -(positive_loss + negative_loss) / n_positive


def box_loss(box_map: torch.Tensor, indices: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             code_weights: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and target box codes at the target cells, per object."""
    batch, channels = box_map.shape[:2]
    flat = box_map.view(batch, channels, -1).permute(0, 2, 1)  # (B, H*W, 8)
    predicted = flat.gather(1, indices.unsqueeze(2).expand(-1, -1, channels))
    error = (predicted - target).abs() * mask.unsqueeze(2) * code_weights
    return error.sum() / mask.sum().clamp(min=1)


def detection_loss(outputs, targets: dict, config: DetectorConfig) -> dict:
    heatmap_logits, box_map = outputs
    weights = torch.tensor(config.head.code_weights, dtype=box_map.dtype, device=box_map.device)
    heat = focal_loss(heatmap_logits.float(), targets["heatmap"])
    box = box_loss(box_map.float(), targets["indices"], targets["box"], targets["mask"], weights)
    total = config.head.loss_weight_heatmap * heat + config.head.loss_weight_box * box
    return {"loss": total, "heatmap": heat.detach(), "box": box.detach()}
