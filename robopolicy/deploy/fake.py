"""Trivial policies for tests and benchmarks (no torch)."""

from __future__ import annotations

import time

import numpy as np

from robopolicy.deploy.adapter import PolicyAdapter
from robopolicy.deploy.protocol import PolicySpec


def ramp_spec(n_obs_steps: int = 2, horizon: int = 16, n_action_steps: int = 8, fps: float = 10.0,
              state_key: str = "observation.state", dim: int = 2) -> PolicySpec:
    return PolicySpec(input_features={state_key: (dim,)}, action_key="action", action_dim=dim,
                      n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps, fps=fps, name="ramp")


class RampPolicy(PolicyAdapter):
    """Chunk = latest state + ``step * (i - (To - 1))`` per action (+ optional delay / NaN injection).

    Deterministic and easy to trace: action ``i`` of a chunk encodes how far it lies from ``t_obs``.
    """

    def __init__(self, spec: PolicySpec | None = None, step: float = 1.0, delay_s: float = 0.0,
                 nan_every: int = 0):
        spec = spec or ramp_spec()
        super().__init__(spec, self._ramp)
        self.step = step
        self.delay_s = delay_s
        self.nan_every = nan_every
        self.calls = 0

    def _ramp(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        latest = next(iter(obs.values()))[-1].reshape(-1)[: self.spec.action_dim].astype(np.float32)
        offsets = (np.arange(self.spec.horizon) - (self.spec.n_obs_steps - 1)) * self.step
        chunk = latest[None, :] + offsets[:, None].astype(np.float32)
        if self.nan_every and self.calls % self.nan_every == 0:
            chunk[0, 0] = np.nan
        return chunk


def make_ramp_policy(**kw) -> RampPolicy:
    """Top-level factory (picklable) for server processes."""
    spec_kw = {k: kw.pop(k) for k in list(kw) if k in ("n_obs_steps", "horizon", "n_action_steps", "fps")}
    return RampPolicy(ramp_spec(**spec_kw), **kw)
