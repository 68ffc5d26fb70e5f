"""Training throughput of ``robopolicy train`` in one process against the same run under torchrun (DDP).

    python bench/ddp_throughput.py [--policy diffusion] [--nproc N] [--per-rank-batch 256] [--steps 200]
                                   [--device auto] [--threads 0] [--out DIR] [-- extra train overrides]

Each run is a real ``robopolicy train`` (sampler, AdamW, EMA, cosine schedule, a checkpoint at the end) in its own
processes: first ``python -m robopolicy.cli train batch_size=B``, then ``torchrun --standalone --nproc-per-node=N``
of the same command with the global ``batch_size=N*B``, so every rank (one per GPU) trains on B windows a step as
the single process does. A run's rate is the median of rank 0's logged ``samples_per_s`` (global samples) after
the first logging window (start-up: allocation, cuDNN autotuning, DDP's first bucket rebuild). Both runs happen
on the same machine in one invocation; compare their ratio. ``--nproc`` defaults to the number of CUDA GPUs
(one rank per GPU; with one GPU this measures DDP's overhead at world size 1), or 2 on a machine without one.
Prints a markdown table and writes it, with the machine and command, to ``--out``/ddp_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    gpu = f"{len(gpus)}x {gpus[0]}" if gpus else "no GPU"
    return f"{cpu} ({os.cpu_count()} cores, num_threads={threads or 'all'} per process), {gpu}, torch {torch.__version__}"


def train(nproc: int, overrides: list[str], out: Path, threads: int, timeout_s: float) -> tuple[float, float, float]:
    """(median samples/s after the first log window, last logged loss, wall seconds) of one run."""
    base = [sys.executable, "-m", "robopolicy.cli", "train"]
    if nproc:
        base = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "--max-restarts=0", "-m", "robopolicy.cli", "train"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = datetime.now(UTC)
    done = subprocess.run([*base, *overrides, f"output_dir={out}"], env=env, cwd=REPO, timeout=timeout_s,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(base)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    log = np.genfromtxt(out / "train_log.csv", delimiter=",", names=True)
    rates, losses = np.atleast_1d(log["samples_per_s"]), np.atleast_1d(log["loss"])
    wall = (datetime.now(UTC) - start).total_seconds()
    return float(np.median(rates[1:] if len(rates) > 1 else rates)), float(losses[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="diffusion", help="a configs/policy/<name>.yaml")
    ap.add_argument("--nproc", type=int, default=None, help="ranks for the DDP run (default: CUDA GPUs, else 2)")
    ap.add_argument("--per-rank-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="auto", help="train.device: auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="num_threads per process (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*", help="more `robopolicy train` overrides, e.g. dataset.root=...")
    args = ap.parse_args()
    nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ddp_throughput_"))
    common = [f"policy={args.policy}", "progress=false", f"device={args.device}", f"steps={args.steps}",
              f"log_every={max(args.steps // 10, 1)}", "save_every=0", f"num_threads={args.threads}", *args.overrides]
    runs = [("1 process", 0, args.per_rank_batch), (f"torchrun, {nproc} ranks", nproc, args.per_rank_batch * nproc)]
    rows = []
    for name, ranks, batch in runs:
        rate, loss, wall = train(ranks, [*common, f"batch_size={batch}"], out / f"ranks{ranks}", args.threads,
                                 args.timeout)
        rows.append((name, max(ranks, 1), batch, rate, loss, wall))
        print(f"{name}: {rate:.0f} samples/s", file=sys.stderr, flush=True)
    single = rows[0][3]
    lines = [f"{args.policy}, {args.steps} steps, {args.per_rank_batch} samples per rank and step, device={args.device}; "
             f"{machine(args.threads)}; {datetime.now(UTC):%Y-%m-%d}",
             f"command: python bench/ddp_throughput.py {' '.join(sys.argv[1:])}", "",
             "| run | ranks | global batch | samples/s | vs 1 process | per-rank efficiency | last logged loss | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {ranks} | {batch} | {rate:.0f} | {rate / single:.2f}x | {rate / single / ranks:.0%} | "
              f"{loss:.4f} | {wall:.0f} |" for name, ranks, batch, rate, loss, wall in rows]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_throughput.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
