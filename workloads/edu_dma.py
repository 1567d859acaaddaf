"""QEMU's `edu` device driven from user space through VFIO, IOVA == virtual address.

The local lab's stand-in for an SVM accelerator: the buffers a process owns are
mapped into the device's IOMMU domain at their own virtual addresses (the address
sharing of SVM, done through the emulated VT-d's first-stage tables), and the
device's DMA engine really moves data through the vIOMMU.

edu (hw/misc/edu.c): BAR0 0x80 DMA source, 0x88 destination, 0x90 count (<= 4 KiB),
0x98 command: bit 0 run, bit 1 direction (0: RAM -> edu buffer, 1: edu buffer -> RAM);
its buffer sits at device address 0x40000.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from workloads.catalog import Env, Failed, Result, Skip, check, workload
from workloads.dmar_log import await_kernel_reports, between_faults
from workloads.pages import gpa_of
from workloads.protocol import HoldPoint

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
EDU_BUF = 0x40000
REG_SRC, REG_DST, REG_CNT, REG_CMD = 0x80, 0x88, 0x90, 0x98
CMD_RUN, CMD_TO_RAM = 0x1, 0x2
PAGE = 4096

# linux/vfio.h: _IO(VFIO_TYPE ';', VFIO_BASE 100 + n)
_VFIO = 0x3B << 8
VFIO_GET_API_VERSION = _VFIO | 100
VFIO_CHECK_EXTENSION = _VFIO | 101
VFIO_SET_IOMMU = _VFIO | 102
VFIO_GROUP_GET_STATUS = _VFIO | 103
VFIO_GROUP_SET_CONTAINER = _VFIO | 104
VFIO_GROUP_GET_DEVICE_FD = _VFIO | 106
VFIO_DEVICE_GET_REGION_INFO = _VFIO | 108
VFIO_IOMMU_MAP_DMA = _VFIO | 113
VFIO_IOMMU_UNMAP_DMA = _VFIO | 114
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE = 1, 2
REGION_BAR0, REGION_CONFIG = 0, 7
PCI_COMMAND, PCI_COMMAND_MASTER = 0x04, 0x4


def dma_map_struct(vaddr: int, iova: int, size: int, writable: bool = True) -> bytes:
    """struct vfio_iommu_type1_dma_map {u32 argsz, flags; u64 vaddr, iova, size}"""
    flags = VFIO_DMA_MAP_FLAG_READ | (VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
    return struct.pack("=IIQQQ", 32, flags, vaddr, iova, size)


def dma_unmap_struct(iova: int, size: int) -> bytes:
    """struct vfio_iommu_type1_dma_unmap {u32 argsz, flags; u64 iova, size}"""
    return struct.pack("=IIQQ", 24, 0, iova, size)


def region_info_struct(index: int) -> bytearray:
    """struct vfio_region_info {u32 argsz, flags, index, cap_offset; u64 size, offset}"""
    return bytearray(struct.pack("=IIIIQQ", 32, 0, index, 0, 0, 0))


def parse_region_info(raw: bytes) -> tuple[int, int]:
    _argsz, _flags, _index, _cap, size, offset = struct.unpack("=IIIIQQ", raw)
    return size, offset


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    group: int
    driver: str | None

    @property
    def sid(self) -> int:
        bus, devfn = self.bdf.split(":")[1:]
        dev, fn = devfn.split(".")
        return int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn, 16)


def find_edu(sysfs: Path = Path("/sys")) -> PciDevice | None:
    for dev in sorted((sysfs / "bus/pci/devices").glob("*")):
        try:
            vendor = int((dev / "vendor").read_text(), 16)
            device = int((dev / "device").read_text(), 16)
        except OSError:
            continue
        if (vendor, device) != (EDU_VENDOR, EDU_DEVICE):
            continue
        group_link = dev / "iommu_group"
        if not group_link.exists():
            raise Skip(f"edu at {dev.name} has no IOMMU group: is the vIOMMU enabled (intel_iommu=on)?")
        driver = (dev / "driver").resolve().name if (dev / "driver").exists() else None
        return PciDevice(dev.name, int(os.readlink(group_link).rsplit("/", 1)[1]), driver)
    return None


def bind_vfio(dev: PciDevice, sysfs: Path = Path("/sys")) -> None:
    if dev.driver == "vfio-pci":
        return
    os.system("modprobe vfio-pci >/dev/null 2>&1")
    base = sysfs / "bus/pci/devices" / dev.bdf
    (base / "driver_override").write_text("vfio-pci")
    if dev.driver is not None:
        (base / "driver/unbind").write_text(dev.bdf)
    (sysfs / "bus/pci/drivers_probe").write_text(dev.bdf)
    deadline = time.monotonic() + 10
    while not (base / "driver").exists() or (base / "driver").resolve().name != "vfio-pci":
        if time.monotonic() > deadline:
            raise Failed(f"{dev.bdf} did not bind to vfio-pci")
        time.sleep(0.05)


class EduVfio:
    """The edu device through a VFIO type1 container."""

    def __init__(self, dev: PciDevice):
        self.dev = dev
        self.container = os.open("/dev/vfio/vfio", os.O_RDWR)
        if fcntl.ioctl(self.container, VFIO_GET_API_VERSION) != 0:
            raise Failed("unexpected VFIO API version")
        if not fcntl.ioctl(self.container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU):
            raise Skip("VFIO type1v2 IOMMU not supported by this kernel")
        self.group = os.open(f"/dev/vfio/{dev.group}", os.O_RDWR)
        status = bytearray(struct.pack("=II", 8, 0))
        fcntl.ioctl(self.group, VFIO_GROUP_GET_STATUS, status)
        if not struct.unpack("=II", status)[1] & VFIO_GROUP_FLAGS_VIABLE:
            raise Skip(f"IOMMU group {dev.group} is not viable (other devices in it are bound to drivers)")
        fcntl.ioctl(self.group, VFIO_GROUP_SET_CONTAINER, struct.pack("=i", self.container))
        fcntl.ioctl(self.container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
        # fcntl.ioctl returns the buffer, not the syscall's result, for a bytes argument:
        # this one returns the new device fd, so call ioctl(2) directly.
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.ioctl(self.group, VFIO_GROUP_GET_DEVICE_FD, ctypes.c_char_p(dev.bdf.encode()))
        if self.fd < 0:
            raise Failed(f"VFIO_GROUP_GET_DEVICE_FD {dev.bdf}: {os.strerror(ctypes.get_errno())}")
        self.bar0 = self._region(REGION_BAR0)
        self.config = self._region(REGION_CONFIG)
        cmd = struct.unpack("<H", os.pread(self.fd, 2, self.config + PCI_COMMAND))[0]
        # vfio-pci leaves bus mastering off: without it the device cannot DMA at all.
        os.pwrite(self.fd, struct.pack("<H", cmd | PCI_COMMAND_MASTER), self.config + PCI_COMMAND)

    def _region(self, index: int) -> int:
        info = region_info_struct(index)
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_REGION_INFO, info)
        return parse_region_info(bytes(info))[1]

    def map(self, vaddr: int, size: int, writable: bool = True, iova: int | None = None) -> None:
        """Map `size` bytes at `vaddr` for the device, at IOVA `iova` (default: == vaddr)."""
        at = vaddr if iova is None else iova
        fcntl.ioctl(self.container, VFIO_IOMMU_MAP_DMA, dma_map_struct(vaddr, at, size, writable))

    def unmap(self, iova: int, size: int) -> None:
        fcntl.ioctl(self.container, VFIO_IOMMU_UNMAP_DMA, bytearray(dma_unmap_struct(iova, size)))

    def _w64(self, reg: int, value: int) -> None:
        os.pwrite(self.fd, struct.pack("<Q", value), self.bar0 + reg)

    def _r64(self, reg: int) -> int:
        return int(struct.unpack("<Q", os.pread(self.fd, 8, self.bar0 + reg))[0])

    def dma(self, src: int, dst: int, count: int, to_ram: bool, timeout: float = 10) -> bool:
        """One DMA; True when the engine finished (it does, even when the IOMMU blocks it)."""
        self._w64(REG_SRC, src)
        self._w64(REG_DST, dst)
        self._w64(REG_CNT, count)
        self._w64(REG_CMD, CMD_RUN | (CMD_TO_RAM if to_ram else 0))
        deadline = time.monotonic() + timeout
        while self._r64(REG_CMD) & CMD_RUN:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.group, self.container):
            try:
                os.close(fd)
            except OSError:
                pass


def _open_edu() -> EduVfio:
    if os.geteuid() != 0:
        raise Skip("needs root (binding the device to vfio-pci)")
    dev = find_edu()
    if dev is None:
        raise Skip("no edu device (QEMU -device edu): this is the local lab's DMA device")
    if not Path("/dev/vfio/vfio").exists():
        os.system("modprobe vfio-pci >/dev/null 2>&1")
    bind_vfio(dev)
    return EduVfio(dev)


def _hold(result: Result, name: str, read_again: list[int]) -> None:
    """Let the host inspect live mappings (workloads/protocol.py's hold point);
    `read_again`: the pages the device reads once more after it."""
    point = HoldPoint.from_env(name)
    if point is None:
        return
    point.announce({"sid": result.extra["sid"], "pages": result.pages, "read_again": read_again})
    check(point.wait_for_release(), "the host never released the hold point")


@workload("edu_dma", "vIOMMU DMA (edu via VFIO)")
def edu_dma(env: Env | None, res: Result) -> None:
    """RAM -> edu -> another RAM buffer, page by page, at IOVA == virtual address."""
    edu = _open_edu()
    pages = 8
    size = pages * PAGE
    src_map = mmap.mmap(-1, size)
    dst_map = mmap.mmap(-1, size)
    pattern = hashlib.shake_256(b"svmval-edu").digest(size)
    src_map[:] = pattern
    dst_map[:] = b"\0" * size
    src = _addr(src_map)
    dst = _addr(dst_map)
    res.extra["sid"] = edu.dev.sid
    res.extra["bdf"] = edu.dev.bdf
    try:
        edu.map(src, size)
        edu.map(dst, size)
        t0 = time.perf_counter()
        for i in range(pages):
            check(edu.dma(src + i * PAGE, EDU_BUF, PAGE, to_ram=False), f"page {i}: DMA read never finished")
            check(edu.dma(EDU_BUF, dst + i * PAGE, PAGE, to_ram=True), f"page {i}: DMA write never finished")
        elapsed = time.perf_counter() - t0
        res.bandwidth["edu_dma"] = round(2 * size / elapsed, 1)
        if os.environ.get("SVMVAL_SEED") == "stray-dma":  # svmval run --seed-bug stray-dma only
            stray = mmap.mmap(-1, PAGE)  # never mapped for the device
            check(edu.dma(_addr(stray), EDU_BUF, PAGE, to_ram=False), "the seeded stray DMA never finished")
        got = bytes(dst_map[:])
        differ = sum(a != b for a, b in zip(got, pattern, strict=True))
        check(got == pattern, f"edu moved wrong data: {differ} bytes differ")
        for base, buf, access in ((src, src_map, "read"), (dst, dst_map, "write")):
            for i in range(pages):
                va = base + i * PAGE
                res.pages.append({
                    "gva": va, "size": PAGE, "gpa": gpa_of(va), "access": access,
                    "sha256": hashlib.sha256(buf[i * PAGE : (i + 1) * PAGE]).hexdigest(),
                })
        res.pages_total = 2 * pages
        again = [src + i * PAGE for i in range(pages)]
        _hold(res, "edu_dma", again)
        # The device uses the mappings once more after the host's pause (from the IOTLB):
        # a translation changed meanwhile without an invalidation is a stale use the
        # host's check across time must see.
        for i, va in enumerate(again):
            check(edu.dma(va, EDU_BUF, PAGE, to_ram=False), f"page {i}: DMA read after the hold never finished")
    finally:
        for base in (src, dst):
            try:
                edu.unmap(base, size)
            except OSError:
                pass
        edu.close()


@workload("edu_dma_fault", "vIOMMU DMA faults (edu via VFIO): not present, read-only, beyond the address width")
def edu_dma_fault(env: Env | None, res: Result) -> None:
    """DMA the IOMMU must block, one case per row (the host checks each fault's reason,
    from the tables as they were at the fault, and its direction):
    - a read of process memory never mapped for the device: its contents must not
      reach the device;
    - a write to process memory never mapped for it, and a write to a page mapped
      read-only: neither may change the page;
    - a read beyond the first stage's 48-bit input width (not canonical).
    The guest kernel must report each (the host reads its console)."""
    edu = _open_edu()
    secret_map = mmap.mmap(-1, PAGE)  # the process's, never VFIO-mapped
    secret_map[:] = b"\x5a" * PAGE
    target_map = mmap.mmap(-1, PAGE)  # never VFIO-mapped: a write must not land
    target_map[:] = b"\x3c" * PAGE
    ro_map = mmap.mmap(-1, PAGE)  # mapped for the device read-only
    ro_map[:] = b"\x96" * PAGE
    dst_map = mmap.mmap(-1, PAGE)
    dst, secret, target, ro = (_addr(m) for m in (dst_map, secret_map, target_map, ro_map))
    faults: list[dict[str, object]] = []
    res.extra["sid"] = edu.dev.sid
    try:
        edu.map(dst, PAGE)
        edu.map(ro, PAGE, writable=False)
        # Not present, read: the device's buffer must not get the page.
        check(edu.dma(secret, EDU_BUF, PAGE, to_ram=False), "faulting DMA read never finished")
        dst_map[:] = b"\0" * PAGE
        check(edu.dma(EDU_BUF, dst, PAGE, to_ram=True), "DMA back to RAM never finished")
        # QEMU fills a blocked read with a fixed value; what must never arrive is the page.
        check(bytes(dst_map[:]) != bytes(secret_map[:]), "the device read memory never mapped for it")
        faults.append({"case": "not present, read", "iova": secret, "write": False})
        for case, addr, page in (("not present, write", target, target_map), ("read-only, write", ro, ro_map)):
            before = bytes(page[:])
            between_faults()
            check(edu.dma(EDU_BUF, addr, PAGE, to_ram=True), f"{case}: faulting DMA never finished")
            check(bytes(page[:]) == before, f"{case}: the device changed a page it may not write")
            # The read-only page is unmapped when the workload ends: the host must not take
            # its reason from the tables as they are then.
            faults.append({"case": case, "iova": addr, "write": True, "remapped_after": page is ro_map})
        # Beyond the input address width: first-stage input is 48 bits (4-level), so an
        # address with bit 48 set and no sign extension is not canonical.
        wide = 1 << 48
        between_faults()
        check(edu.dma(wide, EDU_BUF, PAGE, to_ram=False), "DMA read beyond the address width never finished")
        faults.append({"case": "beyond the address width, read", "iova": wide, "write": False})
        res.extra["faults"] = faults
        await_kernel_reports([secret, target, ro, wide])
    finally:
        for base in (dst, ro):
            try:
                edu.unmap(base, PAGE)
            except OSError:
                pass
        edu.close()


@workload("edu_dma_remap", "vIOMMU invalidation on unmap (edu via VFIO): a remapped IOVA reads its new page")
def edu_dma_remap(env: Env | None, res: Result) -> None:
    """An IOVA the device has used, unmapped and mapped to another page, must read the new
    page: the guest's unmap invalidated the old translation and the unit dropped it."""
    edu = _open_edu()
    old_map, new_map, dst_map = (mmap.mmap(-1, PAGE) for _ in range(3))
    old_map[:] = b"\xa1" * PAGE
    new_map[:] = b"\xb2" * PAGE
    iova, dst = _addr(old_map), _addr(dst_map)
    res.extra["sid"] = edu.dev.sid
    mapped = []
    try:
        edu.map(dst, PAGE)
        mapped.append(dst)
        for label, page in (("before", old_map), ("after", new_map)):
            edu.map(_addr(page), PAGE, iova=iova)
            mapped.append(iova)
            check(edu.dma(iova, EDU_BUF, PAGE, to_ram=False), f"DMA read {label} the remap never finished")
            dst_map[:] = b"\0" * PAGE
            check(edu.dma(EDU_BUF, dst, PAGE, to_ram=True), f"DMA write {label} the remap never finished")
            got = bytes(dst_map[:])
            check(got != bytes(old_map[:]) or page is old_map,
                  "after the remap the device read the page the IOVA was unmapped from: "
                  "its translation was not invalidated")
            check(got == bytes(page[:]), f"{label} the remap the device read neither page")
            edu.unmap(iova, PAGE)  # the guest invalidates the IOVA's translation here
            mapped.remove(iova)
        res.pages_total = 2
    finally:
        for base in mapped:
            try:
                edu.unmap(base, PAGE)
            except OSError:
                pass
        edu.close()


def _addr(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))
