"""SUMO in its own process: ``TrafficProcess`` is a ``sim.traffic.Traffic`` that steps in a child.

Why: libsumo's ``simulationStep`` runs in the calling thread and holds the GIL for its whole
duration (about 0.3 ms on Town01 with 200 road users, plus 0.25 ms placing the ego and reading the
actors back), so in process nothing else of the world or of its caller runs meanwhile. In a child
process SUMO steps on the other core while this one casts the lidar and the caller plans: the world
launches the step to tick t + 1 (``advance``) at the end of tick t and collects it (``observe``) at
the start of tick t + 1. ``Traffic`` has the same two calls, done at once, so both give the same
states bit for bit (tested).

The child is this module run with ``python -m`` (``sim.child_process``). Per tick it sends the
actors' dynamic state as one (n, 5) array, the population (ids, sizes, classes) only when someone
came or went and the signal strings only when a light changed.
"""

from __future__ import annotations

import sys
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from adstack.errors import DataError, UserError
from sim import child_process
from sim.traffic import ActorArrays, Traffic, TrafficConfig

# What the parent may ask of the child's Traffic besides advance/observe: setup and test queries.
_CALLS = frozenset({"set_ego", "step", "refill", "switch_off", "ego_position_sumo"})
_ERRORS = {"DataError": DataError, "UserError": UserError}


class TrafficProcess(child_process.ChildProxy):
    """``Traffic``'s interface (``start``, ``set_ego``, ``step``, ``refill``, ``advance``,
    ``observe``, ``actors``, ``traffic_lights``, ``signal_lanes``, ``switch_off``, ``close``) with
    SUMO in a child process. ``advance`` returns at once; the next call that needs SUMO waits for it."""

    WHAT = "SUMO"

    def __init__(self, net_path: str | Path, config: TrafficConfig, dt: float, seed: int):
        # The net's geometry for this process (offsets, lanes for random poses, signal building);
        # never started here.
        self._local = Traffic(net_path, config, dt, seed)
        self.net_path, self.config, self.dt, self.seed = self._local.net_path, config, self._local.dt, self._local.seed
        self.offset = self._local.offset
        self._start("sim.traffic_process")
        self._expected: deque = deque()  # the kinds of the replies not read yet, in order
        self._observation: tuple | None = None  # the last (actors, lights) read
        self._population: tuple | None = None  # (sumo_ids, ids, size, label) as last sent
        self._states: tuple = ()
        self._time = 0.0
        # The child loads SUMO's libraries and the net while this process sets up the rest.
        self._request(("init", str(self.net_path), config, self.dt, self.seed), "ok")

    # --- the wire --------------------------------------------------------------------------------

    def _request(self, message: tuple, reply_kind: str) -> None:
        """Send ``message``; its reply, of ``reply_kind``, is read in turn by ``_receive_one``."""
        try:
            self._send(message)
        except RuntimeError:
            self._expected.clear()
            raise
        self._expected.append(reply_kind)

    def _receive_one(self):
        kind = self._expected.popleft()
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self._expected.clear()
            raise self._ended() from None
        if status == "error":
            error_type, text = value
            raise _ERRORS.get(error_type, RuntimeError)(text if error_type in _ERRORS else f"SUMO process: {text}")
        if kind == "observation":
            self._observation = self._unpack(value)
        return value

    def _call(self, name: str, *args):
        """Send one request and wait for its reply (after any still outstanding)."""
        self._request(("call", name, args), "ok")
        while len(self._expected) > 1:
            self._receive_one()
        return self._receive_one()

    def _unpack(self, payload: tuple) -> tuple:
        time_s, population, dynamic, states = payload
        if population is not None:
            self._population = population
        if states is not None:
            self._states = states
        self._time = time_s
        sumo_ids, ids, size, label = self._population
        actors = ActorArrays(list(sumo_ids), ids, np.ascontiguousarray(dynamic[:, :3]), size,
                             np.ascontiguousarray(dynamic[:, 3]), np.ascontiguousarray(dynamic[:, 4]), label)
        return actors, self._local.lights_for(self._states)

    # --- Traffic's interface -----------------------------------------------------------------------

    def start(self, ego_size: tuple[float, float, float] | None = None) -> None:
        lanes, tls_ids = self._call("start", ego_size)
        local = self._local
        local._signal_lanes, local._tls_ids = lanes, list(tls_ids)
        local._light_states, local._lights = None, []

    @property
    def signal_lanes(self):
        """The signalised incoming lanes, this process's copies: annotate them here (see ``Traffic``)."""
        return self._local.signal_lanes

    @property
    def tls_ids(self) -> list:
        return self._local.tls_ids

    def signals_changed(self) -> None:
        self._local.signals_changed()

    def switch_off(self, tls_ids) -> None:
        tls_ids = set(tls_ids)
        self._call("switch_off", sorted(tls_ids))
        self._local.forget_signals(tls_ids)

    def set_ego(self, center_xy_map, yaw: float, speed: float, length: float) -> None:
        self._call("set_ego", _xy(center_xy_map), float(yaw), float(speed), float(length))

    def step(self) -> None:
        self._call("step")

    def refill(self) -> None:
        self._call("refill")

    def ego_position_sumo(self):
        return self._call("ego_position_sumo")

    def random_drive_pose(self, rng: np.random.Generator):
        return self._local.random_drive_pose(rng)

    def advance(self, center_xy_map, yaw: float, speed: float, length: float) -> None:
        """Start placing the ego and stepping; returns at once. ``observe`` collects the result."""
        self._request(("advance", _xy(center_xy_map), float(yaw), float(speed), float(length)), "observation")

    def observe(self) -> tuple:
        """(actors, traffic lights) after the last step: waits for an ``advance`` still running."""
        if not self._expected:
            self._request(("observe",), "observation")
        while self._expected:
            self._receive_one()
        return self._observation

    def actors(self) -> ActorArrays:
        return self.observe()[0]

    def traffic_lights(self):
        return self.observe()[1]

    @property
    def time(self) -> float:
        return self._time


def _xy(values) -> tuple:
    return float(values[0]), float(values[1])


# --- the child -------------------------------------------------------------------------------------

def _observation(traffic: Traffic, sent: dict) -> tuple:
    actors = traffic.actors()
    population = None
    if traffic._population is not sent.get("population"):
        sent["population"] = traffic._population
        population = (tuple(actors.sumo_ids), actors.ids, actors.size, actors.label)
    dynamic = np.empty((len(actors.ids), 5))
    dynamic[:, :3] = actors.center
    dynamic[:, 3] = actors.yaw
    dynamic[:, 4] = actors.speed
    states = traffic.light_states()
    new_states = None
    if states != sent.get("states"):
        sent["states"] = new_states = states
    return traffic.time, population, dynamic, new_states


def serve(conn: Connection) -> None:
    """Answer the parent's requests until it closes the connection or asks to close."""
    traffic: Traffic | None = None
    sent: dict = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        op = message[0]
        try:
            if op == "advance":
                traffic.advance(*message[1:])
                reply = ("ok", _observation(traffic, sent))
            elif op == "observe":
                reply = ("ok", _observation(traffic, sent))
            elif op == "call" and message[1] == "start":
                traffic.start(*message[2])
                sent.clear()
                reply = ("ok", (traffic.signal_lanes, traffic.tls_ids))
            elif op == "call" and message[1] in _CALLS:
                reply = ("ok", getattr(traffic, message[1])(*message[2]))
            elif op == "init":
                traffic = Traffic(*message[1:])
                reply = ("ok", None)
            elif op == "close":
                break
            else:
                reply = ("error", ("ValueError", f"unknown request {op!r}"))
        except Exception as exc:  # reported to the parent, which raises it there
            reply = ("error", (type(exc).__name__, str(exc)))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    if traffic is not None:
        traffic.close()


def main(argv: list[str]) -> int:
    conn = child_process.connect(argv)
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
