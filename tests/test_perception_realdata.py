"""The classical detector on the real KITTI frames and nuScenes sweep; the detect and eval commands."""

import argparse
import json

import numpy as np
import pytest

from adstack.errors import UserError
from adstack.paths import shared_data_dir
from adstack.types import ObjectClass
from perception import detect_cli, eval_cli
from perception.realdata import main as realdata_main
from perception.realdata import run_realdata

LIDAR = shared_data_dir() / "lidar"
pytestmark = pytest.mark.skipif(not (LIDAR / "kitti").is_dir(), reason="shared reference data not present")


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_realdata_classical(tmp_path):
    summary = run_realdata("classical", tmp_path)
    assert [f["frame"] for f in summary["frames"]] == [
        "kitti/000000", "kitti/000001", "kitti/000002", "nuscenes/LIDAR_TOP_1532402927647951"]
    # Labelled cars within 40 m: KITTI 000002 has one (34.8 m), the nuScenes sweep three.
    assert summary["cars_in_range"] == 4
    for frame in summary["frames"]:
        assert frame["plausibility_problems"] == [], frame
        assert 0 < frame["n_boxes"] < 200          # something found, not a box per bush
        assert (tmp_path / frame["bev"].split("/")[-1]).stat().st_size > 10_000
    assert 0.0 <= summary["recall_vehicle"] <= 1.0
    saved = json.loads((tmp_path / "realdata.json").read_text())
    assert saved["cars_in_range"] == 4


def test_realdata_script_prints_recall(tmp_path, capsys):
    assert realdata_main(["--model", "classical", "--out", str(tmp_path), "--max-range", "30"]) == 0
    assert "recall of cars within 30 m" in capsys.readouterr().out


def test_detect_cli_kitti_with_labels(tmp_path):
    scan = LIDAR / "kitti/training/velodyne/000002.bin"
    args = parse(detect_cli, [str(scan), "--model", "classical", "--out", str(tmp_path),
                              "--labels", str(LIDAR / "kitti/training/label_2/000002.txt")])
    assert detect_cli.run(args) == 0
    record = json.loads((tmp_path / "boxes.json").read_text())
    assert record["n_points"] == 126891 and record["boxes"]
    for box in record["boxes"]:
        assert all(np.isfinite(box["center"])) and all(0 < v < 20 for v in box["size"])
        assert box["label"] in ObjectClass.__members__
    assert (tmp_path / "bev.png").stat().st_size > 10_000


def test_detect_cli_nuscenes_and_errors(tmp_path):
    scan = LIDAR / "nuscenes/LIDAR_TOP_1532402927647951.pcd.bin"
    assert detect_cli.run(parse(detect_cli, [str(scan), "--out", str(tmp_path)])) == 0
    with pytest.raises(UserError, match="looks like a nuScenes scan"):
        detect_cli.run(parse(detect_cli, [str(scan), "--format", "kitti", "--out", str(tmp_path)]))
    with pytest.raises(UserError, match="model folder"):
        detect_cli.run(parse(detect_cli, [str(scan), "--model", str(tmp_path / "none"), "--out", str(tmp_path)]))


def test_eval_cli_on_shared_data(tmp_path, capsys):
    args = parse(eval_cli, ["--model", "classical", "--data", str(LIDAR), "--out", str(tmp_path)])
    assert eval_cli.run(args) == 0
    table = capsys.readouterr().out
    assert "vehicle" in table and "NDS-like" in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_frames"] == 4
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert metrics["classes"]["VEHICLE"]["n_gt"] > 0


def test_detect_cli_on_pcd_matches_bin(tmp_path):
    from perception.io import load_scan, write_pcd
    scan = LIDAR / "kitti/training/velodyne/000002.bin"
    pcd = tmp_path / "000002.pcd"
    write_pcd(pcd, load_scan(scan))
    assert detect_cli.run(parse(detect_cli, [str(pcd), "--out", str(tmp_path / "a")])) == 0
    assert detect_cli.run(parse(detect_cli, [str(scan), "--out", str(tmp_path / "b")])) == 0
    a = json.loads((tmp_path / "a" / "boxes.json").read_text())["boxes"]
    b = json.loads((tmp_path / "b" / "boxes.json").read_text())["boxes"]
    assert a == b   # same points, same boxes, whatever the file format
    with pytest.raises(UserError, match="file not found"):
        detect_cli.run(parse(detect_cli, [str(tmp_path / "missing.bin"), "--out", str(tmp_path)]))


def test_eval_cli_on_a_collected_dataset(tmp_path, capsys):
    # A dataset in the collector's layout, with a real KITTI scan and its labels as the one frame.
    from perception.dataset import Frame, write_manifest, write_shard
    from perception.io import load_kitti_labels, load_scan
    points = load_scan(LIDAR / "kitti/training/velodyne/000002.bin")
    boxes = load_kitti_labels(LIDAR / "kitti/training/label_2/000002.txt", LIDAR / "kitti/training/calib/000002.txt")
    data = tmp_path / "data"
    data.mkdir()
    write_shard(data / "Town04-seed0000.npz", [Frame(points, boxes)], "Town04", 0)
    write_manifest(data, {"train": [], "val": ["Town04"]})
    # The lead's `adstack eval detector` passes only model, data, split and out.
    args = argparse.Namespace(model="classical", data=str(data), split="val", out=str(tmp_path / "out"))
    assert eval_cli.run_detector_eval(args) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["frames"] == ["val/000000"]
    assert metrics["classes"]["VEHICLE"]["n_gt"] == 1   # the car at 34.8 m (the other label is Misc)


def test_detect_and_realdata_with_a_model_folder(tmp_path):
    # The learned detector's model-folder path, with a tiny untrained network: the plumbing, not skill.
    torch = pytest.importorskip("torch")
    from perception.detector.config import config_from_dict
    from perception.detector.model import save_model
    from perception.detector.network import PillarCenterNet
    config = config_from_dict({
        "voxel": {"point_cloud_range": [-25.6, -25.6, -3.0, 25.6, 25.6, 3.0], "voxel_size": [0.4, 0.4, 6.0],
                  "max_points_per_voxel": 16, "max_voxels": 8000},
        "pillar_channels": 16, "head": {"shared_channels": 16},
        "backbone": {"layer_nums": [1, 1, 1], "layer_strides": [2, 2, 2], "num_filters": [16, 32, 32],
                     "upsample_strides": [1, 2, 4], "num_upsample_filters": [16, 16, 16]},
        "decode": {"score_threshold": 0.0}})
    torch.manual_seed(0)
    save_model(tmp_path / "model", PillarCenterNet(config), config)
    scan = LIDAR / "nuscenes/LIDAR_TOP_1532402927647951.pcd.bin"
    args = parse(detect_cli, [str(scan), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")])
    assert detect_cli.run(args) == 0
    record = json.loads((tmp_path / "out" / "boxes.json").read_text())
    assert record["boxes"] and all(np.isfinite(b["center"]).all() for b in record["boxes"])
