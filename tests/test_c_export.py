"""C export of MLP policies: host build (gcc -Werror), numerical match with torch, int8, Cortex-M4 under QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.data.normalize import Normalizer
from robopolicy.export.c_export import (
    CExportError,
    build_arm,
    build_host,
    export_c,
    reference_actions,
    run_qemu,
    sample_observations,
)
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.mlp.configuration import MLPConfig
from robopolicy.policies.mlp.modeling import MLPPolicy

HAVE_GCC = shutil.which("gcc") is not None
HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="no host gcc")
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="arm-none-eabi-gcc / qemu-system-arm not installed "
                               "(apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")

FLOAT_BOUND = 1e-5  # host C vs torch, float build (absolute, actions of order 1-10)
INT8_BOUND_VS_DEQUANT = 1e-4  # int8 C vs torch with the dequantized weights
INT8_BOUND_VS_FLOAT = 0.02  # int8 C vs the float policy, relative to max |action| (measured ~0.2%)


def make_policy(activation: str = "relu", hidden=(32, 32), n_obs_steps: int = 2, horizon: int = 4,
                n_hypotheses: int = 1, ensemble: int = 1) -> MLPPolicy:
    cfg = MLPConfig(n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=1, hidden_dims=list(hidden),
                    activation=activation, n_hypotheses=n_hypotheses, ensemble=ensemble,
                    input_features=[FeatureSpec("observation.state", (5,)), FeatureSpec("observation.target", (3,))],
                    output_features=[FeatureSpec("action", (4,))],
                    normalization={"observation.state": "min_max", "observation.target": "mean_std",
                                   "action": "min_max"})
    stats = {"observation.state": {"min": [-1.0] * 5, "max": [2.0, 3.0, 4.0, 5.0, 6.0]},
             "observation.target": {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 0.0]},  # a constant dim
             "action": {"min": [0.0] * 4, "max": [1.0, 2.0, 3.0, 4.0]}}
    torch.manual_seed(0)
    return MLPPolicy(cfg, Normalizer(stats, cfg.normalization)).eval()


def run_eval(exe, obs: np.ndarray) -> np.ndarray:
    text = "\n".join(" ".join(repr(float(v)) for v in o) for o in obs)
    out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
    return np.array([[float(v) for v in line.split()] for line in out.strip().splitlines()])


@needs_gcc
@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
def test_host_float_matches_torch(tmp_path, activation):
    policy = make_policy(activation)
    out = export_c(policy, tmp_path / "c", n_selftest=4)
    assert subprocess.run([str(build_host(out))]).returncode == 0
    obs = sample_observations(policy, 64, seed=7)
    got = run_eval(build_host(out, "main_eval.c"), obs)
    want = reference_actions(policy, obs)
    assert got.shape == (64, 4)
    assert np.abs(got - want).max() <= FLOAT_BOUND
    # and the reference is what the Python policy executes first (select_action on the same history)
    hist = {"observation.state": torch.from_numpy(obs[:1].reshape(1, 2, 8)[..., :5]),
            "observation.target": torch.from_numpy(obs[:1].reshape(1, 2, 8)[..., 5:])}
    chunk = policy.predict_chunk(hist)[0]
    np.testing.assert_allclose(want[0], chunk[1].numpy(), atol=1e-6)


@needs_gcc
def test_an_ensemble_exports_as_one_wider_mlp_that_flies_as_torch(tmp_path):
    """ensemble = 3: the C code is one plain MLP 3x as wide whose output is the members' mean, as torch acts."""
    policy = make_policy(ensemble=3)
    out = export_c(policy, tmp_path / "c", n_selftest=4)
    assert subprocess.run([str(build_host(out))]).returncode == 0
    obs = sample_observations(policy, 64, seed=7)
    got = run_eval(build_host(out, "main_eval.c"), obs)
    np.testing.assert_allclose(got, reference_actions(policy, obs), atol=FLOAT_BOUND, rtol=0)
    widths = [m.out_features for m in policy.net if isinstance(m, torch.nn.Linear)]
    assert widths[:-1] == [3 * h for h in policy.config.hidden_dims]
    # the block-diagonal middle layer is written (and run) as its three member blocks, without the zeros
    meta = json.loads((out / "export.json").read_text())
    assert meta["diagonal_blocks"] == [1, 3, 1]
    dense = sum(m.weight.numel() + m.bias.numel() for m in policy.net if isinstance(m, torch.nn.Linear))
    assert meta["n_params"] == dense - 2 * 32 * 32 * 3  # two thirds of the 96 x 96 middle layer are zeros
    # int8: the self-test's reference is the dequantized wide network, which must be the one the C code holds
    out8 = export_c(policy, tmp_path / "c8", int8=True, n_selftest=4)
    assert subprocess.run([str(build_host(out8))]).returncode == 0


@needs_gcc
def test_host_picks_the_best_scored_hypothesis_as_torch_does(tmp_path):
    """n_hypotheses > 1: the C forward pass keeps the chunk whose score is highest, the torch policy's choice."""
    policy = make_policy(n_hypotheses=3)
    with torch.no_grad():  # scores that vary with the observation (at initialization one candidate wins everywhere)
        policy.net[-1].weight[:3] *= 30
    out = export_c(policy, tmp_path / "c", n_selftest=4)
    assert subprocess.run([str(build_host(out))]).returncode == 0
    obs = sample_observations(policy, 64, seed=9)
    got = run_eval(build_host(out, "main_eval.c"), obs)
    assert np.abs(got - reference_actions(policy, obs)).max() <= FLOAT_BOUND
    hist = {"observation.state": torch.from_numpy(obs.reshape(64, 2, 8)[..., :5]),
            "observation.target": torch.from_numpy(obs.reshape(64, 2, 8)[..., 5:])}
    with torch.no_grad():
        normalized = {k: policy.normalizer.normalize(k, v) for k, v in hist.items()}
        scores, _ = policy.hypotheses(normalized)
    assert len(set(scores.argmax(-1).tolist())) > 1, "the observations should exercise more than one hypothesis"


@needs_gcc
def test_host_int8(tmp_path):
    policy = make_policy("relu", hidden=(64, 64))
    out = export_c(policy, tmp_path / "c8", int8=True)
    assert subprocess.run([str(build_host(out))]).returncode == 0
    obs = sample_observations(policy, 64, seed=8)
    got = run_eval(build_host(out, "main_eval.c"), obs)
    assert np.abs(got - reference_actions(policy, obs, int8=True)).max() <= INT8_BOUND_VS_DEQUANT
    flt = reference_actions(policy, obs)
    assert np.abs(got - flt).max() <= INT8_BOUND_VS_FLOAT * np.abs(flt).max()
    src_f = (export_c(policy, tmp_path / "cf") / "policy.c").read_text()
    assert "int8_t W0" in (out / "policy.c").read_text() and "int8_t" not in src_f.split("static float buf_a")[0]


@needs_gcc
def test_selftest_detects_a_wrong_weight(tmp_path):
    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    src = (out / "policy.c").read_text()
    i = src.index("static const float B0")
    j = src.index("{", i) + 1
    (out / "policy.c").write_text(src[:j] + "1000.0f + " + src[j:])  # corrupt the first bias
    assert subprocess.run([str(build_host(out))], capture_output=True).returncode != 0


@needs_gcc
def test_nonfinite_observation_is_rejected(tmp_path):
    policy = make_policy()
    out = export_c(policy, tmp_path / "c")
    got = subprocess.run([str(build_host(out, "main_eval.c"))], input=" ".join(["nan"] + ["0"] * 15),
                         capture_output=True, text=True, check=True).stdout
    assert got.strip() == "nan"


def test_unsupported_policies_are_refused(tmp_path):
    cfg = MLPConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[8], layer_norm=True,
                    input_features=[FeatureSpec("observation.state", (2,))], output_features=[FeatureSpec("action", (2,))],
                    normalization={"observation.state": "identity", "action": "identity"})
    with pytest.raises(CExportError, match="layer_norm"):
        export_c(MLPPolicy(cfg, Normalizer({}, cfg.normalization)), tmp_path / "x")


@needs_arm
@pytest.mark.parametrize("int8,board", [(False, "netduinoplus2"), (True, "netduinoplus2"), (False, "mps2-an386")])
def test_cortex_m4_selftest_under_qemu(tmp_path, int8, board):
    policy = make_policy("tanh", hidden=(64, 64))
    out = export_c(policy, tmp_path / "arm", int8=int8, n_selftest=4)
    elf = build_arm(out, board=board)
    res = run_qemu(elf, board=board)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    # a corrupted expected vector must make the exit code non-zero (the verdict really travels)
    st = (out / "policy_selftest.c").read_text()
    i = st.index("SELFTEST_ACTION")
    j = st.index("{", i) + 1
    (out / "policy_selftest.c").write_text(st[:j] + "1.0f + " + st[j:])
    assert run_qemu(build_arm(out, board=board), board=board).returncode != 0


@needs_arm
def test_stm32f405_layout_weights_in_flash_data_copied_bss_zeroed(tmp_path):
    """The netduinoplus2 (STM32F405) build: code and const weights in flash, .data copied to SRAM at boot."""
    import subprocess

    out = export_c(make_policy("tanh", hidden=(16,)), tmp_path / "f405", n_selftest=1)
    (out / "main_layout.c").write_text("""#include "policy.h"
static volatile int initialised = 42;
static volatile int zeroed;
int main(void) { return initialised == 42 && zeroed == 0 ? policy_selftest() : 3; }
""")
    elf = build_arm(out, "main_layout.c")
    res = run_qemu(elf)
    assert res.returncode == 0, res.stdout + res.stderr
    sections = {}
    for line in subprocess.run(["arm-none-eabi-size", "-A", "-x", str(elf)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("."):
            sections[parts[0]] = (int(parts[1], 16), int(parts[2], 16))
    assert sections[".vectors"][1] == 0x08000000
    assert 0x08000000 < sections[".text"][1] < 0x08100000 and sections[".text"][0] > 4000  # weights in .text/.rodata
    assert 0x20000000 <= sections[".data"][1] < 0x20020000 and 0x20000000 <= sections[".bss"][1] < 0x20020000
    with pytest.raises(ValueError, match="unknown QEMU board"):
        build_arm(out, board="stm32-nucleo")


CRAZYFLIE_DIR = Path(__file__).resolve().parents[1] / "hardware/crazyflie"
CRAZYFLIE_CONTROLLER = CRAZYFLIE_DIR / "controller_robopolicy.c"
# The firmware's types as recorded from the pinned commit (firmware_types/) and host shims for its OS services
# (host/: tick counter, log/param tables). No stand-in types are defined here.
CRAZYFLIE_RECORD = [f"-I{CRAZYFLIE_DIR / 'firmware_types'}", f"-I{CRAZYFLIE_DIR / 'host'}"]
# the pinned firmware's compiler flags for cf2 (hardware/crazyflie/Makefile FIRMWARE_CFLAGS)
FIRMWARE_ARM_CFLAGS = ["-std=gnu11", "-DCRAZYFLIE_FW", "-Wall", "-Wmissing-braces", "-fno-strict-aliasing",
                       "-ffunction-sections", "-fdata-sections", "-Wdouble-promotion", "-mcpu=cortex-m4", "-mthumb",
                       "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-fno-math-errno", "-DARM_MATH_CM4",
                       "-D__FPU_PRESENT=1", "-mfp16-format=ieee", "-Os", "-Werror"]


@needs_arm
def test_crazyflie_controller_compiles(tmp_path):
    """controller_robopolicy.c + a 22-input exported policy compile for the Cortex-M4F with the firmware's flags,
    against the firmware types recorded from the pinned commit (control_t has no motorPwm there)."""
    out = export_c(hover_mlp(fps=500), tmp_path / "policy")
    for f in (CRAZYFLIE_CONTROLLER, out / "policy.c", out / "policy_selftest.c"):
        res = subprocess.run(["arm-none-eabi-gcc", *FIRMWARE_ARM_CFLAGS, *CRAZYFLIE_RECORD, f"-I{out}", "-c", str(f),
                              "-o", str(tmp_path / (f.stem + ".o"))], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


# Includes the controller (recorded firmware types) and flies it for 40 stabilizer ticks at 1 kHz with a
# moving state, printing every policy step; then lets the setpoint go stale.
CRAZYFLIE_DRIVER = r"""
#include "controller_robopolicy.c"
#include <stdio.h>
static uint32_t now_ticks;
TickType_t xTaskGetTickCount(void) { return now_ticks; }
int main(void) {
    control_t control; setpoint_t sp; state_t st; sensorData_t sensors; uint32_t tick; int i;
    uint8_t *enable = host_entry_find(host_param_robopolicy, "enable");
    const uint32_t *steps = host_entry_find(host_log_robopolicy, "steps");
    const uint8_t *tripped_log = host_entry_find(host_log_robopolicy, "tripped");
    memset(&control, 0, sizeof control); memset(&sp, 0, sizeof sp); memset(&st, 0, sizeof st);
    memset(&sensors, 0, sizeof sensors);
    st.attitudeQuaternion.w = 1.0f;
    controllerOutOfTreeInit();
    printf("selftest %d\n", controllerOutOfTreeTest() ? 1 : 0); /* the generated vectors: arming check */
    now_ticks = 0; sp.timestamp = 0;
    controllerOutOfTree(&control, &sp, &sensors, &st, 0); /* robopolicy.enable = 0 at boot: motors off */
    printf("disabled %d %g %g %g %g %u\n", control.controlMode, control.normalizedForces[0],
           control.normalizedForces[1], control.normalizedForces[2], control.normalizedForces[3], *steps);
    *enable = 1;
    for (tick = 0; tick < 40; ++tick) {
        uint32_t before = *steps;
        now_ticks = tick; sp.timestamp = tick;
        st.position.x = 0.01f * (float)tick; st.velocity.z = -0.02f * (float)tick; sensors.gyro.y = 3.0f * (float)tick;
        controllerOutOfTree(&control, &sp, &sensors, &st, tick);
        if (*steps == before) continue;
        printf("step %u %d", tick, control.controlMode);
        for (i = 0; i < 22; ++i) printf(" %.9g", obs[i]);
        for (i = 0; i < 4; ++i) printf(" %.9g", control.normalizedForces[i]);
        printf("\n");
    }
    now_ticks = 1000; /* setpoint 960 ms old */
    controllerOutOfTree(&control, &sp, &sensors, &st, 1000);
    printf("stale %u %d %g %g %g %g\n", *tripped_log, control.controlMode, control.normalizedForces[0],
           control.normalizedForces[1], control.normalizedForces[2], control.normalizedForces[3]);
    sp.timestamp = 1000; /* fresh again: the trip is latched until re-initialization */
    controllerOutOfTree(&control, &sp, &sensors, &st, 1000);
    printf("latched %u %g\n", *tripped_log, control.normalizedForces[0]);
    return 0;
}
"""


def hover_mlp(fps: float | None) -> MLPPolicy:
    cfg = MLPConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[32, 32], activation="relu", fps=fps,
                    input_features=[FeatureSpec("observation.state", (22,))], output_features=[FeatureSpec("action", (4,))],
                    normalization={"observation.state": "identity", "action": "identity"})
    torch.manual_seed(0)
    policy = MLPPolicy(cfg, Normalizer({}, cfg.normalization))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))  # commands that move, some beyond [-1, 1]
    return policy.eval()


def build_crazyflie_driver(policy, tmp_path):
    out = export_c(policy, tmp_path / "policy")
    (tmp_path / "driver.c").write_text(CRAZYFLIE_DRIVER)
    exe = tmp_path / "driver"
    res = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-O1", f"-I{out}", f"-I{CRAZYFLIE_DIR}", *CRAZYFLIE_RECORD,
                          str(tmp_path / "driver.c"), str(out / "policy.c"), str(out / "policy_selftest.c"), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    return exe, res


@needs_gcc
@pytest.mark.parametrize("fps", [500, 100])
def test_crazyflie_controller_runs_at_the_policys_rate_and_feeds_the_rotor_estimate(tmp_path, fps):
    policy = hover_mlp(fps)
    exe, res = build_crazyflie_driver(policy, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    steps = [line.split()[1:] for line in lines if line.startswith("step")]
    ticks = [int(s[0]) for s in steps]
    assert ticks == list(range(0, 40, 1000 // fps))  # one policy step per 1/fps s of the 1 kHz loop
    assert {int(s[1]) for s in steps} == {2}  # controlModeForce (the recorded control_mode_t)
    obs = np.array([[float(v) for v in s[2:24]] for s in steps])
    forces = np.array([[float(v) for v in s[24:28]] for s in steps])
    rotor = controller_rotor_constants()  # checked against L2F's Crazyflie model below, where L2F is installed
    # the observation the simulator would give: the same position/velocity errors and rates ...
    np.testing.assert_allclose(obs[:, 0], 0.01 * np.array(ticks), atol=1e-6)
    np.testing.assert_allclose(obs[:, 14], -0.02 * np.array(ticks), atol=1e-6)
    np.testing.assert_allclose(obs[:, 16], np.radians(3.0 * np.array(ticks)), rtol=1e-6)
    # ... and the rotor estimate: the clipped commands through the rotor lag, from the hover command
    with torch.no_grad():
        commands = policy.net(torch.as_tensor(obs, dtype=torch.float32)).numpy().clip(-1, 1)
    np.testing.assert_allclose(forces, (commands + 1) / 2, atol=1e-6)  # normalizedForces in 0..1
    assert forces.min() >= 0 and forces.max() <= 1 and (forces == 0).any() and (forces == 1).any()
    k_rise = 1 - np.exp(-1 / fps / rotor["ROTOR_TAU_RISING_S"])
    k_fall = 1 - np.exp(-1 / fps / rotor["ROTOR_TAU_FALLING_S"])
    estimate = np.full(4, rotor["HOVER_COMMAND"])
    for i in range(len(steps)):
        np.testing.assert_allclose(obs[i, 18:22], estimate, atol=2e-6)
        estimate = estimate + (commands[i] - estimate) * np.where(commands[i] > estimate, k_rise, k_fall)
    assert len(set(np.round(obs[:, 18], 4))) > 3  # the estimate moved
    assert lines[-2].split() == ["stale", "1", "2", "0", "0", "0", "0"]  # watchdog: motors cut
    assert lines[-1].split() == ["latched", "1", "0"]
    assert lines[0] == "selftest 1"
    assert lines[1].split() == ["disabled", "2", "0", "0", "0", "0", "0"]  # not enabled: off, policy not run


@needs_gcc
@pytest.mark.parametrize("fps", [None, 300])
def test_crazyflie_controller_refuses_a_policy_without_a_usable_rate(tmp_path, fps):
    _, res = build_crazyflie_driver(hover_mlp(fps), tmp_path)
    assert res.returncode != 0 and "POLICY_FPS" in res.stderr


def controller_rotor_constants() -> dict[str, float]:
    import re

    src = CRAZYFLIE_CONTROLLER.read_text()
    return {k: float(re.search(rf"#define {k} ([0-9.]+)f", src).group(1))
            for k in ("ROTOR_TAU_RISING_S", "ROTOR_TAU_FALLING_S", "HOVER_COMMAND")}


def test_crazyflie_controller_rotor_model_matches_the_simulator():
    pytest.importorskip("l2f", reason="the rotor model comes from L2F's Crazyflie parameters")
    from robopolicy.sim.quadrotor import crazyflie_model

    value = controller_rotor_constants()
    m = crazyflie_model()
    assert value["ROTOR_TAU_RISING_S"] == pytest.approx(m.time_constant_rising, rel=1e-5)
    assert value["ROTOR_TAU_FALLING_S"] == pytest.approx(m.time_constant_falling, rel=1e-5)
    assert value["HOVER_COMMAND"] == pytest.approx(m.hover_action, rel=1e-6)


# ---- Streaming Flow Policy ------------------------------------------------------------------------
def with_velocity_field_that_matters(policy):
    """Fresh output layers are near zero; perturb every weight so the velocity field matters."""
    with torch.no_grad():
        for p in policy.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def make_sfp(variant: str = "deterministic", hidden: int = 32, steps: int = 3, start_key: str | None = "observation.state"):
    from robopolicy.policies.sfp.configuration import SFPConfig
    from robopolicy.policies.sfp.modeling import StreamingFlowPolicy

    cfg = SFPConfig(n_obs_steps=2, horizon=6, n_action_steps=2, variant=variant, hidden_dim=hidden, n_layers=2,
                    time_embed_dim=16, integration_steps_per_action=steps, start_from_observation_key=start_key,
                    input_features=[FeatureSpec("observation.state", (2,)), FeatureSpec("observation.target", (3,))],
                    output_features=[FeatureSpec("action", (2,))],
                    normalization={"observation.state": "min_max", "observation.target": "mean_std", "action": "min_max"})
    stats = {"observation.state": {"min": [0.0, -1.0], "max": [4.0, 3.0]},
             "observation.target": {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 0.5]},
             "action": {"min": [0.0, -1.0], "max": [4.0, 3.0]}}
    torch.manual_seed(0)
    return with_velocity_field_that_matters(StreamingFlowPolicy(cfg, Normalizer(stats, cfg.normalization)).eval())


def run_sfp_eval(exe, obs: np.ndarray, starts: np.ndarray, seeds: list[int]) -> np.ndarray:
    text = "\n".join(" ".join([*(repr(float(v)) for v in o), *(repr(float(v)) for v in s), str(seed)])
                     for o, s, seed in zip(obs, starts, seeds, strict=True))
    out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
    return np.array([[float(v) for v in line.split()] for line in out.strip().splitlines()])


def test_c_gaussian_is_standard_normal():
    from robopolicy.export.c_export import c_gaussian

    x = np.concatenate([c_gaussian(seed, 2) for seed in range(1, 4001)])
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05
    assert not np.allclose(c_gaussian(1, 4), c_gaussian(2, 4))
    np.testing.assert_array_equal(c_gaussian(7, 5), c_gaussian(7, 5))


@needs_gcc
@pytest.mark.parametrize("variant", ["deterministic", "stochastic"])
def test_sfp_host_matches_torch(tmp_path, variant):
    from robopolicy.export.c_export import reference_sfp_actions, sample_starts

    policy = make_sfp(variant)
    out = export_c(policy, tmp_path / "c")
    obs, starts = sample_observations(policy, 16, seed=3), sample_starts(policy, 16, seed=4)
    seeds = [11 + 13 * i for i in range(16)]
    expected = reference_sfp_actions(policy, obs, starts, seeds)
    got = run_sfp_eval(build_host(out, "main_eval.c"), obs, starts, seeds)
    assert np.abs(got - expected).max() <= FLOAT_BOUND
    # the noise matters: another seed gives another action (sigma0 = 0.1 of the normalized range)
    other = reference_sfp_actions(policy, obs, starts, [s + 1 for s in seeds])
    assert np.abs(other - expected).max() > 1e-3
    assert subprocess.run([str(build_host(out))], capture_output=True).returncode == 0  # self-test vectors


@needs_gcc
def test_sfp_policy_step_chains_from_its_last_action(tmp_path):
    """policy_step: first flow from the observation's position, then from the action it returned, seed advancing."""
    from robopolicy.export.c_export import SEED_INC, SEED_MULT, reference_sfp_actions

    policy = make_sfp("deterministic")
    out = export_c(policy, tmp_path / "c")
    obs = sample_observations(policy, 3, seed=5)
    (out / "main_chain.c").write_text("""#include <stdio.h>
#include "policy.h"
int main(void) {
    float obs[POLICY_OBS_DIM], a[POLICY_ACTION_DIM];
    int n, i;
    policy_set_seed(42u);
    for (n = 0; n < 3; ++n) {
        for (i = 0; i < POLICY_OBS_DIM; ++i) if (scanf("%f", &obs[i]) != 1) return 2;
        if (policy_step(obs, a) != 0) return 1;
        printf("%.9g %.9g\\n", (double)a[0], (double)a[1]);
    }
    return 0;
}
""")
    got = run_eval(build_host(out, "main_chain.c"), obs)
    seeds = [42]
    for _ in range(2):
        seeds.append((seeds[-1] * SEED_MULT + SEED_INC) % 2**32)
    first = reference_sfp_actions(policy, obs[:1], None, seeds[:1])  # start = NULL: from observation.state
    assert np.abs(got[0] - first[0]).max() <= FLOAT_BOUND
    for k in (1, 2):
        expected = reference_sfp_actions(policy, obs[k:k + 1], got[k - 1:k].astype(np.float32), seeds[k:k + 1])
        assert np.abs(got[k] - expected[0]).max() <= FLOAT_BOUND


@needs_gcc
def test_sfp_int8_and_refusals(tmp_path):
    from robopolicy.export.c_export import reference_sfp_actions, sample_starts

    policy = make_sfp("stochastic")
    out = export_c(policy, tmp_path / "q", int8=True)
    obs, starts, seeds = sample_observations(policy, 8, seed=6), sample_starts(policy, 8, seed=7), list(range(1, 9))
    got = run_sfp_eval(build_host(out, "main_eval.c"), obs, starts, seeds)
    assert np.abs(got - reference_sfp_actions(policy, obs, starts, seeds, int8=True)).max() <= INT8_BOUND_VS_DEQUANT
    assert "int8_t Wfilm0" in (out / "policy.c").read_text()
    policy.set_sampler("rk4")
    with pytest.raises(CExportError, match="euler"):
        export_c(policy, tmp_path / "rk4")


@needs_arm
def test_sfp_cortex_m4_selftest_under_qemu(tmp_path):
    out = export_c(make_sfp("stochastic"), tmp_path / "arm", n_selftest=3)
    res = run_qemu(build_arm(out))  # netduinoplus2: the STM32F405 of a Crazyflie 2.x
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout


# ---- Flow matching (mlp backbone) -----------------------------------------------------------------
def make_flow(backbone: str = "mlp", steps: int = 4, clip: bool = True):
    from robopolicy.policies.flow.configuration import FlowConfig
    from robopolicy.policies.flow.modeling import FlowPolicy

    cfg = FlowConfig(n_obs_steps=2, horizon=4, n_action_steps=2, backbone=backbone, mlp_hidden_dim=32, mlp_layers=2,
                     step_embed_dim=16, down_dims=[16, 32], n_groups=4, num_inference_steps=steps, clip_sample=clip,
                     input_features=[FeatureSpec("observation.state", (3,)), FeatureSpec("observation.target", (2,))],
                     output_features=[FeatureSpec("action", (2,))],
                     normalization={"observation.state": "min_max", "observation.target": "mean_std",
                                    "action": "min_max"})
    stats = {"observation.state": {"min": [0.0, -1.0, -2.0], "max": [4.0, 3.0, 2.0]},
             "observation.target": {"mean": [0.1, 0.2], "std": [1.0, 2.0]},
             "action": {"min": [0.0, -1.0], "max": [4.0, 3.0]}}
    torch.manual_seed(0)
    return with_velocity_field_that_matters(FlowPolicy(cfg, Normalizer(stats, cfg.normalization)).eval())


def run_flow_eval(exe, obs: np.ndarray, seeds: list[int]) -> np.ndarray:
    text = "\n".join(" ".join([*(repr(float(v)) for v in o), str(seed)]) for o, seed in zip(obs, seeds, strict=True))
    out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True).stdout
    return np.array([[float(v) if v != "nan" else np.nan for v in line.split()] for line in out.strip().splitlines()])


@needs_gcc
@pytest.mark.parametrize("clip", [True, False])
def test_flow_host_matches_torch(tmp_path, clip):
    from robopolicy.export.c_export import reference_flow_actions

    policy = make_flow(clip=clip)
    out = export_c(policy, tmp_path / "c")
    obs, seeds = sample_observations(policy, 16, seed=3), [11 + 13 * i for i in range(16)]
    expected = reference_flow_actions(policy, obs, seeds)
    got = run_flow_eval(build_host(out, "main_eval.c"), obs, seeds)
    assert np.abs(got - expected).max() <= FLOAT_BOUND
    # the noise matters: another seed gives another action
    assert np.abs(reference_flow_actions(policy, obs, [s + 1 for s in seeds]) - expected).max() > 1e-3
    # and the reference is the policy's own sampler: the same noise through generate_actions
    from robopolicy.export.c_export import c_gaussian

    noise = torch.as_tensor(c_gaussian(seeds[0], 8)).view(1, 4, 2)
    hist = {"observation.state": torch.as_tensor(obs[:1]).view(1, 2, 5)[..., :3],
            "observation.target": torch.as_tensor(obs[:1]).view(1, 2, 5)[..., 3:]}
    with torch.no_grad():
        normalized = {k: policy.normalizer.normalize(k, v) for k, v in hist.items()}
        chunk = policy.normalizer.unnormalize("action", policy.generate_actions(normalized, noise=noise))
    assert np.abs(chunk[0, 1].double().numpy() - got[0]).max() <= FLOAT_BOUND
    assert subprocess.run([str(build_host(out))], capture_output=True).returncode == 0  # self-test vectors
    nan_obs = obs[:1].copy()
    nan_obs[0, 0] = np.nan
    assert np.isnan(run_flow_eval(build_host(out, "main_eval.c"), nan_obs, [1])).all()


@needs_gcc
def test_flow_int8_and_refusals(tmp_path):
    from robopolicy.export.c_export import reference_flow_actions

    policy = make_flow()
    out = export_c(policy, tmp_path / "q", int8=True)
    obs, seeds = sample_observations(policy, 8, seed=6), list(range(1, 9))
    got = run_flow_eval(build_host(out, "main_eval.c"), obs, seeds)
    assert np.abs(got - reference_flow_actions(policy, obs, seeds, int8=True)).max() <= INT8_BOUND_VS_DEQUANT
    with pytest.raises(CExportError, match="mlp"):
        export_c(make_flow(backbone="unet"), tmp_path / "unet")
    policy.set_sampler("heun")
    with pytest.raises(CExportError, match="euler"):
        export_c(policy, tmp_path / "heun")


@needs_arm
def test_flow_cortex_m4_selftest_under_qemu(tmp_path):
    out = export_c(make_flow(), tmp_path / "arm", n_selftest=3)
    res = run_qemu(build_arm(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
