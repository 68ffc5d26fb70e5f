"""MLP behaviour-cloning hyper-parameters.

Deliberately plain (Linear + ReLU/Tanh/ELU, no normalization layers by default) so a trained
low-dim policy can be written out as C for a microcontroller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig

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
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"MLP: hidden_dims must be positive, got {self.hidden_dims}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"MLP: loss must be one of {LOSSES}, got {self.loss!r}")
