"""MLP behaviour-cloning hyper-parameters.

Deliberately plain (Linear + ReLU/Tanh/ELU, no normalization layers by default) so a trained
low-dim policy can be written out as C for a microcontroller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.hypotheses import check_hypotheses_config

ACTIVATIONS = ("relu", "tanh", "elu")
LOSSES = ("mse", "l1")


@dataclass
class MLPConfig(PolicyConfig):
    type: str = "mlp"
    # To, T, Ta as for Diffusion Policy; T = Ta = 1 (To = 1) predicts a single action per step.
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    layer_norm: bool = False  # LayerNorm after each hidden Linear; off keeps the net MCU-exportable
    # l1 regresses the per-coordinate median instead of the mean: with two unequal modes it stays in the larger one.
    loss: str = "mse"
    # > 0 trains the MLP as a CVAE decoder, as ACT does: a posterior q(z | observation, action chunk) lets the
    # demonstrations' mode choices go into z instead of being averaged. z = 0 at inference, so the deployed network
    # is the same plain Linear/activation stack (the latent enters as an extra term on the first layer, dropped).
    # On PushT it did not beat plain L1 regression (docs/benchmarks.md, section 1b).
    latent_dim: int = 0
    kl_weight: float = 10.0
    # > 1 predicts that many candidate chunks plus a score for each (robopolicy/policies/hypotheses.py): training
    # moves mostly the candidate nearest the demonstration and teaches the scores which one that was; inference
    # returns the best-scored candidate. Still one deterministic forward pass, so the demonstrations' modes (left
    # or right around an obstacle) are chosen between instead of averaged. On PushT it did not beat one chunk
    # (docs/benchmarks.md, section 1b).
    n_hypotheses: int = 1
    wta_epsilon: float = 0.05  # share of the regression loss every candidate gets (keeps unused ones alive)
    score_weight: float = 0.1  # weight of the scores' cross-entropy against the winning candidate
    # > 1 trains that many MLPs side by side from different initializations, each on its own loss; the policy acts
    # with their mean. The mean is itself one plain MLP, ``ensemble`` times as wide (block-diagonal inner layers),
    # so exports and the C code see an ordinary network. On the hover task three members crash half as often as
    # one network, whose crash rate swings 4x between training seeds (docs/benchmarks.md, section 5).
    ensemble: int = 1
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"MLP: hidden_dims must be positive, got {self.hidden_dims}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.latent_dim < 0 or self.kl_weight < 0:
            raise ValueError(f"MLP: latent_dim and kl_weight must be non-negative, got {self.latent_dim}, {self.kl_weight}")
        if self.latent_dim > 0 and not self.hidden_dims:
            raise ValueError("MLP: latent_dim > 0 needs at least one hidden layer (the latent enters the first one)")
        check_hypotheses_config("MLP", self.n_hypotheses, self.wta_epsilon, self.score_weight)
        if self.n_hypotheses > 1 and self.latent_dim > 0:
            raise ValueError("MLP: choose n_hypotheses > 1 or latent_dim > 0, not both")
        if self.loss not in LOSSES:
            raise ValueError(f"MLP: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.ensemble < 1:
            raise ValueError(f"MLP: ensemble must be at least 1, got {self.ensemble}")
        if self.ensemble > 1 and (self.latent_dim > 0 or self.n_hypotheses > 1 or self.layer_norm):
            raise ValueError("MLP: ensemble > 1 needs latent_dim = 0, n_hypotheses = 1 and layer_norm = false (the "
                             "members' mean must be one plain MLP)")
