"""User-space binding of /dev/svmval-sva0, the svmval_sva guest driver (docs/TESTDEV.md).

The ctypes structures mirror guest_image/driver/svmval_sva.h field for field
(tests/workloads/test_sva.py parses the header and holds them equal). Runs in the
guest with the standard library only.

    with SvaDevice() as dev:          # open() binds this process's mm: one PASID
        r = dev.op(Op.READ_CRC, addr, length=n)
        r.ok, r.result, r.page_requests, dev.info().pasid, dev.counters()
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import subprocess
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from pathlib import Path
from types import TracebackType

DEVICE = "/dev/svmval-sva0"
MODULE = "svmval_sva"
PCI_ID = (0x1234, 0x5356)
ABI_VERSION = 1
MAX_LEN = 64 << 20
UNBOUND_PASID = 63  # svmval_sva.h SVMVAL_SVA_UNBOUND_PASID
ABSENT = "svmval-sva device absent"  # the skip reason when there is no device at all
UNUSABLE = "svmval-sva device unusable"  # ... when it is there but cannot be used


class Op(IntEnum):
    READ_CRC = 1
    COMPARE = 2
    WRITE_PATTERN = 3
    COPY = 4
    FILL = 5


class OpFlag(IntFlag):
    NONE = 0
    PRIV = 1 << 0
    EXEC = 1 << 1
    NO_PASID = 1 << 2
    UNBOUND_PASID = 1 << 3  # tagged with UNBOUND_PASID, which no bind holds


class InfoFlag(IntFlag):
    BOUND = 1 << 0
    ATS = 1 << 1
    PRI = 1 << 2
    PASID = 1 << 3


class Status(IntFlag):
    BUSY = 1 << 0
    DONE = 1 << 1
    ERROR = 1 << 2


class DevError(IntEnum):
    NONE = 0
    RESPONSE_FAILURE = 1
    RESPONSE_INVALID = 2
    ATS_NO_ACCESS = 3
    PRI_TIMEOUT = 4
    COMPARE_MISMATCH = 5
    BAD_OP = 6
    DMA_ERROR = 7


u32, u64 = ctypes.c_uint32, ctypes.c_uint64


class SvaInfo(ctypes.Structure):
    _fields_ = [("abi_version", u32), ("pasid", u32), ("flags", u32), ("source_id", u32), ("seed", u64)]


class SvaOp(ctypes.Structure):
    _fields_ = [
        ("op", u32),
        ("flags", u32),
        ("src", u64),
        ("dst", u64),
        ("len", u64),
        ("pattern", u64),
        ("result", u64),
        ("status", u32),
        ("error", u32),
        ("error_addr", u64),
        ("device_ns", u64),
        ("page_requests", u64),
        ("wall_ns", u64),
    ]


COUNTER_NAMES = (
    "ats_requests",
    "atc_hits",
    "atc_misses",
    "page_requests",
    "prg_success",
    "prg_invalid",
    "prg_failure",
    "invalidations",
    "ops",
    "bytes",
    "atc_entries",
)


class SvaCounters(ctypes.Structure):
    _fields_ = [(name, u64) for name in COUNTER_NAMES]


def _ioc(direction: int, nr: int, size: int, magic: int = ord("S")) -> int:
    """Linux's _IOC on x86: dir in bits 31:30 (1 write, 2 read), size 29:16, type 15:8, nr 7:0."""
    return (direction << 30) | (size << 16) | (magic << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
IOC_INFO = _ioc(_IOC_READ, 0, ctypes.sizeof(SvaInfo))
IOC_OP = _ioc(_IOC_READ | _IOC_WRITE, 1, ctypes.sizeof(SvaOp))
IOC_COUNTERS = _ioc(_IOC_READ, 2, ctypes.sizeof(SvaCounters))


@dataclass(frozen=True)
class Info:
    abi_version: int
    pasid: int
    flags: InfoFlag
    source_id: int
    seed: int

    @property
    def bound(self) -> bool:
        return bool(self.flags & InfoFlag.BOUND)


@dataclass(frozen=True)
class OpResult:
    op: Op
    flags: OpFlag
    src: int
    dst: int
    length: int
    result: int
    status: Status
    error: DevError
    error_addr: int
    device_ns: int
    page_requests: int
    wall_ns: int

    @property
    def ok(self) -> bool:
        return bool(self.status & Status.DONE) and not self.status & Status.ERROR

    def bandwidth(self, *, device: bool = False) -> float:
        """Bytes/s the op moved (guest wall time, or the device's virtual time)."""
        ns = self.device_ns if device else self.wall_ns
        moved = self.length * (2 if self.op in (Op.COPY, Op.COMPARE) else 1)
        return round(moved * 1e9 / ns, 1) if ns else 0.0

    def record(self) -> dict[str, object]:
        return {
            "op": self.op.name,
            "flags": int(self.flags),
            "src": self.src,
            "dst": self.dst,
            "len": self.length,
            "result": self.result,
            "status": int(self.status),
            "error": self.error.name,
            "error_addr": self.error_addr,
            "device_ns": self.device_ns,
            "wall_ns": self.wall_ns,
            "page_requests": self.page_requests,
            "bandwidth": self.bandwidth(),
            "device_bandwidth": self.bandwidth(device=True),
        }


class SvaUnavailable(OSError):
    """The device cannot be used by this process; str() names why."""


class SvaDevice:
    """One open file of the device: one SVA bind (PASID) for the opening process."""

    def __init__(self, path: str = DEVICE):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SvaUnavailable(exc.errno, _open_failure(path, exc)) from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SvaDevice:
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.close()

    def info(self) -> Info:
        raw = SvaInfo()
        fcntl.ioctl(self.fd, IOC_INFO, raw, True)
        return Info(raw.abi_version, raw.pasid, InfoFlag(raw.flags), raw.source_id, raw.seed)

    def counters(self) -> dict[str, int]:
        raw = SvaCounters()
        fcntl.ioctl(self.fd, IOC_COUNTERS, raw, True)
        return {name: int(getattr(raw, name)) for name in COUNTER_NAMES}

    def op(self, op: Op, src: int, dst: int = 0, *, length: int, pattern: int = 0,
           flags: OpFlag = OpFlag.NONE) -> OpResult:
        """Run one operation and wait for it. An op the device ended with ERROR is a
        result (`.ok` False), not an exception; bad arguments and timeouts raise OSError.

        FILL and WRITE_PATTERN write at `src` (the SRC register); `dst` defaults to
        `src` for them, so the NO_PASID bounce copies the result back there."""
        if op in (Op.FILL, Op.WRITE_PATTERN) and not dst:
            dst = src
        raw = SvaOp(op=int(op), flags=int(flags), src=src, dst=dst, len=length, pattern=pattern)
        fcntl.ioctl(self.fd, IOC_OP, raw, True)
        return OpResult(op, OpFlag(flags), src, dst, length, int(raw.result), Status(raw.status),
                        _dev_error(raw.error), int(raw.error_addr), int(raw.device_ns),
                        int(raw.page_requests), int(raw.wall_ns))


def _dev_error(code: int) -> DevError:
    try:
        return DevError(code)
    except ValueError:
        return DevError.DMA_ERROR  # an unknown code is still an error


def _open_failure(path: str, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    why = f"{path}: bind refused: {name} ({os.strerror(exc.errno or 0)})"
    line = driver_log_tail()
    return f"{why}; driver says: {line}" if line else why


def driver_log_tail() -> str:
    """The driver's last kernel-log line (it says why SVA is unusable), or ''."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln for ln in out.splitlines() if MODULE in ln or "svmval-sva" in ln]
    return lines[-1].split("] ", 1)[-1] if lines else ""


def find_devices(sysroot: Path = Path("/")) -> list[Path]:
    """sysfs directories of every PCI 1234:5356 function."""
    found = []
    for dev in sorted((sysroot / "sys/bus/pci/devices").glob("*")):
        try:
            ids = (int((dev / "vendor").read_text(), 16), int((dev / "device").read_text(), 16))
        except (OSError, ValueError):
            continue
        if ids == PCI_ID:
            found.append(dev)
    return found


def absent_reason(sysroot: Path = Path("/"), *, try_open: bool = True) -> str | None:
    """Why this machine cannot run SVA ops (None: it can). Checked in order: the PCI
    device, the module, the driver binding, the char device, then open() (the bind)."""
    devices = find_devices(sysroot)
    if not devices:
        return f"{ABSENT}: no PCI device 1234:5356 (QEMU without -device svmval-sva)"
    if not (sysroot / "sys/module" / MODULE).exists():
        return f"{UNUSABLE}: the {MODULE} module is not loaded (modprobe {MODULE})"
    drv = devices[0] / "driver"
    if not drv.exists() or drv.resolve().name != MODULE:
        bound = drv.resolve().name if drv.exists() else "no driver"
        return f"{UNUSABLE}: {devices[0].name} is bound to {bound}, not {MODULE} (probe failed? see dmesg)"
    path = sysroot / DEVICE.lstrip("/")
    if not path.exists():
        return f"{UNUSABLE}: no {DEVICE} although {MODULE} drives {devices[0].name}"
    if try_open:
        try:
            SvaDevice(str(path)).close()
        except SvaUnavailable as exc:
            return f"{UNUSABLE}: {exc.strerror}"
    return None
