"""A simulated PushT robot: the gym-pusht sim stepping in real time in its own process.

The sim process takes one physics step of the env (``1 / hz`` seconds of simulated time, 10 Hz
like the demonstrations) per wall-clock period, using the latest commanded target (it holds it
between steps, whatever rate commands arrive at). The observation computed by a step is
published when its time comes, stamped with that time (``time.monotonic()``, shared by processes
on one machine); the target in force at that instant drives the next step. So a policy that
answered instantly would see exactly the direct-evaluation sequence; a real one sees its latency.

Parent and sim talk over a ``multiprocessing`` pipe carrying msgpack bytes (nothing pickled).
The sim stops by itself when the parent goes away, on ``close``, or after ``max_runtime_s``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import numpy as np

from robopolicy.robots.base import Robot, RobotSpec, RobotState

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
PUSHT_HZ = 10.0


def _pack(obj: Any) -> bytes:
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return {"__nd__": True, "dtype": o.dtype.str, "shape": list(o.shape), "data": np.ascontiguousarray(o).tobytes()}
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"cannot pack {type(o).__name__}")

    return msgpack.packb(obj, default=default, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    def hook(d: dict) -> Any:
        if d.get("__nd__"):
            return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
        return d

    return msgpack.unpackb(data, object_hook=hook, raw=False)


def pusht_spec(max_velocity: float = 2000.0, max_acceleration: float = 40000.0, obs_mode: str = "state",
               safe_action: str | np.ndarray = "hold") -> RobotSpec:
    keys = {"state": (STATE_KEY, ENV_STATE_KEY), "image": (STATE_KEY, "observation.image"),
            "all": (STATE_KEY, ENV_STATE_KEY, "observation.image")}[obs_mode]
    return RobotSpec(name="sim_pusht", action_dim=2, action_low=[0.0, 0.0], action_high=[512.0, 512.0],
                     max_velocity=max_velocity, max_acceleration=max_acceleration, control_hz=PUSHT_HZ,
                     safe_action=safe_action, observation_keys=keys)


def _sim_main(conn, obs_mode: str, seed: int, hz: float, max_runtime_s: float, max_episode_steps: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from robopolicy.sim.pusht import make_pusht_env

    env = make_pusht_env(obs_mode=obs_mode, max_episode_steps=max_episode_steps)
    period = 1.0 / hz
    episode = 0

    def start(s: int):
        obs, info = env.reset(seed=s)
        return obs, {"coverage": float(info["coverage"]), "is_success": bool(info["is_success"]), "done": False,
                     "steps": 0, "max_coverage": float(info["coverage"]), "episode": episode, "seed": s}

    obs, info = start(seed)
    target = np.asarray(obs[STATE_KEY], dtype=np.float64)
    t_start = time.monotonic()
    next_t = t_start
    k = 0
    overruns = 0

    def handle(raw: bytes) -> bool:
        nonlocal target, obs, info, episode, next_t
        msg = _unpack(raw)
        kind = msg[0]
        if kind == "cmd":
            a = np.asarray(msg[1], dtype=np.float64)
            if a.shape == (2,) and np.isfinite(a).all():  # the sim's own last line of defence
                target = np.clip(a, 0.0, 512.0)
        elif kind == "stop":
            target = np.asarray(env.unwrapped.agent.position, dtype=np.float64)
        elif kind == "reset":
            episode += 1
            obs, info = start(int(msg[1]))
            target = np.asarray(obs[STATE_KEY], dtype=np.float64)
            next_t = time.monotonic()
        elif kind == "close":
            return False
        return True

    try:
        while time.monotonic() - t_start < max_runtime_s:
            while True:  # wait for the next tick, taking commands meanwhile (latest wins)
                remaining = next_t - time.monotonic()
                if remaining <= 0:
                    break
                if conn.poll(min(remaining, 0.002)) and not handle(conn.recv_bytes()):
                    return
            while conn.poll(0):
                if not handle(conn.recv_bytes()):
                    return
            conn.send_bytes(_pack(["state", {"obs": obs, "t": next_t, "seq": k, "info": {**info, "overruns": overruns}}]))
            if not info["done"]:
                obs, _, terminated, truncated, step_info = env.step(target.astype(np.float32))
                cov = float(step_info["coverage"])
                info = {**info, "coverage": cov, "is_success": bool(step_info["is_success"]),
                        "done": bool(terminated or truncated), "steps": info["steps"] + 1,
                        "max_coverage": max(info["max_coverage"], cov), "target": target.copy()}
            k += 1
            next_t += period
            if time.monotonic() - next_t > period:  # fell a whole period behind: do not try to catch up
                overruns += 1
                next_t = time.monotonic()
    except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
        return  # the parent went away
    finally:
        env.close()


class SimPushTRobot(Robot):
    """PushT behind the :class:`~robopolicy.robots.base.Robot` interface, in a spawned process."""

    def __init__(self, seed: int = 0, obs_mode: str = "state", hz: float = PUSHT_HZ, max_runtime_s: float = 600.0,
                 max_episode_steps: int = 300, **spec_kw: Any):
        self.spec = pusht_spec(obs_mode=obs_mode, **spec_kw)
        self.spec.control_hz = hz
        self.seed, self.obs_mode, self.hz = seed, obs_mode, hz
        self.max_runtime_s, self.max_episode_steps = max_runtime_s, max_episode_steps
        self._proc = None
        self._conn = None
        self._latest: RobotState | None = None

    def connect(self, timeout_s: float = 60.0) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_sim_main, daemon=True, name="sim-pusht",
                                 args=(child, self.obs_mode, self.seed, self.hz, self.max_runtime_s,
                                       self.max_episode_steps))
        self._proc.start()
        child.close()
        self._conn = parent
        deadline = time.monotonic() + timeout_s
        while self._latest is None:
            if time.monotonic() > deadline or not self._proc.is_alive():
                self.disconnect()
                raise RuntimeError("simulated PushT robot did not start")
            if self._conn.poll(0.05):
                self._receive()

    def _receive(self) -> None:
        while self._conn is not None and self._conn.poll(0):
            try:
                kind, body = _unpack(self._conn.recv_bytes())
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
        self._conn.send_bytes(_pack(msg))

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

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        state = state or self._latest
        return None if state is None else np.asarray(state.observation[STATE_KEY], dtype=np.float64).copy()

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


__all__ = ["PUSHT_HZ", "SimPushTRobot", "pusht_spec"]
