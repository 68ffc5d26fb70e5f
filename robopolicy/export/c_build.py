"""Building and running the exported C (tests, bench, CI): host gcc, arm-none-eabi-gcc for a QEMU board, QEMU."""

from __future__ import annotations

import subprocess
from pathlib import Path

from robopolicy.export.c_boards import DEFAULT_BOARD, get_board
from robopolicy.export.c_sources import CExportError

HOST_CFLAGS = ["-std=c99", "-Wall", "-Werror", "-O2"]
ARM_CFLAGS = ["-std=c99", "-Wall", "-Werror", "-O2", "-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16",
              "-mfloat-abi=hard"]


def qemu_command(board: str = DEFAULT_BOARD) -> list[str]:
    b = get_board(board)
    return ["qemu-system-arm", "-M", b.machine, *b.qemu_args, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native"]


def build_host(out_dir: str | Path, main: str = "main_selftest.c", exe: str | None = None, cc: str = "gcc") -> Path:
    """Compile the exported sources plus ``main`` for the host; returns the executable."""
    out_dir = Path(out_dir)
    exe_path = out_dir / (exe or Path(main).stem)
    srcs = [str(out_dir / f) for f in ("policy.c", "policy_selftest.c", main)]
    subprocess.run([cc, *HOST_CFLAGS, "-o", str(exe_path), *srcs, "-lm"], check=True, capture_output=True, text=True)
    return exe_path


def build_arm(out_dir: str | Path, main: str = "main_selftest.c", exe: str | None = None,
              extra_cflags: tuple[str, ...] = (), board: str = DEFAULT_BOARD) -> Path:
    """Cross-compile for Cortex-M4F, linked for a QEMU machine of :data:`~robopolicy.export.c_boards.BOARDS`;
    returns the ELF."""
    out_dir = Path(out_dir)
    b = get_board(board)
    startup = out_dir / f"startup_{b.machine.replace('-', '_')}.c"
    startup.write_text(b.startup)
    ldflags = list(b.ldflags)
    if b.linker_script is not None:
        script = out_dir / f"{b.machine.replace('-', '_')}.ld"
        script.write_text(b.linker_script)
        ldflags += ["-T", str(script)]
    elf = out_dir / (exe or (Path(main).stem + ".elf"))
    srcs = [str(startup), *(str(out_dir / f) for f in ("policy.c", "policy_selftest.c", main))]
    res = subprocess.run(["arm-none-eabi-gcc", *ARM_CFLAGS, *extra_cflags, *ldflags, "-o", str(elf), *srcs, "-lm"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise CExportError(f"arm-none-eabi-gcc failed building {elf} for {board}:\n{res.stderr.strip()}")
    return elf


def run_qemu(elf: str | Path, timeout: float = 60.0, extra: tuple[str, ...] = (), board: str = DEFAULT_BOARD):
    """Run a semihosting ELF built for a board; the CompletedProcess's returncode is the program's exit code."""
    return subprocess.run([*qemu_command(board), *extra, "-kernel", str(elf)], capture_output=True, text=True,
                          timeout=timeout)


__all__ = ["ARM_CFLAGS", "HOST_CFLAGS", "build_arm", "build_host", "qemu_command", "run_qemu"]
