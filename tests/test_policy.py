"""The policy interface on Diffusion Policy: shapes, queues, save/load, learning a mapping, resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robopolicy.configs import load_config
from robopolicy.data.reader import LeRobotDataset
from robopolicy.policies import available_policies, load_policy
from robopolicy.policies.registry import get_policy_class
from robopolicy.train.checkpoint import latest_checkpoint, list_checkpoints, raw_weights_policy
from robopolicy.train.trainer import Trainer, make_policy_for_dataset, resolve_device
from tests.helpers import CallCounter

TINY_POLICY = {"type": "diffusion", "n_obs_steps": 1, "horizon": 4, "n_action_steps": 2, "down_dims": [32, 64],
               "step_embed_dim": 32, "num_inference_steps": 10}


def tiny_policy(dataset_root: Path, **overrides):
    ds = LeRobotDataset(dataset_root)
    return make_policy_for_dataset({**TINY_POLICY, **overrides}, ds, ["observation.state"], "action", "min_max")


def train_cfg(dataset_root: Path, out: Path, **overrides):
    cfg = load_config("train", [f"dataset.root={dataset_root}", "dataset.observation_keys=[observation.state]",
                                f"output_dir={out}", "progress=false", "num_threads=1"])
    cfg.policy = OmegaConf.create(TINY_POLICY)
    for k, v in {"batch_size": 64, "lr": 3e-3, "warmup_steps": 20, "log_every": 10, "save_every": 10, **overrides}.items():
        cfg[k] = v
    return cfg


def test_registry():
    assert "diffusion" in available_policies()
    assert get_policy_class("diffusion").name == "diffusion"
    with pytest.raises(KeyError, match="unknown policy family 'nope'"):
        get_policy_class("nope")


def test_config_validation(lowdim_dataset):
    with pytest.raises(ValueError, match="n_action_steps"):
        tiny_policy(lowdim_dataset, n_action_steps=8)
    with pytest.raises(ValueError, match="noise_scheduler_type"):
        tiny_policy(lowdim_dataset, noise_scheduler_type="Euler")
    with pytest.raises(ValueError, match=r"unknown config fields \['bogus'\]"):
        tiny_policy(lowdim_dataset, bogus=1)


def test_chunk_shapes_units_and_action_queue(lowdim_dataset):
    policy = tiny_policy(lowdim_dataset).eval()
    obs = {"observation.state": torch.zeros(3, 1, 2)}
    chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 4, 2)
    # Robot units: the clipped sampler keeps actions inside the dataset's action range.
    stats = LeRobotDataset(lowdim_dataset).stats["action"]
    assert (chunk >= torch.tensor(stats["min"]) - 1e-4).all() and (chunk <= torch.tensor(stats["max"]) + 1e-4).all()
    policy.reset()
    policy.generate_actions = counter = CallCounter(policy.generate_actions)
    for i in range(5):
        assert policy.needs_new_chunk == (i % 2 == 0)
        action = policy.select_action({"observation.state": np.zeros(2, np.float32)})
        assert action.shape == (2,)
    assert counter.calls == 3  # Ta = 2: inference at steps 0, 2, 4
    policy.reset()
    assert policy.needs_new_chunk


@pytest.mark.parametrize("sampler", ["DDPM", "DDIM", "DPMSolver++", "UniPC"])
def test_every_diffusers_sampler_runs(lowdim_dataset, sampler):
    policy = tiny_policy(lowdim_dataset).eval()
    policy.set_sampler(sampler, 100 if sampler == "DDPM" else 5)
    chunk = policy.predict_chunk({"observation.state": torch.zeros(2, 1, 2)}, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 4, 2) and torch.isfinite(chunk).all()


def test_save_load_gives_identical_actions(lowdim_dataset, tmp_path):
    policy = tiny_policy(lowdim_dataset).eval()
    policy.save(tmp_path / "p")
    assert sorted(os.listdir(tmp_path / "p")) == ["checksums.json", "config.json", "model.safetensors",
                                                  "normalization.json"]
    loaded = load_policy(tmp_path / "p")
    obs = {"observation.state": torch.randn(4, 1, 2)}
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert json.loads((tmp_path / "p/config.json").read_text())["type"] == "diffusion"


def test_load_errors(lowdim_dataset, tmp_path):
    policy = tiny_policy(lowdim_dataset)
    policy.save(tmp_path / "p")
    (tmp_path / "p/model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing policy weights"):
        load_policy(tmp_path / "p")
    cfg = json.loads((tmp_path / "p/config.json").read_text())
    del cfg["type"]
    (tmp_path / "p/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: field 'type'"):
        load_policy(tmp_path / "p")


def test_tiny_training_learns_the_mapping(lowdim_dataset, tmp_path):
    """Loss falls, and the trained policy reproduces action = f(state) on held-in states."""
    torch.manual_seed(0)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=400, save_every=400))
    run_dir = trainer.fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-3:].mean() < 0.5 * log["loss"][:2].mean()
    policy = load_policy(run_dir / "policy")
    states = torch.tensor([[0.5, -0.5], [-0.8, 0.2], [0.1, 0.9], [-0.3, -0.7]])
    expected = torch.stack([states[:, 0] + 0.5 * states[:, 1], -states[:, 1]], dim=1)
    chunk = policy.predict_chunk({"observation.state": states[:, None]}, generator=torch.Generator().manual_seed(0))
    err = (chunk[:, 0] - expected).abs().mean()
    assert err < 0.15, f"first action error {err:.3f}"  # action range is about [-1.5, 1.5]


def test_observation_noise_perturbs_states_only(lowdim_dataset, tmp_path):
    """obs_noise_std adds N(0, std^2) to the low-dim observations of each training batch; actions stay demonstrated."""
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=10, batch_size=512, obs_noise_std=0.05))
    seen = []
    weight = next(trainer.policy.parameters())
    trainer.policy.compute_loss = lambda batch, generator=None: seen.append(batch) or weight.sum() * 0
    clean = trainer.sampler.sample(512, generator=torch.Generator().manual_seed(3))
    trainer.generator.manual_seed(3)
    trainer.train_step()
    noisy = seen[0]
    torch.testing.assert_close(noisy["action"], clean["action"], rtol=0, atol=0)
    delta = noisy["observation.state"] - clean["observation.state"]
    assert 0.045 < delta.std().item() < 0.055 and abs(delta.mean().item()) < 0.005
    trainer.cfg.obs_noise_std = 0.0
    trainer.generator.manual_seed(3)
    trainer.train_step()
    torch.testing.assert_close(seen[1]["observation.state"], clean["observation.state"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="obs_noise_std must be non-negative"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "bad", steps=10, obs_noise_std=-0.1))


def test_bf16_training_learns_with_fp32_weights(lowdim_dataset, tmp_path):
    """precision=bf16 trains under autocast: the loss falls as in fp32, weights and the saved policy stay fp32."""
    torch.manual_seed(0)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=200, save_every=200, precision="bf16"))
    run_dir = trainer.fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-3:].mean() < 0.5 * log["loss"][:2].mean()
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    linear = next(m for m in trainer.policy.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)))
    dtypes = []
    linear.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer.train_step()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    policy = load_policy(run_dir / "policy")
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "bad", steps=10, precision="fp8"))


def test_train_device_is_checked_before_anything_is_written(lowdim_dataset, tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="train.device='tpu' is not a device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="training runs on cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.device='cuda', but torch .* sees no CUDA GPU"):
            Trainer(train_cfg(lowdim_dataset, tmp_path / "gpu", steps=10, device="cuda"))
        assert not (tmp_path / "gpu").exists()
    elif torch.cuda.device_count() < 8:
        with pytest.raises(ValueError, match="train.device='cuda:7', but torch sees"):
            resolve_device("cuda:7")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@needs_cuda
def test_cuda_training_learns_resumes_and_exports(lowdim_dataset, tmp_path):
    """On a GPU: the policy and the dataset's tensors live there, the mapping is learned, a resumed run continues
    on the GPU, and the saved policy loads and exports on a machine without one."""
    from robopolicy.export import export_policy
    from robopolicy.runtime import OnnxPolicy
    from tests.test_export import torch_chunk

    torch.manual_seed(0)
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=300, save_every=150, device="cuda",
                                precision="bf16"))
    assert trainer.policy.device.type == "cuda" and trainer.ema_policy.device.type == "cuda"
    assert all(v.device.type == "cuda" for v in trainer.sampler.data.values())
    run_dir = trainer.fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    assert log["loss"][-3:].mean() < 0.5 * log["loss"][:2].mean()
    policy = load_policy(run_dir / "policy")
    assert policy.device.type == "cpu"
    states = torch.tensor([[0.5, -0.5], [-0.8, 0.2], [0.1, 0.9], [-0.3, -0.7]])
    expected = torch.stack([states[:, 0] + 0.5 * states[:, 1], -states[:, 1]], dim=1)
    chunk = policy.predict_chunk({"observation.state": states[:, None]}, generator=torch.Generator().manual_seed(0))
    assert (chunk[:, 0] - expected).abs().mean() < 0.15

    resumed = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=320, resume=True, device="cuda"))
    assert resumed.step == 300 and resumed.policy.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in resumed.ema.shadow_params)
    assert all(v.device.type == "cuda" for state in resumed.optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.ndim)
    resumed.fit()
    on_cpu = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=330, resume=True, device="cpu"))
    assert on_cpu.policy.device.type == "cpu" and on_cpu.step == 320
    on_cpu.fit()

    artifact = export_policy(resumed.ema_policy, tmp_path / "artifact", fps=10)  # the caller's policy is on the GPU
    assert resumed.ema_policy.device.type == "cuda"
    runtime = OnnxPolicy.load(artifact, graph="fused")
    history = {"observation.state": states[:, None].numpy()}
    noise = np.random.default_rng(0).standard_normal((4, 4, 2)).astype(np.float32)
    cpu_policy = load_policy(run_dir / "policy")
    cpu_policy.load_state_dict({k: v.cpu() for k, v in resumed.ema_policy.state_dict().items()})
    np.testing.assert_allclose(runtime.predict_chunk(history, noise=noise), torch_chunk(cpu_policy, history, noise),
                               atol=1e-4, rtol=0)


@needs_cuda
@pytest.mark.parametrize("name", ["diffusion", "flow_unet", "flow_transformer", "sfp_d", "sfp_s", "act", "mlp"])
def test_a_cpu_generator_drives_every_family_on_the_gpu(lowdim_dataset, name, monkeypatch):
    """Training and sampling draw their noise from a CPU generator, so a GPU copy of a policy computes the same
    loss and the same chunk as the CPU original from the same seed (TF32 off)."""
    import copy

    from tests.test_export import make_policy

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # matmuls are full fp32 by default
    cpu = make_policy(lowdim_dataset, name)
    gpu = copy.deepcopy(cpu).to("cuda")
    rng = np.random.default_rng(0)
    batch = {"observation.state": torch.from_numpy(rng.uniform(-1, 1, (8, cpu.config.n_obs_steps, 2))).float(),
             "action": torch.from_numpy(rng.uniform(-1, 1, (8, cpu.config.horizon, 2))).float()}
    losses = [float(p.compute_loss({k: v.to(p.device) for k, v in batch.items()},
                                   generator=torch.Generator().manual_seed(1)).detach()) for p in (cpu, gpu)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)
    loss = gpu.compute_loss({k: v.to("cuda") for k, v in batch.items()}, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in gpu.parameters())
    obs = {"observation.state": batch["observation.state"][:3]}
    chunks = [p.predict_chunk({k: v.to(p.device) for k, v in obs.items()},
                              generator=torch.Generator().manual_seed(2)).cpu() for p in (cpu, gpu)]
    torch.testing.assert_close(chunks[1], chunks[0], atol=1e-4, rtol=0)


def test_resume_continues_exactly(lowdim_dataset, tmp_path):
    straight = Trainer(train_cfg(lowdim_dataset, tmp_path / "a", steps=20))
    straight.fit()
    half = Trainer(train_cfg(lowdim_dataset, tmp_path / "b", steps=10))
    half.fit()
    resumed = Trainer(train_cfg(lowdim_dataset, tmp_path / "b", steps=20, resume=True))
    assert resumed.step == 10
    resumed.fit()
    for (k, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for a, b in zip(straight.ema_policy.parameters(), resumed.ema_policy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant_with_warmup"])
def test_the_learning_rate_follows_the_chosen_schedule(lowdim_dataset, tmp_path, schedule):
    """Warm-up to lr over warmup_steps, then: cosine and linear decay towards 0 at the last step, constant holds."""
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / schedule, steps=40, warmup_steps=10, lr=1e-3,
                                lr_schedule=schedule, log_every=1, save_every=0))
    trainer.fit()
    with open(trainer.run_dir / "train_log.csv") as f:
        lr = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}
    assert lr[5] == pytest.approx(0.5e-3) and lr[10] == pytest.approx(1e-3)  # the warm-up is the same for all
    expected_at_25 = {"cosine": 0.5e-3 * (1 + math.cos(math.pi * 15 / 30)), "linear": 1e-3 * 15 / 30,
                      "constant_with_warmup": 1e-3}[schedule]
    assert lr[25] == pytest.approx(expected_at_25)
    assert lr[40] == pytest.approx(1e-3 if schedule == "constant_with_warmup" else 0.0, abs=1e-12)


def test_an_unknown_lr_schedule_is_refused_by_name(lowdim_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \['cosine', 'linear', 'constant_with_warmup'\], "
                                         r"got 'step'"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=10, lr_schedule="step"))
    assert not (tmp_path / "run").exists()


def test_raw_weights_policy_is_the_training_network_not_its_average(lowdim_dataset, tmp_path):
    """A checkpoint's raw weights (what ema=false would have saved) are the trainer's network, and differ from the
    EMA policy saved beside them."""
    trainer = Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=20, save_every=20))
    trainer.fit()
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    raw = raw_weights_policy(checkpoint)
    for (key, a), b in zip(trainer.policy.state_dict().items(), raw.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
    averaged = load_policy(checkpoint / "policy")
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), averaged.parameters()))
    assert raw.config == averaged.config


def test_a_run_saved_before_a_training_field_existed_resumes_with_its_default(lowdim_dataset, tmp_path):
    """config.yaml of an older run lacks newer fields (here final_approach_weight and obs_noise_std): resume fills
    them with the schema's defaults, which is what that run trained with, instead of failing on the missing key."""
    Trainer(train_cfg(lowdim_dataset, tmp_path / "old", steps=10)).fit()
    saved = OmegaConf.load(tmp_path / "old" / "config.yaml")
    for key in ("final_approach_weight", "final_approach_reward", "final_approach_key", "obs_noise_std"):
        del saved[key]
    OmegaConf.save(saved, tmp_path / "old" / "config.yaml")
    resumed = Trainer(train_cfg(lowdim_dataset, tmp_path / "old", steps=12, resume=True))
    assert resumed.step == 10 and resumed.cfg.final_approach_weight == 1.0 and resumed.cfg.obs_noise_std == 0.0
    assert resumed.sampler.window_weights is None
    resumed.fit()
    assert json.loads((tmp_path / "old" / "train_summary.json").read_text())["steps"] == 12


def test_new_run_refuses_to_overwrite(lowdim_dataset, tmp_path):
    Trainer(train_cfg(lowdim_dataset, tmp_path / "a", steps=10)).fit()
    with pytest.raises(FileExistsError, match="a run already exists"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "a", steps=10))


def test_checkpoints_survive_kill_9(lowdim_dataset, tmp_path):
    """kill -9 mid-training leaves a loadable latest checkpoint, and resume finishes the run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robopolicy.cli", "train", f"dataset.root={lowdim_dataset}",
           "dataset.observation_keys=[observation.state]", f"output_dir={out}", "progress=false", "num_threads=1",
           "policy.down_dims=[32,64]", "policy.horizon=4", "policy.n_obs_steps=1", "policy.n_action_steps=2",
           "compile=false",  # steps=100000 would compile by default (train.compile=auto): checkpoints come late
           "batch_size=32", "steps=100000", "save_every=5", "log_every=5", "keep_checkpoints=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and len(list_checkpoints(out / "checkpoints")) < 2:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list_checkpoints(out / "checkpoints")) >= 1, proc.stderr.read().decode()[-2000:]
    latest = latest_checkpoint(out / "checkpoints")
    load_policy(latest / "policy")  # complete and loadable
    step = int(latest.name.split("-")[1])
    resume = subprocess.run([*cmd[:-4], f"steps={step + 5}", "save_every=5", "log_every=5", "resume=true"],
                            capture_output=True, text=True, timeout=120)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert json.loads((out / "train_summary.json").read_text())["steps"] == step + 5


def test_cli_composes_typed_config():
    cfg = load_config("train", ["policy.num_inference_steps=16", "steps=5"])
    assert cfg.policy.num_inference_steps == 16 and cfg.steps == 5
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    with pytest.raises((ValidationError, ConfigCompositionException), match="steps"):
        load_config("train", ["steps=many"])


POLICY_PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "robopolicy" / "configs" / "policy").glob("*.yaml"))


def test_the_preset_list_is_the_shipped_configs():
    """The parametrization below reads the package's config folder (it once pointed at a folder that does not exist
    and so collected no case at all)."""
    assert {"diffusion", "flow", "sfp", "act", "mlp", "flow_pusht", "mlp_quadrotor"} <= set(POLICY_PRESETS)


def test_the_demo_trains_the_best_recipe_for_its_step_budget():
    """``make demo`` trains section 12's recipe (docs/benchmarks.md) with the demo's own step count: the policy of the
    one command ``policy=flow_pusht``, its mirrored training set, observation noise and near-goal weighting. The
    measured demo figures (section 11, ``bench/reproduce.py --only pusht_demo``) hold for exactly this."""
    demo = load_config("demo").train
    recipe = load_config("train", ["policy=flow_pusht", "dataset.root=bundled:pusht_mirror", "obs_noise_std=0.02",
                                   "final_approach_weight=3", "lr=5e-4", "steps=3000"])
    assert demo.policy == recipe.policy and demo.policy.n_action_steps == 12
    for key in ("obs_noise_std", "final_approach_weight", "lr", "batch_size", "warmup_steps", "steps"):
        assert demo[key] == recipe[key], key
    assert demo.dataset == recipe.dataset and demo.time_budget_min > 0  # the cap stays a safety net


@pytest.mark.parametrize("preset", POLICY_PRESETS)
def test_every_policy_preset_builds_its_family(lowdim_dataset, preset):
    """Each ``policy=<preset>`` composes (presets may extend another) into a valid typed config and a policy."""
    cfg = load_config("train", [f"policy={preset}"])
    policy = make_policy_for_dataset(OmegaConf.to_container(cfg.policy), LeRobotDataset(lowdim_dataset),
                                     ["observation.state"], "action", "min_max")
    assert policy.name == cfg.policy.type
    if preset == "flow_pusht":  # the best state-based PushT recipe's policy: flow executing 12 of 16 actions
        base = load_config("train", ["policy=flow"]).policy
        assert cfg.policy.n_action_steps == 12
        assert {k: v for k, v in cfg.policy.items() if k != "n_action_steps"} == \
            {k: v for k, v in base.items() if k != "n_action_steps"}
    if preset == "mip":  # MIP builds flow's network from the same fields, so a comparison changes only the objective
        from robopolicy.policies.chunk_backbone import ChunkBackboneConfig

        flow = load_config("train", ["policy=flow"]).policy
        shared = {f.name for f in dataclasses.fields(ChunkBackboneConfig)} & set(flow) - {"type"}
        assert {"backbone", "down_dims", "activation", "timestep_scale", "image_encoder", "horizon"} <= shared
        assert {k: cfg.policy[k] for k in shared} == {k: flow[k] for k in shared}
    if preset.endswith("_cpu"):  # a CPU preset overrides only its family's U-Net size and activation
        base = load_config("train", [f"policy={preset.removesuffix('_cpu')}"]).policy
        assert cfg.policy.down_dims == [64, 128] and cfg.policy.activation == "silu"
        assert {k: v for k, v in cfg.policy.items() if k not in ("down_dims", "activation")} == \
            {k: v for k, v in base.items() if k not in ("down_dims", "activation")}


def test_final_approach_weighting_draws_near_goal_pusht_windows_more_often(tmp_path):
    """On the bundled PushT demos (next.reward = coverage / 0.95) weight 4 for reward >= 0.8 multiplies those windows'
    share of training batches by about 3.1 (8 % of frames -> 25 %); a dataset without the column is refused by name."""
    root = Path(__file__).resolve().parents[1] / "datasets" / "pusht" / "lerobot"
    cfg = train_cfg(root, tmp_path / "run", steps=1, final_approach_weight=4.0)
    cfg.dataset.observation_keys = ["observation.state", "observation.environment_state"]
    trainer = Trainer(cfg)
    reward = trainer.dataset.column("next.reward").reshape(-1)
    current = trainer.sampler.windows[:, trainer.policy.config.n_obs_steps - 1]
    share = (reward[current.numpy()] >= 0.8).mean()
    drawn = trainer.sampler.draw_ids(50000, torch.Generator().manual_seed(0))
    weighted_share = (reward[current[drawn].numpy()] >= 0.8).mean()
    expected = 4 * share / (4 * share + 1 - share)
    assert 0.05 < share < 0.12 and abs(weighted_share - expected) < 0.01
    assert trainer.val_sampler is None or trainer.val_sampler.window_weights is None


def test_final_approach_weighting_names_the_missing_column(lowdim_dataset, tmp_path):
    with pytest.raises(KeyError, match="'next.reward' column"):
        Trainer(train_cfg(lowdim_dataset, tmp_path / "run", steps=1, final_approach_weight=2.0))
