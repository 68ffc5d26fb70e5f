"""ConditionalUnet1D (Diffusion Policy): a 1-D temporal U-Net over action chunks with FiLM conditioning.

Each residual block convolves over the time axis (kernel 5 by default) and is modulated by a
per-channel scale and bias computed from the conditioning vector: the diffusion-step embedding
concatenated with the flattened observation features ("global conditioning").

The activation is Mish, as in Diffusion Policy, or SiLU: ONNX Runtime fuses SiLU's Sigmoid and Mul into
one kernel, while Mish stays five to seven elementwise operators, a fifth of a batch-1 U-Net step's time
on a CPU (docs/benchmarks.md, section 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robopolicy.policies.networks.fast_ops import Conv1d, ConvTranspose1d, Mish


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


ACTIVATIONS = {"mish": Mish, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"U-Net activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish (or SiLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int,
                 activation: str = "mish"):
        super().__init__(
            Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            make_activation(activation),
        )


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int,
                 activation: str = "mish"):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups, activation)
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups, activation)
        self.film = nn.Sequential(make_activation(activation), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = scale * h + bias
        return self.conv2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Predicts noise (or velocity) of shape (B, T, action_dim) from a noisy chunk, a timestep and a condition."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        step_embed_dim: int = 128,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        timestep_scale: float = 1.0,
        blocks_per_level: int = 2,
        activation: str = "mish",
    ):
        super().__init__()
        make_activation(activation)  # a bad name fails here, before any layer is built
        if blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be at least 1, got {blocks_per_level}")
        # Flow models feed t in [0, 1]; scaling it up keeps the sinusoidal embedding informative.
        self.timestep_scale = timestep_scale
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            make_activation(activation),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))

        def block(i: int, o: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(i, o, cond_dim, kernel_size, n_groups, activation)

        # Each level is a ModuleList [residual blocks..., down/upsampling]; with Diffusion Policy's two blocks per
        # level the parameter names are those of the original network.
        n = blocks_per_level
        self.down = nn.ModuleList()
        for level, (i, o) in enumerate(pairs):
            last = level == len(pairs) - 1
            self.down.append(nn.ModuleList([block(i, o), *(block(o, o) for _ in range(n - 1)),
                                             Conv1d(o, o, 3, stride=2, padding=1) if not last else nn.Identity()]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([block(mid, mid) for _ in range(n)])
        self.up = nn.ModuleList()
        # Every up level doubles the length back; the finest skip (level 0) is not concatenated.
        for i, o in reversed(pairs[1:]):
            self.up.append(nn.ModuleList([block(o * 2, i), *(block(i, i) for _ in range(n - 1)),
                                           ConvTranspose1d(i, i, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups, activation),
                                   Conv1d(down_dims[0], action_dim, 1))

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """sample (B, T, A), timestep (B,) or scalar, global_cond (B, C) -> (B, T, A)."""
        x = sample.transpose(1, 2)
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        cond = torch.cat([self.step_encoder(timestep * self.timestep_scale), global_cond], dim=-1)
        x = run_levels(x, cond, self.down, self.mid, self.up)
        return self.final(x).transpose(1, 2)


def run_levels(x: Tensor, cond: Tensor, down: nn.ModuleList, mid: nn.ModuleList, up: nn.ModuleList) -> Tensor:
    """The U-Net's down, middle and up passes, each level [residual blocks..., resampling] and every block called
    as ``block(x, cond)``; shared with the export twin, whose ``cond`` is its precomputed FiLM tensor."""
    skips = []
    for *blocks, downsample in down:
        for res in blocks:
            x = res(x, cond)
        skips.append(x)
        x = downsample(x)
    for res in mid:
        x = res(x, cond)
    for *blocks, upsample in up:
        x = torch.cat([x, skips.pop()], dim=1)
        for res in blocks:
            x = res(x, cond)
        x = upsample(x)
    return x
