"""Robot side: a DEALER client for the policy server and the real-time control loop.

Three rates run together:

- inference, asynchronous: requests go out on a non-blocking DEALER socket and replies are
  picked up by polling with zero timeout once per control tick, so a slow policy never blocks;
- the control loop, at ``control_hz`` (default 100 Hz): interpolates between the time-stamped
  waypoints of the scheduled chunks (:mod:`robopolicy.deploy.scheduling`), applies the safety filter
  and sends the command; it waits for its next tick by sleeping then spinning (:func:`precise_wait`)
  and records its period jitter;
- the robot driver at its own rate (:attr:`RobotSpec.control_hz`), holding the latest command.

Safety: the safe action is held whenever there is no valid target (nothing scheduled for now,
an observation with NaN/inf, an invalid chunk, a latched e-stop) or when the server link is
silent for longer than ``watchdog_s`` (default 100 ms; heartbeats are sent every
``watchdog_s / 4``, and the server answers them even while inferring). A silent link is treated
as dead: the schedule is cleared (no action from it is executed later), the DEALER socket is
recreated and ``hello`` is resent until the server answers again.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from robopolicy.deploy.keys import ClientCurve, apply_client_curve
from robopolicy.deploy.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR_KINDS,
    Message,
    PolicySpec,
    ProtocolError,
    decode,
    describe,
    encode,
    validate_chunk,
)
from robopolicy.deploy.robot import Robot, RobotState
from robopolicy.deploy.safety import EStop, SafetyFilter, Watchdog, is_finite_tree
from robopolicy.deploy.scheduling import BLEND_MODES, INTERPOLATION_MODES, ChunkScheduler
from robopolicy.deploy.timing import PeriodRecorder, precise_wait

log = logging.getLogger("robopolicy.deploy.client")


class PolicyClient:
    """A DEALER socket to a policy server: non-blocking sends, polled receives, recreate on demand."""

    def __init__(self, address: str, curve: ClientCurve | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.address = address
        self.curve = curve
        self.max_message_bytes = max_message_bytes
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self._seq = itertools.count(1)
        self.epoch = 0  # incremented by every (re)connection
        self.invalid_replies = 0
        self.open()

    def open(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 8
        sock.rcvhwm = 64
        sock.immediate = True  # never queue requests for a server that is not connected
        sock.reconnect_ivl = 50
        sock.reconnect_ivl_max = 500
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes + 1)
        if self.curve is not None:
            apply_client_curve(sock, self.curve)
        sock.connect(self.address)
        self.sock = sock
        self.epoch += 1

    def reconnect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.open()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        self.ctx.term()

    def send(self, msg_type: str, arrays: dict[str, np.ndarray] | None = None, **fields: Any) -> int | None:
        """Send without blocking; the request's ``seq``, or None if it could not go out now."""
        seq = next(self._seq)
        try:
            self.sock.send_multipart(encode(msg_type, seq, arrays, **fields), zmq.NOBLOCK)
        except zmq.Again:
            return None
        return seq

    def receive(self, timeout_ms: int = 0, max_messages: int = 100) -> list[Message]:
        """Decoded replies that arrived (waiting at most ``timeout_ms`` for the first)."""
        out: list[Message] = []
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return out
        for _ in range(max_messages):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(decode(frames, max_message_bytes=self.max_message_bytes))
            except ProtocolError as e:
                self.invalid_replies += 1
                log.warning("invalid reply from server: %s", e)
            except Exception as e:  # a decoder bug on hostile input: count it, never crash the control loop
                self.invalid_replies += 1
                log.warning("invalid reply from server (%s while decoding)", type(e).__name__)
        return out

    def call(self, msg_type: str, arrays: dict[str, np.ndarray] | None = None, timeout_s: float = 1.0,
             **fields: Any) -> Message | None:
        """Blocking request/reply with a timeout (for tools and tests; the control loop never blocks)."""
        deadline = time.monotonic() + timeout_s
        seq = None
        while seq is None:
            seq = self.send(msg_type, arrays, **fields)
            if seq is None:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.005)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for m in self.receive(int(remaining * 1000) + 1):
                if m.get("reply_to") == seq:
                    return m

    def hello(self, timeout_s: float = 2.0) -> PolicySpec | None:
        m = self.call("hello", timeout_s=timeout_s)
        return None if m is None or m.type != "hello" else PolicySpec.from_dict(m.get("spec"))

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclasses.dataclass
class ControlLoopConfig:
    control_hz: float = 100.0
    blend: str = "rtc"  # rtc | ensemble | replace
    interpolation: str = "linear"  # linear | hold (each action until the next: as demos recorded at the policy rate)
    watchdog_s: float = 0.1  # server silent this long -> safe action, recreate the socket
    ping_interval_s: float | None = None  # default watchdog_s / 4
    request_timeout_s: float = 1.0  # give up on an inference request after this long
    latency_margin_s: float = 0.0  # drop actions whose time is earlier than now + this
    validity_s: float | None = None  # hold the last action of a chunk at most this long (default dt)
    ensemble_m: float = 0.01
    rtc_soft_steps: int = 0
    request_lead_s: float = 0.0  # ask for the next chunk this much earlier than the latency estimate needs
    lookahead_s: float = 0.0  # evaluate the trajectory at now + lookahead (robot execution latency)
    initial_delay_s: float = 0.05  # inference-delay estimate before the first measurement
    reconnect_interval_s: float = 0.25
    max_obs_age_s: float | None = None  # do not infer from older observations (default 2 robot periods + 50 ms)
    spin_s: float = 0.0005
    log_commands: bool = True


@dataclasses.dataclass
class CommandRecord:
    t: float
    command: np.ndarray | None
    mode: str  # "policy" | "safe" | "stop"
    reason: str  # why safe ("" for policy)
    chunk_id: int = -1
    epoch: int = -1
    t_valid_from: float = math.nan
    t_end: float = math.nan


class ControlLoop:
    """Run a :class:`~robopolicy.robots.base.Robot` from a policy server (see module docstring)."""

    def __init__(self, robot: Robot, client: PolicyClient | str, config: ControlLoopConfig | None = None,
                 curve: ClientCurve | None = None):
        c = self.config = config or ControlLoopConfig()
        if c.blend not in BLEND_MODES or c.interpolation not in INTERPOLATION_MODES:
            raise ValueError(f"control loop: blend must be one of {BLEND_MODES} (got {c.blend!r}) and interpolation "
                             f"one of {INTERPOLATION_MODES} (got {c.interpolation!r})")
        self.robot = robot
        self.client = client if isinstance(client, PolicyClient) else PolicyClient(client, curve=curve)
        self._own_client = not isinstance(client, PolicyClient)
        self.period = 1.0 / c.control_hz
        self.ping_interval = c.ping_interval_s or c.watchdog_s / 4
        rs = robot.spec
        self.safety = SafetyFilter(rs.action_low, rs.action_high, rs.max_velocity, rs.max_acceleration,
                                   angle_dims=rs.angle_dims, angle_period=rs.angle_period)
        self.watchdog = Watchdog(c.watchdog_s)
        self.estop = EStop()
        self.spec: PolicySpec | None = None
        self.scheduler: ChunkScheduler | None = None
        self.recorder = PeriodRecorder(self.period)
        self.history: collections.deque[RobotState] = collections.deque()
        self.commands: list[CommandRecord] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.server_errors: collections.Counter[str] = collections.Counter()
        self.latencies_ms: list[float] = []
        self.state: RobotState | None = None
        self._last_obs_seq: int | None = None
        self._obs_ok = False
        self._inflight: dict[str, Any] | None = None
        self._delay_est = c.initial_delay_s
        self._last_ping = -math.inf
        self._last_hello = -math.inf
        self._link_alive = False
        self._last_reconnect = -math.inf
        self._safe_mode: str | None = None
        self._safe_cmd: np.ndarray | None = None
        self.fatal: str | None = None
        self._pending_estop: str | None = None
        self._clear_seq: int | None = None  # seq of the last clear_estop sent

    # ---- operator actions -------------------------------------------------------------------------
    def trigger_estop(self, reason: str = "operator") -> None:
        """Latch the local e-stop and tell the server (it refuses inference until cleared)."""
        self._latch_estop(reason)
        self._pending_estop = "estop"

    def clear_estop(self) -> None:
        """Clear the local latch and ask the server to clear its own. The server accepts only an operator
        (docs/protocol.md, "E-stop authority"): unless this client's CURVE key is an operator key it answers
        ``forbidden``, and its next reply saying "e-stopped" latches this loop again."""
        self._forget_plans()
        self.estop.clear()
        self._pending_estop = "clear_estop"

    def _latch_estop(self, reason: str) -> None:
        """Latch, and drop every chunk planned or requested before it: nothing resumes after a clear."""
        self.estop.trigger(reason)
        self._forget_plans()

    def _forget_plans(self) -> None:
        if self.scheduler is not None:
            self.scheduler.clear()
        self._inflight = None

    # ---- one tick -------------------------------------------------------------------------------------
    def _configure(self, spec: PolicySpec) -> None:
        missing = [k for k in spec.input_features if self.robot.spec.observation_keys
                   and k not in self.robot.spec.observation_keys]
        if missing:
            self.fatal = f"robot {self.robot.spec.name!r} does not provide {missing} that the policy reads"
        if spec.action_dim != self.robot.spec.action_dim:
            self.fatal = f"policy action dim {spec.action_dim} != robot action dim {self.robot.spec.action_dim}"
        if spec.infer_bytes() > self.client.max_message_bytes:
            self.fatal = (f"the policy's observation history ({spec.infer_bytes()} bytes per request) exceeds the "
                          f"message limit of {self.client.max_message_bytes} bytes")
        if self.fatal is not None:
            return
        if self.spec is None or spec != self.spec:
            c = self.config
            self.spec = spec
            self.scheduler = ChunkScheduler(spec.n_obs_steps, spec.horizon, spec.n_action_steps, spec.dt, c.blend,
                                            c.latency_margin_s, c.validity_s, c.ensemble_m, c.rtc_soft_steps,
                                            c.request_lead_s, angle_dims=self.robot.spec.angle_dims,
                                            angle_period=self.robot.spec.angle_period,
                                            interpolation=c.interpolation)
            # Enough robot-rate frames to span the To policy steps (the robot may run faster than the policy).
            per_step = max(1, math.ceil(spec.dt * self.robot.spec.control_hz - 1e-9))
            self.history = collections.deque(self.history, maxlen=(spec.n_obs_steps - 1) * per_step + 2)

    def _link_lost(self, now: float, reason: str) -> None:
        self.counters["link_lost"] += 1
        log.warning("policy server link lost (%s); holding the safe action and reconnecting", reason)
        self._link_alive = False
        if self.scheduler is not None:
            self.scheduler.clear()  # nothing planned over a dead link is executed later
        self._inflight = None
        self._reconnect(now)

    def _reconnect(self, now: float) -> None:
        self.client.reconnect()
        self.counters["reconnects"] += 1
        self._last_reconnect = now
        self._last_hello = -math.inf

    def _handle(self, m: Message, now: float) -> None:
        self.watchdog.feed(now)
        self._link_alive = True
        says_estopped = m.get("estopped") is True or (m.type == "error" and m.get("kind") == "estopped")
        reply_to = m.get("reply_to")
        from_before_clear = self._pending_estop == "clear_estop" or (
            self._clear_seq is not None and (not isinstance(reply_to, int) or reply_to < self._clear_seq))
        if says_estopped and not from_before_clear:
            # any reply that says so (pong, hello, ack, error): another operator may have pressed it
            self._latch_estop("server is e-stopped")
        if m.type == "hello":
            try:
                self._configure(PolicySpec.from_dict(m.get("spec")))
            except ProtocolError as e:
                self.fatal = f"bad hello from server: {e}"
        elif m.type == "chunk":
            inf = self._inflight
            if inf is None or m.get("reply_to") != inf["seq"] or self.scheduler is None or self.estop.active:
                self.counters["unexpected_chunks"] += 1
                return
            self._inflight = None
            try:
                actions, t_first, dt = validate_chunk(m, self.spec, t_obs_sent=inf["t_obs"])
            except ProtocolError as e:
                self.counters["rejected_chunks"] += 1
                log.warning("rejected chunk: %s", e)
                return
            delay = now - inf["t_sent"]
            self.latencies_ms.append(delay * 1e3)
            self._delay_est = 0.8 * self._delay_est + 0.2 * delay if self.counters["chunks"] else delay
            self.counters["chunks"] += 1
            self.scheduler.add_chunk(actions, t_first, now, dt=dt, t_request=inf["t_sent"],
                                     expected_delay_s=inf["expected_delay"], t_obs=inf["t_obs"],
                                     epoch=self.client.epoch)
        elif m.type == "error":
            kind = m.get("kind") if m.get("kind") in ERROR_KINDS else f"unknown:{describe(m.get('kind'), 20)}"
            self.server_errors[kind] += 1
            if self._inflight is not None and m.get("reply_to") == self._inflight["seq"]:
                self._inflight = None

    def _handle_safely(self, m: Message, now: float) -> None:
        """:meth:`_handle`, counting a reply that breaks it as invalid: one bad reply never stops the loop."""
        try:
            self._handle(m, now)
        except Exception as e:
            self.client.invalid_replies += 1
            log.warning("invalid %s reply from server ignored (%s)", describe(m.type), type(e).__name__)

    def tick(self, now: float) -> CommandRecord:
        c = self.config
        # 1. the robot's latest observation
        state = self.robot.read_state()
        if state is not None and state.seq != self._last_obs_seq:
            self._last_obs_seq = state.seq
            self.state = state
            if is_finite_tree(state.observation):
                self._obs_ok = True
                # The To history keeps copies: a driver may refill one buffer in place on every read.
                self.history.append(dataclasses.replace(
                    state, observation={k: np.array(v, copy=True) for k, v in state.observation.items()}))
            else:
                self._obs_ok = False
                self.counters["rejected_observations"] += 1
                self.history.clear()
                if self.scheduler is not None:
                    self.scheduler.clear()
        # 2. replies
        for m in self.client.receive(0):
            self._handle_safely(m, now)
        # 3. link watchdog, heartbeat, (re)connection
        if self._link_alive and self.watchdog.expired(now):
            self._link_lost(now, f"no reply for {c.watchdog_s * 1e3:.0f} ms")
        if not self._link_alive and now - self._last_reconnect > c.reconnect_interval_s and \
                now - self._last_hello > c.reconnect_interval_s and self._last_hello > -math.inf:
            self._reconnect(now)
        if self.spec is None or not self._link_alive:
            if now - self._last_hello > c.reconnect_interval_s / 2:
                if self.client.send("hello") is not None:
                    self._last_hello = now
        elif now - self._last_ping > self.ping_interval:
            if self.client.send("ping") is not None:
                self._last_ping = now
        if self._pending_estop is not None and (sent := self.client.send(self._pending_estop)) is not None:
            if self._pending_estop == "clear_estop":  # replies to earlier requests still say "e-stopped"
                self._clear_seq = sent
            self._pending_estop = None
        # 4. inference request
        if self._inflight is not None and now - self._inflight["t_sent"] > c.request_timeout_s:
            self.counters["request_timeouts"] += 1
            self._inflight = None
        if (self._inflight is None and self._link_alive and self.spec is not None and self._obs_ok
                and self.history and not self.estop.active and self.fatal is None
                and self.scheduler.needs_request(now, self._delay_est)):
            newest = self.history[-1]
            max_age = c.max_obs_age_s if c.max_obs_age_s is not None else 2.0 / self.robot.spec.control_hz + 0.05
            if now - newest.t <= max_age:
                seq = self._send_infer(newest)
                if seq is not None:
                    self._inflight = {"seq": seq, "t_sent": now, "t_obs": newest.t, "expected_delay": self._delay_est}
                    self.counters["requests"] += 1
            else:
                self.counters["stale_observations"] += 1
        # 5. the command
        reason = ""
        target, chunk = None, None
        if self.fatal is not None:
            reason = "fatal"
        elif self.estop.active:
            reason = "estop"
        elif not self._link_alive:
            reason = "link"
        elif not self._obs_ok:
            reason = "observation"
        elif self.scheduler is None:
            reason = "no_spec"
        else:
            target, chunk = self.scheduler.target(now + c.lookahead_s)
            if target is None:
                reason = "no_valid_action"
                if self.counters["chunks"]:
                    self.counters["starved_ticks"] += 1
        cmd = None
        if target is not None:
            if self.safety.last is None:  # first policy command (start, after a stop): limit it from where the
                self.safety.reset(self._measured_command())  # robot is, not let it jump to the target
            cmd = self.safety(target, self.period)
            if cmd is None:
                reason = "nonfinite_action"
        if cmd is not None:
            self._safe_mode = None
            self.robot.send_command(cmd)
            rec = CommandRecord(now, cmd, "policy", "", chunk.id, chunk.epoch, chunk.t_valid_from, chunk.t_end)
        else:
            rec = self._apply_safe(now, reason)
        self.counters["ticks"] += 1
        if rec.mode != "policy":
            self.counters["safe_ticks"] += 1
        if c.log_commands and len(self.commands) < 500_000:
            self.commands.append(rec)
        return rec

    def _measured_command(self) -> np.ndarray | None:
        """The command that holds the robot where it is now (position-clipped), if the robot can tell."""
        hold = self.robot.hold_action(self.state)
        if hold is None:
            if self.safety.max_velocity is not None or self.safety.max_acceleration is not None:
                self.counters["unlimited_first_commands"] += 1  # no reference: the limits start from this command
            return None
        hold = self.safety.clip_position(np.asarray(hold, dtype=np.float64))
        return hold if np.isfinite(hold).all() else None

    def history_frames(self) -> list[RobotState]:
        """The To observations the policy expects, ``dt = 1 / fps`` apart and ending at the newest: for each
        slot the latest observation at or before its time (half a robot period of slack), at episode start
        the oldest one there is (repeated, as the datasets pad)."""
        spec, states = self.spec, list(self.history)
        slack = 0.5 / self.robot.spec.control_hz
        frames = []
        for k in range(spec.n_obs_steps):
            t_k = states[-1].t - (spec.n_obs_steps - 1 - k) * spec.dt
            earlier = [s for s in states if s.t <= t_k + slack]
            frames.append(earlier[-1] if earlier else states[0])
        return frames

    def _send_infer(self, newest: RobotState) -> int | None:
        arrays = {k: np.stack([np.asarray(s.observation[k], dtype=np.float32) for s in self.history_frames()])
                  for k in self.spec.input_features}
        return self.client.send("infer", arrays, t_obs=newest.t)

    def _apply_safe(self, now: float, reason: str) -> CommandRecord:
        if self._safe_mode is None:  # entering the safe state: fix the hold target once
            self.counters["safe_entries"] += 1
            self._safe_cmd = self.robot.safe_command(self.state)
            self._safe_mode = "stop" if self._safe_cmd is None else "safe"
            if self._safe_cmd is None:
                self.robot.stop()
            self._safe_cmd = self.safety.safe(self._safe_cmd)
        if self._safe_cmd is not None:
            self.robot.send_command(self._safe_cmd)
        return CommandRecord(now, None if self._safe_cmd is None else self._safe_cmd.copy(), self._safe_mode, reason)

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self, duration_s: float, stop_event: threading.Event | None = None,
            until: Callable[[ControlLoop], bool] | None = None,
            on_tick: Callable[[ControlLoop, CommandRecord], None] | None = None) -> dict[str, Any]:
        """Tick at ``control_hz`` for at most ``duration_s`` (or until ``stop_event``/``until``)."""
        t_start = time.monotonic()
        next_t = t_start
        try:
            while True:
                now = time.monotonic()
                self.recorder.tick(now)
                if now - t_start >= duration_s or (stop_event is not None and stop_event.is_set()):
                    break
                if until is not None and until(self):
                    break
                rec = self.tick(now)
                if on_tick is not None:
                    on_tick(self, rec)
                if self.fatal is not None:
                    log.error("control loop stopped: %s", self.fatal)
                    break
                next_t += self.period
                if time.monotonic() > next_t + self.period:  # a whole period late: count it, do not catch up
                    self.recorder.overruns += 1
                    next_t = time.monotonic()
                self._wait(next_t)
        except BaseException as e:  # a bug, a bad reply, Ctrl-C: the robot never keeps tracking a dead loop
            self._safe_after_crash(e)
            raise
        return self.summary()

    def _safe_after_crash(self, error: BaseException) -> None:
        log.error("control loop crashed (%s: %s); sending the safe action", type(error).__name__, error)
        self.fatal = self.fatal or f"crashed: {type(error).__name__}: {error}"
        self._safe_mode = None  # enter the safe state afresh
        try:
            self._apply_safe(time.monotonic(), "crash")
        except Exception:
            log.exception("safe action failed after a crash; stopping the robot")
            self.robot.stop()

    def _wait(self, deadline: float) -> None:
        """Wait for the next tick, handling server replies as they arrive (so latency is not quantized)."""
        spin = self.config.spin_s
        while True:
            remaining = deadline - time.monotonic() - spin
            if remaining < 0.001 or self.client.sock is None:
                break
            if self.client.sock.poll(int(remaining * 1000), zmq.POLLIN):
                for m in self.client.receive(0):
                    self._handle_safely(m, time.monotonic())
        precise_wait(deadline, spin)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        sched = dataclasses.asdict(self.scheduler.stats) if self.scheduler is not None else {}
        return {
            **dict(self.counters), "server_errors": dict(self.server_errors), "schedule": sched,
            "invalid_replies": self.client.invalid_replies,
            "deadline_misses": sched.get("late_chunks", 0) + self.counters["starved_ticks"],
            "watchdog_trips": self.watchdog.trips, "estop": self.estop.active,
            "safety": {"rejected": self.safety.rejected, "clipped_position": self.safety.clipped_position,
                       "clipped_velocity": self.safety.clipped_velocity,
                       "clipped_acceleration": self.safety.clipped_acceleration},
            "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
            "period": self.recorder.stats(), "fatal": self.fatal,
        }

    def close(self) -> None:
        if self._own_client:
            self.client.close()


__all__ = ["CommandRecord", "ControlLoop", "ControlLoopConfig", "PolicyClient"]
