"""Build the lab guest (guest/boot.S + guest/dirty.c) into a multiboot ELF for `-kernel`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from stacklens.errors import StacklensError

GUEST_SRC = Path(__file__).resolve().parent / "guest"


def build_guest(workdir: Path) -> Path:
    """Compile and link the guest in `workdir`; return the ELF path."""
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            raise StacklensError(f"lab: {tool} is needed to build the guest (./dev setup installs build-essential)")
    workdir.mkdir(parents=True, exist_ok=True)
    elf = workdir / "guest.elf"
    steps = [
        ["gcc", "-m32", "-c", str(GUEST_SRC / "boot.S"), "-o", str(workdir / "boot.o")],
        ["gcc", "-m32", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-O2", "-c",
         str(GUEST_SRC / "dirty.c"), "-o", str(workdir / "dirty.o")],
        ["ld", "-m", "elf_i386", "-T", str(GUEST_SRC / "guest.ld"), "-z", "noexecstack",
         "--no-warn-rwx-segments", "-o", str(elf), str(workdir / "boot.o"), str(workdir / "dirty.o")],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise StacklensError(f"lab: building the guest failed: {' '.join(cmd)}: {done.stderr.strip()}")
    return elf
