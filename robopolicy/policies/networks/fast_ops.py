"""Drop-in layers for a faster CPU training step: the same parameters and checkpoints as the stock ones.

A Diffusion Policy U-Net step on a 2-core CPU is convolutions plus elementwise passes around them
(docs/benchmarks.md section 9). Two of those are slower than they need to be:

- **Mish.** ATen's CPU kernel evaluates ``x * tanh(log1p(exp(x)))`` with three vectorized transcendentals, ~9x the
  time of SiLU. ``tanh(softplus(x)) = 1 - 2 / ((1 + e^x)^2 + 1)`` needs one exponential; compiled by inductor into
  one loop for the forward and one for the backward, Mish and its gradient together run 1.5-2.6x faster at batch
  256 and agree with ATen's to float32 rounding. Only layers switched on with ``fused = True`` (the trainer's
  training network, ``train.fused_activations``) take this path, and only while they build a graph; inference and
  export use the stock layer. (Folding the FiLM that follows a block's first Mish into the same loops was slower:
  inductor's loops over the 4-16 long time axis, across which FiLM's scale and bias broadcast, do not vectorize.)
- **Convolution backward under bf16 autocast.** oneDNN's bf16 convolution backward runs no faster than its
  float32 one at the U-Net's sequence lengths (4-16), while its bf16 forward kernels and bf16 matrix products use
  the CPU's AMX/AVX512-BF16 units. ``Conv1d`` and ``ConvTranspose1d`` compute the input gradient with the other
  one's forward kernel (a convolution's input gradient is a transposed convolution of the output gradient, and
  the other way round) and the weight gradient as one matrix product over windows of the input: the same sums,
  reordered. This changes numerics only as far as bf16 rounding of sums taken in another order; in float32 the
  stock backward is faster overall (docs/benchmarks.md section 9) and stays.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

# ---- Mish ---------------------------------------------------------------------------------------------------


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def mish_forward(x: Tensor) -> Tensor:
    """Mish with one exponential, computed in (at least) float32 and returned in ``x``'s dtype. Above 20 the clamp
    leaves tanh(softplus(x)) = 1 to float64 precision, as it is."""
    xf = _at_least_float32(x)
    e1 = torch.exp(torch.clamp(xf, max=20.0)) + 1.0
    return (xf * (1.0 - 2.0 / (e1 * e1 + 1.0))).to(x.dtype)


def mish_backward(grad: Tensor, x: Tensor) -> Tensor:
    """d mish / dx = t + x * sigmoid(x) * (1 - t^2), t = tanh(softplus(x)); sigmoid from the same exponential."""
    xf = _at_least_float32(x)
    e = torch.exp(torch.clamp(xf, max=20.0))
    e1 = e + 1.0
    t = 1.0 - 2.0 / (e1 * e1 + 1.0)
    return (_at_least_float32(grad) * (t + xf * (e / e1) * (1.0 - t * t))).to(grad.dtype)


class _CompiledKernels:
    """Inductor-compiled versions of the functions above, built on first use (cached on disk: the first training
    step takes ~14 s more the first time on a 2-core CPU, ~3 s more after). A compile that fails leaves the stock
    ATen operators in their place for the rest of the process, said once."""

    def __init__(self) -> None:
        self.compiled: dict[str, Callable] = {}
        self.failure: str | None = None

    def __call__(self, fn: Callable, *args: Tensor):
        if self.failure is None:
            kernel = self.compiled.get(fn.__name__)
            if kernel is None:
                kernel = self.compiled[fn.__name__] = torch.compile(fn, dynamic=True)
            try:
                return kernel(*args)
            except Exception as e:  # noqa: BLE001 - any compile failure means the stock operators, said once
                cause = getattr(e, "inner_exception", None) or e
                first = str(cause).strip().splitlines()
                self.failure = f"{type(cause).__name__}: {first[0][:200] if first else ''}"
                warnings.warn(f"fused Mish: compiling its kernels failed ({self.failure}); training continues with "
                              "ATen's Mish (the same values, slower)", RuntimeWarning, stacklevel=2)
        return STOCK[fn.__name__](*args)


STOCK: dict[str, Callable] = {
    "mish_forward": F.mish,
    "mish_backward": torch.ops.aten.mish_backward,
}
KERNELS = _CompiledKernels()


class _FusedMishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return KERNELS(mish_forward, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return KERNELS(mish_backward, grad.contiguous(), x)


class Mish(nn.Mish):
    """``nn.Mish`` that, once ``fused`` is set, trains through the compiled one-exponential kernels."""

    fused: bool = False  # set per layer by robopolicy.train.speed.fuse_activations (the training network only)

    def forward(self, x: Tensor) -> Tensor:
        # Under a dispatch mode (FlopCounterMode, FakeTensorMode) the stock layer: kernels first compiled inside
        # one ran 10 % slower than ATen's Mish ever after (bench/dp_train_speed.py counts FLOPs that way).
        if self.fused and torch.is_grad_enabled() and x.requires_grad and _get_current_dispatch_mode() is None:
            return _FusedMishFunction.apply(x)
        return super().forward(x)


# ---- Conv1d -------------------------------------------------------------------------------------------------


def _windows(x: Tensor, pad: int, length: int, k: int, stride: int, ones_column: bool) -> Tensor:
    """``x`` (B, C, L) zero-padded by ``pad`` on both sides, cut into ``length`` windows of ``k`` steps ``stride``
    apart, as a (B * length, k * C [+ 1]) matrix laid out (tap, channel) so that the copy's inner loop runs over
    contiguous channels. A last column of ones makes the same product also sum a bias gradient."""
    batch, channels, _ = x.shape
    padded = F.pad(x, (pad, pad)).transpose(1, 2).contiguous()  # (B, L + 2 pad, C)
    windows = padded.as_strided((batch, length, k, channels),
                                (padded.shape[1] * channels, stride * channels, channels, 1))
    width = k * channels
    columns = x.new_empty(batch * length, width + ones_column)
    columns[:, :width].view(batch, length, k, channels).copy_(windows)
    if ones_column:
        columns[:, width] = 1
    return columns


class _ReorderedConv1dFunction(torch.autograd.Function):
    """Forward by oneDNN; the input gradient as a transposed convolution (oneDNN's forward kernel), the weight
    and bias gradients as one matrix product over the input's windows."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride, ctx.pad = bias is not None, stride, pad
        return F.conv1d(x, weight, bias, stride=stride, padding=pad)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        stride, pad = ctx.stride, ctx.pad
        batch, in_channels, length = x.shape
        out_channels, _, k = weight.shape
        out_length = grad_out.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            output_padding = length - ((out_length - 1) * stride - 2 * pad + k)
            grad_x = F.conv_transpose1d(grad_out, weight, stride=stride, padding=pad, output_padding=output_padding)
        if ctx.needs_input_grad[1]:
            columns = _windows(x, pad, out_length, k, stride, ones_column=ctx.has_bias)
            rows = grad_out.transpose(1, 2).reshape(batch * out_length, out_channels)
            product = rows.t() @ columns  # (out, k * in [+ 1])
            grad_w = product[:, :k * in_channels].reshape(out_channels, k, in_channels).transpose(1, 2)
            if ctx.has_bias:
                grad_b = product[:, -1]
        elif ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2))
        return grad_x, grad_w, grad_b, None, None


class _ReorderedConvTranspose1dFunction(torch.autograd.Function):
    """Forward by oneDNN; the input gradient as a strided convolution, the weight gradient as one matrix product
    of the input with the output gradient's windows."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride, ctx.pad = bias is not None, stride, pad
        return F.conv_transpose1d(x, weight, bias, stride=stride, padding=pad)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        stride, pad = ctx.stride, ctx.pad
        batch, in_channels, length = x.shape
        _, out_channels, k = weight.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv1d(grad_out, weight, stride=stride, padding=pad)
        if ctx.needs_input_grad[1]:
            columns = _windows(grad_out, pad, length, k, stride, ones_column=False)  # (B * L, k * out)
            rows = x.transpose(1, 2).reshape(batch * length, in_channels)
            grad_w = (rows.t() @ columns).view(in_channels, k, out_channels).transpose(1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2))
        return grad_x, grad_w, grad_b, None, None


def _bf16_training_on_cpu(x: Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _bf16(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.to(torch.bfloat16)


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` whose backward is reordered under CPU bf16 autocast (see the module docstring).

    Only a forward that builds a graph under ``torch.autocast("cpu", dtype=torch.bfloat16)``, for an ungrouped,
    undilated, zero-padded convolution, takes that path; everything else (float32, CUDA, inference, export) is the
    stock layer.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (_bf16_training_on_cpu(x) and self.dilation == (1,) and self.groups == 1
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _ReorderedConv1dFunction.apply(_bf16(x), _bf16(self.weight), _bf16(self.bias), self.stride[0],
                                                  self.padding[0])


class ConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose backward is reordered under CPU bf16 autocast, like ``Conv1d``."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not (_bf16_training_on_cpu(x) and output_size is None and self.output_padding == (0,)
                and self.dilation == (1,) and self.groups == 1 and self.padding_mode == "zeros"):
            return super().forward(x, output_size)
        with torch.autocast("cpu", enabled=False):
            return _ReorderedConvTranspose1dFunction.apply(_bf16(x), _bf16(self.weight), _bf16(self.bias),
                                                           self.stride[0], self.padding[0])
