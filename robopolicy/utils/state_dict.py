"""State-dict helpers shared by checkpoint loading (train) and policy loading (policies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")
COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(state: Mapping[str, T]) -> dict[str, T]:
    """``state`` with torch.compile's ``_orig_mod.`` removed from every key (anywhere in the dotted name), so
    weights saved from a ``torch.compile(module)`` wrapper load into the plain module."""
    return {key.replace(COMPILE_PREFIX, ""): value for key, value in state.items()}
