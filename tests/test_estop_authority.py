"""Who may clear the policy server's e-stop (issue 27, item 1), and multi-client fairness (item 5)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from robopolicy.deploy.client import PolicyClient
from robopolicy.deploy.fake import RampPolicy, ramp_spec
from robopolicy.deploy.keys import ClientCurve, ServerCurve, generate_keys
from robopolicy.deploy.operator import main as operator_main
from robopolicy.deploy.operator import send_operator_command
from robopolicy.deploy.protocol import decode, encode
from robopolicy.deploy.server import PolicyServer
from robopolicy.utils.private_dir import UnsafePathError

OBS = {"observation.state": np.zeros((2, 2), np.float32)}


@pytest.fixture()
def private(tmp_path):
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    return d


def test_a_client_cannot_clear_the_estop_only_the_operator_socket_can(tmp_path, private, caplog, capsys):
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0,
                      operator_address=f"ipc://{private}/op.ipc") as srv, PolicyClient(srv.endpoint) as client:
        assert client.call("estop").get("estopped") is True  # anyone may press it
        with caplog.at_level("ERROR", logger="robopolicy.deploy.server"):
            reply = client.call("clear_estop")
        assert reply.type == "error" and reply.get("kind") == "forbidden" and "operator" in reply.get("message")
        assert "refused clear_estop from an unauthenticated peer" in caplog.text
        assert srv.estopped and client.call("infer", OBS, t_obs=0.0).get("kind") == "estopped"
        assert srv.stats.snapshot()["errors"]["forbidden"] == 1
        # the local operator: the command-line tool, then the function it uses
        assert operator_main(["clear", srv.operator_endpoint]) == 0 and "e-stopped = False" in capsys.readouterr().out
        assert not srv.estopped
        assert client.call("infer", OBS, t_obs=0.0).type == "chunk"
        assert send_operator_command(srv.operator_endpoint, "estop")["estopped"] is True and srv.estopped
        # the operator socket answers e-stops and pings, never inferences
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(srv.operator_endpoint)
        sock.send_multipart(encode("infer", 3, OBS, t_obs=0.0))
        assert sock.poll(3000) and decode(sock.recv_multipart()).get("kind") == "type"
        sock.close(0)
        ctx.term()


def test_without_an_operator_socket_nobody_on_the_network_clears_it(tmp_path):
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", status_every_s=0) as srv, \
            PolicyClient(srv.endpoint) as client:
        client.call("estop")
        assert client.call("clear_estop").get("kind") == "forbidden" and srv.estopped


def test_with_curve_only_operator_keys_clear_the_estop(tmp_path):
    k = generate_keys(tmp_path / "keys", ("server", "client", "operator"))
    curve = ServerCurve.load(k["server"][1], k["client"][0], operators=k["operator"][0])
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/c.ipc", curve=curve, status_every_s=0) as srv:
        robot = PolicyClient(srv.endpoint, curve=ClientCurve.load(k["client"][1], k["server"][0]))
        operator = PolicyClient(srv.endpoint, curve=ClientCurve.load(k["operator"][1], k["server"][0]))
        try:
            assert robot.call("estop").get("estopped") is True
            assert robot.call("clear_estop").get("kind") == "forbidden" and srv.estopped
            assert operator.call("clear_estop").get("estopped") is False and not srv.estopped
            assert robot.call("infer", OBS, t_obs=0.0).type == "chunk"
        finally:
            robot.close()
            operator.close()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_operator_socket_must_be_in_a_private_directory(tmp_path, mode):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(UnsafePathError, match="group or others"):
        PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", operator_address=f"ipc://{d}/op.ipc")
    with pytest.raises(ValueError, match="ipc"):
        PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/s.ipc", operator_address="tcp://127.0.0.1:5999")


def _hammer(endpoint: str, stop: threading.Event, results: dict, name: str) -> None:
    """A robot-like client: one inference in flight, the next sent as soon as the reply arrives."""
    gaps, chunks, errors = [], 0, {}
    with PolicyClient(endpoint) as c:
        last = time.monotonic()
        while not stop.is_set():
            m = c.call("infer", OBS, t_obs=0.0, timeout_s=5.0)
            now = time.monotonic()
            if m is not None and m.type == "chunk":
                chunks += 1
                gaps.append(now - last)
                last = now
            elif m is not None:
                errors[m.get("kind")] = errors.get(m.get("kind"), 0) + 1
                time.sleep(0.005)
    results[name] = {"gaps": gaps, "chunks": chunks, "errors": errors}


def test_no_admitted_client_starves_and_extra_clients_are_told_busy(tmp_path):
    """Issue 27: with 32 clients the old single queue let a client wait up to 8.9 s for a chunk (74,470
    ``busy`` replies). Now each admitted client is served in turn: its longest wait is about max_clients
    inferences, and a client beyond max_clients gets ``busy`` (with its pings still answered)."""
    n, infer_s = 6, 0.01
    with PolicyServer(RampPolicy(ramp_spec(), delay_s=infer_s), address=f"ipc://{tmp_path}/f.ipc",
                      status_every_s=0, inline_below_ms=0, max_clients=n) as srv:
        stop, results = threading.Event(), {}
        threads = [threading.Thread(target=_hammer, args=(srv.endpoint, stop, results, f"c{i}")) for i in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all admitted
        with PolicyClient(srv.endpoint) as extra:
            refused = extra.call("infer", OBS, t_obs=0.0)
            assert refused.type == "error" and refused.get("kind") == "busy" and "full" in refused.get("message")
            assert extra.call("ping").type == "pong"
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(10)
    assert len(results) == n
    for name, r in results.items():
        assert r["errors"] == {}, f"{name} got {r['errors']}"
        assert r["chunks"] >= 10, f"{name} got only {r['chunks']} chunks"
        # round robin: about n inferences (60 ms) between chunks; the bound leaves room for a loaded 2-core CI
        # machine (the fuzzer saw gaps of 3.9 s median, 8.9 s max with the old single queue)
        assert max(r["gaps"]) < 1.0, f"{name} waited {max(r['gaps']):.2f} s"
    counts = [r["chunks"] for r in results.values()]
    assert min(counts) >= 0.3 * max(counts), f"unfair shares {counts}"


def test_a_quiet_client_frees_its_place(tmp_path):
    with PolicyServer(RampPolicy(), address=f"ipc://{tmp_path}/q.ipc", status_every_s=0, max_clients=1,
                      client_timeout_s=0.2) as srv:
        with PolicyClient(srv.endpoint) as first:
            assert first.call("infer", OBS, t_obs=0.0).type == "chunk"
        with PolicyClient(srv.endpoint) as second:
            assert second.call("infer", OBS, t_obs=0.0).get("kind") == "busy"
            time.sleep(0.3)
            assert second.call("infer", OBS, t_obs=0.0).type == "chunk"
