"""Simulator throughput: our vectorized quadrotor env vs raw L2F steps, in drone-steps per second.

    python bench/quadrotor_throughput.py [--n 1 64 1024] [--seconds 3]

"raw" is the bare L2F vector API loop (vectorN.step + vectorN.observe with a constant action, no
Python work besides the calls); "ours" is :class:`robopolicy.sim.quadrotor.QuadrotorVecEnv.step`
(the same two calls plus target bookkeeping, observation assembly, metrics and crash checks in numpy,
and auto-reset). Both use the waypoint task's start (level, at rest, rotors at hover) and a constant
hover command; crash limits are set out of reach (NO_CRASH) so episodes run their full 5 s and the
per-episode bookkeeping is amortized as in real rollouts. The target is ours >= 0.8x raw. Run single-threaded (OMP_NUM_THREADS=1) so the
numbers do not depend on how many cores happen to be free; with other jobs on the machine the
absolute numbers move, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


# An open-loop hover command drifts and would crash within ~1 s, turning the benchmark into a reset
# benchmark; with the crash limits out of reach the checks still run every step but episodes end by
# time (every 5 s), as they mostly do under a working controller.
NO_CRASH = {"bound": 1e9, "ground_depth": 1e9, "tilt_limit_deg": 181.0}


def raw_rate(n: int, seconds: float, task: str = "waypoint") -> float:
    import numpy as np

    from robopolicy.sim.quadrotor import QuadrotorVecEnv

    env = QuadrotorVecEnv(n, task=task, seed=0)  # same L2F configuration as ours
    b = env.backend
    b.reset()
    v, dev = b.v, b.device
    actions = np.full((b.size, 4), env.model.hover_action, dtype=np.float32)
    state, nxt = b.state, b.next_state
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            v.step(dev, b.env, b.params, state, actions, nxt, b.rng)
            state, nxt = nxt, state
            v.observe(dev, b.env, b.params, state, b.obs, b.rng)
        steps += 50
    return steps * n / (time.perf_counter() - t0)


def ours_rate(n: int, seconds: float, task: str = "waypoint") -> float:
    import numpy as np

    from robopolicy.sim.quadrotor import QuadrotorVecEnv

    env = QuadrotorVecEnv(n, task=task, seed=0, **NO_CRASH)
    env.reset(seed=0)
    a = np.full((n, 4), env.model.hover_action, dtype=np.float32)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            env.step(a)
        steps += 50
    return steps * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'drones':>7s} {'raw steps/s':>14s} {'ours steps/s':>14s} {'ratio':>6s}")
    for n in args.n:
        raw = raw_rate(n, args.seconds)
        ours = ours_rate(n, args.seconds)
        rows.append({"n": n, "raw": raw, "ours": ours, "ratio": ours / raw})
        print(f"{n:7d} {raw:14.0f} {ours:14.0f} {ours / raw:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
