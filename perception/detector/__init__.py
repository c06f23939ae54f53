"""Learned lidar detector: pillar feature net, BEV backbone, CenterPoint-style center head.

``LidarDetector.from_dir(model_dir, device='auto').detect(points) -> adstack.types.Boxes``.
"""

import os

# GNU OpenMP threads (torch's CPU pool) spin while waiting by default. On a shared 2-core machine the
# spinning of several processes starves them all: detection p50 went from 730 ms (spinning) to 34 ms
# (passive) with 2 threads at load average 10. Read when libgomp loads, so it must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from perception.detector.config import CODE_VERSION, DetectorConfig, load_detector_config
from perception.detector.model import LidarDetector, load_model, save_model, select_device

__all__ = ["CODE_VERSION", "DetectorConfig", "LidarDetector", "load_detector_config", "load_model",
           "save_model", "select_device"]
