#!/usr/bin/env bash
# Set up everything (idempotent), then run the main job: a scored drive of one Leaderboard route on Town01.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MPLBACKEND=Agg
exec .venv/bin/adstack drive --map Town01 --routes sim/routes/town01_demo.xml --route-id 0 --seed 0 --out runs/demo "$@"
