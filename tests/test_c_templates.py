"""The C export's layout: templates are real C files that compile on their own; non-finite weights are refused."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from robopolicy.export.c_export import CExportError, _fmt, export_c
from robopolicy.export.c_sources import template, template_names

HAVE_GCC = shutil.which("gcc") is not None


def test_fmt_refuses_non_finite_numbers_naming_the_array():
    assert _fmt(np.array([1.0, -2.5])) == "{\n    1.0f, -2.5f\n}"
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CExportError, match=r"weight W3 has 1 non-finite value\(s\) \(first at flat index 1"):
            _fmt(np.array([0.0, bad, 1.0]), name="weight W3")
    with pytest.raises(CExportError, match="non-finite"):
        _fmt(np.array([1e39]))  # overflows float32


@pytest.mark.parametrize("int8", [False, True])
def test_export_refuses_a_policy_with_a_nan_weight(tmp_path, int8):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_c_export import make_policy

    policy = make_policy()
    with torch.no_grad():
        policy.net[2].weight[0, 0] = float("nan")
    with pytest.raises(CExportError, match="weight W1 has 1 non-finite"):
        export_c(policy, tmp_path / "out", int8=int8)


def test_templates_are_package_data():
    names = template_names()
    for name in ("linear.c", "activations.c", "mlp_api.c", "policy_api.h", "policy_selftest.c", "main_selftest.c",
                 "main_eval.c", "startup_stm32f405.c", "startup_mps2_an386.c", "stm32f405.ld"):
        assert name in names and template(name).strip()


@pytest.mark.skipif(not HAVE_GCC, reason="no host gcc")
@pytest.mark.parametrize("name,flags", [
    ("linear.c", ["-DPOLICY_INT8=0"]), ("linear.c", ["-DPOLICY_INT8=1"]), ("activations.c", []),
])
def test_templates_compile_on_their_own(tmp_path, name, flags):
    src = tmp_path / name
    src.write_text(template(name))
    res = subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-Wno-unused-function", *flags, "-c", str(src), "-o",
                          str(tmp_path / "t.o")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
@pytest.mark.parametrize("name", ["startup_stm32f405.c", "startup_mps2_an386.c"])
def test_board_startup_templates_compile_for_the_cortex_m4(tmp_path, name):
    from robopolicy.export.c_build import ARM_CFLAGS

    src = tmp_path / name
    src.write_text(template(name))
    res = subprocess.run(["arm-none-eabi-gcc", *ARM_CFLAGS, "-c", str(src), "-o", str(tmp_path / "t.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
