"""The chunk network that flow matching and MIP share: f(x, t, cond) -> a (B, T, A) chunk.

One network, two families that use it differently: flow matching reads its output as a velocity and integrates it,
MIP (``robopolicy.policies.mip``) reads it as the action chunk itself. Keeping the backbone's fields and its
construction here means both families build the same U-Net, transformer or MLP from the same field names, so a
comparison between them changes the objective and the sampler, not the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.encoders import ImageEncoderConfig
from robopolicy.policies.networks.film_mlp import ConditionalChunkMLP
from robopolicy.policies.networks.transformer1d import ConditionalTransformer1D
from robopolicy.policies.networks.unet1d import ACTIVATIONS as UNET_ACTIVATIONS
from robopolicy.policies.networks.unet1d import ConditionalUnet1D

BACKBONES = ("unet", "transformer", "mlp")


@dataclass
class ChunkBackboneConfig(PolicyConfig):
    """Fields of the chunk network f(x, t, cond); families subclass and add their objective and sampler."""

    backbone: str = "unet"  # unet | transformer | mlp
    # U-Net backbone (same sizes as the diffusion family, for like-for-like comparisons).
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    # Residual blocks per U-Net level (down, middle, up); Diffusion Policy has 2. One halves the operators per
    # step, which is what sets batch-1 latency on a CPU.
    blocks_per_level: int = 2
    # U-Net activation: mish (Diffusion Policy) | silu (one fused operator in ONNX Runtime: faster batch-1 export).
    activation: str = "mish"
    step_embed_dim: int = 128
    # t in [0, 1] is multiplied by this before the sinusoidal embedding, so that the embedding
    # varies over the unit interval as much as it does over diffusion's 100 integer timesteps.
    timestep_scale: float = 100.0
    # Transformer backbone (one token per chunk timestep, adaLN conditioning).
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0
    # MLP backbone (the chunk flattened to one vector, FiLM residual blocks; time embedding of
    # step_embed_dim): for short chunks of low-dimensional actions, e.g. a quadrotor's motor commands.
    mlp_hidden_dim: int = 256
    mlp_layers: int = 3
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # cameras only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_encoder = ImageEncoderConfig.coerce(self.image_encoder)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.activation not in UNET_ACTIVATIONS:
            names = " or ".join(repr(name) for name in UNET_ACTIVATIONS)
            raise ValueError(f"activation must be {names}, got {self.activation!r}")
        if self.backbone == "unet" and self.horizon % (2 ** (len(self.down_dims) - 1)):
            raise ValueError(f"horizon {self.horizon} must be divisible by 2^(len(down_dims)-1) for the U-Net")
        if self.backbone == "transformer" and (self.n_embd % self.n_head or self.n_embd % 2):
            raise ValueError(f"n_embd ({self.n_embd}) must be even and divisible by n_head ({self.n_head})")
        if self.backbone == "mlp" and (self.mlp_hidden_dim < 1 or self.mlp_layers < 1):
            raise ValueError(f"mlp backbone needs mlp_hidden_dim >= 1 and mlp_layers >= 1, got "
                             f"{self.mlp_hidden_dim} and {self.mlp_layers}")


def make_chunk_backbone(config: ChunkBackboneConfig, global_cond_dim: int) -> nn.Module:
    """The configured network, called as ``net(x (B, T, A), t (B,) in [0, 1], cond (B, global_cond_dim))``."""
    if config.backbone == "unet":
        return ConditionalUnet1D(
            action_dim=config.action_dim,
            global_cond_dim=global_cond_dim,
            step_embed_dim=config.step_embed_dim,
            down_dims=tuple(config.down_dims),
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            timestep_scale=config.timestep_scale,
            blocks_per_level=config.blocks_per_level,
            activation=config.activation,
        )
    if config.backbone == "mlp":
        return ConditionalChunkMLP(
            action_dim=config.action_dim,
            horizon=config.horizon,
            global_cond_dim=global_cond_dim,
            hidden_dim=config.mlp_hidden_dim,
            n_layers=config.mlp_layers,
            time_embed_dim=config.step_embed_dim,
            timestep_scale=config.timestep_scale,
        )
    return ConditionalTransformer1D(
        action_dim=config.action_dim,
        horizon=config.horizon,
        global_cond_dim=global_cond_dim,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        dropout=config.dropout,
        timestep_scale=config.timestep_scale,
    )
