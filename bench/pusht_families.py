"""Every policy family on the PushT human demos (state observations), on the same 200 seeds.

    python bench/pusht_families.py train [--only flow,act] [--dp-run DIR]   # train each family (idle machine)
    python bench/pusht_families.py eval  [--only ...] [--episodes 200]       # success, coverage, NFE, timing
    python bench/pusht_families.py onnx  [--only ...]                        # closed loop through ONNX Runtime
    python bench/pusht_families.py table                                     # the markdown table
    python bench/pusht_families.py all

Each family trains with its own budget (minutes on the 2-core machine) into ``<root>/<name>``; Diffusion
Policy reuses the one-hour run of ``bench/pusht_diffusion.py`` (``--dp-run``). Each row of the table is
one trained network plus a sampler setting; results land in ``bench/results/pusht_families/<row>.json``
and are skipped when present (``--force`` reruns), so the script can be resumed after an interruption.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pusht_diffusion import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pusht_families"
COMMON = ["warmup_steps=500", "save_every=0", "log_every=100", "progress=false"]

# name -> (training overrides, minutes). Step counts are sized so the cosine schedule ends near the budget.
MIRROR_DATASET = "outputs/datasets/pusht_mirror"  # relative to the current directory (run from the repository root)
ACT_TA8 = "policy.n_action_steps=8"  # the ACT runs below were trained when Ta 8 was ACT's default (rows set others)
FAMILIES: dict[str, tuple[list[str], float]] = {
    # A quarter of the default U-Net's compute ((32, 64, 128): 9.9 vs 37.6 MFLOPs per evaluation), sized for the
    # export issue's 5 ms per 10-step chunk; one thread.
    "diffusion_small": (["policy=diffusion", "policy.down_dims=[32,64,128]", "steps=12000", "lr=5e-4",
                         "batch_size=256"], 45),
    # Two levels (32, 64): fewer graph nodes, which is what bounds a small U-Net's ONNX Runtime latency here.
    "diffusion_2level": (["policy=diffusion", "policy.down_dims=[32,64]", "steps=15000", "lr=5e-4",
                          "batch_size=256"], 35),
    # Two levels at twice the width (64, 128): the same graph-node count as (32, 64), the compute of (32, 64, 128).
    "diffusion_2level_wide": (["policy=diffusion", "policy.down_dims=[64,128]", "steps=12000", "lr=5e-4",
                               "batch_size=256"], 42),
    # (64, 128) with one residual block per level instead of two: half the operators per step, for 5 ms per chunk.
    "diffusion_2level_wide_1block": (["policy=diffusion", "policy.down_dims=[64,128]", "policy.blocks_per_level=1",
                                      "steps=16000", "lr=5e-4", "batch_size=256"], 42),
    # (64, 128) with kernel size 3: 0.89 of the time of kernel 5, for a 10-step chunk under 5 ms on OpenVINO.
    "diffusion_2level_wide_k3": (["policy=diffusion", "policy.down_dims=[64,128]", "policy.kernel_size=3",
                                  "steps=12000", "lr=5e-4", "batch_size=256"], 40),
    # (64, 128) with SiLU instead of Mish: ONNX Runtime fuses SiLU into one operator (13 % off the chunk's time).
    "diffusion_2level_wide_silu": (["policy=diffusion", "policy.down_dims=[64,128]", "policy.activation=silu",
                                    "steps=12000", "lr=5e-4", "batch_size=256"], 42),
    "flow": (["policy=flow", "steps=3000", "lr=5e-4", "batch_size=256"], 12),
    # The default DP network with SiLU instead of Mish (faster ONNX Runtime graphs), with the recipe of the one-hour
    # default run (bench/pusht_diffusion.py: a 10k-step schedule, which that run cut at 8,617 steps; the two runs'
    # step-8000 checkpoints are the like-for-like rows).
    "diffusion_silu": (["policy=diffusion", "policy.activation=silu", "steps=10000", "lr=5e-4", "batch_size=256",
                        "save_every=1000", "keep_checkpoints=0"], 60),
    # Flow on the CPU-sized U-Net of diffusion_2level_wide_silu (the policy=diffusion_cpu preset's network).
    "flow_2level_wide_silu": (["policy=flow", "policy.down_dims=[64,128]", "policy.activation=silu", "steps=3000",
                               "lr=5e-4", "batch_size=256"], 12),
    # The same with diffusion_2level_wide_silu's 12,000 steps (3,000 gave 24.5 %, the default U-Net's flow 58 %).
    "flow_2level_wide_silu_long": (["policy=flow", "policy.down_dims=[64,128]", "policy.activation=silu",
                                    "steps=12000", "lr=5e-4", "batch_size=256"], 40),
    "sfp_d": (["policy=sfp", "policy.variant=deterministic", "policy.k=2", "steps=7000", "lr=1e-3", "batch_size=256"], 10),
    "sfp_s": (["policy=sfp", "policy.variant=stochastic", "policy.k=2", "steps=5500", "lr=1e-3", "batch_size=256"], 8),
    # SFP-D again with five times the steps (the recorded run used num_threads=1 beside other work: 6-8 steps/s).
    "sfp_d_long": (["policy=sfp", "policy.variant=deterministic", "policy.k=2", "steps=19000", "lr=1e-3", "batch_size=256"], 50),
    # Stabilizing-gain sweep (the quadrotor needed k = 24 instead of 2): 8k steps, num_threads=1 in parallel.
    "sfp_d_k8": (["policy=sfp", "policy.variant=deterministic", "policy.k=8", "steps=8000", "lr=1e-3",
                  "batch_size=256"], 25),
    "sfp_d_k20": (["policy=sfp", "policy.variant=deterministic", "policy.k=20", "steps=8000", "lr=1e-3",
                   "batch_size=256"], 25),
    # SFP-S with the gain that made SFP-D work (k = 8; the earlier SFP-S row had k = 2).
    "sfp_s_k8": (["policy=sfp", "policy.variant=stochastic", "policy.k=8", "steps=8000", "lr=1e-3",
                  "batch_size=256"], 25),
    "act": (["policy=act", ACT_TA8, "steps=3500", "lr=1e-4", "batch_size=64"], 10),
    # ACT again, smaller, with 4x the batch at 3x the rate: 25 minutes see 5x the samples (3 steps/s here).
    "act_small": (["policy=act", ACT_TA8, "policy.dim_model=128", "policy.dim_feedforward=512", "steps=4400", "lr=3e-4",
                   "batch_size=256"], 25),
    # ACT with two observation steps (the velocity the MLP and DP see) and DART-like observation noise.
    "act_small_to2_noise": (["policy=act", ACT_TA8, "policy.dim_model=128", "policy.dim_feedforward=512", "policy.n_obs_steps=2",
                             "obs_noise_std=0.02", "steps=4400", "lr=3e-4", "batch_size=256"], 25),
    # ACT at a size that trains many steps here (d = 64, no dropout, one CVAE-encoder layer: 0.1 s per step of 256
    # against 0.4 s for d = 128): the d = 128 runs were still improving when their 3-4k steps ran out.
    "act_tiny": (["policy=act", ACT_TA8, "policy.dim_model=64", "policy.dim_feedforward=256", "policy.n_heads=4",
                  "policy.dropout=0", "policy.n_vae_encoder_layers=1", "policy.n_obs_steps=2", "obs_noise_std=0.02",
                  "steps=30000", "lr=5e-4", "batch_size=256"], 60),
    # The same network for 55k steps: its loss was still falling when the 30k steps ran out.
    "act_tiny_long": (["policy=act", ACT_TA8, "policy.dim_model=64", "policy.dim_feedforward=256", "policy.n_heads=4",
                       "policy.dropout=0", "policy.n_vae_encoder_layers=1", "policy.n_obs_steps=2", "obs_noise_std=0.02",
                       "steps=55000", "lr=5e-4", "batch_size=256"], 115),
    # act_tiny with 4 candidate chunks and scores instead of the CVAE (z = 0 at inference cannot choose a mode).
    "act_tiny_k4": (["policy=act", ACT_TA8, "policy.dim_model=64", "policy.dim_feedforward=256", "policy.n_heads=4",
                     "policy.dropout=0", "policy.use_vae=false", "policy.n_hypotheses=4", "policy.n_obs_steps=2",
                     "obs_noise_std=0.02", "steps=30000", "lr=5e-4", "batch_size=256"], 60),
    # act_tiny on the demos plus their mirror images (26k steps to fit a 45-minute budget).
    "act_tiny_mirror": (["policy=act", ACT_TA8, "policy.dim_model=64", "policy.dim_feedforward=256", "policy.n_heads=4",
                         "policy.dropout=0", "policy.n_vae_encoder_layers=1", "policy.n_obs_steps=2",
                         "obs_noise_std=0.02", f"dataset.root={MIRROR_DATASET}", "steps=26000", "lr=5e-4",
                         "batch_size=256"], 45),
    # act_tiny_mirror with 40k steps and a checkpoint every 8k (chosen on validation seeds, not the table's).
    "act_tiny_mirror_long": (["policy=act", ACT_TA8, "policy.dim_model=64", "policy.dim_feedforward=256", "policy.n_heads=4",
                              "policy.dropout=0", "policy.n_vae_encoder_layers=1", "policy.n_obs_steps=2",
                              "obs_noise_std=0.02", f"dataset.root={MIRROR_DATASET}", "steps=40000", "lr=5e-4",
                              "batch_size=256", "save_every=8000", "keep_checkpoints=10"], 72),
    "mlp": (["policy=mlp", "steps=40000", "lr=1e-3", "batch_size=256"], 3),
    # Deterministic regressors average PushT's two ways around the block; L1 regresses the median instead.
    "mlp_l1": (["policy=mlp", "policy.loss=l1", "steps=40000", "lr=1e-3", "batch_size=256"], 5),
    "mlp_l1_wide": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "steps=100000", "lr=1e-3",
                     "batch_size=256"], 25),
    # The 512 x 3 L1 MLP with DART-like observation noise (std 0.02 in normalized units, about 5 px).
    "mlp_l1_wide_noise": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
                           "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    "mlp_l1_wide_noise05": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.05",
                             "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    "mlp_l1_wide_noise01": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.01",
                             "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    # The 0.02 run again with another seed: how much of its gain is the seed.
    "mlp_l1_wide_noise_seed1": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
                                 "seed=1", "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    # The 0.02-noise MLP trained as a CVAE decoder (ACT's recipe; z = 0 at inference, same deployed network).
    "mlp_l1_wide_noise_cvae": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
                                "policy.latent_dim=32", "policy.kl_weight=10", "steps=100000", "lr=1e-3",
                                "batch_size=256"], 30),
    # The same MLP with K candidate chunks and scores (relaxed winner-takes-all; the best-scored one runs).
    "mlp_l1_wide_noise_k4": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
                              "policy.n_hypotheses=4", "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    "mlp_l1_wide_noise_k8": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "obs_noise_std=0.02",
                              "policy.n_hypotheses=8", "steps=100000", "lr=1e-3", "batch_size=256"], 25),
    # The 0.02-noise MLP on the demos plus their mirror images across the goal T's symmetry axis (412 episodes;
    # cmd_train builds the dataset with `robopolicy convert mirror=true` when it is missing).
    "mlp_l1_wide_noise_mirror": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]",
                                  "obs_noise_std=0.02", f"dataset.root={MIRROR_DATASET}", "steps=100000", "lr=1e-3",
                                  "batch_size=256"], 25),
    # Twice the data: the same run with 1.5x the steps and time.
    "mlp_l1_wide_noise_mirror_long": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]",
                                       "obs_noise_std=0.02", f"dataset.root={MIRROR_DATASET}", "steps=150000",
                                       "lr=1e-3", "batch_size=256"], 38),
    "mlp_l1_xl": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[1024,1024,1024]", "steps=60000", "lr=5e-4",
                   "batch_size=256"], 45),
    # Longer chunks (T = 32): on the 512 x 3 L1 MLP, executing 8 of 16 beat 1, 2 and 4 (commitment through PushT's
    # decision points) but 15 of 16 lost, the chunk's tail being its worst part; T = 32 lets Ta = 16 execute.
    "mlp_l1_t32": (["policy=mlp", "policy.loss=l1", "policy.hidden_dims=[512,512,512]", "policy.horizon=32",
                    "policy.n_action_steps=16", "steps=80000", "lr=1e-3", "batch_size=256"], 25),
}


@dataclass(frozen=True)
class Row:
    """One table row: a trained network (``run``) and how it samples."""

    key: str
    label: str
    run: str
    sampler: tuple[str | None, int | None] = (None, None)  # set_sampler(kind, steps)
    mode: dict[str, Any] = field(default_factory=dict)  # diffusion set_sampling_mode(**mode)
    ensemble: float | None = None  # ACT temporal ensembling coefficient
    action_steps: int | None = None  # Ta at evaluation, when it differs from the trained config's


ROWS = [
    Row("dp_ddim10", "Diffusion Policy, DDIM 10", "diffusion", ("DDIM", 10)),
    Row("dp_ddim5", "Diffusion Policy, DDIM 5", "diffusion", ("DDIM", 5)),
    Row("dp_warm5", "Diffusion Policy, warm start (5 of 10 DDIM)", "diffusion", ("DDIM", 10),
        {"mode": "warm_start", "warm_start_fraction": 0.5}),
    Row("flow_euler10", "Flow matching, Euler 10", "flow", ("euler", 10)),
    Row("dp_8k_ddim10", "Diffusion Policy, checkpoint 8k of 10k, DDIM 10", "diffusion/checkpoints/step-00008000",
        ("DDIM", 10)),
    Row("dp_silu_8k_ddim10", "Diffusion Policy, SiLU, checkpoint 8k of 10k, DDIM 10", "diffusion_silu/checkpoints/step-00008000",
        ("DDIM", 10)),
    Row("dp_silu_ddim10", "Diffusion Policy, SiLU, 10k steps, DDIM 10", "diffusion_silu", ("DDIM", 10)),
    Row("flow_euler2", "Flow matching, Euler 2", "flow", ("euler", 2)),
    Row("flow_2level_wide_silu", "Flow matching, U-Net (64, 128), SiLU, Euler 10", "flow_2level_wide_silu",
        ("euler", 10)),
    Row("flow_2level_wide_silu_long", "Flow matching, U-Net (64, 128), SiLU, 12k steps, Euler 10",
        "flow_2level_wide_silu_long", ("euler", 10)),
    Row("sfp_d", "Streaming flow (SFP-D), Euler 6 per action", "sfp_d", ("euler", 6)),
    Row("sfp_s", "Streaming flow (SFP-S), Euler 6 per action", "sfp_s", ("euler", 6)),
    Row("sfp_d_long", "Streaming flow (SFP-D, 19k steps), Euler 6 per action", "sfp_d_long", ("euler", 6)),
    Row("sfp_d_long_e2", "Streaming flow (SFP-D, 19k steps), Euler 2 per action", "sfp_d_long", ("euler", 2)),
    Row("sfp_d_long_e1", "Streaming flow (SFP-D, 19k steps), Euler 1 per action", "sfp_d_long", ("euler", 1)),
    Row("sfp_d_k8", "Streaming flow (SFP-D, k = 8), Euler 6 per action", "sfp_d_k8", ("euler", 6)),
    Row("sfp_d_k8_e1", "Streaming flow (SFP-D, k = 8), Euler 1 per action", "sfp_d_k8", ("euler", 1)),
    Row("sfp_s_k8_e1", "Streaming flow (SFP-S, k = 8), Euler 1 per action", "sfp_s_k8", ("euler", 1)),
    Row("sfp_d_k20", "Streaming flow (SFP-D, k = 20), Euler 6 per action", "sfp_d_k20", ("euler", 6)),
    Row("act_chunk", "ACT, chunk of 16, Ta 8", "act"),
    Row("act_ensemble", "ACT, temporal ensembling m = 0.01", "act", ensemble=0.01),
    Row("act_small", "ACT (d = 128, 4.4k steps × 256), chunk of 16, Ta 8", "act_small"),
    Row("act_small_ensemble", "ACT (d = 128, 4.4k steps × 256), temporal ensembling m = 0.01", "act_small",
        ensemble=0.01),
    Row("act_small_to2_noise", "ACT (d = 128, To = 2, observation noise 0.02, 3.1k steps × 256), chunk of 16, Ta 8",
        "act_small_to2_noise"),
    Row("act_tiny", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), chunk of 16, Ta 8", "act_tiny"),
    Row("act_tiny_ensemble", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), temporal ensembling m = 0.01",
        "act_tiny", ensemble=0.01),
    Row("act_tiny_long", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), 55k steps, chunk of 16, Ta 8",
        "act_tiny_long"),
    Row("diffusion_small", "Diffusion Policy, U-Net (32, 64, 128), DDIM 10", "diffusion_small", ("DDIM", 10)),
    Row("diffusion_2level", "Diffusion Policy, U-Net (32, 64), DDIM 10", "diffusion_2level", ("DDIM", 10)),
    Row("diffusion_2level_wide", "Diffusion Policy, U-Net (64, 128), DDIM 10", "diffusion_2level_wide", ("DDIM", 10)),
    Row("diffusion_2level_wide_1block", "Diffusion Policy, U-Net (64, 128), 1 block per level, DDIM 10",
        "diffusion_2level_wide_1block", ("DDIM", 10)),
    Row("diffusion_2level_wide_k3", "Diffusion Policy, U-Net (64, 128), kernel 3, DDIM 10", "diffusion_2level_wide_k3",
        ("DDIM", 10)),
    Row("diffusion_2level_wide_silu", "Diffusion Policy, U-Net (64, 128), SiLU, DDIM 10", "diffusion_2level_wide_silu",
        ("DDIM", 10)),
    Row("mlp", "MLP behaviour cloning", "mlp"),
    Row("mlp_l1", "MLP behaviour cloning, L1 loss", "mlp_l1"),
    Row("mlp_l1_wide", "MLP behaviour cloning, L1 loss, 512 × 3, 88k steps", "mlp_l1_wide"),
    Row("mlp_l1_wide_noise", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02", "mlp_l1_wide_noise"),
    Row("act_tiny_k4", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), 4 hypotheses, no CVAE, chunk of 16, "
        "Ta 8", "act_tiny_k4"),
    Row("act_tiny_mirror", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + mirror images, chunk of "
        "16, Ta 8", "act_tiny_mirror"),
    *[Row(f"act_tiny_ta{ta}", f"ACT (d = 64, To = 2, no dropout, observation noise 0.02), chunk of 16, Ta {ta}",
          "act_tiny", action_steps=ta) for ta in (12, 15)],
    # Execution horizon and ensembling for the mirrored ACT, chosen on validation seeds (``--start-seed 200000``).
    *[Row(f"act_tiny_mirror_ta{ta}", f"ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + mirror images, "
          f"chunk of 16, Ta {ta}", "act_tiny_mirror", action_steps=ta) for ta in (1, 2, 4, 12, 15)],
    Row("act_tiny_mirror_ensemble", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + mirror images, "
        "temporal ensembling m = 0.01", "act_tiny_mirror", ensemble=0.01),
    *[Row(f"act_tiny_mirror_ensemble_m{m:g}", f"ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + mirror "
          f"images, temporal ensembling m = {m:g}", "act_tiny_mirror", ensemble=m) for m in (0.0, 0.1, 0.3)],
    *[Row(f"act_tiny_mirror_long_{step // 1000}k", f"ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + "
          f"mirror images, checkpoint {step // 1000}k of 40k, chunk of 16, Ta 12",
          f"act_tiny_mirror_long/checkpoints/step-{step:08d}", action_steps=12) for step in (8000, 16000, 24000, 32000)],
    Row("act_tiny_mirror_long", "ACT (d = 64, To = 2, no dropout, observation noise 0.02), demos + mirror images, 40k "
        "steps, chunk of 16, Ta 12", "act_tiny_mirror_long", action_steps=12),
    Row("mlp_l1_wide_noise_k4", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, 4 hypotheses",
        "mlp_l1_wide_noise_k4"),
    Row("mlp_l1_wide_noise_k8", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, 8 hypotheses",
        "mlp_l1_wide_noise_k8"),
    Row("mlp_l1_wide_noise_mirror", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, demos + mirror "
        "images", "mlp_l1_wide_noise_mirror"),
    Row("mlp_l1_wide_noise_mirror_long", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, demos + "
        "mirror images, 150k steps", "mlp_l1_wide_noise_mirror_long"),
    Row("mlp_l1_wide_noise05", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.05", "mlp_l1_wide_noise05"),
    Row("mlp_l1_wide_noise01", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.01", "mlp_l1_wide_noise01"),
    Row("mlp_l1_wide_noise_seed1", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, seed 1",
        "mlp_l1_wide_noise_seed1"),
    Row("mlp_l1_wide_noise_cvae", "MLP behaviour cloning, L1 loss, 512 × 3, observation noise 0.02, CVAE training (z = 0)",
        "mlp_l1_wide_noise_cvae"),
    Row("mlp_l1_t32", "MLP behaviour cloning, L1 loss, 512 × 3, T = 32, Ta = 16", "mlp_l1_t32"),
    Row("mlp_l1_xl", "MLP behaviour cloning, L1 loss, 1024 × 3, 57k steps", "mlp_l1_xl"),
]


def policy_dir(root: Path, run: str) -> Path:
    return root / run / "policy"


def train_summary(root: Path, run: str) -> dict[str, Any]:
    """The run's training summary; for ``<run>/checkpoints/step-N`` the steps and time up to that checkpoint
    (read from the training log, so it also works while the run is still going)."""
    run_dir, _, checkpoint = run.partition("/checkpoints/")
    if not checkpoint:
        return json.loads((root / run_dir / "train_summary.json").read_text())
    step = json.loads((root / run / "training_state.json").read_text())["step"]
    with open(root / run_dir / "train_log.csv") as f:
        logged = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
    return {"steps": step, "train_time_s": float(logged[-1]["elapsed_s"]) if logged else float("nan")}


def load_row_policy(directory: str, row: Row):
    """Worker-side factory: a trained policy set up as ``row`` says."""
    from robopolicy.cli import load_policy_for_eval
    from robopolicy.runtime.ensemble import TemporalEnsembler

    policy = load_policy_for_eval(directory, None, None, row.action_steps)
    if row.sampler != (None, None):
        policy.set_sampler(*row.sampler)
    if row.mode:
        policy.set_sampling_mode(**row.mode)
    if row.ensemble is not None:
        policy.config.temporal_ensemble_coeff = row.ensemble
        policy.ensembler = TemporalEnsembler(row.ensemble)
    return policy


def nfe(policy, row: Row) -> tuple[int, int]:
    """Network evaluations per chunk and before the first action can execute."""
    if policy.name == "diffusion":
        from robopolicy.policies.diffusion.fast_sampling import warm_start_num_steps

        n = warm_start_num_steps(policy.config) if row.mode.get("mode") == "warm_start" else policy.config.num_inference_steps
        return n, n
    if policy.name == "flow":
        return policy.nfe, policy.nfe
    if policy.name == "sfp":
        return policy.nfe, policy.nfe_per_action
    if policy.name == "mip":
        return 2, 2
    return 1, 1


def timing(policy, repeats: int = 40) -> dict[str, float]:
    """Batch 1, one thread: time per chunk and time to the first executable action (ms)."""
    torch.set_num_threads(1)
    obs = {f.key: torch.zeros(1, policy.config.n_obs_steps, *f.shape) for f in policy.config.input_features}
    g = torch.Generator().manual_seed(0)
    chunk, first = [], []
    for i in range(repeats + 3):  # warm-up calls; warm start reaches its steady state (previous chunk kept)
        t0 = time.perf_counter()
        policy.predict_chunk(obs, generator=g)
        dt = (time.perf_counter() - t0) * 1e3
        if policy.name == "sfp":
            policy.reset()
            t0 = time.perf_counter()
            next(iter(policy.stream_actions(obs, generator=g, n_actions=1)))
            dt_first = (time.perf_counter() - t0) * 1e3
        else:
            dt_first = dt
        if i >= 3:
            chunk.append(dt)
            first.append(dt_first)
    return {"chunk_p50_ms": statistics.median(chunk), "chunk_p99_ms": float(np.percentile(chunk, 99)),
            "first_action_p50_ms": statistics.median(first), "first_action_p99_ms": float(np.percentile(first, 99))}


def cmd_train(root: Path, names: list[str], dp_run: Path, threads: int = 2) -> None:
    dp_link = root / "diffusion"
    if not dp_link.exists() and dp_run.exists():
        dp_link.parent.mkdir(parents=True, exist_ok=True)
        dp_link.symlink_to(dp_run.resolve())
    for name in names:
        if name not in FAMILIES:
            continue
        out = root / name
        if (out / "train_summary.json").exists():
            print(f"{name}: already trained ({out})")
            continue
        overrides, minutes = FAMILIES[name]
        if f"dataset.root={MIRROR_DATASET}" in overrides and not (REPO / MIRROR_DATASET).exists():
            subprocess.run([sys.executable, "-m", "robopolicy.cli", "convert", f"output={MIRROR_DATASET}",
                            "with_images=false", "mirror=true"], check=True, cwd=REPO)
        common = [c for c in COMMON if c.split("=")[0] not in {o.split("=")[0] for o in overrides}]
        cmd = [sys.executable, "-m", "robopolicy.cli", "train", *overrides, *common, f"num_threads={threads}", f"time_budget_min={minutes}", f"output_dir={out}"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)


def cmd_eval(root: Path, rows: list[Row], episodes: int, force: bool, workers: int = 2,
             start_seed: int = 100000) -> None:
    from robopolicy.sim.evaluate import evaluate

    RESULTS.mkdir(parents=True, exist_ok=True)
    for row in rows:
        out = RESULTS / f"{row.key}.json"
        directory = policy_dir(root, row.run)
        if out.exists() and not force:
            print(f"{row.key}: done ({out})")
            continue
        if not directory.exists():
            print(f"{row.key}: no trained policy at {directory}; skipped")
            continue
        policy = load_row_policy(str(directory), row)
        n_chunk, n_first = nfe(policy, row)
        times = timing(policy)
        eval_dir = root / "eval" / (row.key if start_seed == 100000 else f"{row.key}_seed{start_seed}")
        result = evaluate(partial(load_row_policy, str(directory), row), n_episodes=episodes, start_seed=start_seed,
                          n_workers=workers, n_videos=2, output_dir=eval_dir, progress=True).to_dict()
        summary = train_summary(root, row.run)
        keep = ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage", "max_coverage_ci95",
                "mean_max_reward", "chunk_latency_ms", "wall_s")
        payload = {"machine": machine(), "row": row.label, "run": row.run, "policy_dir": str(directory),
                   "start_seed": start_seed,
                   "nfe_per_chunk": n_chunk, "nfe_to_first_action": n_first, "timing_1thread": times,
                   "train": summary, "eval": {k: result.get(k) for k in keep}}
        out.write_text(json.dumps(payload, indent=2))
        print(f"{row.label}: success {result['success_rate']:.1%} {result['success_ci95']}, coverage "
              f"{result['mean_max_coverage']:.3f}, chunk {times['chunk_p50_ms']:.2f} ms, first action "
              f"{times['first_action_p50_ms']:.3f} ms", flush=True)


def cmd_onnx(root: Path, rows: list[Row], episodes: int, force: bool, provider: str = "cpu", graph: str = "per_step",
             workers: int = 2) -> None:
    """Export each trained family and evaluate it through the torch-free runtime on the same seeds.

    ``provider`` "openvino" runs the same artifact on OpenVINO's runtime (results ``<row>_openvino[_fused].json``).
    """
    from robopolicy.export import export_policy
    from robopolicy.runtime import OnnxPolicy
    from robopolicy.sim.evaluate import evaluate

    suffix = ("_onnx" if provider == "cpu" else f"_{provider}") + ("" if graph == "per_step" else f"_{graph}")
    for row in rows:
        out = RESULTS / f"{row.key}{suffix}.json"
        if (out.exists() and not force) or not policy_dir(root, row.run).exists():
            continue
        artifact = root / "onnx" / row.key  # per row: the manifest carries sampler and ensembling settings
        if not (artifact / "manifest.json").exists():
            export_policy(load_row_policy(str(policy_dir(root, row.run)), row), artifact)
        result = evaluate(partial(OnnxPolicy.load, str(artifact), graph=graph, providers=(provider,)),
                          n_episodes=episodes, n_workers=workers, n_videos=0, progress=True).to_dict()
        keep = ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage", "chunk_latency_ms")
        out.write_text(json.dumps({"machine": machine(), "row": row.label, "artifact": str(artifact), "graph": graph,
                                   "provider": provider, "eval": {k: result.get(k) for k in keep}}, indent=2))
        print(f"{row.label} ({provider}, {graph}): success {result['success_rate']:.1%} {result['success_ci95']}",
              flush=True)


def cmd_table() -> str:
    lines = ["| family, sampler | success (95 % CI) | mean max coverage | NFE / chunk | NFE to 1st action | "
             "time / chunk p50 (ms) | time to 1st action p50 (ms) | training |",
             "|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        path = RESULTS / f"{row.key}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        e, t, tr = r["eval"], r["timing_1thread"], r["train"]
        lo, hi = e["success_ci95"]
        lines.append(f"| {r['row']} | {e['success_rate']:.1%} ({lo:.1%}–{hi:.1%}) | {e['mean_max_coverage']:.3f} | "
                     f"{r['nfe_per_chunk']} | {r['nfe_to_first_action']} | {t['chunk_p50_ms']:.2f} | "
                     f"{t['first_action_p50_ms']:.3f} | {tr['steps']} steps, {tr['train_time_s'] / 60:.0f} min |")
    table = "\n".join(lines)
    print(table)
    return table


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "eval", "onnx", "table", "all"])
    parser.add_argument("--root", type=Path, default=REPO / "outputs" / "bench" / "pusht_families")
    parser.add_argument("--dp-run", type=Path, default=REPO / "outputs" / "bench" / "pusht_diffusion")
    parser.add_argument("--only", default="", help="comma-separated family names (train) or row keys (eval/onnx)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--start-seed", type=int, default=100000,
                        help="eval: first seed (the table's are 100000...; pick settings on others, e.g. 200000)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training (1 to train two at once)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--provider", default="cpu", help="onnx: cpu (ONNX Runtime), openvino, or tensorrt_engine[_fp16] "
                        "(a CUDA GPU; use --workers 1 so one process builds the engines)")
    parser.add_argument("--graph", default="per_step", choices=["per_step", "fused"], help="onnx: graph kind")
    parser.add_argument("--workers", type=int, default=2, help="eval/onnx: evaluation processes")
    args = parser.parse_args()
    RESULTS = args.results
    only = [s for s in args.only.split(",") if s]
    rows = [r for r in ROWS if not only or r.key in only or r.run in only]
    if args.command in ("train", "all"):
        cmd_train(args.root, only or list(FAMILIES), args.dp_run, args.threads)
    if args.command in ("eval", "all"):
        cmd_eval(args.root, rows, args.episodes, args.force, args.workers, args.start_seed)
    if args.command in ("onnx", "all"):
        onnx_rows = [r for r in rows if r.key in ("flow_euler10", "sfp_d", "sfp_d_k8", "act_chunk", "mlp")] if not only else rows
        cmd_onnx(args.root, onnx_rows, args.episodes, args.force, args.provider, args.graph, args.workers)
    if args.command in ("table", "all"):
        cmd_table()


if __name__ == "__main__":
    main()
