"""Training throughput (samples/s) of a policy on the bundled PushT dataset, per device and precision.

    python bench/train_throughput.py [--policy diffusion] [--runs cpu:fp32,cuda:fp32,cuda:bf16] [--steps 200]
                                     [--batch-size 256] [--out DIR]

Each run is a real ``Trainer`` (sampler, AdamW, EMA, cosine schedule, checkpoint at the end) for ``--steps``
steps; its rate is the median of the logged ``samples_per_s`` after the first logging window (which holds
start-up: allocation, cuDNN autotuning). All runs happen in one process on one machine, so their ratios are
what to compare. Prints a markdown table and writes it, with the machine, to ``--out``/train_throughput.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def run(policy: str, device: str, precision: str, steps: int, batch_size: int, out: Path) -> tuple[float, float]:
    from robopolicy.configs import load_config
    from robopolicy.train.trainer import Trainer

    cfg = load_config("train", [f"policy={policy}", f"output_dir={out}", "progress=false", f"device={device}",
                                f"precision={precision}", f"steps={steps}", f"batch_size={batch_size}",
                                f"log_every={max(steps // 10, 1)}", "save_every=0"])
    trainer = Trainer(cfg)
    run_dir = trainer.fit()
    log = np.genfromtxt(run_dir / "train_log.csv", delimiter=",", names=True)
    rates = np.atleast_1d(log["samples_per_s"])
    losses = np.atleast_1d(log["loss"])
    return float(np.median(rates[1:] if len(rates) > 1 else rates)), float(losses[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="diffusion", help="a configs/policy/<name>.yaml")
    ap.add_argument("--runs", default="cpu:fp32,cuda:fp32,cuda:bf16", help="device:precision, comma-separated")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--cpu-steps", type=int, default=None, help="steps for CPU runs (default: --steps)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="train_throughput_"))
    rows = []
    for spec in args.runs.split(","):
        device, precision = spec.split(":")
        steps = args.cpu_steps if device == "cpu" and args.cpu_steps else args.steps
        rate, loss = run(args.policy, device, precision, steps, args.batch_size, out / spec.replace(":", "_"))
        rows.append((device, precision, steps, rate, loss))
        print(f"{spec}: {rate:.0f} samples/s", file=sys.stderr, flush=True)
    base = rows[0][3]
    lines = [f"{args.policy}, batch {args.batch_size}; {machine()}; {datetime.now(UTC):%Y-%m-%d}", "",
             "| device | precision | steps | samples/s | vs first row | last logged loss |", "|---|---|---|---|---|---|"]
    lines += [f"| {d} | {p} | {s} | {r:.0f} | {r / base:.1f}x | {loss:.4f} |" for d, p, s, r, loss in rows]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.md").write_text(text + "\n")
    OmegaConf.save(OmegaConf.create({"rows": [list(r) for r in rows]}), out / "train_throughput.yaml")


if __name__ == "__main__":
    main()
