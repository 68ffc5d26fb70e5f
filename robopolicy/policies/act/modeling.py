"""ACT: a CVAE transformer encoder-decoder that predicts a chunk of k actions (Zhao et al., RSS 2023).

Training: a CVAE encoder reads [CLS, observation token, k action tokens] and gives the mean and
log-variance of a latent z (the demonstrator's "style"). The decoder is a transformer encoder over
[z token, one token per observation feature and time step] and a transformer decoder whose k learned
queries cross-attend to it and become the k actions. Loss: L1 + kl_weight * KL(q(z) || N(0, I)).

With ``n_hypotheses = K > 1`` the head gives K candidate chunks and a score each, trained and chosen
between as in :mod:`robopolicy.policies.hypotheses`.

Inference: z = 0 (the prior's mean). Without temporal ensembling the base class executes Ta actions
per chunk; with it the policy is queried every step and :class:`TemporalEnsembler` averages every
live chunk's prediction for the current time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.base import Policy
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.hypotheses import best_hypothesis, winner_takes_all_loss
from robopolicy.policies.registry import register_policy
from robopolicy.runtime.ensemble import TemporalEnsembler


def _transformer_encoder(config: ACTConfig, n_layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.dim_model, config.n_heads, config.dim_feedforward, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(config.dim_model), enable_nested_tensor=False)


def _module_name(key: str) -> str:
    return key.replace(".", "__")


@register_policy("act")
class ACTPolicy(Policy):
    config_class = ACTConfig

    def __init__(self, config: ACTConfig, normalizer: Normalizer):
        super().__init__(config, normalizer)
        self.config: ACTConfig = config
        d, k, n_to = config.dim_model, config.horizon, config.n_obs_steps
        if not config.input_features:
            raise ValueError("ACT needs at least one observation feature (input_features is empty)")
        self.encoder = make_observation_encoder(config.input_features, n_to, config.image_encoder)
        # One token per observation feature and time step, each feature with its own projection.
        self.obs_proj = nn.ModuleDict({_module_name(key): nn.Linear(dim, d) for key, dim in self.encoder.token_dims.items()})
        n_obs_tokens = n_to * len(self.encoder.token_dims)

        # CVAE encoder over [CLS, low-dim observation, actions] (cameras stay out, as in ACT).
        self.vae_obs_dim = n_to * sum(self.encoder.token_dims[key] for key in self.encoder.lowdim_keys)
        if config.use_vae:
            self.vae_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.vae_obs_proj = nn.Linear(self.vae_obs_dim, d) if self.vae_obs_dim else None
            self.vae_action_proj = nn.Linear(config.action_dim, d)
            n_vae_tokens = 1 + (1 if self.vae_obs_dim else 0) + k
            self.vae_pos = nn.Parameter(torch.randn(1, n_vae_tokens, d) * 0.02)
            self.vae_encoder = _transformer_encoder(config, config.n_vae_encoder_layers)
            self.vae_to_latent = nn.Linear(d, 2 * config.latent_dim)

        # Decoder side: transformer encoder over [z, observation tokens], k queries cross-attending.
        self.latent_proj = nn.Linear(config.latent_dim, d)
        self.memory_pos = nn.Parameter(torch.randn(1, 1 + n_obs_tokens, d) * 0.02)
        self.transformer_encoder = _transformer_encoder(config, config.n_encoder_layers)
        self.queries = nn.Parameter(torch.randn(1, k, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, config.n_heads, config.dim_feedforward, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, config.n_decoder_layers, norm=nn.LayerNorm(d))
        k_hyp = config.n_hypotheses
        self.action_head = nn.Linear(d, k_hyp * config.action_dim)
        # K > 1: the scores read the encoder's output at the latent token, which has attended to every observation.
        self.score_head = nn.Linear(d, k_hyp) if k_hyp > 1 else None

        coeff = config.temporal_ensemble_coeff
        self.ensembler = TemporalEnsembler(coeff) if coeff is not None else None

    # ---- model --------------------------------------------------------------------------------
    def _latent_posterior(self, tokens: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
        """mu, log_var (B, latent_dim) of q(z | observation, action chunk)."""
        b = actions.shape[0]
        parts = [self.vae_cls.expand(b, -1, -1)]
        if self.vae_obs_proj is not None:
            lowdim = torch.cat([tokens[key] for key in self.encoder.lowdim_keys], dim=-1).flatten(1)
            parts.append(self.vae_obs_proj(lowdim)[:, None])
        parts.append(self.vae_action_proj(actions))
        h = self.vae_encoder(torch.cat(parts, dim=1) + self.vae_pos)
        mu, log_var = self.vae_to_latent(h[:, 0]).chunk(2, dim=-1)
        return mu, log_var

    def _decode(self, tokens: dict[str, Tensor], z: Tensor) -> tuple[Tensor | None, Tensor]:
        """(scores (B, K) or None when K = 1, normalized candidate chunks (B, K, k, A)) from observation tokens
        and a latent z (B, latent_dim)."""
        obs = [self.obs_proj[_module_name(key)](t) for key, t in tokens.items()]  # each (B, To, d)
        memory = torch.cat([self.latent_proj(z)[:, None], *obs], dim=1) + self.memory_pos
        memory = self.transformer_encoder(memory)
        h = self.transformer_decoder(self.queries.expand(z.shape[0], -1, -1), memory)
        c = self.config
        candidates = self.action_head(h).view(z.shape[0], c.horizon, c.n_hypotheses, c.action_dim).transpose(1, 2)
        scores = self.score_head(memory[:, 0]) if self.score_head is not None else None
        return scores, candidates

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        actions = batch[self.action_key]
        tokens = self.encoder.feature_tokens(batch, generator=generator)
        b, latent_dim = actions.shape[0], self.config.latent_dim
        if self.config.use_vae:
            mu, log_var = self._latent_posterior(tokens, actions)
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + (0.5 * log_var).exp() * eps
            kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).sum(-1).mean()
        else:
            z = actions.new_zeros(b, latent_dim)
            kl = actions.new_zeros(())
        scores, candidates = self._decode(tokens, z)
        if scores is None:
            reconstruction = F.l1_loss(candidates[:, 0], actions)
        else:
            c = self.config
            reconstruction = winner_takes_all_loss(scores, candidates, actions, "l1", c.wta_epsilon, c.score_weight)
        return reconstruction + self.config.kl_weight * kl

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        tokens = self.encoder.feature_tokens(obs)
        b = next(iter(tokens.values())).shape[0]
        z = torch.zeros(b, self.config.latent_dim, device=self.memory_pos.device)  # the prior's mean
        scores, candidates = self._decode(tokens, z)
        return candidates[:, 0] if scores is None else best_hypothesis(scores, candidates)

    # ---- execution ----------------------------------------------------------------------------
    def executable_actions(self, chunk: Tensor) -> Tensor:
        """Ta actions from a chunk; with temporal ensembling the one ensembled action for now.

        With ensembling this is stateful (one call per control step, as select_action makes);
        :meth:`reset` clears it.
        """
        if self.ensembler is None:
            return super().executable_actions(chunk)
        now = chunk[:, self.config.n_obs_steps - 1 :]  # the first action is aligned with the latest observation
        return self.ensembler.update(now)[:, None]

    def reset(self) -> None:
        super().reset()
        if self.ensembler is not None:
            self.ensembler.reset()
