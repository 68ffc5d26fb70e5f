"""Diffusion Policy on the PushT human demos: the first result, reproducibly.

    python bench/pusht_diffusion.py train  [--run-dir DIR] [--minutes 60]
    python bench/pusht_diffusion.py curve  --run-dir DIR [--episodes 50]     # success vs training time
    python bench/pusht_diffusion.py final  --run-dir DIR [--episodes 200]    # the headline evaluation
    python bench/pusht_diffusion.py timing --run-dir DIR                     # time per chunk at 100/16/10 steps
    python bench/pusht_diffusion.py onnx   --run-dir DIR [--episodes 200]    # closed loop through ONNX Runtime
    python bench/pusht_diffusion.py all    [--run-dir DIR]

Results land in ``<run-dir>/bench/*.json`` (and a learning-curve plot); docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["steps=10000", "lr=5e-4", "warmup_steps=500", "batch_size=256", "save_every=1000", "keep_checkpoints=0",
              "log_every=100", "num_threads=2", "progress=false"]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d")}


def write(run_dir: Path, name: str, payload: dict) -> Path:
    out = run_dir / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"wrote {out}")
    return out


def cmd_train(run_dir: Path, minutes: float) -> None:
    cmd = [sys.executable, "-m", "robopolicy.cli", "train", *TRAIN_ARGS, f"time_budget_min={minutes}", f"output_dir={run_dir}"]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)


def _evaluate(policy_dir: Path, episodes: int, output_dir: Path | None, steps: int | None = None, kind: str | None = None):
    from robopolicy.cli import load_policy_for_eval
    from robopolicy.sim.evaluate import evaluate

    return evaluate(partial(load_policy_for_eval, str(policy_dir), kind, steps), n_episodes=episodes, n_workers=2,
                    n_videos=4 if output_dir else 0, output_dir=output_dir, progress=True)


def cmd_curve(run_dir: Path, episodes: int) -> None:
    from robopolicy.train.checkpoint import list_checkpoints

    points = []
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        meta = json.loads((ckpt / "training_state.json").read_text())
        result = _evaluate(ckpt / "policy", episodes, None).to_dict()
        points.append({"step": meta["step"], "train_time_s": meta["elapsed_s"], "success_rate": result["success_rate"],
                       "success_ci95": result["success_ci95"], "mean_max_coverage": result["mean_max_coverage"],
                       "mean_max_reward": result.get("mean_max_reward")})
        print(points[-1])
    write(run_dir, "learning_curve", {"episodes_per_point": episodes, "points": points})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["train_time_s"] / 60 for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(minutes, [p["success_rate"] for p in points], "o-", label="success (coverage ≥ 0.95)")
    ax.fill_between(minutes, [p["success_ci95"][0] for p in points], [p["success_ci95"][1] for p in points], alpha=0.2)
    ax.plot(minutes, [p["mean_max_coverage"] for p in points], "s-", label="mean max coverage")
    ax.set_xlabel("training time on 2 CPU cores (min)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Diffusion Policy, PushT human demos ({episodes} episodes per point)")
    fig.tight_layout()
    fig.savefig(run_dir / "bench" / "learning_curve.png", dpi=120)


def cmd_final(run_dir: Path, episodes: int) -> None:
    result = _evaluate(run_dir / "policy", episodes, run_dir / "bench" / "final_eval").to_dict()
    summary = json.loads((run_dir / "train_summary.json").read_text())
    keep = ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage", "max_coverage_ci95", "mean_max_reward",
            "latency_ms", "chunk_latency_ms", "wall_s")
    write(run_dir, "final_eval", {"train": summary, "eval": {k: result.get(k) for k in keep}})


def cmd_timing(run_dir: Path, repeats: int = 50) -> None:
    from robopolicy.cli import load_policy_for_eval

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kind, steps in (("DDPM", 100), ("DDIM", 100), ("DDIM", 16), ("DDIM", 10), ("DPMSolver++", 10), ("UniPC", 10)):
            policy = load_policy_for_eval(str(run_dir / "policy"), kind, steps)
            obs = {f.key: torch.zeros(1, policy.config.n_obs_steps, *f.shape) for f in policy.config.input_features}
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                policy.predict_chunk(obs, generator=g)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                policy.predict_chunk(obs, generator=g)
                times.append((time.perf_counter() - t0) * 1e3)
            rows.append({"threads": threads, "scheduler": kind, "steps": steps, "p50_ms": statistics.median(times),
                         "p99_ms": float(np.percentile(times, 99)), "mean_ms": statistics.fmean(times)})
            print(rows[-1])
    write(run_dir, "chunk_timing", {"batch": 1, "repeats": repeats, "rows": rows})


def cmd_onnx(run_dir: Path, episodes: int) -> None:
    """Export the trained policy and evaluate it through the torch-free runtime on the same seeds."""
    from robopolicy.export import export_policy
    from robopolicy.policies.registry import load_policy
    from robopolicy.runtime import OnnxPolicy
    from robopolicy.sim.evaluate import evaluate

    artifact = export_policy(load_policy(run_dir / "policy"), run_dir / "onnx")
    keep = ("n_episodes", "success_rate", "success_ci95", "mean_max_coverage", "max_coverage_ci95", "mean_max_reward",
            "chunk_latency_ms")
    rows = {}
    for graph in ("fused", "per_step"):
        result = evaluate(partial(OnnxPolicy.load, str(artifact), graph=graph), n_episodes=episodes, n_workers=2,
                          n_videos=0, progress=True).to_dict()
        rows[graph] = {k: result.get(k) for k in keep}
        print(graph, rows[graph])
    write(run_dir, "onnx_closed_loop", {"artifact": str(artifact), "results": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "curve", "final", "timing", "onnx", "all"])
    parser.add_argument("--run-dir", type=Path, default=REPO / "outputs" / "bench" / "pusht_diffusion")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--episodes", type=int, default=None)
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    if args.command in ("train", "all"):
        cmd_train(run_dir, args.minutes)
    if args.command in ("curve", "all"):
        cmd_curve(run_dir, args.episodes or 50)
    if args.command in ("final", "all"):
        cmd_final(run_dir, args.episodes or 200)
    if args.command in ("timing", "all"):
        cmd_timing(run_dir)
    if args.command in ("onnx", "all"):
        cmd_onnx(run_dir, args.episodes or 200)


if __name__ == "__main__":
    main()
