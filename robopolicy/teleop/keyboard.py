"""A terminal keyboard device that works over SSH: raw tty, non-blocking reads, no X server.

Terminals report key presses, not releases; a held key arrives as auto-repeated presses (after an
initial delay of a few hundred milliseconds). So a motion key moves the arm for ``hold_s`` after its
last press: tap for a small step, hold for continuous motion.

Keys (also printed by :meth:`KeyboardDevice.help`)::

    w / s   +x / -x        a / d   +y / -y        r / f   +z / -z
    arrows  same as w/s/a/d
    z / x   roll + / -     t / g   pitch + / -    c / v   yaw + / -
    space   toggle gripper (open <-> closed)
    enter   save episode   backspace or u   discard (re-record)   q or ctrl-c   quit
"""

from __future__ import annotations

import os
import select
import sys
import time

import numpy as np

from robopolicy.teleop.base import ArmPose, TeleopCommand, TeleopDevice

_TRANSLATE = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
              "\x1b[A": (0, 1), "\x1b[B": (0, -1), "\x1b[D": (1, 1), "\x1b[C": (1, -1)}
_ROTATE = {"z": (0, 1), "x": (0, -1), "t": (1, 1), "g": (1, -1), "c": (2, 1), "v": (2, -1)}
_EVENTS = {"\r": "save", "\n": "save", "\x7f": "discard", "\x08": "discard", "u": "discard", "q": "quit",
           "\x03": "quit"}


def parse_keys(data: str) -> list[str]:
    """Split terminal input into keys; arrow keys arrive as 3-character escape sequences."""
    keys, i = [], 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1: i + 2] in ("[", "O") and i + 2 < len(data):
            keys.append("\x1b[" + data[i + 2])
            i += 3
        else:
            keys.append(data[i])
            i += 1
    return keys


class KeyboardDevice(TeleopDevice):
    """Reads keys from ``fd`` (default stdin); puts a tty in raw mode between ``start`` and ``close``.

    ``pos_step`` (m) and ``rot_step`` (rad) are the per-control-step motion while a key is active.
    """

    def __init__(self, fd: int | None = None, pos_step: float = 0.01, rot_step: float = 0.05, hold_s: float = 0.25,
                 clock=time.monotonic):
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.pos_step, self.rot_step, self.hold_s = pos_step, rot_step, hold_s
        self.clock = clock
        self.gripper = -1.0
        self._active: dict[tuple[str, int], tuple[int, float]] = {}  # (kind, axis) -> (sign, last press)
        self._saved_tty = None

    @staticmethod
    def help() -> str:
        return (__doc__ or "").split("Keys (also printed by :meth:`KeyboardDevice.help`)::", 1)[-1].rstrip()

    def start(self) -> None:
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)  # no echo, no line buffering; ctrl-c arrives as a key (quit)

    def close(self) -> None:
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _read_available(self) -> str:
        chunks = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 1024)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", errors="ignore")

    def feed(self, data: str) -> set[str]:
        """Interpret keys (from the terminal or a test); returns the events they raised."""
        now = self.clock()
        events: set[str] = set()
        for key in parse_keys(data):
            k = key if key.startswith("\x1b") else key.lower()
            if k in _TRANSLATE:
                axis, sign = _TRANSLATE[k]
                self._active[("p", axis)] = (sign, now)
            elif k in _ROTATE:
                axis, sign = _ROTATE[k]
                self._active[("r", axis)] = (sign, now)
            elif k == " ":
                self.gripper = -self.gripper
            elif k in _EVENTS:
                events.add(_EVENTS[k])
        return events

    def read(self, pose: ArmPose | None = None) -> TeleopCommand:
        events = self.feed(self._read_available())
        now = self.clock()
        dp, dr = np.zeros(3), np.zeros(3)
        for (kind, axis), (sign, t) in list(self._active.items()):
            if now - t > self.hold_s:
                del self._active[(kind, axis)]
            elif kind == "p":
                dp[axis] = sign * self.pos_step
            else:
                dr[axis] = sign * self.rot_step
        return TeleopCommand(dp, dr, self.gripper, frozenset(events))


__all__ = ["KeyboardDevice", "parse_keys"]
