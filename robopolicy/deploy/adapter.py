"""A small adapter so the server can serve any policy backend.

The server needs only: a :class:`~robopolicy.deploy.protocol.PolicySpec` (features, To/T/Ta, fps)
and ``predict(obs_history) -> (T, A)`` on numpy arrays in robot units. :func:`adapter_from_policy`
wraps anything with ``predict_chunk(obs_history (B, To, ...)) -> (B, T, A)`` and a ``config`` with
``n_obs_steps/horizon/n_action_steps/input_features/output_features`` (the torch
:class:`~robopolicy.policies.base.Policy` and the ONNX runtime's ``OnnxPolicy``).
:func:`load_policy_adapter` picks the backend from what a directory holds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.deploy.protocol import PolicySpec

DEFAULT_FPS = 10.0  # PushT's control rate; checkpoints do not record one


class PolicyAdapter:
    """``predict(obs_history: {key: (To, *shape)}) -> (T, A) float32`` plus the spec to announce."""

    def __init__(self, spec: PolicySpec, predict: Callable[[dict[str, np.ndarray]], np.ndarray],
                 reset: Callable[[], None] | None = None):
        self.spec = spec
        self._predict = predict
        self._reset = reset

    def predict(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        chunk = np.asarray(self._predict(obs_history), dtype=np.float32)
        if chunk.ndim == 3 and chunk.shape[0] == 1:
            chunk = chunk[0]
        want = (self.spec.horizon, self.spec.action_dim)
        if chunk.shape != want:
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}, expected {want}")
        return chunk

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()


def _feature_list(features: Any) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for f in features:
        if isinstance(f, dict):
            out.append((f["key"], tuple(f["shape"])))
        else:
            out.append((f.key, tuple(f.shape)))
    return out


def spec_from_config(config: Any, fps: float = DEFAULT_FPS, name: str = "") -> PolicySpec:
    """A spec from a policy config (torch ``PolicyConfig`` or any object / dict with the same fields)."""
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    outputs = _feature_list(get("output_features"))
    if len(outputs) != 1:
        raise ValueError(f"expected exactly one action feature, got {[k for k, _ in outputs]}")
    action_key, action_shape = outputs[0]
    return PolicySpec(input_features=dict(_feature_list(get("input_features"))), action_key=action_key,
                      action_dim=int(np.prod(action_shape)), n_obs_steps=int(get("n_obs_steps")),
                      horizon=int(get("horizon")), n_action_steps=int(get("n_action_steps")), fps=float(fps), name=name)


def adapter_from_policy(policy: Any, fps: float = DEFAULT_FPS) -> PolicyAdapter:
    """Wrap a torch ``Policy`` or any object with ``predict_chunk`` + ``config`` (e.g. ``OnnxPolicy``)."""
    name = str(getattr(policy, "name", None) or getattr(policy, "family", None) or type(policy).__name__)
    if hasattr(policy, "config"):
        spec = spec_from_config(policy.config, fps=fps, name=name)
    else:  # OnnxPolicy: the same fields as attributes, input_features as (key, shape, graph input) tuples
        spec = PolicySpec(input_features={f[0]: tuple(f[1]) for f in policy.input_features},
                          action_key=policy.action_key, action_dim=int(policy.action_dim),
                          n_obs_steps=int(policy.n_obs_steps), horizon=int(policy.horizon),
                          n_action_steps=int(policy.n_action_steps), fps=float(getattr(policy, "fps", None) or fps),
                          name=name)
    torch = sys.modules.get("torch")  # a torch policy means torch is already imported; deploy never imports it
    if torch is not None and isinstance(policy, torch.nn.Module):

        def predict(obs: dict[str, np.ndarray]) -> np.ndarray:
            batch = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)).unsqueeze(0) for k, v in obs.items()}
            with torch.inference_mode():
                return policy.predict_chunk(batch)[0].detach().cpu().numpy()
    else:

        def predict(obs: dict[str, np.ndarray]) -> np.ndarray:
            batch = {k: np.asarray(v, dtype=np.float32)[None] for k, v in obs.items()}
            return np.asarray(policy.predict_chunk(batch))[0]

    return PolicyAdapter(spec, predict, getattr(policy, "reset", None))


def check_prediction(adapter: PolicyAdapter, where: str | Path) -> None:
    """One prediction on a zero observation history: the chunk must have the announced shape and be finite.

    Everything a server needs is then known to work before it announces itself, instead of every request failing
    (a manifest horizon the graphs do not produce, statistics that turn actions into NaN, ...).
    """
    spec = adapter.spec
    history = {key: np.zeros((spec.n_obs_steps, *shape), np.float32) for key, shape in spec.input_features.items()}
    try:
        chunk = adapter.predict(history)
    except Exception as e:  # noqa: BLE001 - any backend's failure, reported with where it came from
        raise ValueError(f"{where}: the load-time check prediction failed: {e}") from e
    finally:
        adapter.reset()
    if not np.isfinite(chunk).all():
        raise ValueError(f"{where}: the load-time check prediction returned values that are not finite "
                         f"(NaN or inf in the action chunk); check the policy's statistics and weights")


def load_policy_adapter(directory: str | Path, fps: float | None = None, providers: Sequence[str] = ("cpu",),
                        threads: int = 1, graph: str = "auto",
                        load_checkpoint: Callable[[Path], Any] | None = None, check: bool = True) -> PolicyAdapter:
    """Serve a torch checkpoint dir (``config.json``), an ONNX artifact dir (``manifest.json``) or a C export
    (``export.json`` + ``policy.c``, compiled for this host by ``CPolicy``).

    ``fps`` (the action rate) defaults to the one the checkpoint or artifact records (its training data's),
    else ``DEFAULT_FPS``. ``providers``, ``threads`` and ``graph`` (auto, per_step or fused) choose the engine
    and graph kind of an ONNX artifact (see ``OnnxPolicy.load``); the fused graph is the faster one for the
    sampler it was exported with, the per-step graph also serves warm starts and SFP's streaming.

    ``load_checkpoint`` loads a torch checkpoint directory (``robopolicy.policies.load_policy``): ``deploy``
    sits below the torch policies and never imports them, so whoever serves a checkpoint passes the loader.
    ``check``: run :func:`check_prediction` before returning, so a broken policy fails here, at load.
    """
    adapter = _load_adapter(Path(directory), fps, providers, threads, graph, load_checkpoint)
    if check:
        check_prediction(adapter, directory)
    return adapter


def _load_adapter(directory: Path, fps: float | None, providers: Sequence[str], threads: int,
                  graph: str, load_checkpoint: Callable[[Path], Any] | None) -> PolicyAdapter:
    if (directory / "manifest.json").is_file():
        from robopolicy.runtime.onnx_policy import OnnxPolicy

        policy = OnnxPolicy.load(directory, providers=tuple(providers), intra_op_threads=threads, graph=graph)
        return adapter_from_policy(policy, fps=float(fps or policy.fps or DEFAULT_FPS))
    if graph != "auto":
        raise ValueError(f"{directory}: graph={graph!r} applies to ONNX artifacts (manifest.json) only")
    if (directory / "export.json").is_file() and (directory / "policy.c").is_file():
        from robopolicy.runtime.c_policy import CPolicy

        policy = CPolicy.load(directory)
        return adapter_from_policy(policy, fps=float(fps or policy.fps or DEFAULT_FPS))
    if (directory / "config.json").is_file():
        if load_checkpoint is None:
            raise ValueError(f"{directory}: a torch checkpoint; serve it where the training stack is installed "
                             "(robopolicy[train]), or export it first (robopolicy export format=onnx|c)")
        policy = load_checkpoint(directory)
        return adapter_from_policy(policy, fps=float(fps or policy.config.fps or DEFAULT_FPS))
    raise FileNotFoundError(f"{directory}: neither manifest.json (ONNX artifact), export.json (C export) nor "
                            "config.json (torch checkpoint)")


__all__ = ["DEFAULT_FPS", "PolicyAdapter", "adapter_from_policy", "check_prediction", "load_policy_adapter",
           "spec_from_config"]
