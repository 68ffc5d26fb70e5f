"""A residual MLP over one flat point, FiLM-conditioned on an observation embedding and a flow time.

Streaming flow integrates a single action; the flow family's ``mlp`` backbone integrates a whole
short chunk flattened to one vector. For low-dimensional actions and short chunks (a quadrotor's
motor commands) this is smaller and fits the observation -> action map more precisely than a
convolution over a handful of timesteps, and it is the shape the C export can run on a microcontroller.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.policies.networks.unet1d import SinusoidalPosEmb


class FiLMBlock(nn.Module):
    """Pre-norm residual MLP block whose normalized input is scaled and shifted by the condition."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.mish(self.fc1(F.mish(y))))


class VelocityMLP(nn.Module):
    """v(x, t | obs) for one flat point x of ``state_dim`` numbers.

    The observation embedding is split out (:meth:`embed_obs`) so a streaming rollout computes it
    once per chunk; each integration step then costs only the small MLP.
    """

    def __init__(self, state_dim: int, obs_dim: int, hidden_dim: int, n_layers: int, time_embed_dim: int,
                 timestep_scale: float):
        super().__init__()
        self.timestep_scale = timestep_scale
        self.obs = nn.Sequential(nn.Linear(obs_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, hidden_dim))
        self.time = nn.Sequential(SinusoidalPosEmb(time_embed_dim), nn.Linear(time_embed_dim, hidden_dim), nn.Mish(),
                                  nn.Linear(hidden_dim, hidden_dim))
        self.inp = nn.Linear(state_dim, hidden_dim)
        self.blocks = nn.ModuleList([FiLMBlock(hidden_dim, hidden_dim) for _ in range(n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Mish(), nn.Linear(hidden_dim, state_dim))

    def embed_obs(self, obs_vector: Tensor) -> Tensor:
        return self.obs(obs_vector)

    def forward(self, x: Tensor, t: Tensor, obs_embedding: Tensor) -> Tensor:
        cond = F.mish(obs_embedding + self.time(t * self.timestep_scale))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


class ConditionalChunkMLP(VelocityMLP):
    """The flow family's ``mlp`` backbone: same call as the U-Net, ``(x (B, T, A), t (B,), cond) -> (B, T, A)``."""

    def __init__(self, action_dim: int, horizon: int, global_cond_dim: int, hidden_dim: int, n_layers: int,
                 time_embed_dim: int, timestep_scale: float):
        super().__init__(horizon * action_dim, global_cond_dim, hidden_dim, n_layers, time_embed_dim, timestep_scale)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return super().forward(x.flatten(1), t, self.embed_obs(cond)).view_as(x)
