"""Live view (adstack/viz.py): a real foxglove-sdk server on 127.0.0.1 read by a minimal WebSocket
client speaking the Foxglove ``foxglove.sdk.v1`` subprotocol, and the logs opened with mcap-ros2-support."""

import base64
import json
import os
import socket
import struct

import numpy as np
import pytest

from adstack import topics
from adstack.bag import BagWriter
from adstack.types import Boxes, EgoState, ObjectClass, PointCloud, Trajectory
from adstack.viz import CHANNELS, LiveView, find_log, play_log


class FoxgloveClient:
    """Just enough of RFC 6455 and the Foxglove WebSocket protocol for a test (no dependency)."""

    def __init__(self, port: int, protocol: str = "foxglove.sdk.v1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.handshake = head.decode().lower()

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self._recv()

    def frame(self) -> tuple[int, bytes]:
        self._need(2)
        opcode, n, offset = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
        if n == 126:
            self._need(4)
            n, offset = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, offset = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(offset + n)
        payload, self.buf = self.buf[offset:offset + n], self.buf[offset + n:]
        return opcode, payload

    def send_json(self, data: dict) -> None:
        payload, mask = json.dumps(data).encode(), os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(header + mask + masked)

    def advertised(self) -> dict:
        """{topic: channel} from the server's first ``advertise`` message."""
        channels = {}
        while not channels:
            opcode, payload = self.frame()
            if opcode == 1:
                msg = json.loads(payload)
                if msg.get("op") == "advertise":
                    channels = {c["topic"]: c for c in msg["channels"]}
        return channels

    def subscribe(self, channel_ids: dict) -> None:
        """``channel_ids``: subscription id -> channel id."""
        self.send_json({"op": "subscribe", "subscriptions": [{"id": s, "channelId": c} for s, c in channel_ids.items()]})

    def messages(self, count: int) -> list[tuple[int, int, bytes]]:
        """The next ``count`` binary messageData frames as (subscription id, log time ns, payload)."""
        out = []
        while len(out) < count:
            opcode, payload = self.frame()
            if opcode == 2 and payload[0] == 1:
                sub, log_time = struct.unpack("<IQ", payload[1:13])
                out.append((sub, log_time, payload[13:]))
        return out

    def close(self) -> None:
        self.sock.close()


def wait_for_subscribers(view: LiveView, keys, timeout_s: float = 5.0) -> None:
    import time
    end = time.monotonic() + timeout_s
    while not all(view.channels[k].has_sinks() for k in keys):
        assert time.monotonic() < end, "the server never registered the subscription"
        time.sleep(0.02)


@pytest.fixture
def view():
    v = LiveView(port=0)
    yield v
    v.close()


def test_server_binds_loopback_and_advertises_the_stack_channels(view):
    client = FoxgloveClient(view.port)
    try:
        assert "101 switching protocols" in client.handshake
        assert "sec-websocket-protocol: foxglove.sdk.v1" in client.handshake
        channels = client.advertised()
        assert {CHANNELS[k] for k in ("cloud", "objects", "route", "trajectory", "ego", "tf")} <= set(channels)
        assert channels[topics.LIDAR_POINTS]["schemaName"] == "foxglove.PointCloud"
        assert channels["/viz/objects"]["schemaName"] == "foxglove.SceneUpdate"
        assert channels["/tf"]["schemaName"] == "foxglove.FrameTransforms"
    finally:
        client.close()
    assert listening_addresses(view.port) == {"127.0.0.1"}


def listening_addresses(port: int) -> set:
    """IPv4/IPv6 addresses with a socket listening on ``port``, from the kernel's tables (Linux)."""
    import ipaddress
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr_hex, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:   # 0A: LISTEN
                    raw = bytes.fromhex(addr_hex)
                    # the kernel prints each 32-bit word little-endian
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(str(ipaddress.ip_address(raw)))
    if not found:
        pytest.skip("no /proc/net/tcp entry for the port")
    return found


def test_published_state_reaches_a_subscribed_client(view):
    client = FoxgloveClient(view.port)
    try:
        channels = client.advertised()
        client.subscribe({1: channels[topics.LIDAR_POINTS]["id"], 2: channels["/viz/objects"]["id"],
                          3: channels["/viz/trajectory"]["id"]})
        wait_for_subscribers(view, ["cloud", "objects", "trajectory"])
        cloud = PointCloud(np.arange(4000, dtype=np.float32).reshape(-1, 4), "lidar", 2.5)
        boxes = Boxes([[10, 2, 0.8]], [[4.5, 1.9, 1.6]], [0.2], [ObjectClass.VEHICLE], ids=[42])
        traj = Trajectory(np.c_[np.linspace(0, 20, 11), np.zeros((11, 4))])
        view.publish_state(2.5, EgoState(1.0, 2.0, 0.1, v=5.0), cloud, boxes, traj, np.zeros((5, 2)))
        got = {sub: (t, payload) for sub, t, payload in client.messages(3)}
    finally:
        client.close()
    assert set(got) == {1, 2, 3}
    assert all(t == 2_500_000_000 for t, _ in got.values())
    assert cloud.points.tobytes() in got[1][1]      # the points travel unchanged
    assert b"42 vehicle" in got[2][1]               # a box with its id and class


def _small_log(path):
    with BagWriter(path) as bag:
        bag.write_json(topics.ROUTE, {"route_id": "0", "path": [[0, 0], [50, 0], [50, 50]]}, 0.0)
        for k in range(4):
            t = 0.1 * (k + 1)
            bag.write_odometry(topics.KINEMATIC_STATE, EgoState(t, 0.0, 0.0, stamp=t), t)
            bag.write_pointcloud(topics.LIDAR_POINTS, PointCloud(np.ones((10, 4)), "lidar", t), t)
            bag.write_objects(topics.TRACKED_OBJECTS, Boxes([[5, 0, 1]], [[4, 2, 1.5]], [0], [1], ids=[3], stamp=t), t,
                              tracked=True)
            bag.write_trajectory(topics.TRAJECTORY, Trajectory(np.c_[np.arange(5.0), np.zeros((5, 4))], stamp=t), t)
    return path


def test_play_log_serves_a_recorded_log(view, tmp_path):
    log = _small_log(tmp_path / "run" / "log.mcap")
    from sim.drive import single_file_log
    single_file_log(log, tmp_path / "log.mcap")   # as `adstack drive` leaves it: one file in the run directory
    assert find_log(tmp_path) == tmp_path / "log.mcap"
    client = FoxgloveClient(view.port)
    try:
        channels = client.advertised()
        client.subscribe({1: channels["/viz/route"]["id"], 2: channels["/viz/objects"]["id"]})
        wait_for_subscribers(view, ["route", "objects"])
        n = play_log(view, tmp_path, rate=0)
        got = client.messages(2)
    finally:
        client.close()
    assert n == 1 + 4 * 4
    assert {sub for sub, _, _ in got} == {1, 2}


def test_viz_cli_plays_and_exits(tmp_path, capsys):
    from adstack.cli import main
    log = _small_log(tmp_path / "bagdir")
    assert main(["viz", str(log), "--port", "0", "--rate", "0", "--exit-when-done"]) == 0
    assert "played 17 messages" in capsys.readouterr().err
    assert main(["viz", str(tmp_path / "missing")]) == 2
