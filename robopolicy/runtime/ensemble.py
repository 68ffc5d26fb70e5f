"""ACT temporal ensembling, shared by the torch ACT policy and the torch-free ONNX runtime.

It only indexes, multiplies and adds, so it works on numpy arrays and torch tensors alike without importing torch.
"""

from __future__ import annotations

import math


class TemporalEnsembler:
    """One action per step from every chunk that still covers it.

    Each :meth:`update` takes the chunk just predicted, whose first action is for the current step, and returns
    the weighted mean of all live chunks' predictions for the current step, with weights exp(-m * i) where i = 0
    is the OLDEST chunk (m > 0 trusts old chunks more, smoothing the motion). A chunk of length k stays live for
    k steps.
    """

    def __init__(self, coeff: float):
        self.coeff = float(coeff)
        self._chunks: list = []  # oldest first, numpy arrays or torch tensors
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

    def update(self, chunk):
        """(B, k, A) predictions for now, now+1, ... -> (B, A) ensembled action for now."""
        if self._chunks and tuple(chunk.shape) != tuple(self._chunks[-1].shape):
            raise ValueError(f"temporal ensembling: chunk shape {tuple(chunk.shape)} differs from the previous "
                             f"{tuple(self._chunks[-1].shape)}; call reset() between episodes")
        self._chunks.append(chunk)
        self._ages.append(0)
        weights = self.weights(len(self._chunks))
        action = sum(w * c[:, age] for w, c, age in zip(weights, self._chunks, self._ages))
        # Age every chunk by one step and drop those with nothing left for the next step.
        self._ages = [a + 1 for a in self._ages]
        live = [i for i, (c, a) in enumerate(zip(self._chunks, self._ages)) if a < c.shape[1]]
        self._chunks = [self._chunks[i] for i in live]
        self._ages = [self._ages[i] for i in live]
        return action
