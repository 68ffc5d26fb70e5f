"""An export twin of :class:`ConditionalUnet1D`: the same function, written for a short ONNX graph.

At batch 1 the U-Net's ONNX Runtime latency is set by how many small operators run per step, not
by FLOPs (docs/benchmarks.md, section 2). Traced as written, every GroupNorm reshapes through
Shape/Gather/Concat chains (the batch axis is dynamic), every Conv1d is wrapped in Unsqueeze and
Squeeze, and every block runs its own FiLM projection of the same condition. This twin:

- keeps activations in 4-D ``(B, C, 1, L)`` from input to output, so the convolutions are (1, k)
  Conv2d (ONNX Runtime's blocked NCHWc kernels) with no per-layer reshapes;
- writes GroupNorm as InstanceNormalization over ``(B, groups, C/groups * L)`` with constant
  reshape shapes (only the batch is left as -1), since every level's length is known from T, and
  its per-channel affine as one inference BatchNormalization instead of a Mul and an Add;
- computes all blocks' FiLM scales and biases with one matrix product of ``mish(cond)``, and offers
  the pieces (:meth:`ExportUnet.time_film`, :meth:`ExportUnet.observation_film`) with which the
  fused graphs fold each step's time share into a constant;
- writes Mish without Softplus, whose ONNX Runtime CPU kernel is slow (Softplus-Tanh-Mul ran 3-4x
  slower than the forms below at the U-Net's 1,024 values per activation): after a GroupNorm, whose
  affine is then negated for free, as four operators (:func:`mish_of_negated`); elsewhere (the step and
  condition embeddings) with Sigmoid and arithmetic (:func:`export_mish`). A SiLU network's SiLU is
  traced as Sigmoid and Mul, which ONNX Runtime fuses.

The convolution, normalization and FiLM weights are copies of the network's (the step-embedding
layers are shared), so the twin is built from a trained net at export time and checkpoints never change.
``tests/test_export.py`` checks it against the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.policies.networks.unet1d import (
    ConditionalResidualBlock1D,
    ConditionalUnet1D,
    Conv1dBlock,
    run_levels,
)

AFFINE_EPS = 1e-12  # the affine BatchNormalization's epsilon: positive, and below float32's resolution at 1


def export_mish(x: Tensor) -> Tensor:
    """mish(x) = x tanh(softplus(x)) from Sigmoid and arithmetic (see the module docstring).

    With p = sigmoid(x): 1 + e^x = 1 / (1 - p), so tanh(softplus(x)) = a / (2 - a) with a = p (2 - p).
    No cancellation: for very negative x, a ~ 2p keeps its relative precision.
    """
    p = torch.sigmoid(x)
    a = p * (2 - p)
    return x * a / (2 - a)


def mish_of_negated(z: Tensor) -> Tensor:
    """mish(-z) = z tanh(log sigmoid(z)): four ONNX operators where :func:`export_mish` needs six.

    softplus(x) = -log sigmoid(-x) and tanh is odd, so mish(x) = -x tanh(log sigmoid(-x)). A GroupNorm's
    affine hands over z = -x at no cost (negated scale and shift), which saves the two extra operators:
    the default U-Net's fused chunk ran 0.89x the time of the six-operator form (docs/benchmarks.md §2).
    Accuracy: float32 sigmoid rounds to 1 for z > 17, where mish(-z) is below 2e-6 in magnitude.
    """
    return z * torch.tanh(torch.log(torch.sigmoid(z)))


class ExportMish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return export_mish(x)


def export_activation(module: nn.Module) -> nn.Module:
    """The twin of one of the U-Net's activation modules."""
    if isinstance(module, nn.Mish):
        return ExportMish()
    if isinstance(module, nn.SiLU):
        return nn.SiLU()
    raise ValueError(f"export: unsupported U-Net activation {type(module).__name__}")


def _conv2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Module:
    """The (1, k) 2-D twin of a 1-D (transposed) convolution, sharing nothing with it."""
    transposed = isinstance(conv, nn.ConvTranspose1d)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"export: unsupported Conv1d padding {conv.padding!r} / {conv.padding_mode!r}")
    extra = {"output_padding": (0, conv.output_padding[0])} if transposed else {}
    twin = cls(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
               padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups,
               bias=conv.bias is not None, **extra)
    with torch.no_grad():
        twin.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            twin.bias.copy_(conv.bias)
    return twin


class _ConvNormAct(nn.Module):
    """Conv -> GroupNorm -> Mish (or SiLU) on (B, C, 1, L) for a fixed length L."""

    def __init__(self, block: Conv1dBlock, length_in: int):
        super().__init__()
        conv, norm = block[0], block[1]
        self.conv = _conv2d(conv)
        self.activation = export_activation(block[2])
        self.groups, self.channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.length = (length_in + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) \
            // conv.stride[0] + 1
        # After the normalization Mish reads the negated affine output (mish_of_negated): same weights, signs flipped.
        self.negate = isinstance(self.activation, ExportMish)
        sign = -1.0 if self.negate else 1.0
        self.register_buffer("gamma", sign * norm.weight.detach().clone())
        self.register_buffer("beta", sign * norm.bias.detach().clone())
        # Identity affine per group, given explicitly (the ONNX symbolic needs the group count).
        self.register_buffer("unit_scale", torch.ones(self.groups))
        self.register_buffer("zero_bias", torch.zeros(self.groups))
        self.register_buffer("zero_mean", torch.zeros(self.channels))
        self.register_buffer("unit_var", torch.ones(self.channels))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        grouped = h.reshape(-1, self.groups, self.channels // self.groups * self.length)
        h = F.instance_norm(grouped, weight=self.unit_scale, bias=self.zero_bias, eps=self.eps)
        h = h.reshape(-1, self.channels, 1, self.length)
        # x * gamma + beta as an inference BatchNormalization (mean 0, variance 1): one operator, not two. Its eps
        # must be positive (torch 2.11 refuses 0); 1e-12 vanishes in float32 (1 + 1e-12 == 1), so this is exact.
        h = F.batch_norm(h, self.zero_mean, self.unit_var, self.gamma, self.beta, training=False, eps=AFFINE_EPS)
        return mish_of_negated(h) if self.negate else self.activation(h)


class _ResidualBlock(nn.Module):
    def __init__(self, block: ConditionalResidualBlock1D, length: int, film_offset: int):
        super().__init__()
        self.conv1 = _ConvNormAct(block.conv1, length)
        self.conv2 = _ConvNormAct(block.conv2, length)
        self.residual = _conv2d(block.residual) if isinstance(block.residual, nn.Conv1d) else nn.Identity()
        self.channels, self.offset = block.out_channels, film_offset

    def forward(self, x: Tensor, film: Tensor) -> Tensor:
        """film: (B, all blocks' 2C, 1, 1); this block's scale and bias are a constant slice of it."""
        o, c = self.offset, self.channels
        h = self.conv1(x) * film[:, o:o + c] + film[:, o + c:o + 2 * c]
        return self.conv2(h) + self.residual(x)


class ExportUnet(nn.Module):
    """``ConditionalUnet1D`` for chunks of exactly ``horizon`` steps, as a 4-D graph (module docstring)."""

    def __init__(self, net: ConditionalUnet1D, horizon: int):
        super().__init__()
        self.horizon, self.timestep_scale = horizon, net.timestep_scale
        # The step embedding's Linear layers are shared with ``net``, its activation swapped.
        self.step_encoder = nn.Sequential(*(export_activation(m) if isinstance(m, (nn.Mish, nn.SiLU)) else m
                                            for m in net.step_encoder))
        self.cond_activation = export_activation(net.down[0][0].film[0])
        films: list[nn.Linear] = []

        def twin(block: ConditionalResidualBlock1D, length: int) -> _ResidualBlock:
            offset = sum(f.out_features for f in films)
            films.append(block.film[1])
            return _ResidualBlock(block, length, offset)

        length = horizon
        self.down = nn.ModuleList()
        for *blocks, downsample in net.down:
            level = nn.ModuleList([twin(res, length) for res in blocks])
            if isinstance(downsample, nn.Conv1d):
                level.append(_conv2d(downsample))
                pad, kernel, stride = downsample.padding[0], downsample.kernel_size[0], downsample.stride[0]
                length = (length + 2 * pad - kernel) // stride + 1
            else:
                level.append(nn.Identity())
            self.down.append(level)
        self.mid = nn.ModuleList([twin(res, length) for res in net.mid])
        self.up = nn.ModuleList()
        for *blocks, upsample in net.up:
            level = nn.ModuleList([twin(res, length) for res in blocks])
            level.append(_conv2d(upsample))
            pad, kernel, stride = upsample.padding[0], upsample.kernel_size[0], upsample.stride[0]
            length = (length - 1) * stride - 2 * pad + kernel
            self.up.append(level)
        if length != horizon:
            raise ValueError(f"export: the U-Net maps length {horizon} to {length}; horizon must be "
                             f"divisible by 2 ** (levels - 1)")
        self.final_block = _ConvNormAct(net.final[0], length)
        self.final_conv = _conv2d(net.final[1])
        self.action_dim = net.final[1].out_channels
        self.film = nn.Linear(films[0].in_features, sum(f.out_features for f in films))
        with torch.no_grad():
            self.film.weight.copy_(torch.cat([f.weight for f in films]))
            self.film.bias.copy_(torch.cat([f.bias for f in films]))
        self.film_width = self.film.out_features
        self.step_dim = net.step_encoder[-1].out_features  # the FiLM input is [step embedding, condition]

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """sample (B, T, A), timestep (B,), global_cond (B, C) -> (B, T, A), as ConditionalUnet1D."""
        cond = torch.cat([self.step_encoder(timestep * self.timestep_scale), global_cond], dim=-1)
        film = self.film(self.cond_activation(cond)).reshape(-1, self.film_width, 1, 1)
        return self.from_4d(self.forward_4d(self.to_4d(sample), film))

    # The pieces below let an unrolled chunk (the fused graph, whose times are known at export) skip
    # the per-step timestep embedding and FiLM projection: the activation is elementwise, so
    # film(act([emb(t), cond])) = W_t act(emb(t)) + b  +  W_c act(cond), a constant plus one product
    # per chunk, and the chunk stays 4-D between steps.
    def to_4d(self, sample: Tensor) -> Tensor:
        """(B, T, A) -> the twin's (B, A, 1, T)."""
        if sample.shape[1] != self.horizon:
            raise ValueError(f"ExportUnet was built for T = {self.horizon}, got a chunk of {sample.shape[1]}")
        return sample.transpose(1, 2).unsqueeze(2)

    def from_4d(self, x: Tensor) -> Tensor:
        return x.reshape(-1, self.action_dim, self.horizon).transpose(1, 2)

    def observation_film(self, global_cond: Tensor) -> Tensor:
        """(B, F, 1, 1): the condition's share of every block's FiLM scale and bias, the same at every step."""
        obs_weight = self.film.weight[:, self.step_dim:]
        return F.linear(self.cond_activation(global_cond), obs_weight).reshape(-1, self.film_width, 1, 1)

    def time_film(self, timestep: float) -> Tensor:
        """(1, F, 1, 1): the timestep's share plus the bias, a constant of the traced graph."""
        with torch.no_grad():
            emb = self.step_encoder(torch.tensor([timestep * self.timestep_scale]))
            weight = self.film.weight[:, :self.step_dim]
            return F.linear(self.cond_activation(emb), weight, self.film.bias).reshape(1, self.film_width, 1, 1)

    def forward_4d(self, x: Tensor, film: Tensor) -> Tensor:
        """x (B, A, 1, T) and the FiLM tensor (B, F, 1, 1) -> the output, (B, A, 1, T)."""
        x = run_levels(x, film, self.down, self.mid, self.up)
        return self.final_conv(self.final_block(x))
