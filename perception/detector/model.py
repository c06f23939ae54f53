"""``LidarDetector``: cloud in, boxes out. Loads a model directory and refuses mismatched weights.

A model directory holds ``model.pt`` (state_dict plus the code version and configuration hash it
was trained under), ``config.yaml`` (the full configuration), ``metrics.json`` and ``model.ts``
(TorchScript of the network). On the CPU the numba voxelizer feeds the network; on a GPU the torch
voxelizer runs on the device and the network runs in fp16.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from adstack.config import load_yaml
from adstack.errors import DataError, UserError
from adstack.types import Boxes
from perception.detector.config import CODE_VERSION, DetectorConfig, config_from_dict, save_config
from perception.detector.decode import decode, to_boxes
from perception.detector.network import PillarCenterNet, fuse_batch_norms
from perception.voxelizer import Voxelizer
from perception.voxelizer_torch import voxelize_hard_torch

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
TORCHSCRIPT_FILE = "model.ts"
CHECKPOINT_FORMAT = "adstack-lidar-detector"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "detector"


def select_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit 'cuda' without a GPU is a UserError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"bad device {device!r}: {err}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__})")
    return chosen


def save_model(model_dir: str | Path, network: torch.nn.Module, config: DetectorConfig) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    checkpoint = {"format": CHECKPOINT_FORMAT, "code_version": CODE_VERSION, "version_hash": config.version_hash(),
                  "model_config": json.dumps(config.model_dict(), sort_keys=True), "state_dict": state}
    tmp = model_dir / (WEIGHTS_FILE + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(model_dir / WEIGHTS_FILE)
    save_config(config, model_dir / CONFIG_FILE)
    return model_dir / WEIGHTS_FILE


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: weights {va!r}, config {vb!r}")
    return out


def load_model(model_dir: str | Path) -> tuple[DetectorConfig, dict]:
    """(config, state_dict) of a model directory, after checking that they belong together."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError("model directory not found", model_dir)
    weights, config_path = model_dir / WEIGHTS_FILE, model_dir / CONFIG_FILE
    for path in (weights, config_path):
        if not path.is_file():
            raise UserError(f"missing {path.name}: not a model written by `adstack train detector`", model_dir)
    config = config_from_dict(load_yaml(config_path), str(config_path))
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise DataError(f"cannot load weights: {str(err).splitlines()[0]}", weights) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"not an adstack detector checkpoint (expected format {CHECKPOINT_FORMAT!r})", weights)
    if checkpoint["code_version"] != CODE_VERSION:
        raise DataError(f"weights were made by detector code version {checkpoint['code_version']}, this code is "
                        f"version {CODE_VERSION}; retrain with `adstack train detector`", weights)
    if checkpoint["version_hash"] != config.version_hash():
        diffs = _differences(json.loads(checkpoint["model_config"]), config.model_dict())
        raise DataError(f"{CONFIG_FILE} does not match the weights (hash {config.version_hash()} vs "
                        f"{checkpoint['version_hash']}): " + "; ".join(diffs[:4]), weights)
    return config, checkpoint["state_dict"]


class LidarDetector:
    """Pillar CenterPoint-style detector. ``detect(points)`` -> ``Boxes`` in the points' frame.

    ``last_timing_ms`` holds the stage times of the last call (voxelize, network, decode, total):
    nodes report them as processing time.
    """

    def __init__(self, config: DetectorConfig, network: torch.nn.Module | None = None, device: str = "auto",
                 fp16: bool | None = None, fuse: bool = True):
        self.config = config
        self.device = select_device(device)
        self.fp16 = (self.device.type == "cuda") if fp16 is None else fp16
        if self.device.type == "cpu" and config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        network = PillarCenterNet(config) if network is None else network
        if isinstance(network, PillarCenterNet):
            # A copy: the caller's network (perhaps mid-training) keeps its mode, dtype and batch norms.
            network = copy.deepcopy(network).eval()
            if fuse:
                network = fuse_batch_norms(network)
        network = network.to(self.device).eval()
        self.network = network.half() if self.fp16 else network
        self.voxelizer = Voxelizer(config.voxel)
        self.last_timing_ms: dict[str, float] = {}

    @classmethod
    def from_dir(cls, model_dir: str | Path | None = None, device: str = "auto", fp16: bool | None = None,
                 score_threshold: float | None = None) -> "LidarDetector":
        """Load ``model_dir`` (default: the model shipped in ``perception/models/detector``)."""
        model_dir = SHIPPED_MODEL_DIR if model_dir is None else Path(model_dir)
        if model_dir == SHIPPED_MODEL_DIR and not (model_dir / WEIGHTS_FILE).is_file():
            raise UserError("no shipped detector model here; train one with "
                            "`adstack train detector --data DIR --out MODEL_DIR`", model_dir)
        config, state = load_model(model_dir)
        if score_threshold is not None:
            config.decode.score_threshold = float(score_threshold)
        network = PillarCenterNet(config)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise DataError(f"weights do not fit the network: {str(err).splitlines()[1] if len(str(err).splitlines()) > 1 else err}",
                            model_dir / WEIGHTS_FILE) from None
        return cls(config, network, device, fp16)

    def _check(self, points) -> np.ndarray | torch.Tensor:
        shape = tuple(points.shape)
        if len(shape) != 2 or shape[1] < 4:
            raise UserError(f"points must be (N, 4) x, y, z, intensity; got shape {shape}")
        return points[:, :4]

    def voxelize(self, clouds: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hard voxels of several clouds, batch index prepended to the coords: (M,P,4), (M,), (M,4)."""
        voxel_parts, count_parts, coord_parts = [], [], []
        for b, points in enumerate(clouds):
            points = self._check(points)
            if self.device.type == "cuda":
                tensor = torch.as_tensor(points, dtype=torch.float32).to(self.device, non_blocking=True)
                voxels, coords, counts = voxelize_hard_torch(tensor, self.config.voxel)
            else:
                v, c, n = self.voxelizer.hard(np.asarray(points, dtype=np.float32))
                voxels, coords, counts = torch.from_numpy(v.copy()), torch.from_numpy(c.copy()), torch.from_numpy(n.copy())
            batch_column = torch.full((coords.shape[0], 1), b, dtype=torch.int32, device=coords.device)
            voxel_parts.append(voxels)
            count_parts.append(counts)
            coord_parts.append(torch.cat([batch_column, coords], 1))
        voxels = torch.cat(voxel_parts)
        if self.fp16:
            voxels = voxels.half()
        return voxels, torch.cat(count_parts), torch.cat(coord_parts)

    @torch.inference_mode()
    def raw_outputs(self, clouds: list):
        voxels, counts, coords = self.voxelize(clouds)
        return self.network(voxels, counts, coords, len(clouds))

    @torch.inference_mode()
    def detect_batch(self, clouds: list, frame_id: str = "lidar", stamp: float = 0.0) -> list[Boxes]:
        start = time.perf_counter()
        voxels, counts, coords = self.voxelize(clouds)
        voxelized = time.perf_counter()
        heatmap, box_map = self.network(voxels, counts, coords, len(clouds))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        networked = time.perf_counter()
        boxes = [to_boxes(d, self.config, frame_id, stamp) for d in decode(heatmap, box_map, self.config)]
        done = time.perf_counter()
        self.last_timing_ms = {"voxelize": (voxelized - start) * 1e3, "network": (networked - voxelized) * 1e3,
                               "decode": (done - networked) * 1e3, "total": (done - start) * 1e3,
                               "pillars": int(voxels.shape[0])}
        return boxes

    def detect(self, points, frame_id: str = "lidar", stamp: float = 0.0) -> Boxes:
        """Boxes (center xyz, size lwh, yaw, label ObjectClass, score) from an (N, 4) float32 cloud."""
        return self.detect_batch([points], frame_id, stamp)[0]
