"""Observation encoders shared by every policy family.

An encoder turns a normalized observation history {key: (B, To, *shape)} into one conditioning
vector (B, cond_dim). Low-dimensional features are flattened and concatenated (Diffusion Policy's
global conditioning); camera encoders plug in here later.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robopolicy.policies.base import FeatureSpec


class LowDimEncoder(nn.Module):
    def __init__(self, features: list[FeatureSpec], n_obs_steps: int):
        super().__init__()
        for f in features:
            if len(f.shape) != 1:
                raise ValueError(f"LowDimEncoder takes vector features; {f.key!r} has shape {f.shape}")
        self.keys = [f.key for f in features]
        self.output_dim = n_obs_steps * sum(math.prod(f.shape) for f in features)

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        x = torch.cat([obs[k] for k in self.keys], dim=-1)  # (B, To, D)
        return x.flatten(1)


def make_observation_encoder(features: list[FeatureSpec], n_obs_steps: int) -> nn.Module:
    visual = [f for f in features if len(f.shape) == 3]
    if visual:
        raise NotImplementedError(f"camera features {[f.key for f in visual]} need an image encoder (not built yet)")
    return LowDimEncoder(features, n_obs_steps)
