"""Newton push task throughput: env steps per second against the number of worlds N in one process.

    python bench/newton_throughput.py [--n 1 16 64 256 1024] [--seconds 4] [--device cpu] [--json out.json]

Each control step is 10 XPBD substeps (collision + solve) of every world, plus prescribing the kinematic pushers
and reading the observation back. Actions are the scripted expert's (robopolicy/experts/newton_push.py), so the
pushers touch and push boxes as in real rollouts; an environment that finishes is reset from its next seed, as
the recorder does. "single loop" is the task's own single-environment loop: ``--loop-envs`` separate one-world
environments stepped one after the other in Python (what running the N=1 env many times costs), measured in the
same run. Kernel compilation is excluded (a warm-up step first); the first run of all compiles for ~35 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import numpy as np
import warp as wp

from robopolicy.experts.newton_push import expert_action
from robopolicy.sim.newton_env import NewtonPushEnv


def _steps_per_second(envs: list[NewtonPushEnv], seconds: float) -> tuple[float, int]:
    """Env steps per second of ``envs`` stepped in turn, each under expert actions, for about ``seconds``."""
    obs = [env.reset(np.arange(env.num_envs) + 7919 * k) for k, env in enumerate(envs)]
    next_seed = [10_000 + 7919 * k for k in range(len(envs))]
    for k, env in enumerate(envs):  # warm-up: compiles or loads kernels, allocates contact buffers
        obs[k] = env.step(expert_action(obs[k]))[0]
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for k, env in enumerate(envs):
            obs[k], _, _, done = env.step(expert_action(obs[k]))
            if done.any():
                seeds = env.seeds.copy()
                seeds[done] = next_seed[k] + np.arange(done.sum())
                next_seed[k] += int(done.sum())
                obs[k] = env.reset(seeds, mask=done)
            steps += env.num_envs
    elapsed = time.perf_counter() - start
    return steps / elapsed, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--loop-envs", type=int, default=16, help="one-world envs in the single-env loop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="bench/results/newton/throughput.json")
    args = parser.parse_args()
    wp.config.quiet = True
    rows = []
    for n in args.n:
        env = NewtonPushEnv(n, device=args.device)
        rate, steps = _steps_per_second([env], args.seconds)
        rows.append({"mode": "vectorized", "n_envs": n, "env_steps_per_s": rate, "env_steps": steps})
        print(f"vectorized N={n:5d}: {rate:10.0f} env steps/s", flush=True)
        del env
    singles = [NewtonPushEnv(1, device=args.device) for _ in range(args.loop_envs)]
    rate, steps = _steps_per_second(singles, args.seconds)
    rows.append({"mode": "single_env_loop", "n_envs": args.loop_envs, "env_steps_per_s": rate, "env_steps": steps})
    print(f"single-env loop ({args.loop_envs} envs of N=1, in turn): {rate:10.0f} env steps/s", flush=True)
    result = {"benchmark": "newton_push throughput", "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.processor() or platform.machine()}, {wp.get_device(args.device)}",
              "device": args.device, "newton": __import__("newton").__version__, "warp": wp.__version__,
              "seconds_per_point": args.seconds, "rows": rows}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
