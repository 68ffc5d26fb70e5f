"""Sample-and-select: K chunks drawn in one batch, a learned density-ratio critic picks one.

In the spirit of V-GPS (re-rank a generalist policy's samples with a learned critic) and TACO (keep the sample that
is most in-support): the critic here is a classifier trained to tell the demonstrations' chunks from the policy's own
samples for the same observations (``robopolicy.train.critic``). At its optimum its logit is
log p_demo(chunk | obs) - log p_policy(chunk | obs), so among K of the policy's samples the highest logit is the one
the policy draws too often least relative to the demonstrations: a K-sample approximation of sampling the
demonstrations' distribution instead of the policy's (discriminator rejection sampling). It needs no reward.

The critic sees normalized observations and chunks, so it is tied to the policy's normalization statistics; both are
saved with it and checked when it is paired with a policy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import FeatureSpec, Policy, PolicyLoadError
from robopolicy.policies.encoders import make_observation_encoder
from robopolicy.policies.registry import load_policy

CRITIC_CONFIG_FILE = "critic.json"
CRITIC_WEIGHTS_FILE = "critic.safetensors"
CRITIC_NORMALIZATION_FILE = "normalization.json"


@dataclasses.dataclass
class CriticConfig:
    n_obs_steps: int
    horizon: int
    input_features: list[FeatureSpec]
    action_feature: FeatureSpec
    hidden_dim: int = 256
    n_layers: int = 3

    def __post_init__(self) -> None:
        self.input_features = [f if isinstance(f, FeatureSpec) else FeatureSpec.from_dict(f) for f in self.input_features]
        if not isinstance(self.action_feature, FeatureSpec):
            self.action_feature = FeatureSpec.from_dict(self.action_feature)
        if self.hidden_dim < 1 or self.n_layers < 1:
            raise ValueError(f"the critic needs hidden_dim >= 1 and n_layers >= 1, got {self.hidden_dim}, {self.n_layers}")

    @classmethod
    def for_policy(cls, policy: Policy, **kw: Any) -> CriticConfig:
        c = policy.config
        return cls(c.n_obs_steps, c.horizon, list(c.input_features), c.action_feature, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_features"] = [f.to_dict() for f in self.input_features]
        d["action_feature"] = self.action_feature.to_dict()
        return d


class ChunkCritic(nn.Module):
    """logit(obs history, chunk): high for chunks like the demonstrations', low for the policy's own excess."""

    def __init__(self, config: CriticConfig, normalizer: Normalizer):
        super().__init__()
        self.config, self.normalizer = config, normalizer
        self.encoder = make_observation_encoder(config.input_features, config.n_obs_steps)
        chunk_dim = config.horizon * int(torch.tensor(config.action_feature.shape).prod())
        layers: list[nn.Module] = []
        width = self.encoder.output_dim + chunk_dim
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.Mish()]
            width = config.hidden_dim
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, obs: dict[str, Tensor], chunk: Tensor) -> Tensor:
        """Logits (B,) for normalized observations (B, To, ...) and normalized chunks (B, T, A)."""
        return self.mlp(torch.cat([self.encoder(obs), chunk.flatten(1)], dim=-1)).squeeze(-1)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CRITIC_CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        (directory / CRITIC_NORMALIZATION_FILE).write_text(json.dumps(self.normalizer.to_dict(), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
        save_file(state, str(directory / CRITIC_WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> ChunkCritic:
        directory = Path(directory)
        for name in (CRITIC_CONFIG_FILE, CRITIC_NORMALIZATION_FILE, CRITIC_WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name}: missing (a critic directory holds {CRITIC_CONFIG_FILE}, "
                                        f"{CRITIC_NORMALIZATION_FILE} and {CRITIC_WEIGHTS_FILE})")
        try:
            config = CriticConfig(**json.loads((directory / CRITIC_CONFIG_FILE).read_text()))
        except (TypeError, ValueError, KeyError) as e:
            raise PolicyLoadError(f"{directory / CRITIC_CONFIG_FILE}: not a critic config ({e})") from e
        try:
            normalizer = Normalizer.from_dict(json.loads((directory / CRITIC_NORMALIZATION_FILE).read_text()))
        except (TypeError, ValueError, KeyError) as e:
            raise PolicyLoadError(f"{directory / CRITIC_NORMALIZATION_FILE}: not normalization statistics ({e})") from e
        critic = cls(config, normalizer)
        try:
            state = load_file(str(directory / CRITIC_WEIGHTS_FILE))
            missing, unexpected = critic.load_state_dict(state, strict=False)
        except Exception as e:  # a truncated file or a shape that does not fit the config
            raise PolicyLoadError(f"{directory / CRITIC_WEIGHTS_FILE}: unreadable or does not fit "
                                  f"{CRITIC_CONFIG_FILE} ({e})") from e
        missing = [k for k in missing if not k.startswith("normalizer.")]
        if missing or unexpected:
            raise PolicyLoadError(f"{directory / CRITIC_WEIGHTS_FILE}: weights do not match the config "
                                  f"(missing {missing}, unexpected {unexpected})")
        return critic.eval()


class SelectingPolicy(Policy):
    """The base policy's chunks, K per observation in one batch; the critic's highest-logit chunk is returned."""

    name = "select"

    def __init__(self, base: Policy, critic: ChunkCritic, k: int):
        if k < 1:
            raise ValueError(f"k (chunks drawn per observation) must be >= 1, got {k}")
        c, cc = base.config, critic.config
        mismatch = [name for name, ours, theirs in (
            ("n_obs_steps", c.n_obs_steps, cc.n_obs_steps), ("horizon", c.horizon, cc.horizon),
            ("input_features", list(c.input_features), cc.input_features),
            ("action feature", c.action_feature, cc.action_feature)) if ours != theirs]
        if mismatch:
            raise ValueError(f"the critic was trained for another policy: its {', '.join(mismatch)} differ")
        if critic.normalizer.to_dict() != base.normalizer.to_dict():
            raise ValueError("the critic was trained on other normalization statistics than the policy's: it would "
                             "score chunks in other units")
        super().__init__(c, base.normalizer)
        self.base, self.critic, self.k = base.eval(), critic.eval(), k
        self.last_logits: Tensor | None = None  # (B, K) of the last call, for inspection

    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("sample-and-select is not trained as a policy: train the policy, then its critic "
                        "(robopolicy.train.critic)")

    def save(self, directory) -> None:
        raise TypeError("sample-and-select is a policy, a critic and K: save each and pair them again")

    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        b = next(iter(obs.values())).shape[0]
        repeated = {key: value.repeat_interleave(self.k, dim=0) for key, value in obs.items()}
        chunks = self.base.generate_actions(repeated, generator=generator)  # (B K, T, A)
        logits = self.critic(repeated, chunks).view(b, self.k)
        self.last_logits = logits
        best = logits.argmax(dim=1)
        return chunks.view(b, self.k, *chunks.shape[1:])[torch.arange(b, device=chunks.device), best]


def select(policy_dir: str, critic_dir: str, k: int, n_action_steps: int | None = None,
           sampler: tuple[str | None, int | None] = (None, None)) -> SelectingPolicy:
    """Load a policy (optionally with another Ta or sampler) and its critic, paired (what evaluation workers call)."""
    policy = load_policy(policy_dir)
    if n_action_steps is not None:
        policy.config.n_action_steps = n_action_steps
        policy.config.__post_init__()
    if sampler != (None, None):
        policy.set_sampler(*sampler)
    return SelectingPolicy(policy, ChunkCritic.load(critic_dir), k)


__all__ = ["ChunkCritic", "CriticConfig", "SelectingPolicy", "select"]
