"""A small DiT-style transformer over action chunks: one token per chunk timestep, adaLN conditioning.

Same call signature as :class:`ConditionalUnet1D` (``net(sample (B, T, A), timestep (B,), cond (B, C))``),
so a flow policy can swap backbones. The flow time and the observation vector are summed into one
conditioning vector that sets per-block scale, shift and gate of the layer norms (adaLN-Zero: the
gates start at zero, so every block starts as the identity and training starts stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.policies.networks.unet1d import SinusoidalPosEmb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention: every chunk timestep sees the whole chunk."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class AdaLNBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, elementwise_affine=False)
        self.attn = SelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 6 * n_embd))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.ln1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.ln2(x), shift2, scale2))


class ConditionalTransformer1D(nn.Module):
    """Predicts a velocity (B, T, A) from a chunk (B, T, A), a time (B,) and a condition (B, C)."""

    def __init__(self, action_dim: int, horizon: int, global_cond_dim: int, n_embd: int = 128, n_layer: int = 4,
                 n_head: int = 4, dropout: float = 0.0, timestep_scale: float = 1.0):
        super().__init__()
        if n_embd % n_head or n_embd % 2:
            raise ValueError(f"n_embd ({n_embd}) must be even and divisible by n_head ({n_head})")
        self.horizon = horizon
        self.timestep_scale = timestep_scale
        self.inp = nn.Linear(action_dim, n_embd)
        self.pos = nn.Parameter(0.02 * torch.randn(1, horizon, n_embd))
        self.time = nn.Sequential(SinusoidalPosEmb(n_embd), nn.Linear(n_embd, n_embd), nn.SiLU(),
                                  nn.Linear(n_embd, n_embd))
        self.cond = nn.Linear(global_cond_dim, n_embd)
        self.blocks = nn.ModuleList([AdaLNBlock(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, elementwise_affine=False)
        self.ada_f = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 2 * n_embd))
        self.out = nn.Linear(n_embd, action_dim)
        for layer in (self.ada_f[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        if sample.shape[1] != self.horizon:
            raise ValueError(f"expected a chunk of {self.horizon} timesteps, got {sample.shape[1]}")
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        c = self.time(timestep * self.timestep_scale) + self.cond(global_cond)
        x = self.inp(sample) + self.pos
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.ada_f(c).chunk(2, dim=-1)
        return self.out(modulate(self.ln_f(x), shift, scale))
