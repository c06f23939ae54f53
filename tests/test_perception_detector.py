"""Learned lidar detector: dataset shards, targets and decoding, the network, loading and export.

Scenes come from ``synthetic_scene`` below (test code only): cars, pedestrians and cyclists as boxes
standing on a ground plane, with points sampled on their surfaces. Training end to end is in
test_perception_detector_train.py.
"""

from __future__ import annotations

import os

# Passive OpenMP waiting, set before torch loads: with spinning threads a busy shared machine made
# the training test 10x slower (see perception/detector/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import numpy as np
import pytest
import torch

from adstack.errors import DataError, UserError
from adstack.types import Boxes, ObjectClass
from perception.dataset import (Frame, ShardDataset, ShardOrderSampler, augment_frame, count_points_in_boxes,
                                read_shard, write_manifest, write_shard)
from perception.detector.config import DetectorConfig, config_from_dict, load_detector_config, DEFAULT_PARAM_FILE
from perception.detector.decode import decode, to_boxes
from perception.detector.model import LidarDetector, load_model, save_model
from perception.detector.network import PillarCenterNet
from perception.detector.targets import build_targets, focal_loss

GROUND_Z = -1.8
SIZES = {ObjectClass.VEHICLE: (4.5, 1.9, 1.6), ObjectClass.PEDESTRIAN: (0.7, 0.7, 1.75), ObjectClass.CYCLIST: (1.8, 0.7, 1.7)}


def synthetic_scene(rng: np.random.Generator, n_vehicles=6, n_pedestrians=6, n_cyclists=2, extent=22.0,
                    ground_points=8000, density=60.0, sensor_side_only=False) -> Frame:
    """Boxes on a ground plane, non-overlapping, with points on their sides and tops (sensor frame).

    ``sensor_side_only`` keeps only points no farther from the sensor than the box centre, roughly
    what a lidar sees of a box (the simulator's data look like that)."""
    labels = [ObjectClass.VEHICLE] * n_vehicles + [ObjectClass.PEDESTRIAN] * n_pedestrians + [ObjectClass.CYCLIST] * n_cyclists
    centers, sizes, yaws = [], [], []
    for label in labels:
        for _ in range(100):
            xy = rng.uniform(-extent, extent, 2)
            if np.hypot(*xy) > 3.0 and all(np.hypot(*(xy - c[:2])) > 5.0 for c in centers):
                break
        size = np.array(SIZES[label]) * rng.uniform(0.9, 1.1)
        centers.append(np.array([xy[0], xy[1], GROUND_Z + size[2] / 2]))
        sizes.append(size)
        yaws.append(rng.uniform(-np.pi, np.pi))
    boxes = Boxes(np.array(centers).reshape(-1, 3), np.array(sizes).reshape(-1, 3), np.array(yaws), np.array(labels, np.int32),
                  ids=np.arange(len(labels)), frame_id="lidar")
    parts = [np.column_stack([rng.uniform(-extent - 5, extent + 5, (ground_points, 2)),
                              GROUND_Z - 0.01 - np.abs(rng.normal(0, 0.02, ground_points)),  # just under the boxes
                              np.full(ground_points, 0.1)])]
    for c, s, yaw in zip(boxes.center, boxes.size, boxes.yaw):
        n = int(density * (s[0] * s[2] + s[1] * s[2] + s[0] * s[1]))
        local = rng.uniform(-0.5, 0.5, (n, 3)) * s
        face = rng.integers(0, 3, n)  # push one coordinate to a face: x side, y side or top
        local[face == 0, 0] = np.sign(local[face == 0, 0]) * s[0] / 2
        local[face == 1, 1] = np.sign(local[face == 1, 1]) * s[1] / 2
        local[face == 2, 2] = s[2] / 2
        local *= 0.999  # keep sampled points strictly inside the box
        cos, sin = np.cos(yaw), np.sin(yaw)
        world = np.column_stack([c[0] + cos * local[:, 0] - sin * local[:, 1], c[1] + sin * local[:, 0] + cos * local[:, 1],
                                 c[2] + local[:, 2], np.full(n, 0.5)])
        if sensor_side_only:
            world = world[np.hypot(world[:, 0], world[:, 1]) <= np.hypot(c[0], c[1])]
        parts.append(world)
    points = np.concatenate(parts).astype(np.float32)
    return Frame(points[rng.permutation(len(points))], boxes, np.array([1.0, 2.0, 0.0, 0.3]), stamp=0.0)


def small_config(**overrides) -> DetectorConfig:
    """A grid and network small enough to train in a test: 128 x 128 pillars of 0.4 m."""
    data = {"voxel": {"point_cloud_range": [-25.6, -25.6, -3.0, 25.6, 25.6, 3.0], "voxel_size": [0.4, 0.4, 6.0],
                      "max_points_per_voxel": 16, "max_voxels": 8000},
            "pillar_channels": 16,
            "backbone": {"layer_nums": [1, 1, 1], "layer_strides": [2, 2, 2], "num_filters": [16, 32, 32],
                         "upsample_strides": [1, 2, 4], "num_upsample_filters": [16, 16, 16]},
            "head": {"shared_channels": 16},
            "torch_threads": 1}  # one thread: no waiting on a descheduled second thread on a busy machine
    for key, value in overrides.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return config_from_dict(data)


def write_dataset(root, n_frames=4, seed=0, maps=("MapA", "MapB"), val_maps=("MapB",)):
    rng = np.random.default_rng(seed)
    for k, map_name in enumerate(maps):
        write_shard(root / f"{map_name}.npz", [synthetic_scene(rng) for _ in range(n_frames)], map_name, seed + k)
    write_manifest(root, {"train": [m for m in maps if m not in val_maps], "val": list(val_maps)}, config={"source": "test"})
    return root


# --- dataset -----------------------------------------------------------------------------------------------------

def test_shard_round_trip_keeps_every_array(tmp_path):
    rng = np.random.default_rng(1)
    frames = [synthetic_scene(rng), synthetic_scene(rng, n_vehicles=2)]
    frames[0].point_labels = np.ones(len(frames[0].points), np.int8)
    frames[1].point_labels = np.zeros(len(frames[1].points), np.int8)
    entry = write_shard(tmp_path / "a.npz", frames, "Town01", 7)
    assert entry == {"file": "a.npz", "map": "Town01", "seed": 7, "frames": 2, "points": sum(len(f.points) for f in frames)}
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # the temporary file was renamed away
    back = read_shard(tmp_path / "a.npz")
    for f, g in zip(frames, back):
        np.testing.assert_array_equal(f.points, g.points)
        np.testing.assert_allclose(f.boxes.center, g.boxes.center, atol=1e-5)
        np.testing.assert_array_equal(f.boxes.label, g.boxes.label)
        np.testing.assert_array_equal(f.boxes.ids, g.boxes.ids)
        np.testing.assert_array_equal(f.point_labels, g.point_labels)
        np.testing.assert_allclose(f.ego_pose, g.ego_pose)
        # Every surface point (intensity 0.5) lies in its box; ground points (0.1) lie just under them.
        assert g.box_num_points.sum() == np.count_nonzero(f.points[:, 3] == 0.5)


def test_count_points_in_boxes_respects_yaw():
    boxes = Boxes([[0, 0, 0]], [[4, 1, 2]], [np.pi / 2], [1])
    points = np.array([[0, 1.9, 0, 0], [1.9, 0, 0, 0], [0, -1.9, 0.9, 0], [0, 0, 1.1, 0]], np.float32)
    assert count_points_in_boxes(points, boxes).tolist() == [2]


def test_shard_dataset_splits_by_map_and_reads_shard_by_shard(tmp_path):
    write_dataset(tmp_path, n_frames=3, maps=("A", "B", "C"), val_maps=("C",))
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["splits"] == {"train": ["A", "B"], "val": ["C"]} and len(manifest["shards"]) == 3
    train, val = ShardDataset(tmp_path, "train"), ShardDataset(tmp_path, "val")
    assert (len(train), len(val), len(ShardDataset(tmp_path, "all"))) == (6, 3, 9)
    order = list(ShardOrderSampler(train, shuffle=True, seed=3))
    assert sorted(order) == list(range(6))
    shard_of = [train.index[i][0] for i in order]
    assert shard_of in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])  # one shard at a time
    assert isinstance(train[0], Frame) and len(train[0].points) > 1000
    with pytest.raises(UserError, match="no split 'test'"):
        ShardDataset(tmp_path, "test")


def test_bad_dataset_inputs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no dataset.json"):
        ShardDataset(tmp_path, "train")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="x.npz"):
        read_shard(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", points=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="missing arrays"):
        read_shard(tmp_path / "y.npz")


def test_augmentation_moves_points_and_boxes_together():
    rng = np.random.default_rng(2)
    frame = synthetic_scene(rng)
    before = count_points_in_boxes(frame.points, frame.boxes)
    for seed in range(4):
        out = augment_frame(frame, np.random.default_rng(seed), flip=True, rotation=np.pi / 4, scale=(0.9, 1.1))
        np.testing.assert_array_equal(count_points_in_boxes(out.points, out.boxes), before)
        assert not np.allclose(out.points, frame.points)
        assert np.all(np.abs(out.boxes.yaw) <= np.pi)


# --- targets, decoding, network -------------------------------------------------------------------------------------

def test_targets_decode_back_to_the_boxes():
    config = small_config()
    frame = synthetic_scene(np.random.default_rng(3))
    targets = build_targets(frame.boxes, config, count_points_in_boxes(frame.points, frame.boxes))
    n = int(targets["mask"].sum())
    assert n == len(frame.boxes)
    assert np.isclose(targets["heatmap"].max(), 1.0) and np.count_nonzero(targets["heatmap"] == 1.0) == n
    # Turn the targets into "perfect" head outputs and decode them.
    heat = torch.from_numpy(targets["heatmap"]).clamp(1e-4, 1 - 1e-4)
    logits = torch.log(heat / (1 - heat))[None]
    box_map = torch.zeros((1, 8) + heat.shape[1:])
    flat = box_map.view(1, 8, -1)
    flat[0, :, torch.from_numpy(targets["indices"][:n])] = torch.from_numpy(targets["box"][:n]).t()
    decoded = to_boxes(decode(logits, box_map, config)[0], config)
    assert len(decoded) == n
    for i in range(n):
        j = np.argmin(np.linalg.norm(decoded.center - frame.boxes.center[i], axis=1))
        np.testing.assert_allclose(decoded.center[j], frame.boxes.center[i], atol=1e-4)
        np.testing.assert_allclose(decoded.size[j], frame.boxes.size[i], rtol=1e-4)
        assert abs(np.angle(np.exp(1j * (decoded.yaw[j] - frame.boxes.yaw[i])))) < 1e-4
        assert decoded.label[j] == frame.boxes.label[i]


def test_decode_drops_boxes_larger_than_any_road_user():
    """A runaway size regression (seen on a real 32-beam scan) gives no box; plausible sizes pass."""
    config = small_config()
    n_classes = len(config.classes)
    h, w = 16, 16
    logits = torch.full((1, n_classes, h, w), -10.0)
    box_map = torch.zeros((1, 8, h, w))
    box_map[0, 7] = 1.0  # cos(yaw) = 1
    sizes = {(3, 3): (4.5, 1.9, 1.6), (3, 10): (25.0, 2.5, 3.0), (10, 3): (12.0, 2.5, 6.0), (10, 10): (18.0, 2.6, 3.9)}
    for (row, col), size in sizes.items():
        logits[0, 0, row, col] = 5.0
        box_map[0, 3:6, row, col] = torch.log(torch.tensor(size))
    decoded = to_boxes(decode(logits, box_map, config)[0], config)
    kept = sorted(tuple(np.round(s, 3)) for s in decoded.size.tolist())
    assert kept == [(4.5, 1.9, 1.6), (18.0, 2.6, 3.9)]


def test_targets_skip_invisible_out_of_range_and_other_classes():
    config = small_config()
    boxes = Boxes([[5, 0, -1], [40, 0, -1], [0, 5, -1], [0, -5, -1]], [[4, 2, 1.5]] * 4, [0, 0, 0, 0],
                  [int(ObjectClass.VEHICLE), int(ObjectClass.VEHICLE), int(ObjectClass.STATIC), int(ObjectClass.VEHICLE)])
    targets = build_targets(boxes, config, np.array([10, 10, 10, 0]), min_points=1)
    assert targets["mask"].sum() == 1  # only the first: in range, a vehicle, with points


def test_focal_loss_prefers_the_right_heatmap():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    good = torch.full_like(target, -6.0)
    good[0, 0, 3, 4] = 6.0
    bad = torch.full_like(target, 0.0)
    assert focal_loss(good, target) < 0.01 < focal_loss(bad, target)


def test_network_shapes_and_empty_cloud():
    config = small_config()
    detector = LidarDetector(config, device="cpu")
    heat, box = detector.raw_outputs([synthetic_scene(np.random.default_rng(4)).points] * 2)
    assert heat.shape == (2, 3, 64, 64) and box.shape == (2, 8, 64, 64)
    empty = detector.detect(np.zeros((0, 4), np.float32))
    assert len(empty) <= config.decode.max_detections
    with pytest.raises(UserError, match=r"\(N, 4\)"):
        detector.detect(np.zeros((10, 3), np.float32))


def test_config_validation_names_the_problem(tmp_path):
    assert load_detector_config(DEFAULT_PARAM_FILE).version_hash() == DetectorConfig().version_hash()
    gpu = load_detector_config(DEFAULT_PARAM_FILE.with_name("detector_gpu.param.yaml"))
    assert gpu.voxel.grid_size == (512, 512, 1) and gpu.out_stride == 2
    with pytest.raises(DataError, match="unknown class"):
        config_from_dict({"classes": ["vehicle", "truckk"]})
    with pytest.raises(DataError, match="unknown parameter"):
        config_from_dict({"voxel": {"voxel_sise": [1, 1, 1]}})
    with pytest.raises(DataError, match="pillars need one voxel"):
        config_from_dict({"voxel": {"voxel_size": [0.4, 0.4, 0.5]}})
    bad = tmp_path / "bad.param.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    pillar_channels: many\n")
    with pytest.raises(DataError, match="bad.param.yaml"):
        load_detector_config(bad)


# --- model directory, loading, export -------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_boxes(tmp_path):
    config = small_config(decode={"score_threshold": 0.0})
    torch.manual_seed(0)
    network = PillarCenterNet(config).eval()
    save_model(tmp_path, network, config)
    points = synthetic_scene(np.random.default_rng(5)).points
    a = LidarDetector(config, network, device="cpu").detect(points)
    b = LidarDetector.from_dir(tmp_path, device="cpu").detect(points)
    np.testing.assert_array_equal(a.center, b.center)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.frame_id == "lidar" and len(a) == config.decode.max_detections


def test_loading_refuses_mismatched_weights(tmp_path):
    config = small_config()
    save_model(tmp_path, PillarCenterNet(config), config)
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("pillar_channels: 16", "pillar_channels: 24"))
    with pytest.raises(DataError, match=r"does not match the weights.*pillar_channels: weights 16, config 24"):
        LidarDetector.from_dir(tmp_path, device="cpu")
    (tmp_path / "config.yaml").write_text(text)
    # Decode settings are not part of the weights: changing them is allowed.
    (tmp_path / "config.yaml").write_text(text.replace("score_threshold: 0.2", "score_threshold: 0.5"))
    assert LidarDetector.from_dir(tmp_path, device="cpu").config.decode.score_threshold == 0.5
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    checkpoint["code_version"] = 0
    torch.save(checkpoint, tmp_path / "model.pt")
    with pytest.raises(DataError, match="code version 0"):
        load_model(tmp_path)
    (tmp_path / "model.pt").unlink()
    with pytest.raises(UserError, match="missing model.pt"):
        LidarDetector.from_dir(tmp_path)
    with pytest.raises(UserError, match="no CUDA"):
        if not torch.cuda.is_available():
            LidarDetector(config, device="cuda")
        else:
            raise UserError("no CUDA check skipped: a GPU is present")


def test_torchscript_export_gives_the_same_boxes(tmp_path):
    from perception.detector.export import export_torchscript, scripted_detector

    config = small_config(decode={"score_threshold": 0.0})
    torch.manual_seed(1)
    network = PillarCenterNet(config).eval()
    save_model(tmp_path, network, config)
    export_torchscript(network, tmp_path / "model.ts")
    points = synthetic_scene(np.random.default_rng(6)).points
    eager = LidarDetector(config, network, device="cpu").detect(points)
    scripted = scripted_detector(tmp_path, device="cpu").detect(points)
    assert len(eager) == len(scripted) > 0
    np.testing.assert_allclose(eager.center, scripted.center, atol=1e-4)
    np.testing.assert_allclose(eager.size, scripted.size, rtol=1e-4)
    np.testing.assert_allclose(eager.score, scripted.score, atol=1e-5)
    np.testing.assert_array_equal(eager.label, scripted.label)


def test_folded_batch_norms_compute_the_same_function():
    config = small_config()
    torch.manual_seed(2)
    network = PillarCenterNet(config)
    network.train()
    points = [synthetic_scene(np.random.default_rng(7)).points]
    with torch.no_grad():  # give the batch norms non-trivial running statistics
        for _ in range(3):
            network(*LidarDetector(config, network, device="cpu").voxelize(points), 1)
    plain = LidarDetector(config, network, device="cpu", fuse=False).raw_outputs(points)
    fused = LidarDetector(config, network, device="cpu", fuse=True).raw_outputs(points)
    assert network.training  # the caller's network was copied, not switched to eval
    for a, b in zip(plain, fused):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_benchmarks_report_their_numbers(tmp_path):
    from perception.bench import bench_detector, bench_voxelizer, street_scan

    cloud = street_scan(20000)
    assert cloud.shape == (20000, 4) and cloud.dtype == np.float32 and np.isfinite(cloud).all()
    assert np.abs(cloud[:, :2]).max() < 60 and (cloud[:, 2] < -1.7).mean() > 0.2  # ground and walls
    vox = bench_voxelizer(n_points=20000, runs=2, torch_runs=1)
    assert set(vox["configs"]) >= {"adstack_detector", "pointpillars_kitti", "centerpoint_voxel0075_nuscenes"}
    assert vox["configs"]["adstack_detector"]["hard"]["p50_ms"] > 0
    config = small_config()
    save_model(tmp_path, PillarCenterNet(config), config)
    det = bench_detector(tmp_path, n_points=20000, runs=2)
    assert det["p99_ms"] >= det["p50_ms"] > 0 and det["pillars"] > 0 and det["weights"] == str(tmp_path)


def test_detect_batch_equals_one_cloud_at_a_time():
    config = small_config(decode={"score_threshold": 0.0, "max_detections": 20})
    torch.manual_seed(3)
    detector = LidarDetector(config, PillarCenterNet(config), device="cpu")
    rng = np.random.default_rng(8)
    clouds = [synthetic_scene(rng).points, synthetic_scene(rng, n_vehicles=1).points]
    batched = detector.detect_batch(clouds, stamp=4.5)
    assert set(detector.last_timing_ms) >= {"voxelize", "network", "decode", "total"}
    for cloud, boxes in zip(clouds, batched):
        single = detector.detect(cloud)
        np.testing.assert_allclose(boxes.center, single.center, atol=1e-4)
        np.testing.assert_allclose(boxes.score, single.score, atol=1e-5)
        assert boxes.stamp == 4.5


def test_shipped_model_loads_and_finds_the_cars_of_a_scene():
    from perception.detector.model import SHIPPED_MODEL_DIR

    if not (SHIPPED_MODEL_DIR / "model.pt").is_file():
        pytest.skip("no shipped model in this checkout")
    assert sum(p.stat().st_size for p in SHIPPED_MODEL_DIR.iterdir()) < 10e6
    detector = LidarDetector.from_dir(device="cpu")
    frame = synthetic_scene(np.random.default_rng(9), n_vehicles=4, n_pedestrians=0, n_cyclists=0, density=150.0,
                            sensor_side_only=True)
    boxes = detector.detect(frame.points)
    assert np.isfinite(boxes.center).all() and np.isfinite(boxes.size).all()
    vehicles = boxes.select(boxes.label == int(ObjectClass.VEHICLE))
    # Synthetic boxes are not the simulator's cars, so ask only that most are found within 2 m.
    found = [np.min(np.linalg.norm(vehicles.center[:, :2] - c[:2], axis=1), initial=99.0) < 2.0 for c in frame.boxes.center]
    assert sum(found) >= 3
