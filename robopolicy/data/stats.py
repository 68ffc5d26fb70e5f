"""Feature statistics in LeRobot's form: min, max, mean, std, count and quantiles q01..q99.

Numeric features get per-dimension statistics; camera features get per-channel statistics of pixel
values scaled to [0, 1], shaped (C, 1, 1) as LeRobot stores them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robopolicy.data.format import QUANTILES, STAT_NAMES, DatasetError

# Pixels sampled per image feature for quantiles: exact quantiles over millions of pixels buy nothing.
_MAX_PIXELS_FOR_QUANTILES = 2_000_000


def numeric_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over axis 0 of an (N, *shape) array.

    min and max of bool and integer features keep the feature's type, as LeRobot stores them (its
    ``aggregate_datasets`` cannot concatenate a bool min with a double one).
    """
    raw = np.asarray(values)
    if raw.ndim == 1:
        raw = raw[:, None]
    x = raw.astype(np.float64)
    exact = raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.integer)
    out = {
        "min": raw.min(axis=0) if exact else x.min(axis=0),
        "max": raw.max(axis=0) if exact else x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([x.shape[0]]),
    }
    q = np.quantile(x, list(QUANTILES.values()), axis=0)
    for i, name in enumerate(QUANTILES):
        out[name] = q[i]
    return out


def image_stats(frames: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 (N, H, W, C) frames as [0, 1] values, each shaped (C, 1, 1)."""
    n, _, _, c = frames.shape
    pixels = frames.reshape(-1, c)
    out = {
        "min": pixels.min(axis=0) / 255.0,
        "max": pixels.max(axis=0) / 255.0,
        "mean": pixels.mean(axis=0, dtype=np.float64) / 255.0,
        "std": pixels.astype(np.float32).std(axis=0, dtype=np.float64) / 255.0,
    }
    if pixels.shape[0] > _MAX_PIXELS_FOR_QUANTILES:
        rng = rng or np.random.default_rng(0)
        pixels = pixels[rng.choice(pixels.shape[0], _MAX_PIXELS_FOR_QUANTILES, replace=False)]
    q = np.quantile(pixels, list(QUANTILES.values()), axis=0) / 255.0
    for i, name in enumerate(QUANTILES):
        out[name] = q[i]
    out = {k: np.asarray(v, dtype=np.float64).reshape(c, 1, 1) for k, v in out.items()}
    out["count"] = np.array([n])
    return out


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode statistics exactly for min/max/mean/std/count; quantiles by count-weighted mean.

    (LeRobot aggregates quantiles the same approximate way; callers holding all the data should
    prefer computing quantiles over it directly.)
    """
    counts = np.array([float(s["count"][0]) for s in per_episode])
    total = counts.sum()
    w = counts / total
    shape_ones = (-1,) + (1,) * (np.ndim(per_episode[0]["mean"]))
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w.reshape(shape_ones) * means).sum(axis=0)
    second = (w.reshape(shape_ones) * (np.stack([s["std"] for s in per_episode]) ** 2 + means**2)).sum(axis=0)
    out = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(total)]),
    }
    for name in QUANTILES:  # v2.1 datasets carry no quantiles
        if all(name in s for s in per_episode):
            out[name] = (w.reshape(shape_ones) * np.stack([s[name] for s in per_episode])).sum(axis=0)
    return out


def to_jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {name: np.asarray(v[name]).tolist() for name in STAT_NAMES if name in v} for k, v in stats.items()}


def from_jsonable(stats: Any, where: str = "stats") -> dict[str, dict[str, np.ndarray]]:
    """Statistics from JSON as numeric arrays: count as int64, min/max of bool and int features in their own type
    (as LeRobot stores them), the rest float64; a non-numeric value is an error naming the field."""
    if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
        raise DatasetError(f"{where}: expected {{feature: {{statistic: values}}}}, got {type(stats).__name__}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, entry in stats.items():
        out[key] = {}
        for name, value in entry.items():
            try:
                typed = np.asarray(value)
                if typed.dtype.kind not in "biuf":
                    raise TypeError(f"dtype {typed.dtype}")
                exact = name in ("min", "max") and typed.dtype.kind in "biu"
                out[key][name] = np.asarray(value, dtype=np.int64 if name == "count" else None if exact else np.float64)
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{where}: field '{key}.{name}' must be numbers, got {value!r:.80}") from e
    return out


def validate_stats(stats: dict[str, dict[str, np.ndarray]], features: dict[str, dict[str, Any]], where: str) -> None:
    """Statistics a policy may normalize with must be finite, of the feature's shape, and consistent
    (min <= mean <= max, quantiles inside [min, max], std >= 0; a zero std or min == max is a constant
    dimension, which the normalizer maps to 0 instead of dividing by it).

    Camera features' statistics are per channel, shaped (C, 1, 1). Features without statistics pass here;
    whoever needs them (the normalizer) says so.
    """
    for key, entry in stats.items():
        ft = features.get(key)
        if ft is None or ft["dtype"] == "string":
            continue
        shape = (ft["shape"][-1], 1, 1) if ft["dtype"] in ("video", "image") else tuple(ft["shape"])
        for name, value in entry.items():
            field = f"{where}: field '{key}.{name}'"
            if name == "count":
                if value.size != 1 or int(value.reshape(-1)[0]) <= 0:
                    raise DatasetError(f"{field} must be one positive integer, got {value.tolist()}")
                continue
            if value.shape != shape and not (shape == (1,) and value.shape == ()):
                raise DatasetError(f"{field} has shape {list(value.shape)}, the feature's is {list(shape)}")
            if not np.isfinite(value).all():
                raise DatasetError(f"{field} is not finite: {value.reshape(-1)[:8].tolist()}")
        lo, hi = entry.get("min"), entry.get("max")
        if lo is not None and hi is not None:  # compared as float64: bool and int min/max keep their own type
            lo, hi = lo.astype(np.float64), hi.astype(np.float64)
            if (lo > hi).any():
                i = int(np.argmax((lo > hi).reshape(-1)))
                raise DatasetError(f"{where}: field '{key}.min' exceeds '{key}.max' at index {i} "
                                   f"({lo.reshape(-1)[i]} > {hi.reshape(-1)[i]})")
            slack = 1e-6 * np.maximum(1.0, np.abs(hi - lo))
            for name in ("mean", *QUANTILES):
                if name in entry and ((entry[name] < lo - slack) | (entry[name] > hi + slack)).any():
                    raise DatasetError(f"{where}: field '{key}.{name}' lies outside ['{key}.min', '{key}.max']")
        std = entry.get("std")
        if std is not None:
            if (std < 0).any():
                raise DatasetError(f"{where}: field '{key}.std' is negative: {std.reshape(-1)[:8].tolist()}")
