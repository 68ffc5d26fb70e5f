"""ACT hyper-parameters (Zhao et al., RSS 2023), sized by default for a CPU budget.

The paper's model has d_model 512, 4 encoder / 7 decoder layers and ResNet-18 backbones (80 M
parameters); on two CPU cores a 256-wide model with a few layers is what trains in an hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.hypotheses import check_hypotheses_config


@dataclass
class ACTConfig(PolicyConfig):
    type: str = "act"
    n_obs_steps: int = 1  # ACT conditions on the current observation only
    # The chunk size k *is* the horizon T: set either (or both, equal). Default 16.
    horizon: int | None = None  # type: ignore[assignment]
    chunk_size: int | None = None
    # Ta, used when temporal ensembling is off. 12 of 16: on PushT the d = 64 ACT scored 50 % (coverage 0.89) with
    # Ta 12 against 24 % (0.84) with Ta 8, and Ta 1-4 were worse still (docs/benchmarks.md, section 1b).
    n_action_steps: int = 12
    # Transformer.
    dim_model: int = 256
    n_heads: int = 8
    dim_feedforward: int = 1024
    n_encoder_layers: int = 2
    n_decoder_layers: int = 1
    dropout: float = 0.1
    # CVAE: the latent z captures the demonstrator's "style"; z = 0 at inference.
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 2
    kl_weight: float = 10.0
    # Temporal ensembling: query every step and average all chunks' predictions for now with weights
    # exp(-m * i), i = 0 for the oldest chunk. null = off (execute Ta actions per chunk instead).
    temporal_ensemble_coeff: float | None = None
    # > 1: K candidate chunks and a score each (robopolicy/policies/hypotheses.py); the best-scored one runs. With
    # z = 0 at inference the CVAE cannot choose a mode, so this is the deterministic way to; use_vae=false with it
    # keeps the posterior from carrying the mode in training that inference then lacks. On PushT it did not beat the
    # CVAE (docs/benchmarks.md, section 1b).
    n_hypotheses: int = 1
    wta_epsilon: float = 0.05
    score_weight: float = 0.1
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)

    def __post_init__(self) -> None:
        if self.horizon is not None and self.chunk_size is not None and self.horizon != self.chunk_size:
            raise ValueError(f"ACT: chunk_size ({self.chunk_size}) is the horizon ({self.horizon}); set one of them")
        size = self.chunk_size if self.chunk_size is not None else self.horizon
        self.horizon = self.chunk_size = 16 if size is None else int(size)
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        if self.dim_model % self.n_heads:
            raise ValueError(f"ACT: dim_model ({self.dim_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("dim_model", "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ACT: {name} must be positive, got {getattr(self, name)}")
        if self.use_vae and self.n_vae_encoder_layers < 1:
            raise ValueError(f"ACT: n_vae_encoder_layers must be positive with use_vae, got {self.n_vae_encoder_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ACT: dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0:
            raise ValueError(f"ACT: kl_weight must be non-negative, got {self.kl_weight}")
        check_hypotheses_config("ACT", self.n_hypotheses, self.wta_epsilon, self.score_weight)
        if self.temporal_ensemble_coeff is not None and not math.isfinite(self.temporal_ensemble_coeff):
            raise ValueError(f"ACT: temporal_ensemble_coeff must be a number or null, got {self.temporal_ensemble_coeff}")
