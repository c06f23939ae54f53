"""The spinning lidar's casts in their own process: ``LidarProcess``, used by ``SpinningLidar(process=True)``.

Why: in a thread, every hand-over of a cast needs the GIL, which the world's caller (a planner, a
controller, scoring, logging: all Python) holds most of the time, so the background thread picks
up late and the caller ends up waiting for it or casting itself. A process needs no GIL: the
caller's thread prepares a tick's cast (pose, primitives and noise key: everything taken from that
tick's world state, ``Lidar._prepare``), sends it and goes on; the child casts into ray buffers in
shared memory and, for the share that completes a revolution, compacts the returns into points
there too. The caller copies a frame out when it is delivered. The rays are cast by the same
kernels from the same inputs, so the frames are the same, bit for bit, as in process (tested).

Shared memory: one anonymous ``memfd`` holding two revolutions (the ``SpinningLidar``'s two buffer
sets, used in turn), each with its ray buffers and its compacted points, labels and actor ids.
"""

from __future__ import annotations

import mmap
import os
import sys
from multiprocessing.connection import Connection

import numpy as np

from sim import child_process

_RAY_TYPES = (np.float32, np.float32, np.int32, np.int64)  # range, intensity, label, actor (ray_buffers)


def _set_layout(columns: int, channels: int) -> tuple[list, int]:
    """(dtype, shape, byte offset) of every array of one buffer set, and the set's size in bytes."""
    n = columns * channels
    arrays = [(dt, (columns, channels)) for dt in _RAY_TYPES] + [(np.float32, (n, 4)), (np.int32, (n,)), (np.int64, (n,))]
    layout, offset = [], 0
    for dtype, shape in arrays:
        layout.append((dtype, shape, offset))
        offset += int(np.prod(shape)) * np.dtype(dtype).itemsize
        offset = (offset + 63) // 64 * 64
    return layout, offset


def _views(buffer, columns: int, channels: int, set_index: int) -> tuple[tuple, tuple]:
    """Set ``set_index``'s arrays in ``buffer``: (ray buffers, (points, labels, actor ids))."""
    layout, size = _set_layout(columns, channels)
    arrays = [np.ndarray(shape, dtype, buffer, set_index * size + offset) for dtype, shape, offset in layout]
    return tuple(arrays[:4]), tuple(arrays[4:])


class LidarProcess(child_process.ChildProxy):
    """Casts of one ``Lidar`` (its config and noise table) in a child process; see the module doc."""

    WHAT = "lidar"

    def __init__(self, lidar):
        cfg = lidar.config
        self.columns, self.channels = cfg.columns, cfg.channels
        size = 2 * _set_layout(cfg.columns, cfg.channels)[1]
        fd = os.memfd_create("adstack-lidar")
        try:
            os.ftruncate(fd, size)
            self._memory = mmap.mmap(fd, size)
            self._start("sim.lidar_process", fd)
        finally:
            os.close(fd)
        self.sets = tuple(_views(self._memory, cfg.columns, cfg.channels, i) for i in range(2))
        self._expected = 0  # replies not read yet
        self._frames: dict[int, int] = {}  # buffer set -> points compacted there, not yet copied out
        self.cast_cpu_s = 0.0  # the child's CPU time in casts and compaction
        self._conn.send(("init", cfg, lidar._gauss_table))  # it loads the kernels while this process goes on

    def cast(self, set_index: int, job: tuple, start_col: int, end_col: int, compact: tuple | None = None) -> None:
        """Cast columns [start_col, end_col) of a prepared job (``Lidar._prepare``) into buffer set
        ``set_index``; returns at once. ``compact``: (first, end) columns of a revolution that this
        completes, to compact into points for ``frame``."""
        self._send(("cast", set_index, job[:-1], start_col, end_col, compact))
        self._expected += compact is not None

    def compact(self, set_index: int, first_col: int, end_col: int) -> None:
        """Compact columns [first_col, end_col) of buffer set ``set_index`` for ``frame`` once the
        casts sent before are done (for a revolution whose last share this process cast itself)."""
        self._send(("compact", set_index, first_col, end_col))
        self._expected += 1

    def frame(self, set_index: int) -> tuple:
        """(points, labels, actor ids) compacted in buffer set ``set_index``, copied out; waits for them."""
        while set_index not in self._frames:
            self._receive()
        n = self._frames.pop(set_index)
        points, labels, actors = self.sets[set_index][1]
        return points[:n].copy(), labels[:n].copy(), actors[:n].copy()

    def discard_frames(self) -> None:
        """Forget frames not copied out (a restart): their buffer sets are cast into afresh."""
        self._frames.clear()

    def sync(self) -> None:
        """Wait until every cast sent so far is done."""
        if self._conn is None:
            return
        self._send(("sync",))
        self._expected += 1
        while self._expected:
            self._receive()

    def _receive(self) -> None:
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            self._expected = 0
            raise self._ended() from None
        self._expected -= 1
        if reply[0] == "error":
            raise RuntimeError(f"lidar process: {reply[1]}")
        self.cast_cpu_s = reply[-1]
        if reply[0] == "frame":
            self._frames[reply[1]] = reply[2]


# --- the child -------------------------------------------------------------------------------------

def serve(conn: Connection, memory) -> None:
    from sim.lidar import Lidar, _compact_into

    message = conn.recv()
    config, gauss_table = message[1], message[2]
    lidar = Lidar(config, seed=0)  # compiles or loads the kernels
    lidar._gauss_table = gauss_table  # the parent's (drawn from its seed): the same noise
    sets = tuple(_views(memory, config.columns, config.channels, i) for i in range(2))
    error = None  # a failed cast, reported with the next reply
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        op, reply = message[0], None
        if op in ("cast", "compact"):
            if op == "cast":
                _, set_index, job, start, end, compact = message
            else:
                (_, set_index, *compact), job = message, None
            rays, out = sets[set_index]
            try:
                if job is not None:
                    lidar._cast_columns(job + ([None],), start, end, rays)
                if compact is not None:
                    n = _compact_into(*rays, compact[0], compact[1], lidar._cos_el, lidar._sin_el, lidar._cos_az,
                                      lidar._sin_az, *out)
                    reply = ("frame", set_index, n, lidar.cast_cpu_s)
            except Exception as exc:  # the parent raises it on its next reply
                error = error or f"{type(exc).__name__}: {exc}"
            if compact is not None and reply is None:
                reply = ("error", error)
        elif op == "sync":
            reply = ("sync", lidar.cast_cpu_s)
        elif op == "close":
            break
        if reply is not None:
            if error is not None:
                reply, error = ("error", error), None
            try:
                conn.send(reply)
            except OSError:
                break


def main(argv: list[str]) -> int:
    conn = child_process.connect(argv)
    fd = int(argv[1])
    memory = mmap.mmap(fd, os.fstat(fd).st_size)
    os.close(fd)
    try:
        serve(conn, memory)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
