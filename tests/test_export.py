"""ONNX export and the torch-free runtime: parity with torch for every family and graph kind, queues,
SFP streaming, ACT ensembling, and clear errors for bad artifacts."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.data.reader import LeRobotDataset
from robopolicy.export import export_policy
from robopolicy.runtime import ArtifactError, OnnxPolicy, sha256_file
from robopolicy.runtime.manifest import CHUNK_FAMILIES, write_manifest
from robopolicy.train.trainer import make_policy_for_dataset

TOL = 1e-4
B = 3

CONFIGS = {
    "diffusion": {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [32, 64],
                  "step_embed_dim": 32, "num_inference_steps": 5, "noise_scheduler_type": "DDIM"},
    "diffusion_silu": {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [32, 64],
                       "step_embed_dim": 32, "num_inference_steps": 5, "noise_scheduler_type": "DDIM",
                       "activation": "silu"},
    # x0 prediction with a clip that bites (the random net's outputs exceed 0.1): the noise estimate must come
    # from the unclipped prediction, as in diffusers.
    "diffusion_sample": {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
                         "down_dims": [32, 64], "step_embed_dim": 32, "num_inference_steps": 5,
                         "noise_scheduler_type": "DDIM", "prediction_type": "sample", "clip_sample_range": 0.1},
    "flow_unet": {"type": "flow", "backbone": "unet", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
                  "down_dims": [32, 64], "step_embed_dim": 32, "num_inference_steps": 3, "integrator": "rk4"},
    "flow_transformer": {"type": "flow", "backbone": "transformer", "n_obs_steps": 2, "horizon": 8,
                         "n_action_steps": 4, "n_embd": 32, "n_layer": 2, "n_head": 2, "num_inference_steps": 4,
                         "integrator": "euler"},
    "flow_mlp": {"type": "flow", "backbone": "mlp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2,
                 "mlp_hidden_dim": 32, "mlp_layers": 2, "step_embed_dim": 16, "num_inference_steps": 3,
                 "integrator": "heun"},
    "sfp_d": {"type": "sfp", "variant": "deterministic", "n_obs_steps": 2, "horizon": 6, "n_action_steps": 3,
              "hidden_dim": 32, "n_layers": 2, "time_embed_dim": 16, "integration_steps_per_action": 2},
    "sfp_s": {"type": "sfp", "variant": "stochastic", "n_obs_steps": 2, "horizon": 6, "n_action_steps": 3,
              "hidden_dim": 32, "n_layers": 2, "time_embed_dim": 16, "integration_steps_per_action": 2,
              "integrator": "midpoint", "start_from_observation_key": "observation.state"},
    "act": {"type": "act", "n_obs_steps": 1, "horizon": 6, "n_action_steps": 3, "dim_model": 32, "n_heads": 4,
            "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1, "latent_dim": 8,
            "n_vae_encoder_layers": 1, "temporal_ensemble_coeff": 0.01},
    "act_hypotheses": {"type": "act", "n_obs_steps": 1, "horizon": 6, "n_action_steps": 3, "dim_model": 32,
                       "n_heads": 4, "dim_feedforward": 64, "n_encoder_layers": 1, "n_decoder_layers": 1,
                       "latent_dim": 8, "use_vae": False, "n_hypotheses": 3},
    "mlp": {"type": "mlp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dims": [32, 32]},
    "mlp_hypotheses": {"type": "mlp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dims": [32, 32],
                       "n_hypotheses": 3},
    "mlp_ensemble": {"type": "mlp", "n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "hidden_dims": [32, 32],
                     "ensemble": 3},
    # MIP: two passes of flow's U-Net in one graph, with a clip that bites (the random net's outputs exceed 0.2).
    "mip": {"type": "mip", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [32, 64],
            "step_embed_dim": 32, "clip_sample_range": 0.2},
}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_policy(dataset_root: Path, name: str, **overrides):
    ds = LeRobotDataset(dataset_root)
    policy = make_policy_for_dataset({**CONFIGS[name], **overrides}, ds, ["observation.state"], "action", "min_max")
    torch.manual_seed(0)
    with torch.no_grad():  # random, non-trivial weights (some families zero-init their last layer)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy.eval()


def random_history(policy, batch: int = B, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = policy.config
    return {f.key: rng.uniform(-1.5, 1.5, (batch, c.n_obs_steps, *f.shape)).astype(np.float32)
            for f in c.input_features}


def noise_shape(policy, batch: int = B) -> tuple[int, ...]:
    if policy.name == "sfp":
        return (batch, policy.state_dim)
    return (batch, policy.config.horizon, policy.config.action_dim)


@torch.no_grad()
def torch_chunk(policy, history: dict[str, np.ndarray], noise: np.ndarray | None) -> np.ndarray:
    obs = {k: policy.normalizer.normalize(k, torch.as_tensor(v)) for k, v in history.items()}
    kwargs = {} if noise is None else {"noise": torch.as_tensor(noise)}
    out = policy.generate_actions(obs, **kwargs)
    return policy.normalizer.unnormalize(policy.action_key, out).numpy()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One exported artifact per family config (exports cost a few seconds; share them)."""
    from tests.conftest import linear_mapping_episodes, write_dataset

    root = tmp_path_factory.mktemp("export")
    dataset = write_dataset(root / "ds", linear_mapping_episodes())
    torch.set_num_threads(1)
    out = {}
    for name in CONFIGS:
        policy = make_policy(dataset, name)
        path = export_policy(policy, root / name, fps=10)
        out[name] = (policy, path)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("graph", ["per_step", "fused"])
def test_parity_random_inputs(artifacts, name, graph):
    policy, path = artifacts[name]
    runtime = OnnxPolicy.load(path, graph=graph)
    history = random_history(policy, seed=1)
    noise = None if policy.name in CHUNK_FAMILIES else np.random.default_rng(2).standard_normal(noise_shape(policy)).astype(np.float32)
    policy.reset()
    expected = torch_chunk(policy, history, noise)
    got = runtime.predict_chunk(history, noise=noise)
    assert got.shape == (B, policy.config.horizon, policy.config.action_dim)
    assert np.abs(expected).max() > 1e-3  # not a trivially-zero comparison
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


class _Replay:
    """A numpy-Generator stand-in that hands the runtime a given noise draw (the one diffusers drew)."""

    def __init__(self, draw: np.ndarray):
        self.draw = draw

    def standard_normal(self, shape, dtype=np.float32):
        assert tuple(shape) == self.draw.shape
        return self.draw.astype(dtype)


@pytest.mark.parametrize("kind", ["DDIM", "DDPM"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_host_diffusion_steps_match_diffusers(kind, prediction_type, clip):
    """The runtime's numpy DDIM/DDPM updates are diffusers' (the schedulers the torch policy samples with),
    step by step, including x0 clipping (the noise estimate comes from the unclipped x0 prediction)."""
    from robopolicy.policies.diffusion.configuration import DiffusionConfig
    from robopolicy.policies.diffusion.modeling import make_noise_scheduler
    from robopolicy.runtime import solvers

    config = DiffusionConfig(prediction_type=prediction_type, clip_sample=clip is not None,
                             clip_sample_range=clip or 1.0)
    scheduler = make_noise_scheduler(config, kind)
    scheduler.set_timesteps(5)
    tables = solvers.diffusion_tables(kind, scheduler.alphas_cumprod.numpy(), config.num_train_timesteps, 5)
    assert tables["timesteps"] == [int(t) for t in scheduler.timesteps]
    rng = np.random.default_rng(0)
    for i, t in enumerate(tables["timesteps"][:-1]):  # the last DDPM step adds no noise; all others compared
        x = rng.standard_normal((2, 8, 2)).astype(np.float32)
        out = (2.0 * rng.standard_normal((2, 8, 2))).astype(np.float32)  # partly beyond any clip range
        if kind == "DDIM":
            expected = scheduler.step(torch.as_tensor(out), t, torch.as_tensor(x)).prev_sample.numpy()
            got = solvers.ddim_step(out, x, tables["alpha_t"][i], tables["alpha_prev"][i], prediction_type, clip)
        else:  # the same noise draw on both sides
            gen = torch.Generator().manual_seed(i)
            expected = scheduler.step(torch.as_tensor(out), t, torch.as_tensor(x), generator=gen).prev_sample.numpy()
            draw = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).numpy()

            got = solvers.ddpm_step(out, x, t, tables["alpha_t"][i], tables["alpha_prev"][i], prediction_type, clip,
                                    _Replay(draw))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=f"step {i}, t = {t}")


@pytest.mark.parametrize("name", ["diffusion", "sfp_d", "act"])
def test_dynamo_exporter_parity(artifacts, name, tmp_path):
    """``exporter=dynamo`` (torch.export) writes graphs as correct as the default tracer's, for wrappers whose
    forward takes ``*inputs`` as well as the step graph's fixed arguments."""
    policy, _ = artifacts[name]
    path = export_policy(policy, tmp_path / name, exporter="dynamo")
    history = random_history(policy, seed=3)
    noise = None if policy.name == "act" else np.random.default_rng(4).standard_normal(noise_shape(policy)).astype(np.float32)
    policy.reset()
    expected = torch_chunk(policy, history, noise)
    for graph in ("per_step", "fused"):
        got = OnnxPolicy.load(path, graph=graph).predict_chunk(history, noise=noise)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0, err_msg=graph)


def test_unet_exports_as_its_4d_twin_and_the_policy_is_untouched(artifacts):
    """The U-Net leaves as ExportUnet: (1, k) Conv2d, constant reshapes, one FiLM product; same numbers."""
    import onnx
    from torch import nn

    from robopolicy.export.onnx_export import Conv1dAs2d, export_friendly
    from robopolicy.export.unet_graph import ExportUnet
    from robopolicy.policies.networks.unet1d import ConditionalUnet1D

    policy, path = artifacts["diffusion"]
    assert isinstance(policy.net, ConditionalUnet1D)  # the policy keeps its own network
    twin = export_friendly(policy)
    assert isinstance(twin.net, ExportUnet) and twin.net is not policy.net
    assert not any(type(m) in (nn.Conv1d, nn.ConvTranspose1d) for m in twin.net.modules())
    assert export_friendly(twin) is twin  # already export-friendly: no second copy
    x, t, cond = torch.randn(3, 8, 2), 100 * torch.rand(3), torch.randn(3, policy.encoder.output_dim)
    with torch.no_grad():
        torch.testing.assert_close(twin.net(x, t, cond), policy.net(x, t, cond), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="built for T = 8"):
            twin.net(torch.randn(1, 16, 2), t[:1], cond[:1])
    graph = onnx.load(str(path / "step.onnx")).graph
    weights = {init.name: len(init.dims) for init in graph.initializer}
    ops = [n.op_type for n in graph.node]
    assert {weights[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights} == {4}
    # No shape arithmetic in the graph: every reshape has a constant target (only the batch is -1).
    assert "Shape" not in ops and "Squeeze" not in ops
    assert ops.count("Gemm") == 3  # the step embedding's two layers and one FiLM product for all blocks
    # The fused graph's times are known at export: the step embedding is folded into constants, the
    # condition's FiLM share is one product per chunk, and the chunk stays 4-D between the steps.
    fused = [n.op_type for n in onnx.load(str(path / "fused.onnx")).graph.node]
    steps = policy.config.num_inference_steps
    assert fused.count("InstanceNormalization") == steps * ops.count("InstanceNormalization")
    assert "Sin" not in fused and "Cos" not in fused
    assert fused.count("Gemm") + fused.count("MatMul") == 1
    assert fused.count("Transpose") == 2  # in and out, not per step
    with pytest.raises(ValueError, match="divisible"):
        ExportUnet(ConditionalUnet1D(2, 4, step_embed_dim=8, down_dims=(8, 16, 32), n_groups=2), horizon=6)
    from robopolicy.export.unet_graph import export_mish, mish_of_negated

    values = torch.linspace(-60, 60, 24001, dtype=torch.float64)
    exact = torch.nn.functional.mish(values)
    assert (export_mish(values.float()).double() - exact).abs().max() < 1e-5
    assert (mish_of_negated(-values.float()).double() - exact).abs().max() < 1e-5
    # Every Mish after a GroupNorm is the four-operator form (Sigmoid, Log, Tanh, Mul) on the negated affine;
    # only the step and condition embeddings' Mish keep the six-operator one (its Div).
    assert ops.count("Log") == ops.count("InstanceNormalization")
    assert ops.count("Div") == 2
    # Any other Conv1d is still wrapped as a (1, k) Conv2d.
    conv = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2))
    wrapped = Conv1dAs2d(conv[0])
    signal = torch.randn(2, 3, 9)
    torch.testing.assert_close(wrapped(signal), conv(signal))
    mlp = artifacts["mlp"][0]
    assert export_friendly(mlp) is mlp  # nothing to swap: no copy


def test_export_under_a_torch_that_refuses_zero_eps(lowdim_dataset, monkeypatch, tmp_path):
    """torch 2.11 (the GPU machine's) raises on batch_norm(eps=0); the U-Net graph must not depend on eps 0."""
    real = torch.nn.functional.batch_norm

    def strict(*args, eps: float = 1e-5, **kwargs):
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive, but got {eps}")
        return real(*args, eps=eps, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", strict)
    policy = make_policy(lowdim_dataset, "diffusion")
    runtime = OnnxPolicy.load(export_policy(policy, tmp_path / "artifact", fps=10), graph="fused")
    history = random_history(policy)
    noise = np.random.default_rng(1).standard_normal(noise_shape(policy)).astype(np.float32)
    np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise), torch_chunk(policy, history, noise),
                               atol=TOL, rtol=0)


def test_unet_silu_activation_and_its_twin(artifacts):
    """activation=silu swaps every Mish of the U-Net (blocks, FiLM, step embedding); the exported step graph
    then has no Mish arithmetic (Sub/Div), only Sigmoid and Mul, which ONNX Runtime fuses."""
    import onnx
    from torch import nn

    from robopolicy.export.unet_graph import ExportUnet
    from robopolicy.policies.diffusion.configuration import DiffusionConfig
    from robopolicy.policies.networks.unet1d import ConditionalUnet1D

    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 6, step_embed_dim=16, down_dims=(8, 16), n_groups=2, activation="silu").eval()
    kinds = {type(m) for m in net.modules()}
    assert nn.SiLU in kinds and nn.Mish not in kinds
    x, t, cond = torch.randn(3, 8, 2), 100 * torch.rand(3), torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(ExportUnet(net, horizon=8)(x, t, cond), net(x, t, cond), atol=1e-5, rtol=0)
    ops = {name: [n.op_type for n in onnx.load(str(artifacts[name][1] / "step.onnx")).graph.node]
           for name in ("diffusion", "diffusion_silu")}
    assert "Div" in ops["diffusion"] and "Div" not in ops["diffusion_silu"]
    assert len(ops["diffusion_silu"]) < len(ops["diffusion"])
    with pytest.raises(ValueError, match="activation must be one of"):
        ConditionalUnet1D(2, 6, down_dims=(8, 16), n_groups=2, activation="gelu")
    with pytest.raises(ValueError, match="activation must be 'mish' or 'silu'"):
        DiffusionConfig(activation="relu")


@pytest.mark.parametrize("blocks_per_level", [1, 3])
def test_unet_blocks_per_level_and_its_twin(blocks_per_level):
    """The U-Net's residual-block count per level is an option; the export twin follows it, same numbers."""
    from robopolicy.export.unet_graph import ExportUnet
    from robopolicy.policies.networks.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D

    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 6, step_embed_dim=16, down_dims=(8, 16, 32), n_groups=2,
                            blocks_per_level=blocks_per_level).eval()
    n_blocks = sum(isinstance(m, ConditionalResidualBlock1D) for m in net.modules())
    assert n_blocks == blocks_per_level * (3 + 1 + 2)  # three down levels, the middle, two up levels
    twin = ExportUnet(net, horizon=8)
    x, t, cond = torch.randn(3, 8, 2), 100 * torch.rand(3), torch.randn(3, 6)
    with torch.no_grad():
        assert net(x, t, cond).shape == (3, 8, 2)
        torch.testing.assert_close(twin(x, t, cond), net(x, t, cond), atol=1e-5, rtol=0)
    default = ConditionalUnet1D(2, 6, step_embed_dim=16, down_dims=(8, 16), n_groups=2)
    assert "down.0.2.weight" in default.state_dict() and "mid.1.conv1.0.weight" in default.state_dict()
    with pytest.raises(ValueError, match="blocks_per_level must be at least 1"):
        ConditionalUnet1D(2, 6, down_dims=(8, 16), n_groups=2, blocks_per_level=0)


def test_manifest_contents(artifacts):
    policy, path = artifacts["diffusion"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["family"] == "diffusion" and m["opset"] == 18 and m["fps"] == 10
    assert (m["n_obs_steps"], m["horizon"], m["n_action_steps"]) == (2, 8, 4)
    assert set(m["files"]) == {"encoder.onnx", "step.onnx", "fused.onnx"}
    s = m["sampler"]
    sched = policy.sampling_scheduler
    sched.set_timesteps(policy.config.num_inference_steps)
    assert s["tables"]["timesteps"] == [int(t) for t in sched.timesteps]
    assert len(s["alphas_cumprod"]) == policy.config.num_train_timesteps
    assert m["graphs"]["fused"]["sampler"] == "DDIM"
    assert m["normalization"]["modes"] == {"observation.state": "min_max", "action": "min_max"}
    import onnx

    for f in m["files"]:
        model = onnx.load(str(path / f))
        assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 18
        for inp in model.graph.input:  # only the batch axis is dynamic
            dims = inp.type.tensor_type.shape.dim
            assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), (f, inp.name)
    assert json.loads((artifacts["act"][1] / "manifest.json").read_text())["sampler"] == {"temporal_ensemble_coeff": 0.01}
    sfp = json.loads((artifacts["sfp_s"][1] / "manifest.json").read_text())["sampler"]
    assert sfp["variant"] == "stochastic" and sfp["n_knots"] == 6 and sfp["state_dim"] == 4


def _drive_torch(policy, observations, noises):
    """torch select_action with the given noise for each new chunk (SFP's select_action integrates only the
    executed actions through ``_stream``; the other families sample whole chunks in ``generate_actions``)."""
    it = iter(noises)
    if policy.name == "sfp":
        name, original = "_stream", policy._stream
        patched = lambda obs, generator=None, **kw: original(obs, generator, **{**kw, "noise": torch.as_tensor(next(it))})  # noqa: E731
    else:
        name, original = "generate_actions", policy.generate_actions
        patched = lambda obs, generator=None: original(obs, noise=torch.as_tensor(next(it)))  # noqa: E731
    setattr(policy, name, patched)
    try:
        policy.reset()
        return [policy.select_action(o) for o in observations]
    finally:
        delattr(policy, name)


def _drive_runtime(runtime, observations, noises):
    it = iter(noises)
    runtime.reset()
    out = []
    for o in observations:
        noise = next(it) if runtime.needs_new_chunk else None
        out.append(runtime.select_action(o, noise=noise))
    return out


@pytest.mark.parametrize("name,graph", [("diffusion", "per_step"), ("diffusion", "fused"), ("sfp_d", "per_step"),
                                        ("sfp_s", "fused"), ("flow_unet", "per_step")])
def test_select_action_sequence_matches_torch(artifacts, name, graph):
    policy, path = artifacts[name]
    runtime = OnnxPolicy.load(path, graph=graph)
    rng = np.random.default_rng(3)
    observations = [{"observation.state": rng.uniform(-1, 1, 2).astype(np.float32)} for _ in range(9)]
    noises = [rng.standard_normal(noise_shape(policy, 1)).astype(np.float32) for _ in range(9)]
    expected = _drive_torch(policy, observations, noises)
    got = _drive_runtime(runtime, observations, noises)
    assert got[0].shape == (2,)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=TOL, rtol=0)
    if name.startswith("sfp"):
        np.testing.assert_allclose(runtime.last_action, policy.last_action.numpy(), atol=TOL)


def test_act_temporal_ensembling_matches_torch(artifacts):
    policy, path = artifacts["act"]
    runtime = OnnxPolicy.load(path)
    assert runtime.ensembler is not None
    rng = np.random.default_rng(4)
    observations = [{"observation.state": rng.uniform(-1, 1, (2, 2)).astype(np.float32)} for _ in range(10)]
    policy.reset()
    runtime.reset()
    expected = [policy.select_action(o) for o in observations]
    got = [runtime.select_action(o) for o in observations]
    assert got[0].shape == (2, 2)  # batched
    assert runtime.ensembler.num_live == policy.ensembler.num_live == policy.config.horizon - 1
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=TOL, rtol=0)


def test_sfp_stream_order_matches_torch(artifacts):
    policy, path = artifacts["sfp_s"]
    history = random_history(policy, batch=2, seed=5)
    noise = np.random.default_rng(6).standard_normal((2, policy.state_dim)).astype(np.float32)
    policy.reset()
    expected = [a.numpy() for a in policy.stream_actions(history, noise=torch.as_tensor(noise), n_actions=4)]
    for graph in ("per_step", "fused"):
        runtime = OnnxPolicy.load(path, graph=graph)
        got = list(runtime.stream_actions(history, noise=noise, n_actions=4))
        assert len(got) == 4
        np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=TOL, rtol=0)
        np.testing.assert_allclose(runtime.last_action, expected[-1], atol=TOL)


def test_diffusion_warm_start_matches_torch(artifacts, tmp_path):
    policy, _ = artifacts["diffusion"]
    policy.set_sampling_mode("warm_start", warm_start_fraction=0.6)
    try:
        path = export_policy(policy, tmp_path / "warm", graph_kinds=("per_step",))
        runtime = OnnxPolicy.load(path)
        rng = np.random.default_rng(7)
        observations = [{"observation.state": rng.uniform(-1, 1, 2).astype(np.float32)} for _ in range(12)]
        noises = [rng.standard_normal(noise_shape(policy, 1)).astype(np.float32) for _ in range(12)]
        expected = _drive_torch(policy, observations, noises)
        got = _drive_runtime(runtime, observations, noises)
        np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=TOL, rtol=0)
    finally:
        policy.set_sampling_mode("standard")


def test_fused_graph_warns_that_it_cannot_warm_start(artifacts, tmp_path):
    """Warm start needs the host loop: exporting a fused graph and loading it say so, the per-step graph
    stays silent."""
    import warnings

    policy, _ = artifacts["diffusion"]
    policy.set_sampling_mode("warm_start", warm_start_fraction=0.6)
    try:
        with pytest.warns(UserWarning, match="fused graph ignores sampling_mode 'warm_start'"):
            path = export_policy(policy, tmp_path / "warm")
    finally:
        policy.set_sampling_mode("standard")
    with pytest.warns(UserWarning, match="fused graph ignores the policy's sampling_mode 'warm_start'"):
        OnnxPolicy.load(path, graph="fused")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxPolicy.load(path, graph="per_step")


def test_export_leaves_the_policy_as_it_was(artifacts, tmp_path):
    """Exporting mid-training must not switch the caller's policy to eval mode (dropout off) or move it."""
    policy, _ = artifacts["act"]
    policy.train()
    try:
        export_policy(policy, tmp_path / "act", graph_kinds=("fused",))
        assert policy.training and all(m.training for m in policy.modules())
    finally:
        policy.eval()


def test_host_sampler_overrides(artifacts):
    policy, path = artifacts["diffusion"]
    runtime = OnnxPolicy.load(path)
    history = random_history(policy, seed=8)
    noise = np.random.default_rng(9).standard_normal(noise_shape(policy)).astype(np.float32)
    runtime.set_sampler("DDIM", 10)  # any step count from the per-step graph
    policy.set_sampler("DDIM", 10)
    try:
        np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise), torch_chunk(policy, history, noise),
                                   atol=TOL)
    finally:
        policy.set_sampler("DDIM", 5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
            runtime.set_sampler("DDIM", bad)
    with pytest.raises(ValueError, match="num_inference_steps=150 exceeds the 100 training timesteps"):
        runtime.set_sampler("DDIM", 150)
    runtime.set_sampler("DDPM", 5)  # stochastic: runs, stays in the clipped action range
    chunk = runtime.predict_chunk(history, rng=np.random.default_rng(0))
    lo, hi = (np.asarray(runtime.manifest["normalization"]["stats"]["action"][k]) for k in ("min", "max"))
    assert np.all(chunk >= lo - 1e-4) and np.all(chunk <= hi + 1e-4)


def test_fused_graph_refuses_sampler_overrides_and_serves(artifacts, tmp_path, monkeypatch):
    """A fused graph unrolls the exported sampler: changing it must fail loudly, not be ignored; `robopolicy
    serve graph=fused` serves that graph."""
    from robopolicy.configs import load_config
    from robopolicy.deploy.adapter import load_policy_adapter

    policy, path = artifacts["diffusion"]
    fused = OnnxPolicy.load(path, graph="fused")
    with pytest.raises(ValueError, match=r"fused graph, which unrolls 5 DDIM steps.*graph='per_step'"):
        fused.set_sampler("DDIM", 10)
    assert load_config("serve", []).graph == "auto"
    loaded, real_load = [], OnnxPolicy.load.__func__

    def recording_load(cls, *args, **kwargs):
        loaded.append(real_load(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(OnnxPolicy, "load", classmethod(recording_load))
    served = load_policy_adapter(path, graph="fused")
    assert [p.graph for p in loaded] == ["fused"]
    history = {k: v[0] for k, v in random_history(policy, batch=1).items()}
    lo, hi = (np.asarray(fused.manifest["normalization"]["stats"]["action"][k]) for k in ("min", "max"))
    chunk = served.predict(history)
    assert chunk.shape == (policy.config.horizon, 2) and np.all(chunk >= lo - 1e-4) and np.all(chunk <= hi + 1e-4)
    policy.save(tmp_path / "torch_policy")
    with pytest.raises(ValueError, match="applies to ONNX artifacts"):
        load_policy_adapter(tmp_path / "torch_policy", graph="fused")


def test_cli_eval_runs_an_exported_artifact(artifacts, tmp_path):
    """`robopolicy eval checkpoint=<artifact>` evaluates the torch-free runtime on PushT, seeded like torch
    checkpoints (same seeds, same episodes), with the artifact's engine options and clear errors."""
    from robopolicy.cli import cmd_eval
    from robopolicy.configs import load_config

    _, path = artifacts["diffusion"]

    def run(out: str, *extra: str) -> dict:
        return cmd_eval(load_config("eval", [f"checkpoint={path}", "n_episodes=2", "n_workers=1", "n_videos=0",
                                             "max_steps=12", f"output_dir={tmp_path / out}", *extra]))

    report = run("a", "graph=per_step", "n_action_steps=2", "num_inference_steps=3")
    assert report["n_episodes"] == 2 and (tmp_path / "a" / "eval_report.json").is_file()
    again = run("b", "graph=per_step", "n_action_steps=2", "num_inference_steps=3")
    assert [e["max_coverage"] for e in report["episodes"]] == [e["max_coverage"] for e in again["episodes"]]
    # Ta 2 with T = 8: a chunk every second step, so 6 of the 12 steps ran inference.
    assert [e["chunk_latency_ms"]["n"] for e in report["episodes"]] == [6, 6]
    assert run("c", "graph=fused")["n_episodes"] == 2
    with pytest.raises(ValueError, match="fused graph, which unrolls"):
        run("d", "graph=fused", "num_inference_steps=3")
    with pytest.raises(ValueError, match=r"n_action_steps=8 does not fit the artifact .*expected 1\.\.7"):
        run("e", "n_action_steps=8")


def test_evaluate_factory_is_picklable(artifacts):
    import pickle

    _, path = artifacts["mlp"]
    factory = functools.partial(OnnxPolicy.load, str(path))
    policy = pickle.loads(pickle.dumps(factory))()
    policy.reset()
    assert policy.needs_new_chunk
    assert policy.select_action({"observation.state": np.zeros(2, np.float32)}).shape == (2,)
    assert not policy.needs_new_chunk


def test_seeded_evaluation_repeats_exactly(artifacts):
    """The evaluator seeds the runtime's own noise per episode: the same seeds give the same rollouts,
    whatever ran before (as torch policies do through the global seed)."""
    import gymnasium as gym

    from robopolicy.sim.evaluate import run_episode

    class PointEnv:  # a point the policy drives; every action is kept
        metadata: dict = {}
        action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)

        def reset(self, seed=None):
            self.x, self.actions = np.random.default_rng(seed).uniform(-1, 1, 2).astype(np.float32), []
            return {"observation.state": self.x}, {}

        def step(self, action):
            self.actions.append(action)
            self.x = self.x + 0.1 * action.astype(np.float32)
            return {"observation.state": self.x}, 0.0, False, False, {"coverage": 0.0}

    def rollouts(runtime) -> list[np.ndarray]:
        out = []
        for seed in (5, 6):
            env = PointEnv()
            run_episode(runtime, env, seed, max_steps=6)
            out.append(np.stack(env.actions))
        return out

    policy, path = artifacts["diffusion"]
    runtime = OnnxPolicy.load(path)
    first = rollouts(runtime)
    runtime.predict_chunk(random_history(policy, batch=1))  # draws noise in between
    again = rollouts(OnnxPolicy.load(path)), rollouts(runtime)
    for repeat in again:
        for a, b in zip(first, repeat):
            np.testing.assert_array_equal(a, b)
    assert first[0].shape == (6, 2) and not np.allclose(first[0], first[1])


# ---- bad artifacts ---------------------------------------------------------------------------------
def _copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_missing_file(artifacts, tmp_path):
    d = _copy(artifacts["mlp"][1], tmp_path)
    (d / "policy.onnx").unlink()
    with pytest.raises(ArtifactError, match="policy.onnx: missing file"):
        OnnxPolicy.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="missing manifest"):
        OnnxPolicy.load(d)


def test_altered_file(artifacts, tmp_path):
    d = _copy(artifacts["mlp"][1], tmp_path)
    data = bytearray((d / "policy.onnx").read_bytes())
    data[-10] ^= 0xFF
    (d / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="policy.onnx: hash mismatch, artifact altered"):
        OnnxPolicy.load(d)


def test_manifest_version_mismatch(artifacts, tmp_path):
    d = _copy(artifacts["mlp"][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        OnnxPolicy.load(d)


def _drop(*keys):
    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        m.pop(keys[-1])
    return edit


@pytest.mark.parametrize("edit,field", [
    (_drop("family"), r"field 'family' must be one of .* \(it is missing\)"),
    (lambda m: m.update(family="difusion"), r"field 'family' must be one of .*, got 'difusion'"),
    (_drop("n_obs_steps"), "field 'n_obs_steps' must be a positive integer"),
    (lambda m: m.update(horizon="8"), "field 'horizon' must be a positive integer, got '8'"),
    (lambda m: m.update(n_action_steps=9), "field 'n_action_steps' must be at most horizon - n_obs_steps"),
    (lambda m: m.update(format_version=True), "format_version True is not supported"),
    (lambda m: m["input_features"][0].update(shape=[2, -1]), "field 'input_features.0' must be"),
    (_drop("action_feature"), "field 'action_feature' must be"),
    (_drop("normalization", "modes", "action"), "field 'normalization.modes.action' must be one of"),
    (_drop("normalization", "stats", "observation.state"),
     "field 'normalization.stats.observation.state.min' must be numbers broadcastable"),
    (lambda m: m["normalization"]["stats"]["action"].update(max=[1.0, 2.0, 3.0]),
     r"field 'normalization.stats.action.max' must be numbers broadcastable to the feature's shape \[2\]"),
    (lambda m: m.update(files={"other.onnx": "0" * 64}), r"field 'graphs\.\w+\.files\.policy' must be a file the "
     "manifest's 'files' hashes"),
    (_drop("graphs"), "field 'graphs' must be"),
])
def test_malformed_manifest_fields_name_the_field(artifacts, tmp_path, edit, field):
    """A manifest whose hashes still match but whose fields are missing, mistyped or inconsistent fails at
    load, naming manifest.json and the field, before anything runs."""
    d = _copy(artifacts["mlp"][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"manifest.json: {field}" if "format_version" not in field else field):
        OnnxPolicy.load(d)


def test_manifest_feature_shape_must_match_the_graphs(artifacts, tmp_path):
    d = _copy(artifacts["mlp"][1], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["input_features"][0]["shape"] = [3]  # consistent within the manifest (broadcastable stats), not with the graph
    m["normalization"]["stats"]["observation.state"] = {"min": [-1.0], "max": [1.0]}
    m["policy_config"]["input_features"][0]["shape"] = [3]
    write_manifest(d, m)  # hashed again: a consistent artifact whose graphs disagree
    with pytest.raises(ArtifactError, match=r"feature 'observation.state' is \(batch, 2, 3\) in the manifest but the "
                                            r"policy graph takes \['batch', 2, 2\]"):
        OnnxPolicy.load(d)


def test_unsupported_opset(artifacts, tmp_path):
    import onnx

    d = _copy(artifacts["mlp"][1], tmp_path)
    model = onnx.load(str(d / "policy.onnx"))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 99
    onnx.save(model, str(d / "policy.onnx"))
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["policy.onnx"] = sha256_file(d / "policy.onnx")  # a consistent artifact, just unsupported
    write_manifest(d, m)
    with pytest.raises(ArtifactError, match="policy.onnx: ONNX Runtime .* cannot load this graph"):
        OnnxPolicy.load(d)


def test_wrong_input_shapes(artifacts):
    policy, path = artifacts["diffusion"]
    runtime = OnnxPolicy.load(path)
    with pytest.raises(ValueError, match=r"observation 'observation.state': expected shape \(B, 2, 2\), got \(3, 2, 5\)"):
        runtime.predict_chunk({"observation.state": np.zeros((3, 2, 5), np.float32)})
    with pytest.raises(ValueError, match=r"observation 'observation.state': expected shape \(2,\)"):
        runtime.select_action({"observation.state": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 8, 2\)"):
        runtime.predict_chunk(random_history(policy), noise=np.zeros((3, 8, 3), np.float32))
    with pytest.raises(KeyError, match="observation.state"):
        runtime.select_action({"state": np.zeros(2, np.float32)})


def test_missing_provider_is_a_clear_error(artifacts):
    with pytest.raises(RuntimeError, match="execution provider 'CUDAExecutionProvider' is not available"):
        OnnxPolicy.load(artifacts["mlp"][1], providers=("cuda", "cpu"))
    with pytest.raises(RuntimeError, match="execution provider 'CUDAExecutionProvider' is not available"):
        OnnxPolicy.load(artifacts["mlp"][1], providers="cuda")  # one name, not a sequence of letters
    assert OnnxPolicy.load(artifacts["mlp"][1], providers="cpu").providers == ["CPUExecutionProvider"]


def test_observation_buffers_refilled_in_place_are_copied(artifacts):
    """A control loop that reads each observation into one reused buffer gets the same actions as one
    that hands over fresh arrays: neither the torch policy nor the runtime keeps a view in its To queue."""
    policy, path = artifacts["mlp"]  # To = 2
    runtime = OnnxPolicy.load(path)
    rng = np.random.default_rng(11)
    observations = [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(6)]
    for agent in (policy, runtime):
        agent.reset()
        fresh = [np.asarray(agent.select_action({"observation.state": o.copy()})) for o in observations]
        agent.reset()
        buffer, reused = np.empty(2, np.float32), []
        for o in observations:
            buffer[:] = o
            reused.append(np.asarray(agent.select_action({"observation.state": buffer})))
        np.testing.assert_array_equal(np.stack(reused), np.stack(fresh), err_msg=type(agent).__name__)


needs_openvino = pytest.mark.skipif(not __import__("robopolicy.runtime.openvino_session", fromlist=["x"]).openvino_available(),
                                    reason="openvino is not installed (pip install 'robopolicy[openvino]')")


@needs_openvino
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("graph", ["per_step", "fused"])
def test_openvino_backend_parity(artifacts, name, graph):
    """OpenVINO runs the same files within the fp32 bound, for every family, batch size and graph kind."""
    policy, path = artifacts[name]
    runtime = OnnxPolicy.load(path, graph=graph, providers=("openvino",))
    assert runtime.providers == ["OpenVINO (CPU)"]
    for batch in (B, 1, B):  # a new batch size compiles a new static-shape model; the first stays cached
        history = random_history(policy, batch=batch, seed=batch)
        noise = (None if policy.name in CHUNK_FAMILIES
                 else np.random.default_rng(2).standard_normal(noise_shape(policy, batch)).astype(np.float32))
        policy.reset()
        runtime.reset()
        np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise), torch_chunk(policy, history, noise),
                                   atol=TOL, rtol=0)


@needs_openvino
def test_openvino_outputs_are_not_overwritten_by_the_next_call(artifacts):
    from robopolicy.runtime.openvino_session import OpenVinoSession

    _, path = artifacts["diffusion"]
    session = OpenVinoSession(path / "step.onnx")
    rng = np.random.default_rng(0)
    feed = lambda: {"x": rng.standard_normal((1, 8, 2)).astype(np.float32), "t": np.ones(1, np.float32),  # noqa: E731
                    "cond": rng.standard_normal((1, session._model.inputs[2].get_partial_shape()[1].get_length()))
                    .astype(np.float32)}
    first = session.run(None, feed())[0]
    kept = first.copy()
    session.run(None, feed())
    np.testing.assert_array_equal(first, kept)
    with pytest.raises(ValueError, match=r"step.onnx: missing inputs \['cond'\]"):
        session.run(None, {"x": np.zeros((1, 8, 2), np.float32), "t": np.ones(1, np.float32)})


@needs_openvino
def test_served_artifact_runs_on_openvino(artifacts):
    """`robopolicy serve providers=[openvino]`: the adapter's chunks equal ONNX Runtime's for a deterministic family."""
    from robopolicy.deploy.adapter import load_policy_adapter

    policy, path = artifacts["act"]
    history = {k: v[0] for k, v in random_history(policy, batch=1).items()}
    on_ort = load_policy_adapter(path, providers=["cpu"])
    on_openvino = load_policy_adapter(path, providers=["openvino"], threads=2)
    assert on_openvino.spec.fps == 10
    np.testing.assert_allclose(on_openvino.predict(history), on_ort.predict(history), atol=TOL, rtol=0)


def test_openvino_provider_errors(artifacts, monkeypatch):
    from robopolicy.runtime import openvino_session

    path = artifacts["mlp"][1]
    with pytest.raises(ValueError, match="'openvino' replaces ONNX Runtime and cannot be mixed"):
        OnnxPolicy.load(path, providers=("openvino", "cpu"))
    monkeypatch.setattr(openvino_session, "openvino_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'robopolicy\[openvino\]'"):
        OnnxPolicy.load(path, providers=("OpenVINO",))


def test_unsupported_sampler_is_a_clear_error(artifacts, tmp_path):
    policy, _ = artifacts["diffusion"]
    policy.set_sampler("DPMSolver++")
    try:
        path = export_policy(policy, tmp_path / "dpm", graph_kinds=("per_step",))
    finally:
        policy.set_sampler("DDIM")
    runtime = OnnxPolicy.load(path)
    with pytest.raises(NotImplementedError, match="set_sampler\\('DDIM'\\)"):
        runtime.predict_chunk(random_history(policy))
    runtime.set_sampler("DDIM")
    assert runtime.predict_chunk(random_history(policy)).shape == (B, 8, 2)
