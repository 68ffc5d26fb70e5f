"""Policy -> ONNX artifact directory (``manifest.json`` + graphs), for the torch-free runtime.

Graph kinds:

- ``per_step``: ``encoder.onnx`` (normalized observation history (B, To, ...) -> condition) and
  ``step.onnx`` ``f(x, t, cond)`` -> model output (noise / velocity); the solver runs on the host
  (``robopolicy.runtime.solvers``), so any step count, warm start and SFP streaming work.
  ACT and MLP export one ``policy.onnx`` (observations -> chunk), which serves both kinds.
- ``fused``: ``fused.onnx``, a fixed number of solver steps unrolled into one graph with the
  initial noise as an input (diffusion: deterministic DDIM; flow: the configured integrator;
  SFP: the whole stream, inputs observations, start action and noise).

All graphs take and return *normalized* values; (un)normalization runs on the host from the
manifest's statistics. Timesteps are float inputs, only the batch axis is dynamic, and no graph
draws random numbers. Exported with opset 18 (native GroupNorm-era ops).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robopolicy.policies.base import Policy
from robopolicy.runtime.manifest import (
    CHUNK_FAMILIES,
    FAMILIES,
    FORMAT_NAME,
    FORMAT_VERSION,
    host_loop_only_sampling,
    sha256_file,
    write_manifest,
)
from robopolicy.runtime.solvers import diffusion_tables

GRAPH_KINDS = ("per_step", "fused")
EXPORT_BATCH = 2  # example batch size used for tracing (not 1, so no size-1 broadcast gets baked in)


def input_name(key: str) -> str:
    return key.replace(".", "__")


# ---------------------------------------------------------------------------------------------
# Export-friendly twins (same weights, same numbers, faster graphs)
# ---------------------------------------------------------------------------------------------
class Conv1dAs2d(nn.Module):
    """A Conv1d computed as a (1, k) Conv2d on (B, C, 1, T).

    ONNX Runtime's CPU kernels for 2-D convolutions (the NCHWc path) run short-sequence convolutions
    faster than its 1-D ones (docs/benchmarks.md, section 2); the weights are the Conv1d's own,
    unsqueezed, so checkpoints are untouched. The U-Net has its own 4-D twin (``unet_graph``); this
    wraps any other Conv1d.
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        padding = c.padding if isinstance(c.padding, str) else (0, c.padding[0])
        y = F.conv2d(x.unsqueeze(2), c.weight.unsqueeze(2), c.bias, (1, c.stride[0]), padding, (1, c.dilation[0]),
                     c.groups)
        return y.squeeze(2)


def export_friendly(policy: Policy) -> Policy:
    """A copy of ``policy`` whose networks trace to short ONNX graphs; the policy itself is left alone.

    A ``ConditionalUnet1D`` becomes its 4-D :class:`~robopolicy.export.unet_graph.ExportUnet` twin
    (for the policy's horizon); any other Conv1d is wrapped in :class:`Conv1dAs2d`.
    """
    from robopolicy.export.unet_graph import ExportUnet
    from robopolicy.policies.networks.unet1d import ConditionalUnet1D

    def children(module: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
        return [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
                if type(child) is kind]

    def convs(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
        return [(parent, name, conv) for parent, name, conv in children(module, nn.Conv1d)
                if conv.padding_mode == "zeros" and not isinstance(parent, Conv1dAs2d)]

    if not children(policy, ConditionalUnet1D) and not convs(policy):
        return policy
    policy = copy.deepcopy(policy)
    for parent, name, net in children(policy, ConditionalUnet1D):
        setattr(parent, name, ExportUnet(net, policy.config.horizon).eval())
    for parent, name, conv in convs(policy):
        setattr(parent, name, Conv1dAs2d(conv))
    return policy


# ---------------------------------------------------------------------------------------------
# Export wrappers (normalized tensors in, normalized tensors out)
# ---------------------------------------------------------------------------------------------
class _ObsModule(nn.Module):
    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy
        self.keys = [f.key for f in policy.config.input_features]

    def obs(self, tensors: Sequence[Tensor]) -> dict[str, Tensor]:
        return dict(zip(self.keys, tensors))


class EncoderGraph(_ObsModule):
    """obs... -> cond (diffusion, flow) or the SFP observation embedding."""

    def forward(self, *obs: Tensor) -> Tensor:
        cond = self.policy.encoder(self.obs(obs))
        if self.policy.name == "sfp":
            cond = self.policy.net.embed_obs(cond)
        return cond


class StepGraph(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net(x, t, cond)


class ChunkGraph(_ObsModule):
    """obs... -> normalized chunk (ACT, MLP, MIP: deterministic)."""

    def forward(self, *obs: Tensor) -> Tensor:
        return self.policy.generate_actions(self.obs(obs))


def _const_t(x: Tensor, t: float) -> Tensor:
    """A (B,) float time for the batch of x, without random numbers or a fixed batch size."""
    return torch.ones_like(x.reshape(x.shape[0], -1)[:, 0]) * t


class _UnrolledModule(_ObsModule):
    """A fused graph's base: the net at times known when the graph is traced.

    For the U-Net's export twin, each time's share of the FiLM (step embedding, its layers and bias)
    is computed here, once, and stored as a constant; the condition's share is one product per chunk;
    the chunk stays in the twin's 4-D layout between steps (the samplers' updates are elementwise).
    That is about 15 fewer operators per step and one pass over the FiLM weights per chunk instead of
    one per step. Any other net is called as it is.
    """

    def __init__(self, policy: Policy, times: Sequence[float]):
        from robopolicy.export.unet_graph import ExportUnet

        super().__init__(policy)
        self.unet = isinstance(policy.net, ExportUnet)
        self.time_index = {float(t): i for i, t in enumerate(dict.fromkeys(float(t) for t in times))}
        if self.unet:
            for t, i in self.time_index.items():
                self.register_buffer(f"time_film_{i}", policy.net.time_film(t))

    def bind(self, cond: Tensor) -> Callable[[Tensor, float], Tensor]:
        """The net as ``f(x, t)`` for one chunk's condition; x in the layout of :meth:`enter`."""
        net = self.policy.net
        if not self.unet:
            return lambda x, t: net(x, _const_t(x, t), cond)
        obs_film = net.observation_film(cond)
        return lambda x, t: net.forward_4d(x, obs_film + getattr(self, f"time_film_{self.time_index[float(t)]}"))

    def enter(self, x: Tensor) -> Tensor:
        return self.policy.net.to_4d(x) if self.unet else x

    def leave(self, x: Tensor) -> Tensor:
        return self.policy.net.from_4d(x) if self.unet else x


class DiffusionFused(_UnrolledModule):
    """obs..., noise -> chunk: DDIM (eta = 0) unrolled over the given tables, exactly as diffusers steps."""

    def __init__(self, policy: Policy, tables: dict[str, list]):
        super().__init__(policy, tables["timesteps"])
        self.tables = tables

    def forward(self, *inputs: Tensor) -> Tensor:
        *obs, x = inputs
        c = self.policy.config
        net = self.bind(self.policy.encoder(self.obs(obs)))
        clip = c.clip_sample_range if c.clip_sample else None
        x = self.enter(x)
        for t, a_t, a_prev in zip(self.tables["timesteps"], self.tables["alpha_t"], self.tables["alpha_prev"]):
            out = net(x, float(t))
            a_t, a_prev = torch.tensor(a_t, dtype=torch.float32), torch.tensor(a_prev, dtype=torch.float32)
            beta = 1 - a_t
            if c.prediction_type == "epsilon":
                x0, eps = (x - beta**0.5 * out) / a_t**0.5, out
                if clip is not None:
                    x0 = x0.clamp(-clip, clip)
            else:  # the noise from the unclipped prediction, as diffusers and runtime/solvers.py
                eps = (x - a_t**0.5 * out) / beta**0.5
                x0 = out.clamp(-clip, clip) if clip is not None else out
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return self.leave(x)


class FlowFused(_UnrolledModule):
    """obs..., noise -> chunk: the configured fixed-step integrator unrolled, then the clip."""

    def __init__(self, policy: Policy, steps: int):
        from robopolicy.policies.flow.integrators import integrate

        times: list[float] = []  # the times the integrator visits, recorded by a dry run
        integrate(lambda x, t: times.append(t) or x, torch.zeros(1), policy.config.integrator, steps)
        super().__init__(policy, times)
        self.steps = steps

    def forward(self, *inputs: Tensor) -> Tensor:
        from robopolicy.policies.flow.integrators import integrate

        *obs, x = inputs
        c = self.policy.config
        net = self.bind(self.policy.encoder(self.obs(obs)))
        x = self.leave(integrate(net, self.enter(x), c.integrator, self.steps))
        if c.clip_sample:
            x = x.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x


class SFPFused(_ObsModule):
    """obs..., start (B, A), noise (B, S) -> (B, T, A): the whole stream, aligned like generate_actions."""

    def forward(self, *inputs: Tensor) -> Tensor:
        from robopolicy.policies.flow.integrators import trajectory

        *obs, start, noise = inputs
        p, c = self.policy, self.policy.config
        A, K, steps = c.action_dim, c.n_knots, c.integration_steps_per_action
        emb = p.net.embed_obs(p.encoder(self.obs(obs)))
        x = start + c.sigma0 * noise[:, :A]
        if p.stochastic:
            x = torch.cat([x, noise[:, A:]], dim=-1)
        streamed = []
        flow = trajectory(lambda y, t: p.net(y, _const_t(y, t), emb), x, c.integrator, (K - 1) * steps, 0.0, 1.0)
        for i, (_, x) in enumerate(flow):
            if (i + 1) % steps == 0:
                streamed.append(x[:, :A])
        past = start.unsqueeze(1).expand(-1, c.n_obs_steps - 1, -1)
        return torch.cat([past, torch.stack(streamed, dim=1)], dim=1)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def _example_obs(policy: Policy, batch: int, gen: torch.Generator) -> list[Tensor]:
    c = policy.config
    out = []
    for f in c.input_features:
        shape = (batch, c.n_obs_steps, *f.shape)
        if len(f.shape) == 3:  # camera frames, 0..255
            out.append(torch.rand(shape, generator=gen) * 255)
        else:
            out.append(torch.randn(shape, generator=gen))
    return out


def _export(module: nn.Module, args: tuple[Tensor, ...], names: list[str], output: str, path: Path, opset: int,
            exporter: str) -> None:
    module.eval()
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes: tuple = tuple({0: batch} for _ in args)
        if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
            shapes = (shapes,)  # torch.export matches ``forward(*inputs)`` as one argument holding a tuple
        kwargs: dict[str, Any] = {"dynamo": True, "dynamic_shapes": shapes, "external_data": False}
    elif exporter == "legacy":
        kwargs = {"dynamo": False, "dynamic_axes": {n: {0: "batch"} for n in [*names, output]}}
    else:
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    # nn.Transformer*'s inference fast path (a fused aten op) has no ONNX symbolic: trace the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _onnx_export(module, args, path, names, output, opset, kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _onnx_export(module, args, path, names, output, opset, kwargs) -> None:
    torch.onnx.export(module, args, str(path), input_names=names, output_names=[output], opset_version=opset,
                      do_constant_folding=True, **kwargs)


def _sampler_section(policy: Policy) -> dict[str, Any]:
    c = policy.config
    name = policy.name
    if name == "diffusion":
        if c.sampling_mode == "streaming":
            raise NotImplementedError("export: diffusion sampling_mode 'streaming' (per-position timesteps) is not "
                                      "exportable yet; set_sampling_mode('standard' or 'warm_start') first")
        ac = policy.train_scheduler.alphas_cumprod.float().numpy()
        out = {"kind": c.noise_scheduler_type, "num_inference_steps": c.num_inference_steps,
               "num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.beta_schedule,
               "prediction_type": c.prediction_type, "clip_sample": c.clip_sample,
               "clip_sample_range": c.clip_sample_range, "alphas_cumprod": ac.tolist(),
               "sampling_mode": c.sampling_mode, "warm_start_fraction": c.warm_start_fraction, "tables": None}
        if c.noise_scheduler_type in ("DDIM", "DDPM"):
            out["tables"] = _scheduler_tables(policy, c.noise_scheduler_type, c.num_inference_steps)
        return out
    if name == "flow":
        return {"integrator": c.integrator, "num_inference_steps": c.num_inference_steps, "clip_sample": c.clip_sample,
                "clip_sample_range": c.clip_sample_range, "adaptive": c.adaptive,
                "adaptive_threshold": c.adaptive_threshold, "adaptive_probe_t": c.adaptive_probe_t,
                "time_convention": "t=0 noise, t=1 data"}
    if name == "sfp":
        return {"variant": c.variant, "integrator": c.integrator, "integration_steps_per_action":
                c.integration_steps_per_action, "n_knots": c.n_knots, "k": c.k, "sigma0": c.sigma0,
                "sigma1": c.sigma1, "sigma_r": c.sigma_r, "state_dim": policy.state_dim,
                "start_from_observation_key": c.start_from_observation_key}
    if name == "act":
        return {"temporal_ensemble_coeff": c.temporal_ensemble_coeff}
    return {}


def _scheduler_tables(policy: Policy, kind: str, steps: int) -> dict[str, list]:
    """Host tables from the torch scheduler itself (checked against the runtime's own computation)."""
    from robopolicy.policies.diffusion.modeling import make_noise_scheduler

    sched = make_noise_scheduler(policy.config, kind)
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    ac = sched.alphas_cumprod.float()
    if kind == "DDIM":
        prev = [t - sched.config.num_train_timesteps // steps for t in ts]
        final = float(sched.final_alpha_cumprod)
    else:
        prev = [*ts[1:], -1]
        final = 1.0
    tables = {"timesteps": ts, "prev_timesteps": prev, "alpha_t": [float(ac[t]) for t in ts],
              "alpha_prev": [float(ac[p]) if p >= 0 else final for p in prev]}
    mine = diffusion_tables(kind, ac.numpy(), policy.config.num_train_timesteps, steps)
    if mine != tables:
        raise RuntimeError(f"export: the runtime's {kind} tables differ from diffusers' ({mine} vs {tables})")
    return tables


def export_policy(policy: Policy, out_dir: str | Path, graph_kinds: Sequence[str] = GRAPH_KINDS, opset: int = 18,
                  fused_steps: int | None = None, exporter: str = "legacy", fps: float | None = None,
                  sampler: str | None = None) -> Path:
    """Write ``manifest.json`` and the ONNX graphs of ``policy`` into ``out_dir``; returns ``out_dir``.

    ``fused_steps``: solver steps unrolled into ``fused.onnx`` (default: the policy's
    num_inference_steps). ``sampler``: diffusion host-loop scheduler recorded in the manifest
    (default: the policy's; the runtime's host loop implements DDIM and DDPM). ``exporter``:
    "legacy" (TorchScript-based, fast for unrolled graphs) or "dynamo" (torch.export).
    """
    if opset < 18:
        raise ValueError(f"opset must be >= 18 (GroupNorm / Mish era ops), got {opset}")
    unknown = set(graph_kinds) - set(GRAPH_KINDS)
    if unknown or not graph_kinds:
        raise ValueError(f"graph_kinds must be a non-empty subset of {GRAPH_KINDS}, got {list(graph_kinds)}")
    name = policy.name
    if name not in FAMILIES:
        raise ValueError(f"export: unknown policy family {name!r}")
    if fps is not None and policy.config.fps is not None and float(fps) != float(policy.config.fps):
        raise ValueError(f"export: fps={fps} contradicts the policy's fps={policy.config.fps} (its training data's "
                         "rate): a server would stamp its chunks at the wrong rate")
    # A CPU copy in eval mode: the caller's policy keeps its device and training mode.
    policy = export_friendly(copy.deepcopy(policy.deployable()).to("cpu").eval())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = policy.config
    gen = torch.Generator().manual_seed(0)
    obs = _example_obs(policy, EXPORT_BATCH, gen)
    obs_names = [input_name(f.key) for f in c.input_features]
    sampler_section = _sampler_section(policy)
    if "fused" in graph_kinds and (host_only := host_loop_only_sampling(name, sampler_section)):
        warnings.warn(f"{name}: the fused graph ignores {host_only} and samples from pure noise with the fixed steps; "
                      "the per_step graph runs it", stacklevel=2)
    if name == "diffusion" and sampler is not None and sampler != c.noise_scheduler_type:
        sampler_section["kind"] = sampler
        sampler_section["tables"] = _scheduler_tables(policy, sampler, c.num_inference_steps)
    graphs: dict[str, Any] = {}

    if name in CHUNK_FAMILIES:
        _export(ChunkGraph(policy), tuple(obs), obs_names, "chunk", out / "policy.onnx", opset, exporter)
        for kind in graph_kinds:
            graphs[kind] = {"files": {"policy": "policy.onnx"}}
    else:
        with torch.no_grad():
            cond = EncoderGraph(policy)(*obs)
        if "per_step" in graph_kinds:
            _export(EncoderGraph(policy), tuple(obs), obs_names, "cond", out / "encoder.onnx", opset, exporter)
            if name == "sfp":
                x = torch.randn(EXPORT_BATCH, policy.state_dim, generator=gen)
            else:
                x = torch.randn(EXPORT_BATCH, c.horizon, c.action_dim, generator=gen)
            t = torch.rand(EXPORT_BATCH, generator=gen)
            _export(StepGraph(policy.net), (x, t, cond), ["x", "t", "cond"], "out", out / "step.onnx", opset, exporter)
            graphs["per_step"] = {"files": {"encoder": "encoder.onnx", "step": "step.onnx"}}
        if "fused" in graph_kinds:
            noise_shape = (EXPORT_BATCH, c.horizon, c.action_dim)
            if name == "diffusion":
                steps = fused_steps or c.num_inference_steps
                tables = _scheduler_tables(policy, "DDIM", steps)
                module, extra, names = DiffusionFused(policy, tables), [torch.randn(noise_shape)], ["noise"]
                info = {"sampler": "DDIM", "steps": steps, "tables": tables}
            elif name == "flow":
                steps = fused_steps or c.num_inference_steps
                module, extra, names = FlowFused(policy, steps), [torch.randn(noise_shape)], ["noise"]
                info = {"sampler": c.integrator, "steps": steps}
            else:
                if fused_steps is not None and fused_steps != c.integration_steps_per_action:
                    raise ValueError("sfp: the fused graph uses integration_steps_per_action; set it on the policy")
                module = SFPFused(policy)
                extra = [torch.randn(EXPORT_BATCH, c.action_dim), torch.randn(EXPORT_BATCH, policy.state_dim)]
                names = ["start", "noise"]
                info = {"sampler": c.integrator, "steps_per_action": c.integration_steps_per_action,
                        "steps": c.integration_steps_per_action * (c.n_knots - 1)}
            _export(module, (*obs, *extra), [*obs_names, *names], "chunk", out / "fused.onnx", opset, exporter)
            graphs["fused"] = {"files": {"fused": "fused.onnx"}, **info}

    files = sorted({f for g in graphs.values() for f in g["files"].values()})
    config = {k: v for k, v in c.to_dict().items()}
    config["fps"] = fps or c.fps  # a checkpoint that predates recorded rates gets the one given here
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": name,
        "n_obs_steps": c.n_obs_steps,
        "horizon": c.horizon,
        "n_action_steps": c.n_action_steps,
        "fps": fps or c.fps,  # the training data's rate unless overridden
        "input_features": [{"key": f.key, "shape": list(f.shape), "input": input_name(f.key), "dtype": "float32",
                            "kind": "camera" if len(f.shape) == 3 else "vector"} for f in c.input_features],
        "action_feature": {"key": c.action_feature.key, "shape": list(c.action_feature.shape)},
        "normalization": policy.normalizer.to_dict(),
        "sampler": sampler_section,
        "graphs": graphs,
        "opset": opset,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "policy_config": json.loads(json.dumps(config, default=_json_default)),
        "files": {f: sha256_file(out / f) for f in files},
    }
    write_manifest(out, manifest)  # with manifest.json.sha256, which covers the manifest itself
    return out


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(f"not JSON-serializable: {type(o)}")


__all__ = ["GRAPH_KINDS", "export_policy", "input_name"]
