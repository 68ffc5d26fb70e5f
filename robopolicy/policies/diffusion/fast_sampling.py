"""Faster sampling for Diffusion Policy in a control loop: warm start and streaming.

Both are options of :class:`~robopolicy.policies.diffusion.modeling.DiffusionPolicy`
(``sampling_mode``), not separate models, and both keep state between calls, which
:meth:`Policy.reset` clears at episode start.

- ``warm_start`` (Real-Time-Iteration style): consecutive chunks overlap, so the previous chunk,
  shifted by the Ta executed actions (tail padded by repeating its last action), is a good guess of
  the next one. It is noised to an intermediate timestep with the training schedule and denoised
  from there with the tail of the usual timestep sequence: ``warm_start_fraction`` of the
  ``num_inference_steps`` network evaluations. The first call of an episode samples normally.

- ``streaming`` (Streaming Diffusion Policy): a rolling buffer of T actions whose noise level
  rises along the horizon: the action for now is clean, the last one almost pure noise. Each call
  rolls the buffer by one (the action just executed moves into the past, fresh noise enters at the
  end) and lowers every level by one rung with ``streaming_steps`` network evaluations, after which
  the action for now is clean again. One action is executed per call. The network must know each
  position's noise level: train with ``per_position_noise: true`` (:class:`PerPositionUnet1D`,
  :func:`per_position_noise_loss`). The first call of an episode samples a clean chunk normally
  and noises it into the ramp.

Noise levels: "timestep" t in {-1, 0, ..., N-1} of the N-step training schedule, where t = -1 means
clean (alpha_bar = 1).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from robopolicy.policies.diffusion.configuration import SAMPLING_MODES
from robopolicy.policies.networks.unet1d import ConditionalUnet1D
from robopolicy.policies.noise import randn

if TYPE_CHECKING:
    from robopolicy.policies.diffusion.configuration import DiffusionConfig
    from robopolicy.policies.diffusion.modeling import DiffusionPolicy

# Share of per-position training examples that use one shared timestep (plain DDPM), so the
# standard sampler, warm start and the first streaming call stay in distribution.
SHARED_LEVEL_PROB = 0.5


def extended_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """alpha_bar indexed by t + 1, so that t = -1 (clean) reads 1."""
    return torch.cat([torch.ones(1, dtype=alphas_cumprod.dtype), alphas_cumprod.float()])


# ---------------------------------------------------------------------------------------------
# A network that takes one timestep per chunk position
# ---------------------------------------------------------------------------------------------
class PerPositionUnet1D(ConditionalUnet1D):
    """ConditionalUnet1D told each position's noise level through an extra input channel.

    The channel holds the position's noise standard deviation sqrt(1 - alpha_bar_t) (0 = clean);
    the FiLM step embedding gets the mean timestep of the chunk, which for a shared timestep is
    that timestep, so standard sampling works unchanged. ``timestep`` may be a scalar, (B,) or (B, T).
    """

    def __init__(self, action_dim: int, alphas_cumprod: Tensor, **unet_kwargs):
        super().__init__(action_dim=action_dim + 1, **unet_kwargs)
        self.action_dim = action_dim
        self.register_buffer("alpha_bar", extended_alphas_cumprod(alphas_cumprod), persistent=False)

    def forward(self, sample: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        b, horizon, _ = sample.shape
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            t = t[:, None].expand(b, horizon)
        noise_std = (1.0 - self.alpha_bar[t.long() + 1]).clamp_min(0.0).sqrt()
        x = torch.cat([sample, noise_std[..., None].to(sample.dtype)], dim=-1)
        shared_t = t.float().clamp_min(0.0).mean(dim=1)
        return super().forward(x, shared_t, global_cond)[..., : self.action_dim]


def streaming_ramp(horizon: int, n_obs_steps: int, phase: Tensor) -> Tensor:
    """Noise levels in [0, 1] of the streaming buffer: (B,) phases in [0, 1] -> (B, T).

    Position To-1 (now) is at ``phase / L``, each later position one rung of 1/L higher, where
    L = T - To + 1 is the number of positions from now on; the past (executed) positions are clean.
    """
    future = torch.arange(horizon, device=phase.device, dtype=torch.float32) - (n_obs_steps - 1)
    rungs = horizon - n_obs_steps + 1
    return ((future[None, :] + phase[:, None]) / rungs).clamp(0.0, 1.0)


def levels_to_timesteps(levels: Tensor, num_train_timesteps: int) -> Tensor:
    """Noise levels in [0, 1] -> timesteps in {-1, ..., N-1} (0 -> -1 clean, 1 -> N-1)."""
    return (levels * num_train_timesteps).round().long() - 1


def per_position_noise_loss(policy: DiffusionPolicy, actions: Tensor, cond: Tensor,
                            generator: torch.Generator | None = None) -> Tensor:
    """DDPM loss with one timestep per chunk position.

    Half the examples use a shared timestep (plain DDPM); the others the streaming ramp with a
    random phase, exactly the levels :class:`StreamingSampler` feeds the network. Clean positions
    (t = -1) carry no noise to predict and are left out of the loss.
    """
    config = policy.config
    b, horizon, _ = actions.shape
    n = config.num_train_timesteps
    shared = torch.randint(0, n, (b,), generator=generator).to(actions.device)
    phase = torch.rand(b, generator=generator).to(actions.device)
    use_ramp = (torch.rand(b, generator=generator) >= SHARED_LEVEL_PROB).to(actions.device)
    ramp = levels_to_timesteps(streaming_ramp(horizon, config.n_obs_steps, phase), n)
    t = torch.where(use_ramp[:, None], ramp, shared[:, None].expand(b, horizon))  # (B, T)
    noise = torch.randn(actions.shape, generator=generator).to(actions.device)
    alpha_bar = extended_alphas_cumprod(policy.train_scheduler.alphas_cumprod).to(actions.device)[t + 1][..., None]
    noisy = alpha_bar.sqrt() * actions + (1 - alpha_bar).sqrt() * noise
    pred = policy.net(noisy, t, cond)
    target = noise if config.prediction_type == "epsilon" else actions
    mask = (t >= 0)[..., None].to(pred.dtype)
    return (F.mse_loss(pred, target, reduction="none") * mask).sum() / (mask.sum() * actions.shape[-1]).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------
def denoise(policy: DiffusionPolicy, x: Tensor, cond: Tensor, timesteps: Tensor,
            generator: torch.Generator | None = None) -> Tensor:
    """Run the policy's sampling scheduler over ``timesteps`` (set_timesteps already called).

    The same loop as the standard sampler; a tail of the timestep sequence starts mid-way.
    """
    scheduler = policy.sampling_scheduler
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in timesteps:
        model_output = policy.net(x, t.expand(x.shape[0]), cond)
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
    return x


def sample_standard(policy: DiffusionPolicy, cond: Tensor, generator: torch.Generator | None = None,
                    noise: Tensor | None = None) -> Tensor:
    """A full chunk from pure noise, exactly as the standard sampler draws it."""
    shape = (cond.shape[0], policy.config.horizon, policy.config.action_dim)
    x = noise if noise is not None else randn(tuple(shape), generator, cond.device)
    policy.sampling_scheduler.set_timesteps(policy.config.num_inference_steps, device=cond.device)
    return denoise(policy, x, cond, policy.sampling_scheduler.timesteps, generator)


def shift_chunk(chunk: Tensor, steps: int) -> Tensor:
    """Drop the first ``steps`` actions (executed) and repeat the last one to keep the length."""
    if steps <= 0:
        return chunk
    steps = min(steps, chunk.shape[1])
    tail = chunk[:, -1:].expand(-1, steps, -1)
    return torch.cat([chunk[:, steps:], tail], dim=1)


def warm_start_num_steps(config: DiffusionConfig) -> int:
    return max(1, round(config.warm_start_fraction * config.num_inference_steps))


# ---------------------------------------------------------------------------------------------
# The samplers
# ---------------------------------------------------------------------------------------------
class WarmStartSampler:
    """Denoises the shifted previous chunk from an intermediate timestep (see module docstring)."""

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.previous: Tensor | None = None  # last chunk, normalized (B, T, A)

    def reset(self) -> None:
        self.previous = None

    def __call__(self, policy: DiffusionPolicy, cond: Tensor, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> Tensor:
        b = cond.shape[0]
        if self.previous is None or self.previous.shape[0] != b:
            chunk = sample_standard(policy, cond, generator, noise)
        else:
            scheduler = policy.sampling_scheduler
            scheduler.set_timesteps(self.config.num_inference_steps, device=cond.device)
            timesteps = scheduler.timesteps[-warm_start_num_steps(self.config):]
            guess = shift_chunk(self.previous, self.config.n_action_steps)
            eps = noise if noise is not None else randn(tuple(guess.shape), generator, cond.device)
            x = policy.train_scheduler.add_noise(guess, eps, timesteps[:1].expand(b))
            chunk = denoise(policy, x, cond, timesteps, generator)
        self.previous = chunk
        return chunk


class StreamingSampler:
    """Rolling buffer with a rising noise ramp; one buffer roll and ``streaming_steps`` evaluations per call."""

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.buffer: Tensor | None = None  # (B, T, A), normalized, at the ramp levels after a call
        n_to, horizon, k = config.n_obs_steps, config.horizon, config.streaming_steps
        self.rungs = horizon - n_to + 1  # positions from now on
        # Noise sub-levels, in units of 1 / (rungs * k): before sub-step i of a call, position
        # now + j sits at (j + 1) * k - i; after the call at j * k (now is clean). The past stays at 0.
        self._rung = (torch.arange(horizon) - (n_to - 1)) * k
        self.settled = self.sublevels(k)

    def reset(self) -> None:
        self.buffer = None

    def sublevels(self, substep: int) -> Tensor:
        """(T,) noise sub-levels before ``substep`` of a call (``streaming_steps`` = after the call)."""
        return (self._rung + self.config.streaming_steps - substep).clamp_min(0)

    def timesteps(self, sublevels: Tensor) -> Tensor:
        return levels_to_timesteps(sublevels.float() / (self.rungs * self.config.streaming_steps),
                                   self.config.num_train_timesteps)

    def __call__(self, policy: DiffusionPolicy, cond: Tensor, generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> Tensor:
        b, device = cond.shape[0], cond.device
        alpha_bar = extended_alphas_cumprod(policy.train_scheduler.alphas_cumprod).to(device)
        if self.buffer is None or self.buffer.shape[0] != b:
            # First call: a clean chunk, then noised into the ramp the later calls keep up.
            chunk = sample_standard(policy, cond, generator, noise)
            t = self.timesteps(self.settled).to(device)
            ab = alpha_bar[t + 1][None, :, None]
            eps = randn(tuple(chunk.shape), generator, device)
            self.buffer = ab.sqrt() * chunk + (1 - ab).sqrt() * eps
            return chunk
        # Roll: the action just executed joins the past, fresh noise enters at the far end.
        fresh = randn((b, 1, self.buffer.shape[-1]), generator, device)
        x = torch.cat([self.buffer[:, 1:], fresh], dim=1)
        k = self.config.streaming_steps
        x0 = x
        for i in range(k):
            t = self.timesteps(self.sublevels(i)).to(device)
            t_next = self.timesteps(self.sublevels(i + 1)).to(device)
            x, x0 = self._ddim_step(policy, x, cond, t, t_next, alpha_bar)
        self.buffer = x
        # Clean up to now; beyond, the network's current estimate of the clean actions.
        now = self.config.n_obs_steps - 1
        is_settled = (torch.arange(x.shape[1], device=device) <= now)[None, :, None]
        return torch.where(is_settled, x, x0)

    def _ddim_step(self, policy: DiffusionPolicy, x: Tensor, cond: Tensor, t: Tensor, t_next: Tensor,
                   alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic DDIM step with a timestep per position; clean positions (t = -1) stay."""
        config = self.config
        b = x.shape[0]
        out = policy.net(x, t[None].expand(b, -1), cond)
        ab, ab_next = alpha_bar[t + 1][None, :, None], alpha_bar[t_next + 1][None, :, None]
        noisy = (t >= 0)[None, :, None]
        sigma = (1 - ab).clamp_min(1e-12).sqrt()
        if config.prediction_type == "epsilon":
            x0 = (x - sigma * out) / ab.sqrt()
        else:
            x0 = out
        if config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        eps = (x - ab.sqrt() * x0) / sigma
        x_next = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return torch.where(noisy, x_next, x), torch.where(noisy, x0, x)


def make_fast_sampler(config: DiffusionConfig) -> WarmStartSampler | StreamingSampler | None:
    if config.sampling_mode == "warm_start":
        return WarmStartSampler(config)
    if config.sampling_mode == "streaming":
        return StreamingSampler(config)
    return None


__all__ = [
    "SAMPLING_MODES",
    "PerPositionUnet1D",
    "StreamingSampler",
    "WarmStartSampler",
    "make_fast_sampler",
    "per_position_noise_loss",
    "sample_standard",
    "shift_chunk",
    "streaming_ramp",
]
