"""The policy server: a ZeroMQ ROUTER that answers ``hello``/``infer``/``ping``/``estop`` requests.

Threads: the socket thread owns the ROUTER, validates every message (see
:func:`robopolicy.deploy.protocol.decode`) and answers pings, hellos and e-stops at once; one
inference worker runs the policy, one request at a time, and hands its reply back over an inproc
PAIR socket (ZeroMQ sockets are not shared between threads). So a client's heartbeat is answered
even while a slow policy computes, and a dead server is noticed by its silence.

Fast policies skip the worker: when each of the last ``INLINE_WINDOW`` inferences took less than
``inline_below_ms`` (default 1 ms: an MLP, a trivial policy) and the worker is idle, the socket thread
runs the policy itself and replies at once, saving two thread hand-offs (about 100-200 µs on a VM) per
round trip. A policy that turns slow is back on the worker after that one call.

No input can crash the loop: protocol violations get an ``error`` reply with a ``kind`` (and are
counted); what cannot be answered (an empty message) is dropped and counted; an unexpected
exception is logged, answered ``internal`` and the loop goes on.

Several clients: each admitted client has its own queue of at most ``queue_size`` pending inferences
(one more is answered ``busy``), and the worker serves the clients' queues round robin, one request
each, so no admitted client waits for more than ``max_clients - 1`` other inferences. At most
``max_clients`` clients are admitted at once (a client is admitted while it has sent ``infer`` within
``client_timeout_s``); the others get ``busy`` replies (their pings and e-stops are still answered).

E-stop: any peer may latch it; only an operator may clear it (:mod:`robopolicy.deploy.operator`): a
CURVE peer with an operator key, or a message on the local operator socket (``operator_address``).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from robopolicy.deploy.adapter import PolicyAdapter
from robopolicy.deploy.keys import ServerCurve, apply_server_curve, start_authenticator
from robopolicy.deploy.operator import describe_peer, peer_key
from robopolicy.deploy.operator import operator_address as check_operator_address
from robopolicy.deploy.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REQUEST_TYPES,
    ProtocolError,
    decode,
    encode,
    error_frames,
    validate_infer,
)

log = logging.getLogger("robopolicy.deploy.server")
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
INLINE_WINDOW = 20  # inferences that must all be fast before the socket thread runs the policy itself
# Complete messages libzmq queues per peer before it stops reading that peer's connection (back-pressure):
# a robot has one inference and one ping in flight, so a handful is plenty, and it bounds per-peer memory
# to this many messages (docs/protocol.md, "Memory bounds").
PEER_RCVHWM = 16


class ServerStats:
    """Counters (read them with :meth:`snapshot`; written by the server threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self.inferences = 0
        self.infer_ms: collections.deque[float] = collections.deque(maxlen=2000)
        self.queue_ms: collections.deque[float] = collections.deque(maxlen=2000)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = np.asarray(self.infer_ms, dtype=np.float64)
            return {
                "received": self.received, "by_type": dict(self.by_type), "errors": dict(self.errors),
                "dropped": self.dropped, "inferences": self.inferences,
                "infer_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "infer_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
            }


class PolicyServer:
    """Serve one :class:`~robopolicy.deploy.adapter.PolicyAdapter` on ``address``.

    ``curve``: a :class:`~robopolicy.deploy.keys.ServerCurve`; with it, only clients whose public key
    is allowed complete the handshake (the others get no answer at all).
    Use :meth:`run` (blocking) or :meth:`start`/:meth:`stop` (a background thread, for tests).

    ``operator_address``: an ``ipc://`` socket in a directory only this user can enter, on which
    ``clear_estop`` is accepted (besides CURVE operator keys); None: no such socket.
    ``max_clients``/``client_timeout_s``: the multi-client policy (module docstring).
    """

    def __init__(self, adapter: PolicyAdapter, address: str = DEFAULT_ADDRESS, curve: ServerCurve | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, queue_size: int = 2, max_clients: int = 8,
                 status_every_s: float = 5.0, status_fn: Callable[[str], None] | None = None,
                 inline_below_ms: float = 1.0, operator_address: str | None = None, client_timeout_s: float = 2.0):
        self.adapter = adapter
        self.spec = adapter.spec
        self.address = address
        self.curve = curve
        self.max_message_bytes = int(max_message_bytes)
        self.status_every_s = status_every_s
        self.status_fn = status_fn or log.info
        self.stats = ServerStats()
        self.estopped = False
        self.endpoint: str | None = None
        self.start_error: Exception | None = None  # why run() ended before serving (e.g. the address is in use)
        self.ready = threading.Event()
        self._stop = threading.Event()
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self.max_clients = int(max_clients)
        self.queue_size = max(1, int(queue_size))
        self.client_timeout_s = float(client_timeout_s)
        self.operator_address = None if operator_address is None else check_operator_address(operator_address)
        self.operator_endpoint: str | None = None
        # Each client's pending inferences; the worker takes one from the front client, which then goes to the back.
        self._pending: collections.OrderedDict[bytes, collections.deque] = collections.OrderedDict()
        self._pending_cv = threading.Condition()
        self._clients: dict[bytes, float] = {}  # identity -> last infer (socket thread only)
        self._router: zmq.Socket | None = None
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._results_addr = f"inproc://robopolicy-results-{uuid.uuid4().hex}"
        self.auth_denied = 0
        self.inline_below_ms = float(inline_below_ms)
        self._recent_infer_ms: collections.deque[float] = collections.deque(maxlen=INLINE_WINDOW)
        self._predict_lock = threading.Lock()  # the adapter is never called from two threads at once

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> PolicyServer:
        """Run in a daemon thread; returns once the socket is bound."""
        self._thread = threading.Thread(target=self._run_in_thread, name="policy-server", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            raise RuntimeError(f"policy server did not start on {self.address} within {timeout_s}s")
        if self.start_error is not None:
            raise RuntimeError(f"policy server could not start on {self.address}: {self.start_error}") from self.start_error
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except Exception:
            if self.start_error is None:  # a start failure is raised by start(); anything else is logged here
                log.exception("policy server thread failed")

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the socket thread ----------------------------------------------------------------------
    def run(self, stop_event: threading.Event | None = None, max_runtime_s: float | None = None) -> None:
        """Serve until ``stop_event`` (or :meth:`stop`) is set or ``max_runtime_s`` has passed."""
        stop = stop_event or self._stop
        ctx = zmq.Context()
        auth = allow = None
        router = results = operator = None
        worker = None
        try:
            if self.curve is not None:
                auth, allow = start_authenticator(ctx, self.curve)
            router = ctx.socket(zmq.ROUTER)
            router.linger = 0
            router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes + 1)  # per frame; libzmq drops the peer
            router.sndhwm = 1000
            router.rcvhwm = PEER_RCVHWM
            if self.curve is not None:
                apply_server_curve(router, self.curve)
            try:
                router.bind(self.address)
            except zmq.ZMQError as e:
                self.start_error = e
                raise
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router = router
            if self.operator_address is not None:
                operator = ctx.socket(zmq.ROUTER)
                operator.linger = 0
                operator.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
                operator.rcvhwm = PEER_RCVHWM
                try:
                    operator.bind(self.operator_address)
                except zmq.ZMQError as e:
                    self.start_error = e
                    raise
                self.operator_endpoint = operator.getsockopt_string(zmq.LAST_ENDPOINT)
            results = ctx.socket(zmq.PAIR)
            results.linger = 0
            results.bind(self._results_addr)
            worker = threading.Thread(target=self._worker, args=(ctx, stop), name="policy-infer", daemon=True)
            worker.start()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(results, zmq.POLLIN)
            if operator is not None:
                poller.register(operator, zmq.POLLIN)
            self.ready.set()
            # The start line goes where the status lines go (the console under `robopolicy serve`), logged or not.
            self.status_fn(self.start_line())
            t_start = last_status = time.monotonic()
            last_received = 0
            while not stop.is_set() and not self._stop.is_set():
                now = time.monotonic()
                if max_runtime_s is not None and now - t_start > max_runtime_s:
                    break
                events = dict(poller.poll(50))
                if results in events:
                    for _ in range(100):
                        try:
                            frames = results.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        identity, kind, req_seq, *reply = frames
                        if kind == b"chunk" and self.estopped:  # computed before the e-stop latched: never sent
                            self._reply_error(router, identity, "estopped", "server is e-stopped; send clear_estop",
                                              int(req_seq))
                        else:
                            self._send(router, identity, reply)
                if router in events:
                    for _ in range(1000):  # bounded batch, then service the results socket again
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle_safely(router, frames, False)
                if operator is not None and operator in events:
                    for _ in range(100):
                        try:
                            frames = operator.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle_safely(operator, frames, True)
                if self.status_every_s and now - last_status >= self.status_every_s:
                    with self.stats.lock:
                        received = self.stats.received
                    self.status_fn(self.status_line(rate=(received - last_received) / (now - last_status)))
                    last_status, last_received = now, received
                if allow is not None:
                    self.auth_denied = allow.denied
        finally:
            self._stop.set()
            if worker is not None:
                worker.join(2.0)
            with self._pending_cv:
                self._pending_cv.notify_all()
            for sock in (router, results, operator):
                if sock is not None:
                    sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            self.ready.set()

    def start_line(self) -> str:
        s = self.spec
        curve = (f"with CURVE ({len(self.curve.allowed_clients)} client keys, {len(self.curve.operator_keys)} operator "
                 "keys)" if self.curve else "without CURVE")
        operator = (f"; operator socket {self.operator_endpoint} (clear an e-stop: python -m robopolicy.deploy.operator "
                    f"clear {self.operator_endpoint})" if self.operator_endpoint else "; no operator socket")
        return (f"[policy server] serving {s.name or 'a policy'} on {self.endpoint} (To={s.n_obs_steps} T={s.horizon} "
                f"Ta={s.n_action_steps}, {s.fps:g} Hz) {curve}, up to {self.max_clients} clients{operator}")

    def status_line(self, rate: float | None = None) -> str:
        s = self.stats.snapshot()
        lat = (f"infer p50 {s['infer_ms_p50']:.1f} ms p99 {s['infer_ms_p99']:.1f} ms"
               if s["infer_ms_p50"] is not None else "no inference yet")
        r = f"{rate:.1f} msg/s, " if rate is not None else ""
        denied = f", {self.auth_denied} CURVE handshakes refused" if self.auth_denied else ""
        return (f"[policy server] {r}{s['received']} received, {s['inferences']} chunks, {lat}, "
                f"errors {s['errors'] or 0}, dropped {s['dropped']}{denied}{', E-STOPPED' if self.estopped else ''}")

    def _send(self, router: zmq.Socket, identity: bytes, frames: list[bytes]) -> None:
        try:
            router.send_multipart([identity, *frames], zmq.NOBLOCK)  # unknown peers are silently dropped
        except zmq.ZMQError:  # HWM reached (client not reading): drop the reply rather than block
            with self.stats.lock:
                self.stats.dropped += 1

    def _reply_error(self, router: zmq.Socket, identity: bytes, kind: str, message: str, reply_to: int | None) -> None:
        self.stats.error(kind)
        self._send(router, identity, error_frames(kind, message, next(self._seq), reply_to))

    def _handle_safely(self, sock: zmq.Socket, frames: list[Any], from_operator_socket: bool) -> None:
        try:
            self._handle(sock, frames, from_operator_socket)
        except Exception as e:  # a bug must not take the server down; the peer still gets a reply
            log.error("internal error while handling a message: %s", type(e).__name__,
                      exc_info=not isinstance(e, RecursionError))
            if len(frames) >= 2:
                self._reply_error(sock, frames[0].bytes, "internal", f"server error ({type(e).__name__})", None)
            else:
                self.stats.error("internal")

    def _may_clear_estop(self, frames: list[Any], from_operator_socket: bool) -> tuple[bool, bytes | None]:
        key = peer_key(frames[1])
        if from_operator_socket:
            return True, key
        return (self.curve is not None and key is not None and key in self.curve.operator_keys), key

    def _handle(self, router: zmq.Socket, frames: list[Any], from_operator_socket: bool = False) -> None:
        with self.stats.lock:
            self.stats.received += 1
        if len(frames) < 2:  # nothing but the routing identity: nothing to answer
            with self.stats.lock:
                self.stats.dropped += 1
            return
        identity = frames[0].bytes
        t_recv = time.monotonic()
        try:
            msg = decode(frames[1:], max_message_bytes=self.max_message_bytes)
        except ProtocolError as e:
            self._reply_error(router, identity, e.kind, e.message, e.seq)
            return
        with self.stats.lock:
            self.stats.by_type[msg.type] += 1
        if msg.type not in REQUEST_TYPES:
            self._reply_error(router, identity, "type", f"a server does not accept {msg.type!r} messages", msg.seq)
            return
        seq = next(self._seq)
        if msg.type == "ping":
            self._send(router, identity, encode("pong", seq, reply_to=msg.seq, t_ping=msg.get("t_send"),
                                                t_server=t_recv, estopped=self.estopped))
        elif msg.type == "hello":
            self._send(router, identity, encode("hello", seq, reply_to=msg.seq, spec=self.spec.to_dict(),
                                                estopped=self.estopped, server="robopolicy"))
        elif msg.type == "estop":
            if not self.estopped:
                log.warning("E-STOP latched by a client")
            self.estopped = True
            self._drain_jobs(self._router)  # pending requests came in on the main socket
            self._send(router, identity, encode("ack", seq, reply_to=msg.seq, estopped=True))
        elif msg.type == "clear_estop":
            allowed, key = self._may_clear_estop(frames, from_operator_socket)
            if not allowed:
                log.error("refused clear_estop from %s: only an operator (an operator CURVE key, or the local "
                          "operator socket) may clear an e-stop", describe_peer(key))
                self._reply_error(router, identity, "forbidden", "only an operator may clear an e-stop (an operator "
                                  "CURVE key or the server's local operator socket)", msg.seq)
                return
            if self.estopped:
                log.warning("E-STOP cleared by %s", "the operator socket" if from_operator_socket
                            else describe_peer(key))
            self.estopped = False
            self._send(router, identity, encode("ack", seq, reply_to=msg.seq, estopped=False))
        elif msg.type == "infer":
            if from_operator_socket:
                self._reply_error(router, identity, "type", "the operator socket does not run inferences", msg.seq)
                return
            if self.estopped:
                self._reply_error(router, identity, "estopped", "server is e-stopped; send clear_estop", msg.seq)
                return
            try:
                obs, t_obs = validate_infer(msg, self.spec)
            except ProtocolError as e:
                self._reply_error(router, identity, e.kind, e.message, msg.seq)
                return
            if not self._admit(identity, t_recv):
                self._reply_error(router, identity, "busy", f"server full: {self.max_clients} clients are being "
                                  "served", msg.seq)
                return
            if self._inline_ok() and self._predict_lock.acquire(blocking=False):
                try:
                    self._send(router, identity, self._infer(msg.seq, obs, t_obs, t_recv)[1])
                finally:
                    self._predict_lock.release()
                return
            with self._pending_cv:
                mine = self._pending.setdefault(identity, collections.deque())
                full = len(mine) >= self.queue_size
                if not full:
                    mine.append((identity, msg.seq, obs, t_obs, t_recv))
                    self._pending_cv.notify()
            if full:
                self._reply_error(router, identity, "busy", f"this client already has {self.queue_size} requests "
                                  "waiting", msg.seq)

    def _admit(self, identity: bytes, now: float) -> bool:
        """Is this client among the ``max_clients`` admitted ones (admitting it if there is room)?"""
        if identity not in self._clients and len(self._clients) >= self.max_clients:
            for other, last in list(self._clients.items()):  # forget clients that went quiet
                if now - last > self.client_timeout_s:
                    del self._clients[other]
            if len(self._clients) >= self.max_clients:
                return False
        self._clients[identity] = now
        return True

    def _drain_jobs(self, router: zmq.Socket) -> None:
        """Answer every pending inference request with an e-stop error instead of running it."""
        with self._pending_cv:
            jobs = [job for mine in self._pending.values() for job in mine]
            self._pending.clear()
        for identity, req_seq, *_ in jobs:
            self._reply_error(router, identity, "estopped", "server is e-stopped; send clear_estop", req_seq)

    def _inline_ok(self) -> bool:
        if self.inline_below_ms <= 0 or self._pending:
            return False
        with self.stats.lock:  # the worker appends concurrently
            recent = self._recent_infer_ms
            return len(recent) == recent.maxlen and max(recent) < self.inline_below_ms

    def _infer(self, req_seq: int, obs: dict[str, np.ndarray], t_obs: float,
               t_recv: float) -> tuple[bool, list[bytes]]:
        """Run the policy on one validated request: (a chunk?, the reply frames: a chunk or a ``policy`` error)."""
        t0 = time.monotonic()
        try:
            chunk = self.adapter.predict(obs)
            if not np.isfinite(chunk).all():
                raise ValueError("policy returned NaN or inf")
        except Exception as e:
            self.stats.error("policy")
            log.warning("policy failed: %s", e)
            with self.stats.lock:
                self._recent_infer_ms.append((time.monotonic() - t0) * 1e3)
            return False, error_frames("policy", f"{type(e).__name__}: {e}", next(self._seq), req_seq)
        t1 = time.monotonic()
        with self.stats.lock:
            self._recent_infer_ms.append((t1 - t0) * 1e3)
            self.stats.inferences += 1
            self.stats.infer_ms.append((t1 - t0) * 1e3)
            self.stats.queue_ms.append((t0 - t_recv) * 1e3)
        dt = self.spec.dt
        return True, encode("chunk", next(self._seq), {self.spec.action_key: chunk}, reply_to=req_seq,
                      t_obs=t_obs, t_first=t_obs - (self.spec.n_obs_steps - 1) * dt, dt=dt,
                      t_recv=t_recv, t_reply=t1, infer_ms=(t1 - t0) * 1e3)

    # ---- the inference worker -------------------------------------------------------------------
    def _worker(self, ctx: zmq.Context, stop: threading.Event) -> None:
        out = ctx.socket(zmq.PAIR)
        out.linger = 0
        out.connect(self._results_addr)
        try:
            while not stop.is_set() and not self._stop.is_set():
                with self._pending_cv:
                    if not self._pending:
                        self._pending_cv.wait(0.05)
                    if not self._pending:
                        continue
                    client, mine = self._pending.popitem(last=False)
                    identity, req_seq, obs, t_obs, t_recv = mine.popleft()
                    if mine:
                        self._pending[client] = mine  # its next request waits for every other client's turn
                with self._predict_lock:
                    ok, frames = self._infer(req_seq, obs, t_obs, t_recv)
                kind = b"chunk" if ok else b"error"
                try:  # the socket thread withholds a chunk if the e-stop latched meanwhile
                    out.send_multipart([identity, kind, str(req_seq).encode(), *frames])
                except zmq.ZMQError:
                    break
        finally:
            out.close(0)


def serve(policy_adapter: PolicyAdapter, address: str = DEFAULT_ADDRESS, curve: ServerCurve | None = None,
          max_runtime_s: float | None = None, **kwargs: Any) -> PolicyServer:
    """Serve in the foreground until SIGINT/SIGTERM (or ``max_runtime_s``)."""
    server = PolicyServer(policy_adapter, address=address, curve=curve, **kwargs)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    server.run(stop, max_runtime_s=max_runtime_s)
    return server


def _server_process_main(factory: Callable[..., PolicyAdapter], factory_kwargs: dict[str, Any], address: str,
                         curve: ServerCurve | None, ready: Any, max_runtime_s: float, server_kwargs: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    server = PolicyServer(factory(**factory_kwargs), address=address, curve=curve, **server_kwargs)
    threading.Thread(target=lambda: (server.ready.wait(), ready.set()), daemon=True).start()
    server.run(max_runtime_s=max_runtime_s)


def start_server_process(factory: Callable[..., PolicyAdapter], address: str, factory_kwargs: dict | None = None,
                         curve: ServerCurve | None = None, max_runtime_s: float = 120.0, timeout_s: float = 30.0,
                         **server_kwargs: Any):
    """A server in its own (spawned) process, e.g. to ``kill -9`` it in tests; ``factory`` must be picklable."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_server_process_main, daemon=True,
                       args=(factory, factory_kwargs or {}, address, curve, ready, max_runtime_s, server_kwargs))
    proc.start()
    if not ready.wait(timeout_s):
        proc.kill()
        raise RuntimeError(f"server process did not come up on {address} within {timeout_s}s")
    return proc


__all__ = ["DEFAULT_ADDRESS", "PolicyServer", "ServerStats", "serve", "start_server_process"]

