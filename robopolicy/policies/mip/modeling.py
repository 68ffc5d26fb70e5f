"""MIP: the minimal iterative policy of "Much Ado About Noising" (Pan et al., 2025), in two supervised steps.

That paper traces generative policies' edge over plain regression to two ingredients, noise injected in training
and a supervised iterative computation, rather than to modelling the action distribution. MIP keeps just those:
one network f(I, t | obs) on flow's chunk backbone, trained on two regressions to the demonstrated chunk a,

    step 1:  f(0, 0)                          -> a      (a regression from the empty chunk)
    step 2:  f(t* a + (1 - t*) z, t*), z ~ N  -> a      (a correction from a noised demonstration)

and run deterministically in two network evaluations: a0 = f(0, 0), then a = f(t* a0, t*). The second step sees
the first step's chunk where it was trained on a noised demonstration, so it learns to pull nearby chunks onto the
demonstrations. There is no sampler and no noise at inference: a chunk is a function of the observation (the same
chunk for the same observation), cheaper than flow's 10 steps and exportable as one graph.

The objective is written from the method's published description (the paper itself could not be read from this
machine); ``t_star`` defaults to the 0.9 it is described with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import Policy
from robopolicy.policies.chunk_backbone import make_chunk_backbone
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.mip.configuration import MipConfig
from robopolicy.policies.noise import randn
from robopolicy.policies.registry import register_policy


@register_policy("mip")
class MipPolicy(Policy):
    config_class = MipConfig

    def __init__(self, config: MipConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: MipConfig = config
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps, config.image_encoder)
        self.net = make_chunk_backbone(config, self.encoder.output_dim)  # its output is read as the chunk itself

    def _at(self, x: Tensor, t: float, cond: Tensor) -> Tensor:
        return self.net(x, torch.full((x.shape[0],), t, device=x.device), cond)

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        a = batch[self.action_key]
        cond = self.encoder(batch, generator=generator)
        t_star = self.config.t_star
        z = randn(tuple(a.shape), generator, a.device)
        first = F.mse_loss(self._at(torch.zeros_like(a), 0.0, cond), a)
        second = F.mse_loss(self._at(t_star * a + (1 - t_star) * z, t_star, cond), a)
        return first + second

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Two network evaluations, no noise: ``generator`` is accepted for the interface and unused."""
        c = self.config
        cond = self.encoder(obs)
        empty = torch.zeros(cond.shape[0], c.horizon, c.action_dim, device=cond.device)
        a0 = self._at(empty, 0.0, cond)
        a = self._at(c.t_star * a0, c.t_star, cond)
        if c.clip_sample:
            a = a.clamp(-c.clip_sample_range, c.clip_sample_range)
        return a
