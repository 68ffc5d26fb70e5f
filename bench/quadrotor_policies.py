"""Quadrotor policies trained on SE(3)-expert demos: vectorized evaluation and the served 500 Hz loop.

    robopolicy record task=quadrotor_hover device=expert num_episodes=1000 output=outputs/quad/hover_expert
    robopolicy train policy=mlp_quadrotor dataset.root=outputs/quad/hover_expert \
        "dataset.observation_keys=[observation.state]" steps=100000 batch_size=512 lr=1e-3 num_threads=1 \
        output_dir=outputs/quad/runs/hover_mlp32
    python bench/quadrotor_policies.py eval outputs/quad/runs/hover_mlp32/policy --task hover --episodes 2048
    python bench/quadrotor_policies.py expert --task figure8 --episodes 1024
    python bench/quadrotor_policies.py served outputs/quad/runs/hover_mlp32/policy --episodes 10

``eval``: ``n`` episodes, 1,024 drones at a time, seed 0 (as ``robopolicy eval env.name=quadrotor_<task>``).
``served``: the policy server, the 500 Hz control loop and the simulated drone (own process, real time).
Results go to ``bench/results/quadrotor/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
RESULTS = Path(__file__).parent / "results" / "quadrotor"


def _save(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": str(date.today())}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: v for k, v in payload.items() if k != "episodes"}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["eval", "expert", "served"])
    ap.add_argument("policy", nargs="?")
    ap.add_argument("--task", default="hover")
    ap.add_argument("--episodes", type=int, default=2048)
    ap.add_argument("--name")
    ap.add_argument("--sim-hz", type=float, default=None,
                    help="simulator rate (default: the policy's training fps; the expert: 100 Hz)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    name = args.name or f"{args.what}_{args.task}" + (f"_{Path(args.policy).parent.name}" if args.policy else "")
    t0 = time.perf_counter()
    if args.what == "expert":
        from robopolicy.experts.quadrotor import expert_rollout
        from robopolicy.sim.quadrotor import QuadrotorConfig, summarize

        config = QuadrotorConfig(task=args.task, sim_hz=args.sim_hz or QuadrotorConfig.sim_hz)
        report = summarize(expert_rollout(args.task, n_episodes=args.episodes, n_envs=1024, seed=0, config=config))
        report["sim_hz"] = config.sim_hz
    elif args.what == "eval":
        from robopolicy.policies.registry import load_policy
        from robopolicy.sim.envs import evaluate_quadrotor

        report = evaluate_quadrotor(load_policy(args.policy), f"quadrotor_{args.task}", n_episodes=args.episodes,
                                    seed=0, progress=True, sim_hz=args.sim_hz)
    else:
        from robopolicy.robots.closed_loop import run_served_episodes

        report = run_served_episodes(args.policy, args.episodes, start_seed=0, env=f"quadrotor_{args.task}",
                                     verbose=False)
        eps = report["episodes"]
        report["crash_rate"] = sum(bool(e["crash"]) for e in eps) / len(eps)
        for key in ("late_p99_us", "late_max_us", "jitter_p99_us"):
            report[f"max_{key}"] = max(e[key] for e in eps)
        for key in ("deadline_misses", "safe_ticks", "watchdog_trips", "sim_overruns", "overruns"):
            report[f"total_{key}"] = sum(e[key] for e in eps)
    _save(name, {"what": args.what, "task": args.task, "policy": args.policy, "wall_s": time.perf_counter() - t0,
                 **report})


if __name__ == "__main__":
    main()
