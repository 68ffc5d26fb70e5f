"""Batch-1 latency of every policy family: torch eager vs ONNX Runtime per-step vs ONNX Runtime fused.

    python bench/export_latency.py [--families diffusion,flow_unet,...] [--seconds 2] [--out DIR] [--threads N]
                                   [--openvino] [--tensorrt]

Default-sized configs (each family's dataclass defaults) with untrained weights, a PushT-like low-dim
observation (agent position (2,) + block pose (5,)), one thread everywhere (torch, OMP, ORT intra-op) unless
``--threads`` says otherwise. Each chunk is a full ``predict_chunk`` in robot units (normalization included).
Torch and both ORT graphs are timed in interleaved blocks (per round, five untimed and five timed calls
each), so a drifting VM affects their ratio less. Peak RSS is that of a separate runtime-only process (torch blocked from
importing) that loads the artifact and predicts chunks with both graph kinds. ``--openvino`` adds both graph
kinds run by OpenVINO's CPU runtime (``providers=("openvino",)``) to the same interleaved timing. ``--tensorrt`` (a CUDA
GPU with tensorrt and cuda-python) adds the fused graph as FP32 and FP16 TensorRT engines (``providers=("tensorrt_engine",)``,
``("tensorrt_engine_fp16",)``; built once per artifact, before timing). ``--c`` adds the C export (the
microcontroller code) compiled for this CPU and called through ctypes (``robopolicy.runtime.CPolicy``), for the
families that have one (mlp, flow with the mlp backbone). ``--torch-cuda`` adds torch eager on the GPU (a copy of
the policy; each call copies the observations in and the chunk out, as a policy server must). ``--torch-compile``
adds torch with the policy's network compiled in place (``torch.compile``, inductor; the first call's time, which
compiles or reads inductor's cache, is reported). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ.setdefault("OMP_NUM_THREADS", THREADS)  # before torch is imported
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAMILIES = {
    "diffusion": {"type": "diffusion"},  # UNet (64, 128, 256), DDIM 10 steps
    "diffusion_small": {"type": "diffusion", "down_dims": [32, 64, 128]},  # a quarter of the compute
    "diffusion_small_k3": {"type": "diffusion", "down_dims": [32, 64, 128], "kernel_size": 3},
    "diffusion_16": {"type": "diffusion", "down_dims": [16, 32, 64]},
    "diffusion_2level": {"type": "diffusion", "down_dims": [32, 64]},  # fewer blocks, fewer graph nodes
    "diffusion_2level_wide": {"type": "diffusion", "down_dims": [64, 128]},
    "diffusion_2level_wide_k3": {"type": "diffusion", "down_dims": [64, 128], "kernel_size": 3},
    "diffusion_2level_48": {"type": "diffusion", "down_dims": [48, 96]},
    "diffusion_2level_48_k3": {"type": "diffusion", "down_dims": [48, 96], "kernel_size": 3},
    "diffusion_2level_wide_1block": {"type": "diffusion", "down_dims": [64, 128], "blocks_per_level": 1},
    # SiLU instead of Mish: ONNX Runtime fuses it into one operator, Mish stays six.
    "diffusion_2level_wide_silu": {"type": "diffusion", "down_dims": [64, 128], "activation": "silu"},
    "diffusion_silu": {"type": "diffusion", "activation": "silu"},
    "flow_unet_silu": {"type": "flow", "backbone": "unet", "activation": "silu"},
    "diffusion_1block": {"type": "diffusion", "blocks_per_level": 1},
    "diffusion_2level_96_1block": {"type": "diffusion", "down_dims": [96, 192], "blocks_per_level": 1},
    "diffusion_2level_128_1block": {"type": "diffusion", "down_dims": [128, 256], "blocks_per_level": 1},
    "flow_unet": {"type": "flow", "backbone": "unet"},  # Euler 10 steps
    "flow_transformer": {"type": "flow", "backbone": "transformer"},
    "sfp_d": {"type": "sfp", "variant": "deterministic"},  # 15 actions x 6 Euler steps
    "sfp_s": {"type": "sfp", "variant": "stochastic"},
    # 1 Euler step per action: on PushT as good as 6 (docs/benchmarks.md section 1b)
    "sfp_d_e1": {"type": "sfp", "variant": "deterministic", "integration_steps_per_action": 1},
    "act": {"type": "act"},
    "mlp": {"type": "mlp"},
    "flow_mlp": {"type": "flow", "backbone": "mlp", "integrator": "euler"},  # C-exportable flow
}
FEATURES = {"observation.state": (2,), "observation.environment_state": (5,)}

RSS_PROBE = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch blocked")
sys.meta_path.insert(0, _Block())
import numpy as np
from robopolicy.runtime import OnnxPolicy
for graph in ("per_step", "fused"):
    p = OnnxPolicy.load(sys.argv[1], graph=graph)
    obs = {f[0]: np.random.default_rng(0).standard_normal((1, p.n_obs_steps, *f[1])).astype(np.float32)
           for f in p.input_features}
    for _ in range(5):
        p.predict_chunk(obs)
# VmHWM, not ru_maxrss: the latter keeps the forking parent's high-water mark across exec.
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(int(hwm.split()[1]) / 1024)
"""


def make_policy(cfg: dict):
    from robopolicy.configs import policy_config_from
    from robopolicy.data.normalize import Normalizer
    from robopolicy.policies.base import FeatureSpec
    from robopolicy.policies.registry import get_policy_class

    inputs = [FeatureSpec(k, s) for k, s in FEATURES.items()]
    config = policy_config_from(cfg, input_features=inputs, output_features=[FeatureSpec("action", (2,))],
                                normalization={k: "min_max" for k in [*FEATURES, "action"]})
    stats = {k: {"min": [-1.0] * s[0], "max": [1.0] * s[0]} for k, s in {**FEATURES, "action": (2,)}.items()}
    policy = get_policy_class(config.type)(config, Normalizer(stats, config.normalization))
    return policy.eval()


def timeit(fn, seconds: float, min_iters: int = 10, max_iters: int = 500) -> np.ndarray:
    return timeit_interleaved({"fn": fn}, seconds, min_iters, max_iters)["fn"]


def timeit_interleaved(fns: dict, seconds: float, min_iters: int = 10, max_iters: int = 500, warmup: int = 5,
                       block: int = 5) -> dict[str, np.ndarray]:
    """Time several callables in interleaved blocks, so that a VM whose speed drifts (neighbours, frequency)
    slows all of them alike and their ratios stay meaningful. Each round runs every callable ``warmup`` times
    untimed, then ``block`` times timed: each is timed as when it runs alone in a policy server. One untimed
    call is not enough: right after torch eager, ONNX Runtime's next calls run up to 1.4x slower and take
    about five calls to recover (docs/benchmarks.md, section 2), while torch shows no such effect."""
    for fn in fns.values():  # first-call costs (allocation, compilation)
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds * block < max_iters and (rounds * block < min_iters or time.perf_counter() - start < seconds * len(fns)):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: np.asarray(t) for name, t in times.items()}


def fmt(ms: np.ndarray) -> str:
    digits = 4 if np.percentile(ms, 50) < 0.1 else 2  # microsecond-scale calls keep their microseconds
    return f"{np.percentile(ms, 50):.{digits}f} / {np.percentile(ms, 99):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seconds", type=float, default=1.5, help="timing budget per measurement")
    ap.add_argument("--out", default=None, help="where to write the artifacts (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    ap.add_argument("--openvino", action="store_true", help="also time the graphs on OpenVINO's runtime")
    ap.add_argument("--tensorrt", action="store_true", help="also time the fused graph as TensorRT engines (GPU)")
    ap.add_argument("--c", action="store_true",
                    help="also time the C export compiled for this host (CPolicy; mlp and mlp-backbone flow)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time torch with the policy's network compiled (torch.compile, inductor; compile time "
                         "in the last column)")
    ap.add_argument("--torch-cuda", action="store_true",
                    help="also time torch eager on the GPU (observations copied in, the chunk copied out per call)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from robopolicy.export import export_policy
    from robopolicy.runtime import OnnxPolicy

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="export_latency_"))
    rows = []
    for name in args.families.split(","):
        policy = make_policy(FAMILIES[name])
        n_params = sum(p.numel() for p in policy.parameters())
        t0 = time.perf_counter()
        path = export_policy(policy, out_root / name)
        export_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        obs_np = {k: rng.uniform(-1, 1, (1, policy.config.n_obs_steps, *s)).astype(np.float32)
                  for k, s in FEATURES.items()}
        obs_t = {k: torch.as_tensor(v) for k, v in obs_np.items()}
        gen = torch.Generator().manual_seed(0)
        runtimes = {graph: OnnxPolicy.load(path, graph=graph, intra_op_threads=args.threads)
                    for graph in ("per_step", "fused")}
        if args.openvino:
            runtimes.update({f"ov_{graph}": OnnxPolicy.load(path, graph=graph, intra_op_threads=args.threads,
                                                            providers=("openvino",)) for graph in ("per_step", "fused")})
        if args.tensorrt:
            runtimes.update({f"trt_{precision}": OnnxPolicy.load(path, graph="fused", providers=(provider,))
                             for precision, provider in (("fp32", "tensorrt_engine"), ("fp16", "tensorrt_engine_fp16"))})
        gpu_fns = {}
        if args.torch_cuda:
            gpu_policy = copy.deepcopy(policy).to("cuda")
            gpu_fns["torch_cuda"] = lambda p=gpu_policy, o=obs_t, g=gen: p.predict_chunk(
                {k: v.to("cuda") for k, v in o.items()}, generator=g).cpu()
        compiled_fns, compile_s = {}, float("nan")
        if args.torch_compile:
            from robopolicy.train.speed import compile_network

            compiled = copy.deepcopy(policy)
            if compile_network(compiled):
                t0 = time.perf_counter()
                compiled.predict_chunk(obs_t, generator=gen)  # compiles (or loads inductor's cache)
                compile_s = time.perf_counter() - t0
                compiled_fns["torch_compiled"] = lambda p=compiled, o=obs_t, g=gen: p.predict_chunk(o, generator=g)
        c_fns = {}
        c_family = FAMILIES[name]["type"] == "mlp" or FAMILIES[name].get("backbone") == "mlp"
        if args.c and c_family:
            from robopolicy.export.c_export import export_c
            from robopolicy.runtime import CPolicy

            c_policy = CPolicy.load(export_c(policy, out_root / f"{name}_c"))
            c_fns["c"] = lambda cp=c_policy, o=obs_np, r=rng: cp.predict_chunk(o, rng=r)
        timed = timeit_interleaved({
            "eager": lambda p=policy, o=obs_t, g=gen: p.predict_chunk(o, generator=g),
            **gpu_fns,
            **compiled_fns,
            **c_fns,
            **{graph: (lambda rt=rt, o=obs_np, r=rng: rt.predict_chunk(o, rng=r)) for graph, rt in runtimes.items()},
        }, args.seconds)
        eager, results = timed["eager"], timed
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}, timeout=300)
        rss = f"{float(probe.stdout.strip().splitlines()[-1]):.0f}" if probe.returncode == 0 else "error"
        if probe.returncode != 0:
            print(probe.stderr, file=sys.stderr)
        first = "–"
        if FAMILIES[name]["type"] == "sfp":  # time to the first executable action of a streamed chunk
            def torch_first(p=policy, o=obs_t, g=gen):
                p.reset()
                return next(iter(p.stream_actions(o, generator=g)))

            rt = OnnxPolicy.load(path, graph="per_step", intra_op_threads=args.threads)

            def ort_first(rt=rt, o=obs_np, r=rng):
                rt.reset()
                return next(iter(rt.stream_actions(o, rng=r)))

            firsts = timeit_interleaved({"torch": torch_first, "ort": ort_first}, args.seconds)
            first = f"torch {fmt(firsts['torch'])}; ORT {fmt(firsts['ort'])}"
        size_mb = sum((path / f).stat().st_size for f in os.listdir(path)) / 1e6
        openvino = ((fmt(results["ov_per_step"]), fmt(results["ov_fused"]),
                     f"{np.median(eager) / np.median(results['ov_fused']):.1f}x") if args.openvino else ())
        tensorrt = ((fmt(results["trt_fp32"]), fmt(results["trt_fp16"]),
                     f"{np.median(eager) / np.median(results['trt_fp16']):.1f}x") if args.tensorrt else ())
        torch_cuda = (fmt(results["torch_cuda"]),) if args.torch_cuda else ()
        torch_compiled = ((fmt(results["torch_compiled"]), f"{np.median(eager) / np.median(results['torch_compiled']):.1f}x",
                           f"{compile_s:.0f}") if "torch_compiled" in results else ("–", "–", "–")
                          ) if args.torch_compile else ()
        c_host = ((fmt(results["c"]) if "c" in results else "–"),) if args.c else ()
        rows.append((name, f"{n_params / 1e6:.2f}", fmt(eager), *torch_compiled, *torch_cuda, fmt(results["per_step"]), fmt(results["fused"]),
                     f"{np.median(eager) / np.median(results['per_step']):.1f}x",
                     f"{np.median(eager) / np.median(results['fused']):.1f}x", *openvino, *tensorrt, *c_host, first, rss,
                     f"{size_mb:.1f}", f"{export_s:.1f}"))
        print(f"done {name}", file=sys.stderr, flush=True)
    openvino = (("OpenVINO per-step p50/p99 ms", "OpenVINO fused p50/p99 ms", "speed-up OpenVINO fused")
                if args.openvino else ())
    tensorrt = (("TensorRT FP32 fused p50/p99 ms", "TensorRT FP16 fused p50/p99 ms", "speed-up TensorRT FP16")
                if args.tensorrt else ())
    torch_cuda = ("torch CUDA eager p50/p99 ms",) if args.torch_cuda else ()
    torch_compiled = (("torch compiled p50/p99 ms", "speed-up compiled", "compile (s)") if args.torch_compile else ())
    header = ("family", "params (M)", "torch eager p50/p99 ms", *torch_compiled, *torch_cuda, "ORT per-step p50/p99 ms", "ORT fused p50/p99 ms",
              "speed-up per-step", "speed-up fused", *openvino, *tensorrt,
              *(("C on the host (CPolicy) p50/p99 ms",) if args.c else ()), "SFP first action p50 / p99 ms",
              "runtime peak RSS (MiB)", "artifact (MB)", "export (s)")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nbatch 1, {args.threads} thread(s) (torch, OMP, ORT intra-op); artifacts in {out_root}")


if __name__ == "__main__":
    main()
