"""A leader arm (or any pose source) streaming end-effector targets over ZeroMQ.

The leader process PUBlishes ``ee_target`` messages in the project's wire format
(:func:`robopolicy.deploy.arm_bridge.encode_arm`): arrays ``pos`` (3,) metres and ``quat`` (4,) x, y, z, w
in the follower's base frame, ``gripper`` (1,) in [-1 open, +1 closed]; optional fields ``clutch``
(bool, default True: False means "do not move", so the operator can reposition the leader) and
``events`` (list of ``"save"``, ``"discard"``, ``"quit"``). Each message is packed into one ZeroMQ
frame (:func:`~robopolicy.deploy.arm_bridge.pack_frames`) and the device's SUB socket sets
``ZMQ_CONFLATE``: the latest target wins. (Events ride on pose messages and can be lost if a newer
pose overtakes them before a read; the leader should repeat an event for a few messages.)

Each read turns the newest target into a delta from the follower's current pose (clipped to
``max_pos``/``max_rot`` per step). A target older than ``timeout_s`` (leader crashed, network gone)
gives a zero-motion command: the follower holds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robopolicy.deploy.arm_bridge import decode_arm, encode_arm, pack_frames, recv_latest, stream_socket
from robopolicy.deploy.protocol import ProtocolError
from robopolicy.teleop.base import EVENTS, ArmPose, TeleopCommand, TeleopDevice, pose_delta


class ZmqLeaderDevice(TeleopDevice):
    def __init__(self, address: str, max_pos: float = 0.02, max_rot: float = 0.2, timeout_s: float = 0.2,
                 context: Any = None):
        self.address = address
        self.max_pos, self.max_rot, self.timeout_s = max_pos, max_rot, timeout_s
        self._ctx = context
        self._sock = None
        self._target: tuple[np.ndarray, np.ndarray, float, bool, float] | None = None
        self.rejected = 0

    def start(self) -> None:
        import zmq

        self._own = self._ctx is None
        self._ctx = self._ctx or zmq.Context()
        self._sock = stream_socket(self._ctx, zmq.SUB)  # conflating: the newest target wins
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(self.address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            if self._own:
                self._ctx.term()
                self._ctx = None

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        if self._sock is None:
            self.start()
        events: set[str] = set()
        while True:  # the socket conflates: at most one (the newest) message is waiting
            try:
                frames = recv_latest(self._sock)
                if frames is None:
                    break
                msg = decode_arm(frames)
                if msg.type != "ee_target":
                    raise ProtocolError("type", f"expected ee_target, got {msg.type!r}")
                pos, quat = msg.arrays["pos"].reshape(3), msg.arrays["quat"].reshape(4)
                if not (np.isfinite(pos).all() and np.isfinite(quat).all() and np.linalg.norm(quat) > 1e-6):
                    raise ValueError("ee_target: pos must be finite and quat a finite, non-zero quaternion")
                gripper = float(np.clip(msg.arrays.get("gripper", np.array([-1.0])).reshape(-1)[0], -1, 1))
                ev, clutch = msg.get("events") or [], msg.get("clutch", True)
                if not isinstance(ev, list) or not all(isinstance(e, str) for e in ev):
                    raise ValueError("ee_target: events must be a list of event names")
                if not isinstance(clutch, bool):
                    raise ValueError("ee_target: clutch must be true or false")
                events |= {e for e in ev if e in EVENTS}
                self._target = (pos, quat, gripper, clutch, time.monotonic())
            except (ProtocolError, KeyError, ValueError):
                self.rejected += 1
        if self._target is None:
            return TeleopCommand(events=frozenset(events))
        pos, quat, gripper, clutch, t = self._target
        if time.monotonic() - t > self.timeout_s or not clutch or pose is None:
            return TeleopCommand(gripper=gripper, events=frozenset(events))
        dp, dr = pose_delta(pose, pos, quat, self.max_pos, self.max_rot)
        return TeleopCommand(dp, dr, gripper, frozenset(events))


class LeaderPublisher:
    """The leader side, for scripts and tests: publish targets at whatever rate the leader runs."""

    def __init__(self, address: str, context: Any = None):
        import zmq

        self._own = context is None
        self.ctx = context or zmq.Context()
        self.sock = stream_socket(self.ctx, zmq.PUB)
        self.sock.bind(address)
        self.seq = 0

    def publish(self, pos, quat, gripper: float = -1.0, clutch: bool = True, events: list[str] | None = None) -> None:
        self.seq += 1
        self.sock.send(pack_frames(encode_arm(
            "ee_target", self.seq, {"pos": np.asarray(pos, dtype=np.float64), "quat": np.asarray(quat, dtype=np.float64),
                                    "gripper": np.array([float(gripper)])}, clutch=clutch, events=events or [])))

    def close(self) -> None:
        self.sock.close(0)
        if self._own:
            self.ctx.term()


__all__ = ["LeaderPublisher", "ZmqLeaderDevice"]
