"""Learned lidar detector: pillar feature net, BEV backbone, CenterPoint-style center head.

``LidarDetector.from_dir(model_dir, device='auto').detect(points) -> adstack.types.Boxes``.
"""

from perception.detector.config import CODE_VERSION, DetectorConfig, load_detector_config
from perception.detector.model import LidarDetector, load_model, save_model, select_device

__all__ = ["CODE_VERSION", "DetectorConfig", "LidarDetector", "load_detector_config", "load_model",
           "save_model", "select_device"]
