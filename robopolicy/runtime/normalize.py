"""Per-feature (un)normalization in numpy, computed exactly like ``robopolicy.data.normalize.Normalizer``."""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-8


class NumpyNormalizer:
    def __init__(self, modes: dict[str, str], stats: dict[str, dict[str, Any]]):
        self.modes = dict(modes)
        self._params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, mode in self.modes.items():
            if mode == "identity":
                continue
            if mode not in ("min_max", "mean_std"):
                raise ValueError(f"normalization mode for {key!r} must be min_max, mean_std or identity, got {mode!r}")
            names = ("min", "max") if mode == "min_max" else ("mean", "std")
            a, b = (np.asarray(stats[key][n], dtype=np.float32) for n in names)
            spread = (b - a) / np.float32(2) if mode == "min_max" else b
            scale = np.where(np.abs(spread) < _EPS, np.float32(1), spread).astype(np.float32)
            center = ((a + b) / np.float32(2) if mode == "min_max" else a).astype(np.float32)
            self._params[key] = (center, scale)

    @classmethod
    def from_manifest(cls, normalization: dict[str, Any]) -> NumpyNormalizer:
        return cls(normalization["modes"], normalization.get("stats", {}))

    # float32 in, float32 parameters: the arithmetic stays float32 and writes in place into its own result
    # (a few microseconds per call matter to a 20-microsecond MLP).
    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        params = self._params.get(key)
        if params is None:
            return x
        out = np.subtract(x, params[0])
        return np.divide(out, params[1], out=out)

    def unnormalize(self, key: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        params = self._params.get(key)
        if params is None:
            return x
        out = np.multiply(x, params[1])
        return np.add(out, params[0], out=out)
