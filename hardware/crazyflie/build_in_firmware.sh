#!/usr/bin/env bash
# Bench step: build the robopolicy out-of-tree controller inside bitcraze's crazyflie-firmware for cf2 with
# the firmware's own build (Kbuild, cf2_defconfig, its flags and linker script), link the whole image and
# report its flash/RAM and the controller's share.
#
#   hardware/crazyflie/build_in_firmware.sh FIRMWARE_DIR POLICY_DIR [WORK_DIR]
#
# FIRMWARE_DIR: a crazyflie-firmware checkout with its submodules (vendor/CMSIS, vendor/FreeRTOS,
#   vendor/libdw1000), at the commit in firmware_types/FIRMWARE_COMMIT or near it.
# POLICY_DIR: the output of robopolicy.export.c_export.export_c(policy, POLICY_DIR) (22 inputs, 4 outputs).
# WORK_DIR: where the app is assembled and built (default: a new temporary directory); never inside a repo.
# Needs arm-none-eabi-gcc, libnewlib-arm-none-eabi, make, python3. The firmware is not part of this repository.
set -euo pipefail
FIRMWARE=$(cd "${1:?usage: $0 FIRMWARE_DIR POLICY_DIR [WORK_DIR]}" && pwd)
POLICY=$(cd "${2:?usage: $0 FIRMWARE_DIR POLICY_DIR [WORK_DIR]}" && pwd)
WORK=${3:-$(mktemp -d /tmp/robopolicy_cf2.XXXXXX)}
HERE=$(cd "$(dirname "$0")" && pwd)
JOBS=${JOBS:-2}

for f in policy.h policy.c policy_selftest.c; do
  [ -f "$POLICY/$f" ] || { echo "$POLICY/$f missing: export the policy with export_c() first" >&2; exit 2; }
done
for d in vendor/FreeRTOS/include vendor/CMSIS/CMSIS/Core/Include vendor/libdw1000/src; do
  [ -d "$FIRMWARE/$d" ] || { echo "$FIRMWARE/$d missing: fetch the firmware's submodules" >&2; exit 2; }
done

mkdir -p "$WORK/app/policy"
cp "$HERE/controller_robopolicy.c" "$HERE/Kbuild" "$HERE/app-config" "$WORK/app/"
cp "$POLICY"/policy.h "$POLICY"/policy.c "$POLICY"/policy_selftest.c "$WORK/app/policy/"
cat > "$WORK/app/Makefile" <<MK
CRAZYFLIE_BASE := $FIRMWARE
OOT_CONFIG := \$(PWD)/app-config
EXTRA_CFLAGS += -I\$(PWD)/policy
include \$(CRAZYFLIE_BASE)/tools/make/oot.mk
MK

cd "$WORK/app"
make cf2_defconfig > "$WORK/defconfig.log" 2>&1
make -j"$JOBS" > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; echo "build failed, log: $WORK/build.log" >&2; exit 1; }
ELF="$WORK/app/build/cf2.elf"
echo "== firmware $(cat "$FIRMWARE/.robopolicy_commit" 2>/dev/null || echo '(commit unknown)')"
echo "== image (arm-none-eabi-size): $ELF"
arm-none-eabi-size -A "$ELF" | grep -E '^(\.text|\.data|\.bss|\.ccmbss|\.ccmdata|\.param|\.log|Total)'
arm-none-eabi-size -B "$ELF"
tail -6 "$WORK/build.log"
echo "== controller + policy share (their objects, arm-none-eabi-size -B)"
OBJS="$WORK/app/controller_robopolicy.o $WORK/app/policy/policy.o $WORK/app/policy/policy_selftest.o"
arm-none-eabi-size -B -t $OBJS
echo "== their symbols as linked into the image (arm-none-eabi-nm --size-sort -S; garbage-collected ones absent)"
arm-none-eabi-nm --defined-only $OBJS | awk 'NF==3 {print $3}' | sort -u > "$WORK/symbols.txt"
arm-none-eabi-nm --size-sort -S "$ELF" | awk 'NR==FNR {want[$1]=1; next} ($4 in want)' "$WORK/symbols.txt" - \
  | tee "$WORK/share.txt"
python3 - "$WORK/share.txt" <<'PYSUM'
import sys
flash = ram = 0
for line in open(sys.argv[1]):
    _, size, kind, _ = line.split()
    size = int(size, 16)
    if kind in "tTrR":
        flash += size
    elif kind in "dD":
        flash, ram = flash + size, ram + size
    else:
        ram += size
print(f"controller+policy in the image: flash {flash} B, RAM {ram} B")
PYSUM
echo "== built in $WORK"
