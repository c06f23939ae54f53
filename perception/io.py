"""Readers for recorded lidar scans and their ground-truth labels.

Scans come back as (N, 4) float32 arrays (x, y, z, intensity) in the sensor frame, REP-103 axes.
Intensity keeps the file's own scale (KITTI reflectance 0..1, nuScenes 0..255). Points with a
non-finite coordinate (organised .pcd clouds mark missing returns with NaN) are dropped.

Labels come back as ``adstack.types.Boxes`` in the lidar frame, box centre at the box's middle
(not its bottom), size (length, width, height), yaw about +z from +x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adstack.errors import DataError, UserError
from adstack.types import Boxes, ObjectClass

SCAN_FORMATS = ("auto", "kitti", "nuscenes", "pcd")

# Floats per point in the flat binary formats.
_BIN_COLUMNS = {"kitti": 4, "nuscenes": 5}

KITTI_CLASSES = {
    "Car": ObjectClass.VEHICLE, "Van": ObjectClass.VEHICLE, "Truck": ObjectClass.VEHICLE,
    "Tram": ObjectClass.VEHICLE, "Pedestrian": ObjectClass.PEDESTRIAN,
    "Person_sitting": ObjectClass.PEDESTRIAN, "Cyclist": ObjectClass.CYCLIST, "Misc": ObjectClass.UNKNOWN,
}

# mmdetection3d's nuScenes category ids (the info file's ``metainfo.categories``) by name.
NUSCENES_CLASSES = {
    "car": ObjectClass.VEHICLE, "truck": ObjectClass.VEHICLE, "trailer": ObjectClass.VEHICLE,
    "bus": ObjectClass.VEHICLE, "construction_vehicle": ObjectClass.VEHICLE,
    "bicycle": ObjectClass.CYCLIST, "motorcycle": ObjectClass.CYCLIST,
    "pedestrian": ObjectClass.PEDESTRIAN, "traffic_cone": ObjectClass.STATIC, "barrier": ObjectClass.STATIC,
}


def detect_format(path: str | Path) -> str:
    """Scan format from the file name: ``*.pcd.bin`` nuScenes, ``*.bin`` KITTI, ``*.pcd`` PCD."""
    name = Path(path).name.lower()
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    if name.endswith(".bin"):
        return "kitti"
    if name.endswith(".pcd"):
        return "pcd"
    raise UserError("cannot tell the scan format from the name (expected .bin, .pcd.bin or .pcd); "
                    "give it with --format kitti|nuscenes|pcd", path)


def load_scan(path: str | Path, fmt: str = "auto") -> np.ndarray:
    """Read one recorded scan into an (N, 4) float32 array x, y, z, intensity."""
    path = Path(path)
    if fmt not in SCAN_FORMATS:
        raise UserError(f"unknown scan format {fmt!r}; choose from {', '.join(SCAN_FORMATS)}")
    if not path.is_file():
        raise UserError("file not found", path)
    if fmt == "auto":
        fmt = detect_format(path)
    points = _read_pcd(path) if fmt == "pcd" else _read_flat_binary(path, _BIN_COLUMNS[fmt], fmt)
    points = points[np.isfinite(points[:, :3]).all(axis=1)]
    if points.shape[0] == 0:
        raise DataError("scan holds no valid points", path)
    return np.ascontiguousarray(points, dtype=np.float32)


def _read_flat_binary(path: Path, columns: int, fmt: str) -> np.ndarray:
    raw = path.read_bytes()
    record = 4 * columns
    if len(raw) == 0:
        raise DataError("empty file", path)
    if len(raw) % record:
        hint = ""
        for other, cols in _BIN_COLUMNS.items():
            if other != fmt and len(raw) % (4 * cols) == 0:
                hint = f"; it would fit {other} ({cols} floats per point): try --format {other}"
        raise DataError(f"truncated or not a {fmt} scan: {len(raw)} bytes is not a multiple of "
                        f"{record} ({columns} float32 per point){hint}", path)
    if fmt == "kitti" and len(raw) % 20 == 0 and _looks_like_nuscenes(raw):
        raise DataError("this looks like a nuScenes scan (5 float32 per point, the fifth an integer ring "
                        "index), not KITTI: use --format nuscenes or name it *.pcd.bin", path)
    table = np.frombuffer(raw, dtype="<f4").reshape(-1, columns)
    return table[:, :4].copy()  # nuScenes' fifth column is the ring index: not needed downstream


def _looks_like_nuscenes(raw: bytes) -> bool:
    """True when every fifth float is a whole number in 0..255 (a ring index): a 5-column scan."""
    ring = np.frombuffer(raw, dtype="<f4").reshape(-1, 5)[:, 4]
    return bool(len(ring) > 10 and np.all((ring >= 0) & (ring <= 255) & (ring == np.round(ring))))


# PCD: the Point Cloud Library's format (header of ASCII lines, then ascii or binary data).
_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4",
              ("I", 8): "i8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}
_INTENSITY_NAMES = ("intensity", "i", "reflectance", "remission")


def _read_pcd(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise DataError("PCD header ends before its DATA line", path)
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    for key in ("FIELDS", "SIZE", "TYPE", "POINTS", "DATA"):
        if key not in header:
            raise DataError(f"PCD header lacks {key}", path)
    fields = header["FIELDS"]
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
    if not (len(fields) == len(header["SIZE"]) == len(header["TYPE"]) == len(counts)):
        raise DataError("PCD header: FIELDS, SIZE, TYPE and COUNT differ in length", path)
    try:
        n_points = int(header["POINTS"][0])
        dtype = np.dtype([(f"f{k}_{name}", _PCD_TYPES[(typ.upper(), int(size))], (count,))
                          for k, (name, size, typ, count) in enumerate(zip(fields, header["SIZE"], header["TYPE"], counts))])
    except (KeyError, ValueError, IndexError):
        raise DataError("PCD header has an unsupported SIZE/TYPE pair or a bad POINTS count", path) from None
    names = [name.lower() for name in fields]
    for axis in ("x", "y", "z"):
        if axis not in names:
            raise DataError(f"PCD has no {axis!r} field (fields: {' '.join(fields)})", path)
    mode = header["DATA"][0].lower()
    if mode == "ascii":
        text = raw[offset:].decode("ascii", errors="replace").split()
        per_point = sum(counts)
        if len(text) < n_points * per_point:
            raise DataError(f"truncated PCD: {len(text) // max(per_point, 1)} of {n_points} points present", path)
        try:
            flat = np.asarray(text[: n_points * per_point], dtype=np.float64).reshape(n_points, per_point)
        except ValueError:
            raise DataError("PCD ascii data holds a value that is not a number", path) from None
        starts = np.cumsum([0] + counts[:-1])
        column = {name: flat[:, start] for name, start in zip(names, starts)}
    elif mode == "binary":
        need = n_points * dtype.itemsize
        if len(raw) - offset < need:
            raise DataError(f"truncated PCD: {len(raw) - offset} data bytes, header promises {need}", path)
        table = np.frombuffer(raw, dtype=dtype, count=n_points, offset=offset)
        column = {name: table[dtype.names[k]][:, 0].astype(np.float64) for k, name in enumerate(names)}
    else:
        raise DataError(f"PCD DATA {mode!r} is not supported (ascii and binary are)", path)
    intensity_name = next((n for n in _INTENSITY_NAMES if n in column), None)
    intensity = column[intensity_name] if intensity_name else np.zeros(n_points)
    return np.stack([column["x"], column["y"], column["z"], intensity], axis=1).astype(np.float32)


def write_pcd(path: str | Path, points: np.ndarray, binary: bool = True) -> None:
    """Write (N, 4) x, y, z, intensity as a PCD file (used by tests and for exporting scans)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 4)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\n"
              "SIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {len(points)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(points)}\n"
              f"DATA {'binary' if binary else 'ascii'}\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(points.astype("<f4").tobytes())
        else:
            np.savetxt(f, points, fmt="%.6f")


# --------------------------------------------------------------------------------------------
# KITTI object labels and calibration
# --------------------------------------------------------------------------------------------

def load_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """KITTI object calibration: ``R0_rect`` (3x3) and ``Tr_velo_to_cam`` (3x4), among others."""
    path = Path(path)
    if not path.is_file():
        raise UserError("calibration file not found", path)
    calib: dict[str, np.ndarray] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        try:
            calib[key.strip()] = np.array([float(v) for v in values.split()])
        except ValueError:
            raise DataError(f"calibration entry {key.strip()!r} holds a value that is not a number", path) from None
    # KITTI raw-data calibration names these R_rect / Tr_velo_cam.
    r0 = calib.get("R0_rect", calib.get("R_rect"))
    tr = calib.get("Tr_velo_to_cam", calib.get("Tr_velo_cam"))
    if r0 is None or r0.size != 9 or tr is None or tr.size != 12:
        raise DataError("calibration needs R0_rect (9 numbers) and Tr_velo_to_cam (12 numbers)", path)
    calib["R0_rect"] = r0.reshape(3, 3)
    calib["Tr_velo_to_cam"] = tr.reshape(3, 4)
    return calib


def kitti_rect_to_velo(calib: dict[str, np.ndarray]) -> np.ndarray:
    """4x4 transform from KITTI's rectified camera frame to the Velodyne frame.

    KITTI maps a Velodyne point to the rectified camera as x_rect = R0_rect @ Tr_velo_to_cam @ x_velo,
    so the way back is the inverse of that product.
    """
    r0 = np.eye(4)
    r0[:3, :3] = calib["R0_rect"]
    tr = np.eye(4)
    tr[:3, :4] = calib["Tr_velo_to_cam"]
    return np.linalg.inv(r0 @ tr)


def load_kitti_labels(label_path: str | Path, calib_path: str | Path,
                      keep: set[str] | None = None) -> Boxes:
    """KITTI ``label_2`` file -> Boxes in the Velodyne frame.

    A label line: type truncated occluded alpha bbox(4) h w l x y z rotation_y [score], where
    (x, y, z) is the bottom centre of the box in the rectified camera frame (y down) and rotation_y
    the heading about the camera's y axis. ``keep`` restricts to these type names (default: every
    type except DontCare). Box ``ids`` hold the line index in the file.
    """
    label_path = Path(label_path)
    if not label_path.is_file():
        raise UserError("label file not found", label_path)
    calib = load_kitti_calib(calib_path)
    rows, labels, line_ids = [], [], []
    for k, line in enumerate(label_path.read_text(errors="replace").splitlines()):
        parts = line.split()
        if not parts:
            continue
        name = parts[0]
        if name == "DontCare" or (keep is not None and name not in keep):
            continue
        if len(parts) < 15:
            raise DataError(f"line {k + 1}: a KITTI label has 15 fields, found {len(parts)}", label_path)
        try:
            rows.append([float(v) for v in parts[8:15]])
        except ValueError:
            raise DataError(f"line {k + 1}: a box field is not a number", label_path) from None
        labels.append(int(KITTI_CLASSES.get(name, ObjectClass.UNKNOWN)))
        line_ids.append(k)
    if not rows:
        return Boxes(frame_id="lidar")
    table = np.asarray(rows)
    h, w, l = table[:, 0], table[:, 1], table[:, 2]
    bottom_cam = table[:, 3:6]
    rotation_y = table[:, 6]
    centre_cam = bottom_cam - np.stack([np.zeros_like(h), h / 2, np.zeros_like(h)], 1)  # camera y points down
    rect_to_velo = kitti_rect_to_velo(calib)
    centre_velo = (np.c_[centre_cam, np.ones(len(h))] @ rect_to_velo.T)[:, :3]
    # rotation_y turns about camera y (down) from camera x (right); the Velodyne's x looks forward,
    # i.e. along camera z, so yaw_velo = -rotation_y - pi/2 (up to the small calibration rotation).
    yaw = _wrap(-rotation_y - np.pi / 2)
    return Boxes(centre_velo, np.stack([l, w, h], 1), yaw, labels, ids=line_ids, frame_id="lidar")


# --------------------------------------------------------------------------------------------
# nuScenes (mmdetection3d info json converted for the shared data)
# --------------------------------------------------------------------------------------------

def load_nuscenes_info(path: str | Path, keep: set[str] | None = None, sample: int = 0) -> Boxes:
    """Ground truth of one sample of an mmdetection3d-style nuScenes info json -> Boxes, lidar frame.

    ``instances[*].bbox_3d`` is [x, y, z, l, w, h, yaw] in the LIDAR_TOP frame with z the box centre;
    ``bbox_label_3d`` indexes ``metainfo.categories``; -1 marks a category outside the ten detection
    classes, which is dropped. ``keep`` restricts to these category names. ``ids`` hold the instance
    index; ``velocity`` is copied.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    try:
        info = json.loads(path.read_text())
        categories = {int(v): k for k, v in info["metainfo"]["categories"].items()}
        instances = info["data_list"][sample]["instances"]
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError("not valid JSON", path) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise DataError("not an mmdetection3d nuScenes info file (needs metainfo.categories and "
                        "data_list[].instances)", path) from None
    rows, labels, velocities, ids = [], [], [], []
    for k, inst in enumerate(instances):
        name = categories.get(int(inst.get("bbox_label_3d", -1)))
        if name is None or (keep is not None and name not in keep):
            continue
        box = inst.get("bbox_3d")
        if box is None or len(box) < 7:
            raise DataError(f"instance {k}: bbox_3d needs 7 numbers", path)
        rows.append([float(v) for v in box[:7]])
        labels.append(int(NUSCENES_CLASSES.get(name, ObjectClass.UNKNOWN)))
        vel = inst.get("velocity") or [0.0, 0.0]
        velocities.append([float(v) if v is not None and np.isfinite(v) else 0.0 for v in vel[:2]])
        ids.append(k)
    if not rows:
        return Boxes(frame_id="lidar")
    table = np.asarray(rows)
    if not np.isfinite(table).all():
        raise DataError("a bbox_3d holds a non-finite number", path)
    return Boxes(table[:, :3], table[:, 3:6], _wrap(table[:, 6]), labels, velocity=velocities, ids=ids,
                 frame_id="lidar")


# --------------------------------------------------------------------------------------------
# Boxes as JSON (what `adstack detect` writes; also accepted as ground truth by the evaluator)
# --------------------------------------------------------------------------------------------

def boxes_to_json(boxes: Boxes) -> dict:
    return {
        "frame_id": boxes.frame_id,
        "stamp": float(boxes.stamp),
        "boxes": [
            {"center": [round(float(v), 4) for v in boxes.center[k]],
             "size": [round(float(v), 4) for v in boxes.size[k]],
             "yaw": round(float(boxes.yaw[k]), 5),
             "label": ObjectClass(int(boxes.label[k])).name,
             "score": round(float(boxes.score[k]), 5),
             "velocity": [round(float(v), 4) for v in boxes.velocity[k]],
             "id": int(boxes.ids[k])}
            for k in range(len(boxes))
        ],
    }


def boxes_from_json(data: dict, source: str | Path = "boxes") -> Boxes:
    try:
        items = data["boxes"]
        if not items:
            return Boxes(frame_id=data.get("frame_id", "lidar"), stamp=float(data.get("stamp", 0.0)))
        return Boxes(
            center=[b["center"] for b in items], size=[b["size"] for b in items], yaw=[b["yaw"] for b in items],
            label=[int(ObjectClass[b["label"]]) if isinstance(b["label"], str) else int(b["label"]) for b in items],
            score=[b.get("score", 1.0) for b in items], velocity=[b.get("velocity", [0.0, 0.0]) for b in items],
            ids=[b.get("id", -1) for b in items], frame_id=data.get("frame_id", "lidar"),
            stamp=float(data.get("stamp", 0.0)))
    except (KeyError, TypeError, ValueError):
        raise DataError("not a boxes JSON (needs boxes[] with center, size, yaw, label)", source) from None


def load_boxes_json(path: str | Path) -> Boxes:
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError("not valid JSON", path) from None
    return boxes_from_json(data, path)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------
# Labelled frames in a folder (for evaluation)
# --------------------------------------------------------------------------------------------

@dataclass
class LabelledFrame:
    """One scan and its ground truth; ``source`` tells which layout it came from."""

    name: str
    scan_path: Path
    scan_format: str
    label_path: Path
    calib_path: Path | None
    source: str  # "kitti", "nuscenes" or "boxes-json"

    def in_labelled_region(self, boxes: Boxes) -> np.ndarray:
        """Which boxes lie where this frame's labels could exist. KITTI labels only objects seen by
        the left colour camera, so there it is the camera's horizontal field of view (as KITTI's own
        benchmark, which scores detections in the image); elsewhere the whole scan."""
        if self.source != "kitti" or len(boxes) == 0:
            return np.ones(len(boxes), dtype=bool)
        calib = load_kitti_calib(self.calib_path)
        if "P2" not in calib or calib["P2"].size != 12:
            raise DataError("calibration needs P2 (12 numbers) to tell the camera's view", self.calib_path)
        velo_to_rect = np.linalg.inv(kitti_rect_to_velo(calib))
        rect = np.c_[boxes.center, np.ones(len(boxes))] @ velo_to_rect.T
        uvw = rect @ calib["P2"].reshape(3, 4).T
        depth = uvw[:, 2]
        u = uvw[:, 0] / np.where(np.abs(depth) > 1e-6, depth, 1e-6)
        width = _png_width(self.scan_path.parent.parent / "image_2" / f"{self.scan_path.stem}.png") or 1242
        return (depth > 0.5) & (u >= 0) & (u < width)

    def load_ground_truth(self, keep: set[str] | None = None) -> Boxes:
        if self.source == "kitti":
            return load_kitti_labels(self.label_path, self.calib_path, keep=keep)
        if self.source == "nuscenes":
            return load_nuscenes_info(self.label_path, keep=keep)
        return load_boxes_json(self.label_path)


def _png_width(path: Path) -> int | None:
    """Image width from a PNG's IHDR chunk (bytes 16-20), without an imaging library."""
    try:
        head = path.read_bytes()[:24]
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big")


def find_labelled_frames(data_dir: str | Path) -> list[LabelledFrame]:
    """Every labelled scan under ``data_dir`` (searched recursively), sorted by path:

    - KITTI object layout: a folder with ``velodyne/*.bin``, ``label_2/*.txt`` and ``calib/*.txt``;
    - nuScenes: ``NAME.pcd.bin`` beside ``NAME_info.json`` (mmdetection3d info, lidar-frame boxes);
    - adstack: ``NAME.bin`` / ``NAME.pcd.bin`` / ``NAME.pcd`` beside ``NAME.boxes.json`` (the
      boxes JSON that ``adstack detect`` writes, used as ground truth).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError("data folder not found", data_dir)
    frames: list[LabelledFrame] = []
    for folder in sorted([data_dir, *[p for p in data_dir.rglob("*") if p.is_dir()]]):
        velodyne, labels, calib = folder / "velodyne", folder / "label_2", folder / "calib"
        if velodyne.is_dir() and labels.is_dir() and calib.is_dir():
            for scan in sorted(velodyne.glob("*.bin")):
                label, cal = labels / f"{scan.stem}.txt", calib / f"{scan.stem}.txt"
                if label.is_file() and cal.is_file():
                    frames.append(LabelledFrame(f"kitti/{scan.stem}", scan, "kitti", label, cal, "kitti"))
        for scan in sorted(folder.iterdir()):
            if not scan.is_file():
                continue
            name = scan.name
            stem = next((name[: -len(s)] for s in (".pcd.bin", ".bin", ".pcd") if name.endswith(s)), None)
            if stem is None or folder.name == "velodyne":
                continue
            info, boxes_json = folder / f"{stem}_info.json", folder / f"{stem}.boxes.json"
            if name.endswith(".pcd.bin") and info.is_file():
                frames.append(LabelledFrame(f"nuscenes/{stem}", scan, "nuscenes", info, None, "nuscenes"))
            elif boxes_json.is_file():
                frames.append(LabelledFrame(stem, scan, detect_format(scan), boxes_json, None, "boxes-json"))
    if not frames:
        raise UserError("no labelled scans found (KITTI velodyne/label_2/calib, nuScenes NAME.pcd.bin + "
                        "NAME_info.json, or NAME.bin|.pcd + NAME.boxes.json)", data_dir)
    return frames


def load_labels(path: str | Path, calib: str | Path | None = None) -> Boxes:
    """Ground truth from a KITTI label (.txt, calibration given or found in ../calib/), an
    mmdetection3d nuScenes info json, or a boxes JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError("label file not found", path)
    if path.suffix == ".txt":
        calib = Path(calib) if calib else path.parent.parent / "calib" / path.name
        return load_kitti_labels(path, calib)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError("not valid JSON", path) from None
        if isinstance(data, dict) and "data_list" in data:
            return load_nuscenes_info(path)
        return boxes_from_json(data, path)
    raise UserError("labels must be a KITTI .txt, a nuScenes info .json or a boxes .json", path)
