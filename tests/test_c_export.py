"""C export of MLP policies: host build (gcc -Werror), numerical match with torch, int8, Cortex-M4 under QEMU."""

from __future__ import annotations

import shutil
import subprocess

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


def make_policy(activation: str = "relu", hidden=(32, 32), n_obs_steps: int = 2, horizon: int = 4) -> MLPPolicy:
    cfg = MLPConfig(n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=1, hidden_dims=list(hidden),
                    activation=activation,
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
@pytest.mark.parametrize("int8", [False, True])
def test_cortex_m4_selftest_under_qemu(tmp_path, int8):
    policy = make_policy("tanh", hidden=(64, 64))
    out = export_c(policy, tmp_path / "arm", int8=int8, n_selftest=4)
    elf = build_arm(out)
    res = run_qemu(elf)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    # a corrupted expected vector must make the exit code non-zero (the verdict really travels)
    st = (out / "policy_selftest.c").read_text()
    i = st.index("SELFTEST_ACTION")
    j = st.index("{", i) + 1
    (out / "policy_selftest.c").write_text(st[:j] + "1.0f + " + st[j:])
    assert run_qemu(build_arm(out)).returncode != 0


@needs_arm
def test_crazyflie_controller_compiles(tmp_path):
    """hardware/crazyflie/controller_robopolicy.c + a 22-input exported policy compile for the Cortex-M4F."""
    from pathlib import Path

    from robopolicy.export.c_export import ARM_CFLAGS

    cfg = MLPConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[32, 32], activation="tanh",
                    input_features=[FeatureSpec("observation.state", (22,))], output_features=[FeatureSpec("action", (4,))],
                    normalization={"observation.state": "identity", "action": "identity"})
    out = export_c(MLPPolicy(cfg, Normalizer({}, cfg.normalization)), tmp_path / "policy")
    src = Path(__file__).resolve().parents[1] / "hardware/crazyflie/controller_robopolicy.c"
    for f in (src, out / "policy.c", out / "policy_selftest.c"):
        res = subprocess.run(["arm-none-eabi-gcc", *ARM_CFLAGS, "-DROBOPOLICY_HOST_CHECK", f"-I{out}", "-c", str(f),
                              "-o", str(tmp_path / (f.stem + ".o"))], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
