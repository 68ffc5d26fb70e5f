"""The training loop: in-memory windows, AdamW + cosine warm-up, EMA, crash-safe checkpoints.

Everything random (batch indices, noise, diffusion timesteps) draws from one torch.Generator whose
state is checkpointed, so ``resume=true`` continues the exact same run after a crash.
Launched by ``torchrun``, the same loop runs data-parallel: see :mod:`robopolicy.train.distributed`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from robopolicy.configs import TrainConfig, default_output_dir, policy_config_from, resolve_path
from robopolicy.data.normalize import Normalizer
from robopolicy.data.reader import LeRobotDataset
from robopolicy.data.sampler import WindowSampler
from robopolicy.policies.base import FeatureSpec, Policy
from robopolicy.policies.encoders import set_image_stats
from robopolicy.policies.registry import get_policy_class
from robopolicy.train import checkpoint as ckpt
from robopolicy.train import distributed, speed

console = Console()
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
LR_SCHEDULES = ("cosine", "linear", "constant_with_warmup")  # diffusers' names, all with linear warm-up
LOG_FIELDS = ["step", "loss", "val_loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "eval_success", "eval_coverage"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: training stops rather than save a broken policy."""


def make_policy_for_dataset(policy_cfg: DictConfig | dict[str, Any], dataset: LeRobotDataset, obs_keys: list[str],
                            action_key: str, normalization: str) -> Policy:
    """A fresh policy whose feature specs and normalization come from the dataset."""
    for key in [*obs_keys, action_key]:
        if key not in dataset.features:
            raise KeyError(f"{dataset.root}: feature {key!r} not in dataset (has {sorted(dataset.features)})")
    spec = lambda k: FeatureSpec(k, tuple(dataset.features[k]["shape"]))  # noqa: E731
    # Cameras stay raw pixels (uint8, 0..255); the policy's image encoder scales and normalizes them.
    cameras = [k for k in obs_keys if k in dataset.video_keys]
    modes = {k: "identity" if k in cameras else normalization for k in [*obs_keys, action_key]}
    config = policy_config_from(policy_cfg, input_features=[spec(k) for k in obs_keys],
                                output_features=[spec(action_key)], normalization=modes, fps=float(dataset.fps))
    stats = {k: {name: np.asarray(v, dtype=np.float64).tolist() for name, v in dataset.stats[k].items()} for k in modes}
    policy = get_policy_class(config.type)(config, Normalizer(stats, modes))
    set_image_stats(policy, {k: dataset.stats[k] for k in cameras})
    return policy


def add_observation_noise(batch: dict[str, torch.Tensor], keys: list[str], std: float,
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A copy of ``batch`` whose ``keys`` carry independent N(0, std^2) noise; actions stay as demonstrated."""
    noisy = dict(batch)
    for key in keys:
        noisy[key] = batch[key] + std * torch.randn(batch[key].shape, generator=generator).to(batch[key].device)
    return noisy


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; a CUDA request on a machine without one is an error, not a CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"train.device={name!r} is not a device (expected auto, cpu, cuda or cuda:N)") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.device={name!r}: training runs on cpu or cuda")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError(f"train.device={name!r}, but torch {torch.__version__} sees no CUDA GPU "
                               f"(a CPU-only build or no driver); use train.device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"train.device={name!r}, but torch sees {count} CUDA GPU(s)")
    return device


def _new_run_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return resolve_path(cfg.output_dir)
    return default_output_dir("train")


def _find_resume_dir(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return resolve_path(cfg.output_dir)
    runs = sorted((Path.cwd() / "outputs" / "train").glob("*/checkpoints"))
    if not runs:
        raise FileNotFoundError("resume=true but no output_dir given and no earlier run under outputs/train/")
    return runs[-1].parent


class Trainer:
    def __init__(self, cfg: DictConfig):
        if cfg.resume:
            self.run_dir = _find_resume_dir(cfg)
            saved = self.run_dir / "config.yaml"
            if not saved.is_file():
                raise FileNotFoundError(f"{saved}: cannot resume, the run has no saved config")
            # The run's own config wins; only how long to train (and on which device) may change on resume.
            # Merged onto the schema: a run saved before a field existed resumes with that field's default (what it
            # trained with), instead of failing on the missing key.
            resumed = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(saved))
            for key in ("steps", "time_budget_min", "progress", "eval_every", "device",  # checkpoints are device-free
                        "dist_timeout_min", "dist_eval_timeout_min",
                        "compile", "compile_mode", "fused_optimizer", "ema_foreach",  # the fast path: same steps
                        "fused_activations"):
                resumed[key] = cfg[key]
            resumed.resume = True
            cfg = resumed
        else:
            self.run_dir = _new_run_dir(cfg)
            if (self.run_dir / "checkpoints").exists():
                raise FileExistsError(f"{self.run_dir}: a run already exists here (use resume=true or another output_dir)")
        if cfg.eval_every:
            from robopolicy.sim.envs import check_env_name

            check_env_name(cfg.env.name)  # fail now, not at the first evaluation
        self.device = resolve_device(str(cfg.get("device", "auto")))  # before anything is written
        if cfg.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
        if cfg.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {cfg.precision!r}")
        self.cfg = cfg
        self.dist: distributed.DistContext | None = None  # set when torchrun started this process
        if distributed.launched_by_torchrun():
            self.dist = distributed.setup(self.device, cfg.batch_size, cfg.dist_timeout_min, cfg.dist_eval_timeout_min)
            self.device = self.dist.device
        self.is_main = self.dist is None or self.dist.is_main  # rank 0 alone keeps EMA, logs, evaluates, saves
        # Checked before anything is written; the CUDA-graph modes fall back to default under torchrun
        self.compile_mode = speed.compile_mode_for(cfg.compile_mode, distributed=self.dist is not None)
        if self.is_main:  # (without output_dir, other ranks may time-stamp another name: they write nothing)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)

        self.dataset = LeRobotDataset(resolve_path(cfg.dataset.root))
        obs_keys, action_key = list(cfg.dataset.observation_keys), cfg.dataset.action_key
        self.policy = make_policy_for_dataset(cfg.policy, self.dataset, obs_keys, action_key, cfg.dataset.normalization)
        pc = self.policy.config
        bounds = self.dataset.episode_bounds
        n_val = int(cfg.dataset.val_episodes)
        if n_val >= len(bounds):
            raise ValueError(f"dataset.val_episodes={n_val} leaves no training episodes (dataset has {len(bounds)})")
        with torch.no_grad():
            # Camera frames stay uint8 (N, H, W, C); the encoder converts each batch.
            data = {k: torch.from_numpy(self.dataset.video_frames(k)) if k in self.dataset.video_keys
                    else self.policy.normalizer.normalize(k, torch.from_numpy(self.dataset.column(k)).float())
                    for k in [*obs_keys, action_key]}
        self.policy.to(self.device)
        data = {k: v.to(self.device) for k, v in data.items()}  # batches are gathered where they are used
        make = lambda b: WindowSampler(data, b, obs_keys, action_key, pc.n_obs_steps, pc.horizon, pc.n_action_steps)  # noqa: E731
        self.noisy_obs_keys = [k for k in obs_keys if k not in self.dataset.video_keys]
        if cfg.obs_noise_std < 0:
            raise ValueError(f"obs_noise_std must be non-negative, got {cfg.obs_noise_std}")
        self.sampler = make(bounds[: len(bounds) - n_val])
        self.val_sampler = make(bounds[len(bounds) - n_val :]) if n_val else None
        if cfg.final_approach_weight != 1:  # the validation loss stays on uniform windows
            key = cfg.final_approach_key
            if key not in self.dataset.features:
                raise KeyError(f"final_approach_weight={cfg.final_approach_weight} weighs windows by the dataset's "
                               f"{key!r} column, which {cfg.dataset.root} lacks (it has {sorted(self.dataset.features)})")
            self.sampler.weigh(self.dataset.column(key), cfg.final_approach_reward, cfg.final_approach_weight)

        self.optimizer = speed.make_adamw(self.policy.parameters(), cfg.lr, tuple(cfg.betas), cfg.weight_decay,
                                          self.device, fused=cfg.fused_optimizer)
        self.lr_scheduler = get_scheduler(cfg.lr_schedule, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                          num_training_steps=cfg.steps)
        self.ema = EMAModel(self.policy.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True,
                            power=cfg.ema_power, foreach=cfg.ema_foreach) if cfg.ema and self.is_main else None
        self.ema_policy = copy.deepcopy(self.policy) if self.ema is not None else self.policy
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.elapsed_before = 0.0
        if cfg.resume:
            self._restore()
        elif self.is_main:
            OmegaConf.save(cfg, self.run_dir / "config.yaml")
        # After the EMA copy: only the training network is compiled; the EMA policy that is saved stays eager.
        self.compiled = (speed.resolve_compile(cfg.compile, self.device, cfg.steps)
                         and speed.compile_network(self.policy, self.compile_mode))
        # Mish layers switched to the compiled kernels (0: none); a compiled network leaves them to inductor
        self.fused_activations = (speed.fuse_activations(self.policy, self.device)
                                  if cfg.fused_activations and not self.compiled else 0)
        if self.is_main:
            speed.suggest_precision(self.device, cfg.precision, self.policy)
        self.compile_s: float | None = None  # the first step's time when compiled
        self._compile_tried = False
        self.ddp = distributed.wrap(self.policy, self.dist) if self.dist is not None else None

    # ---- checkpointing -------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in self.policy.state_dict().items()}
        opt_tensors, opt_meta = ckpt.optimizer_to_flat(self.optimizer)
        tensors.update(opt_tensors)
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta: dict[str, Any] = {"step": self.step, "optimizer": opt_meta, "elapsed_s": self.elapsed(),
                                "world_size": self.dist.world_size if self.dist is not None else 1,
                                "lr_scheduler": {k: v for k, v in self.lr_scheduler.state_dict().items() if k != "lr_lambdas"}}
        if self.ema is not None:
            ema_sd = self.ema.state_dict()
            for i, p in enumerate(ema_sd.pop("shadow_params")):
                tensors[f"ema.{i}"] = p
            meta["ema"] = ema_sd
        return tensors, meta

    def save(self) -> Path:
        self._sync_ema()
        tensors, meta = self._state()
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.ema_policy, tensors, meta,
                                    keep=self.cfg.keep_checkpoints)

    def _restore(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"{self.run_dir / 'checkpoints'}: no complete checkpoint to resume from")
        tensors, meta = ckpt.load_checkpoint(path)
        self.policy.load_state_dict(ckpt.model_weights(tensors))
        ckpt.optimizer_from_flat(self.optimizer, tensors, meta["optimizer"])
        self.lr_scheduler.load_state_dict({**meta["lr_scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.ema is not None:
            shadow = [tensors[f"ema.{i}"] for i in range(len(list(self.policy.parameters())))]
            self.ema.load_state_dict({**meta["ema"], "shadow_params": shadow})
            self.ema.to(self.device)  # checkpoints hold CPU tensors
        self.step = int(meta["step"])
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        console.print(f"resumed from {path} at step {self.step}")

    def _sync_ema(self) -> None:
        if self.ema is not None:
            self.ema.copy_to(self.ema_policy.parameters())

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    # ---- the loop ------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        if self.compiled and not self._compile_tried:  # the first compiled call compiles: a failure means eager
            self._compile_tried = True
            rng = self.generator.get_state(), torch.get_rng_state()
            try:
                return self._train_step()
            except Exception as e:  # inductor's errors have no common base class; nothing was updated yet
                console.print(f"[yellow]train.compile: compiling the network failed ({speed.describe_error(e)}); "
                              "training in eager mode")
                speed.uncompile_network(self.policy)
                self.compiled = False
                self.optimizer.zero_grad(set_to_none=True)
                self.generator.set_state(rng[0])
                torch.set_rng_state(rng[1])
        return self._train_step()

    def _train_step(self) -> tuple[float, float]:
        self.policy.train()
        if self.dist is None:
            generator, loss_fn = self.generator, self.policy.compute_loss
            batch = self.sampler.sample(self.cfg.batch_size, generator=generator)
        else:  # this rank's slice of the global batch, its own noise, gradients all-reduced by DDP
            batch = self.dist.sample(self.sampler, self.cfg.batch_size, self.generator)
            generator, loss_fn = self.dist.step_generator(self.cfg.seed, self.step), self.ddp
        if self.cfg.obs_noise_std > 0:
            batch = add_observation_noise(batch, self.noisy_obs_keys, self.cfg.obs_noise_std, generator)
        if self.compiled and self.compile_mode in speed.CUDA_GRAPH_MODES:
            # A new iteration for CUDA graph trees: the last step's graph outputs may be overwritten by this replay
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.policy.device.type, dtype=PRECISIONS[self.cfg.precision],
                            enabled=self.cfg.precision != "fp32"):
            loss = loss_fn(batch, generator=generator).float()
        if not torch.isfinite(loss):  # DDP's loss is the rank's own; a collective fails on the others
            # Checked before the update: the weights, optimizer and EMA still hold the last finite step.
            raise NonFiniteLossError(
                f"step {self.step + 1}: the training loss is {loss.item()} (not finite); training stopped without "
                f"saving a policy. Check the dataset's statistics ({self.dataset.root / 'meta/stats.json'}) and "
                "values, or lower the learning rate; checkpoints written before this step are intact")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.policy.parameters())
        self.step += 1
        if self.dist is not None:
            loss = self.dist.mean(loss)  # the global batch's loss, the same on every rank
        return loss.item(), grad_norm.item()

    def _keep_going(self, budget_s: float) -> bool:
        going = self.step < self.cfg.steps and self.elapsed() < budget_s
        if self.dist is not None and budget_s < math.inf:
            going = self.dist.all_true(going)  # clocks differ: all ranks stop at the same step
        return going

    def _evaluates_now(self) -> bool:
        """Whether rank 0 evaluates after this step (the other ranks wait for it then)."""
        return bool(self.cfg.eval_every) and self.step % self.cfg.eval_every == 0

    def _follow_main(self) -> Path:
        """Ranks other than 0: the same steps as rank 0, whose collectives they join; rank 0 alone writes."""
        self._t0 = time.perf_counter()
        budget_s = self.cfg.time_budget_min * 60 if self.cfg.time_budget_min else math.inf
        while self._keep_going(budget_s):
            self.train_step()
            if self._evaluates_now():
                self.dist.wait_for_main()
        self.dist.close()
        return self.run_dir

    @torch.no_grad()
    def validation_loss(self, n_batches: int = 4) -> float:
        if self.val_sampler is None:
            return float("nan")
        self._sync_ema()
        self.ema_policy.eval()
        g = torch.Generator().manual_seed(1234)  # fixed batches: comparable across steps
        return float(np.mean([float(self.ema_policy.compute_loss(self.val_sampler.sample(self.cfg.batch_size, g), g))
                              for _ in range(n_batches)]))

    def evaluate(self) -> dict[str, Any]:
        from functools import partial

        from robopolicy.policies.registry import load_policy
        from robopolicy.sim.envs import env_factory
        from robopolicy.sim.evaluate import evaluate

        self._sync_ema()
        snapshot = self.run_dir / "eval" / ckpt.checkpoint_name(self.step)
        self.ema_policy.save(snapshot / "policy")
        if self.cfg.env.name.startswith("quadrotor_"):
            from robopolicy.sim.envs import evaluate_quadrotor

            result = evaluate_quadrotor(load_policy(snapshot / "policy"), self.cfg.env.name,
                                        n_episodes=self.cfg.eval_episodes, seed=0)
            (snapshot / "eval.json").write_text(json.dumps(result, indent=2))
            return {**result, "mean_max_coverage": float("nan")}
        if self.cfg.env.name.startswith("newton_"):  # vectorized worlds; validation seeds, apart from eval's
            from robopolicy.sim.envs import evaluate_newton

            result = evaluate_newton(load_policy(snapshot / "policy"), self.cfg.env.name,
                                     n_episodes=self.cfg.eval_episodes, seed=500_000, n_envs=self.cfg.eval_episodes)
            (snapshot / "eval.json").write_text(json.dumps(result, indent=2))
            return {**result, "mean_max_coverage": float("nan")}
        input_keys = [f.key for f in self.policy.config.input_features]
        videos = 1 if self.cfg.env.name == "pusht" else 0  # arm videos need an offscreen GL context
        result = evaluate(partial(load_policy, str(snapshot / "policy")), n_episodes=self.cfg.eval_episodes,
                          env_factory=env_factory(self.cfg.env.name, input_keys, render=videos > 0),
                          n_workers=self.cfg.eval_workers, max_steps=self.cfg.env.max_steps, n_videos=videos,
                          output_dir=snapshot, progress=False)
        return result.to_dict()

    def fit(self) -> Path:
        if not self.is_main:
            return self._follow_main()
        cfg = self.cfg
        log_path = self.run_dir / "train_log.csv"
        new_log = not log_path.exists()
        log_file = open(log_path, "a", newline="")
        writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
        self._t0 = time.perf_counter()
        budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
        window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
        n_params = sum(p.numel() for p in self.policy.parameters())
        console.print(f"training {self.policy.name} ({n_params / 1e6:.2f} M parameters) on {self.dataset.num_episodes} "
                      f"episodes / {len(self.sampler)} windows -> {self.run_dir}")
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with log_file, Progress(*columns, console=console, disable=not cfg.progress) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, status="")
            while self._keep_going(budget_s):
                t_step = time.perf_counter()
                loss, grad_norm = self.train_step()
                if self.compiled and self.compile_s is None:
                    self.compile_s = time.perf_counter() - t_step
                    console.print(f"compiled the network in {self.compile_s:.0f} s (cached for later runs)")
                window_loss += loss
                window_n += 1
                bar.update(task, completed=self.step)
                row: dict[str, Any] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - window_t
                    row = {"step": self.step, "loss": window_loss / window_n, "lr": self.lr_scheduler.get_last_lr()[0],
                           "grad_norm": grad_norm, "samples_per_s": window_n * cfg.batch_size / dt,
                           "elapsed_s": round(self.elapsed(), 2)}
                    if self.val_sampler is not None:
                        row["val_loss"] = self.validation_loss()
                    bar.update(task, status=f"loss {row['loss']:.4f} | {row['samples_per_s']:.0f} samples/s")
                    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
                if self._evaluates_now():  # on its own schedule, not log_every's
                    result = self.evaluate()
                    if self.dist is not None:
                        self.dist.wait_for_main()
                    row.update(step=self.step, eval_success=result["success_rate"],
                               eval_coverage=result["mean_max_coverage"])
                    console.print(f"step {self.step}: success {result['success_rate']:.2f}, "
                                  f"mean max coverage {result['mean_max_coverage']:.3f}")
                if row:
                    writer.writerow(row)
                    log_file.flush()
                if cfg.save_every > 0 and self.step % cfg.save_every == 0:
                    self.save()
        self.save()
        self._sync_ema()
        self.ema_policy.save(self.run_dir / "policy")
        summary = {"steps": self.step, "steps_planned": cfg.steps,
                   "stopped_by": "steps" if self.step >= cfg.steps else "time_budget",
                   "train_time_s": round(self.elapsed(), 1), "batch_size": cfg.batch_size,
                   "compiled": self.compiled, "compile_mode": self.compile_mode, "compile_s": self.compile_s,
                   "precision": cfg.precision, "fused_activations": self.fused_activations,
                   "parameters": n_params, "policy_dir": str(self.run_dir / "policy")}
        if self.dist is not None:
            summary["world_size"] = self.dist.world_size  # batch_size is the global batch
            self.dist.close()
        (self.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        console.print(f"done: {self.step} steps in {summary['train_time_s']:.0f} s; policy saved to {self.run_dir / 'policy'}")
        return self.run_dir


def train(cfg: DictConfig) -> Path:
    return Trainer(cfg).fit()
