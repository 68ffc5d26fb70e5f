"""Firmware-in-the-loop: the on-board Crazyflie controller flies the L2F simulator at 500 Hz.

    python bench/crazyflie_fil.py [--episodes 1024] [--firmware /path/to/crazyflie-firmware] [--out DIR]

1. Trains a small hover policy (MLP 22-32-32-4, ReLU) by behaviour cloning of the SE(3) expert with DART noise
   at 500 Hz, in memory (demo seeds 0..; evaluation seed 1000 is used for nothing else), and exports it to C
   (float and int8).
2. Python-side evaluation: ``evaluate_policy`` of the torch policy over ``--episodes`` hover episodes.
3. Firmware-in-the-loop: the same episodes (same seeds, same initial states) flown by
   ``hardware/crazyflie/controller_robopolicy.c`` + the generated policy + the firmware's
   ``powerDistributionForce`` (recorded verbatim from the pinned commit), compiled for the host
   (``hardware/crazyflie/fil/fil_harness.c``). Each 2 ms simulator step is two 1 kHz stabilizer ticks; the
   simulator's state is turned into the firmware's ``state_t`` / ``sensorData_t`` (position and velocity in m,
   m/s, world frame; attitude quaternion x, y, z, w world-from-body; gyro in deg/s, body frame) and the
   setpoint into ``setpoint_t`` (target position and velocity, stamped every step by the "commander"); the
   motor PWM ratio from the power distribution goes back to the simulator as its normalized command.
   Same for the int8 build.
4. Watchdog: one drone hovering under the controller, the setpoint stops being refreshed after 1 s; the
   controller cuts the motors 200 ms later (SETPOINT_TIMEOUT_MS), they stay at zero, the drone falls.

With ``--firmware`` the controller is compiled against the firmware tree's own headers (its
``src/modules/interface`` etc. ahead of the record) instead of the recorded types.
Prints a JSON summary; results are in docs/benchmarks.md and docs/quadrotor.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from robopolicy.data.normalize import Normalizer
from robopolicy.experts.quadrotor import SE3Controller
from robopolicy.export.c_export import export_c
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.mlp.configuration import MLPConfig
from robopolicy.policies.mlp.modeling import MLPPolicy
from robopolicy.sim.quadrotor import STATE_KEY, QuadrotorConfig, QuadrotorVecEnv, evaluate_policy, summarize

ROOT = Path(__file__).resolve().parents[1]
CRAZYFLIE = ROOT / "hardware/crazyflie"
SIM_HZ = 500
DT_MS = 1000 // SIM_HZ
EVAL_SEED = 1000  # used for the reported evaluation only


def collect_demos(n_episodes: int, dart_noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(obs, clean expert action) pairs of DART-noised expert hover episodes at 500 Hz, successful or not."""
    cfg = QuadrotorConfig(task="hover", sim_hz=SIM_HZ)
    env = QuadrotorVecEnv(n_episodes, cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    ctrl = SE3Controller()
    obs = env.reset(seed=seed)
    ctrl.reset(throttle=env.initial_throttle)
    xs, ys = [], []
    for _ in range(cfg.episode_steps):
        label = ctrl(obs, env.target_acc.copy())
        xs.append(obs.copy())
        ys.append(label.astype(np.float32))
        obs, _, _, _, infos = env.step(np.clip(label + rng.normal(0.0, dart_noise, label.shape), -1, 1))
        if infos["final"]:
            ctrl.reset(np.isin(np.arange(n_episodes), [i for i, _ in infos["final"]]), env.initial_throttle)
    return np.concatenate(xs), np.concatenate(ys)


def train_policy(x: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> MLPPolicy:
    cfg = MLPConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[32, 32], activation="relu", fps=SIM_HZ,
                    input_features=[FeatureSpec(STATE_KEY, (22,))], output_features=[FeatureSpec("action", (4,))],
                    normalization={STATE_KEY: "identity", "action": "identity"})
    torch.manual_seed(seed)
    policy = MLPPolicy(cfg, Normalizer({}, cfg.normalization))
    opt = torch.optim.Adam(policy.net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (512,), generator=gen)
        loss = torch.nn.functional.mse_loss(policy.net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval()


def build_harness(policy_dir: Path, out: Path, firmware: Path | None) -> Path:
    includes = [f"-I{CRAZYFLIE / 'host'}"]  # OS shims only (tick, log/param tables): no firmware type in there
    if firmware is not None:  # the firmware's own type headers ahead of the record
        includes += [f"-I{firmware / d}" for d in ("src/modules/interface", "src/modules/interface/controller",
                                                   "src/hal/interface", "src/utils/interface/lighthouse",
                                                   "src/utils/interface")]
    includes += [f"-I{CRAZYFLIE / 'firmware_types'}", f"-I{CRAZYFLIE}", f"-I{policy_dir}"]
    lib = out / "libfil.so"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", *includes,
                    str(CRAZYFLIE / "fil/fil_harness.c"), str(policy_dir / "policy.c"),
                    str(policy_dir / "policy_selftest.c"), "-o", str(lib), "-lm"], check=True)
    return lib


class FirmwareController:
    """The compiled controller + power distribution behind evaluate_policy's policy interface."""

    def __init__(self, lib_path: Path, n_max: int = 4096):
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.fil_step.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p]
        self.lib.fil_reset.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self.n_max = n_max
        self.tick = 0
        self.setpoint_frozen_at: int | None = None  # watchdog demo: the commander stops stamping setpoints
        self.estimate_error = np.zeros(0)  # per drone: max |controller's rotor estimate - simulator's|

    def reset(self) -> None:
        self.tick = 0
        self.estimate_error = np.zeros(self.n_max)
        if self.lib.fil_reset(self.n_max, None, 1) != 0:
            raise RuntimeError("controllerOutOfTreeTest() failed: the policy's self-test does not pass")

    @staticmethod
    def firmware_state(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
        """L2F's state (recovered from the observation and the target) in state_t / sensorData_t units."""
        n = len(obs)
        s = np.empty((n, 13), dtype=np.float32)
        s[:, 0:3] = obs[:, 0:3] + target[:, 0:3]
        s[:, 3:6] = obs[:, 12:15] + target[:, 3:6]
        s[:, 6:10] = Rotation.from_matrix(obs[:, 3:12].reshape(n, 3, 3).astype(np.float64)).as_quat()  # x, y, z, w
        s[:, 10:13] = np.degrees(obs[:, 15:18])  # rad/s -> deg/s
        return s

    def select_action(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        obs, target = observation[STATE_KEY], observation["observation.target"]
        n = len(obs)
        state = np.ascontiguousarray(self.firmware_state(obs, target))
        setpoint = np.ascontiguousarray(target[:, 0:6], dtype=np.float32)
        pwm = np.empty((n, 4), dtype=np.int32)
        estimate = np.empty((n, 4), dtype=np.float32)
        tripped = np.empty(n, dtype=np.uint8)
        stamp = self.tick if self.setpoint_frozen_at is None else min(self.tick, self.setpoint_frozen_at)
        self.lib.fil_step(n, self.tick, DT_MS, state.ctypes.data, setpoint.ctypes.data, stamp, pwm.ctypes.data,
                          estimate.ctypes.data, tripped.ctypes.data)
        # the controller's estimate must track what the simulator observes (the same lag on the same commands)
        if self.tick:
            err = np.abs(self.prev_estimate - obs[:, 18:22]).max(axis=1)
            self.estimate_error[:n] = np.maximum(self.estimate_error[:n], err)
        self.prev_estimate = estimate
        self.last_pwm, self.last_tripped = pwm, tripped
        self.tick += DT_MS
        return pwm.astype(np.float32) / 65535.0 * 2.0 - 1.0


def watchdog_demo(lib: Path, freeze_ms: int = 2500) -> dict:
    """Hover under the controller, then the commander stops stamping setpoints at ``freeze_ms``."""
    ctrl = FirmwareController(lib, n_max=1)
    ctrl.reset()
    cfg = QuadrotorConfig(task="hover", sim_hz=SIM_HZ, episode_s=freeze_ms / 1000 + 1.5)
    env = QuadrotorVecEnv(1, cfg, seed=EVAL_SEED + 99)
    obs = env.reset(seed=EVAL_SEED + 99)
    ctrl.setpoint_frozen_at = freeze_ms
    trace = []
    for _ in range(cfg.episode_steps - 1):
        target = np.concatenate([env.target_pos, env.target_vel, env.target_acc], axis=1).astype(np.float32)
        tick = ctrl.tick
        action = ctrl.select_action({STATE_KEY: obs, "observation.target": target})
        trace.append((tick, int(ctrl.last_pwm.max()), int(ctrl.last_tripped[0]), float(env.positions()[0, 2])))
        obs, _, _, _, infos = env.step(action)
        if infos["final"]:
            trace.append(("end", infos["final"][0][1].to_dict()))
            break
    flying = [t for t in trace if isinstance(t[0], int)]
    cut = next((t for t, pwm, tr, _ in flying if pwm == 0 and t > freeze_ms), None)
    if cut is None:
        return {"error": "no motor cut observed", "end": trace[-1], "last": flying[-1]}
    return {"setpoint_last_stamped_ms": freeze_ms, "motors_zero_from_ms": cut, "timeout_ms": cut - freeze_ms,
            "motors_stay_zero": all(p == 0 for t, p, _, _ in flying if t >= cut),
            "latched": all(tr == 1 for t, _, tr, _ in flying if t >= cut),
            "max_pwm_before_cut": max(p for t, p, _, _ in flying if t < cut),
            "z_at_cut_m": next(z for t, _, _, z in flying if t == cut), "z_end_m": flying[-1][3],
            "z_200ms_before_freeze_m": next(z for t, _, _, z in flying if t == freeze_ms - 200),
            "episode_end": trace[-1][1] if trace[-1][0] == "end" else None}


def log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=1024)
    ap.add_argument("--demos", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--dart-noise", type=float, default=0.1)
    ap.add_argument("--firmware", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a tiny MLP: more threads only contend on a shared machine
    out = args.out or Path(tempfile.mkdtemp(prefix="crazyflie_fil_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x, y = collect_demos(args.demos, args.dart_noise)
    log(f"demos: {len(x)} frames in {time.time() - t0:.0f} s")
    policy = train_policy(x, y, args.steps)
    log(f"trained in {time.time() - t0:.0f} s")
    t_train = time.time() - t0
    cfg = QuadrotorConfig(task="hover", sim_hz=SIM_HZ)
    n_envs = min(args.episodes, 1024)
    result = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
              "episodes": args.episodes, "demos": args.demos, "train_steps": args.steps, "frames": len(x),
              "train_s": round(t_train, 1), "sim_hz": SIM_HZ, "eval_seed": EVAL_SEED,
              "types": "firmware tree" if args.firmware else "recorded (hardware/crazyflie/firmware_types)"}
    python = summarize(evaluate_policy(policy, "hover", args.episodes, n_envs, seed=EVAL_SEED, config=cfg))
    result["python"] = python
    log(f"python eval: {python['success_rate']:.4f} at {time.time() - t0:.0f} s")
    for tag, int8 in (("fil_float", False), ("fil_int8", True)):
        pdir = export_c(policy, out / f"policy_{tag}", int8=int8)
        lib = build_harness(pdir, out / f"policy_{tag}", args.firmware)
        ctrl = FirmwareController(lib, n_max=n_envs)
        t1 = time.time()
        stats = summarize(evaluate_policy(ctrl, "hover", args.episodes, n_envs, seed=EVAL_SEED, config=cfg))
        stats["eval_s"] = round(time.time() - t1, 1)
        # median over drones of each drone's largest deviation (a crashed drone is reset by the simulator but
        # not by the controller, so its later deviation says nothing)
        stats["rotor_estimate_error_median"] = float(np.median(ctrl.estimate_error[:n_envs]))
        stats["success_minus_python_pp"] = round(100 * (stats["success_rate"] - python["success_rate"]), 2)
        result[tag] = stats
        log(f"{tag}: {stats['success_rate']:.4f} at {time.time() - t0:.0f} s")
        if not int8:
            result["watchdog"] = watchdog_demo(lib)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
