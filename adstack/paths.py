"""Where things live: the shared reference data, the cache, the package's own files."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Reference data (real maps, routes, scans, bags): ``$ADSTACK_SHARED_DATA`` or ../shared/data."""
    env = os.environ.get("ADSTACK_SHARED_DATA")
    return Path(env) if env else (PACKAGE_ROOT.parent / "shared" / "data")


def cache_dir() -> Path:
    """Downloaded and generated assets (Town01, SUMO nets): ``$ADSTACK_CACHE`` or ~/.cache/adstack."""
    env = os.environ.get("ADSTACK_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "adstack"
    path.mkdir(parents=True, exist_ok=True)
    return path
