"""ACT temporal ensembling in numpy (same rule as the torch policy's ``TemporalEnsembler``)."""

from __future__ import annotations

import math

import numpy as np


class TemporalEnsembler:
    """Weighted mean of every live chunk's prediction for now, weights exp(-m * i), i = 0 the oldest."""

    def __init__(self, coeff: float):
        self.coeff = float(coeff)
        self._chunks: list[np.ndarray] = []
        self._ages: list[int] = []

    def reset(self) -> None:
        self._chunks.clear()
        self._ages.clear()

    @property
    def num_live(self) -> int:
        return len(self._chunks)

    def weights(self, n: int) -> list[float]:
        w = [math.exp(-self.coeff * i) for i in range(n)]
        total = sum(w)
        return [x / total for x in w]

    def update(self, chunk: np.ndarray) -> np.ndarray:
        """(B, k, A) predictions for now, now+1, ... -> (B, A) ensembled action for now."""
        if self._chunks and chunk.shape != self._chunks[-1].shape:
            raise ValueError(f"temporal ensembling: chunk shape {chunk.shape} differs from the previous "
                             f"{self._chunks[-1].shape}; call reset() between episodes")
        self._chunks.append(chunk)
        self._ages.append(0)
        weights = self.weights(len(self._chunks))
        action = sum(w * c[:, age] for w, c, age in zip(weights, self._chunks, self._ages))
        self._ages = [a + 1 for a in self._ages]
        live = [i for i, (c, a) in enumerate(zip(self._chunks, self._ages)) if a < c.shape[1]]
        self._chunks = [self._chunks[i] for i in live]
        self._ages = [self._ages[i] for i in live]
        return np.asarray(action, dtype=np.float32)
