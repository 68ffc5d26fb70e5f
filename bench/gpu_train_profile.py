"""Where a GPU training step's time goes, and whether CUDA graphs remove a kernel-launch bound (issue 33, part 2).

    python bench/gpu_train_profile.py [--steps 100] [--batch-size 256] [--out DIR]
        [--variants eager,bf16,compiled,reduce-overhead] [--device cuda]

On the bundled PushT data with the default Diffusion Policy (ConditionalUnet1D 64/128/256), one process:
1. ``torch.profiler`` over 5 eager training steps: the top operators by GPU and by CPU time, the number of kernel
   launches per step and the GPU's busy share of the step (summed kernel time / wall time), written as a table and
   a Chrome trace (``trace_eager.json``).
2. samples/s and GPU busy share (nvidia-smi's utilization, sampled while timing) for: eager; eager under bf16
   autocast (``train.precision=bf16``); the network compiled (``train.compile=true``, inductor default mode);
   compiled with ``train.compile_mode=reduce-overhead`` (CUDA graphs); each ``--steps`` timed steps after a warm-up that
   includes the compile, whose time is reported.
Prints a markdown table and writes everything to ``--out``. Not run on a GPU yet: docs/benchmarks.md marks the GPU
numbers as not measured. ``--device cpu`` runs the same code on the CPU (no CUDA activity, no utilization), so
that the script is known to work before GPU minutes are spent on it (tests/test_gpu_train_profile_bench.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEVICE = "cuda"
VARIANTS = ("eager", "bf16", "compiled", "reduce-overhead")


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def make_trainer(batch_size: int, compile_setting: str, precision: str = "fp32", compile_mode: str = "default"):
    from robopolicy.configs import load_config
    from robopolicy.train.trainer import Trainer

    cfg = load_config("train", [f"output_dir={tempfile.mkdtemp(prefix='gpu_profile_')}", "progress=false",
                                "save_every=0", "steps=100000", f"batch_size={batch_size}", f"device={DEVICE}",
                                f"compile={compile_setting}", f"compile_mode={compile_mode}",
                                f"precision={precision}"])
    return Trainer(cfg)


class GpuUtilization:
    """nvidia-smi's utilization.gpu sampled every 100 ms in a thread while timing."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def profile_eager(batch_size: int, out: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(batch_size, "false")
    for _ in range(10):
        trainer.train_step()
    sync()
    n = 5
    t0 = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(n):
            trainer.train_step()
        sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    prof.export_chrome_trace(str(out / "trace_eager.json"))
    table_gpu = events.table(sort_by="self_device_time_total", row_limit=20)
    table_cpu = events.table(sort_by="self_cpu_time_total", row_limit=20)
    (out / "profile_eager.txt").write_text(f"{n} steps, wall {wall:.3f} s (profiler on)\n\nby GPU time\n{table_gpu}\n\n"
                                           f"by CPU time\n{table_cpu}\n")
    return {"step_ms_profiled": 1000 * wall / n, "kernel_ms_per_step": kernel_us / 1000 / n,
            "gpu_busy_share": kernel_us / 1e6 / wall, "kernel_launches_per_step": launches / n}


def throughput(name: str, batch_size: int, steps: int) -> dict:
    compiled = name in ("compiled", "reduce-overhead")
    mode = "reduce-overhead" if name == "reduce-overhead" else "default"  # CUDA graphs: train.compile_mode
    trainer = make_trainer(batch_size, "true" if compiled else "false", "bf16" if name == "bf16" else "fp32", mode)
    if compiled and not trainer.compiled:
        raise RuntimeError("train.compile was refused here (see the message above), so there is nothing to time")
    t0 = time.perf_counter()
    for _ in range(3):
        trainer.train_step()
    sync()
    warmup_s = time.perf_counter() - t0
    for _ in range(10):
        trainer.train_step()
    sync()
    with GpuUtilization() as util:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        dt = time.perf_counter() - t0
    return {"variant": name, "samples_per_s": steps * batch_size / dt, "ms_per_step": 1000 * dt / steps,
            "warmup_and_compile_s": warmup_s, "gpu_util_percent": util.mean()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default="gpu_train_profile")
    ap.add_argument("--variants", default="eager,bf16,compiled,reduce-overhead")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check that the script runs)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        sys.exit(f"gpu_train_profile: unknown --variants {unknown}; expected some of {list(VARIANTS)}")
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_train_profile: torch sees no CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else f"CPU ({DEVICE})"
    result = {"gpu": name, "torch": torch.__version__, "batch_size": args.batch_size,
              "profile": profile_eager(args.batch_size, out)}
    print(json.dumps(result["profile"]), flush=True)
    result["variants"] = []
    for variant in args.variants.split(","):
        try:
            row = throughput(variant, args.batch_size, args.steps)
        except Exception as e:  # one variant failing (e.g. no triton) must not cost the others
            row = {"variant": variant, "error": f"{type(e).__name__}: {e}"[:500]}
        result["variants"].append(row)
        print(json.dumps(row), flush=True)
    (out / "gpu_train_profile.json").write_text(json.dumps(result, indent=2))
    timed = [r for r in result["variants"] if "samples_per_s" in r]
    base_row = next((r for r in timed if r["variant"] == "eager"), timed[0] if timed else None)
    base = base_row["samples_per_s"] if base_row else float("nan")
    lines = [f"{result['gpu']}, torch {result['torch']}, batch {args.batch_size}", "",
             f"| variant | samples/s | vs {base_row['variant'] if base_row else 'eager'} | ms/step | GPU util % | "
             "warm-up incl. compile (s) |",
             "|---|---|---|---|---|---|"]
    for r in result["variants"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:120]} | | | | |")
        else:
            lines.append(f"| {r['variant']} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base:.2f}x | "
                         f"{r['ms_per_step']:.1f} | {r['gpu_util_percent']:.0f} | {r['warmup_and_compile_s']:.0f} |")
    p = result["profile"]
    lines += ["", f"eager profile: {p['kernel_launches_per_step']:.0f} kernel launches and {p['kernel_ms_per_step']:.1f} ms "
              f"of kernels per step against {p['step_ms_profiled']:.1f} ms wall (GPU busy {100 * p['gpu_busy_share']:.0f} %)"]
    (out / "gpu_train_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
