"""Scan and label readers: formats, corrupt input, KITTI camera -> Velodyne conversion."""

import json
import math

import numpy as np
import pytest

from adstack.errors import UserError
from adstack.types import ObjectClass
from perception.io import (boxes_from_json, boxes_to_json, detect_format, find_labelled_frames,
                           load_kitti_labels, load_labels, load_nuscenes_info, load_scan, write_pcd)

RNG = np.random.default_rng(0)
POINTS = RNG.normal(size=(100, 4)).astype(np.float32)


def test_kitti_bin(tmp_path):
    path = tmp_path / "000.bin"
    POINTS.tofile(path)
    np.testing.assert_array_equal(load_scan(path), POINTS)


def test_nuscenes_bin_drops_ring(tmp_path):
    path = tmp_path / "sweep.pcd.bin"
    table = np.c_[POINTS, np.arange(100, dtype=np.float32)]
    table.tofile(path)
    assert detect_format(path) == "nuscenes"
    np.testing.assert_array_equal(load_scan(path), POINTS)


@pytest.mark.parametrize("binary", [True, False])
def test_pcd_written_here(tmp_path, binary):
    path = tmp_path / "scan.pcd"
    write_pcd(path, POINTS, binary=binary)
    np.testing.assert_allclose(load_scan(path), POINTS, atol=1e-5)


def test_pcd_with_other_layout_and_nan(tmp_path):
    # Fields in another order, an extra double field, a ring as uint16, an organised cloud with NaN.
    path = tmp_path / "odd.pcd"
    rows = np.zeros(3, dtype=[("intensity", "<f4"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("t", "<f8"), ("ring", "<u2")])
    rows["x"], rows["y"], rows["z"], rows["intensity"] = [1, 2, np.nan], [3, 4, 5], [5, 6, 7], [9, 8, 7]
    header = ("VERSION .7\nFIELDS intensity x y z t ring\nSIZE 4 4 4 4 8 2\nTYPE F F F F F U\nCOUNT 1 1 1 1 1 1\n"
              "WIDTH 3\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\nDATA binary\n")
    path.write_bytes(header.encode() + rows.tobytes())
    np.testing.assert_allclose(load_scan(path), [[1, 3, 5, 9], [2, 4, 6, 8]])


@pytest.mark.parametrize("name,content,message", [
    ("short.bin", b"\x00" * 18, "not a multiple of 16"),
    ("empty.bin", b"", "empty"),
    ("nan.bin", np.full(8, np.nan, np.float32).tobytes(), "no valid points"),
    ("cut.pcd", b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 10\nDATA binary\n" + b"\x00" * 12, "truncated"),
    ("ascii.pcd", b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 2\nDATA ascii\n1 2 3\n4 5 x\n", "not a number"),
    ("lzf.pcd", b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA binary_compressed\n", "not supported"),
    ("noxyz.pcd", b"FIELDS a b c\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA ascii\n1 2 3\n", "no 'x' field"),
    ("scan.las", b"abc", "cannot tell the scan format"),
])
def test_bad_scans_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_scan(path)
    assert name in str(err.value) and message in str(err.value)


def test_missing_scan_and_hint(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_scan(tmp_path / "nope.bin")
    path = tmp_path / "five.bin"  # 5 floats per point saved as .bin: 20 bytes
    np.zeros(5, np.float32).tofile(path)
    with pytest.raises(UserError, match="--format nuscenes"):
        load_scan(path)
    np.testing.assert_array_equal(load_scan(path, "nuscenes"), np.zeros((1, 4)))


def test_nuscenes_scan_named_bin_is_caught(tmp_path):
    # 20 points x 5 floats = 400 bytes, a multiple of 16 too: the ring column gives it away.
    table = np.c_[RNG.normal(size=(20, 4)), np.arange(20) % 32].astype(np.float32)
    path = tmp_path / "sweep.bin"
    table.tofile(path)
    with pytest.raises(UserError, match="looks like a nuScenes scan"):
        load_scan(path)
    np.testing.assert_array_equal(load_scan(path, "nuscenes"), table[:, :4])


CALIB_IDENTITY_AXES = (
    # Velodyne (x fwd, y left, z up) -> camera (x right, y down, z fwd), no offset, R0 = identity.
    "R0_rect: 1 0 0 0 1 0 0 0 1\n"
    "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n"
)


def test_kitti_label_to_velodyne_by_hand(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_IDENTITY_AXES)
    label = tmp_path / "label.txt"
    # Car: h 1.5 w 1.8 l 4.0, bottom centre at camera (2, 1.7, 20), rotation_y 0 (facing camera +x, the
    # Velodyne's -y). DontCare is skipped.
    label.write_text("Car 0 0 0 0 0 0 0 1.5 1.8 4.0 2 1.7 20 0\n"
                     "DontCare -1 -1 -10 0 0 0 0 -1 -1 -1 -1000 -1000 -1000 -10\n"
                     "Pedestrian 0 0 0 0 0 0 0 1.8 0.5 0.6 -1 1.7 8 1.5707963\n")
    boxes = load_kitti_labels(label, calib)
    assert len(boxes) == 2
    # Centre in camera: (2, 1.7 - 0.75, 20) -> Velodyne (20, -2, -0.95).
    np.testing.assert_allclose(boxes.center[0], [20, -2, -0.95], atol=1e-9)
    np.testing.assert_allclose(boxes.size[0], [4.0, 1.8, 1.5])
    assert boxes.yaw[0] == pytest.approx(-math.pi / 2)
    assert boxes.yaw[1] == pytest.approx(-math.pi, abs=1e-6) or boxes.yaw[1] == pytest.approx(math.pi, abs=1e-6)
    assert list(boxes.label) == [ObjectClass.VEHICLE, ObjectClass.PEDESTRIAN]
    assert len(load_kitti_labels(label, calib, keep={"Car"})) == 1


def test_bad_labels(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("R0_rect: 1 0 0\n")
    label = tmp_path / "label.txt"
    label.write_text("Car 0 0 0 0 0 0 0 1.5 1.8 4.0 2 1.7 20 0\n")
    with pytest.raises(UserError, match="calib.txt.*R0_rect"):
        load_kitti_labels(label, calib)
    calib.write_text(CALIB_IDENTITY_AXES)
    label.write_text("Car 0 0 0 0 0 0 0 1.5 1.8\n")
    with pytest.raises(UserError, match="label.txt: line 1"):
        load_kitti_labels(label, calib)
    info = tmp_path / "x_info.json"
    info.write_text("{\"a\": 1}")
    with pytest.raises(UserError, match="x_info.json.*info file"):
        load_nuscenes_info(info)


def test_nuscenes_info(tmp_path):
    info = {"metainfo": {"categories": {"car": 0, "pedestrian": 7}},
            "data_list": [{"instances": [
                {"bbox_label_3d": 0, "bbox_3d": [1, 2, 3, 4, 2, 1.5, 0.5], "velocity": [1, 0]},
                {"bbox_label_3d": 7, "bbox_3d": [5, 6, 7, 0.6, 0.6, 1.8, -0.5]},
                {"bbox_label_3d": -1, "bbox_3d": [0, 0, 0, 1, 1, 1, 0]}]}]}
    path = tmp_path / "s_info.json"
    path.write_text(json.dumps(info))
    boxes = load_nuscenes_info(path)
    assert list(boxes.label) == [ObjectClass.VEHICLE, ObjectClass.PEDESTRIAN]
    np.testing.assert_allclose(boxes.center[0], [1, 2, 3])
    np.testing.assert_allclose(boxes.velocity[0], [1, 0])
    assert len(load_nuscenes_info(path, keep={"car"})) == 1
    assert len(load_labels(path)) == 2


def test_boxes_json_round_trip_and_frame_discovery(tmp_path):
    info = {"metainfo": {"categories": {"car": 0}}, "data_list": [{"instances": [
        {"bbox_label_3d": 0, "bbox_3d": [1, 2, 3, 4, 2, 1.5, 0.5]}]}]}
    (tmp_path / "s_info.json").write_text(json.dumps(info))
    np.ones((3, 5), np.float32).tofile(tmp_path / "s.pcd.bin")
    boxes = load_nuscenes_info(tmp_path / "s_info.json")
    again = boxes_from_json(json.loads(json.dumps(boxes_to_json(boxes))))
    np.testing.assert_allclose(again.center, boxes.center)
    assert list(again.label) == list(boxes.label)
    (tmp_path / "b").mkdir()
    write_pcd(tmp_path / "b" / "f1.pcd", POINTS)
    (tmp_path / "b" / "f1.boxes.json").write_text(json.dumps(boxes_to_json(boxes)))
    frames = find_labelled_frames(tmp_path)
    assert sorted(f.source for f in frames) == ["boxes-json", "nuscenes"]
    assert all(len(f.load_ground_truth()) == 1 for f in frames)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no labelled scans"):
        find_labelled_frames(tmp_path / "empty")
