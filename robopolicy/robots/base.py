"""A trivial in-process robot for tests; the interface itself is :mod:`robopolicy.deploy.robot`."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from robopolicy.deploy.robot import SAFE_ACTIONS, Robot, RobotSpec, RobotState


class EchoRobot(Robot):
    """In-process test robot: its position jumps to each command; observations at ``control_hz``."""

    def __init__(self, dim: int = 2, hz: float = 10.0, state_key: str = "observation.state",
                 low: float = -1e6, high: float = 1e6, start: np.ndarray | None = None, **spec_kw: Any):
        self.spec = RobotSpec(name="echo", action_dim=dim, action_low=np.full(dim, low), action_high=np.full(dim, high),
                              control_hz=hz, observation_keys=(state_key,), **spec_kw)
        self.state_key = state_key
        self.position = np.zeros(dim) if start is None else np.asarray(start, dtype=np.float64)
        self.commands: list[tuple[float, np.ndarray]] = []
        self.stops = 0
        self.nan_observations = False
        self._t0 = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        self._t0 = time.monotonic()

    def read_state(self) -> RobotState | None:
        if self._t0 is None:
            return None
        k = int((time.monotonic() - self._t0) * self.spec.control_hz)
        obs = self.position.astype(np.float32)
        if self.nan_observations:
            obs = np.full_like(obs, np.nan)
        return RobotState({self.state_key: obs}, self._t0 + k / self.spec.control_hz, k)

    def send_command(self, action: np.ndarray) -> None:
        with self._lock:
            self.commands.append((time.monotonic(), np.asarray(action, dtype=np.float64).copy()))
            self.position = np.asarray(action, dtype=np.float64).copy()

    def stop(self) -> None:
        self.stops += 1

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        return self.position.copy()


__all__ = ["EchoRobot", "Robot", "RobotSpec", "RobotState", "SAFE_ACTIONS"]
