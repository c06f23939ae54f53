"""``adstack train detector``: train the pillar detector on a shard dataset and write a model directory.

Reads ``DIR/dataset.json`` (perception/dataset.py): the ``train`` split's maps for training, the
``val`` split's (held-out maps) for the metrics. Writes to MODEL_DIR: ``model.pt`` (weights with their
code version and configuration hash), ``config.yaml``, ``metrics.json`` (loss curve, nuScenes-style
AP per class on the val split, timing) and ``model.ts`` (TorchScript of the network).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from adstack.errors import UserError
from adstack.types import Boxes, ObjectClass
from perception.dataset import Frame, ShardDataset, ShardOrderSampler, augment_frame
from perception.detector.config import DEFAULT_PARAM_FILE, DetectorConfig, load_detector_config
from perception.detector.export import export_torchscript
from perception.detector.model import (METRICS_FILE, TORCHSCRIPT_FILE, LidarDetector, load_model, save_model,
                                       select_device)
from perception.detector.network import PillarCenterNet, count_parameters
from perception.detector.targets import build_targets, detection_loss
from perception.voxelizer import Voxelizer


class TrainTransform:
    """Frame -> augmented hard voxels and head targets (numpy), one sample of a batch."""

    def __init__(self, config: DetectorConfig, augment: bool = True, seed: int = 0):
        self.config, self.augment = config, augment
        self.rng = np.random.default_rng(seed)
        self.voxelizer = Voxelizer(config.voxel)

    def __call__(self, frame: Frame) -> dict:
        t = self.config.train
        if self.augment:
            frame = augment_frame(frame, self.rng, t.flip, t.rotation, tuple(t.scale))
        voxels, coords, counts = self.voxelizer.hard(frame.points)
        sample = {"voxels": voxels.copy(), "coords": coords.copy(), "num_points": counts.copy()}
        sample.update(build_targets(frame.boxes, self.config, frame.box_num_points, t.min_points_per_box))
        return sample


def collate(samples: list[dict]) -> dict:
    coords = [np.concatenate([np.full((len(s["coords"]), 1), b, np.int32), s["coords"]], 1) for b, s in enumerate(samples)]
    batch = {"voxels": torch.from_numpy(np.concatenate([s["voxels"] for s in samples])),
             "num_points": torch.from_numpy(np.concatenate([s["num_points"] for s in samples])),
             "coords": torch.from_numpy(np.concatenate(coords)), "batch_size": len(samples)}
    for key in ("heatmap", "indices", "box", "mask"):
        batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    return batch


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def visible_ground_truth(frame: Frame, config: DetectorConfig) -> Boxes:
    """Ground truth an evaluation should count: the detector's classes, at least one lidar point."""
    keep = np.isin(frame.boxes.label, [int(c) for c in config.labels])
    if frame.box_num_points is not None:
        keep &= np.asarray(frame.box_num_points) >= 1
    return frame.boxes.select(keep)


def evaluate_detector(detector: LidarDetector, dataset: ShardDataset, max_frames: int | None = None) -> dict:
    """nuScenes-style AP of ``detector`` on ``dataset`` (perception.metrics), plus latency percentiles."""
    from perception.metrics import DetectionEvalConfig, evaluate

    gts, preds, times = [], [], []
    n = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    for i in range(n):
        frame = dataset.frame(i)
        preds.append(detector.detect(frame.points))
        times.append(detector.last_timing_ms["total"])
        gts.append(visible_ground_truth(frame, detector.config))
    names = tuple(ObjectClass[c.upper()].name for c in detector.config.classes)
    result = evaluate(gts, preds, DetectionEvalConfig(class_names=names))
    result["latency_ms"] = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))} if times else {}
    return result


def train(data_dir: str | Path, out_dir: str | Path, config: DetectorConfig, device: str = "auto",
          max_frames: int | None = None, init_dir: str | Path | None = None, log=print) -> dict:
    """Train, save, export and evaluate; returns the metrics written to ``metrics.json``.

    ``init_dir``: start from that model's weights (its configuration must match) instead of random ones.
    """
    t = config.train
    device_ = select_device(device)
    torch.manual_seed(t.seed)
    if device_.type == "cpu" and config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    train_set = ShardDataset(data_dir, "train", TrainTransform(config, augment=True, seed=t.seed))
    if len(train_set) == 0:
        raise UserError("the train split has no frames", Path(data_dir) / "dataset.json")
    if max_frames is not None and max_frames < len(train_set):
        train_set.index = train_set.index[:max_frames]
    try:
        val_set = ShardDataset(data_dir, "val")
    except UserError:
        val_set = None
    if val_set is not None and len(val_set) == 0:
        val_set = None
    sampler = ShardOrderSampler(train_set, shuffle=True, seed=t.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=t.num_workers, drop_last=False,
                                         persistent_workers=t.num_workers > 0)
    network = PillarCenterNet(config)
    if init_dir is not None:
        init_config, state = load_model(init_dir)
        if init_config.version_hash() != config.version_hash():
            raise UserError("--init model's configuration differs from the one being trained "
                            "(network, grid or classes); pass its config.yaml with --config", init_dir)
        network.load_state_dict(state)
    network = network.to(device_)
    optimizer = torch.optim.AdamW(network.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    steps = t.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.learning_rate, total_steps=max(steps, 1),
                                                    pct_start=0.3)
    use_amp = device_.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    log(f"training on {device_}: {len(train_set)} frames, {t.epochs} epochs, batch {t.batch_size}, "
        f"{count_parameters(network) / 1e6:.2f} M parameters")
    out_dir = Path(out_dir)
    history, started = [], time.perf_counter()
    metrics: dict = {"epochs": [], "val": None}
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        network.train()
        sums, count, epoch_start = {"loss": 0.0, "heatmap": 0.0, "box": 0.0}, 0, time.perf_counter()
        for batch in loader:
            batch = _to(batch, device_)
            with torch.autocast(device_type=device_.type, dtype=torch.float16, enabled=use_amp):
                outputs = network(batch["voxels"], batch["num_points"], batch["coords"], batch["batch_size"])
            losses = detection_loss(outputs, batch, config)
            if not math.isfinite(losses["loss"].item()):
                raise RuntimeError(f"loss became {losses['loss'].item()} at epoch {epoch}; lower train.learning_rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for key in sums:
                sums[key] += float(losses[key].detach())
            history.append(float(losses["loss"].detach()))
            count += 1
        entry = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()},
                 "seconds": time.perf_counter() - epoch_start}
        metrics["epochs"].append(entry)
        log(f"epoch {epoch + 1}/{t.epochs}: loss {entry['loss']:.4f} (heatmap {entry['heatmap']:.4f}, "
            f"box {entry['box']:.4f}), {entry['seconds']:.0f} s")
        save_model(out_dir, network, config)  # an interrupted run keeps its last complete epoch
        if val_set is not None and t.val_every and (epoch + 1) % t.val_every == 0 and epoch + 1 < t.epochs:
            detector = LidarDetector(config, network, device=str(device_), fp16=False)
            entry["val_mAP"] = evaluate_detector(detector, val_set)["mAP"]
            log(f"  val mAP {entry['val_mAP']}")
    network.eval()
    save_model(out_dir, network, config)
    export_torchscript(network, out_dir / TORCHSCRIPT_FILE)
    metrics.update({"train_frames": len(train_set), "parameters": count_parameters(network),
                    "train_seconds": time.perf_counter() - started, "device": str(device_),
                    "loss_per_step": history, "data": str(Path(data_dir).resolve()),
                    "version_hash": config.version_hash(), "init": None if init_dir is None else str(init_dir)})
    if val_set is not None:
        detector = LidarDetector(config, network, device=str(device_), fp16=False)
        metrics["val"] = evaluate_detector(detector, val_set)
        metrics["val_frames"] = len(val_set)
        aps = {name: e["mean_ap"] for name, e in metrics["val"]["classes"].items()}
        log(f"val ({len(val_set)} frames): mean AP per class {aps}, mAP {metrics['val']['mAP']}")
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    log(f"wrote {out_dir} in {metrics['train_seconds']:.0f} s")
    return metrics


HELP = "train the lidar detector on a collected dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (dataset.json + shards from `adstack collect lidar`)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--config", default=None, help=f"detector parameters YAML (default: {DEFAULT_PARAM_FILE.name})")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-frames", type=int, default=None, help="train on at most this many frames (quick runs)")
    parser.add_argument("--init", default=None, help="start from this model directory's weights (same configuration)")
    parser.add_argument("--learning-rate", type=float, default=None, help="override train.learning_rate")


def run(args) -> int:
    config = load_detector_config(args.config or DEFAULT_PARAM_FILE)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {args.epochs}")
        config.train.epochs = args.epochs
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        config.train.batch_size = args.batch_size
    if args.learning_rate is not None:
        if args.learning_rate <= 0:
            raise UserError(f"--learning-rate must be positive, got {args.learning_rate}")
        config.train.learning_rate = args.learning_rate
    train(args.data, args.out, config, device=args.device, max_frames=args.max_frames, init_dir=args.init)
    return 0
