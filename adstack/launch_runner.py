"""``adstack launch stack|sim``: start the node graph of launch/graph.yaml as separate processes.

This is the pip-only stand-in for ``ros2 launch adstack <graph>.launch.py``: the same nodes, the same
parameter files and remappings, one process each, talking over DDS. In ``sim`` the bridge drives the
route and writes ``result.json`` like ``adstack drive``; when it exits the other nodes are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from adstack.errors import UserError
from adstack.launch_graph import graph_overrides, load_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--viz", action="store_true",
                        help="serve the graph live to Foxglove on 127.0.0.1:8765 (adstack viz --ros)")
    parser.add_argument("graph", choices=["stack", "sim"], help="which graph of launch/graph.yaml to start")
    parser.add_argument("--map", default=None, help="sim: map name or .xodr (default: the route's town)")
    parser.add_argument("--map-dir", action="append", default=[], help="sim: where to find <Town>.xodr")
    parser.add_argument("--routes", help="route file (Leaderboard XML)")
    parser.add_argument("--route-id", help="route to drive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0, help="sim: cap on simulated time (0: route timeout)")
    parser.add_argument("--perception", default="ground_truth", choices=["ground_truth", "lidar"],
                        help="sim: planner sees ground truth (bridge publishes it as detections) or lidar detections")
    parser.add_argument("--planner", default="expert", choices=["expert", "learned"], help="sim: planner of the planning node")
    parser.add_argument("--vehicles", type=int, default=None, help="sim: SUMO vehicles (default: world config)")
    parser.add_argument("--pedestrians", type=int, default=None, help="sim: SUMO pedestrians (default: world config)")
    parser.add_argument("--sync-timeout", type=float, default=2.0,
                        help="sim: wall seconds a node waits for the inputs of its lockstep tick before going on "
                             "with the latest ones (0: no lockstep, nodes run free)")
    parser.add_argument("--out", default="runs/launch", help="output directory (result.json, logs of each node)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: a random one no other node on this machine uses)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="wall-clock limit (s)")


DOMAIN_ID_RANGE = (1, 232)  # valid ROS_DOMAIN_IDs on Linux with the default port mapping


def domain_in_use(domain_id: int, listen_s: float = 1.5) -> bool:
    """Whether any other ROS 2 node on this machine is on ``domain_id`` (listens ``listen_s`` for
    discovery). Two graphs on one domain hear each other's topics: a parallel run must not share it."""
    import rclpy

    env_range = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = rclpy.Context()
    try:
        rclpy.init(context=context, domain_id=domain_id)
        node = rclpy.create_node(f"adstack_domain_probe_{os.getpid()}", context=context,
                                 enable_rosout=False, start_parameter_services=False)
        deadline = time.monotonic() + listen_s
        others = []
        while time.monotonic() < deadline and not others:
            time.sleep(0.1)
            others = [n for n in node.get_node_names() if n != node.get_name()]
        node.destroy_node()
        return bool(others)
    finally:
        rclpy.try_shutdown(context=context)
        if env_range is None:
            os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        else:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env_range


def free_domain_id(rng: random.Random | None = None, tries: int = 5) -> int:
    """A random ROS_DOMAIN_ID that no other node on this machine uses (the last try is taken as is)."""
    rng = rng or random.Random()
    candidate = rng.randint(*DOMAIN_ID_RANGE)
    for _ in range(tries - 1):
        if not domain_in_use(candidate):
            return candidate
        candidate = rng.randint(*DOMAIN_ID_RANGE)
    return candidate


def ros_param_value(value) -> str:
    """A ``-p name:=value`` value that rcl parses (as YAML) back to the same Python type: strings are
    single-quoted so that ``route_id:='1'`` stays a string and ``map:=''`` is not a parse error."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def node_command(spec, extra_params: dict) -> list[str]:
    params = {key: ros_param_value(value) for key, value in extra_params.items()}
    return [sys.executable, "-m", spec.module, *spec.ros_args(params)]


def start_graph(graph: str, params_by_node: dict, out: Path, env: dict) -> dict[str, subprocess.Popen]:
    procs = {}
    overrides = graph_overrides(graph)  # the graph's own (use_sim_time), then this run's
    for spec in load_graph()[graph]:
        log = open(out / f"{spec.name}.log", "w")
        params = {**overrides.get(spec.name, {}), **params_by_node.get(spec.name, {})}
        procs[spec.name] = subprocess.Popen(node_command(spec, params), env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return procs


PLANNER_HZ = 10.0


def check_route(routes: str, route_id: str) -> None:
    """Fail before starting six processes: the route file must parse and hold ``route_id``."""
    from hdmap.routes import load_routes

    ids = [str(spec.id) for spec in load_routes(routes)]
    if route_id not in ids:
        sample = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise UserError(f"no route with id {route_id!r} (ids: {sample})", routes)


def sim_params(args, common: dict, out: Path) -> dict[str, dict]:
    """Per-node parameters of ``launch sim``.

    The bridge steps the world only when the command for the current tick has come back, so sensor
    time stands still while the stack thinks: the wall-clock silence watchdogs are off, and each node
    waits (``--sync-timeout``) for the inputs stamped with its tick, which makes the graph compute what
    the in-process ``adstack drive`` computes whatever order DDS delivers messages in."""
    ground_truth = args.perception == "ground_truth"
    bridge = {**common, "seed": args.seed, "seconds": float(args.seconds), "out": str(out.resolve()),
              "publish_ground_truth_as_detections": ground_truth,
              "planner": args.planner,
              # planner, controller (and the lidar detector when it detects)
              "min_odometry_subscribers": 2 if ground_truth else 3}
    if args.vehicles is not None:
        bridge["vehicles"] = args.vehicles
    if args.pedestrians is not None:
        bridge["pedestrians"] = args.pedestrians
    sync = max(0.0, float(args.sync_timeout))
    planner = {**common, "planner": args.planner, "planner_hz": PLANNER_HZ, "use_ground_truth_objects": ground_truth,
               "odometry_timeout_s": 0.0, "sync_timeout_s": sync}
    # Each waits longer than the stage before it, so a late input is waited out where it is missing.
    controller = {"odometry_timeout_s": 0.0, "sync_trajectory_period_s": 1.0 / PLANNER_HZ if sync > 0 else 0.0,
                  "sync_timeout_s": sync + 1.0}
    bridge["command_timeout_s"] = max(2.0, sync + 3.0)
    params = {"sim_bridge": bridge, "map_server": dict(common), "planner": planner, "controller": controller,
              "tracker": {"input_timeout_s": 0.0}}
    # Ground truth: the detector idles (no subscriptions). Lidar: every cloud, reliably, as in the loop.
    params["lidar_detector"] = {"enabled": False} if ground_truth else {"reliable_input": True, "input_timeout_s": 0.0}
    return params


def stop_all(procs: dict[str, subprocess.Popen], grace_s: float = 5.0) -> dict[str, int]:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {name: proc.returncode for name, proc in procs.items()}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["ROS_DOMAIN_ID"] = str(args.domain_id if args.domain_id is not None else free_domain_id())
    params: dict[str, dict] = {}
    if args.graph == "sim":
        if not args.routes or not args.route_id:
            raise UserError("launch sim needs --routes and --route-id")
        check_route(args.routes, str(args.route_id))
        common = {"routes": str(Path(args.routes).resolve()), "route_id": str(args.route_id),
                  "map": args.map or "", "map_dirs": ",".join(str(Path(d).resolve()) for d in args.map_dir)}
        params.update(sim_params(args, common, out))
        (out / "result.json").unlink(missing_ok=True)  # a result left from an earlier run is not this one's
    procs = start_graph(args.graph, params, out, env)
    if getattr(args, "viz", False):  # the live view is an observer: its failure never stops the graph
        viz_log = open(out / "viz.log", "w")
        procs["viz"] = subprocess.Popen([sys.executable, "-m", "adstack.cli", "viz", "--ros"], env=env,
                                        stdout=viz_log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"adstack launch {args.graph}: {len(procs)} nodes on ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} "
          f"(logs in {out}/<node>.log)", file=sys.stderr)
    started = time.monotonic()
    code = 0
    try:
        while True:
            time.sleep(0.2)
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if args.graph == "sim" and "sim_bridge" in dead:
                code = dead["sim_bridge"]
                break
            crashed = {n: c for n, c in dead.items() if n not in ("sim_bridge", "viz")}
            if crashed:
                print(f"adstack launch: node(s) exited early: {crashed}; see their logs in {out}", file=sys.stderr)
                code = 1
                break
            if time.monotonic() - started > args.timeout:
                print("adstack launch: wall-clock timeout", file=sys.stderr)
                code = 1
                break
    except KeyboardInterrupt:
        pass
    codes = stop_all(procs)
    result_path = out / "result.json"
    if args.graph == "sim" and not result_path.is_file():
        print(f"adstack launch: the sim bridge wrote no result.json (exit code {codes.get('sim_bridge')}); "
              f"see {out}/sim_bridge.log", file=sys.stderr)
        return code or 1
    if args.graph == "sim" and result_path.is_file():
        result = json.loads(result_path.read_text())
        result["node_exit_codes"] = codes
        result_path.write_text(json.dumps(result, indent=2))
        print(f"route {result.get('route_id')}: {result.get('status')}: driving score {result.get('driving_score', 0):.2f}, "
              f"completion {result.get('route_completion', 0):.2f}%, penalty {result.get('infraction_penalty', 1):.3f}")
        print(f"  driven {result.get('distance_driven_m', 0):.0f} m in {result.get('simulated_s', 0):.1f} s simulated, "
              f"{result.get('wall_s', 0):.1f} s wall; late commands {result.get('late_commands', 0)}; "
              f"wrote {out}/result.json, log.mcap, bev.png")
        from sim.drive import STATUS_AGENT_CRASHED, STATUS_SETUP_FAILED, STATUS_SIM_CRASHED
        if result.get("status") in (STATUS_AGENT_CRASHED, STATUS_SETUP_FAILED, STATUS_SIM_CRASHED):
            code = code or 1  # as `adstack drive`: a route that could not be driven is a non-zero exit
    return code
