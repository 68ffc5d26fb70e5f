"""The independent fuzzer's cases that broke something (issue 27), on both sides of the link.

- headers nested 995-1023 levels deep made the decoder raise RecursionError while building its error
  message: the server sent no reply, and the robot loop crashed on such a reply;
- ``v=True`` and ``v=1.0`` were accepted as protocol version 1;
- a server announcing 2,000,000 observation steps stalled the robot loop for seconds per request.
"""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zmq

from robopolicy.deploy.client import ControlLoop, ControlLoopConfig
from robopolicy.deploy.fake import RampPolicy, ramp_spec
from robopolicy.deploy.protocol import PROTOCOL_VERSION, PolicySpec, ProtocolError, decode, describe, encode
from robopolicy.deploy.server import PolicyServer
from robopolicy.robots.base import EchoRobot


def nested_header(depth: int, seq: int = 1, msg_type: str = "ping", where: str = "type") -> bytes:
    """A msgpack header whose ``where`` field is a list nested ``depth`` levels (built by hand: packb refuses)."""
    fields = {"v": PROTOCOL_VERSION, "type": msg_type, "seq": seq, "frames": []}
    del fields[where]
    body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
    nested = msgpack.packb(where) + b"\x91" * depth + msgpack.packb(0)
    return bytes([0x80 | (len(fields) + 1)]) + body + nested


@pytest.mark.parametrize("depth", [17, 995, 1000, 1023])
@pytest.mark.parametrize("where", ["type", "v", "seq", "frames"])
def test_deeply_nested_headers_are_malformed_not_recursion_errors(depth, where):
    with pytest.raises(ProtocolError) as e:
        decode([nested_header(depth, where=where)])
    assert e.value.kind in ("malformed", "version", "type")


def test_a_spec_nested_within_the_limit_still_decodes():
    spec = ramp_spec()
    assert PolicySpec.from_dict(decode(encode("hello", 1, spec=spec.to_dict())).get("spec")) == spec


@pytest.mark.parametrize("v", [True, 1.0, "1", [1]])
def test_only_the_integer_1_is_protocol_version_1(v):
    header = {"v": v, "type": "ping", "seq": 1, "frames": []}
    with pytest.raises(ProtocolError) as e:
        decode([msgpack.packb(header)])
    assert e.value.kind == "version"


def test_describe_never_reprs_containers():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert describe(deep) == "<list of 1>"
    assert describe("x" * 1000).startswith("'xxx") and len(describe("x" * 1000)) < 50


@pytest.mark.parametrize("field,value", [("n_obs_steps", 2_000_000), ("horizon", 10**7), ("n_action_steps", 10**6),
                                         ("n_obs_steps", True), ("horizon", 16.5)])
def test_spec_from_a_server_is_bounded(field, value):
    d = ramp_spec().to_dict()
    d[field] = value
    if field == "n_obs_steps" and value is not True:
        d["horizon"] = value + 1
    with pytest.raises(ProtocolError, match="spec"):
        PolicySpec.from_dict(d)


def test_server_answers_a_nested_header_with_an_error_reply(tmp_path):
    with PolicyServer(RampPolicy(ramp_spec()), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(srv.endpoint)
        try:
            for depth in (995, 1010, 1023):
                sock.send_multipart([nested_header(depth, seq=depth)])
                assert sock.poll(5000), f"no reply to a header nested {depth} deep"
                m = decode(sock.recv_multipart())
                assert m.type == "error" and m.get("kind") == "malformed"
            sock.send_multipart(encode("ping", 5))
            assert sock.poll(5000) and decode(sock.recv_multipart()).type == "pong"
        finally:
            sock.close(0)
            ctx.term()
        assert srv.stats.snapshot()["errors"].get("internal") is None


class HostileServer:
    """A ROUTER that answers hello with ``spec`` and every other request with ``reply(header)`` frames."""

    def __init__(self, address: str, spec: dict, reply):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(address)
        self.spec, self.reply = spec, reply
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            identity, *frames = self.sock.recv_multipart()
            m = decode(frames)
            seq += 1
            if m.type == "hello":
                out = encode("hello", seq, reply_to=m.seq, spec=self.spec, estopped=False)
            else:
                out = self.reply(m, seq)
            self.sock.send_multipart([identity, *out])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def test_control_loop_counts_nested_replies_and_carries_on(tmp_path):
    """Every reply but hello is nested 1000 deep: the loop holds its safe action, counts, and keeps running."""
    address = f"ipc://{tmp_path}/h.ipc"
    with HostileServer(address, ramp_spec().to_dict(), lambda m, seq: [nested_header(1000, seq=seq)]):
        robot = EchoRobot(hz=50.0)
        with robot:
            loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100.0, watchdog_s=0.5))
            try:
                summary = loop.run(1.0)
            finally:
                loop.close()
    assert summary["fatal"] is None
    assert summary["invalid_replies"] > 5
    assert summary["ticks"] > 50  # it ran the whole second, not one tick
    assert all(r.mode != "policy" for r in loop.commands)


def test_control_loop_survives_replies_that_break_handling(tmp_path):
    """A chunk reply with a hostile field type (a map for reply_to) is counted, not fatal."""
    address = f"ipc://{tmp_path}/h2.ipc"

    def reply(m, seq):
        if m.type == "ping":
            return encode("pong", seq, reply_to=m.seq, estopped=False)
        return encode("error", seq, reply_to={"x": [1, 2]}, kind={"nested": [[1]]}, message=None)

    with HostileServer(address, ramp_spec().to_dict(), reply):
        with EchoRobot(hz=50.0) as robot:
            loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100.0, watchdog_s=0.5))
            try:
                summary = loop.run(0.8)
            finally:
                loop.close()
    assert summary["fatal"] is None and summary["ticks"] > 40
    assert any(k.startswith("unknown:") for k in summary["server_errors"])


def test_control_loop_refuses_a_spec_with_millions_of_observation_steps(tmp_path):
    """The old loop accepted To=2,000,000 and spent ~1.7 s per request building the history."""
    address = f"ipc://{tmp_path}/h3.ipc"
    spec = ramp_spec().to_dict()
    spec["n_obs_steps"], spec["horizon"], spec["n_action_steps"] = 2_000_000, 2_000_016, 8
    with HostileServer(address, spec, lambda m, seq: encode("pong", seq, reply_to=m.seq, estopped=False)):
        with EchoRobot(hz=50.0) as robot:
            loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100.0, watchdog_s=0.5))
            try:
                summary = loop.run(2.0)
            finally:
                loop.close()
    assert summary["fatal"] is not None and "spec" in summary["fatal"]
    assert loop.commands and all(r.mode != "policy" for r in loop.commands)


def test_control_loop_refuses_a_spec_whose_requests_exceed_the_message_limit(tmp_path):
    address = f"ipc://{tmp_path}/h4.ipc"
    spec = ramp_spec(n_obs_steps=2).to_dict()
    spec["input_features"] = {"observation.state": [4096, 4096]}  # 2 x 64 MiB of float32 per request
    with HostileServer(address, spec, lambda m, seq: encode("pong", seq, reply_to=m.seq, estopped=False)):
        with EchoRobot(hz=50.0) as robot:
            loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100.0, watchdog_s=0.5))
            try:
                summary = loop.run(1.0)
            finally:
                loop.close()
    assert summary["fatal"] is not None and "message limit" in summary["fatal"]
    assert np.all([r.mode != "policy" for r in loop.commands])
