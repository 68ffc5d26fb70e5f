"""Control-loop period jitter at 500 Hz and server round trips on loopback.

    python bench/control_loop.py [--cycles 10000] [--hz 500] [--requests 2000]

Runs with one thread. Numbers are pessimistic when other jobs share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from robopolicy.deploy.client import PolicyClient  # noqa: E402
from robopolicy.deploy.fake import RampPolicy  # noqa: E402
from robopolicy.deploy.safety import SafetyFilter  # noqa: E402
from robopolicy.deploy.scheduling import ChunkScheduler  # noqa: E402
from robopolicy.deploy.server import PolicyServer  # noqa: E402
from robopolicy.deploy.timing import PeriodRecorder, precise_wait  # noqa: E402


def jitter(cycles: int, hz: float, spin_s: float) -> dict:
    """The control loop's own work per tick (schedule lookup + safety filter) at ``hz``."""
    period = 1.0 / hz
    sched = ChunkScheduler(2, 16, 8, 0.1, mode="rtc")
    safety = SafetyFilter([0, 0], [512, 512], 2000.0, 40000.0)
    rec = PeriodRecorder(period)
    work = []
    t = time.monotonic()
    next_t = t
    for i in range(cycles):
        now = precise_wait(next_t, spin_s)
        rec.tick(now)
        if i % 400 == 0:  # a new chunk every 0.8 s
            sched.add_chunk(np.random.default_rng(i).uniform(0, 512, (16, 2)), now - 0.1, now)
        t0 = time.monotonic()
        target, _ = sched.target(now)
        safety(target, period)
        work.append(time.monotonic() - t0)
        next_t += period
        if time.monotonic() > next_t + period:
            rec.overruns += 1
            next_t = time.monotonic()
    out = rec.stats()
    out["work_p50_us"] = float(np.percentile(work, 50) * 1e6)
    out["work_p99_us"] = float(np.percentile(work, 99) * 1e6)
    return out


def round_trip(n: int, address: str) -> dict:
    """Ping and trivial-policy infer round trips; infer twice: run on the socket thread (the default for
    policies under 1 ms) and forced through the inference worker thread (``inline_below_ms=0``)."""
    obs = {"observation.state": np.zeros((2, 2), np.float32)}
    out = {}
    for label, inline_ms in (("inline", 1.0), ("worker", 0.0)):
        with PolicyServer(RampPolicy(), address=address, status_every_s=0, inline_below_ms=inline_ms) as srv, \
                PolicyClient(srv.endpoint) as c:
            for _ in range(50):  # warm up (and fill the server's inline window)
                c.call("infer", obs, t_obs=0.0)
            kinds = (("ping", {}), ("infer", {"arrays": obs, "t_obs": 0.0})) if label == "inline" else \
                (("infer", {"arrays": obs, "t_obs": 0.0}),)
            for kind, args in kinds:
                lat = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    m = c.call(kind, **args)
                    lat.append(time.perf_counter() - t0)
                    assert m is not None and m.type in ("pong", "chunk")
                p50, p99 = np.percentile(np.asarray(lat) * 1e6, [50, 99])
                name = kind if kind == "ping" else f"infer_{label}"
                out[name] = {"n": n, "p50_us": float(p50), "p99_us": float(p99), "max_us": float(np.max(lat) * 1e6)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10_000)
    ap.add_argument("--hz", type=float, default=500.0)
    ap.add_argument("--spin-us", type=float, default=500.0)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    result = {"jitter": jitter(args.cycles, args.hz, args.spin_us * 1e-6),
              "round_trip_tcp_loopback": round_trip(args.requests, "tcp://127.0.0.1:0"),
              "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
