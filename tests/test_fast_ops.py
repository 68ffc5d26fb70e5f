"""The fast layers (robopolicy/policies/networks/fast_ops.py) compute what the stock ones compute.

The reordered convolution backwards are checked in float64 against autograd through the stock operator, so any
wrong index or sign shows as a difference far above rounding; the Mish kernels against ATen's Mish.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from robopolicy.policies.networks import fast_ops
from robopolicy.policies.networks.fast_ops import Conv1d, ConvTranspose1d, Mish
from robopolicy.policies.networks.unet1d import ConditionalUnet1D
from robopolicy.train import speed

needs_compiler = pytest.mark.skipif(speed.compile_unavailable_reason(torch.device("cpu")) is not None,
                                    reason="no C++ compiler for inductor")


def _grads(output: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(output, inputs, grad_out))


# (in, out, length, kernel, stride, padding, bias): the U-Net's same-padded, 1x1 and downsampling convolutions,
# an odd length under stride 2, and no bias
CONVS = [(3, 5, 16, 5, 1, 2, True), (4, 6, 8, 1, 1, 0, True), (6, 6, 16, 3, 2, 1, True), (5, 4, 7, 3, 2, 1, True),
         (4, 3, 9, 5, 1, 2, False), (3, 4, 10, 4, 1, 1, True)]


@pytest.mark.parametrize("cin,cout,length,k,stride,pad,bias", CONVS)
def test_reordered_conv1d_backward_is_autograds(cin, cout, length, k, stride, pad, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, cin, length, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(cout, cin, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    stock = F.conv1d(x, w, b, stride=stride, padding=pad)
    fast = fast_ops._ReorderedConv1dFunction.apply(x, w, b, stride, pad)
    torch.testing.assert_close(fast, stock, rtol=0, atol=0)
    grad_out = torch.randn(stock.shape, dtype=torch.float64, generator=g)
    for got, want in zip(_grads(fast, inputs, grad_out), _grads(stock, inputs, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin,cout,length,k,stride,pad", [(4, 4, 4, 4, 2, 1), (6, 3, 8, 4, 2, 1), (3, 5, 5, 3, 1, 1)])
def test_reordered_conv_transpose1d_backward_is_autograds(cin, cout, length, k, stride, pad):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, cin, length, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(cin, cout, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, generator=g, requires_grad=True)
    stock = F.conv_transpose1d(x, w, b, stride=stride, padding=pad)
    fast = fast_ops._ReorderedConvTranspose1dFunction.apply(x, w, b, stride, pad)
    torch.testing.assert_close(fast, stock, rtol=0, atol=0)
    grad_out = torch.randn(stock.shape, dtype=torch.float64, generator=g)
    for got, want in zip(_grads(fast, [x, w, b], grad_out), _grads(stock, [x, w, b], grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _took_reordered_path(output: torch.Tensor) -> bool:
    return "Reordered" in type(output.grad_fn).__name__


def test_conv_layers_reorder_only_a_cpu_bf16_training_forward():
    conv, up = Conv1d(3, 4, 5, padding=2), ConvTranspose1d(4, 4, 4, stride=2, padding=1)
    x = torch.randn(2, 3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert _took_reordered_path(y) and y.dtype == torch.bfloat16
        assert _took_reordered_path(up(y))
        with torch.no_grad():  # inference: the stock layer
            assert conv(x).grad_fn is None
    assert not _took_reordered_path(conv(x)) and conv(x).dtype == torch.float32  # float32: the stock layer
    # the layers are nn.Conv1d / nn.ConvTranspose1d to everything else (export, state dicts)
    assert isinstance(conv, nn.Conv1d) and isinstance(up, nn.ConvTranspose1d)
    assert list(conv.state_dict()) == list(nn.Conv1d(3, 4, 5).state_dict())
    same = Conv1d(3, 4, 5, padding="same")  # a string padding keeps the stock path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _took_reordered_path(same(x))


def test_unet_bf16_step_matches_the_stock_bf16_step():
    """The whole U-Net under bf16 autocast: the reordered backward against oneDNN's, both in bf16. Tolerance:
    bf16 rounding (8 bits of mantissa) of sums taken in a different order, 2 % of each gradient's scale."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, step_embed_dim=16, down_dims=(16, 32, 64))
    sample, t, cond = torch.randn(8, 16, 2), torch.rand(8), torch.randn(8, 6)
    grads = []
    for reordered in (True, False):
        if not reordered:  # the stock layers' forward, same parameters
            for m in net.modules():
                if isinstance(m, (Conv1d, ConvTranspose1d)):
                    m.forward = super(type(m), m).forward
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(sample, t, cond).float().pow(2).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for fast, stock in zip(*grads):
        scale = stock.abs().max().item() + 1e-6
        torch.testing.assert_close(fast, stock, rtol=0, atol=0.02 * scale)


def test_mish_formulas_are_atens_in_float64():
    x = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64), torch.tensor([0.0, 19.99, 20.0, 50.0],
                                                                                    dtype=torch.float64)])
    grad = torch.randn_like(x)
    torch.testing.assert_close(fast_ops.mish_forward(x), F.mish(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_ops.mish_backward(grad, x), torch.ops.aten.mish_backward(grad, x),
                               rtol=1e-9, atol=1e-9)


@needs_compiler
def test_fused_mish_layer_trains_like_the_stock_one():
    """The compiled kernels in float32 and bf16 against ATen's Mish; tolerance: float32 rounding at |x| up to ~16
    (1e-5) and, for
    bf16, one rounding of the output (2^-8 relative)."""
    stock, fused = Mish(), Mish()
    fused.fused = True
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 8e-3)):
        x = (torch.randn(16, 8, 12) * 4).to(dtype).requires_grad_()
        grad = torch.randn(16, 8, 12).to(dtype)
        y_fused, y_stock = fused(x), stock(x)
        assert "FusedMish" in type(y_fused.grad_fn).__name__
        torch.testing.assert_close(y_fused, y_stock, rtol=tol, atol=tol)
        (g_fused,), (g_stock,) = torch.autograd.grad(y_fused, x, grad), torch.autograd.grad(y_stock, x, grad)
        torch.testing.assert_close(g_fused, g_stock, rtol=tol, atol=tol)
    with torch.no_grad():  # inference takes the stock layer
        assert fused(torch.randn(3)).grad_fn is None
    with FlopCounterMode(display=False):  # so does a forward under a dispatch mode (nothing compiles inside one)
        assert "FusedMish" not in type(fused(torch.randn(3, requires_grad=True)).grad_fn).__name__
    assert fast_ops.KERNELS.failure is None


def test_a_failing_kernel_compile_falls_back_to_atens_mish(monkeypatch):
    def broken_compile(fn, **kwargs):
        def kernel(*args):
            raise RuntimeError("inductor: no usable compiler")
        return kernel

    kernels = fast_ops._CompiledKernels()
    monkeypatch.setattr(fast_ops, "KERNELS", kernels)
    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = Mish()
    layer.fused = True
    x = torch.randn(4, 5, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = layer(x)
        y.sum().backward()
    assert kernels.failure == "RuntimeError: inductor: no usable compiler"
    assert sum("compiling its kernels failed" in str(w.message) for w in caught) == 1  # said once
    torch.testing.assert_close(y, F.mish(x), rtol=0, atol=0)
    xs = x.detach().requires_grad_()
    F.mish(xs).sum().backward()
    torch.testing.assert_close(x.grad, xs.grad, rtol=0, atol=0)
