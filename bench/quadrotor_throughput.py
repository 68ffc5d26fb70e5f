"""Simulator throughput: our vectorized quadrotor env vs raw L2F steps, in drone-steps per second.

    python bench/quadrotor_throughput.py [--n 1 64 1024 8192] [--seconds 5] [--rounds 5] [--json out.json]

"raw" is the bare L2F vector API loop (vectorN.step + vectorN.observe with a constant action, no
Python work besides the calls); "ours" is :class:`robopolicy.sim.quadrotor.QuadrotorVecEnv.step`
(the same two calls plus clipping, the rotor-lag estimate, observation assembly, metrics and crash
checks in one compiled pass (robopolicy/sim/quadrotor_kernels.py), and auto-reset). Both use the
waypoint task's start (level, at rest, rotors at hover) and a constant hover command; crash limits
are set out of reach (NO_CRASH) so episodes run their full 5 s and the per-episode bookkeeping is
amortized as in real rollouts. The target is ours >= 0.8x raw. Single-threaded (OMP_NUM_THREADS=1),
and raw and ours alternate in short slices, so other jobs on the machine move the absolute numbers
but hit both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")


# An open-loop hover command drifts and would crash within ~1 s, turning the benchmark into a reset
# benchmark; with the crash limits out of reach the checks still run every step but episodes end by
# time (every 5 s), as they mostly do under a working controller.
NO_CRASH = {"bound": 1e9, "ground_depth": 1e9, "tilt_limit_deg": 181.0}


def raw_stepper(n: int, task: str = "waypoint") -> Callable[[int], None]:
    """``k`` bare L2F steps (step + observe) of ``n`` drones, configured exactly as our env configures them."""
    import numpy as np

    from robopolicy.sim.quadrotor import QuadrotorVecEnv

    env = QuadrotorVecEnv(n, task=task, seed=0)
    b = env.backend
    b.reset()
    v, dev = b.v, b.device
    actions = np.full((b.size, 4), env.model.hover_action, dtype=np.float32)
    buffers = [b.state, b.next_state]

    def run(k: int) -> None:
        state, nxt = buffers
        for _ in range(k):
            v.step(dev, b.env, b.params, state, actions, nxt, b.rng)
            state, nxt = nxt, state
            v.observe(dev, b.env, b.params, state, b.obs, b.rng)
        buffers[:] = [state, nxt]

    return run


def our_stepper(n: int, task: str = "waypoint") -> Callable[[int], None]:
    """``k`` steps of :class:`QuadrotorVecEnv` with a constant hover command."""
    import numpy as np

    from robopolicy.sim.quadrotor import QuadrotorVecEnv

    env = QuadrotorVecEnv(n, task=task, seed=0, **NO_CRASH)
    env.reset(seed=0)
    a = np.full((n, 4), env.model.hover_action, dtype=np.float32)

    def run(k: int) -> None:
        for _ in range(k):
            env.step(a)

    return run


def rate(run: Callable[[int], None], n: int, seconds: float) -> float:
    run(5)  # warm: first-call compilation and caches
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(50)
        steps += 50
    return steps * n / (time.perf_counter() - t0)


def compare(n: int, seconds: float, rounds: int) -> dict[str, float]:
    """Raw and ours measured in alternating slices, so load from other processes hits both alike;
    the ratio is that of the medians."""
    raw, ours = raw_stepper(n), our_stepper(n)
    raws, ourss = [], []
    for _ in range(rounds):
        raws.append(rate(raw, n, seconds / rounds))
        ourss.append(rate(ours, n, seconds / rounds))
    r, o = statistics.median(raws), statistics.median(ourss)
    return {"n": n, "raw": r, "ours": o, "ratio": o / r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 64, 1024, 8192])
    ap.add_argument("--seconds", type=float, default=5.0, help="per side and drone count, split into rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'drones':>7s} {'raw steps/s':>14s} {'ours steps/s':>14s} {'ratio':>6s}")
    for n in args.n:
        row = compare(n, args.seconds, args.rounds)
        rows.append(row)
        print(f"{n:7d} {row['raw']:14.0f} {row['ours']:14.0f} {row['ratio']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
