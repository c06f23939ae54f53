"""The ``adstack`` command: one subcommand per job, each implemented by a stage's ``cli`` module.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs, so ``adstack --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from adstack.errors import UserError

# name -> (module, one-line help). Help text lives here so --help needs no heavy imports.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "map": ("hdmap.cli", "inspect a map: lanes, junctions, traffic lights, a route between two poses"),
    "sim": ("sim.cli", "run the embedded world (traffic, lidar) and record it as rosbag2 MCAP"),
    "bench": ("adstack.bench", "benchmarks printing JSON (sim, lidar, voxelizer, detector)"),
    "collect": ("sim.collect_cli", "record labelled lidar frames from the embedded world as a dataset"),
    "train": ("perception.train_cli", "train a model (detector) from a collected dataset"),
    "detect": ("perception.detect_cli", "run lidar detection on one recorded scan (KITTI, nuScenes, .pcd)"),
    "drive": ("sim.drive_cli", "drive a Leaderboard route in the embedded world and score it"),
    "eval": ("sim.eval_cli", "evaluate: drive routes (Leaderboard results file) or a detector (eval detector)"),
    "replay": ("sim.replay_cli", "feed a recorded rosbag2 drive through the stack and record its outputs"),
    "launch": ("adstack.launch_runner", "start the node graph (stack or sim) as separate processes"),
    "viz": ("adstack.viz", "serve the stack's state to Foxglove on 127.0.0.1"),
}


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def _module_present(module_name: str) -> bool:
    """Whether ``package.module`` is installed, without importing the package (``find_spec`` of a
    submodule imports its package: hdmap's alone takes 0.5 s, which ``adstack --help`` need not pay)."""
    package, _, rest = module_name.partition(".")
    spec = importlib.util.find_spec(package)
    if spec is None or not rest:
        return spec is not None
    path = rest.replace(".", "/")
    return any(Path(loc, path + ".py").is_file() or Path(loc, path, "__init__.py").is_file()
               for loc in (spec.submodule_search_locations or ()))


def available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is present in this installation."""
    return {name: spec for name, spec in SUBCOMMANDS.items() if _module_present(spec[0])}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adstack", description="adstack: perception, planning and simulation for autonomous driving.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command if command in SUBCOMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(_load(args.command).run(args) or 0)
    except UserError as err:
        print(f"adstack {args.command if 'args' in dir() else ''}: error: {err}".replace("  ", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
