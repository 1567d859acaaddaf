"""Drive QEMU's own VT-d emulation over the qtest protocol: the model's independent judge.

QEMU runs with `-qtest stdio`, TCG, icount and a BIOS that only halts, so nothing in
the guest touches the IOMMU or PCI config but us (docs/FIELD_NOTES.md). We write tables into
its RAM, program the unit's registers, and make QEMU's `edu` device DMA; the same
tables and register writes go into the reference model, and the two must agree.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from harness.errors import EnvironmentBroken
from harness.qemu.probe import IommuSettings, probe_qemu

VTD_BASE = 0xFED9_0000
EDU_BAR = 0xE000_0000
EDU_BUF = 0x40000
EDU_ID = 0x11E8_1234
TESTDEV_BAR = 0xE010_0000
TESTDEV_ID = 0x0005_1B36  # Red Hat test device 1b36:0005
TESTDEV_IDLE, TESTDEV_BUSY = 0xFFFF_FFFF, 0xFFFF_FFFE
TESTDEV_PATTERN = 0x1234_5678  # what iommu-testdev writes
HALT = bytes.fromhex("faf4ebfd")  # cli; hlt; jmp $-3: the reset vector never leaves


class QtestError(EnvironmentBroken):
    pass


class QtestMachine:
    def __init__(self, iommu: IommuSettings, *, memory_mib: int = 512, qemu: str = "qemu-system-x86_64",
                 testdev: bool = False, extra_args: tuple[str, ...] = ()):
        """`iommu`: intel-iommu's settings by canonical key, spelled as `qemu` spells them
        (harness/qemu/probe.py). `testdev` adds QEMU 11's iommu-testdev (PCI 1b36:0005)
        beside edu; `extra_args` go at the end of the command line (e.g. `-trace`)."""
        iommu_props = probe_qemu(qemu).iommu_args(iommu)
        self.tmp = Path(tempfile.mkdtemp(prefix="svmval-qtest-"))
        bios = self.tmp / "halt.bin"
        image = bytearray(64 * 1024)
        image[0xFFF0 : 0xFFF0 + len(HALT)] = HALT
        bios.write_bytes(bytes(image))
        self.argv = [
            qemu, "-M", "q35", "-qtest", "stdio", "-qtest-log", "/dev/null", "-display", "none",
            "-nodefaults", "-m", f"{memory_mib}M", "-accel", "tcg", "-icount", "shift=0,sleep=off",
            "-bios", str(bios), "-device", f"intel-iommu,{iommu_props}",
            "-device", "edu,dma_mask=0xffffffffffffffff",
        ] + (["-device", "iommu-testdev"] if testdev else []) + list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.edu_sid = -1
        self.testdev_sid = -1

    def __enter__(self) -> QtestMachine:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.tmp / "stderr", "w"), text=True, bufsize=1,
                                     start_new_session=True)
        self._find_edu()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        # QEMU does not exit on EOF of the qtest channel: stop it by its process group.
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    # -- protocol --------------------------------------------------------------------
    def cmd(self, line: str) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        while True:
            answer = self.proc.stdout.readline()
            if not answer:
                raise QtestError(f"QEMU died on {line!r}: {(self.tmp / 'stderr').read_text()[-500:]}")
            if answer.startswith("IRQ"):
                continue  # asynchronous interrupt notes, not an answer
            if not answer.startswith("OK"):
                raise QtestError(f"qtest {line!r} -> {answer.strip()}")
            return answer[2:].strip()

    def readl(self, addr: int) -> int:
        return int(self.cmd(f"readl {addr:#x}"), 16)

    def readq(self, addr: int) -> int:
        return int(self.cmd(f"readq {addr:#x}"), 16)

    def writel(self, addr: int, value: int) -> None:
        self.cmd(f"writel {addr:#x} {value:#x}")

    def writeq(self, addr: int, value: int) -> None:
        self.cmd(f"writeq {addr:#x} {value:#x}")

    def write(self, addr: int, data: bytes) -> None:
        self.cmd(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def read(self, addr: int, size: int) -> bytes:
        return base64.b64decode(self.cmd(f"b64read {addr:#x} {size:#x}"))

    # -- PCI and edu -----------------------------------------------------------------
    def _cfg(self, devfn: int, reg: int) -> int:
        self.cmd(f"outl 0xcf8 {0x8000_0000 | devfn << 8 | reg:#x}")
        return 0xCFC

    def _enable(self, devfn: int, bar: int) -> None:
        self.cmd(f"outl {self._cfg(devfn, 0x10):#x} {bar:#x}")
        command = int(self.cmd(f"inl {self._cfg(devfn, 0x04):#x}"), 16) & 0xFFFF
        self.cmd(f"outl {self._cfg(devfn, 0x04):#x} {command | 0x6:#x}")  # memory + bus master

    def _find_edu(self) -> None:
        for devfn in range(0, 256, 8):
            ident = int(self.cmd(f"inl {self._cfg(devfn, 0):#x}"), 16)
            if ident == EDU_ID:
                self._enable(devfn, EDU_BAR)
                self.edu_sid = devfn
            elif ident == TESTDEV_ID:
                self._enable(devfn, TESTDEV_BAR)
                self.testdev_sid = devfn
        if self.edu_sid < 0:
            raise QtestError("no edu device found on bus 0")
        if "iommu-testdev" in self.argv and self.testdev_sid < 0:
            raise QtestError("no iommu-testdev found on bus 0 (QEMU >= 11 has it)")

    def testdev_dma(self, iova: int, gpa: int, length: int = 4, timeout: float = 10) -> int:
        """iommu-testdev writes its pattern to `iova` through the IOMMU and reads it back at
        `gpa` directly: 0 when it landed there, an error code otherwise."""
        regs = {"gva_lo": 0x04, "gva_hi": 0x08, "len": 0x0C, "result": 0x10, "dbell": 0x14,
                "attrs": 0x18, "gpa_lo": 0x1C, "gpa_hi": 0x20}
        for name, value in (("gva_lo", iova & 0xFFFF_FFFF), ("gva_hi", iova >> 32), ("gpa_lo", gpa & 0xFFFF_FFFF),
                            ("gpa_hi", gpa >> 32), ("len", length), ("attrs", 0), ("dbell", 1)):
            self.writel(TESTDEV_BAR + regs[name], value)
        self.readl(TESTDEV_BAR)  # reading DMA_TRIGGERING runs the armed DMA
        deadline = time.monotonic() + timeout
        while (result := self.readl(TESTDEV_BAR + regs["result"])) in (TESTDEV_BUSY, TESTDEV_IDLE):
            if time.monotonic() > deadline:
                raise QtestError("iommu-testdev DMA never finished")
        return result

    def edu_dma(self, src: int, dst: int, count: int, *, to_ram: bool, timeout: float = 10) -> None:
        self.writeq(EDU_BAR + 0x80, src)
        self.writeq(EDU_BAR + 0x88, dst)
        self.writeq(EDU_BAR + 0x90, count)
        self.writeq(EDU_BAR + 0x98, 0x1 | (0x2 if to_ram else 0))
        deadline = time.monotonic() + timeout
        while self.readq(EDU_BAR + 0x98) & 1:
            if time.monotonic() > deadline:
                raise QtestError("edu DMA never finished")


    # -- VT-d --------------------------------------------------------------------------
    def reg_write(self, offset: int, value: int, size: int) -> None:
        (self.writeq if size == 8 else self.writel)(VTD_BASE + offset, value)

    def reg_read(self, offset: int, size: int) -> int:
        return (self.readq if size == 8 else self.readl)(VTD_BASE + offset)
