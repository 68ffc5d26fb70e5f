"""A generic ZeroMQ message set for robot arms, and a reference bridge driving a simulated arm.

A real arm's own controller process (libfranka, ur_rtde, xArm SDK, ...) implements the *arm side*
of this message set; robopolicy's clients (:class:`ArmClient`, :class:`~robopolicy.robots.sim_arm.BridgeArm`,
the teleop leader stream) speak the *client side*. See ``docs/arms.md``.

Messages use the project's wire format (:mod:`robopolicy.deploy.protocol`): frame 0 is a msgpack
header ``{"v", "type", "seq", "t_send", "frames": [...], ...}``, then one raw little-endian array per
frame. Types here (``ARM_MSG_TYPES``):

==============  ==========  =================================================================================
type            direction   content
==============  ==========  =================================================================================
``arm_cmd``     client→arm  ``mode`` (``"ee_delta"``, ``"ee_pose"``, ``"joint"``), array ``target``
                            (ee_delta: (6,) [dx, dy, dz, rx, ry, rz] m / rad axis-angle, base frame;
                            ee_pose: (7,) [x, y, z, qx, qy, qz, qw]; joint: (dof,) rad), array ``gripper``
                            (1,) in [-1 open, +1 closed]. Latest command wins.
``arm_state``   arm→client  arrays ``joint_pos`` (dof,), ``joint_vel`` (dof,), ``ee_pos`` (3,), ``ee_quat`` (4,),
                            ``gripper`` (1,) [-1, 1] and any ``extra`` arrays (e.g. object state in sim);
                            fields ``t`` (arm clock, s), ``estopped`` (bool), ``cmd_seq`` (last applied),
                            ``episode`` (resets so far)
``hello``       client→arm  request; the reply (``hello``) carries ``spec``: dof, modes, rate_hz, limits
``estop``       client→arm  latch the e-stop: the arm holds position and ignores commands; reply ``ack``
``clear_estop`` operator→   unlatch; reply ``ack``. Only on the **operator** socket (below); on the control
                arm         socket it is refused (``error`` kind ``forbidden``, logged)
``ping``/       both        liveness; ``pong`` replies
``pong``
``reset``       operator→   simulation only: field ``seed`` (int) starts a new episode; reply ``ack`` with
                arm         ``episode``. A real arm replies ``error`` (kind ``unsupported``). Operator socket
                            only, like ``clear_estop``
``error``       arm→client  ``kind`` and ``message`` (same kinds as the policy protocol)
==============  ==========  =================================================================================

Sockets (the arm binds, clients connect): **state** PUB→SUB and **command** PUSH→PULL are streams
where the newest message wins: receivers set ``ZMQ_CONFLATE``, which only works on single-part
messages, so a stream message is the multipart message packed into one frame (a msgpack list of the
frames, :func:`pack_frames`). (A high-water mark alone would not do: a full queue drops the *newest*
messages and keeps stale ones.) Clients never block on a send. **control** REP←REQ (hello, estop,
ping) stays multipart; clients use timeouts. **operator** REP←REQ (also ``clear_estop`` and ``reset``) is
an ``ipc://`` socket in a directory only the bridge's user can enter (0700; checked at bind), so only a
deliberate local operator (or the robot process of the same user, e.g. a simulation's episode reset)
reaches it (:mod:`robopolicy.deploy.operator`).

Memory: every receiving socket sets ``ZMQ_MAXMSGSIZE`` (a larger frame drops that peer's connection
before it is buffered). Stream messages are single frames, so that bounds them whole; the control sockets
take multipart messages, for which libzmq buffers every frame of a message before delivering it
(``docs/protocol.md``, "Memory bounds").

Safety on the arm side: a **watchdog** (default 0.5 s, like LeKiwi) holds the current pose when no
command arrives; an e-stop latches until ``clear_estop``; targets are clipped to the workspace
box and the per-tick step limit; non-finite targets are rejected (protocol validation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
from scipy.spatial.transform import Rotation

from robopolicy.deploy.operator import operator_address
from robopolicy.deploy.protocol import (
    MAX_FRAMES,
    Message,
    ProtocolError,
    _frame_bytes,
    decode,
    describe,
    encode,
)

log = logging.getLogger("robopolicy.deploy.arm_bridge")
ARM_MSG_TYPES = frozenset({"arm_cmd", "arm_state", "hello", "estop", "clear_estop", "ping", "pong", "ack", "error",
                           "reset", "ee_target"})
CMD_MODES = ("ee_delta", "ee_pose", "joint")
MAX_ARM_MESSAGE_BYTES = 1024 * 1024
# A stream message packs the whole multipart message into one frame: msgpack adds a few bytes per frame.
MAX_STREAM_FRAME_BYTES = MAX_ARM_MESSAGE_BYTES + 16 * (MAX_FRAMES + 1) + 16
CONTROL_RCVHWM = 16  # queued control requests per peer (a REQ peer has one in flight)
OPERATOR_ONLY = frozenset({"clear_estop", "reset"})


# ---- codec -------------------------------------------------------------------------------------

def encode_arm(msg_type: str, seq: int, arrays: Mapping[str, np.ndarray] | None = None, *,
               t_send: float | None = None, **fields: Any) -> list[bytes]:
    """Frames of one arm message: the control-loop protocol's framing with the arm message set."""
    return encode(msg_type, seq, arrays, t_send=t_send, msg_types=ARM_MSG_TYPES, **fields)


def decode_arm(frames: list[Any], max_message_bytes: int = MAX_ARM_MESSAGE_BYTES) -> Message:
    """Validate and decode an arm message; :class:`ProtocolError` on anything wrong (NaN included)."""
    return decode(frames, max_message_bytes=max_message_bytes, msg_types=ARM_MSG_TYPES)


def pack_frames(frames: list[bytes]) -> bytes:
    """One ZeroMQ frame holding a whole message, for conflating sockets (ZMQ_CONFLATE is single-part only)."""
    return msgpack.packb(list(frames), use_bin_type=True)


def unpack_frames(data: Any) -> list[bytes]:
    try:
        frames = msgpack.unpackb(_frame_bytes(data), raw=False, use_list=True)
    except Exception:
        raise ProtocolError("malformed", "stream message is not a msgpack list of frames") from None
    if not isinstance(frames, list) or not frames or len(frames) > MAX_FRAMES + 1 \
            or not all(isinstance(f, bytes) for f in frames):
        raise ProtocolError("malformed", "stream message must be a list of 1..65 binary frames")
    return frames


def stream_socket(ctx: Any, kind: int, conflate: bool = True, max_frame_bytes: int = MAX_STREAM_FRAME_BYTES) -> Any:
    """A streaming socket where the newest message wins: ZMQ_CONFLATE on receivers (set before connect/bind).

    Receivers refuse frames over ``max_frame_bytes`` (ZMQ_MAXMSGSIZE: libzmq drops that connection before
    buffering more); a stream message is one frame, so that bounds each message whole."""
    import zmq

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if kind in (zmq.SUB, zmq.PULL):
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    if conflate and kind in (zmq.SUB, zmq.PULL):
        sock.setsockopt(zmq.CONFLATE, 1)
    # Senders keep the default high-water mark: a small one would drop the *newest* message when the
    # pipe is momentarily full; the conflating receiver already keeps only the newest.
    return sock


def recv_latest(sock: Any) -> list[bytes] | None:
    """Drain a (conflating) socket without blocking; the newest message's frames, or None."""
    import zmq

    latest = None
    while True:
        try:
            latest = sock.recv(flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return None if latest is None else unpack_frames(latest)


# ---- arm side ----------------------------------------------------------------------------------

@dataclasses.dataclass
class ArmSpec:
    dof: int
    rate_hz: float = 20.0
    modes: tuple[str, ...] = ("ee_delta", "ee_pose")
    workspace_low: tuple[float, float, float] = (-1.0, -1.0, 0.0)
    workspace_high: tuple[float, float, float] = (1.0, 1.0, 1.5)
    max_step_pos: float = 0.05  # metres per tick
    max_step_rot: float = 0.5  # radians per tick
    watchdog_s: float = 0.5
    name: str = "arm"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modes"] = list(self.modes)
        d["workspace_low"], d["workspace_high"] = list(self.workspace_low), list(self.workspace_high)
        return d


@dataclasses.dataclass
class ArmReading:
    joint_pos: np.ndarray
    joint_vel: np.ndarray
    ee_pos: np.ndarray
    ee_quat: np.ndarray
    gripper: float
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class ArmBackend:
    """What the bridge drives: a simulated arm here; a vendor SDK in a real arm's bridge."""

    spec: ArmSpec

    def read(self) -> ArmReading:
        raise NotImplementedError

    def step(self, mode: str, target: np.ndarray, gripper: float) -> None:
        """Advance one tick toward ``target`` (already validated and clipped)."""
        raise NotImplementedError

    def reset(self, seed: int) -> None:
        """Start a new episode (simulated arms); a real arm's bridge leaves this unsupported."""
        raise ProtocolError("unsupported", f"{self.spec.name} cannot reset episodes (simulation only)")

    def hold(self) -> None:
        """Advance one tick holding the current pose (watchdog, e-stop)."""
        r = self.read()
        self.step("ee_delta", np.zeros(6), r.gripper)

    def close(self) -> None:
        pass


class KinematicArm(ArmBackend):
    """A dependency-free stand-in: the end effector is a rate-limited point with orientation, no joints."""

    def __init__(self, spec: ArmSpec | None = None, start_pos=(0.0, 0.0, 1.0)):
        self.spec = spec or ArmSpec(dof=0)
        self._start = np.asarray(start_pos, dtype=np.float64)
        self.pos = self._start.copy()
        self.quat = np.array([0.0, 0.0, 0.0, 1.0])
        self.gripper = -1.0

    def read(self) -> ArmReading:
        return ArmReading(np.zeros(self.spec.dof), np.zeros(self.spec.dof), self.pos.copy(), self.quat.copy(), self.gripper)

    def reset(self, seed: int) -> None:
        self.pos, self.quat, self.gripper = self._start.copy(), np.array([0.0, 0.0, 0.0, 1.0]), -1.0

    def step(self, mode: str, target: np.ndarray, gripper: float) -> None:
        if mode == "ee_delta":
            self.pos = self.pos + target[:3]
            self.quat = (Rotation.from_rotvec(target[3:6]) * Rotation.from_quat(self.quat)).as_quat()
        elif mode == "ee_pose":
            self.pos = target[:3].copy()
            self.quat = target[3:7] / np.linalg.norm(target[3:7])
        self.gripper = float(gripper)


def clip_target(spec: ArmSpec, mode: str, target: np.ndarray, reading: ArmReading) -> np.ndarray:
    """Workspace box and per-tick step limits, applied on the arm side whatever the client sent."""
    lo, hi = np.asarray(spec.workspace_low), np.asarray(spec.workspace_high)
    t = np.asarray(target, dtype=np.float64).copy()
    if mode == "ee_delta":
        n = np.linalg.norm(t[:3])
        if n > spec.max_step_pos:
            t[:3] *= spec.max_step_pos / n
        n = np.linalg.norm(t[3:6])
        if n > spec.max_step_rot:
            t[3:6] *= spec.max_step_rot / n
        t[:3] = np.clip(reading.ee_pos + t[:3], lo, hi) - reading.ee_pos
    elif mode == "ee_pose":
        p = np.clip(t[:3], lo, hi)
        d = p - reading.ee_pos
        n = np.linalg.norm(d)
        t[:3] = reading.ee_pos + (d * spec.max_step_pos / n if n > spec.max_step_pos else d)
    return t


def control_socket(ctx: Any, kind: int) -> Any:
    """A REQ/REP socket for control requests, with the message-size and queue limits."""
    import zmq

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_ARM_MESSAGE_BYTES + 1)
    sock.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
    return sock


class ArmBridge:
    """The reference arm-side process: binds its sockets and runs the arm at ``spec.rate_hz``.

    ``operator_addr``: the operator socket (``ipc://`` in a directory only this user can enter), the only
    place ``clear_estop`` and ``reset`` are accepted; None: nowhere (an e-stop then holds until a restart).
    """

    def __init__(self, backend: ArmBackend, state_addr: str, cmd_addr: str, ctl_addr: str, context: Any = None,
                 operator_addr: str | None = None):
        import zmq

        self.backend = backend
        self.spec = backend.spec
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.pub = stream_socket(self.ctx, zmq.PUB)
        self.pub.bind(state_addr)
        self.pull = stream_socket(self.ctx, zmq.PULL)
        self.pull.bind(cmd_addr)
        self.rep = control_socket(self.ctx, zmq.REP)
        self.rep.bind(ctl_addr)
        self.operator_rep = None
        if operator_addr is not None:
            self.operator_rep = control_socket(self.ctx, zmq.REP)
            self.operator_rep.bind(operator_address(operator_addr))
        self.forbidden = 0  # operator-only requests refused on the control socket
        self.estopped = False
        self.seq = 0
        self.episode = 0  # counts resets, so a client can tell the first state of a new episode
        self.cmd_seq = -1
        self.last_cmd_t = -math.inf
        self.command: tuple[str, np.ndarray, float] | None = None
        self.rejected = 0
        self.watchdog_holds = 0
        self._stop = threading.Event()

    def _control(self) -> None:
        self._serve_control(self.rep, operator=False)
        if self.operator_rep is not None:
            self._serve_control(self.operator_rep, operator=True)

    def _serve_control(self, sock: Any, operator: bool) -> None:
        import zmq

        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.seq += 1
            try:
                msg = decode_arm(frames)
                if msg.type in OPERATOR_ONLY and not operator:
                    self.forbidden += 1
                    log.error("refused %s on the control socket: only the operator socket may clear an e-stop or "
                              "reset the arm", msg.type)
                    raise ProtocolError("forbidden", f"{msg.type} is accepted only on the bridge's operator socket",
                                        msg.seq)
                if msg.type == "hello":
                    reply = encode_arm("hello", self.seq, spec=self.spec.to_dict(), reply_to=msg.seq)
                elif msg.type == "estop":
                    self.estopped = True
                    self.command = None
                    reply = encode_arm("ack", self.seq, reply_to=msg.seq, estopped=True)
                elif msg.type == "clear_estop":
                    self.estopped = False
                    self.command = None  # a fresh command is needed before the arm moves again
                    reply = encode_arm("ack", self.seq, reply_to=msg.seq, estopped=False)
                elif msg.type == "ping":
                    reply = encode_arm("pong", self.seq, reply_to=msg.seq)
                elif msg.type == "reset":
                    seed = msg.get("seed")
                    if not isinstance(seed, int) or isinstance(seed, bool):
                        raise ProtocolError("malformed", f"reset needs an integer 'seed', got {describe(seed)}",
                                            msg.seq)
                    self.backend.reset(seed)
                    self.command, self.episode = None, self.episode + 1
                    reply = encode_arm("ack", self.seq, reply_to=msg.seq, episode=self.episode)
                    self.publish()  # the new episode's first state goes out at once
                else:
                    raise ProtocolError("type", f"control channel does not accept {msg.type!r}", msg.seq)
            except ProtocolError as e:
                reply = encode_arm("error", self.seq, kind=e.kind, message=e.message[:500], reply_to=e.seq)
            except Exception as e:  # a bug (or a backend failure) must not stop the arm's loop; REP must answer
                log.error("internal error on the control socket: %s", type(e).__name__)
                reply = encode_arm("error", self.seq, kind="internal", message=f"bridge error ({type(e).__name__})",
                                   reply_to=None)
            sock.send_multipart(reply)

    def _take_command(self) -> None:
        try:
            frames = recv_latest(self.pull)
            if frames is None:
                return
            msg = decode_arm(frames)
            if msg.type != "arm_cmd":
                raise ProtocolError("type", f"command channel takes arm_cmd, got {msg.type!r}", msg.seq)
            mode = msg.get("mode")
            if not isinstance(mode, str) or mode not in self.spec.modes:
                raise ProtocolError("malformed", f"mode {describe(mode)} not supported (arm supports "
                                    f"{list(self.spec.modes)})")
            want = {"ee_delta": 6, "ee_pose": 7, "joint": self.spec.dof}[mode]
            target = msg.arrays.get("target")
            if target is None or target.shape != (want,):
                raise ProtocolError("shape", f"{mode} target must have shape ({want},)")
            if mode == "ee_pose" and not np.linalg.norm(target[3:7]) > 1e-6:  # no orientation (also NaN)
                raise ProtocolError("malformed", "ee_pose quaternion must be non-zero")
            g = msg.arrays.get("gripper", np.array([self.backend.read().gripper]))
            if g.size != 1:
                raise ProtocolError("shape", f"gripper must be one number, got shape {list(g.shape)}")
            gripper = float(np.clip(g.reshape(-1)[0], -1.0, 1.0))
        except ProtocolError:
            self.rejected += 1
            return
        if self.estopped:
            return
        self.command = (mode, target.astype(np.float64), gripper)
        self.cmd_seq = msg.seq
        self.last_cmd_t = time.monotonic()

    def tick(self) -> None:
        self._control()
        self._take_command()
        now = time.monotonic()
        if self.estopped or self.command is None or now - self.last_cmd_t > self.spec.watchdog_s:
            if self.command is not None and not self.estopped:
                self.watchdog_holds += 1
            self.backend.hold()
        else:
            mode, target, gripper = self.command
            reading = self.backend.read()
            self.backend.step(mode, clip_target(self.spec, mode, target, reading), gripper)
            if mode == "ee_delta":  # a delta is applied once; the next tick holds unless a new one arrives
                self.command = ("ee_delta", np.zeros(6), gripper)
        self.publish()

    def publish(self) -> None:
        r = self.backend.read()
        self.seq += 1
        arrays = {"joint_pos": r.joint_pos, "joint_vel": r.joint_vel, "ee_pos": r.ee_pos, "ee_quat": r.ee_quat,
                  "gripper": np.array([r.gripper]), **r.extra}
        self.pub.send(pack_frames(encode_arm("arm_state", self.seq, arrays, t=time.monotonic(),
                                             estopped=self.estopped, cmd_seq=self.cmd_seq, episode=self.episode)))

    def run(self, max_runtime_s: float = math.inf) -> None:
        period = 1.0 / self.spec.rate_hz
        t_end = time.monotonic() + max_runtime_s
        next_t = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < t_end:
            self.tick()
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for s in (self.pub, self.pull, self.rep, self.operator_rep):
            if s is not None:
                s.close(0)
        if self._own_ctx:
            self.ctx.term()
        self.backend.close()


# ---- client side -------------------------------------------------------------------------------

class ArmClient:
    """Connects to an arm bridge: latest state, non-blocking commands, e-stop with acknowledgement."""

    def __init__(self, state_addr: str, cmd_addr: str, ctl_addr: str, timeout_s: float = 1.0, context: Any = None,
                 operator_addr: str | None = None):
        """``operator_addr``: the bridge's operator socket, for :meth:`clear_estop` and :meth:`reset` (without
        it they go to the control socket, which refuses them with ``forbidden``)."""
        import zmq

        self._zmq = zmq
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.timeout_ms = int(timeout_s * 1000)
        self.addrs = (state_addr, cmd_addr, ctl_addr)
        self.ctl_addr = ctl_addr
        self.operator_addr = operator_addr
        self.sub = stream_socket(self.ctx, zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(state_addr)
        self.push = stream_socket(self.ctx, zmq.PUSH)
        self.push.connect(cmd_addr)
        self._req = None
        self._operator_req = None
        self.seq = 0
        self.state: Message | None = None
        self.dropped_commands = 0
        self.invalid_states = 0

    def _req_socket(self, operator: bool = False) -> Any:
        attr, addr = ("_operator_req", self.operator_addr) if operator else ("_req", self.ctl_addr)
        if getattr(self, attr) is None:
            zmq = self._zmq
            sock = control_socket(self.ctx, zmq.REQ)
            sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
            sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
            sock.connect(addr)
            setattr(self, attr, sock)
        return getattr(self, attr)

    def request(self, msg_type: str, **fields: Any) -> Message:
        """A control request (hello, estop, clear_estop, ping, reset); TimeoutError when the arm does not answer.

        ``clear_estop`` and ``reset`` go to the operator socket when this client has its address."""
        self.seq += 1
        operator = msg_type in OPERATOR_ONLY and self.operator_addr is not None
        sock = self._req_socket(operator)
        addr = self.operator_addr if operator else self.ctl_addr
        try:
            sock.send_multipart(encode_arm(msg_type, self.seq, **fields))
            reply = decode_arm(sock.recv_multipart())
        except self._zmq.Again:
            sock.close(0)  # a REQ socket that missed its reply is stuck: replace it
            setattr(self, "_operator_req" if operator else "_req", None)
            raise TimeoutError(f"arm bridge at {addr} did not answer {msg_type!r} "
                               f"within {self.timeout_ms} ms") from None
        if reply.type == "error":
            raise ProtocolError(reply.get("kind", "internal"), reply.get("message", ""))
        return reply

    def hello(self) -> dict[str, Any]:
        return self.request("hello").get("spec")

    def estop(self) -> None:
        self.request("estop")

    def clear_estop(self) -> None:
        self.request("clear_estop")

    def reset(self, seed: int) -> int:
        """Start a new episode on a simulated arm; returns its episode number (ProtocolError on a real arm)."""
        return int(self.request("reset", seed=int(seed)).get("episode"))

    def poll_state(self, timeout_s: float = 0.0) -> Message | None:
        """The newest state (kept until a newer one arrives); waits up to ``timeout_s`` for one."""
        if timeout_s > 0 and self.sub.poll(int(timeout_s * 1000)) == 0:
            return self.state
        try:
            frames = recv_latest(self.sub)
            if frames is not None:
                self.state = decode_arm(frames)
        except Exception as e:  # a bad state message is counted and skipped; the robot loop carries on
            self.invalid_states += 1
            log.warning("invalid arm state message ignored (%s)", e if isinstance(e, ProtocolError) else type(e).__name__)
        return self.state

    def send(self, mode: str, target: np.ndarray, gripper: float) -> bool:
        """Queue a command without blocking; False (and counted) when the previous one is still queued."""
        if mode not in CMD_MODES:
            raise ValueError(f"mode must be one of {CMD_MODES}")
        self.seq += 1
        frames = encode_arm("arm_cmd", self.seq, {"target": np.asarray(target, dtype=np.float64),
                                                   "gripper": np.array([float(gripper)])}, mode=mode)
        try:
            self.push.send(pack_frames(frames), flags=self._zmq.NOBLOCK)
            return True
        except self._zmq.Again:
            self.dropped_commands += 1
            return False

    def close(self) -> None:
        for s in (self.sub, self.push, self._req, self._operator_req):
            if s is not None:
                s.close(0)
        if self._own_ctx:
            self.ctx.term()


__all__ = ["ARM_MSG_TYPES", "CMD_MODES", "ArmBackend", "ArmBridge", "ArmClient", "ArmReading", "ArmSpec", "KinematicArm",
           "clip_target", "control_socket", "decode_arm", "encode_arm", "pack_frames", "recv_latest", "stream_socket",
           "unpack_frames"]
