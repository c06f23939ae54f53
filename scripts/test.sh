#!/usr/bin/env bash
# Set up everything (idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# DDS stays on this machine; each test that starts nodes picks its own ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
