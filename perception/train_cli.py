"""``adstack train MODEL``: dispatch to a trainable model's ``add_arguments`` / ``run``.

Each trainer is imported only when it runs, so ``adstack train --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

HELP = "train a model (detector) from collected data"

TRAINERS = {"detector": ("perception.detector.train", "train the lidar detector on a collected dataset")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, (module, help_text) in TRAINERS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)


def run(args) -> int:
    return int(importlib.import_module(TRAINERS[args.model][0]).run(args) or 0)
