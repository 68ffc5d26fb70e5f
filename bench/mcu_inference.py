"""Cost of a C-exported MLP, streaming-flow or flow policy on a Cortex-M4F (Crazyflie 2.x: STM32F405, 168 MHz).

    python bench/mcu_inference.py [--policy DIR] [--json OUT]

For each network (a trained checkpoint with ``--policy``, else random-weight MLPs of hover size):

* flash / RAM of the policy object (``arm-none-eabi-size policy.o``: text+data = flash, data+bss = RAM)
  and of the whole self-test ELF (newlib + printf included, so an upper bound);
* instructions per inference: the ELF runs under ``qemu-system-arm -M netduinoplus2 -icount shift=0``,
  where virtual time advances exactly 1 ns per executed instruction. The guest reads SysTick (driven by
  the board clock in QEMU) around ``policy_step`` and first calibrates ticks against a loop of
  exactly 2,000,000 instructions, so instructions = ticks x (2e6 / calibration ticks); resolution 40
  instructions, averaged over 20 calls;
* estimated time at 168 MHz: instructions / 168 MHz is the CPI = 1 lower bound; the "est" column
  uses CPI = 1.5 (single-precision FPU loads + multiply-accumulate loops with flash wait states mostly
  hidden by the STM32's ART accelerator; measure on the target with the DWT cycle counter to confirm).

Needs arm-none-eabi-gcc, libnewlib-arm-none-eabi and qemu-system-arm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

BENCH_MAIN = r"""
#include <stdio.h>
#include "policy.h"
#define SYST_CSR (*(volatile unsigned long *)0xE000E010UL)
#define SYST_RVR (*(volatile unsigned long *)0xE000E014UL)
#define SYST_CVR (*(volatile unsigned long *)0xE000E018UL)
static unsigned long ticks_of(unsigned long a, unsigned long b) { return (a - b) & 0xFFFFFFUL; }
__attribute__((noinline)) static void known_loop(unsigned long n)
{   /* exactly 2 instructions per iteration (subs + bne) */
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b\n" : "+r"(n) : : "cc");
}
int main(void)
{
    static float obs[POLICY_OBS_DIM], act[POLICY_ACTION_DIM];
    unsigned long t0, t1, cal, empty, total = 0;
    int i, n = 20;
    SYST_RVR = 0xFFFFFF; SYST_CVR = 0; SYST_CSR = 5; /* processor clock, enabled, no interrupt */
    for (i = 0; i < POLICY_OBS_DIM; ++i) obs[i] = 0.01f * (float)i;
    t0 = SYST_CVR; known_loop(1000000UL); t1 = SYST_CVR; cal = ticks_of(t0, t1);
    t0 = SYST_CVR; t1 = SYST_CVR; empty = ticks_of(t0, t1);
    policy_step(obs, act);
    for (i = 0; i < n; ++i) {
        t0 = SYST_CVR; policy_step(obs, act); t1 = SYST_CVR;
        total += ticks_of(t0, t1) - empty;
    }
    printf("RESULT cal=%lu total=%lu n=%d\n", cal, total, n);
    return policy_selftest() ? 1 : 0;
}
"""

CPU_HZ = 168e6
CPI_EST = 1.5


def random_policy(family: str, obs_dim: int, act_dim: int = 4, **config):
    """A random-weight policy over one state vector, unit statistics (cost does not depend on the weights)."""
    import torch

    from robopolicy.data.normalize import Normalizer
    from robopolicy.policies.base import FeatureSpec
    from robopolicy.policies.registry import get_policy_class

    cls = get_policy_class(family)
    cfg = cls.config_class(input_features=[FeatureSpec("observation.state", (obs_dim,))],
                           output_features=[FeatureSpec("action", (act_dim,))],
                           normalization={"observation.state": "mean_std", "action": "min_max"}, **config)
    stats = {"observation.state": {"mean": [0.0] * obs_dim, "std": [1.0] * obs_dim},
             "action": {"min": [-1.0] * act_dim, "max": [1.0] * act_dim}}
    torch.manual_seed(0)
    return cls(cfg, Normalizer(stats, cfg.normalization)).eval()


def random_mlp(obs_dim: int, hidden: list[int], activation: str = "tanh"):
    return random_policy("mlp", obs_dim, n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=hidden,
                         activation=activation)


def random_sfp(obs_dim: int, hidden: int, n_layers: int, steps: int):
    """A small SFP-D velocity net; each policy_step integrates ``steps`` Euler steps (one streamed action)."""
    return random_policy("sfp", obs_dim, n_obs_steps=2, horizon=8, n_action_steps=1, hidden_dim=hidden,
                         n_layers=n_layers, time_embed_dim=16, integration_steps_per_action=steps,
                         start_from_observation_key=None)


def random_flow(obs_dim: int, hidden: int, n_layers: int, horizon: int, steps: int):
    """A small flow-matching policy on the mlp backbone; each policy_step integrates a whole chunk."""
    return random_policy("flow", obs_dim, n_obs_steps=2, horizon=horizon, n_action_steps=1, backbone="mlp",
                         mlp_hidden_dim=hidden, mlp_layers=n_layers, step_embed_dim=16, num_inference_steps=steps)


def size_of(path: Path) -> dict[str, int]:
    out = subprocess.run(["arm-none-eabi-size", str(path)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.strip().splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}


def measure(policy, name: str, int8: bool, work: Path) -> dict:
    from robopolicy.export.c_export import ARM_CFLAGS, build_arm, export_c, run_qemu

    out = export_c(policy, work / name, int8=int8, n_selftest=2)
    (out / "bench_main.c").write_text(BENCH_MAIN)
    obj = out / "policy.o"
    subprocess.run(["arm-none-eabi-gcc", *ARM_CFLAGS, "-c", "-o", str(obj), str(out / "policy.c")], check=True)
    elf = build_arm(out, "bench_main.c")
    res = run_qemu(elf, timeout=300, extra=("-icount", "shift=0"))
    m = re.search(r"RESULT cal=(\d+) total=(\d+) n=(\d+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"{name}: QEMU run failed (rc {res.returncode}): {res.stdout}{res.stderr}")
    cal, total, n = (int(g) for g in m.groups())
    insn = total / n * (2e6 / cal)
    meta = json.loads((out / "export.json").read_text())
    return {"name": name, "int8": int8, "n_params": meta["n_params"], "policy_o": size_of(obj),
            "elf": size_of(elf), "instructions": round(insn), "us_at_168MHz_cpi1": insn / CPU_HZ * 1e6,
            "us_at_168MHz_est": insn * CPI_EST / CPU_HZ * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", help="MLP checkpoint directory to measure instead of the random nets")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", default="", help="measure only the nets whose name contains this")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.policy:
        from robopolicy.policies.base import read_policy_config
        from robopolicy.policies.registry import get_policy_class

        cls = get_policy_class(read_policy_config(args.policy).type)
        nets = {"checkpoint": cls.from_pretrained(args.policy)}
    else:
        nets = {
            # 18-number state (pos, rotation matrix, vel, ang vel) + last action: what our quadrotor env gives
            "hover_22-64-64-4": random_mlp(22, [64, 64]),
            "hover_22-64-64-4_relu": random_mlp(22, [64, 64], "relu"),
            # the default quadrotor MLP (configs/policy/mlp_quadrotor.yaml): small enough for 500 Hz with margin
            "hover_22-32-32-4_relu": random_mlp(22, [32, 32], "relu"),
            "hover_22-32-32-4": random_mlp(22, [32, 32]),
            # L2F-sized input: 18 state + 32-step action history x 4 = 146
            "l2f_146-64-64-4": random_mlp(146, [64, 64]),
            "big_22-256-256-4": random_mlp(22, [256, 256]),
            # streaming flow, To = 2 of the 22-number state, hidden 32, 2 FiLM blocks, 3 Euler steps per action
            "sfp_44-h32x2-4_euler3": random_sfp(22, 32, 2, 3),
            # flow matching on the mlp backbone, To = 2, a chunk of 4 x 4 motor commands, 3 Euler steps
            "flow_44-h32x2-16_euler3": random_flow(22, 32, 2, 4, 3),
        }
    if args.only:
        nets = {k: v for k, v in nets.items() if args.only in k}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pol in nets.items():
            for int8 in (False, True):
                rows.append(measure(pol, name + ("_int8" if int8 else ""), int8, Path(tmp)))
    print(f"{'net':28s} {'params':>7s} {'flash B':>8s} {'RAM B':>6s} {'ELF flash':>9s} {'instr':>8s} "
          f"{'us cpi1':>8s} {'us est':>7s}")
    for r in rows:
        print(f"{r['name']:28s} {r['n_params']:7d} {r['policy_o']['flash']:8d} {r['policy_o']['ram']:6d} "
              f"{r['elf']['flash']:9d} {r['instructions']:8d} {r['us_at_168MHz_cpi1']:8.1f} {r['us_at_168MHz_est']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
