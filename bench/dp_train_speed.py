"""Training speed against the original Diffusion Policy code (real-stanford/diffusion_policy), in one run.

    python bench/dp_train_speed.py --dp-path /path/to/diffusion_policy [--dp-python /path/to/venv/bin/python]
        [--zarr ../shared/data/pusht/pusht_cchi_v7_replay.zarr] [--steps 60] [--warmup 5] [--rounds 3]
        [--threads 2] [--batch-size 256] [--variants default,eager] [--out bench/results/dp_train_speed]

The DP checkout is never part of this repository: obtain it elsewhere (``git clone`` at commit 5ba07ac) and give its
path. Its training path needs zarr 2, numba, einops and diffusers (a side venv passed as ``--dp-python``); with
diffusers >= 0.2x, ``diffusion_policy/model/common/lr_scheduler.py`` must import Union/Optional from typing and
Optimizer from torch.optim (docs/benchmarks.md lists the one-line patch).

Each side runs in its own worker process, set up once, that waits for "run N steps" requests; the parent asks
them in turn, round after round (interleaved), so slow drift in the machine's load hits both sides alike.
- DP: its own ``PushTLowdimDataset`` (ReplayBuffer from the zarr) and ``DataLoader`` (num_workers=1, shuffled,
  re-created each epoch as in its config), ``DiffusionUnetLowdimPolicy`` around its ``ConditionalUnet1D``, AdamW
  (lr 1e-4, betas 0.95/0.999, weight decay 1e-6), its cosine schedule and its ``EMAModel`` -- the step of
  ``TrainDiffusionUnetLowdimWorkspace.run`` (no gradient clipping there).
- robopolicy: ``Trainer.train_step`` on the bundled PushT dataset (the same 206 episodes, converted from that
  zarr), per variant: ``default`` (the shipped defaults: fused AdamW, foreach EMA, compiled Mish kernels),
  ``bf16`` (plus ``train.precision=bf16``: bf16 autocast with the reordered convolution backwards), ``compiled``
  (plus ``train.compile=true``), ``eager`` (every fast-path switch off) or any ``name=override;override`` of
  train config fields.
Both: ConditionalUnet1D with down_dims (64, 128, 256), step embedding 128, kernel 5, 8 groups; batch 256; the
same thread count. Reports samples/s per round, the per-round ratio robopolicy / DP and the ratio of totals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"default": [], "bf16": ["precision=bf16"], "compiled": ["compile=true"],
            "eager": ["compile=false", "fused_optimizer=false", "ema_foreach=false", "fused_activations=false"]}


# ---- workers (each in its own process) ------------------------------------------------------------------------
def _serve(setup, step) -> None:
    """Answer {"steps": N} requests on stdin with {"seconds": ..., "loss": ...} on the real stdout; anything the
    code under test prints goes to stderr."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    t0 = time.perf_counter()
    info = setup()
    info["setup_s"] = time.perf_counter() - t0
    reply.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        n = json.loads(line)["steps"]
        t0 = time.perf_counter()
        losses = [step() for _ in range(n)]
        reply.write(json.dumps({"seconds": time.perf_counter() - t0, "loss": sum(losses) / len(losses)}) + "\n")


def dp_worker(args) -> None:
    import copy

    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(Path(args.dp_path).resolve()))
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from diffusion_policy.common.pytorch_util import dict_apply
    from diffusion_policy.dataset.pusht_dataset import PushTLowdimDataset
    from diffusion_policy.model.common.lr_scheduler import get_scheduler
    from diffusion_policy.model.diffusion.conditional_unet1d import ConditionalUnet1D
    from diffusion_policy.model.diffusion.ema_model import EMAModel
    from diffusion_policy.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy

    torch.set_num_threads(args.threads)
    state = {}

    def setup():
        torch.manual_seed(42)
        # config/task/pusht_lowdim.yaml, all training episodes (its max_train_episodes=90 only shortens epochs)
        dataset = PushTLowdimDataset(args.zarr, horizon=16, pad_before=1, pad_after=7, seed=42, val_ratio=0.02)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=1, shuffle=True, pin_memory=False,
                            persistent_workers=False)
        net = ConditionalUnet1D(input_dim=2, local_cond_dim=None, global_cond_dim=40, diffusion_step_embed_dim=128,
                                down_dims=[64, 128, 256], kernel_size=5, n_groups=8, cond_predict_scale=True)
        scheduler = DDPMScheduler(num_train_timesteps=100, beta_start=0.0001, beta_end=0.02,
                                  beta_schedule="squaredcos_cap_v2", variance_type="fixed_small", clip_sample=True,
                                  prediction_type="epsilon")
        model = DiffusionUnetLowdimPolicy(model=net, noise_scheduler=scheduler, horizon=16, obs_dim=20, action_dim=2,
                                          n_action_steps=8, n_obs_steps=2, num_inference_steps=100,
                                          obs_as_local_cond=False, obs_as_global_cond=True,
                                          pred_action_steps_only=False, oa_step_convention=True)
        ema_model = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
        normalizer = dataset.get_normalizer()
        model.set_normalizer(normalizer)
        ema_model.set_normalizer(normalizer)
        lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                     num_training_steps=len(loader) * 5000, last_epoch=-1)
        ema = EMAModel(model=ema_model, update_after_step=0, inv_gamma=1.0, power=0.75, min_value=0.0,
                       max_value=0.9999)

        def batches():
            while True:  # epochs; a fresh DataLoader iterator (and worker process) each, as in DP's loop
                yield from loader

        state.update(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, ema=ema, batches=batches(),
                     dict_apply=dict_apply)
        model.train()
        return {"side": "dp", "parameters": sum(p.numel() for p in net.parameters()), "windows": len(dataset),
                "torch": torch.__version__, "threads": torch.get_num_threads()}

    def step():
        s = state
        batch = s["dict_apply"](next(s["batches"]), lambda x: x.to("cpu", non_blocking=True))
        raw_loss = s["model"].compute_loss(batch)
        raw_loss.backward()  # gradient_accumulate_every = 1
        s["optimizer"].step()
        s["optimizer"].zero_grad()
        s["lr_scheduler"].step()
        s["ema"].step(s["model"])
        return raw_loss.item()

    _serve(setup, step)


def robopolicy_worker(args) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from robopolicy.configs import load_config
    from robopolicy.train.trainer import Trainer

    state = {}

    def setup():
        out = tempfile.mkdtemp(prefix="dp_train_speed_")
        cfg = load_config("train", [f"output_dir={out}", "progress=false", "save_every=0", "steps=100000",
                                    f"batch_size={args.batch_size}", f"num_threads={args.threads}",
                                    "policy.down_dims=[64,128,256]", "policy.step_embed_dim=128",
                                    *[o for o in args.overrides.split(";") if o]])
        trainer = Trainer(cfg)
        flops = None
        if not trainer.compiled:  # the step's arithmetic (the same on both sides: the networks are the same)
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                trainer.train_step()
            flops = counter.get_total_flops()
        t0 = time.perf_counter()
        trainer.train_step()  # a compiled network compiles here
        state["trainer"] = trainer
        return {"side": "robopolicy", "parameters": sum(p.numel() for p in trainer.policy.net.parameters()),
                "windows": len(trainer.sampler), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "compiled": trainer.compiled, "first_step_s": time.perf_counter() - t0, "flops_per_step": flops}

    _serve(setup, lambda: state["trainer"].train_step()[0])


# ---- the parent: interleaved rounds ------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=REPO)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def gemm_gflops(threads: int, seconds: float = 1.0) -> float:
    """The machine's float32 matrix-multiply rate right now (1024^3 products, ``threads`` threads): the ceiling
    for a step that is almost all convolutions, sampled each round as a load-drift signal."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dp-path", required=True, help="a diffusion_policy checkout (outside this repository)")
    ap.add_argument("--dp-python", default=sys.executable, help="the Python of a venv with DP's dependencies")
    ap.add_argument("--zarr", default=str(REPO.parent / "shared/data/pusht/pusht_cchi_v7_replay.zarr"))
    ap.add_argument("--steps", type=int, default=60, help="timed steps per side per round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per side before the first round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--variants", default="default,compiled,eager",
                    help="robopolicy variants: default | eager | name=override;override (train config fields)")
    ap.add_argument("--compile-cache", default=None,
                    help="TORCHINDUCTOR_CACHE_DIR for the workers (a fresh folder measures a cold compile)")
    ap.add_argument("--out", default=str(REPO / "bench/results/dp_train_speed"))
    ap.add_argument("--worker", choices=["dp", "robopolicy"], help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "dp":
        return dp_worker(args)
    if args.worker == "robopolicy":
        return robopolicy_worker(args)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    if args.compile_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.compile_cache).resolve())
    common = ["--threads", str(args.threads), "--batch-size", str(args.batch_size), "--zarr", args.zarr,
              "--dp-path", args.dp_path]
    variants = {}
    for spec in args.variants.split(","):
        name, _, overrides = spec.partition("=")
        variants[name] = VARIANTS[name] if not overrides else overrides.split(";")
    load_start = loadavg()
    print(f"load average {load_start:.2f}; starting workers", file=sys.stderr, flush=True)
    workers = [Worker("dp", [args.dp_python, __file__, "--worker", "dp", *common], env)]
    for name, overrides in variants.items():
        workers.append(Worker(f"robopolicy:{name}", [sys.executable, __file__, "--worker", "robopolicy", *common,
                                                     "--overrides", ";".join(overrides)], env))
    for w in workers:
        print(f"{w.name}: {w.info}", file=sys.stderr, flush=True)
        if args.warmup:
            w.run(args.warmup)
    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "load_before": loadavg(), "gemm_gflops": gemm_gflops(args.threads)}
        for w in workers:
            res = w.run(args.steps)
            row[w.name] = {"samples_per_s": args.steps * args.batch_size / res["seconds"],
                           "ms_per_step": 1000 * res["seconds"] / args.steps, "loss": res["loss"]}
        row["load_after"] = loadavg()
        for w in workers[1:]:
            row[w.name]["ratio_vs_dp"] = row[w.name]["samples_per_s"] / row["dp"]["samples_per_s"]
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    for w in workers:
        w.close()

    def total_rate(name: str) -> float:  # all timed samples over all timed seconds
        return len(rounds) * args.steps * args.batch_size / sum(
            args.steps * args.batch_size / r[name]["samples_per_s"] for r in rounds)

    summary = {w.name: {"samples_per_s": total_rate(w.name), **w.info} for w in workers}
    flops = next((w.info["flops_per_step"] for w in workers if w.info.get("flops_per_step")), None)
    gemm = statistics.median(r["gemm_gflops"] for r in rounds)
    for w in workers:  # arithmetic rate of each side as a share of what the GEMM probe reached
        if flops:
            summary[w.name]["gflops"] = flops / args.batch_size * summary[w.name]["samples_per_s"] / 1e9
            summary[w.name]["share_of_gemm_rate"] = summary[w.name]["gflops"] / gemm
    for w in workers[1:]:
        summary[w.name]["ratio_vs_dp"] = total_rate(w.name) / total_rate("dp")
        summary[w.name]["ratio_per_round"] = [r[w.name]["ratio_vs_dp"] for r in rounds]
        summary[w.name]["ratio_median_round"] = statistics.median(summary[w.name]["ratio_per_round"])
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "steps": args.steps,
              "warmup": args.warmup, "rounds": rounds, "batch_size": args.batch_size, "threads": args.threads,
              "variants": variants, "summary": summary, "load_start": load_start, "load_end": loadavg(),
              "gflop_per_step": flops / 1e9 if flops else None, "gemm_gflops_median": gemm}
    lines = [f"{result['date']}; {result['machine']}; batch {args.batch_size}, {args.threads} threads, "
             f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up; load average "
             f"{load_start:.1f} -> {result['load_end']:.1f}", "",
             f"{flops / 1e9 if flops else float('nan'):.1f} GFLOP per step; float32 GEMM probe {gemm:.0f} GFLOP/s "
             "(median of rounds)", "",
             "| side | samples/s | ratio vs DP (totals) | per-round ratios | GFLOP/s (share of GEMM) | setup s | "
             "first step s |", "|---|---|---|---|---|---|---|"]
    for w in workers:
        s = summary[w.name]
        ratios = ", ".join(f"{x:.2f}" for x in s.get("ratio_per_round", []))
        first = f"{s['first_step_s']:.1f}" if s.get("first_step_s") is not None else "-"
        rate = f"{s['gflops']:.0f} ({100 * s['share_of_gemm_rate']:.0f} %)" if "gflops" in s else "-"
        lines.append(f"| {w.name} | {s['samples_per_s']:.0f} | {s.get('ratio_vs_dp', 1.0):.2f} | {ratios or '-'} | "
                     f"{rate} | {s['setup_s']:.1f} | {first} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M")
    (out / f"dp_train_speed_{stamp}.json").write_text(json.dumps(result, indent=2))
    (out / f"dp_train_speed_{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
