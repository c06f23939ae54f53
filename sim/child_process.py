"""Children of the world's process: SUMO (``sim.traffic_process``) and the lidar (``sim.lidar_process``).

Each is ``python -m <module> <fd>...`` with one end of a socket pair for
``multiprocessing.connection`` (pickle between two processes of this program: nothing from a file
or the network is unpickled) and any other descriptors it needs (shared memory). A child exits when
its connection closes, so it does not outlive its parent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

CLOSE_TIMEOUT_S = 5.0


def spawn(module: str, *fds: int) -> tuple[subprocess.Popen, Connection]:
    """Start ``python -m module <connection fd> <fds>...``; returns the process and this end."""
    parent, child = Pipe(duplex=True)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    passed = (child.fileno(),) + tuple(fds)
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, passed)], pass_fds=passed, env=env,
                            stdin=subprocess.DEVNULL)
    child.close()
    return proc, parent


def stop(proc: subprocess.Popen, conn: Connection) -> None:
    """Ask the child to close and close the connection. A thread waits for it to end (and kills it
    if it hangs): its shutdown (SUMO's, the interpreter's: 0.1-0.3 s) need not hold up the caller."""
    try:
        conn.send(("close",))
    except OSError:
        pass
    conn.close()
    threading.Thread(target=_reap, args=(proc,), name="adstack-reap", daemon=True).start()


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def as_batch() -> None:
    """In a child: SCHED_BATCH, so that its wake-ups (one a tick, when the world sends it work) do
    not preempt the world's thread, which is the caller's critical path; it still takes any idle core."""
    if hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            pass


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time (user + system) the child has used so far; 0.0 where /proc cannot tell (it ended)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def ended(proc: subprocess.Popen, what: str) -> RuntimeError:
    return RuntimeError(f"the {what} process ended (exit code {proc.poll()}); see its messages above")


def connect(argv: list[str]) -> Connection:
    """In a child's ``main``: SCHED_BATCH, then the connection to the parent (the first argument)."""
    as_batch()
    return Connection(int(argv[0]))


class ChildProxy:
    """The parent's side of one child: ``_start`` it, ``_send`` to it, ``close`` it (also when
    garbage collected). ``WHAT`` names it in errors."""

    WHAT = "child"

    def _start(self, module: str, *fds: int) -> None:
        self._proc, self._conn = spawn(module, *fds)

    def _send(self, message: tuple) -> None:
        if self._conn is None:
            raise RuntimeError(f"{type(self).__name__} used after close")
        try:
            self._conn.send(message)
        except OSError:  # BrokenPipeError, ConnectionResetError: it has gone
            raise self._ended() from None

    def _ended(self) -> RuntimeError:
        return ended(self._proc, self.WHAT)

    @property
    def alive(self) -> bool:
        return self._conn is not None and self._proc.poll() is None

    @property
    def cpu_s(self) -> float:
        """CPU seconds the child has used so far (0.0 once it has ended)."""
        return cpu_seconds(self._proc)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            stop(self._proc, conn)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
