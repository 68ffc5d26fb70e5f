"""A scripted device: replays a list of commands (tests, demos of the recording loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from robopolicy.teleop.base import ArmPose, TeleopCommand, TeleopDevice


class ScriptedDevice(TeleopDevice):
    """Yields the given commands in order, then ``then`` (default: a ``quit`` event) forever.

    ``commands`` may also be a function ``(step, pose) -> TeleopCommand`` (e.g. a scripted expert).
    """

    def __init__(self, commands: Iterable[TeleopCommand] | Callable[[int, ArmPose | None], TeleopCommand],
                 then: TeleopCommand | None = None):
        self._fn = commands if callable(commands) else None
        self._commands = None if callable(commands) else list(commands)
        self.then = then or TeleopCommand(events=frozenset({"quit"}))
        self.step = 0

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        i = self.step
        self.step += 1
        if self._fn is not None:
            return self._fn(i, pose)
        return self._commands[i] if i < len(self._commands) else self.then


__all__ = ["ScriptedDevice"]
