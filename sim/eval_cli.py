"""``adstack eval``: drive many routes into a Leaderboard-style results file, or evaluate a detector.

``adstack eval --routes FILE [--route-ids ...] --jobs N --out DIR`` drives each route in its own
process (libsumo runs one simulation per process), writes ``DIR/<route>/`` per route and
``DIR/results.json`` in the layout of the Leaderboard's results file, and prints a summary table.
``adstack eval detector --model M --data DIR`` evaluates a lidar detector (perception/eval_cli.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from adstack.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="routes", choices=["routes", "detector"],
                        help="routes (default) or detector")
    parser.add_argument("--routes", help="Leaderboard route file (routes)")
    parser.add_argument("--route-ids", nargs="*", default=None, help="subset of route ids (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="routes driven in parallel")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", help="detector: model directory or 'classical'")
    parser.add_argument("--data", help="detector: dataset directory")
    parser.add_argument("--split", default="val", help="detector: dataset split")
    parser.add_argument("--config", help="detector: classical detector parameters (YAML)")
    parser.add_argument("--classes", default="VEHICLE,PEDESTRIAN,CYCLIST", help="detector: classes evaluated")
    from sim.drive_cli import add_drive_options
    add_drive_options(parser)


def _drive_one(job):
    args_dict, route_id, out = job
    from sim.drive import drive
    from sim.drive_cli import options_from_args
    args = argparse.Namespace(**args_dict)
    args.quiet = True
    opts = options_from_args(args, route_id, out)
    from sim.drive import STATUS_SETUP_FAILED, failed_route_result
    started = time.perf_counter()
    try:
        result, code, scored = drive(opts)
    except UserError as err:
        scored = failed_route_result(opts, STATUS_SETUP_FAILED, time.perf_counter() - started)
        result = {"route_id": route_id, "status": scored.status, "failure_message": str(err),
                  "driving_score": 0.0, "route_completion": 0.0, "infraction_penalty": 1.0}
        code = 2
    except Exception as exc:  # a crash in one route must not lose the others' results
        scored = failed_route_result(opts, "Failed - Simulation crashed", time.perf_counter() - started)
        result = {"route_id": route_id, "status": scored.status, "failure_message": f"{type(exc).__name__}: {exc}",
                  "driving_score": 0.0, "route_completion": 0.0, "infraction_penalty": 1.0}
        code = 1
    scored.route_id = route_id
    return route_id, result, code, scored


def run(args) -> int:
    if args.what == "detector":
        from perception.eval_cli import run_detector_eval
        return run_detector_eval(args)
    if not args.routes:
        raise UserError("--routes is required")
    from hdmap.routes import load_routes
    from sim.scoring import results_json, write_results_json

    specs = load_routes(args.routes)
    ids = [str(s.id) for s in specs]
    wanted = ids if not args.route_ids else [str(r) for r in args.route_ids]
    unknown = [r for r in wanted if r not in ids]
    if unknown:
        raise UserError(f"unknown route id(s) {unknown}", args.routes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args_dict = {k: v for k, v in vars(args).items() if k not in ("func",)}
    jobs = [(args_dict, rid, str(out / f"route_{rid}")) for rid in wanted]
    started = time.perf_counter()
    results = {}
    scored = {}
    codes = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=max(1, args.jobs), maxtasksperchild=1) as pool:
        for k, (rid, result, code, route_result) in enumerate(pool.imap_unordered(_drive_one, jobs)):
            results[rid] = result
            scored[rid] = route_result
            codes.append(code)
            print(f"[{k + 1}/{len(jobs)}] route {rid}: DS {result.get('driving_score', 0):6.2f}  "
                  f"RC {result.get('route_completion', 0):6.2f}%  IP {result.get('infraction_penalty', 1):.3f}  "
                  f"{result.get('status', '')}", flush=True)
    ordered = []
    for index, rid in enumerate(wanted):
        scored[rid].index = index
        ordered.append(scored[rid])
    write_results_json(out / "results.json", ordered, sensors=["lidar"] if not args.no_lidar else [])
    print_summary(results_json(ordered), [results[r] for r in wanted], time.perf_counter() - started)
    return 0 if all(c == 0 for c in codes) else 1


def print_summary(doc: dict, per_route: list[dict], wall_s: float, file=sys.stdout) -> None:
    """A table a person reads: one row per route, then the global record."""
    print(f"{'route':>8} {'town':>8} {'DS':>7} {'RC %':>7} {'IP':>6}  status", file=file)
    for r in per_route:
        print(f"{r.get('route_id', '?'):>8} {r.get('town', '?'):>8} {r.get('driving_score', 0):7.2f} "
              f"{r.get('route_completion', 0):7.2f} {r.get('infraction_penalty', 1):6.3f}  {r.get('status', '')}",
              file=file)
    g = doc["_checkpoint"]["global_record"]
    scores = g.get("scores") or g.get("scores_mean")
    print(f"{'mean':>8} {'':>8} {scores['score_composed']:7.2f} {scores['score_route']:7.2f} "
          f"{scores['score_penalty']:6.3f}  {len(per_route)} routes, {wall_s:.0f} s wall", file=file)
    per_km = {k: v for k, v in g["infractions"].items() if v}
    print("infractions per km: " + (", ".join(f"{k} {v:.3f}" for k, v in per_km.items()) or "none"), file=file)
