"""Windowed sampling in Diffusion Policy's vocabulary, with the whole dataset held as tensors.

A training sample is a window of T = ``horizon`` consecutive frames of one episode: observations
from its first To = ``n_obs_steps`` frames, actions from all T. Windows may hang over an episode's
edges by ``pad_before`` (= To - 1) and ``pad_after`` (= Ta - 1) frames; frames outside the episode
repeat its first or last frame, so the policy learns to start from rest and to stop.

Batches are built by one tensor gather from a precomputed (num_windows, T) index table: no
per-sample Python in the training hot path. Windows are drawn uniformly, or in proportion to
``window_weights`` (:func:`final_approach_weights`: the rare states near the goal drawn more often).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def window_indices(episode_bounds: np.ndarray, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """(num_windows, horizon) frame indices, clamped to each window's own episode."""
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError(f"invalid window: horizon={horizon}, pad_before={pad_before}, pad_after={pad_after}")
    offsets = np.arange(horizon)
    windows = []
    for start, end in np.asarray(episode_bounds, dtype=np.int64):
        first = start - pad_before
        last = end - horizon + pad_after  # inclusive
        if last < first:  # episode shorter than a window even with padding: still give it one window
            last = first
        starts = np.arange(first, last + 1)
        windows.append(np.clip(starts[:, None] + offsets[None, :], start, end - 1))
    return np.concatenate(windows).astype(np.int64)


def final_approach_weights(windows: Tensor, reward: np.ndarray, n_obs_steps: int, threshold: float,
                           weight: float) -> Tensor:
    """Per-window sampling weights: ``weight`` for windows whose current state (the last observed frame) has a
    reward of at least ``threshold``, 1 for the rest.

    On PushT the reward is the goal coverage, and the final adjustments that decide success (coverage 0.95) are the
    rarest part of the demos: 8 % of frames reach 0.8 and none 0.95. Weighting them is a training-distribution
    choice, not a loss change, so every family gets it the same way.
    """
    if weight <= 0:
        raise ValueError(f"final_approach_weight must be positive, got {weight}")
    reward = np.asarray(reward, dtype=np.float64).reshape(len(reward), -1)[:, 0]
    current = windows[:, n_obs_steps - 1].numpy()
    near_goal = reward[current] >= threshold
    return torch.from_numpy(np.where(near_goal, weight, 1.0))


@dataclass
class WindowSampler:
    """Random batches of windows over in-memory feature tensors.

    ``data`` maps feature keys to (N, *shape) tensors (already normalized); ``obs_keys`` are cut to
    the first To frames of the window, ``action_key`` keeps all T.
    """

    data: dict[str, Tensor]
    episode_bounds: np.ndarray
    obs_keys: list[str]
    action_key: str
    n_obs_steps: int
    horizon: int
    n_action_steps: int
    # Per-window weights built from this sampler's windows (``weigh`` below); None draws uniformly.
    window_weights: Tensor | None = None

    def __post_init__(self) -> None:
        if self.n_obs_steps > self.horizon:
            raise ValueError(f"n_obs_steps (To={self.n_obs_steps}) cannot exceed horizon (T={self.horizon})")
        missing = [k for k in [*self.obs_keys, self.action_key] if k not in self.data]
        if missing:
            raise KeyError(f"sampler data lacks features {missing}")
        self.windows = torch.from_numpy(
            window_indices(self.episode_bounds, self.horizon, self.n_obs_steps - 1, self.n_action_steps - 1)
        )

    def __len__(self) -> int:
        return len(self.windows)

    def get(self, window_ids: Tensor) -> dict[str, Tensor]:
        idx = self.windows[window_ids]  # (B, T)
        batch = {k: self.data[k][idx[:, : self.n_obs_steps]] for k in self.obs_keys}
        batch[self.action_key] = self.data[self.action_key][idx]
        return batch

    def weigh(self, reward: np.ndarray, threshold: float, weight: float) -> None:
        """Draw windows near the goal ``weight`` times as often (:func:`final_approach_weights`)."""
        self.window_weights = None if weight == 1 else final_approach_weights(
            self.windows, reward, self.n_obs_steps, threshold, weight)

    def draw_ids(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """``batch_size`` window ids, with replacement: uniform, or in proportion to ``window_weights``."""
        if self.window_weights is None:
            return torch.randint(len(self.windows), (batch_size,), generator=generator)
        return torch.multinomial(self.window_weights, batch_size, replacement=True, generator=generator)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.get(self.draw_ids(batch_size, generator))
