"""TorchScript export of the network (the voxelizer and the decoder stay outside, in Python).

The scripted module has the eager module's signature:
``forward(voxels (M,P,4), num_points (M,), coords (M,4), batch_size: int) -> (heatmap logits, box codes)``,
so a C++ or ROS node feeds it hard voxels and decodes peaks itself (see ``decode.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adstack.errors import DataError
from perception.detector.network import PillarCenterNet


def export_torchscript(network: PillarCenterNet, path: str | Path) -> Path:
    """Script an fp32 CPU copy of ``network`` in eval mode and save it to ``path``."""
    path = Path(path)
    module = network
    was_training = module.training
    device = next(module.parameters()).device
    dtype = next(module.parameters()).dtype
    module = module.float().cpu().eval()
    try:
        scripted = torch.jit.script(module)
        tmp = path.with_suffix(path.suffix + ".tmp")
        scripted.save(str(tmp))
        tmp.replace(path)
    finally:
        module.to(device=device, dtype=dtype).train(was_training)
    return path


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise DataError("TorchScript file not found", path)
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        raise DataError(f"cannot load TorchScript: {str(err).splitlines()[0]}", path) from None


def scripted_detector(model_dir: str | Path, device: str = "cpu"):
    """A ``LidarDetector`` whose network is the exported ``model.ts`` of ``model_dir``."""
    from perception.detector.model import TORCHSCRIPT_FILE, LidarDetector, load_model

    config, _ = load_model(model_dir)
    scripted = load_torchscript(Path(model_dir) / TORCHSCRIPT_FILE, device)
    return LidarDetector(config, scripted, device=device, fp16=False)


