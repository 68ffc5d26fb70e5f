"""``OnnxPolicy``: an exported policy behind the same interface as the torch ``Policy``, without torch.

    policy = OnnxPolicy.load("outputs/export/pusht_diffusion")
    policy.reset()
    action = policy.select_action({"observation.state": state})     # robot units in, robot units out

Graph kinds (see ``robopolicy.export``): ``per_step`` runs the observation encoder once and the
denoiser / velocity step ``f(x, t, cond)`` in a host loop (any step count, warm start, SFP
streaming); ``fused`` runs one graph with the initial noise as an input. Deterministic families
(ACT, MLP) have a single ``policy.onnx`` for both.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.runtime import solvers
from robopolicy.runtime.ensemble import TemporalEnsembler
from robopolicy.runtime.manifest import (
    CHUNK_FAMILIES,
    MANIFEST_FILE,
    ArtifactError,
    host_loop_only_sampling,
    read_manifest,
)
from robopolicy.runtime.normalize import NumpyNormalizer
from robopolicy.runtime.queues import batched_observation, push_observation, stacked_history
from robopolicy.runtime.tensorrt_engines import ENGINE_PROVIDERS

F32 = np.float32
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
HOST_DIFFUSION_SAMPLERS = ("DDIM", "DDPM")
OPENVINO = "openvino"  # not an ONNX Runtime provider: OpenVINO's own runtime on the same files (openvino_session.py)


def import_onnxruntime() -> Any:
    """ONNX Runtime, imported when an artifact is run on it (OpenVINO and TensorRT engines replace it)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError("ONNX artifacts run on ONNX Runtime by default: pip install 'robopolicy[runtime]' "
                           "(or choose providers=[openvino] / [tensorrt_engine])") from e
    return onnxruntime


def resolve_providers(providers: Sequence[str | tuple[str, dict]], trt_cache_dir: str | Path | None = None,
                      trt_fp16: bool = False) -> list[tuple[str, dict]]:
    """Execution providers with options; a clear error naming any provider this onnxruntime lacks.

    ``"openvino"`` (OpenVINO's runtime instead of ONNX Runtime) and ``"tensorrt_engine"`` /
    ``"tensorrt_engine_fp16"`` (TensorRT's own runtime on engines built from the graphs) must be the only entry.
    """
    if isinstance(providers, str):  # one provider named on its own, not a sequence of its letters
        providers = (providers,)
    out: list[tuple[str, dict]] = []
    for p in providers:
        name, options = (p, {}) if isinstance(p, str) else (p[0], dict(p[1]))
        if name.lower() in (OPENVINO, *ENGINE_PROVIDERS):  # another runtime instead of ONNX Runtime
            if len(providers) != 1:
                raise ValueError(f"providers: {name.lower()!r} replaces ONNX Runtime and cannot be mixed with others, "
                                 f"got {list(providers)}")
            if name.lower() == OPENVINO:
                from robopolicy.runtime.openvino_session import openvino_available

                if not openvino_available():
                    raise RuntimeError("provider 'openvino' needs the openvino package: "
                                       "pip install 'robopolicy[openvino]'")
            else:
                from robopolicy.runtime.tensorrt_engines import import_tensorrt

                import_tensorrt()  # a RuntimeError that says what is missing
            return [(name.lower(), options)]
        name = PROVIDER_ALIASES.get(name.lower(), name)
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        if name not in available:
            hint = {"CUDAExecutionProvider": "install onnxruntime-gpu and a matching CUDA/cuDNN",
                    "TensorrtExecutionProvider": "install onnxruntime-gpu built with TensorRT and the TensorRT libraries"
                    }.get(name, "install an onnxruntime build that has it")
            raise RuntimeError(f"execution provider {name!r} is not available in this onnxruntime "
                               f"{ort.__version__} (available: {available}); {hint}")
        if name == "CUDAExecutionProvider":  # TF32 (on by default since Ampere) costs ~1e-3: outside fp32 parity
            options.setdefault("use_tf32", 0)
        if name == "TensorrtExecutionProvider":
            options.setdefault("trt_fp16_enable", bool(trt_fp16))
            if trt_cache_dir is not None:
                Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
                options.setdefault("trt_engine_cache_enable", True)
                options.setdefault("trt_engine_cache_path", str(trt_cache_dir))
        out.append((name, options))
    if not out:
        raise ValueError("providers: give at least one execution provider (e.g. 'CPUExecutionProvider')")
    return out


def _check_graph_inputs(manifest: dict[str, Any], sessions: dict[str, Any], root: Path) -> None:
    """Each observation input a graph declares has the manifest's (batch, To, *shape), so a manifest that
    disagrees with its graphs fails at load, naming both, not inside numpy or ONNX Runtime mid-episode."""
    expected = {f["input"]: (f["key"], [manifest["n_obs_steps"], *f["shape"]]) for f in manifest["input_features"]}
    for role, session in sessions.items():
        if not hasattr(session, "get_inputs"):  # OpenVINO's session: its own checks at run time
            continue
        for arg in session.get_inputs():
            if arg.name not in expected:
                continue
            key, shape = expected[arg.name]
            declared = list(arg.shape[1:])
            if len(declared) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(declared, shape)):
                raise ArtifactError(f"{root / MANIFEST_FILE}: feature {key!r} is (batch, {', '.join(map(str, shape))}) "
                                    f"in the manifest but the {role} graph takes {list(arg.shape)}")


def _check_graph_signatures(manifest: dict[str, Any], sessions: dict[str, Any], graph: str, root: Path) -> None:
    """Each graph has the inputs its role takes and returns the shapes the manifest promises, so a swapped graph
    (its hash updated) or a manifest horizon the graphs do not produce fails at load, not at every request."""
    family, T, A = manifest["family"], manifest["horizon"], int(np.prod(manifest["action_feature"]["shape"]))
    obs = {f["input"] for f in manifest["input_features"]}
    state_dim = manifest.get("sampler", {}).get("state_dim")
    x_shape = [state_dim] if family == "sfp" else [T, A]
    chunk = [T, A]
    expected: dict[str, tuple[set[str], list[Any] | None]] = {
        "policy": (obs, chunk), "encoder": (obs, None), "step": ({"x", "t", "cond"}, x_shape),
        "fused": (obs | ({"start", "noise"} if family == "sfp" else {"noise"}), chunk)}
    where = f"{root / MANIFEST_FILE} ({graph} graph)"
    for role, session in sessions.items():
        if not hasattr(session, "get_inputs"):  # OpenVINO's session: checked by its own loader
            continue
        inputs, out_shape = expected[role]
        names = {arg.name for arg in session.get_inputs()}
        if names != inputs:
            raise ArtifactError(f"{where}: the {role} graph takes inputs {sorted(names)}, a {family} policy's {role} "
                                f"graph takes {sorted(inputs)} (a swapped or foreign graph?)")
        if out_shape is None or not hasattr(session, "get_outputs"):  # TensorRT engines declare inputs only
            continue
        declared = list(session.get_outputs()[0].shape[1:])
        if (len(declared) != len(out_shape) or any(
                isinstance(d, int) and isinstance(e, int) and d != e for d, e in zip(declared, out_shape))):
            raise ArtifactError(f"{where}: the {role} graph returns (batch, {', '.join(map(str, declared))}), the "
                                f"manifest's horizon {T} and action shape {manifest['action_feature']['shape']} "
                                f"need (batch, {', '.join(map(str, out_shape))})")


class OnnxPolicy:
    """An exported policy run by ONNX Runtime; construct with :meth:`load`."""

    def __init__(self, root: Path, manifest: dict[str, Any], sessions: dict[str, Any], graph: str):
        self.root = root
        self.manifest = manifest
        self.graph = graph
        self._sessions = sessions
        self.family: str = manifest["family"]
        self.n_obs_steps: int = int(manifest["n_obs_steps"])
        self.horizon: int = int(manifest["horizon"])
        self.n_action_steps: int = int(manifest["n_action_steps"])
        self.fps = manifest.get("fps")
        self.input_features = [(f["key"], tuple(f["shape"]), f["input"]) for f in manifest["input_features"]]
        self.action_key: str = manifest["action_feature"]["key"]
        self.action_shape = tuple(manifest["action_feature"]["shape"])
        self.action_dim = int(np.prod(self.action_shape))
        self.normalizer = NumpyNormalizer.from_manifest(manifest["normalization"])
        self.sampler: dict[str, Any] = dict(manifest.get("sampler", {}))
        self._rng = np.random.default_rng()
        self._obs_queue: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)
        self._action_queue: deque[np.ndarray] = deque()
        coeff = self.sampler.get("temporal_ensemble_coeff")
        self.ensembler = TemporalEnsembler(coeff) if self.family == "act" and coeff is not None else None
        self._previous: np.ndarray | None = None  # diffusion warm start: last normalized chunk
        self.last_action: np.ndarray | None = None  # sfp: last executed action, robot units (B, A)
        if self.family == "diffusion":
            self._tables = self.sampler.get("tables")

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, artifact_dir: str | Path, providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
             intra_op_threads: int = 1, graph: str = "auto", trt_cache_dir: str | Path | None = None,
             trt_fp16: bool = False, inter_op_threads: int = 1, verify: bool = True) -> OnnxPolicy:
        """Verify the artifact (manifest version, every file's sha256) and open its graphs.

        ``graph``: "per_step", "fused" or "auto" (per_step when exported, else fused).
        ``providers``: ONNX Runtime execution providers in priority order, names or (name, options);
        "cpu", "cuda" and "tensorrt" are accepted too. ``trt_cache_dir`` enables TensorRT's engine cache.
        ``("openvino",)`` (or ``(("openvino", {compile properties}),)``) runs the same graphs with OpenVINO's
        CPU runtime instead, ``intra_op_threads`` threads. ``("tensorrt_engine",)`` / ``("tensorrt_engine_fp16",)``
        run TensorRT engines built from the graphs (in ``trt_cache_dir``, default ``<artifact>/tensorrt``), building
        missing or stale ones first; option ``max_batch`` (default 8) sets their batch profile.
        """
        root = Path(artifact_dir)
        manifest = read_manifest(root, verify=verify)
        graphs = manifest.get("graphs", {})
        if graph == "auto":
            graph = "per_step" if "per_step" in graphs else "fused"
        if graph not in graphs:
            raise ArtifactError(f"{root}: graph kind {graph!r} was not exported (have {sorted(graphs)})")
        resolved = resolve_providers(providers, trt_cache_dir, trt_fp16)
        on_ort = resolved[0][0] not in (OPENVINO, *ENGINE_PROVIDERS)
        if on_ort:
            ort = import_onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(intra_op_threads)
            options.inter_op_num_threads = int(inter_op_threads)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = {}
        engines: dict[str, Path] = {}
        if resolved[0][0] in ENGINE_PROVIDERS:
            from robopolicy.runtime.tensorrt_engines import TensorRTSession, ensure_engines

            precision, engine_options = ENGINE_PROVIDERS[resolved[0][0]], resolved[0][1]
            engines, max_batch = ensure_engines(root, manifest, list(graphs[graph]["files"].values()), precision,
                                                trt_cache_dir, int(engine_options.get("max_batch", 8)))
        for role, file in graphs[graph]["files"].items():
            path = root / file
            if not path.is_file():
                raise ArtifactError(f"{path}: missing file")
            try:
                if engines:
                    sessions[role] = TensorRTSession(engines[file], precision, max_batch)
                elif resolved[0][0] == OPENVINO:
                    from robopolicy.runtime.openvino_session import OpenVinoSession

                    sessions[role] = OpenVinoSession(path, threads=intra_op_threads, config=resolved[0][1])
                else:
                    sessions[role] = ort.InferenceSession(str(path), options, providers=[p for p, _ in resolved],
                                                          provider_options=[o for _, o in resolved])
            except ArtifactError:
                raise
            except Exception as e:  # onnxruntime, openvino and tensorrt raise their own exception types
                engine = (f"ONNX Runtime {ort.__version__}" if on_ort else
                          {OPENVINO: "OpenVINO"}.get(resolved[0][0], "TensorRT"))
                raise ArtifactError(f"{file}: {engine} cannot load this graph (exported with opset "
                                    f"{manifest.get('opset')}; an unsupported opset or operator?): {e}") from e
        _check_graph_inputs(manifest, sessions, root)
        _check_graph_signatures(manifest, sessions, graph, root)
        host_only = host_loop_only_sampling(manifest["family"], manifest.get("sampler", {}))
        if graph == "fused" and host_only:
            warnings.warn(f"{root}: the fused graph ignores the policy's {host_only} and samples from pure noise "
                          "with its fixed steps; load graph='per_step' to run it", stacklevel=2)
        return cls(root, manifest, sessions, graph)

    @property
    def providers(self) -> list[str]:
        return next(iter(self._sessions.values())).get_providers()

    # ---- the Policy interface ---------------------------------------------------------------------
    @property
    def needs_new_chunk(self) -> bool:
        return not self._action_queue

    def seed(self, seed: int) -> None:
        """Seed the runtime's own noise (initial samples, DDPM steps), so a seeded evaluation repeats exactly."""
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self._obs_queue.clear()
        self._action_queue.clear()
        self._previous = None
        self.last_action = None
        if self.ensembler is not None:
            self.ensembler.reset()

    def set_n_action_steps(self, n_action_steps: int) -> None:
        """Execute ``n_action_steps`` actions per chunk: Ta is an inference-time choice, at most T - To + 1."""
        most = self.horizon - self.n_obs_steps + 1
        if not 1 <= int(n_action_steps) <= most:
            raise ValueError(f"n_action_steps={n_action_steps} does not fit the artifact at {self.root}: "
                             f"expected 1..{most} (horizon - n_obs_steps + 1)")
        self.n_action_steps = int(n_action_steps)

    def set_sampler(self, kind: str | None = None, num_inference_steps: int | None = None) -> None:
        """Host-loop sampler overrides (per_step graphs only), as the torch families' ``set_sampler``."""
        if self.graph == "fused" and self.family in ("diffusion", "flow", "sfp"):
            fused = self.manifest["graphs"]["fused"]
            unrolled = f"{fused.get('steps')} {fused.get('sampler')} steps" if "steps" in fused else "its sampler"
            raise ValueError(f"{self.root}: this OnnxPolicy runs the fused graph, which unrolls {unrolled}; load it "
                             "with graph='per_step' to change the sampler")
        if num_inference_steps is not None and (type(num_inference_steps) is bool
                                                 or not float(num_inference_steps).is_integer()
                                                 or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        s = self.sampler
        if self.family == "diffusion":
            kind = kind or s["kind"]
            steps = int(num_inference_steps or s["num_inference_steps"])
            if steps > s["num_train_timesteps"]:
                raise ValueError(f"num_inference_steps={steps} exceeds the {s['num_train_timesteps']} training "
                                 "timesteps of this diffusion policy")
            self._tables = solvers.diffusion_tables(kind, np.asarray(s["alphas_cumprod"]), s["num_train_timesteps"],
                                                    steps)
            s["kind"], s["num_inference_steps"] = kind, steps
        elif self.family in ("flow", "sfp"):
            if kind is not None:
                if kind not in solvers.STEPPERS:
                    raise ValueError(f"unknown integrator {kind!r}; choose one of {tuple(solvers.STEPPERS)}")
                s["integrator"] = kind
            if num_inference_steps is not None:
                s["num_inference_steps" if self.family == "flow" else "integration_steps_per_action"] = int(
                    num_inference_steps)
        else:
            raise ValueError(f"policy family {self.family!r} has no configurable sampler")

    def predict_chunk(self, obs_history: dict[str, Any], noise: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """Action chunk (B, T, A) in robot units from an observation history {key: (B, To, ...)} in robot units.

        ``noise``: the initial noise ((B, T, A); SFP: (B, A) or (B, 2A) for SFP-S), else drawn from ``rng``.
        """
        obs = self._normalized_history(obs_history)
        chunk = self._generate(obs, noise, rng)
        return self.normalizer.unnormalize(self.action_key, chunk)

    def executable_actions(self, chunk: np.ndarray) -> np.ndarray:
        start = self.n_obs_steps - 1
        if self.ensembler is not None:
            return self.ensembler.update(chunk[:, start:])[:, None]
        return chunk[:, start : start + self.n_action_steps]

    def select_action(self, observation: dict[str, Any], noise: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """One action in robot units for the current observation (single or batched), with To/Ta queues."""
        obs, unbatched = batched_observation(observation, self.input_features)
        push_observation(self._obs_queue, obs, self.n_obs_steps)
        if not self._action_queue:
            chunk = self.executable_actions(self.predict_chunk(stacked_history(self._obs_queue), noise=noise, rng=rng))
            self._action_queue.extend(np.swapaxes(chunk, 0, 1))
        action = self._action_queue.popleft()
        if self.family == "sfp":
            self.last_action = action.reshape(-1, self.action_dim).copy()
        return action[0] if unbatched else action

    def stream_actions(self, obs_history: dict[str, Any], noise: np.ndarray | None = None,
                       rng: np.random.Generator | None = None, n_actions: int | None = None) -> Iterator[np.ndarray]:
        """SFP: yield each action (B, A) in robot units as soon as the flow reaches it (becomes ``last_action``)."""
        if self.family != "sfp":
            raise ValueError(f"stream_actions is for the sfp family, this policy is {self.family!r}")
        obs = self._normalized_history(obs_history)
        for a in self._sfp_stream(obs, noise, rng, n_actions=n_actions):
            action = self.normalizer.unnormalize(self.action_key, a)
            self.last_action = action
            yield action

    # ---- checks -------------------------------------------------------------------------------------
    def _normalized_history(self, obs_history: dict[str, Any]) -> dict[str, np.ndarray]:
        out, batch = {}, None
        for key, shape, _ in self.input_features:
            if key not in obs_history:
                raise KeyError(f"observation history lacks feature {key!r}")
            x = np.asarray(obs_history[key], dtype=F32)
            if x.ndim != len(shape) + 2 or x.shape[1] != self.n_obs_steps or x.shape[2:] != shape:
                expected = f"(B, {self.n_obs_steps}, {', '.join(map(str, shape))})"
                raise ValueError(f"observation {key!r}: expected shape {expected}, got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"observation {key!r}: batch size {x.shape[0]} differs from the other features' {batch}")
            batch = x.shape[0]
            out[key] = self.normalizer.normalize(key, x)
        return out

    def _noise(self, noise: np.ndarray | None, shape: tuple[int, ...], rng: np.random.Generator | None,
               what: str = "noise") -> np.ndarray:
        if noise is None:
            return (rng or self._rng).standard_normal(shape, dtype=F32)
        noise = np.asarray(noise, dtype=F32)
        if noise.shape != shape:
            raise ValueError(f"{what} must have shape {shape}, got {noise.shape}")
        return noise

    def _obs_feed(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: obs[key] for key, _, name in self.input_features}

    def _run(self, role: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._sessions[role].run(None, feed)[0]

    # ---- families -----------------------------------------------------------------------------------
    def _generate(self, obs: dict[str, np.ndarray], noise, rng) -> np.ndarray:
        b = next(iter(obs.values())).shape[0]
        if self.family in CHUNK_FAMILIES:
            return self._run("policy", self._obs_feed(obs))
        if self.family == "sfp":
            start = self._sfp_start(obs)
            streamed = list(self._sfp_stream(obs, noise, rng, start=start))
            past = np.repeat(start[:, None], self.n_obs_steps - 1, axis=1)
            return np.concatenate([past, np.stack(streamed, axis=1)], axis=1).astype(F32)
        shape = (b, self.horizon, self.action_dim)
        if self.graph == "fused":
            x = self._noise(noise, shape, rng)
            return self._run("fused", {**self._obs_feed(obs), "noise": x})
        cond = self._run("encoder", self._obs_feed(obs))
        if self.family == "flow":
            return self._flow(cond, self._noise(noise, shape, rng))
        return self._diffusion(cond, noise, shape, rng)

    def _step(self, x: np.ndarray, t: float | np.ndarray, cond: np.ndarray) -> np.ndarray:
        tt = np.full((x.shape[0],), t, dtype=F32) if np.ndim(t) == 0 else np.asarray(t, F32)
        return self._run("step", {"x": x.astype(F32, copy=False), "t": tt, "cond": cond})

    def _diffusion(self, cond, noise, shape, rng) -> np.ndarray:
        s = self.sampler
        kind = s["kind"]
        if kind not in HOST_DIFFUSION_SAMPLERS or self._tables is None:
            raise NotImplementedError(
                f"the host loop implements {HOST_DIFFUSION_SAMPLERS}, not {kind!r}: call set_sampler('DDIM') on this "
                "OnnxPolicy, load it with graph='fused' (DDIM), or re-export with sampler='DDIM'")
        tab = self._tables
        clip = float(s["clip_sample_range"]) if s["clip_sample"] else None
        pred = s["prediction_type"]
        idx = list(range(len(tab["timesteps"])))
        warm = s.get("sampling_mode") == "warm_start" and self._previous is not None \
            and self._previous.shape[0] == shape[0]
        if warm:
            n = max(1, round(s["warm_start_fraction"] * len(idx)))
            idx = idx[-n:]
            guess = self._previous
            steps = self.n_action_steps
            if steps > 0:
                steps = min(steps, guess.shape[1])
                guess = np.concatenate([guess[:, steps:], np.repeat(guess[:, -1:], steps, axis=1)], axis=1)
            eps = self._noise(noise, shape, rng)
            a = F32(np.asarray(s["alphas_cumprod"], F32)[tab["timesteps"][idx[0]]])
            x = (a ** F32(0.5) * guess + (F32(1) - a) ** F32(0.5) * eps).astype(F32)
        else:
            x = self._noise(noise, shape, rng)
        for i in idx:
            t = tab["timesteps"][i]
            out = self._step(x, float(t), cond)
            if kind == "DDIM":
                x = solvers.ddim_step(out, x, tab["alpha_t"][i], tab["alpha_prev"][i], pred, clip)
            else:
                x = solvers.ddpm_step(out, x, t, tab["alpha_t"][i], tab["alpha_prev"][i], pred, clip, rng or self._rng)
        if s.get("sampling_mode") == "warm_start":
            self._previous = x
        return x

    def _flow(self, cond: np.ndarray, x0: np.ndarray) -> np.ndarray:
        s = self.sampler

        def v(x, t):
            return self._step(x, t, cond)

        if s.get("adaptive"):
            x = self._flow_adaptive(cond, x0)
        else:
            x = solvers.integrate(v, x0, s["integrator"], int(s["num_inference_steps"]))
        if s["clip_sample"]:
            x = np.clip(x, -s["clip_sample_range"], s["clip_sample_range"])
        return x.astype(F32, copy=False)

    def _flow_adaptive(self, cond: np.ndarray, x0: np.ndarray) -> np.ndarray:
        """AdaFlow-style, as FlowPolicy._sample_adaptive: straight chunks finish with one Euler step."""
        s = self.sampler
        n, tp = int(s["num_inference_steps"]), float(s["adaptive_probe_t"])
        h = 1.0 / n
        v0 = self._step(x0, 0.0, cond)
        xp = x0 + tp * v0
        vp = self._step(xp, tp, cond)
        change = ((vp - v0) ** 2).reshape(x0.shape[0], -1).mean(axis=1)
        x = xp + (1.0 - tp) * vp
        curved = np.nonzero(~(change < s["adaptive_threshold"]))[0]
        if len(curved):
            c = cond[curved]
            x[curved] = solvers.integrate(lambda y, t: self._step(y, t, c), x0[curved] + h * v0[curved],
                                          s["integrator"], n - 1, t0=h, t1=1.0)
        return x

    # ---- sfp ------------------------------------------------------------------------------------------
    def _sfp_start(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        b = next(iter(obs.values())).shape[0]
        if self.last_action is not None and self.last_action.shape[0] == b:
            return self.normalizer.normalize(self.action_key, self.last_action)
        key = self.sampler.get("start_from_observation_key")
        if key is not None:
            position = self.normalizer.unnormalize(key, obs[key][:, -1]).reshape(b, self.action_dim)
            return self.normalizer.normalize(self.action_key, position)
        return np.zeros((b, self.action_dim), F32)

    def _sfp_stream(self, obs, noise, rng, start: np.ndarray | None = None,
                    n_actions: int | None = None) -> Iterator[np.ndarray]:
        s = self.sampler
        K, A, S = int(s["n_knots"]), self.action_dim, int(s["state_dim"])
        n_actions = K - 1 if n_actions is None else n_actions
        if not 1 <= n_actions <= K - 1:
            raise ValueError(f"n_actions must be in [1, {K - 1}], got {n_actions}")
        b = next(iter(obs.values())).shape[0]
        a0 = self._sfp_start(obs) if start is None else np.asarray(start, F32).reshape(b, A)
        noise = self._noise(noise, (b, S), rng, what="noise ([eps] or [eps, z0] for SFP-S)")
        if self.graph == "fused":
            chunk = self._run("fused", {**self._obs_feed(obs), "start": a0, "noise": noise})
            for i in range(n_actions):
                yield chunk[:, self.n_obs_steps - 1 + i]
            return
        emb = self._run("encoder", self._obs_feed(obs))
        x = (a0 + F32(s["sigma0"]) * noise[:, :A]).astype(F32)
        if S > A:
            x = np.concatenate([x, noise[:, A:]], axis=-1)
        steps = int(s["integration_steps_per_action"])
        flow = solvers.trajectory(lambda y, t: self._step(y, t, emb), x, s["integrator"], n_actions * steps, 0.0,
                                  n_actions / (K - 1))
        for i, (_, x) in enumerate(flow):
            if (i + 1) % steps == 0:
                yield x[:, :A]


__all__ = ["OnnxPolicy", "resolve_providers"]
