"""Record, from a crazyflie-firmware checkout, the firmware types and names robopolicy builds against.

    python -m robopolicy.robots.crazyflie_firmware_record FIRMWARE_DIR           # (re)write the record
    python -m robopolicy.robots.crazyflie_firmware_record FIRMWARE_DIR --check   # exit 1 if the record differs

The record is ``hardware/crazyflie/firmware_types/`` of a checkout (``--out`` elsewhere).

CI has no firmware tree, so the controller is compiled there against this record (firmware_types/*.h) and the
radio driver's log/parameter names are checked against firmware_types/firmware_names.json. The record is
copied verbatim (declaration by declaration) from the firmware headers at the commit in FIRMWARE_COMMIT;
re-run this script after moving to a new firmware commit, then `make -C hardware/crazyflie check`.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

RECORD_DIR = Path(__file__).resolve().parents[2] / "hardware" / "crazyflie" / "firmware_types"  # in a checkout

# header (relative to the firmware root) -> the declarations to copy from it, in order
STABILIZER_TYPES = ("src/modules/interface/stabilizer_types.h", [
    "stabilizerStep_t", "attitude_t", "struct vec3_s", "point_t", "velocity_t", "acc_t", "jerk_t", "quaternion_t",
    "baro_t", "sensorData_t", "state_t", "STABILIZER_NR_OF_MOTORS", "control_mode_t", "control_t",
    "motors_thrust_uncapped_t", "motors_thrust_pwm_t", "stab_mode_t", "setpoint_mode_t", "setpoint_t"])
IMU_TYPES = ("src/hal/interface/imu_types.h", ["Axis3f"])
CONTROLLER = ("src/modules/interface/controller/controller.h",
              ["controllerOutOfTreeInit", "controllerOutOfTreeTest", "controllerOutOfTree"])
TICKS = ("src/config/FreeRTOSConfig.h", ["configTICK_RATE_HZ_RAW", "M2T", "T2M"])
LOG_TYPES = ("src/modules/interface/log.h", ["LOG_UINT8", "LOG_UINT16", "LOG_UINT32", "LOG_FLOAT"])
PARAM_TYPES = ("src/modules/interface/param.h", [
    "PARAM_1BYTE", "PARAM_2BYTES", "PARAM_4BYTES", "PARAM_TYPE_INT", "PARAM_TYPE_FLOAT", "PARAM_UNSIGNED",
    "PARAM_SIGNED", "PARAM_UINT8", "PARAM_UINT16", "PARAM_FLOAT"])
POWER_DISTRIBUTION = ("src/modules/src/power_distribution_quadrotor.c", ["powerDistributionForce"])

# log and parameter names robopolicy uses (robopolicy/robots/crazyflie.py, docs/quadrotor.md): group.name
LOG_NAMES = ["stateEstimate.x", "stateEstimate.y", "stateEstimate.z", "stateEstimate.vx", "stateEstimate.vy",
             "stateEstimate.vz", "stateEstimate.roll", "stateEstimate.pitch", "stateEstimate.yaw",
             "stabilizer.roll", "stabilizer.pitch", "stabilizer.yaw", "gyro.x", "gyro.y", "gyro.z",
             "supervisor.info"]
PARAM_NAMES = ["motorPowerSet.enable", "motorPowerSet.m1", "motorPowerSet.m2", "motorPowerSet.m3",
               "motorPowerSet.m4", "stabilizer.controller", "stabilizer.estimator", "commander.enHighLevel"]
# facts of the firmware's safety logic the driver and docs rely on: (file, regex with one group)
FACTS = {
    "commander_wdt_timeout_stabilize_ms": ("src/modules/src/supervisor.c",
                                           r"#define COMMANDER_WDT_TIMEOUT_STABILIZE\s+M2T\((\d+)\)"),
    "commander_wdt_timeout_shutdown_ms": ("src/modules/src/supervisor.c",
                                          r"#define COMMANDER_WDT_TIMEOUT_SHUTDOWN\s+M2T\((\d+)\)"),
    "controller_oot_index": ("src/modules/interface/controller/controller.h", None),
    "rpyt_thrust_lock_released_by_zero_thrust": ("src/modules/src/crtp_commander_rpyt.c",
                                                 r"if \((values->thrust == 0)\)"),
    "state_attitude_pitch_comment": ("src/modules/interface/stabilizer_types.h",
                                     r"attitude_t attitude;\s*// (.*)"),
}


def _skip_comment(text: str, i: int) -> int:
    if text.startswith("//", i):
        return text.index("\n", i) if "\n" in text[i:] else len(text)
    if text.startswith("/*", i):
        return text.index("*/", i) + 2
    return i


def top_level_statements(text: str) -> list[str]:
    """Split C source into top-level statements (declarations ending in ';' at brace depth 0, function bodies,
    and preprocessor lines), comments kept with the statement they precede or follow on the same line."""
    out, start, depth, i = [], 0, 0, 0
    while i < len(text):
        j = _skip_comment(text, i)
        if j != i:
            i = j
            continue
        c = text[i]
        if c == "#" and depth == 0 and (i == 0 or text[i - 1] == "\n"):
            end = i
            while True:  # a directive with line continuations
                end = text.index("\n", end) if "\n" in text[end:] else len(text)
                if text[end - 1] != "\\" or end == len(text):
                    break
                end += 1
            out.append(text[start:end])
            start = i = end
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and re.match(r"\s*\n", text[i + 1:]) and not re.match(r"[^;]*;", text[i + 1:].split("\n")[0]):
                if re.search(r"\)\s*\{", text[start:i]) and not text[start:i].lstrip().startswith("typedef"):
                    out.append(text[start:i + 1])  # a function body
                    start = i + 1
        elif c == ";" and depth == 0:
            end = text.index("\n", i) if "\n" in text[i:] else len(text)
            out.append(text[start:end])
            start = i = end
            continue
        i += 1
    return out


def _strip_leading(stmt: str) -> str:
    """Drop blank lines and the comments before a statement (kept: comments inside and on its lines)."""
    s = stmt.lstrip("\n")
    while True:
        t = s.lstrip()
        if t.startswith("/*"):
            s = t[t.index("*/") + 2:].lstrip("\n")
        elif t.startswith("//"):
            s = t[t.index("\n") + 1:] if "\n" in t else ""
        else:
            return s.strip("\n")


def declared_name(stmt: str) -> str | None:
    s = _strip_leading(stmt)
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", s, flags=re.S).strip()
    if m := re.match(r"#define\s+(\w+)", code):
        return m.group(1)
    if code.startswith("#"):
        return None
    if code.startswith("typedef"):
        m = re.search(r"(\w+)\s*(\[[^\]]*\])*\s*;\s*$", code)
        return m.group(1) if m else None
    if m := re.match(r"struct\s+(\w+)\s*\{.*\}\s*;$", code, re.S):
        return f"struct {m.group(1)}"
    if m := re.search(r"(\w+)\s*\([^;{]*\)\s*(;|\{)", code):
        return m.group(1)
    return None


def extract(firmware: Path, header: str, names: list[str]) -> str:
    text = (firmware / header).read_text()
    found = {}
    for stmt in top_level_statements(text):
        name = declared_name(stmt)
        if name in names and name not in found:
            found[name] = _strip_leading(stmt)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{firmware / header}: no declaration of {missing}; the firmware API changed, update "
                         f"hardware/crazyflie/controller_robopolicy.c and this script")
    return f"/* from {header} */\n" + "\n\n".join(found[n] for n in names) + "\n"


def _group_names(firmware: Path, kind: str) -> dict[str, str]:
    """group.name -> 'file:line TYPE' for every LOG_ADD*/PARAM_ADD* in the firmware's sources."""
    table: dict[str, str] = {}
    for path in sorted((firmware / "src").rglob("*.c")):
        group = None
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if m := re.match(rf"\s*{kind}_GROUP_START\((\w+)\)", line):
                group = m.group(1)
            elif m := re.match(rf"\s*{kind}_ADD\w*\(([^,]+),\s*(\w+)\s*,", line):
                if group is not None:
                    table.setdefault(f"{group}.{m.group(2)}", f"{path.relative_to(firmware)}:{n} {m.group(1).strip()}")
    return table


def firmware_commit(firmware: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(firmware), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        marker = firmware / ".robopolicy_commit"
        if marker.exists():
            return marker.read_text().strip()
        raise SystemExit(f"{firmware}: not a git checkout; write the commit hash into {marker}") from None


def facts(firmware: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, (path, pattern) in FACTS.items():
        text = (firmware / path).read_text()
        if pattern is None:  # the OOT controller's index in ControllerType, for the stabilizer.controller param
            body = re.search(r"typedef enum \{(.*?)\} ControllerType;", text, re.S).group(1)
            members = [m for m in re.findall(r"^\s*(\w+),", body, re.M)]
            out[key] = members.index("ControllerTypeOot")
            continue
        m = re.search(pattern, text)
        if m is None:
            raise SystemExit(f"{firmware / path}: pattern {pattern!r} not found; the firmware changed")
        out[key] = int(m.group(1)) if m.group(1).isdigit() else m.group(1).strip()
    return out


def record(firmware: Path) -> dict[str, str]:
    """The record's files, name -> content."""
    banner = ("/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; "
              "do not edit.\n * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: "
              "GPL-3.0 (the firmware's). */\n")
    files = {}
    files["FIRMWARE_COMMIT"] = firmware_commit(firmware) + "\n"
    files["imu_types.h"] = (banner + "#ifndef IMU_TYPES_H_\n#define IMU_TYPES_H_\n#include <stdint.h>\n\n"
                            + extract(firmware, *IMU_TYPES) + "\n#endif\n")
    files["stabilizer_types.h"] = (banner + "#ifndef __STABILIZER_TYPES_H__\n#define __STABILIZER_TYPES_H__\n"
                                   "#include <stdint.h>\n#include <stdbool.h>\n#include \"imu_types.h\"\n\n"
                                   + extract(firmware, *STABILIZER_TYPES) + "\n#endif\n")
    files["controller.h"] = (banner + "#ifndef __CONTROLLER_H__\n#define __CONTROLLER_H__\n"
                             "#include \"stabilizer_types.h\"\n\n" + extract(firmware, *CONTROLLER) + "\n#endif\n")
    files["ticks.h"] = (banner + "/* the FreeRTOS tick conversions of the firmware's FreeRTOSConfig.h (1 tick = 1 ms) "
                        "*/\n#ifndef ROBOPOLICY_TICKS_H\n#define ROBOPOLICY_TICKS_H\n"
                        + extract(firmware, *TICKS) + "\n#endif\n")
    files["log_types.h"] = (banner + "#ifndef ROBOPOLICY_LOG_TYPES_H\n#define ROBOPOLICY_LOG_TYPES_H\n"
                            + extract(firmware, *LOG_TYPES) + "\n#endif\n")
    files["param_types.h"] = (banner + "#ifndef ROBOPOLICY_PARAM_TYPES_H\n#define ROBOPOLICY_PARAM_TYPES_H\n"
                              + extract(firmware, *PARAM_TYPES) + "\n#endif\n")
    files["power_distribution_force.c.inc"] = banner + extract(firmware, *POWER_DISTRIBUTION)
    logs, params = _group_names(firmware, "LOG"), _group_names(firmware, "PARAM")
    names = {
        "log": {n: logs.get(n) for n in LOG_NAMES},
        "param": {n: params.get(n) for n in PARAM_NAMES},
        "facts": facts(firmware),
    }
    missing = [n for kind in ("log", "param") for n, v in names[kind].items() if v is None]
    if missing:
        raise SystemExit(f"{firmware}: the firmware defines no {missing}; fix the names robopolicy uses")
    files["firmware_names.json"] = json.dumps(names, indent=1, sort_keys=True) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("firmware", type=Path, help="crazyflie-firmware checkout")
    parser.add_argument("--check", action="store_true", help="compare with the committed record, write nothing")
    parser.add_argument("--out", type=Path, default=RECORD_DIR)
    args = parser.parse_args()
    files = record(args.firmware.resolve())
    if args.check:
        stale = [n for n, text in files.items()
                 if not (args.out / n).exists() or (args.out / n).read_text() != text]
        if stale:
            print(f"record differs from {args.firmware}: {stale}; re-run without --check", file=sys.stderr)
            return 1
        print(f"record matches {args.firmware} ({files['FIRMWARE_COMMIT'].strip()})")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
