"""Per-feature normalization from dataset statistics, carried inside every policy.

Diffusion and flow models want inputs and targets in a fixed range: ``min_max`` maps [min, max] to
[-1, 1] (Diffusion Policy's choice); ``mean_std`` standardizes. Constant dimensions (max == min,
std == 0) map to 0 instead of dividing by zero. ``identity`` leaves a feature unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

MODES = ("min_max", "mean_std", "identity")
_EPS = 1e-8


class Normalizer(nn.Module):
    """Holds statistics as buffers so they move with the policy (``.to(device)``) and export with it."""

    def __init__(self, stats: dict[str, dict[str, Any]], modes: dict[str, str]):
        super().__init__()
        self.modes: dict[str, str] = {}
        self._buffer_names: dict[str, str] = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalization mode for {key!r} must be one of {MODES}, got {mode!r}")
            self.modes[key] = mode
            if mode == "identity":
                continue
            if key not in stats:
                raise KeyError(f"no statistics for feature {key!r} (available: {sorted(stats)})")
            needed = ("min", "max") if mode == "min_max" else ("mean", "std")
            missing = [n for n in needed if n not in stats[key]]
            if missing:
                raise KeyError(f"statistics of {key!r} lack {missing} needed for {mode}")
            try:
                a, b = (torch.as_tensor(np.asarray(stats[key][n], dtype=np.float32)) for n in needed)
            except (TypeError, ValueError) as e:
                raise ValueError(f"field 'stats.{key}.{needed[0]}' / '{needed[1]}' must be numbers ({e})") from e
            _check_statistics(key, mode, needed, a, b)
            # Buffer names cannot contain dots; keep a mapping from feature key.
            name = key.replace(".", "__")
            self._buffer_names[key] = name
            self.register_buffer(f"{name}__a", a.clone())
            self.register_buffer(f"{name}__b", b.clone())
            self.register_buffer(f"{name}__scale", self._scale(mode, a, b))

    def statistics(self, key: str) -> dict[str, Tensor]:
        """The raw statistics of one feature by name (``min``/``max`` or ``mean``/``std``; none for identity)."""
        if self.modes.get(key, "identity") == "identity":
            return {}
        names = ("min", "max") if self.modes[key] == "min_max" else ("mean", "std")
        name = self._buffer_names[key]
        return {names[0]: getattr(self, f"{name}__a"), names[1]: getattr(self, f"{name}__b")}

    @staticmethod
    def _scale(mode: str, a: Tensor, b: Tensor) -> Tensor:
        spread = (b - a) / 2 if mode == "min_max" else b
        return torch.where(spread.abs() < _EPS, torch.ones_like(spread), spread)

    def _params(self, key: str) -> tuple[str, Tensor, Tensor]:
        if key not in self.modes:
            raise KeyError(f"feature {key!r} has no normalization (known: {sorted(self.modes)})")
        mode = self.modes[key]
        if mode == "identity":
            return mode, torch.zeros(()), torch.ones(())
        name = self._buffer_names[key]
        a, b = getattr(self, f"{name}__a"), getattr(self, f"{name}__b")
        center = (a + b) / 2 if mode == "min_max" else a
        return mode, center, getattr(self, f"{name}__scale")

    def normalize(self, key: str, x: Tensor) -> Tensor:
        mode, center, scale = self._params(key)
        if mode == "identity":
            return x
        return (x - center) / scale

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        mode, center, scale = self._params(key)
        if mode == "identity":
            return x
        return x * scale + center

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: modes and the raw statistics they were built from."""
        out: dict[str, Any] = {"modes": dict(self.modes), "stats": {}}
        for key, mode in self.modes.items():
            if mode == "identity":
                continue
            name = self._buffer_names[key]
            names = ("min", "max") if mode == "min_max" else ("mean", "std")
            out["stats"][key] = {
                names[0]: getattr(self, f"{name}__a").tolist(),
                names[1]: getattr(self, f"{name}__b").tolist(),
            }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        if "modes" not in d or "stats" not in d:
            raise ValueError("normalization data must have 'modes' and 'stats' fields")
        return cls(d["stats"], d["modes"])


def _check_statistics(key: str, mode: str, names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    """Finite, equally shaped, min <= max and std >= 0: NaN or inverted statistics would turn every action into
    NaN or flip it, silently."""
    if a.shape != b.shape:
        raise ValueError(f"field 'stats.{key}.{names[0]}' has shape {list(a.shape)} but '{names[1]}' has "
                         f"{list(b.shape)}")
    for name, t in zip(names, (a, b)):
        if not torch.isfinite(t).all():
            raise ValueError(f"field 'stats.{key}.{name}' is not finite: {t.reshape(-1)[:8].tolist()}")
    if mode == "min_max" and (a > b).any():
        raise ValueError(f"field 'stats.{key}.min' exceeds 'stats.{key}.max'")
    if mode == "mean_std" and (b < 0).any():
        raise ValueError(f"field 'stats.{key}.std' is negative")
