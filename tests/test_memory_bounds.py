"""Memory the policy server can be made to hold (issue 27, item 4; docs/protocol.md "Memory bounds").

libzmq 4.3 limits frames (ZMQ_MAXMSGSIZE), not the number of frames in a message, and it buffers a whole
multipart message before the server sees its first frame. So the worst case for one message is its size,
held once (zero-copy receive), and released when it is refused. These tests pin that down in a server
process of its own, reading its peak resident memory (VmHWM) from /proc.
"""

from __future__ import annotations

import sys
import time

import pytest
import zmq

from robopolicy.deploy.fake import RampPolicy, make_ramp_policy
from robopolicy.deploy.protocol import decode, encode
from robopolicy.deploy.server import PEER_RCVHWM, PolicyServer, start_server_process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
FRAME_LIMIT = 1024 * 1024  # the server's max_message_bytes here: 1 MiB


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _ping(sock, seq: int) -> bool:
    sock.send_multipart(encode("ping", seq))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.poll(200):
            m = decode(sock.recv_multipart())
            if m.get("reply_to") == seq:
                return m.type == "pong"
    return False


def test_worst_case_message_is_held_once_refused_and_the_server_carries_on(tmp_path):
    address = f"ipc://{tmp_path}/m.ipc"
    proc = start_server_process(make_ramp_policy, address, {}, max_runtime_s=60, status_every_s=0,
                                max_message_bytes=FRAME_LIMIT)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(address)
        assert _ping(sock, 1)
        before = _peak_kib(proc.pid)
        n_frames = 48  # every frame at the limit: 48 MiB that libzmq buffers before the server can refuse it
        header = encode("infer", 2, t_obs=0.0)[0]
        sock.send_multipart([header, *[b"\0" * FRAME_LIMIT] * n_frames], copy=False)
        assert sock.poll(20000), "no reply to the oversized message"
        reply = decode(sock.recv_multipart())
        assert reply.type == "error" and reply.get("kind") == "too_large" and reply.get("reply_to") is None
        growth_mib = (_peak_kib(proc.pid) - before) / 1024
        print(f"peak resident memory grew by {growth_mib:.1f} MiB for a {n_frames} MiB message")
        # held once (plus libzmq's own buffers), never copied per frame or decoded
        assert growth_mib < 1.6 * n_frames + 16, f"peak grew by {growth_mib:.0f} MiB for a {n_frames} MiB message"
        # a frame over the limit never gets buffered at all: libzmq drops that connection
        big = ctx.socket(zmq.DEALER)
        big.linger = 0
        big.connect(address)
        big.send_multipart([header, b"\0" * (4 * FRAME_LIMIT)])
        assert not big.poll(500)
        big.close(0)
        assert _ping(sock, 3) and proc.is_alive()
    finally:
        proc.kill()
        proc.join(5)
        ctx.destroy(0)


def test_per_peer_queue_is_bounded():
    """At most PEER_RCVHWM complete messages per peer wait in libzmq (it stops reading that peer meanwhile)."""
    assert 1 <= PEER_RCVHWM <= 64
    srv = PolicyServer(RampPolicy(), address="inproc://bounded", status_every_s=0)
    srv.start()
    try:
        assert srv._router.rcvhwm == PEER_RCVHWM
        assert srv._router.getsockopt(zmq.MAXMSGSIZE) == srv.max_message_bytes + 1
    finally:
        srv.stop()
