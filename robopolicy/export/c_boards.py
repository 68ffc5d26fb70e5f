"""Boards the exported C runs on under QEMU (Cortex-M4F, semihosting so the exit code is the verdict).

netduinoplus2 is QEMU's STM32F405, the Crazyflie 2.x's MCU: 1 MiB flash at 0x08000000 (aliased at 0, where
the core fetches its vector table) and 128 KiB SRAM; its linker script (``c_templates/stm32f405.ld``) puts code
and constants in flash and its startup (``c_templates/startup_stm32f405.c``) copies .data from flash and zeroes
.bss itself, as on the real chip. mps2-an386 (Cortex-M4 FPGA image) has RAM at 0, so newlib's default layout
and crt0 work there (``c_templates/startup_mps2_an386.c``).
"""

from __future__ import annotations

from dataclasses import dataclass

from robopolicy.export.c_sources import template


@dataclass(frozen=True)
class QemuBoard:
    """How to link a semihosting self-test for one QEMU machine and how to run it."""

    machine: str
    startup: str  # C source of the vector table and reset handler
    linker_script: str | None  # None: the toolchain's default layout
    ldflags: tuple[str, ...]
    qemu_args: tuple[str, ...] = ()


STARTUP_STM32F405 = template("startup_stm32f405.c")
LINKER_STM32F405 = template("stm32f405.ld")
STARTUP_MPS2 = template("startup_mps2_an386.c")

BOARDS = {
    "netduinoplus2": QemuBoard("netduinoplus2", STARTUP_STM32F405, LINKER_STM32F405,
                               ("--specs=rdimon.specs", "-nostartfiles")),
    "mps2-an386": QemuBoard("mps2-an386", STARTUP_MPS2, None, ("--specs=rdimon.specs", "-Wl,--section-start=.vectors=0x0"),
                            ("-cpu", "cortex-m4")),
}
DEFAULT_BOARD = "netduinoplus2"


def get_board(name: str) -> QemuBoard:
    if name not in BOARDS:
        raise ValueError(f"unknown QEMU board {name!r} (supported: {sorted(BOARDS)})")
    return BOARDS[name]


__all__ = ["BOARDS", "DEFAULT_BOARD", "LINKER_STM32F405", "QemuBoard", "STARTUP_MPS2", "STARTUP_STM32F405", "get_board"]
