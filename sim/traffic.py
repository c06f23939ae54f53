"""SUMO traffic on the map's own road network: vehicles, cyclists, pedestrians and traffic lights.

The OpenDRIVE file behind the ``HDMap`` is converted once by ``netconvert`` (cached by content hash
in ``adstack.paths.cache_dir()``) and simulated in process with libsumo. Frames: netconvert shifts
the OpenDRIVE coordinates by the net's ``netOffset`` and keeps their orientation, so our map frame
(OpenDRIVE's own right-handed frame, REP-103) is ``xy_map = xy_sumo - netOffset``. SUMO angles are
compass degrees (0 = north = +y, clockwise); ``yaw = radians(90 - angle)``. SUMO reports a vehicle's
position at its front bumper; boxes here are centred.

libsumo is one simulation per process: starting a ``Traffic`` closes any other one still running.
The world runs it in a child process (``sim.traffic_process.TrafficProcess``, same interface).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from adstack.config import from_dict
from adstack.errors import DataError, UserError
from adstack.paths import cache_dir
from adstack.types import Boxes, LightState, ObjectClass, TrafficLight

# Exactly the conversion the project specifies; changing it changes the cache key.
NETCONVERT_OPTIONS = ("--tls.guess-signals", "true", "--sidewalks.guess", "true", "--crossings.guess", "true",
                      "--output.original-names", "true")

EGO_SUMO_ID = "ego"
WALKER_HOLD_LOOKAHEAD_S = 0.6  # a walker whose next this-many seconds of walking enter the ego's box is stopped ...
WALKER_HOLD_MARGIN_M = 0.4  # ... the box grown by this on every side ...
WALKER_HOLD_EGO_SPEED_MPS = 2.0  # ... while the ego is slower than this (creeping included; a moving ego brakes for walkers)
EGO_ACTOR_ID = 0


@dataclass
class VehicleTypeSpec:
    """One kind of road user SUMO drives: its vClass, box size (m), top speed (m/s) and share."""

    name: str = "car"
    vclass: str = "passenger"  # SUMO vClass: passenger, truck, bus, motorcycle, bicycle, ...
    length: float = 4.6
    width: float = 1.9
    height: float = 1.5
    max_speed: float = 13.9
    share: float = 1.0


DEFAULT_VEHICLE_TYPES = (
    {"name": "car", "vclass": "passenger", "length": 4.6, "width": 1.9, "height": 1.5, "max_speed": 13.9, "share": 0.70},
    {"name": "van", "vclass": "delivery", "length": 5.4, "width": 2.1, "height": 2.3, "max_speed": 12.5, "share": 0.10},
    {"name": "truck", "vclass": "truck", "length": 8.5, "width": 2.5, "height": 3.4, "max_speed": 11.1, "share": 0.05},
    {"name": "motorcycle", "vclass": "motorcycle", "length": 2.2, "width": 0.8, "height": 1.5, "max_speed": 13.9, "share": 0.05},
    {"name": "bicycle", "vclass": "bicycle", "length": 1.8, "width": 0.7, "height": 1.7, "max_speed": 5.5, "share": 0.10},
)


@dataclass
class TrafficConfig:
    vehicles: int = 100  # SUMO vehicles kept in the world (not counting the ego)
    pedestrians: int = 100
    vehicle_types: list = field(default_factory=lambda: [dict(t) for t in DEFAULT_VEHICLE_TYPES])
    pedestrian_size: tuple = (0.5, 0.6, 1.75)  # length, width, height (m)
    pedestrian_max_speed: float = 1.4  # m/s
    pedestrian_model: str = "striping"  # SUMO's: "striping" (walkers avoid each other) or "nonInteracting" (cheaper)
    # A vehicle standing on a crossing blocks SUMO's walkers; after this long they squeeze through it
    # (SUMO's default: 10 s, which walks them into a car waiting on the crossing for a queue to move).
    pedestrian_crossing_jam_s: float = 60.0
    # A walker about to walk into the standing ego is stopped; after this long it leaves (Traffic._hold_walkers).
    walker_hold_max_s: float = 30.0
    spawn_clearance_m: float = 30.0  # no new car starts on an edge that passes this close to the ego
    stuck_in_ego_s: float = 10.0  # a road user standing this long overlapping the ego (a collision) is taken out
    warmup_s: float = 2.0  # SUMO runs this long before the first world tick so traffic is moving
    time_to_teleport_s: float = 120.0  # SUMO resolves gridlock by teleporting vehicles stuck this long
    # SUMO drivers waiting at a junction accept ever smaller gaps until, after this long, they take
    # any gap they can (SUMO: 180 s); a left turner facing steady oncoming traffic otherwise blocks
    # its lane, and the ego queued behind it, for minutes
    time_to_impatience_s: float = 180.0
    refill_period_s: float = 1.0  # how often routes are extended and missing actors re-spawned
    route_attempts: int = 20  # random origin/destination draws before giving up on one actor

    def __post_init__(self):
        self.vehicle_types = [t if isinstance(t, VehicleTypeSpec) else from_dict(VehicleTypeSpec, t, "vehicle_types")
                              for t in self.vehicle_types]
        if self.vehicles < 0 or self.pedestrians < 0:
            raise DataError("vehicles and pedestrians must be >= 0", "traffic")
        if self.vehicles and not self.vehicle_types:
            raise DataError("vehicle_types is empty", "traffic")
        if any(t.share < 0 for t in self.vehicle_types) or (self.vehicle_types and sum(t.share for t in self.vehicle_types) <= 0):
            raise DataError("vehicle type shares must be >= 0 with a positive sum", "traffic")
        self.pedestrian_size = tuple(float(v) for v in self.pedestrian_size)
        if len(self.pedestrian_size) != 3 or min(self.pedestrian_size) <= 0:
            raise DataError(f"pedestrian_size must be 3 positive numbers, got {self.pedestrian_size}", "traffic")
        if not self.pedestrian_crossing_jam_s > 0:
            raise DataError(f"pedestrian_crossing_jam_s must be > 0, got {self.pedestrian_crossing_jam_s}", "traffic")
        if not self.time_to_impatience_s > 0:
            raise DataError(f"time_to_impatience_s must be > 0, got {self.time_to_impatience_s}", "traffic")
        if not self.stuck_in_ego_s > 0:
            raise DataError(f"stuck_in_ego_s must be > 0, got {self.stuck_in_ego_s}", "traffic")
        if not self.spawn_clearance_m >= 0:
            raise DataError(f"spawn_clearance_m must be >= 0, got {self.spawn_clearance_m}", "traffic")
        if not self.walker_hold_max_s >= 0:
            raise DataError(f"walker_hold_max_s must be >= 0, got {self.walker_hold_max_s}", "traffic")
        if self.pedestrian_model not in ("striping", "nonInteracting"):
            raise DataError(f"pedestrian_model must be 'striping' or 'nonInteracting', got {self.pedestrian_model!r}", "traffic")
        names = [t.name for t in self.vehicle_types]
        reserved = {"ego", "walker"} | {n for n in names if n.startswith("DEFAULT_")}
        if len(set(names)) != len(names) or reserved & set(names):
            raise DataError(f"vehicle type names must be unique and not 'ego', 'walker' or DEFAULT_*: {names}", "traffic")
        from sumolib.net.lane import SUMO_VEHICLE_CLASSES
        for t in self.vehicle_types:
            if t.vclass not in SUMO_VEHICLE_CLASSES or t.vclass == "pedestrian":
                raise DataError(f"vehicle type {t.name!r}: unknown SUMO vClass {t.vclass!r}", "traffic")
            if min(t.length, t.width, t.height, t.max_speed) <= 0:
                raise DataError(f"vehicle type {t.name!r}: sizes and max_speed must be > 0", "traffic")


# --- binaries and the network -------------------------------------------------------------------

def sumo_home() -> Path | None:
    try:
        import sumo  # the eclipse-sumo wheel
        return Path(sumo.SUMO_HOME)
    except ImportError:
        env = os.environ.get("SUMO_HOME")
        return Path(env) if env else None


def sumo_binary(name: str) -> str:
    """Path of a SUMO executable (``netconvert``, ``sumo``), from the wheel or the PATH."""
    home = sumo_home()
    if home is not None and (home / "bin" / name).is_file():
        return str(home / "bin" / name)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"SUMO's {name} not found: install eclipse-sumo (pip) or put it on PATH")
    return found


def sumo_version() -> str:
    """SUMO's version as libsumo names it ("SUMO 1.28.0"), from the wheel's metadata when it is
    installed (importing libsumo takes 0.2 s, and with SUMO in its own process nothing else here needs it)."""
    from importlib import metadata
    try:
        return f"SUMO {metadata.version('eclipse-sumo')}"
    except metadata.PackageNotFoundError:
        import libsumo
        return str(libsumo.getVersion()[1]) if hasattr(libsumo, "getVersion") else "unknown"


def build_net(xodr_path: str | Path) -> Path:
    """Convert ``xodr_path`` to a SUMO net once; later calls return the cached file."""
    xodr_path = Path(xodr_path)
    try:
        data = xodr_path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read OpenDRIVE file: {exc.strerror}", xodr_path) from None
    key = hashlib.sha256(data + "\0".join(NETCONVERT_OPTIONS).encode() + sumo_version().encode()).hexdigest()[:20]
    target = cache_dir() / "sumo" / f"{xodr_path.stem}-{key}.net.xml"
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    cmd = [sumo_binary("netconvert"), "--opendrive", str(xodr_path), *NETCONVERT_OPTIONS,
           "--output-file", str(partial), "--no-warnings", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("Error")] or lines[-1:] or ["no output"]
        raise DataError(f"netconvert failed: {errors[0]}", xodr_path)
    partial.replace(target)  # atomic: a killed conversion never leaves a truncated net in the cache
    return target


def net_offset(net_path: str | Path) -> np.ndarray:
    """The ``netOffset`` of a SUMO net (``<location netOffset="x,y" ...>``)."""
    import xml.etree.ElementTree as ET
    for _, elem in ET.iterparse(str(net_path), events=("start",)):
        if elem.tag == "location":
            return np.array([float(v) for v in elem.get("netOffset", "0,0").split(",")[:2]])
    return np.zeros(2)


# --- frames ---------------------------------------------------------------------------------------

def sumo_to_map_xy(xy_sumo, offset) -> np.ndarray:
    return np.asarray(xy_sumo, dtype=np.float64) - offset


def map_to_sumo_xy(xy_map, offset) -> np.ndarray:
    return np.asarray(xy_map, dtype=np.float64) + offset


def sumo_angle_to_yaw(angle_deg):
    """SUMO compass degrees (clockwise from +y) -> yaw (counter-clockwise from +x), in (-pi, pi]."""
    yaw = np.radians(90.0 - np.asarray(angle_deg, dtype=np.float64))
    return np.arctan2(np.sin(yaw), np.cos(yaw))


def yaw_to_sumo_angle(yaw) -> float:
    return float((90.0 - np.degrees(yaw)) % 360.0)


# SUMO signal characters -> our light state. 'u' is red+yellow (about to turn green): still stop.
_SIGNAL_STATE = {"G": LightState.GREEN, "g": LightState.GREEN, "y": LightState.YELLOW, "Y": LightState.YELLOW,
                 "r": LightState.RED, "R": LightState.RED, "u": LightState.RED, "s": LightState.RED,
                 "o": LightState.OFF, "O": LightState.OFF}


@dataclass
class StopLineSignal(TrafficLight):
    """A traffic light as one incoming driving lane sees it, at that lane's stop line.

    ``position``: the stop line's centre (the end of the incoming lane), map frame; ``yaw``: the
    driving direction there. ``lanes``: the HD map lanes it governs, ``hdmap`` LaneKeys
    (road, section, lane): the incoming lane first, then the junction lanes leaving from it
    (without a map annotation: the OpenDRIVE (road_id, lane_id) of the incoming lane).
    ``lane_states``: the state per governed junction lane (turns can differ from straight on);
    ``movements``: the state per SUMO direction ('s' straight, 'l' left, 'r' right, 't' turn).
    ``state``: the straight movement's if the lane has one, else the most permissive.
    ``map_signal_id``: the OpenDRIVE signal (``HDMap.traffic_lights``) for the same approach, if any.
    """

    yaw: float = 0.0
    sumo_lane: str = ""
    tls_id: str = ""
    movements: dict = field(default_factory=dict)
    lane_states: dict = field(default_factory=dict)
    map_signal_id: str = ""


@dataclass
class SignalLink:
    """One controlled SUMO connection: in-lane -> (junction via-lane) -> out-lane, map frame."""

    index: int
    direction: str
    via_shape: np.ndarray  # (K,2)
    out_start: np.ndarray  # (2,) first point of the out-lane
    out_yaw: float
    map_lane: tuple | None = None  # hdmap LaneKey of the junction lane, set by annotate_signals


@dataclass
class SignalLane:
    """A signalised incoming lane: its stop line and the links that leave it."""

    tls_id: str
    lane: str
    links: list
    position: np.ndarray
    yaw: float
    odr_lane: tuple
    map_lane: tuple | None = None  # hdmap LaneKey of the incoming lane, set by annotate_signals
    map_signal_id: str = ""


@dataclass
class ActorArrays:
    """Raw per-tick actor state from SUMO, map frame, box centres."""

    sumo_ids: list
    ids: np.ndarray
    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    label: np.ndarray

    def boxes(self, stamp: float) -> Boxes:
        velocity = self.speed[:, None] * np.stack([np.cos(self.yaw), np.sin(self.yaw)], -1)
        return Boxes(self.center, self.size, self.yaw, self.label, None, velocity, self.ids, "map", stamp)


def _parse_odr_lane(orig_id: str) -> tuple:
    """netconvert's ``origId`` "road_lane" (first of several) -> (road_id, lane_id) or ()."""
    token = (orig_id or "").split(" ")[0]
    road, sep, lane = token.rpartition("_")
    try:
        return (road, int(lane)) if sep else ()
    except ValueError:
        return ()


def _densify(polyline: np.ndarray, step_m: float) -> np.ndarray:
    """Points along ``polyline`` no more than ``step_m`` apart (its vertices included)."""
    seg = np.diff(polyline, axis=0)
    if len(seg) == 0:
        return polyline
    n = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / step_m).astype(int), 1)
    owner = np.repeat(np.arange(len(seg)), n)
    frac = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
    return np.vstack([polyline[owner] + frac[:, None] * seg[owner], polyline[-1:]])


class _NetInfo:
    """What ``Traffic`` needs from a net file, read once per file and process (sumolib is slow)."""

    def __init__(self, net_path: str):
        import sumolib
        self.offset = net_offset(net_path)
        net = sumolib.net.readNet(net_path, withInternal=False)
        self._normal = [e for e in net.getEdges() if e.getFunction() == ""]
        self._allowing: dict[str, list] = {}
        self.edge_length = {e.getID(): e.getLength() for e in self._normal}
        lanes = [ln for e in self._normal for ln in e.getLanes()]
        self.drive_lanes = sorted((ln.getID(), ln.getLength()) for ln in lanes
                                  if ln.allows("passenger") and not ln.allows("pedestrian"))
        self.lane_orig = {ln.getID(): _parse_odr_lane(ln.getParam("origId", "")) for ln in lanes}
        self.lane_shape = {ln.getID(): np.asarray(ln.getShape(), dtype=np.float64)[:, :2] for ln in lanes}
        # Every edge's lane shape points, at most 5 m apart (SUMO frame): how near it comes to the ego.
        self.edge_points = {e.getID(): np.concatenate([_densify(self.lane_shape[ln.getID()], 5.0) for ln in e.getLanes()])
                            for e in self._normal}

    def edges_allowing(self, vclass: str) -> list:
        if vclass not in self._allowing:
            self._allowing[vclass] = sorted(e.getID() for e in self._normal if e.allows(vclass))
        return self._allowing[vclass]


@functools.lru_cache(maxsize=8)
def _net_info(net_path: str) -> _NetInfo:
    return _NetInfo(net_path)


class Traffic:
    """SUMO traffic in process. ``start`` -> (``set_ego`` -> ``step`` -> ``actors``)* -> ``close``."""

    def __init__(self, net_path: str | Path, config: TrafficConfig, dt: float, seed: int):
        self.net_path = Path(net_path)
        self.config = config
        self.dt = float(dt)
        self.seed = int(seed)
        info = _net_info(str(self.net_path))
        self.offset = info.offset
        self.vehicle_edges = {vc: info.edges_allowing(vc) for vc in {t.vclass for t in config.vehicle_types} | {"passenger"}}
        self.walk_edges = info.edges_allowing("pedestrian")
        self.edge_length = info.edge_length
        self.drive_lanes = info.drive_lanes
        self._lane_orig = info.lane_orig
        self._lane_shape = info.lane_shape
        self._edge_points = info.edge_points
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, ego_size: tuple[float, float, float] | None = None) -> None:
        import libsumo
        _close_running()
        args = [sumo_binary("sumo"), "--net-file", str(self.net_path), "--step-length", repr(self.dt),
                "--seed", str(self.seed), "--no-step-log", "true", "--no-warnings", "true",
                "--collision.action", "warn", "--collision.check-junctions", "false",
                "--time-to-teleport", repr(self.config.time_to_teleport_s), "--ignore-route-errors", "true",
                "--time-to-impatience", repr(float(self.config.time_to_impatience_s)),
                "--pedestrian.model", self.config.pedestrian_model, "--default.carfollowmodel", "Krauss",
                "--pedestrian.striping.jamtime.crossing", repr(float(self.config.pedestrian_crossing_jam_s))]
        try:
            libsumo.start(args)
        except Exception as exc:  # libsumo raises its own exception types
            raise DataError(f"SUMO could not load the net: {exc}", self.net_path) from None
        _RUNNING[0] = self
        self._started = True
        self._ts = libsumo
        self._rng = np.random.default_rng(self.seed)
        self._next_vehicle = 0
        self._next_person = 0
        self._actor_ids: dict[str, int] = {EGO_SUMO_ID: EGO_ACTOR_ID}
        self._next_actor_id = 1
        self._shape: dict[str, tuple] = {}  # SUMO id -> ((length, width, height), ObjectClass)
        self._steps_since_refill = 0
        self._define_types(ego_size)
        self._signal_lanes = self._collect_signal_lanes()
        self._tls_ids = sorted({s.tls_id for s in self._signal_lanes})
        self._light_states, self._lights = None, []
        self._population_key, self._population = None, None
        self._getters = _fast_getters(libsumo)
        self._ego_added = False
        self._ego_size = ego_size
        self._last_actors: ActorArrays | None = None
        self._held_walkers: dict[str, float] = {}  # SUMO person id -> simulation time it was stopped
        self._ego_xy_sumo: np.ndarray | None = None
        self._stuck_in_ego: dict[str, float] = {}  # SUMO id -> since when it stands overlapping the ego
        self._ego_routes = 0
        # No traffic yet: the caller places the ego first (set_ego, step) and then calls refill(),
        # so that SUMO inserts nobody on top of the ego.

    def close(self) -> None:
        if self._started:
            self._started = False
            if _RUNNING[0] is self:
                _RUNNING[0] = None
                try:
                    self._ts.close()
                except Exception:
                    pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _define_types(self, ego_size) -> None:
        ts = self._ts
        for spec in self.config.vehicle_types:
            ts.vehicletype.copy("DEFAULT_BIKETYPE" if spec.vclass == "bicycle" else "DEFAULT_VEHTYPE", spec.name)
            ts.vehicletype.setVehicleClass(spec.name, spec.vclass)
            ts.vehicletype.setLength(spec.name, spec.length)
            ts.vehicletype.setWidth(spec.name, spec.width)
            ts.vehicletype.setHeight(spec.name, spec.height)
            ts.vehicletype.setMaxSpeed(spec.name, spec.max_speed)
            ts.vehicletype.setMinGap(spec.name, 2.0)
        length, width, height = self.config.pedestrian_size
        ts.vehicletype.copy("DEFAULT_PEDTYPE", "walker")
        ts.vehicletype.setLength("walker", length)
        ts.vehicletype.setWidth("walker", width)
        ts.vehicletype.setHeight("walker", height)
        ts.vehicletype.setMaxSpeed("walker", self.config.pedestrian_max_speed)
        if ego_size is not None:
            ts.vehicletype.copy("DEFAULT_VEHTYPE", "ego")
            ts.vehicletype.setLength("ego", ego_size[0])
            ts.vehicletype.setWidth("ego", ego_size[1])
            ts.vehicletype.setHeight("ego", ego_size[2])
        shares = np.array([t.share for t in self.config.vehicle_types], dtype=np.float64)
        self._type_cdf = np.cumsum(shares / shares.sum()) if len(shares) else shares

    # --- population ------------------------------------------------------------------------------

    def _draw_type(self) -> VehicleTypeSpec:
        index = int(np.searchsorted(self._type_cdf, self._rng.random(), side="right"))
        return self.config.vehicle_types[min(index, len(self.config.vehicle_types) - 1)]

    def _random_route(self, spec: VehicleTypeSpec):
        ts, edges = self._ts, self.vehicle_edges[spec.vclass]
        if not edges:
            return None  # no lane of this map allows the class
        for _ in range(self.config.route_attempts):
            a = edges[int(self._rng.integers(len(edges)))]
            b = edges[int(self._rng.integers(len(edges)))]
            if a == b or self._near_ego(a):
                continue
            route = ts.simulation.findRoute(a, b, vType=spec.name)
            if len(route.edges) >= 2:
                return route.edges
        return None

    def _near_ego(self, edge: str) -> bool:
        """True if any lane of ``edge`` passes within ``spawn_clearance_m`` of the ego: SUMO inserts
        a new car at a free place on its first edge, but does not always see the ego there (it
        knows it on one lane, while the car may straddle two), and would put it on top of it."""
        if self._ego_xy_sumo is None:
            return False
        points = self._edge_points.get(edge)
        if points is None:
            return False
        d2 = np.sum((points - self._ego_xy_sumo) ** 2, axis=1).min()
        return bool(d2 < self.config.spawn_clearance_m ** 2)

    def _walk_stages(self, start: str | None, start_pos: float | None = None):
        ts, edges = self._ts, self.walk_edges
        if not edges:
            return None  # a map without sidewalks
        for _ in range(self.config.route_attempts):
            a = start or edges[int(self._rng.integers(len(edges)))]
            b = edges[int(self._rng.integers(len(edges)))]
            if a == b:
                continue
            a_pos = float(self._rng.uniform(0.0, self.edge_length.get(a, 0.0))) if start_pos is None else start_pos
            b_pos = float(self._rng.uniform(0.0, self.edge_length[b]))
            stages = ts.simulation.findIntermodalRoute(a, b, modes="", departPos=a_pos, arrivalPos=b_pos)
            if stages and all(len(s.edges) for s in stages):
                return a, a_pos, stages
        return None

    def _extend_route(self, vid: str) -> None:
        """Give a vehicle on its last edge a new destination instead of letting it vanish."""
        ts = self._ts
        edges = self.vehicle_edges.get(ts.vehicle.getVehicleClass(vid), self.vehicle_edges["passenger"])
        if not edges:
            return
        for _ in range(self.config.route_attempts):
            try:
                ts.vehicle.changeTarget(vid, edges[int(self._rng.integers(len(edges)))])
                return
            except self._ts.TraCIException:
                continue

    def _spawn_vehicle(self) -> None:
        ts = self._ts
        spec = self._draw_type()
        edges = self._random_route(spec)
        if edges is None:
            return
        vid = f"v{self._next_vehicle}"
        self._next_vehicle += 1
        ts.route.add(f"r_{vid}", edges)
        ts.vehicle.add(vid, f"r_{vid}", typeID=spec.name, depart="now", departLane="best",
                       departPos="random_free", departSpeed="avg")

    def _spawn_pedestrian(self) -> None:
        ts = self._ts
        walk = self._walk_stages(None)
        if walk is None:
            return
        start, start_pos, stages = walk
        pid = f"p{self._next_person}"
        self._next_person += 1
        ts.person.add(pid, start, start_pos, depart=-3, typeID="walker")  # -3: depart now
        for stage in stages:
            ts.person.appendStage(pid, stage)

    def refill(self) -> None:
        """Extend routes of actors about to arrive and re-spawn any that left, keeping the counts."""
        ts = self._ts
        for vid in ts.vehicle.getIDList():
            if vid == EGO_SUMO_ID:
                continue
            if ts.vehicle.getRouteIndex(vid) >= len(ts.vehicle.getRoute(vid)) - 1:
                self._extend_route(vid)
        for pid in ts.person.getIDList():
            if ts.person.getRemainingStages(pid) <= 1:
                try:
                    walk = self._walk_stages(ts.person.getEdges(pid)[-1], None)
                    for stage in walk[2] if walk is not None else ():
                        ts.person.appendStage(pid, stage)
                except ts.TraCIException:
                    pass  # this walker leaves at its destination and is re-spawned
        vehicles_now = ts.vehicle.getIDCount() - int(EGO_SUMO_ID in ts.vehicle.getIDList()) + len(ts.simulation.getPendingVehicles())
        for _ in range(self.config.vehicles - vehicles_now):
            try:
                self._spawn_vehicle()
            except ts.TraCIException:
                pass  # an unroutable draw: the next refill tries another
        for _ in range(self.config.pedestrians - ts.person.getIDCount()):
            try:
                self._spawn_pedestrian()
            except ts.TraCIException:
                pass

    # --- ego -------------------------------------------------------------------------------------

    def set_ego(self, center_xy_map, yaw: float, speed: float, length: float) -> None:
        """Place the ego (box centre, map frame) in SUMO so that traffic reacts to it.

        Off the network (farther than SUMO's matching distance from any lane) the ego is left out
        of SUMO for that tick: traffic then cannot see it, but the world goes on."""
        ts = self._ts
        self._hold_walkers(np.asarray(center_xy_map, dtype=np.float64), float(yaw), float(speed), float(length))
        self._remove_stuck_in_ego(np.asarray(center_xy_map, dtype=np.float64), float(yaw), float(length))
        self._ego_xy_sumo = map_to_sumo_xy(center_xy_map, self.offset)
        front = map_to_sumo_xy(center_xy_map, self.offset) + 0.5 * length * np.array([np.cos(yaw), np.sin(yaw)])
        if not self._ego_added and not self._add_ego(front):
            return
        angle = yaw_to_sumo_angle(yaw)
        for attempt in range(2):
            try:
                ts.vehicle.moveToXY(EGO_SUMO_ID, "", -1, float(front[0]), float(front[1]), angle, keepRoute=2)
                ts.vehicle.setSpeed(EGO_SUMO_ID, max(0.0, float(speed)))
                return
            except ts.TraCIException:
                # Off the network (can't be mapped), or unknown to SUMO (then add it again, once).
                if attempt or EGO_SUMO_ID in ts.vehicle.getIDList() or not self._add_ego(front):
                    return

    def _hold_walkers(self, center_xy_map: np.ndarray, yaw: float, speed: float, length: float) -> None:
        """Stop SUMO walkers that are about to walk into the standing or crawling ego.

        SUMO's walkers see vehicles only on crossings, and its pavements and walking areas (guessed
        by netconvert) cut into the map's driving lanes at junction corners: a walker there walks
        straight through a car standing in its lane. One whose next ``WALKER_HOLD_LOOKAHEAD_S`` of
        walking would enter the ego's box (plus a margin) is stopped until that is no longer so or
        the ego moves on; one still stopped after ``walker_hold_max_s`` is taken out of the
        simulation. Uses last tick's positions, and libsumo only for the few walkers whose state
        changes (no per-actor calls per tick)."""
        held, now = self._held_walkers, None
        a = self._last_actors
        into = set()
        if a is not None and len(a.ids) and speed < WALKER_HOLD_EGO_SPEED_MPS:
            # only walkers that can be near the box: a cheap distance test first (200 actors a tick)
            reach = 0.5 * length + 2.0 * WALKER_HOLD_MARGIN_M + 5.0 + self.config.pedestrian_max_speed * WALKER_HOLD_LOOKAHEAD_S
            d = a.center[:, :2] - center_xy_map
            peds = np.flatnonzero((a.label == int(ObjectClass.PEDESTRIAN)) & (np.einsum("ij,ij->i", d, d) < reach * reach))
            if len(peds):
                heading = np.stack([np.cos(a.yaw[peds]), np.sin(a.yaw[peds])], -1)
                walk = np.maximum(a.speed[peds], self.config.pedestrian_max_speed) * WALKER_HOLD_LOOKAHEAD_S
                probe = a.center[peds, :2] + heading * walk[:, None] - center_xy_map
                c, s_ = np.cos(yaw), np.sin(yaw)
                width = self._ego_size[1] if self._ego_size is not None else 1.9
                half_l = 0.5 * length + WALKER_HOLD_MARGIN_M + 0.5 * a.size[peds, 0]
                half_w = 0.5 * width + WALKER_HOLD_MARGIN_M + 0.5 * a.size[peds, 1]
                hit = (np.abs(probe @ np.array([c, s_])) < half_l) & (np.abs(probe @ np.array([-s_, c])) < half_w)
                into = {a.sumo_ids[k] for k in peds[hit]}
        if not into and not held:
            return
        ts = self._ts
        now = self.time
        for pid in list(held):
            timed_out = now - held[pid] > self.config.walker_hold_max_s
            if pid not in into or timed_out:
                del held[pid]
                try:
                    if timed_out:
                        # Stuck at the ego, which may be waiting for it in turn (a walker head-on in
                        # front of the bumper): SUMO's walkers cannot step round a car, so it leaves
                        # (refill puts a new one elsewhere), as SUMO teleports gridlocked vehicles.
                        ts.person.remove(pid)
                    else:
                        ts.person.setSpeed(pid, self.config.pedestrian_max_speed)
                except ts.TraCIException:
                    pass  # it has left the simulation
        for pid in into:
            if pid not in held:
                try:
                    ts.person.setSpeed(pid, 0.0)
                    held[pid] = now
                except ts.TraCIException:
                    pass

    def _remove_stuck_in_ego(self, center_xy_map: np.ndarray, yaw: float, length: float) -> None:
        """Take out road users that have stood overlapping the ego's box for ``stuck_in_ego_s``.

        After a collision SUMO (``--collision.action warn``) leaves the other one where it is: a car
        that drove into the ego then waits behind it at a negative gap, and the ego cannot pull
        away from a box inside its own. The collision is scored when it happens; taking the other
        one out afterwards (as SUMO teleports gridlocked vehicles) lets both go on. Last tick's
        positions, boxes approximated by their along/across extents; libsumo only to remove."""
        stuck = self._stuck_in_ego
        a = self._last_actors
        overlapping = set()
        if a is not None and len(a.ids):
            rel = a.center[:, :2] - center_xy_map
            # a box can overlap the ego only if its centre is within both half-diagonals (+ margin)
            reach = 0.5 * math.hypot(length, 3.0) + 0.5 * np.hypot(a.size[:, 0], a.size[:, 1]) + 0.5
            close = np.flatnonzero(np.einsum("ij,ij->i", rel, rel) < reach * reach)
            a = ActorArrays([a.sumo_ids[k] for k in close], a.ids[close], a.center[close], a.size[close], a.yaw[close],
                            a.speed[close], a.label[close])
            rel = rel[close]
            c, s_ = np.cos(yaw), np.sin(yaw)
            rel_yaw = a.yaw - yaw
            along_ext = 0.5 * (np.abs(a.size[:, 0] * np.cos(rel_yaw)) + np.abs(a.size[:, 1] * np.sin(rel_yaw)))
            across_ext = 0.5 * (np.abs(a.size[:, 0] * np.sin(rel_yaw)) + np.abs(a.size[:, 1] * np.cos(rel_yaw)))
            width = self._ego_size[1] if self._ego_size is not None else 1.9
            inside = ((np.abs(rel @ np.array([c, s_])) < 0.5 * length + along_ext)
                      & (np.abs(rel @ np.array([-s_, c])) < 0.5 * width + across_ext) & (a.speed < 0.5))
            overlapping = {a.sumo_ids[k] for k in np.flatnonzero(inside)}
        if not overlapping and not stuck:
            return
        now = self.time
        for sid in list(stuck):
            if sid not in overlapping:
                del stuck[sid]
        ts = self._ts
        for sid in overlapping:
            since = stuck.setdefault(sid, now)
            if now - since >= self.config.stuck_in_ego_s:
                del stuck[sid]
                self._held_walkers.pop(sid, None)
                try:
                    (ts.person if sid in self._population[1] else ts.vehicle).remove(sid)
                except ts.TraCIException:
                    pass

    def _add_ego(self, front_sumo) -> bool:
        ts = self._ts
        try:
            edge, _, _ = ts.simulation.convertRoad(float(front_sumo[0]), float(front_sumo[1]), False, "passenger")
        except ts.TraCIException:
            return False  # nowhere near a road
        if f"r_ego{self._ego_routes}" not in ts.route.getIDList():
            ts.route.add(f"r_ego{self._ego_routes}", [edge])
        ts.vehicle.add(EGO_SUMO_ID, f"r_ego{self._ego_routes}",
                       typeID="ego" if "ego" in ts.vehicletype.getIDList() else "DEFAULT_VEHTYPE", depart="now")
        self._ego_routes += 1
        ts.vehicle.setSpeedMode(EGO_SUMO_ID, 0)
        ts.vehicle.setLaneChangeMode(EGO_SUMO_ID, 0)
        self._ego_added = True
        return True

    def ego_position_sumo(self) -> tuple | None:
        """Where SUMO has the ego's front bumper (SUMO frame), or None when it is not in SUMO."""
        ts = self._ts
        return tuple(ts.vehicle.getPosition(EGO_SUMO_ID)) if EGO_SUMO_ID in ts.vehicle.getIDList() else None

    # --- stepping and reading --------------------------------------------------------------------

    def advance(self, center_xy_map, yaw: float, speed: float, length: float) -> None:
        """Place the ego (``set_ego``) and step: the world's launch of its next tick. ``TrafficProcess``
        returns at once and steps in its own process; here it is done when this returns."""
        self.set_ego(center_xy_map, yaw, speed, length)
        self.step()

    def observe(self) -> tuple:
        """(``actors()``, ``traffic_lights()``) after the last step."""
        return self.actors(), self.traffic_lights()

    def step(self) -> None:
        self._ts.simulationStep()
        self._steps_since_refill += 1
        if self._steps_since_refill * self.dt >= self.config.refill_period_s - 1e-9:
            self._steps_since_refill = 0
            self.refill()

    @property
    def time(self) -> float:
        return float(self._ts.simulation.getTime())

    def _actor_shape(self, sumo_id: str, person: bool) -> tuple:
        """Box size from the actor's SUMO vType and its class (vClass bicycle -> CYCLIST), once per actor."""
        shape = self._shape.get(sumo_id)
        if shape is None:
            domain = self._ts.person if person else self._ts.vehicle
            size = (domain.getLength(sumo_id), domain.getWidth(sumo_id), domain.getHeight(sumo_id))
            if person:
                label = ObjectClass.PEDESTRIAN
            else:
                label = ObjectClass.CYCLIST if domain.getVehicleClass(sumo_id) == "bicycle" else ObjectClass.VEHICLE
            shape = self._shape[sumo_id] = (size, int(label))
        return shape

    def _actor_id(self, sumo_id: str) -> int:
        actor_id = self._actor_ids.get(sumo_id)
        if actor_id is None:
            actor_id = self._actor_ids[sumo_id] = self._next_actor_id
            self._next_actor_id += 1
        return actor_id

    def actors(self) -> ActorArrays:
        """All SUMO road users except the ego, map frame, box centres (z: box centre above ground)."""
        ts = self._ts
        key = (ts.vehicle.getIDList(), ts.person.getIDList())
        if key != self._population_key:  # ids, sizes and labels change only when someone comes or goes
            self._population_key = key
            vids = tuple(v for v in key[0] if v != EGO_SUMO_ID)
            shapes = [self._actor_shape(i, False) for i in vids] + [self._actor_shape(i, True) for i in key[1]]
            self._population = (vids, key[1], vids + key[1],
                                np.array([self._actor_id(i) for i in vids + key[1]], dtype=np.int64),
                                np.array([sh[0] for sh in shapes], dtype=np.float64).reshape(-1, 3),
                                np.array([sh[1] for sh in shapes], dtype=np.int32))
        vids, pids, sumo_ids, ids, size, label = self._population
        f, n = self._getters, len(sumo_ids)
        # map + fromiter: no Python loop or intermediate lists around the 3 x n libsumo calls (-25 %)
        pos = np.fromiter(chain.from_iterable(chain(map(f.v_pos, vids), map(f.p_pos, pids))), np.float64,
                          3 * n).reshape(-1, 3)
        yaw = sumo_angle_to_yaw(np.fromiter(chain(map(f.v_angle, vids), map(f.p_angle, pids)), np.float64, n))
        speed = np.fromiter(chain(map(f.v_speed, vids), map(f.p_speed, pids)), np.float64, n)
        heading = np.stack([np.cos(yaw), np.sin(yaw)], -1)
        center = pos
        center[:, :2] -= self.offset + 0.5 * size[:, :1] * heading  # front bumper -> box centre
        center[:, 2] += 0.5 * size[:, 2]
        self._last_actors = ActorArrays(list(sumo_ids), ids, center, size, yaw, speed, label)
        return self._last_actors

    def _collect_signal_lanes(self) -> list[SignalLane]:
        ts = self._ts
        by_lane: dict[tuple, list] = {}
        for tls in ts.trafficlight.getIDList():
            for index, links in enumerate(ts.trafficlight.getControlledLinks(tls)):
                for in_lane, out_lane, via in links:
                    if in_lane.startswith(":") or in_lane not in self._lane_shape or out_lane not in self._lane_shape:
                        continue  # pedestrian crossings start on walking areas
                    direction = next((l[6] for l in ts.lane.getLinks(in_lane) if l[4] == via), "s")
                    out_shape = self._lane_shape[out_lane]
                    d = out_shape[1] - out_shape[0]
                    via_shape = np.asarray(ts.lane.getShape(via), dtype=np.float64)[:, :2] if via else out_shape[:1]
                    by_lane.setdefault((tls, in_lane), []).append(SignalLink(
                        index, direction, sumo_to_map_xy(via_shape, self.offset),
                        sumo_to_map_xy(out_shape[0], self.offset), float(np.arctan2(d[1], d[0]))))
        lanes = []
        for (tls, in_lane), links in by_lane.items():
            shape = self._lane_shape[in_lane]
            d = shape[-1] - shape[-2]
            lanes.append(SignalLane(tls, in_lane, links, sumo_to_map_xy(shape[-1], self.offset),
                                    float(np.arctan2(d[1], d[0])), self._lane_orig.get(in_lane, ())))
        return lanes

    @property
    def signal_lanes(self) -> list[SignalLane]:
        """The signalised incoming lanes (after ``start``). Set their ``map_lane`` fields (and the
        links') to annotate the lights with HD map lanes, then call ``signals_changed``."""
        return self._signal_lanes

    def signals_changed(self) -> None:
        self._light_states = None

    def switch_off(self, tls_ids) -> None:
        """Turn traffic lights off for good (SUMO then applies right of way) and stop reporting them."""
        tls_ids = set(tls_ids)
        for tls in sorted(tls_ids):
            self._ts.trafficlight.setProgram(tls, "off")
        self.forget_signals(tls_ids)

    def forget_signals(self, tls_ids: set) -> None:
        """Stop reporting these traffic lights (``switch_off``'s bookkeeping, without SUMO)."""
        self._signal_lanes = [s for s in self._signal_lanes if s.tls_id not in tls_ids]
        self._tls_ids = [t for t in self._tls_ids if t not in tls_ids]
        self._light_states = None

    def light_states(self) -> tuple:
        """SUMO's signal string of every reported traffic light, in ``tls_ids`` order."""
        return tuple(self._ts.trafficlight.getRedYellowGreenState(tls) for tls in self._tls_ids)

    @property
    def tls_ids(self) -> list:
        return self._tls_ids

    def traffic_lights(self) -> list[StopLineSignal]:
        """One signal per (traffic light, incoming driving lane), at the lane's stop line.

        The list is rebuilt only when a light changes: treat it as read-only."""
        return self.lights_for(self.light_states())

    def lights_for(self, states: tuple) -> list[StopLineSignal]:
        """``traffic_lights`` for the signal strings ``states`` (``light_states``' order)."""
        if states == self._light_states:
            return self._lights
        by_tls = dict(zip(self._tls_ids, states))
        order = (LightState.GREEN, LightState.YELLOW, LightState.RED, LightState.OFF, LightState.UNKNOWN)
        out = []
        for s in self._signal_lanes:
            chars = by_tls[s.tls_id]
            movements, lane_states = {}, {}
            for link in s.links:
                state = _SIGNAL_STATE.get(chars[link.index], LightState.UNKNOWN) if link.index < len(chars) else LightState.UNKNOWN
                movements[link.direction] = min(movements.get(link.direction, state), state, key=order.index)
                if link.map_lane is not None:
                    lane_states[link.map_lane] = min(lane_states.get(link.map_lane, state), state, key=order.index)
            state = movements["s"] if "s" in movements else min(movements.values(), key=order.index)
            if s.map_lane is not None:
                lanes = (s.map_lane,) + tuple(dict.fromkeys(l.map_lane for l in s.links if l.map_lane is not None))
            else:
                lanes = (s.odr_lane,) if s.odr_lane else ()
            out.append(StopLineSignal(f"{s.tls_id}:{s.lane}", state, s.position.copy(), lanes, s.yaw, s.lane,
                                      s.tls_id, movements, lane_states, s.map_signal_id))
        self._light_states, self._lights = states, out
        return out

    def random_drive_pose(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """A pose (x, y, yaw; map frame) in the middle of a random driving lane."""
        if not self.drive_lanes:
            raise DataError("the SUMO net has no lane for cars", self.net_path)
        lane, length = self.drive_lanes[int(rng.integers(len(self.drive_lanes)))]
        shape = self._lane_shape[lane]
        seg = np.linalg.norm(np.diff(shape, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        i = int(np.clip(np.searchsorted(s, s[-1] / 2) - 1, 0, len(seg) - 1))
        t = (s[-1] / 2 - s[i]) / max(seg[i], 1e-9)
        xy = shape[i] + t * (shape[i + 1] - shape[i])
        d = shape[i + 1] - shape[i]
        xy_map = sumo_to_map_xy(xy, self.offset)
        return float(xy_map[0]), float(xy_map[1]), float(np.arctan2(d[1], d[0]))


def _fast_getters(libsumo):
    """libsumo's per-actor getters. The SWIG module ``libsumo._libsumo`` takes the same arguments
    as the documented wrappers without their Python layer, which is a third of the read-back time
    for 200 actors; fall back to the documented API where it is missing."""
    import types
    raw = getattr(libsumo, "_libsumo", None)
    names = {"v_pos": ("vehicle_getPosition3D", libsumo.vehicle.getPosition3D),
             "v_angle": ("vehicle_getAngle", libsumo.vehicle.getAngle),
             "v_speed": ("vehicle_getSpeed", libsumo.vehicle.getSpeed),
             "p_pos": ("person_getPosition3D", libsumo.person.getPosition3D),
             "p_angle": ("person_getAngle", libsumo.person.getAngle),
             "p_speed": ("person_getSpeed", libsumo.person.getSpeed)}
    return types.SimpleNamespace(**{k: getattr(raw, fast, None) or slow for k, (fast, slow) in names.items()})


_RUNNING: list[Traffic | None] = [None]


def _close_running() -> None:
    import libsumo
    previous = _RUNNING[0]
    if previous is not None:
        previous.close()
    try:  # a simulation started outside this module (or left by a crash) also blocks libsumo.start
        libsumo.close()
    except Exception:
        pass
