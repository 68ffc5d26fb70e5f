"""The server under attack and failure: fuzzing, kill -9 mid-episode, slow policies, CURVE."""

from __future__ import annotations

import os
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robopolicy.deploy.client import ControlLoop, ControlLoopConfig, PolicyClient
from robopolicy.deploy.fake import RampPolicy, make_ramp_policy, ramp_spec
from robopolicy.deploy.keys import ClientCurve, ServerCurve, generate_keys
from robopolicy.deploy.operator import send_operator_command
from robopolicy.deploy.protocol import PROTOCOL_VERSION, decode, encode
from robopolicy.deploy.server import PolicyServer, start_server_process
from robopolicy.robots.base import EchoRobot

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    srv = PolicyServer(RampPolicy(ramp_spec(horizon=4, n_action_steps=2)), address=f"ipc://{path}/f.ipc",
                       max_message_bytes=MAX_BYTES, status_every_s=0).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(srv.endpoint)
    yield srv, sock
    sock.close(0)
    ctx.term()
    srv.stop()


def _alive(sock, seq=10**6) -> bool:
    """The server still answers a valid ping (errors for the fuzz message are drained)."""
    sock.send_multipart(encode("ping", seq))
    deadline = time.monotonic() + 10.0  # generous: CI machines are loaded
    while time.monotonic() < deadline:
        if sock.poll(100):
            m = decode(sock.recv_multipart())
            if m.type == "pong" and m.get("reply_to") == seq:
                return True
    return False


_valid_infer = encode("infer", 1, {"observation.state": np.zeros((2, 2), np.float32)}, t_obs=0.0)
_scalar = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
_table_entry = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=4) | _scalar, "dtype": st.sampled_from(["float32", "float64", "int64", "uint8", "f2", "O"]) | _scalar,
    "shape": st.lists(st.integers(-2, 2**33), max_size=4) | _scalar})
_header = st.fixed_dictionaries({}, optional={
    "v": st.just(PROTOCOL_VERSION) | _scalar, "type": st.sampled_from(["infer", "ping", "hello", "chunk", "estop2"]) | _scalar,
    "seq": st.integers(-5, 2**64 - 1) | _scalar, "t_send": _scalar, "t_obs": _scalar,
    "frames": st.lists(_table_entry, max_size=3) | _scalar})
_messages = st.one_of(
    st.lists(st.binary(max_size=1500), min_size=1, max_size=5),  # random garbage (possibly over MAX_BYTES in total)
    st.tuples(_header, st.lists(st.binary(max_size=64), max_size=3)).map(
        lambda hp: [msgpack.packb(hp[0], use_bin_type=True), *hp[1]]),  # structured but wrong headers
    st.integers(0, sum(len(f) for f in _valid_infer) - 1).map(  # a valid request truncated anywhere
        lambda n: [b"".join(_valid_infer)[:n]] if n < len(_valid_infer[0]) else [_valid_infer[0], _valid_infer[1][: n - len(_valid_infer[0])]]),
    st.tuples(st.integers(0, len(_valid_infer[1]) - 1), st.integers(0, 255)).map(  # one payload byte flipped -> maybe NaN
        lambda ib: [_valid_infer[0], _valid_infer[1][: ib[0]] + bytes([ib[1]]) + _valid_infer[1][ib[0] + 1:]]),
)


def _fuzz(fuzz_server, frames):
    srv, sock = fuzz_server
    sock.send_multipart(frames)
    assert _alive(sock), f"server stopped answering after {frames[:2]!r}"
    assert srv.running


N_CASES = int(os.environ.get("ROBOPOLICY_FUZZ_CASES", "10000"))  # ~15 s with one thread


@settings(max_examples=N_CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(_messages)
def test_server_fuzz(fuzz_server, frames):
    _fuzz(fuzz_server, frames)


def test_server_survives_edge_cases_and_counts(fuzz_server):
    srv, sock = fuzz_server
    sock.send_multipart([b""])  # empty header
    sock.send_multipart([b"x" * (MAX_BYTES - 10), b"y" * 100])  # over the total limit
    sock.send_multipart(encode("chunk", 3, {"action": np.zeros((4, 2))}, t_first=0.0, dt=0.1))  # wrong direction
    sock.send_multipart(encode("infer", 4, {"observation.state": np.full((2, 2), np.nan, np.float32)}, t_obs=0.0))
    kinds = []
    deadline = time.monotonic() + 10  # generous: CI machines are loaded
    while len(kinds) < 4 and time.monotonic() < deadline:
        if sock.poll(100):
            kinds.append(decode(sock.recv_multipart()).get("kind"))
    assert sorted(kinds) == ["malformed", "nonfinite", "too_large", "type"]
    assert _alive(sock)
    sock.send_multipart(_valid_infer)
    assert sock.poll(10_000) and decode(sock.recv_multipart()).type == "chunk"
    snap = srv.stats.snapshot()
    assert snap["errors"]["nonfinite"] >= 1 and snap["received"] > 4


def test_oversized_frame_disconnects_peer_only(tmp_path):
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/o.ipc", max_message_bytes=MAX_BYTES, status_every_s=0) as srv:
        ctx = zmq.Context()
        bad = ctx.socket(zmq.DEALER)
        bad.linger = 0
        bad.connect(srv.endpoint)
        bad.send_multipart([b"z" * (MAX_BYTES * 4)])  # libzmq drops the connection (ZMQ_MAXMSGSIZE)
        time.sleep(0.2)
        with PolicyClient(srv.endpoint) as c:
            assert c.call("ping").type == "pong"
        bad.close(0)
        ctx.term()


def test_unauthenticated_client_is_refused(tmp_path):
    keys = generate_keys(tmp_path / "keys", ("server", "client", "intruder"))
    curve = ServerCurve.load(keys["server"][1], [keys["client"][0].read_text().split('"')[1]])
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/c.ipc", curve=curve, status_every_s=0) as srv:
        good = PolicyClient(srv.endpoint, curve=ClientCurve.load(keys["client"][1], keys["server"][0]))
        assert good.hello() is not None
        intruder = PolicyClient(srv.endpoint, curve=ClientCurve.load(keys["intruder"][1], keys["server"][0]))
        assert intruder.call("hello", timeout_s=0.5) is None
        plain = PolicyClient(srv.endpoint)
        assert plain.call("hello", timeout_s=0.5) is None
        assert good.call("ping").type == "pong"
        for c in (good, intruder, plain):
            c.close()
        assert srv.stats.snapshot()["by_type"].get("hello", 0) == 1  # the refused ones never reached the server
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path / "keys", ("server",))


def test_slow_policy_counts_deadline_misses_and_executes_nothing_stale(tmp_path):
    spec = ramp_spec(n_obs_steps=2, horizon=4, n_action_steps=2)  # each chunk covers ~0.3 s
    with PolicyServer(RampPolicy(spec, delay_s=0.35), address=f"ipc://{tmp_path}/slow.ipc", status_every_s=0) as srv:
        robot = EchoRobot()
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, watchdog_s=0.15))
        summary = loop.run(2.5)
        loop.close()
    assert summary["chunks"] >= 2
    assert summary["deadline_misses"] > 0 and summary["starved_ticks"] > 0
    assert summary.get("link_lost", 0) <= 1  # pings are answered while the policy computes
    for r in loop.commands:
        if r.mode == "policy":
            assert r.t_valid_from - 1e-9 <= r.t <= r.t_end + 1e-9
        elif summary["chunks"] and r.reason == "no_valid_action":
            assert r.command is not None  # the hold action, not a stale one


def test_kill_server_mid_episode_then_restart(tmp_path):
    address = f"ipc://{tmp_path}/k.ipc"
    kw = {"horizon": 16, "n_action_steps": 8}
    proc = start_server_process(make_ramp_policy, address, kw, max_runtime_s=60, status_every_s=0)
    watchdog = 0.1
    robot = EchoRobot()
    robot.connect()
    loop = ControlLoop(robot, address, ControlLoopConfig(control_hz=100, watchdog_s=watchdog))
    stop = threading.Event()
    result = {}
    th = threading.Thread(target=lambda: result.update(loop.run(60.0, stop_event=stop)), daemon=True)
    th.start()
    proc2 = None
    try:
        time.sleep(1.5)
        epoch_before = loop.client.epoch
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        time.sleep(0.6)
        proc2 = start_server_process(make_ramp_policy, address, kw, max_runtime_s=60, status_every_s=0)
        time.sleep(2.0)
    finally:
        stop.set()
        th.join(10)
        loop.close()
        for p in (proc, proc2):
            if p is not None and p.is_alive():
                p.kill()
    recs = loop.commands
    after = [r for r in recs if r.t > t_kill]
    first_safe = next(r for r in after if r.mode != "policy")
    delay = first_safe.t - t_kill
    print(f"safe {delay * 1e3:.1f} ms after kill -9")
    # safe within the watchdog deadline (+ one control period + scheduling slack on a loaded CPU)
    assert delay <= watchdog + 0.01 + 0.1, delay
    # no action from the dead link after the trip; every policy command inside its validity window
    for r in after:
        if r.t >= first_safe.t and r.mode == "policy":
            assert r.epoch > epoch_before
    for r in recs:
        if r.mode == "policy":
            assert r.t_valid_from - 1e-9 <= r.t <= r.t_end + 1e-9
    # reconnected and continued
    resumed = [r for r in after if r.mode == "policy" and r.epoch > epoch_before]
    assert len(resumed) > 50, result
    assert result["link_lost"] >= 1 and result["reconnects"] >= 1


class ThreadTracingRamp(RampPolicy):
    """Records which server thread ran each inference."""

    def __init__(self, **kw):
        super().__init__(ramp_spec(horizon=4, n_action_steps=2), **kw)
        self.threads: list[str] = []

    def _ramp(self, obs):
        self.threads.append(threading.current_thread().name)
        return super()._ramp(obs)


def test_fast_policies_run_inline_and_a_slow_call_returns_to_the_worker(tmp_path):
    obs = {"observation.state": np.zeros((2, 2), np.float32)}
    policy = ThreadTracingRamp()
    with PolicyServer(policy, address=f"ipc://{tmp_path}/inline.ipc", status_every_s=0) as srv, \
            PolicyClient(srv.endpoint) as client:
        for _ in range(30):
            assert client.call("infer", obs, t_obs=0.0, timeout_s=5.0).type == "chunk"
        # the first 20 (unknown speed) went through the worker, then the socket thread served them
        assert set(policy.threads[:20]) == {"policy-infer"}
        assert set(policy.threads[20:]) == {"policy-server"}
        policy.delay_s = 0.05  # the policy turns slow: one inline call, then the worker again
        for _ in range(3):
            assert client.call("infer", obs, t_obs=0.0, timeout_s=5.0).type == "chunk"
        assert policy.threads[30:] == ["policy-server", "policy-infer", "policy-infer"]
        # while the worker computes, pings are still answered (long before the chunk is ready)
        policy.delay_s = 1.0
        client.send("infer", obs, t_obs=0.0)
        time.sleep(0.05)
        t0 = time.monotonic()
        assert client.call("ping", timeout_s=5.0).type == "pong"
        assert time.monotonic() - t0 < 0.5
        assert srv.stats.snapshot()["inferences"] >= 33


def test_inline_inference_can_be_switched_off(tmp_path):
    obs = {"observation.state": np.zeros((2, 2), np.float32)}
    policy = ThreadTracingRamp()
    with PolicyServer(policy, address=f"ipc://{tmp_path}/worker.ipc", status_every_s=0, inline_below_ms=0) as srv, \
            PolicyClient(srv.endpoint) as client:
        for _ in range(25):
            assert client.call("infer", obs, t_obs=0.0, timeout_s=5.0).type == "chunk"
    assert set(policy.threads) == {"policy-infer"}


# ---- e-stop, safety limits and bad replies (from a review of the control loop) -------------------------


def _run_ramp_loop(tmp_path, robot, seconds, on_tick=None, server_cls=PolicyServer):
    """A 100 Hz control loop on ``robot`` against a ramp-policy server, run for ``seconds``; the closed loop.
    ``on_tick(loop, record, server)`` runs after every tick."""
    private = tmp_path / "operator"
    private.mkdir(mode=0o700, exist_ok=True)
    with server_cls(RampPolicy(step=1.0), address=f"ipc://{tmp_path}/loop.ipc", status_every_s=0,
                    operator_address=f"ipc://{private}/op.ipc") as srv:
        robot.connect()
        loop = ControlLoop(robot, srv.endpoint, ControlLoopConfig(control_hz=100, watchdog_s=0.3))
        try:
            loop.run(seconds, on_tick=None if on_tick is None else (lambda lp, rec: on_tick(lp, rec, srv)))
        finally:
            loop.close()
    return loop


def test_velocity_limit_holds_from_the_first_command_and_after_a_stop(tmp_path):
    """A robot whose safe action is "stop" leaves the safety filter without a reference; the next policy
    command is limited from where the robot is, never a jump to the policy's target."""
    robot = EchoRobot(start=[0.0, 0.0], safe_action="stop", max_velocity=1.0)  # 0.01 per 100 Hz tick

    def on_tick(lp, rec, srv):
        if lp.counters["ticks"] == 60:
            lp.trigger_estop("test")
        if lp.counters["ticks"] == 90:
            lp.clear_estop()
            send_operator_command(srv.operator_endpoint, "clear_estop")  # only an operator clears the server

    _run_ramp_loop(tmp_path, robot, 1.5, on_tick)
    commands = [np.zeros(2)] + [c for _, c in robot.commands]  # the robot starts at 0
    assert robot.stops >= 1 and len(commands) > 50
    steps = [np.abs(b - a).max() for a, b in zip(commands, commands[1:])]
    assert max(steps) <= 0.01 + 1e-9


def test_estop_drops_every_chunk_planned_before_it(tmp_path):
    """After clear_estop the loop runs no chunk planned or requested before the e-stop."""
    t_obs_of_chunk: dict[int, float] = {}
    marks: dict[str, float] = {}

    def on_tick(lp, rec, srv):
        if lp.scheduler is not None and "add_chunk" not in vars(lp.scheduler):  # record each chunk's t_obs
            add = lp.scheduler.add_chunk

            def recording_add(*args, **kw):
                chunk = add(*args, **kw)
                if chunk is not None:
                    t_obs_of_chunk[chunk.id] = chunk.t_obs
                return chunk

            lp.scheduler.add_chunk = recording_add
        if lp.counters["ticks"] == 60:
            marks["estop"] = time.monotonic()
            lp.trigger_estop("test")
        if lp.counters["ticks"] == 75:
            marks["clear"] = time.monotonic()
            lp.clear_estop()
            send_operator_command(srv.operator_endpoint, "clear_estop")

    loop = _run_ramp_loop(tmp_path, EchoRobot(start=[0.0, 0.0]), 1.2, on_tick)
    before = [r for r in loop.commands if r.t < marks["estop"] and r.mode == "policy"]
    after = [r for r in loop.commands if r.t > marks["clear"] and r.mode == "policy"]
    assert before and after, "the loop ran before the e-stop and resumed after the clear"
    # (the first request after the clear may carry an observation taken during the e-stop: current state)
    assert all(t_obs_of_chunk[r.chunk_id] > marks["estop"] for r in after)


def test_a_server_estop_from_another_operator_stops_the_loop_at_the_next_pong(tmp_path):
    marks: dict[str, float] = {}

    def on_tick(lp, rec, srv):
        if lp.counters["ticks"] == 50:
            with PolicyClient(srv.endpoint) as operator:
                assert operator.call("estop").get("estopped") is True
            marks["estop"] = time.monotonic()

    loop = _run_ramp_loop(tmp_path, EchoRobot(start=[0.0, 0.0]), 1.0, on_tick)
    assert loop.estop.active
    late = [r for r in loop.commands if r.t > marks["estop"] + 2 * loop.ping_interval + 0.05]
    assert late and all(r.mode != "policy" for r in late)


def test_server_withholds_chunks_computed_when_the_estop_latches(tmp_path):
    """A request queued or computing when the e-stop latches is answered with an e-stop error, never a chunk."""
    with PolicyServer(RampPolicy(delay_s=0.3), address=f"ipc://{tmp_path}/w.ipc", status_every_s=0,
                      inline_below_ms=0) as srv:
        with PolicyClient(srv.endpoint) as robot_side, PolicyClient(srv.endpoint) as operator:
            obs = {"observation.state": np.zeros((2, 2), np.float32)}
            assert robot_side.call("ping").type == "pong"  # connected: the sends below go out at once
            seqs = [robot_side.send("infer", obs, t_obs=0.0), robot_side.send("infer", obs, t_obs=0.0)]
            time.sleep(0.1)  # the first is computing, the second queued
            assert operator.call("estop").get("estopped") is True
            replies = []
            deadline = time.monotonic() + 5
            while len(replies) < 2 and time.monotonic() < deadline:
                replies += robot_side.receive(100)
    assert None not in seqs and sorted(m.get("reply_to") for m in replies) == sorted(seqs)
    assert all(m.type == "error" and m.get("kind") == "estopped" for m in replies)


@pytest.mark.parametrize("field,value", [("t_obs", "soon"), ("t_obs", float("nan")), ("t_first", 123.0),
                                         ("dt", 0.5)])
def test_bad_chunk_times_are_rejected_and_the_loop_keeps_running(tmp_path, field, value):
    class BadTimesServer(PolicyServer):
        def _infer(self, req_seq, obs, t_obs, t_recv):
            ok, frames = super()._infer(req_seq, obs, t_obs, t_recv)
            m = decode(frames)
            header = {**m.header, field: value}
            return ok, encode("chunk", m.seq, dict(m.arrays), **{k: v for k, v in header.items()
                                                                 if k not in ("type", "seq", "v", "arrays")})

    loop = _run_ramp_loop(tmp_path, EchoRobot(), 0.5, server_cls=BadTimesServer)
    assert loop.fatal is None and loop.counters["rejected_chunks"] >= 1
    assert not any(r.mode == "policy" for r in loop.commands)


def test_a_crash_inside_the_loop_sends_the_safe_action_and_re_raises(tmp_path):
    robot = EchoRobot(safe_action="stop")
    crashed: list = []

    def on_tick(lp, rec, srv):
        if rec.mode == "policy":
            crashed.append(lp)
            raise RuntimeError("bug in a callback")

    with pytest.raises(RuntimeError, match="bug in a callback"):
        _run_ramp_loop(tmp_path, robot, 2.0, on_tick)
    loop = crashed[0]
    assert robot.stops >= 1 and loop.commands[-1].mode == "policy"  # the stop came after the last policy command
    assert "crashed" in loop.fatal


def test_server_start_reports_a_bind_failure(tmp_path):
    with PolicyServer(RampPolicy(), address="tcp://127.0.0.1:*", status_every_s=0) as first:
        with pytest.raises(RuntimeError, match="could not start on .*Address already in use"):
            PolicyServer(RampPolicy(), address=first.endpoint, status_every_s=0).start()


def test_zero_size_array_with_an_impossible_shape_is_a_protocol_error():
    from robopolicy.deploy.protocol import ProtocolError

    header = msgpack.packb({"v": PROTOCOL_VERSION, "type": "infer", "seq": 1, "t_obs": 0.0,
                            "frames": [{"name": "observation.state", "dtype": "float32", "shape": [2**31, 2**31, 0]}]})
    with pytest.raises(ProtocolError) as e:
        decode([header, b""])
    assert e.value.kind == "shape"
