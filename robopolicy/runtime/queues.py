"""The To observation queue every runtime policy keeps for ``select_action`` (numpy only)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


def batched_observation(observation: dict[str, Any],
                        input_features: list[tuple[str, tuple[int, ...], Any]]) -> tuple[dict[str, np.ndarray], bool]:
    """``(float32 copies (B, *shape) per feature, whether the observation came unbatched)``; clear errors."""
    first_key, first_shape, _ = input_features[0]
    unbatched = np.asarray(observation[first_key]).ndim == len(first_shape) if first_key in observation else False
    obs = {}
    for key, shape, _ in input_features:
        if key not in observation:
            raise KeyError(f"observation lacks feature {key!r} (needs {[k for k, _, _ in input_features]})")
        x = np.array(observation[key], dtype=np.float32)  # a copy: callers may refill one buffer in place
        if x.ndim == len(shape):
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"observation {key!r}: expected shape {shape} or (B, {', '.join(map(str, shape))}), "
                             f"got {tuple(np.asarray(observation[key]).shape)}")
        obs[key] = x
    return obs, unbatched


def push_observation(queue: deque, obs: dict[str, np.ndarray], n_obs_steps: int) -> None:
    """Append to the To queue; the first observation of an episode fills it."""
    for _ in range(n_obs_steps if not queue else 1):
        queue.append(obs)


def stacked_history(queue: deque) -> dict[str, np.ndarray]:
    """The queued observations as a history {key: (B, To, ...)}, oldest first."""
    return {k: np.stack([o[k] for o in queue], axis=1) for k in queue[-1]}
