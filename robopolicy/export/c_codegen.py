"""Pieces of C code generation every exported policy family shares: number formatting, normalization
parameters, the int8 row quantization, Linear weights as C arrays, and the torch references the self-test
vectors come from."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from robopolicy.export.c_sources import CExportError, template


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: w ~= scale[:, None] * q."""
    m = np.abs(w).max(axis=1)
    scale = np.where(m > 0, m / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _norm_params(policy: nn.Module, key: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) so normalized = (x - center) / scale; identity -> (0, 1)."""
    mode, center, scale = policy.normalizer._params(key)
    c = np.broadcast_to(center.detach().cpu().numpy().astype(np.float32), (size,)).copy()
    s = np.broadcast_to(scale.detach().cpu().numpy().astype(np.float32), (size,)).copy()
    return c, s


def _fmt(a: np.ndarray, per_line: int = 8, kind: str = "float", name: str = "array") -> str:
    """A C initializer list. Refuses non-finite numbers: a NaN or inf weight would fly as a silent 0 or overflow."""
    flat = np.asarray(a).reshape(-1)
    if kind == "float":
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            values = flat.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise CExportError(f"C export: {name} has {bad.size} non-finite value(s) (first at flat index {bad[0]}: "
                               f"{values[bad[0]]}); expected finite float32 numbers (a diverged or corrupt checkpoint?)")
        items = [f"{float(v)!r}f" for v in values]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if lines else "{0}"


def _film_linears(net: nn.Module) -> dict[str, nn.Linear]:
    """A FiLM velocity MLP's Linear layers by their C name (the time branch becomes a table instead)."""
    named = {"obs1": net.obs[0], "obs2": net.obs[2], "inp": net.inp, "out": net.out[2]}
    for k, block in enumerate(net.blocks):
        named |= {f"film{k}": block.film, f"fc1_{k}": block.fc1, f"fc2_{k}": block.fc2}
    return named


def _exported_linears(policy: nn.Module) -> list[nn.Linear]:
    """The Linear layers the C code holds (and an int8 build quantizes)."""
    if policy.name in ("sfp", "flow"):
        return list(_film_linears(policy.net).values())
    return [m for m in policy.net.modules() if isinstance(m, nn.Linear)]


@contextmanager
def _dequantized(policy: nn.Module, enabled: bool):
    """Temporarily replace the exported Linear weights by their int8-dequantized values.

    Then torch computes what the int8 C code must produce (up to summation order).
    """
    saved = {}
    try:
        if enabled:
            for m in _exported_linears(policy):
                saved[m] = m.weight.detach().clone()
                q, s = quantize_rows(m.weight.detach().double().cpu().numpy())
                m.weight.data.copy_(torch.from_numpy((q.astype(np.float64) * s[:, None]).astype(np.float32)))
        yield policy
    finally:
        for m, w in saved.items():
            m.weight.data.copy_(w)


def _split_history(policy: nn.Module, obs_flat: np.ndarray) -> dict[str, torch.Tensor]:
    """Raw flattened observation histories (N, To*D) -> {key: (N, To, d)} in the encoder's layout."""
    cfg = policy.config
    x = torch.as_tensor(obs_flat, dtype=torch.float32).view(len(obs_flat), cfg.n_obs_steps, -1)
    hist, o = {}, 0
    for f in cfg.input_features:
        d = int(np.prod(f.shape))
        hist[f.key] = x[:, :, o:o + d]
        o += d
    return hist


def _torch_chunk(policy: nn.Module, obs_flat: np.ndarray, int8: bool) -> np.ndarray:
    """(N, T*A) chunk in robot units from raw flattened obs (N, To*D), via the policy's own modules."""
    with _dequantized(policy, int8), torch.no_grad():
        chunk = policy.predict_chunk(_split_history(policy, obs_flat))
    return chunk.reshape(len(obs_flat), -1).cpu().numpy().astype(np.float64)


def sample_observations(policy: nn.Module, n: int, seed: int = 0) -> np.ndarray:
    """Random raw observations (N, obs_dim) spread over the normalization range (robot units)."""
    cfg = policy.config
    centers, scales = [], []
    for f in cfg.input_features:
        c, s = _norm_params(policy, f.key, int(np.prod(f.shape)))
        centers.append(c)
        scales.append(s)
    c = np.tile(np.concatenate(centers), cfg.n_obs_steps)
    s = np.tile(np.concatenate(scales), cfg.n_obs_steps)
    rng = np.random.default_rng(seed)
    return (c + s * rng.uniform(-1.2, 1.2, size=(n, c.size))).astype(np.float32)


def reference_actions(policy: nn.Module, obs: np.ndarray, int8: bool = False) -> np.ndarray:
    """What ``policy_step`` must return for raw observations (N, obs_dim): (N, A), robot units."""
    cfg = policy.config
    a = cfg.action_dim
    chunk = _torch_chunk(policy, obs, int8).reshape(len(obs), cfg.horizon, a)
    return chunk[:, cfg.n_obs_steps - 1]


def _linear_c() -> str:
    """The C matrix-vector product every family uses (``c_templates/linear.c``; POLICY_INT8 picks the weight type)."""
    return template("linear.c")


def _weights_c(name: str, w: np.ndarray, b: np.ndarray, int8: bool) -> str:
    """const arrays W<name>, (S<name>,) B<name>, and the argument list linear() takes for them."""
    rows, cols = w.shape
    if int8:
        _fmt(w, name=f"weight W{name}")  # refuse non-finite weights before quantizing them away
        q, s = quantize_rows(w)
        return (f"static const int8_t W{name}[{rows * cols}] = {_fmt(q, 16, 'int')};\n"
                f"static const float S{name}[{rows}] = {_fmt(s, name=f'row scale S{name}')};\n"
                f"static const float B{name}[{rows}] = {_fmt(b, name=f'bias B{name}')};")
    return (f"static const float W{name}[{rows * cols}] = {_fmt(w, name=f'weight W{name}')};\n"
            f"static const float B{name}[{rows}] = {_fmt(b, name=f'bias B{name}')};")


def _linear_args(name: str, int8: bool) -> str:
    return f"W{name}, S{name}, B{name}" if int8 else f"W{name}, B{name}"


def _linear_numpy(m: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return m.weight.detach().double().cpu().numpy(), m.bias.detach().double().cpu().numpy()


def _weight_bytes(linears: list[tuple[np.ndarray, np.ndarray]], int8: bool) -> int:
    return int(sum(w.size * (1 if int8 else 4) + b.size * 4 + (w.shape[0] * 4 if int8 else 0) for w, b in linears))
