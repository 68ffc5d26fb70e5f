"""The robot interface the control loop drives.

It lives beside the control loop (``deploy``) because the loop is what defines it; concrete robots
(``robopolicy.robots``) implement it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

SAFE_ACTIONS = ("hold", "stop")


@dataclasses.dataclass
class RobotSpec:
    """Limits and rates of a robot, in the units of its action (robot units, like the dataset's)."""

    name: str
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    max_velocity: np.ndarray | None = None  # action units per second
    max_acceleration: np.ndarray | None = None  # action units per second^2
    control_hz: float = 10.0  # the robot driver's own rate
    safe_action: str | np.ndarray = "hold"  # "hold" (keep the current position), "stop", or a fixed action
    observation_keys: tuple[str, ...] = ()
    # Action dimensions that are angles (a yaw joint, a heading) wrapping with angle_period (2π: radians, 360:
    # degrees): interpolation, chunk blending and the safety filter take the short way round for them
    # (robopolicy.deploy.interpolation), and their commands are wrapped into [-period/2, period/2).
    angle_dims: tuple[int, ...] = ()
    angle_period: float = 2 * np.pi

    def __post_init__(self) -> None:
        self.action_low = np.asarray(self.action_low, dtype=np.float64).reshape(self.action_dim)
        self.action_high = np.asarray(self.action_high, dtype=np.float64).reshape(self.action_dim)
        for name in ("max_velocity", "max_acceleration"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.broadcast_to(np.asarray(v, dtype=np.float64), (self.action_dim,)).copy())
        if isinstance(self.safe_action, str):
            if self.safe_action not in SAFE_ACTIONS:
                raise ValueError(f"safe_action must be one of {SAFE_ACTIONS} or an action, got {self.safe_action!r}")
        else:
            a = np.asarray(self.safe_action, dtype=np.float64).reshape(-1)
            if a.shape != (self.action_dim,) or not np.isfinite(a).all():
                raise ValueError(f"a fixed safe action must be {self.action_dim} finite numbers")
            self.safe_action = a
        self.angle_dims = tuple(int(i) for i in self.angle_dims)
        if any(not 0 <= i < self.action_dim for i in self.angle_dims) or len(set(self.angle_dims)) != len(self.angle_dims):
            raise ValueError(f"angle_dims {self.angle_dims} must be distinct action dimensions in [0, {self.action_dim})")
        if not (self.angle_period > 0 and np.isfinite(self.angle_period)):
            raise ValueError(f"angle_period must be positive, got {self.angle_period}")


@dataclasses.dataclass
class RobotState:
    observation: dict[str, np.ndarray]
    t: float  # time.monotonic() at which the observation holds
    seq: int  # increases with every new observation
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Robot(ABC):
    spec: RobotSpec

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def read_state(self) -> RobotState | None:
        """The latest observation (non-blocking; None before the first one)."""

    @abstractmethod
    def send_command(self, action: np.ndarray) -> None:
        """Set the target the robot tracks until the next command (latest command wins)."""

    @abstractmethod
    def stop(self) -> None:
        """Bring the robot to rest (the ``"stop"`` safe action)."""

    def hold_action(self, state: RobotState | None) -> np.ndarray | None:
        """The command that keeps the robot where it is (the ``"hold"`` safe action)."""
        return None

    def safe_command(self, state: RobotState | None) -> np.ndarray | None:
        """The safe action as a command, or None when the safe action is to call :meth:`stop`."""
        sa = self.spec.safe_action
        if isinstance(sa, np.ndarray):
            return sa.copy()
        if sa == "hold":
            return self.hold_action(state)
        return None

    def disconnect(self) -> None:
        self.stop()

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()


__all__ = ["Robot", "RobotSpec", "RobotState", "SAFE_ACTIONS"]
