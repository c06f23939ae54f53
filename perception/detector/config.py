"""Detector configuration: dataclasses validated from YAML, and the version stamp weights carry.

Defaults live here; ``perception/config/detector.param.yaml`` restates them for a reader and for
editing. A model directory's ``config.yaml`` is the full configuration the weights were trained with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adstack.config import from_dict, load_params
from adstack.errors import DataError
from adstack.types import ObjectClass
from perception.voxelizer import VoxelConfig

# Bump when the network's layers, its inputs or the meaning of its outputs change: weights made by
# another code version are refused even if their configuration matches.
CODE_VERSION = 1


@dataclass
class BackboneConfig:
    """SECOND-style 2D backbone: blocks of 3x3 convs, each upsampled to a common stride and concatenated."""

    layer_nums: tuple = (1, 2, 2)          # convs after the strided first conv of each block
    layer_strides: tuple = (2, 2, 2)
    num_filters: tuple = (32, 64, 128)
    upsample_strides: tuple = (1, 2, 4)    # block outputs upsampled by these factors
    num_upsample_filters: tuple = (32, 32, 32)


@dataclass
class HeadConfig:
    """CenterPoint-style head: one heatmap channel per class, box regression at heatmap peaks."""

    shared_channels: int = 32
    gaussian_overlap: float = 0.1          # CenterNet radius from this min IoU, as CenterPoint
    min_radius: int = 2                    # heatmap cells
    max_objects: int = 128                 # targets per frame
    loss_weight_heatmap: float = 1.0
    loss_weight_box: float = 0.25
    # Regression terms: offset x, y; z; log l, w, h; sin, cos of yaw.
    code_weights: tuple = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@dataclass
class DecodeConfig:
    score_threshold: float = 0.2
    max_detections: int = 100              # top-k peaks over all classes
    nms_kernel: int = 3                    # max-pool peak extraction window (heatmap cells)
    # Boxes larger than any road user (length, width, height in m; a long bus or truck fits) are
    # dropped: on scans unlike its training data (another sensor) the size regression can run away.
    max_size_m: tuple = (20.0, 4.0, 5.0)


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 4
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    num_workers: int = 0
    seed: int = 0
    flip: bool = True                      # random mirror about the x axis
    rotation: float = 0.3927               # uniform rotation about z in [-r, r] rad (pi/8)
    scale: tuple = (0.95, 1.05)
    val_every: int = 0                     # epochs between validations (0: only at the end)
    min_points_per_box: int = 1            # boxes with fewer lidar points make no target (invisible)


@dataclass
class DetectorConfig:
    classes: tuple = ("vehicle", "pedestrian", "cyclist")   # ObjectClass names, lower case
    voxel: VoxelConfig = field(default_factory=lambda: VoxelConfig(
        point_cloud_range=(-51.2, -51.2, -3.0, 51.2, 51.2, 3.0), voxel_size=(0.4, 0.4, 6.0),
        max_points_per_voxel=20, max_voxels=16000))
    intensity_scale: float = 1.0            # multiplies the 4th column (e.g. 1/255 for 0..255 sensors)
    pillar_channels: int = 32
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    torch_threads: int = 2                  # CPU inference threads (0: leave torch's default)

    def __post_init__(self):
        self.classes = tuple(self.classes)
        for name in self.classes:
            if name.upper() not in ObjectClass.__members__:
                raise DataError(f"unknown class {name!r}; known: {[c.name.lower() for c in ObjectClass]}", "detector config")
        b = self.backbone
        lengths = {len(b.layer_nums), len(b.layer_strides), len(b.num_filters), len(b.upsample_strides), len(b.num_upsample_filters)}
        if len(lengths) != 1:
            raise DataError("backbone lists must all have the same length", "detector config")
        strides = [s // u if u >= 1 else None for s, u in zip(self._cumulative_strides(), b.upsample_strides)]
        if len(set(strides)) != 1 or strides[0] is None or strides[0] < 1:
            raise DataError(f"each backbone block's stride / upsample_stride must be the same integer; got {strides}", "detector config")
        if self.voxel.mode != "hard":
            raise DataError("the pillar network reads hard voxels: voxel.mode must be 'hard'", "detector config")
        if self.voxel.grid_size[2] != 1:
            raise DataError(f"pillars need one voxel over the z range; voxel_size z must equal the range height, grid {self.voxel.grid_size}", "detector config")
        gx, gy, _ = self.voxel.grid_size
        if gx % self.out_stride or gy % self.out_stride:
            raise DataError(f"grid {gx}x{gy} must divide by the output stride {self.out_stride}", "detector config")

    def _cumulative_strides(self) -> list[int]:
        out, s = [], 1
        for stride in self.backbone.layer_strides:
            s *= stride
            out.append(s)
        return out

    @property
    def out_stride(self) -> int:
        """Pillar cells per heatmap cell."""
        return self._cumulative_strides()[0] // self.backbone.upsample_strides[0]

    @property
    def labels(self) -> tuple[ObjectClass, ...]:
        return tuple(ObjectClass[name.upper()] for name in self.classes)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def model_dict(self) -> dict:
        """The part that defines the weights (training settings excluded)."""
        d = self.to_dict()
        d.pop("train")
        d.pop("decode")
        d.pop("torch_threads")
        return d

    def version_hash(self) -> str:
        """Hash of the code version and the weight-defining configuration."""
        text = json.dumps({"code_version": CODE_VERSION, "model": self.model_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _with_source(err: Exception, source) -> DataError:
    """Name the file in errors raised deep inside a nested dataclass."""
    message = str(err)
    if str(source) in message:
        return err if isinstance(err, DataError) else DataError(message)
    return DataError(f"bad detector configuration: {message}", source)


def config_from_dict(data: dict, source: str = "config") -> DetectorConfig:
    data = dict(data or {})
    for key in ("voxel", "backbone", "head", "decode", "train"):
        if key in data and not isinstance(data[key], dict):
            raise DataError(f"{key!r} must be a mapping", source)
    try:
        return from_dict(DetectorConfig, data, str(source))
    except (DataError, TypeError, ValueError) as err:
        raise _with_source(err, source) from None


def load_detector_config(path: str | Path | None = None) -> DetectorConfig:
    """Defaults when ``path`` is None; else a ``*.param.yaml`` (ros__parameters) or plain mapping."""
    if path is None:
        return DetectorConfig()
    try:
        return load_params(DetectorConfig, path)
    except (DataError, TypeError, ValueError) as err:
        raise _with_source(err, path) from None


def save_config(config: DetectorConfig, path: str | Path) -> None:
    Path(path).write_text("# written by adstack train detector: the configuration these weights were trained with\n"
                          + yaml.safe_dump(config.to_dict(), sort_keys=False))


DEFAULT_PARAM_FILE = Path(__file__).resolve().parent.parent / "config" / "detector.param.yaml"
