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


def bench_module(script: str):
    """Import ``bench/<script>.py`` (not a package) with ``bench/`` on the path for its sibling imports; yields the
    module and undoes both. For fixtures: ``yield from bench_module("reproduce")``."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(f"{script}_bench", bench / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(bench))
