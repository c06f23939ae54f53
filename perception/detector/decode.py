"""Head outputs -> boxes: heatmap peaks (max-pool), top-k over classes, box codes at the peaks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adstack.types import Boxes
from perception.detector.config import DetectorConfig
from perception.detector.targets import cell_size


@torch.no_grad()
def decode(heatmap_logits: torch.Tensor, box_map: torch.Tensor, config: DetectorConfig) -> list[dict]:
    """Per batch item: dict of tensors center (D,3), size (D,3), yaw (D,), class_index (D,), score (D,)."""
    heat = torch.sigmoid(heatmap_logits.float())
    box_map = box_map.float()
    batch, n_classes, height, width = heat.shape
    kernel = config.decode.nms_kernel
    peaks = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    heat = heat * (peaks == heat).float()
    k = min(config.decode.max_detections, n_classes * height * width)
    scores, flat = heat.view(batch, -1).topk(k, dim=1)
    class_index = torch.div(flat, height * width, rounding_mode="floor")
    cell = flat % (height * width)
    cy = torch.div(cell, width, rounding_mode="floor").float()
    cx = (cell % width).float()
    codes = box_map.view(batch, box_map.shape[1], -1).gather(2, cell.unsqueeze(1).expand(-1, box_map.shape[1], -1))
    cell_x, cell_y = cell_size(config)
    x_min, y_min = config.voxel.point_cloud_range[:2]
    x = (cx + codes[:, 0]) * cell_x + x_min
    y = (cy + codes[:, 1]) * cell_y + y_min
    z = codes[:, 2]
    size = codes[:, 3:6].clamp(max=5.0).exp()  # e^5 = 148 m: a bound against overflow, not a prior
    yaw = torch.atan2(codes[:, 6], codes[:, 7])
    max_size = torch.as_tensor(config.decode.max_size_m, dtype=size.dtype, device=size.device)
    results = []
    for b in range(batch):
        keep = (scores[b] >= config.decode.score_threshold) & (size[b].t() <= max_size).all(dim=1)
        results.append({"center": torch.stack([x[b], y[b], z[b]], 1)[keep], "size": size[b].t()[keep],
                        "yaw": yaw[b][keep], "class_index": class_index[b][keep], "score": scores[b][keep]})
    return results


def to_boxes(decoded: dict, config: DetectorConfig, frame_id: str = "lidar", stamp: float = 0.0) -> Boxes:
    labels = np.asarray([int(c) for c in config.labels], dtype=np.int32)
    return Boxes(decoded["center"].cpu().numpy(), decoded["size"].cpu().numpy(), decoded["yaw"].cpu().numpy(),
                 labels[decoded["class_index"].cpu().numpy()], decoded["score"].cpu().numpy(),
                 frame_id=frame_id, stamp=stamp)
