"""Diffusion Policy: DDPM-trained ConditionalUnet1D over action chunks, sampled with diffusers schedulers."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import Policy
from robopolicy.policies.diffusion.configuration import DiffusionConfig
from robopolicy.policies.diffusion.fast_sampling import (
    PerPositionUnet1D,
    make_fast_sampler,
    per_position_noise_loss,
)
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.networks.unet1d import ConditionalUnet1D
from robopolicy.policies.noise import randn
from robopolicy.policies.registry import register_policy


def make_noise_scheduler(config: DiffusionConfig, kind: str) -> SchedulerMixin:
    """A diffusers scheduler sharing the training noise schedule."""
    common = {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction_type,
    }
    if kind == "DDPM":
        return DDPMScheduler(**common, clip_sample=config.clip_sample, clip_sample_range=config.clip_sample_range)
    if kind == "DDIM":
        return DDIMScheduler(**common, clip_sample=config.clip_sample, clip_sample_range=config.clip_sample_range,
                             set_alpha_to_one=True, steps_offset=0)
    # Multistep solvers have no clip_sample; thresholding with max value 1 clamps their x0 estimates
    # to the normalized action range the same way.
    clamp = {"thresholding": config.clip_sample, "sample_max_value": config.clip_sample_range}
    if kind == "DPMSolver++":
        return DPMSolverMultistepScheduler(**common, **clamp, algorithm_type="dpmsolver++", solver_order=2)
    if kind == "UniPC":
        return UniPCMultistepScheduler(**common, **clamp, solver_order=2)
    raise ValueError(f"unknown noise scheduler {kind!r}")


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: DiffusionConfig = config
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps, config.image_encoder)
        self.train_scheduler = make_noise_scheduler(config, "DDPM")
        unet_kwargs = dict(
            global_cond_dim=self.encoder.output_dim,
            step_embed_dim=config.step_embed_dim,
            down_dims=tuple(config.down_dims),
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            blocks_per_level=config.blocks_per_level,
            activation=config.activation,
        )
        if config.per_position_noise:  # one timestep per chunk position (fast_sampling.py)
            self.net = PerPositionUnet1D(config.action_dim, self.train_scheduler.alphas_cumprod, **unet_kwargs)
        else:
            self.net = ConditionalUnet1D(action_dim=config.action_dim, **unet_kwargs)
        self.sampling_scheduler = make_noise_scheduler(config, config.noise_scheduler_type)
        self.fast_sampler = make_fast_sampler(config)  # None for sampling_mode "standard"

    def set_sampler(self, kind: str | None = None, num_inference_steps: int | None = None) -> None:
        """Switch the sampling scheduler or step count of a trained policy."""
        if kind is not None:
            self.config.noise_scheduler_type = kind
            self.sampling_scheduler = make_noise_scheduler(self.config, kind)
        if num_inference_steps is not None:
            self.config.num_inference_steps = num_inference_steps
        self.config.__post_init__()

    # ---- fast sampling (fast_sampling.py) ----
    def set_sampling_mode(self, mode: str, **options) -> None:
        """Switch a trained policy between standard, warm_start and streaming sampling.

        ``options``: warm_start_fraction, streaming_steps. Streaming needs a per_position_noise model.
        """
        for name, value in {"sampling_mode": mode, **options}.items():
            if name not in ("sampling_mode", "warm_start_fraction", "streaming_steps"):
                raise ValueError(f"set_sampling_mode: unknown option {name!r}")
            setattr(self.config, name, value)
        self.config.__post_init__()
        self.fast_sampler = make_fast_sampler(self.config)

    def reset(self) -> None:
        super().reset()
        if self.fast_sampler is not None:
            self.fast_sampler.reset()

    def executable_actions(self, chunk: Tensor) -> Tensor:
        if self.config.sampling_mode == "streaming":  # only the action for now is clean
            return chunk[:, self.config.n_obs_steps - 1 : self.config.n_obs_steps]
        return super().executable_actions(chunk)
    # ---- end of fast sampling ----

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        actions = batch[self.action_key]
        cond = self.encoder(batch, generator=generator)
        if self.config.per_position_noise:  # streaming training (fast_sampling.py)
            return per_position_noise_loss(self, actions, cond, generator)
        noise = randn(tuple(actions.shape), generator, actions.device)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), generator=generator).to(actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self.net(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        return F.mse_loss(pred, target)

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None,
                         noise: Tensor | None = None) -> Tensor:
        cond = self.encoder(obs)
        if self.fast_sampler is not None:  # warm_start / streaming (fast_sampling.py)
            return self.fast_sampler(self, cond, generator=generator, noise=noise)
        shape = (cond.shape[0], self.config.horizon, self.config.action_dim)
        x = noise if noise is not None else randn(tuple(shape), generator, cond.device)
        scheduler = self.sampling_scheduler
        scheduler.set_timesteps(self.config.num_inference_steps, device=cond.device)
        # Only stochastic schedulers (DDPM, DDIM with eta > 0) draw noise in step().
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for t in scheduler.timesteps:
            model_output = self.net(x, t.expand(shape[0]), cond)
            x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        return x
