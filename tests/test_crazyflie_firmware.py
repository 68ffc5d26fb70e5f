"""The Crazyflie controller against the firmware: the committed record of its types and names, the record
build (`make -C hardware/crazyflie check`), the firmware's own power distribution for controlModeForce, and,
where a firmware checkout is given (ROBOPOLICY_CRAZYFLIE_FIRMWARE=/path), the record's freshness and the real
cf2 build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robopolicy.export.c_export import export_c

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_c_export import CRAZYFLIE_DIR, CRAZYFLIE_RECORD, hover_mlp  # noqa: E402

RECORD = CRAZYFLIE_DIR / "firmware_types"
FIRMWARE = os.environ.get("ROBOPOLICY_CRAZYFLIE_FIRMWARE")
needs_firmware = pytest.mark.skipif(not FIRMWARE, reason="no firmware tree: set ROBOPOLICY_CRAZYFLIE_FIRMWARE to a "
                                    "crazyflie-firmware checkout at firmware_types/FIRMWARE_COMMIT")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")


def test_record_pins_a_commit_and_has_upstreams_control_api():
    commit = (RECORD / "FIRMWARE_COMMIT").read_text().strip()
    assert len(commit) == 40 and int(commit, 16) >= 0
    types = (RECORD / "stabilizer_types.h").read_text()
    assert "float normalizedForces[STABILIZER_NR_OF_MOTORS]" in types and "controlModeForce       = 2" in types
    assert "motorPwm" not in types.split("motors_thrust_pwm_t")[0]  # control_t has no motorPwm upstream


@needs_arm
def test_make_check_builds_against_the_record_without_a_firmware_tree(tmp_path):
    policy = export_c(hover_mlp(500), tmp_path / "policy")
    res = subprocess.run(["make", "-C", str(CRAZYFLIE_DIR), "check", f"POLICY_DIR={policy}", f"CHECK_DIR={tmp_path}",
                          "CRAZYFLIE_BASE=/nonexistent"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RECORDED firmware types" in res.stdout and "OK:" in res.stdout


POWER_DRIVER = r"""
#include <stdio.h>
#include "stabilizer_types.h"
#include "power_distribution_force.c.inc"
int main(void) {
    control_t c; motors_thrust_uncapped_t m; int i;
    c.controlMode = controlModeForce;
    c.normalizedForces[0] = -0.5f; c.normalizedForces[1] = 0.0f; c.normalizedForces[2] = 0.5f; c.normalizedForces[3] = 2.0f;
    powerDistributionForce(&c, &m);
    for (i = 0; i < 4; ++i) printf("%d ", (int)m.list[i]);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")
def test_firmware_power_distribution_maps_normalized_forces_to_the_pwm_ratio(tmp_path):
    """The firmware's own powerDistributionForce (recorded verbatim): the controller's (a + 1) / 2 becomes the
    PWM ratio (a + 1) / 2 * 65535, clipped to 0..1 first: the simulator's command, no thrust model between."""
    (tmp_path / "p.c").write_text(POWER_DRIVER)
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", *CRAZYFLIE_RECORD, str(tmp_path / "p.c"), "-o",
                    str(tmp_path / "p")], check=True)
    out = subprocess.run([str(tmp_path / "p")], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [0, 0, 32767, 65535]


def test_driver_names_are_recorded_from_the_firmware():
    from robopolicy.robots import crazyflie

    names = json.loads((RECORD / "firmware_names.json").read_text())
    for _, variables in crazyflie.LOG_BLOCKS.items():
        for var, _ in variables:
            assert names["log"].get(var), f"{var} is not a firmware log variable at the pinned commit"
    for param in crazyflie.PARAMS_USED:
        assert names["param"].get(param), f"{param} is not a firmware parameter at the pinned commit"
    assert names["facts"]["commander_wdt_timeout_shutdown_ms"] == crazyflie.FIRMWARE_SETPOINT_SHUTDOWN_S * 1000


@needs_firmware
def test_record_matches_the_firmware_tree():
    res = subprocess.run([sys.executable, "-m", "robopolicy.robots.crazyflie_firmware_record", FIRMWARE, "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
@needs_firmware
@needs_arm
def test_controller_builds_and_links_inside_the_firmware(tmp_path):
    policy = export_c(hover_mlp(500), tmp_path / "policy")
    res = subprocess.run([str(CRAZYFLIE_DIR / "build_in_firmware.sh"), FIRMWARE, str(policy), str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "controller+policy in the image" in res.stdout and (tmp_path / "b/app/build/cf2.elf").exists()
