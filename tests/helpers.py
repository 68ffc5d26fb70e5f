"""Small helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class CallCounter:
    """Wraps a callable and counts its calls, e.g. ``policy.generate_actions = CallCounter(policy.generate_actions)``."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)
