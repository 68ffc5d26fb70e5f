"""The training step's fast path: compiled Mish kernels, a fused AdamW, a foreach EMA update, optionally a
compiled denoising network.

On a 2-core CPU a PushT U-Net step is mostly small convolutions whose GroupNorm, Mish and FiLM around them are
separate memory-bound passes. ATen's Mish is the slowest of them; two compiled one-exponential kernels replace it
in the training network (robopolicy/policies/networks/fast_ops.py). The per-parameter Python loops of AdamW and of
diffusers' EMA become one fused kernel / a handful of foreach calls. ``train.compile`` hands the whole network to
inductor instead (no faster on the 2-core CPU). None of this changes what is computed beyond float32 rounding
(tests/test_train_speed.py), and checkpoints move freely between the paths. ``train.precision=bf16`` is the one
switch here that changes numerics (bf16 autocast, with the reordered convolution backwards of fast_ops). Measured
against the original Diffusion Policy code in bench/dp_train_speed.py (docs/benchmarks.md section 9).
"""

from __future__ import annotations

import os
import shutil

import torch
from rich.console import Console
from torch import nn

from robopolicy.policies.networks.fast_ops import Conv1d, Mish

console = Console()
AUTO_COMPILE_MIN_STEPS = 5000  # train.compile=auto: a shorter run (the 3,000-step demo) would not repay a cold compile
# train.compile_mode: torch.compile's modes. The two with CUDA graphs replay a whole captured forward and backward
# as one launch on a GPU (nothing changes on a CPU, where inductor skips them).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run for ``device`` here (None when it can)."""
    if device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(shutil.which(c) for c in compilers if c):
            return "inductor needs a C++ compiler on the CPU and none was found (CXX, g++, clang++, c++)"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor needs triton on a CUDA GPU and it is not installed"
        return None
    return f"torch.compile is not set up for device {device.type!r}"


def resolve_compile(setting: str | bool, device: torch.device, steps: int) -> bool:
    """``train.compile`` (true | false | auto) to a decision. ``auto`` compiles runs long enough to repay the
    compile time (>= 5,000 steps) where a compiler exists; ``true`` without a compiler trains eagerly, saying so."""
    value = str(setting).lower()
    if value not in ("true", "false", "auto"):
        raise ValueError(f"train.compile must be true, false or auto, got {setting!r}")
    if value == "false" or (value == "auto" and steps < AUTO_COMPILE_MIN_STEPS):
        return False
    reason = compile_unavailable_reason(device)
    if reason is not None:
        console.print(f"[yellow]train.compile={value}: {reason}; training in eager mode (same results, slower)")
        return False
    return True



def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def compile_mode_for(mode: str, distributed: bool) -> str:
    """The torch.compile mode this run uses. Under torchrun the CUDA-graph modes fall back to ``default``, saying
    so: CUDA graphs with DDP have open crash and slowdown reports (pytorch/pytorch#128218, #139207, #140395)
    and were not measured here."""
    check_compile_mode(mode)
    if distributed and mode in CUDA_GRAPH_MODES:
        console.print(f"[yellow]train.compile_mode={mode}: CUDA graphs under torchrun (DDP) are not supported here "
                      "(torch has open crash reports for the pairing); compiling in mode 'default' instead")
        return "default"
    return mode


def compile_network(policy: nn.Module, mode: str = "default") -> bool:
    """Compile ``policy.net`` in place (``nn.Module.compile``: parameter names and state-dict keys stay as they
    are, so checkpoints are the same as eager ones) in torch.compile's ``mode``. Returns False for a policy without
    a ``net``."""
    net = getattr(policy, "net", None)
    if not isinstance(net, nn.Module):
        console.print(f"[yellow]train.compile: {type(policy).__name__} has no .net to compile; training in eager mode")
        return False
    net.compile(mode=check_compile_mode(mode))
    return True


def fuse_activations(policy: nn.Module, device: torch.device) -> int:
    """Switch the training network's Mish layers to the compiled one-exponential kernels (CPU only, where
    inductor has a C++ compiler). Returns how many layers were switched; the EMA copy, saved as the policy, is
    left stock (the layers have no parameters, so checkpoints are the same either way)."""
    if device.type != "cpu":
        return 0  # measured on the CPU only; CUDA's Mish kernel is a single fused pass already
    layers = [m for m in policy.modules() if isinstance(m, Mish)]
    if not layers:
        return 0
    reason = compile_unavailable_reason(device)
    if reason is not None:
        console.print(f"[yellow]train.fused_activations: {reason}; Mish trains on ATen's kernel (same results, slower)")
        return 0
    for layer in layers:
        layer.fused = True
    return len(layers)


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16); without them bf16 autocast is
    emulated and many times slower than float32 (docs/benchmarks.md section 9: 70 s against 3.8 s a step)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def suggest_precision(device: torch.device, precision: str, policy: nn.Module) -> None:
    """A float32 U-Net run on a CPU with bf16 units: say once that ``train.precision=bf16`` exists. It stays a
    switch, not the default: it changes numerics, and on CPUs without those units it is much slower, which a bf16
    run there is told."""
    if device.type != "cpu":
        return
    if precision == "bf16" and not cpu_has_bf16_units():
        console.print("[yellow]train.precision=bf16: this CPU has no bf16 units (AMX/AVX512-BF16), so bf16 is "
                      "emulated: a PushT U-Net step took 70.8 s against 3.8 s in float32 on such a CPU "
                      "(docs/benchmarks.md section 9); precision=fp32 is the faster choice here")
    elif (precision == "fp32" and cpu_has_bf16_units()
            and any(isinstance(m, Conv1d) for m in policy.modules())):
        console.print("this CPU has bf16 units (AMX/AVX512-BF16): train.precision=bf16 trained the PushT U-Net "
                      "1.4x faster than float32 on an AMX Xeon, with the same success (docs/benchmarks.md section 9)")


def uncompile_network(policy: nn.Module) -> None:
    """Back to eager after a failed compile (``nn.Module.compile`` keeps the compiled callable here)."""
    policy.net._compiled_call_impl = None


def describe_error(e: BaseException) -> str:
    """One line naming a compile failure's root cause (dynamo wraps the backend's exception)."""
    cause = getattr(e, "inner_exception", None) or e.__cause__ or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:200] if text else ''}"


def make_adamw(params, lr: float, betas: tuple[float, float], weight_decay: float, device: torch.device,
               fused: bool) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has one for ``device`` (CPU and CUDA): the same update
    as the per-parameter loop, without ~10 small ops per parameter tensor."""
    fused = fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)

