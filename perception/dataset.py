"""Lidar training data on disk: shards of frames plus a ``dataset.json`` manifest.

A frame is one lidar sweep in the sensor frame with its ground-truth boxes (also in the sensor frame)
and the ego pose in the map frame. Frames are grouped in shards, one ``.npz`` file each (written to a
temporary name and renamed, so a reader never sees half a shard):

| array | shape, dtype | meaning |
|---|---|---|
| ``format_version`` | () int64 | ``SHARD_FORMAT_VERSION`` |
| ``map_name`` | () str | map the frames come from (splits are per map) |
| ``seed`` | () int64 | seed of the run that made them |
| ``points`` | (sum N, 4) float32 | x, y, z, intensity of all frames, concatenated |
| ``point_offsets`` | (F + 1,) int64 | frame f's points are ``points[off[f]:off[f+1]]`` |
| ``point_labels`` | (sum N,) int8, optional | ObjectClass per point |
| ``box_center``, ``box_size`` | (sum B, 3) float32 | box centre (x, y, z), size (length, width, height) |
| ``box_yaw`` | (sum B,) float32 | heading, rad, counter-clockwise from x |
| ``box_label`` | (sum B,) int32 | ObjectClass |
| ``box_ids`` | (sum B,) int64 | actor id |
| ``box_num_points`` | (sum B,) int32 | lidar points inside each box |
| ``box_offsets`` | (F + 1,) int64 | frame f's boxes are ``[off[f]:off[f+1]]`` |
| ``ego_pose`` | (F, 4) float64 | ego x, y, z, yaw in the map frame |
| ``stamp`` | (F,) float64 | sensor time, s |

``dataset.json`` holds the format and code versions, the collector's configuration, the shard list
(file, map, seed, frame count) and the split: which maps are ``train`` and which are ``val``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

import adstack
from adstack.errors import DataError, UserError
from adstack.types import Boxes

SHARD_FORMAT_VERSION = 1
MANIFEST_NAME = "dataset.json"
MANIFEST_FORMAT = "adstack-lidar-frames"
_REQUIRED = ("format_version", "map_name", "seed", "points", "point_offsets", "box_center", "box_size",
             "box_yaw", "box_label", "box_ids", "box_num_points", "box_offsets", "ego_pose", "stamp")


@dataclass
class Frame:
    """One sweep: ``points`` (N, 4) float32 and ``boxes`` in the sensor frame; ``ego_pose`` (x, y, z, yaw) in the map."""

    points: np.ndarray
    boxes: Boxes
    ego_pose: np.ndarray = field(default_factory=lambda: np.zeros(4))
    stamp: float = 0.0
    box_num_points: np.ndarray | None = None  # computed by write_shard when missing
    point_labels: np.ndarray | None = None

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 4)
        self.ego_pose = np.asarray(self.ego_pose, dtype=np.float64).reshape(4)


@numba.njit(cache=True)
def _count_points_in_boxes(points, center, size, yaw):
    counts = np.zeros(center.shape[0], np.int32)
    for b in range(center.shape[0]):
        c, s = np.cos(yaw[b]), np.sin(yaw[b])
        hl, hw, hh = size[b, 0] / 2, size[b, 1] / 2, size[b, 2] / 2
        radius2 = hl * hl + hw * hw
        for i in range(points.shape[0]):
            dx = points[i, 0] - center[b, 0]
            dy = points[i, 1] - center[b, 1]
            if dx * dx + dy * dy > radius2:
                continue
            if abs(points[i, 2] - center[b, 2]) > hh:
                continue
            if abs(c * dx + s * dy) <= hl and abs(-s * dx + c * dy) <= hw:
                counts[b] += 1
    return counts


def count_points_in_boxes(points: np.ndarray, boxes: Boxes) -> np.ndarray:
    """(B,) number of points inside each oriented box."""
    if len(boxes) == 0:
        return np.zeros(0, np.int32)
    return _count_points_in_boxes(np.ascontiguousarray(points[:, :3], np.float64), boxes.center, boxes.size, boxes.yaw)


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _offsets(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def write_shard(path: str | Path, frames: list[Frame], map_name: str, seed: int) -> dict:
    """Write ``frames`` atomically to ``path`` (.npz); returns the manifest entry for the shard."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError("a shard file name must end in .npz", path)
    if not frames:
        raise UserError("refusing to write an empty shard", path)
    counts = [f.box_num_points if f.box_num_points is not None else count_points_in_boxes(f.points, f.boxes)
              for f in frames]
    arrays = {
        "format_version": np.int64(SHARD_FORMAT_VERSION), "map_name": np.str_(map_name), "seed": np.int64(seed),
        "points": np.concatenate([f.points for f in frames]).astype(np.float32),
        "point_offsets": _offsets([len(f.points) for f in frames]),
        "box_center": np.concatenate([f.boxes.center for f in frames]).astype(np.float32),
        "box_size": np.concatenate([f.boxes.size for f in frames]).astype(np.float32),
        "box_yaw": np.concatenate([f.boxes.yaw for f in frames]).astype(np.float32),
        "box_label": np.concatenate([f.boxes.label for f in frames]).astype(np.int32),
        "box_ids": np.concatenate([f.boxes.ids for f in frames]).astype(np.int64),
        "box_num_points": np.concatenate([np.asarray(c, np.int32).reshape(-1) for c in counts]),
        "box_offsets": _offsets([len(f.boxes) for f in frames]),
        "ego_pose": np.stack([f.ego_pose for f in frames]),
        "stamp": np.array([f.stamp for f in frames], dtype=np.float64),
    }
    if all(f.point_labels is not None for f in frames):
        arrays["point_labels"] = np.concatenate([f.point_labels for f in frames]).astype(np.int8)
    _atomic_savez(path, arrays)
    return {"file": path.name, "map": map_name, "seed": int(seed), "frames": len(frames),
            "points": int(arrays["points"].shape[0])}


def read_shard(path: str | Path) -> list[Frame]:
    """All frames of one shard."""
    data = _load_shard(Path(path))
    return [_frame(data, i) for i in range(len(data["stamp"]))]


def _load_shard(path: Path) -> dict:
    if not path.is_file():
        raise UserError("shard file not found", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED if k not in npz.files]
            if missing:
                raise DataError(f"not an adstack lidar shard: missing arrays {missing}", path)
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read shard: {err}", path) from None
    if int(data["format_version"]) != SHARD_FORMAT_VERSION:
        raise DataError(f"shard format version {int(data['format_version'])}, this code reads {SHARD_FORMAT_VERSION}", path)
    n_frames = len(data["stamp"])
    if len(data["point_offsets"]) != n_frames + 1 or len(data["box_offsets"]) != n_frames + 1 \
            or data["point_offsets"][-1] != len(data["points"]) or data["box_offsets"][-1] != len(data["box_yaw"]):
        raise DataError("frame offsets do not match the arrays", path)
    return data


def _frame(data: dict, i: int) -> Frame:
    p0, p1 = data["point_offsets"][i], data["point_offsets"][i + 1]
    b0, b1 = data["box_offsets"][i], data["box_offsets"][i + 1]
    boxes = Boxes(data["box_center"][b0:b1], data["box_size"][b0:b1], data["box_yaw"][b0:b1],
                  data["box_label"][b0:b1], ids=data["box_ids"][b0:b1], frame_id="lidar", stamp=float(data["stamp"][i]))
    labels = data["point_labels"][p0:p1] if "point_labels" in data else None
    return Frame(data["points"][p0:p1], boxes, data["ego_pose"][i], float(data["stamp"][i]),
                 data["box_num_points"][b0:b1], labels)


def write_manifest(data_dir: str | Path, splits: dict[str, list[str]], config: dict | None = None,
                   shards: list[dict] | None = None) -> Path:
    """Write ``dataset.json``. ``splits`` maps a split name to its map names, e.g.
    ``{"train": ["Town01", "Town03"], "val": ["Town04"]}``. Without ``shards``, every ``*.npz`` in
    ``data_dir`` is listed (its header arrays are read, not its points)."""
    data_dir = Path(data_dir)
    if shards is None:
        shards = []
        for path in sorted(data_dir.glob("*.npz")):
            with np.load(path, allow_pickle=False) as npz:
                shards.append({"file": path.name, "map": str(npz["map_name"]), "seed": int(npz["seed"]),
                               "frames": int(len(npz["stamp"])), "points": int(npz["point_offsets"][-1])})
    manifest = {"format": MANIFEST_FORMAT, "format_version": SHARD_FORMAT_VERSION, "code_version": adstack.__version__,
                "config": config or {}, "splits": {k: list(v) for k, v in splits.items()}, "shards": shards}
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", suffix=".tmp", dir=data_dir)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(tmp, data_dir / MANIFEST_NAME)
    return data_dir / MANIFEST_NAME


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST_NAME
    if not Path(data_dir).is_dir():
        raise UserError("data directory not found", data_dir)
    if not path.is_file():
        raise UserError(f"no {MANIFEST_NAME}: not a dataset written by `adstack collect lidar`", data_dir)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err}", path) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}", path)
    if manifest.get("format_version") != SHARD_FORMAT_VERSION:
        raise DataError(f"format version {manifest.get('format_version')}, this code reads {SHARD_FORMAT_VERSION}", path)
    return manifest


try:
    from torch.utils.data import Dataset, Sampler
except ImportError:  # torch is only needed for training
    Dataset, Sampler = object, object


class ShardDataset(Dataset):
    """Frames of the maps in ``split`` (see ``write_manifest``); ``split='all'`` takes every shard.

    Item i is ``transform(frame)`` (or the Frame). Shards are read whole and the last one is kept, so
    read frames shard by shard (``ShardOrderSampler``) rather than in a global random order.
    """

    def __init__(self, data_dir: str | Path, split: str = "train", transform=None):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        splits = self.manifest["splits"]
        if split == "all":
            shards = self.manifest["shards"]
        elif split in splits:
            shards = [s for s in self.manifest["shards"] if s["map"] in set(splits[split])]
        else:
            raise UserError(f"no split {split!r}; the manifest has {sorted(splits)} (or use 'all')", self.data_dir / MANIFEST_NAME)
        self.shards = shards
        self.index = [(s, f) for s, shard in enumerate(shards) for f in range(shard["frames"])]
        self.transform = transform
        self._cached: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def frame(self, i: int) -> Frame:
        shard, f = self.index[i]
        if self._cached is None or self._cached[0] != shard:
            self._cached = (shard, _load_shard(self.data_dir / self.shards[shard]["file"]))
        return _frame(self._cached[1], f)

    def __getitem__(self, i: int):
        frame = self.frame(i)
        return self.transform(frame) if self.transform is not None else frame


class ShardOrderSampler(Sampler):
    """Shuffles shards, then frames within each shard: random order with one shard read at a time."""

    def __init__(self, dataset: ShardDataset, shuffle: bool = True, seed: int = 0):
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        by_shard: dict[int, list[int]] = {}
        for i, (shard, _) in enumerate(self.dataset.index):
            by_shard.setdefault(shard, []).append(i)
        order = list(by_shard)
        if self.shuffle:
            rng.shuffle(order)
        for shard in order:
            items = np.array(by_shard[shard])
            if self.shuffle:
                rng.shuffle(items)
            yield from items.tolist()


def augment_frame(frame: Frame, rng: np.random.Generator, flip: bool = True, rotation: float = 0.0,
                  scale: tuple = (1.0, 1.0)) -> Frame:
    """Global augmentation of points and boxes together: mirror about x, rotate about z, scale."""
    points = frame.points.copy()
    center, size, yaw = frame.boxes.center.copy(), frame.boxes.size.copy(), frame.boxes.yaw.copy()
    velocity = frame.boxes.velocity.copy()
    if flip and rng.random() < 0.5:
        points[:, 1] *= -1
        center[:, 1] *= -1
        velocity[:, 1] *= -1
        yaw = -yaw
    if rotation > 0:
        angle = rng.uniform(-rotation, rotation)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]])
        points[:, :2] = points[:, :2] @ rot.T.astype(np.float32)
        center[:, :2] = center[:, :2] @ rot.T
        velocity = velocity @ rot.T
        yaw = yaw + angle
    factor = rng.uniform(scale[0], scale[1]) if scale[1] > scale[0] else float(scale[0])
    if factor != 1.0:
        points[:, :3] *= np.float32(factor)
        center *= factor
        size *= factor
        velocity *= factor
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi
    boxes = Boxes(center, size, yaw, frame.boxes.label, frame.boxes.score, velocity, frame.boxes.ids,
                  frame.boxes.frame_id, frame.boxes.stamp)
    return Frame(points, boxes, frame.ego_pose, frame.stamp, frame.box_num_points, frame.point_labels)
