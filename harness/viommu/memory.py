"""Guest-physical memory as the IOMMU sees it.

Backed by a bytes/bytearray, an mmap, or a file (QEMU ``memory-backend-file``).
A file is laid out like QEMU's RAM block: for q35, file offset == GPA for the
RAM below the 4 GiB hole, and the rest of the file appears at 4 GiB. Accesses
outside every region raise :class:`MemoryAccessError`; walkers turn that into
the access-error fault reason of the structure they were reading.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, SvmvalError

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

GIB = 1 << 30
FOUR_GIB = 1 << 32


class MemoryAccessError(SvmvalError):
    """A guest-physical access that no RAM region backs (or a write to read-only RAM)."""

    def __init__(self, gpa: int, size: int, why: str = "not backed by guest RAM") -> None:
        super().__init__(f"guest-physical access {gpa:#x}+{size} {why}")
        self.gpa = gpa
        self.size = size


@dataclass(frozen=True, slots=True)
class Region:
    """``size`` bytes of guest-physical space at ``gpa_base`` backed at ``file_offset``."""

    gpa_base: int
    file_offset: int
    size: int

    @property
    def gpa_end(self) -> int:
        return self.gpa_base + self.size


def q35_regions(ram_size: int, max_ram_below_4g: int | None = None) -> list[Region]:
    """QEMU q35's RAM split for a RAM block of ``ram_size`` bytes.

    q35 keeps 2.75 GiB (0xB000_0000) below 4 GiB for small guests and 2 GiB once
    RAM reaches 2.75 GiB (so 1 GiB-aligned guest pages stay 1 GiB-aligned on the
    host); the part above that limit continues at 4 GiB. ``max_ram_below_4g``
    models the machine option of that name (a further cap).
    """
    lowmem = 0x8000_0000 if ram_size >= 0xB000_0000 else 0xB000_0000
    if max_ram_below_4g is not None and lowmem > max_ram_below_4g:
        lowmem = max_ram_below_4g
    if ram_size <= lowmem:
        return [Region(0, 0, ram_size)]
    return [Region(0, 0, lowmem), Region(FOUR_GIB, lowmem, ram_size - lowmem)]


class GuestMemory:
    """Little-endian guest-physical memory over one buffer and a region map.

    ``GuestMemory(4 << 20)`` makes zeroed RAM; ``GuestMemory(buf)`` wraps an
    existing bytes/bytearray/mmap/memoryview (bytes is read-only);
    ``GuestMemory.from_file(path)`` maps a QEMU memory-backend-file.
    """

    def __init__(
        self,
        backing: int | bytes | bytearray | memoryview | mmap.mmap,
        regions: Sequence[Region | tuple[int, int, int]] | None = None,
    ) -> None:
        if isinstance(backing, int):
            backing = bytearray(backing)
        self._writable = not isinstance(backing, bytes) and not (
            isinstance(backing, memoryview) and backing.readonly
        )
        self._buf: Any = backing
        self._file: Any = None
        length = len(backing)
        if regions is None:
            regs = [Region(0, 0, length)]
        else:
            regs = [r if isinstance(r, Region) else Region(*r) for r in regions]
        regs.sort(key=lambda r: r.gpa_base)
        for a, b in zip(regs, regs[1:], strict=False):
            if a.gpa_end > b.gpa_base:
                raise ConfigError(f"guest memory regions overlap: {a} and {b}; fix the region list")
        for r in regs:
            if r.size < 0 or r.file_offset < 0 or r.file_offset + r.size > length:
                raise ConfigError(
                    f"guest memory region {r} lies outside the {length:#x}-byte backing; "
                    "fix the region list or the file size"
                )
        self.regions: tuple[Region, ...] = tuple(regs)
        # Fast path: a single region starting at GPA 0 and file offset 0 (the common case).
        self._flat = len(regs) == 1 and regs[0].gpa_base == 0 and regs[0].file_offset == 0
        self._flat_size = regs[0].size if self._flat else 0
        #: (buffer, last valid u64 address) when GPA == buffer offset for all of RAM, so hot
        #: loops can unpack directly; None for multi-region layouts.
        self.flat: tuple[Any, int] | None = (self._buf, self._flat_size - 8) if self._flat else None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        regions: Sequence[Region | tuple[int, int, int]] | None = None,
        layout: str = "q35",
        writable: bool = True,
    ) -> GuestMemory:
        """Map a RAM backing file. ``layout="q35"`` applies q35's below/above-4G split
        unless explicit ``regions`` (gpa_base, file_offset, size) are given; ``"flat"``
        maps file offset == GPA for the whole file."""
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"guest memory file {p} does not exist; start the VM with "
                              "memory-backend-file,share=on or fix the path")
        size = p.stat().st_size
        if size == 0:
            raise ConfigError(f"guest memory file {p} is empty")
        if regions is not None:
            # A file shorter than the guest's RAM (cut, or the VM given more memory than
            # the file holds): name it here, not as an anonymous backing size below.
            need = max((r.file_offset + r.size for r in (
                r if isinstance(r, Region) else Region(*r) for r in regions)), default=0)
            if size < need:
                raise ConfigError(
                    f"guest memory file {p} is {size:#x} bytes, shorter than the guest's RAM "
                    f"({need:#x} bytes); use the file QEMU's memory-backend-file wrote for this "
                    "VM, or give the guest's real memory size")
        fd = os.open(p, os.O_RDWR if writable else os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if regions is None:
            if layout == "q35":
                regions = q35_regions(size)
            elif layout == "flat":
                regions = [Region(0, 0, size)]
            else:
                raise ConfigError(f"unknown guest memory layout {layout!r}; use 'q35' or 'flat'")
        mem = cls(mm, regions)
        mem._writable = writable
        mem._file = mm
        return mem

    def close(self) -> None:
        if self._file is not None:
            self.flat = None
            self._flat = False
            self._file.close()
            self._file = None

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ addressing
    @property
    def size(self) -> int:
        """Total bytes of RAM (sum of regions)."""
        return sum(r.size for r in self.regions)

    @property
    def writable(self) -> bool:
        return self._writable

    def contains(self, gpa: int, size: int = 1) -> bool:
        try:
            self._offset(gpa, size)
        except MemoryAccessError:
            return False
        return True

    def _offset(self, gpa: int, size: int) -> int:
        if self._flat:
            if 0 <= gpa and gpa + size <= self._flat_size:
                return gpa
            raise MemoryAccessError(gpa, size)
        for r in self.regions:
            if r.gpa_base <= gpa and gpa + size <= r.gpa_end:
                return r.file_offset + gpa - r.gpa_base
        raise MemoryAccessError(gpa, size)

    # ------------------------------------------------------------------ accessors
    def read_u64(self, gpa: int) -> int:
        if self._flat and 0 <= gpa <= self._flat_size - 8:
            return _U64.unpack_from(self._buf, gpa)[0]
        return _U64.unpack_from(self._buf, self._offset(gpa, 8))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack_from(self._buf, self._offset(gpa, 4))[0]

    def write_u64(self, gpa: int, value: int) -> None:
        off = self._offset(gpa, 8)
        if not self._writable:
            raise MemoryAccessError(gpa, 8, "hits read-only guest memory")
        _U64.pack_into(self._buf, off, value & 0xFFFF_FFFF_FFFF_FFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        off = self._offset(gpa, 4)
        if not self._writable:
            raise MemoryAccessError(gpa, 4, "hits read-only guest memory")
        _U32.pack_into(self._buf, off, value & 0xFFFF_FFFF)

    def read(self, gpa: int, size: int) -> bytes:
        """Read ``size`` bytes; may span regions only where they are GPA-contiguous."""
        out = bytearray()
        for off, n in self._chunks(gpa, size):
            out += self._buf[off : off + n]
        return bytes(out)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        if not self._writable:
            raise MemoryAccessError(gpa, len(data), "hits read-only guest memory")
        view = memoryview(data)
        pos = 0
        for off, n in self._chunks(gpa, len(view)):
            self._buf[off : off + n] = view[pos : pos + n]
            pos += n

    def read_qwords(self, gpa: int, count: int) -> tuple[int, ...]:
        """``count`` consecutive little-endian u64 (an entry or descriptor)."""
        off = self._offset(gpa, 8 * count)
        return struct.unpack_from(f"<{count}Q", self._buf, off)

    def _chunks(self, gpa: int, size: int) -> Iterable[tuple[int, int]]:
        if size == 0:
            return []
        if self._flat:
            return [(self._offset(gpa, size), size)]
        chunks = []
        cur, left = gpa, size
        while left:
            for r in self.regions:
                if r.gpa_base <= cur < r.gpa_end:
                    n = min(left, r.gpa_end - cur)
                    chunks.append((r.file_offset + cur - r.gpa_base, n))
                    cur += n
                    left -= n
                    break
            else:
                raise MemoryAccessError(gpa, size)
        return chunks
