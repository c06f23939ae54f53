"""``adstack collect lidar``: record labelled lidar frames as a sharded, resumable dataset."""

from __future__ import annotations

import argparse

from adstack.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["lidar"], help="what to collect")
    parser.add_argument("--maps", nargs="+", default=["Town01", "grid_town"],
                        help="training maps (names or .xodr paths)")
    parser.add_argument("--val-maps", nargs="*", default=["junction4"],
                        help="held-out maps for the validation split (must differ from --maps)")
    parser.add_argument("--frames", type=int, default=400, help="about this many frames in total")
    parser.add_argument("--frames-per-run", type=int, default=40, help="frames per (map, seed) run = per shard")
    parser.add_argument("--seed", type=int, default=0, help="first seed; run k uses seed + k")
    parser.add_argument("--map-dir", action="append", default=[], help="where to find <Town>.xodr (repeatable)")
    parser.add_argument("--out", required=True, help="dataset directory (created; resumed if present)")


def run(args) -> int:
    from sim.collect import CollectConfig, collect

    overlap = set(args.maps) & set(args.val_maps)
    if overlap:
        raise UserError(f"validation maps must differ from training maps; both have {sorted(overlap)}")
    if args.frames <= 0 or args.frames_per_run <= 0:
        raise UserError("--frames and --frames-per-run must be positive")
    config = CollectConfig(frames_per_run=args.frames_per_run)
    collect(args.out, args.maps, args.frames, args.val_maps, config, map_dirs=args.map_dir, first_seed=args.seed)
    return 0
