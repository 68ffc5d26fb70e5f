"""The one policy interface every family implements.

A policy sees observations in robot units (dataset feature names such as ``observation.state``),
normalizes them itself, and returns actions in robot units. Vocabulary follows Diffusion Policy:
``n_obs_steps`` = To (observation history), ``horizon`` = T (predicted actions per chunk),
``n_action_steps`` = Ta (actions executed from each chunk before predicting again).

Checkpoints are a directory with ``config.json`` (family name + hyper-parameters),
``model.safetensors`` (weights), ``normalization.json`` (dataset statistics) and ``checksums.json`` (each
file's size and sha256, written last); nothing is pickled. Loading checks the hashes first, then every field
against the family's config types and the weights' shapes, and fails naming the file and field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from robopolicy.data.checksums import file_digest
from robopolicy.data.normalize import Normalizer
from robopolicy.utils.state_dict import strip_compile_prefix

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "robopolicy-policy-checksums"

log = logging.getLogger(__name__)


class PolicyLoadError(ValueError):
    """A policy directory is altered, truncated or inconsistent; the message names the file and field."""


@dataclasses.dataclass
class FeatureSpec:
    """Shape of one observation or action feature, as the dataset names it."""

    key: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        if not (isinstance(d, dict) and isinstance(d.get("key"), str) and isinstance(d.get("shape"), list | tuple)
                and all(type(n) is int and n > 0 for n in d["shape"])):
            raise ValueError(f"a feature must be {{key: str, shape: [positive ints]}}, got {d!r}")
        return cls(key=d["key"], shape=tuple(d["shape"]))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (unknown annotations accept anything)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        args = get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if hint is tuple or origin is tuple:
        return isinstance(value, list | tuple)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict | hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclasses.dataclass
class PolicyConfig:
    """Fields shared by every policy family; families subclass and add their own."""

    type: str = ""
    n_obs_steps: int = 2  # To
    horizon: int = 16  # T
    n_action_steps: int = 8  # Ta
    input_features: list[FeatureSpec] = dataclasses.field(default_factory=list)
    output_features: list[FeatureSpec] = dataclasses.field(default_factory=list)
    # Per-feature normalization mode: "min_max" (to [-1, 1]) or "mean_std".
    normalization: dict[str, str] = dataclasses.field(default_factory=dict)
    # Control rate (Hz) of the demonstrations the policy learned from: one action per 1/fps s. Set from the
    # dataset at training time; servers and exports time-stamp chunks with it (None: older checkpoints).
    fps: float | None = None

    def __post_init__(self) -> None:
        self.input_features = [f if isinstance(f, FeatureSpec) else FeatureSpec.from_dict(f) for f in self.input_features]
        self.output_features = [
            f if isinstance(f, FeatureSpec) else FeatureSpec.from_dict(f) for f in self.output_features
        ]
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps (Ta={self.n_action_steps}) must be at most horizon - n_obs_steps + 1 "
                f"(T={self.horizon}, To={self.n_obs_steps}): the executed actions start at the latest observation"
            )

    @property
    def action_feature(self) -> FeatureSpec:
        if len(self.output_features) != 1:
            raise ValueError(f"expected exactly one action feature, got {[f.key for f in self.output_features]}")
        return self.output_features[0]

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.action_feature.shape))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_features"] = [f.to_dict() for f in self.input_features]
        d["output_features"] = [f.to_dict() for f in self.output_features]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config fields {sorted(unknown)}")
        hints = get_type_hints(cls)
        for name, value in d.items():
            if not _matches(value, hints.get(name, Any)):
                raise ValueError(f"field {name!r} must be {_type_name(hints[name])}, got {value!r:.100}")
        return cls(**d)


class Policy(nn.Module, ABC):
    """Base class: observation queue, action queue, normalization and (de)serialization.

    Families implement :meth:`compute_loss` (training) and :meth:`predict_chunk` (inference on a
    normalized observation history). Everything downstream (evaluation, export, the control loop)
    talks to this class only.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, normalizer: Normalizer):
        super().__init__()
        self.config = config
        self.normalizer = normalizer
        self._obs_queue: deque[dict[str, Tensor]] = deque(maxlen=config.n_obs_steps)
        self._action_queue: deque[Tensor] = deque()

    # ---- what each family provides -------------------------------------------------------
    @abstractmethod
    def compute_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Training loss on a normalized batch: observations (B, To, ...) and the action (B, T, A).

        All randomness (noise, timesteps) comes from ``generator`` so a resumed run repeats exactly.
        """

    @abstractmethod
    def generate_actions(self, obs: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Normalized action chunk (B, T, A) from a normalized observation history (B, To, ...)."""

    # ---- the shared inference surface -----------------------------------------------------
    @property
    def action_key(self) -> str:
        return self.config.action_feature.key

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    @property
    def needs_new_chunk(self) -> bool:
        """True when the next :meth:`select_action` call will run inference (the action queue is empty)."""
        return not self._action_queue

    def reset(self) -> None:
        """Forget the observation history and any queued actions (call at episode start)."""
        self._obs_queue.clear()
        self._action_queue.clear()

    @torch.no_grad()
    def predict_chunk(self, obs_history: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Action chunk (B, T, A) in robot units from an observation history (B, To, ...) in robot units."""
        normalized = {f.key: self.normalizer.normalize(f.key, obs_history[f.key]) for f in self.config.input_features}
        actions = self.generate_actions(normalized, generator=generator)
        return self.normalizer.unnormalize(self.action_key, actions)

    def executable_actions(self, chunk: Tensor) -> Tensor:
        """The Ta actions to execute from a chunk: the first is aligned with the latest observation."""
        start = self.config.n_obs_steps - 1
        return chunk[:, start : start + self.config.n_action_steps]

    def predict_executable(self, obs_history: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The Ta actions (B, Ta, A) in robot units that ``select_action`` executes from this history.

        Families whose sampler yields actions in order (SFP) override this to compute only those Ta.
        """
        return self.executable_actions(self.predict_chunk(obs_history, generator=generator))

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any], generator: torch.Generator | None = None) -> np.ndarray:
        """One action in robot units for the current observation (single env or batched).

        Keeps the last To observations (repeating the first at episode start) and an internal queue
        of Ta actions: a new chunk is predicted only when the queue runs dry.
        """
        obs = {f.key: _as_batched_tensor(observation[f.key], f.shape, self.device) for f in self.config.input_features}
        if not self._obs_queue:
            for _ in range(self.config.n_obs_steps):
                self._obs_queue.append(obs)
        else:
            self._obs_queue.append(obs)
        if not self._action_queue:
            history = {k: torch.stack([o[k] for o in self._obs_queue], dim=1) for k in obs}
            chunk = self.predict_executable(history, generator=generator)
            self._action_queue.extend(chunk.transpose(0, 1))  # Ta tensors of shape (B, A)
        action = self._action_queue.popleft()
        unbatched = np.asarray(observation[self.config.input_features[0].key]).ndim == len(
            self.config.input_features[0].shape
        )
        out = action.cpu().numpy()
        return out[0] if unbatched else out

    def deployable(self) -> Policy:
        """The policy as exporters should read it: the same actions from the plainest network that computes them
        (an ensemble's members folded into one MLP). Default: the policy itself."""
        return self

    # ---- serialization --------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write config.json, model.safetensors and normalization.json (atomically, file by file)."""
        from robopolicy.utils.io import atomic_write_bytes, atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"type": self.name, **{k: v for k, v in self.config.to_dict().items() if k != "type"}}
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))
        atomic_write_text(directory / NORMALIZATION_FILE, json.dumps(self.normalizer.to_dict(), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(state))
        files = {name: file_digest(directory / name) for name in (CONFIG_FILE, NORMALIZATION_FILE, WEIGHTS_FILE)}
        atomic_write_text(directory / CHECKSUMS_FILE, json.dumps({"format": CHECKSUMS_FORMAT, "algorithm": "sha256",
                                                                  "files": files}, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> Policy:
        """Load a directory written by :meth:`save`: hashes, config types, statistics and weight shapes are all
        checked here, so a broken directory fails now, naming the file and field, not at the first predict."""
        directory = Path(directory)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path}: missing policy weights (expected a safetensors file)")
        config = read_policy_config(directory)
        norm_path = directory / NORMALIZATION_FILE
        try:
            normalizer = Normalizer.from_dict(_read_json(norm_path))
            check_normalizer_shapes(normalizer, config)
        except (KeyError, ValueError, TypeError) as e:
            raise PolicyLoadError(f"{norm_path}: {e}") from e
        try:
            policy = cls(config, normalizer)
        except (KeyError, ValueError, TypeError) as e:
            raise PolicyLoadError(f"{directory / CONFIG_FILE}: the {cls.name} family refuses this config: {e}") from e
        try:
            state = strip_compile_prefix(load_file(str(weights_path), device=map_location))
        except Exception as e:  # safetensors raises its own SafetensorError (truncated or corrupt header / data)
            raise PolicyLoadError(f"{weights_path}: unreadable safetensors file, truncated or corrupt ({e})") from e
        try:
            missing, unexpected = policy.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches: the config's sizes differ from the weights'
            raise PolicyLoadError(f"{weights_path}: weights do not fit {directory / CONFIG_FILE} (a feature shape or "
                                  f"network size differs): {e}") from e
        missing = [k for k in missing if not k.startswith("normalizer.")]
        if missing or unexpected:
            raise PolicyLoadError(f"{weights_path}: weights do not match the config (missing {missing}, "
                                  f"unexpected {unexpected})")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise PolicyLoadError(f"{weights_path}: tensor {bad[0]!r} holds NaN or inf")
        # Last, so that a hand-edited field is reported as such; a change no check above can see (a flipped bit
        # in a weight, shifted statistics) fails here.
        verify_policy_files(directory)
        return policy.to(map_location).eval()


def verify_policy_files(directory: str | Path) -> None:
    """Each file ``checksums.json`` lists has its size and sha256; directories saved before checksums existed
    load with a warning (re-save them to add one)."""
    directory = Path(directory)
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        log.warning("%s: no %s (saved by an older robopolicy): weights and statistics cannot be checked for "
                    "corruption; load and save the policy again to add it", directory, CHECKSUMS_FILE)
        return
    doc = _read_json(path)
    files = doc.get("files")
    if doc.get("format") != CHECKSUMS_FORMAT or not isinstance(files, dict) or not files:
        raise PolicyLoadError(f"{path}: not a {CHECKSUMS_FORMAT} file (fields 'format' and 'files')")
    for name in (CONFIG_FILE, NORMALIZATION_FILE, WEIGHTS_FILE):
        if name not in files:
            raise PolicyLoadError(f"{path}: field 'files' does not cover {name}")
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            raise PolicyLoadError(f"{file}: missing file listed in {path}")
        actual = file_digest(file)
        if not isinstance(expected, dict) or actual != {"size": expected.get("size"), "sha256": expected.get("sha256")}:
            raise PolicyLoadError(f"{file}: size or sha256 differs from {path} (the file is corrupt or was altered "
                                  f"after it was saved: {actual['size']} bytes, expected {expected!r:.120})")


def check_normalizer_shapes(normalizer: Normalizer, config: PolicyConfig) -> None:
    """Every feature the policy reads or writes has a normalization mode and statistics of its shape."""
    for feature in [*config.input_features, *config.output_features]:
        if feature.key not in normalizer.modes:
            raise KeyError(f"field 'modes' has no entry for feature {feature.key!r}")
        for name, value in normalizer.statistics(feature.key).items():
            try:
                fits = np.broadcast_shapes(tuple(value.shape), feature.shape) == feature.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"field 'stats.{feature.key}.{name}' has shape {list(value.shape)}, but "
                                 f"{CONFIG_FILE} declares feature {feature.key!r} with shape {list(feature.shape)}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def read_policy_config(directory: str | Path) -> PolicyConfig:
    """The typed config stored with a checkpoint, for the family its ``type`` names."""
    from robopolicy.policies.registry import get_policy_class

    path = Path(directory) / CONFIG_FILE
    raw = _read_json(path)
    if "type" not in raw:
        raise ValueError(f"{path}: field 'type' (the policy family) is missing")
    try:
        policy_cls = get_policy_class(raw["type"])
    except (KeyError, TypeError) as e:
        raise PolicyLoadError(f"{path}: field 'type' names no policy family: {e}") from e
    try:
        return policy_cls.config_class.from_dict(raw)
    except (TypeError, ValueError, KeyError) as e:
        raise PolicyLoadError(f"{path}: {e}") from e


def _as_batched_tensor(value: Any, feature_shape: tuple[int, ...], device: torch.device) -> Tensor:
    # A copy (torch.tensor, not as_tensor): the observation queue keeps it, and callers may refill one buffer in place.
    t = torch.tensor(np.asarray(value), dtype=torch.float32, device=device)
    if t.ndim == len(feature_shape):
        t = t.unsqueeze(0)
    return t


__all__ = ["Policy", "PolicyConfig", "PolicyLoadError", "FeatureSpec", "read_policy_config", "verify_policy_files"]
