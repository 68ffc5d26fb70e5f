"""Firmware-in-the-loop harness (hardware/crazyflie/fil/fil_harness.c): the on-board controller, the generated
policy and the firmware's recorded powerDistributionForce, compiled for the host and driven like the stabilizer
(1 kHz ticks). The 1,024-episode comparison with the Python evaluation is bench/crazyflie_fil.py."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robopolicy.export.c_export import export_c

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_c_export import CRAZYFLIE_DIR, hover_mlp  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")


def harness(tmp_path) -> ctypes.CDLL:
    policy = export_c(hover_mlp(500), tmp_path / "policy")
    lib = tmp_path / "libfil.so"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
                    f"-I{CRAZYFLIE_DIR / 'firmware_types'}", f"-I{CRAZYFLIE_DIR / 'host'}", f"-I{CRAZYFLIE_DIR}",
                    f"-I{policy}", str(CRAZYFLIE_DIR / "fil/fil_harness.c"), str(policy / "policy.c"),
                    str(policy / "policy_selftest.c"), "-o", str(lib), "-lm"], check=True)
    cdll = ctypes.CDLL(str(lib))
    cdll.fil_step.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    cdll.fil_reset.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return cdll


def step(lib, tick, state, setpoint, stamp):
    n = len(state)
    pwm, est, tripped = np.empty((n, 4), np.int32), np.empty((n, 4), np.float32), np.empty(n, np.uint8)
    state, setpoint = np.ascontiguousarray(state, np.float32), np.ascontiguousarray(setpoint, np.float32)
    assert lib.fil_step(n, tick, 2, state.ctypes.data, setpoint.ctypes.data, stamp, pwm.ctypes.data, est.ctypes.data,
                        tripped.ctypes.data) == 0
    return pwm, est, tripped


def test_watchdog_cuts_the_motors_200_ms_after_the_last_setpoint_and_latches(tmp_path):
    lib = harness(tmp_path)
    assert lib.fil_reset(2, None, 1) == 0  # the arming self-test passes
    state = np.zeros((2, 13), np.float32)
    state[:, 9] = 1.0  # quaternion w
    setpoint = np.zeros((2, 6), np.float32)
    cut = None
    for tick in range(0, 400, 2):
        pwm, _, tripped = step(lib, tick, state, setpoint, stamp=min(tick, 100))  # the commander stops at 100 ms
        if cut is None and (pwm == 0).all():
            cut = tick
        if cut is not None:
            assert (pwm == 0).all() and tripped.all()
    assert cut is not None and 300 <= cut <= 302  # > SETPOINT_TIMEOUT_MS = 200 ms after the last setpoint


def test_disabled_controller_keeps_the_motors_off(tmp_path):
    lib = harness(tmp_path)
    assert lib.fil_reset(1, None, 0) == 0  # robopolicy.enable = 0
    state = np.zeros((1, 13), np.float32)
    state[:, 9] = 1.0
    pwm, _, tripped = step(lib, 0, state, np.zeros((1, 6)), stamp=0)
    assert (pwm == 0).all() and not tripped.any()


def test_fil_state_conversion_tracks_the_simulators_observation(tmp_path):
    """In L2F: the simulator's state in the firmware's units/frames -> controller -> power distribution -> the
    simulator; the controller's rotor estimate must equal the one the simulator puts in the observation."""
    pytest.importorskip("l2f", reason="needs the L2F simulator (quadrotor extra)")
    pytest.importorskip("scipy", reason="quadrotor extra")
    from scipy.spatial.transform import Rotation

    from robopolicy.sim.quadrotor import QuadrotorConfig, QuadrotorVecEnv

    lib = harness(tmp_path)
    assert lib.fil_reset(4, None, 1) == 0
    env = QuadrotorVecEnv(4, QuadrotorConfig(sim_hz=500), seed=3)
    obs = env.reset(seed=3)
    for k in range(30):
        s = np.empty((4, 13), np.float32)
        s[:, 0:3] = obs[:, 0:3] + env.target_pos
        s[:, 3:6] = obs[:, 12:15] + env.target_vel
        s[:, 6:10] = Rotation.from_matrix(obs[:, 3:12].reshape(4, 3, 3).astype(np.float64)).as_quat()
        s[:, 10:13] = np.degrees(obs[:, 15:18])
        pwm, est, _ = step(lib, 2 * k, s, np.concatenate([env.target_pos, env.target_vel], axis=1), stamp=2 * k)
        obs, _, terminated, _, _ = env.step(pwm / 65535.0 * 2 - 1)
        assert not terminated.any()
        np.testing.assert_allclose(est, obs[:, 18:22], atol=1e-4)  # same rotor lag on the same commands


@pytest.mark.skipif(not os.environ.get("ROBOPOLICY_CRAZYFLIE_FIRMWARE"),
                    reason="no firmware tree: set ROBOPOLICY_CRAZYFLIE_FIRMWARE to a crazyflie-firmware checkout")
def test_fil_harness_builds_against_the_firmware_trees_own_headers(tmp_path):
    firmware = Path(os.environ["ROBOPOLICY_CRAZYFLIE_FIRMWARE"])
    policy = export_c(hover_mlp(500), tmp_path / "policy")
    dirs = ("src/modules/interface", "src/modules/interface/controller", "src/hal/interface",
            "src/utils/interface/lighthouse", "src/utils/interface")
    res = subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-H",
                          f"-I{CRAZYFLIE_DIR / 'host'}", *(f"-I{firmware / d}" for d in dirs),
                          f"-I{CRAZYFLIE_DIR / 'firmware_types'}", f"-I{CRAZYFLIE_DIR}", f"-I{policy}",
                          str(CRAZYFLIE_DIR / "fil/fil_harness.c"), str(policy / "policy.c"),
                          str(policy / "policy_selftest.c"), "-o", str(tmp_path / "libfil.so"), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    included = [line.split()[-1] for line in res.stderr.splitlines() if line.startswith(".")]
    assert any(p.endswith("src/modules/interface/stabilizer_types.h") and str(firmware) in p for p in included)
    assert not any(p.endswith("firmware_types/stabilizer_types.h") for p in included)  # the tree's, not the record's
