"""A simulated robot in its own process, talking msgpack over a ``multiprocessing`` pipe (nothing pickled).

The sim process (a module-level ``target(conn, *args)``) publishes ``["state", {"obs", "t", "seq", "info"}]``
at its own rate and takes ``["cmd", action]``, ``["stop"]``, ``["reset", seed]`` and ``["close"]``. This
class is the parent's side: start, latest state, commands, seeded resets, shutdown. It stops the child
when the parent goes away (the child sees the pipe close) or on :meth:`disconnect`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from robopolicy.robots.base import Robot, RobotState


def pack(obj: Any) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return {"__nd__": True, "dtype": o.dtype.str, "shape": list(o.shape), "data": np.ascontiguousarray(o).tobytes()}
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"cannot pack {type(o).__name__}")

    return msgpack.packb(obj, default=default, use_bin_type=True)


def unpack(data: bytes) -> Any:
    def hook(d: dict) -> Any:
        if d.get("__nd__"):
            return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
        return d

    return msgpack.unpackb(data, object_hook=hook, raw=False)


def wait_for_tick(conn, deadline: Callable[[], float], handle: Callable[[bytes], bool], poll_s: float) -> bool:
    """Sim side: wait until ``deadline()``, handing every message to ``handle`` meanwhile (latest command
    wins; a handler may move the deadline, e.g. on reset). False when a handler says to close."""
    while True:
        remaining = deadline() - time.monotonic()
        if remaining <= 0:
            break
        if conn.poll(min(remaining, poll_s)) and not handle(conn.recv_bytes()):
            return False
    while conn.poll(0):
        if not handle(conn.recv_bytes()):
            return False
    return True


class SimProcessRobot(Robot):
    """Parent side of a sim process; subclasses set ``spec``, ``_target``/``_args`` and ``hold_action``."""

    process_name = "sim-robot"

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]):
        self._target, self._args = target, args
        self._proc = None
        self._conn = None
        self._latest: RobotState | None = None

    def connect(self, timeout_s: float = 60.0) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=self._target, daemon=True, name=self.process_name, args=(child, *self._args))
        self._proc.start()
        child.close()
        self._conn = parent
        deadline = time.monotonic() + timeout_s
        while self._latest is None:
            if time.monotonic() > deadline or not self._proc.is_alive():
                self.disconnect()
                raise RuntimeError(f"{self.process_name}: the simulated robot did not start")
            if self._conn.poll(0.05):
                self._receive()

    def _receive(self) -> None:
        while self._conn is not None and self._conn.poll(0):
            try:
                kind, body = unpack(self._conn.recv_bytes())
            except (EOFError, OSError):
                self._conn = None
                return
            if kind == "state":
                self._latest = RobotState(body["obs"], float(body["t"]), int(body["seq"]), body["info"])

    def read_state(self) -> RobotState | None:
        self._receive()
        return self._latest

    def _send(self, msg: list) -> None:
        if self._conn is None:
            raise ConnectionError("simulated robot is not connected")
        self._conn.send_bytes(pack(msg))

    def send_command(self, action: np.ndarray) -> None:
        self._send(["cmd", np.asarray(action, dtype=np.float64).reshape(-1).tolist()])

    def stop(self) -> None:
        if self._conn is not None:
            self._send(["stop"])

    def reset(self, seed: int, timeout_s: float = 5.0) -> RobotState:
        """Start a new episode; returns its first observation."""
        old_episode = (self._latest.info.get("episode", 0) if self._latest else -1)
        self._send(["reset", int(seed)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._conn.poll(0.01):
                self._receive()
                if self._latest is not None and self._latest.info.get("episode", -1) > old_episode:
                    return self._latest
        raise TimeoutError("simulated robot did not reset")

    def disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._send(["close"])
            except (OSError, ConnectionError):
                pass
        if self._proc is not None:
            self._proc.join(3.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1.0)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._proc = None


__all__ = ["SimProcessRobot", "pack", "unpack", "wait_for_tick"]
