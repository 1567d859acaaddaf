"""Build VT-d translation structures in a GuestMemory.

Used by tests and by the qtest differential harness: everything written goes
through :meth:`TableBuilder.write_u64`, so :meth:`TableBuilder.written_pages`
lists exactly the 4 KiB pages to copy into another memory (e.g. QEMU's RAM).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from harness.errors import ConfigError

from .first_stage import FS_A, FS_D, FS_P, FS_PS, FS_RW, FS_US, FS_XD
from .memory import GuestMemory
from .pasid import PasidDirEntry, PasidEntry, pasid_dir_index, pasid_table_index
from .root_context import (
    LegacyContextEntry,
    LegacyRootEntry,
    ScalableContextEntry,
    ScalableRootEntry,
    bus_devfn,
)
from .second_stage import SS_A, SS_D, SS_PS, SS_R, SS_W, SS_X

PAGE = 4096
ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
_SIZES = {4096: 1, 1 << 21: 2, 1 << 30: 3}


class PageAllocator:
    """Bump allocator of zeroed 4 KiB pages in [base, limit)."""

    def __init__(self, base: int, limit: int) -> None:
        if base % PAGE or limit % PAGE or base >= limit:
            raise ConfigError(f"page allocator range {base:#x}-{limit:#x} must be 4 KiB aligned")
        self.base = base
        self.limit = limit
        self.next = base

    def alloc(self, count: int = 1, align: int = PAGE) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + count * PAGE > self.limit:
            raise ConfigError(
                f"page allocator exhausted at {addr:#x} (limit {self.limit:#x}); give the "
                "builder a larger range or more guest memory"
            )
        self.next = addr + count * PAGE
        return addr


class TableBuilder:
    """Writes root/context/PASID tables and first/second-stage page tables."""

    def __init__(self, mem: GuestMemory, base: int = 0x10_0000, limit: int | None = None,
                 scalable: bool = True) -> None:
        self.mem = mem
        self.alloc = PageAllocator(base, limit if limit is not None else base + (16 << 20))
        self.scalable = scalable
        self.written: set[int] = set()
        self._root: int | None = None
        self._ctx_tables: dict[tuple[int, int], int] = {}  # (bus, half) -> context table
        self._pasid_dirs: dict[int, int] = {}  # sid -> PASID directory
        self._pasid_tables: dict[tuple[int, int], int] = {}  # (sid, dir index) -> table

    # ------------------------------------------------------------------ raw writes
    def write_u64(self, addr: int, value: int) -> None:
        self.mem.write_u64(addr, value)
        self.written.add(addr & ~0xFFF)

    def write_qwords(self, addr: int, qws: tuple[int, ...] | list[int]) -> None:
        for i, q in enumerate(qws):
            self.write_u64(addr + 8 * i, q)

    def new_page(self, count: int = 1) -> int:
        addr = self.alloc.alloc(count)
        self.mem.write(addr, bytes(PAGE * count))
        for i in range(count):
            self.written.add(addr + i * PAGE)
        return addr

    def written_pages(self) -> list[tuple[int, bytes]]:
        """(page address, 4 KiB contents) of every page this builder wrote, sorted."""
        return [(a, self.mem.read(a, PAGE)) for a in sorted(self.written)]

    # ------------------------------------------------------------------ root / context
    @property
    def root(self) -> int:
        if self._root is None:
            self._root = self.new_page()
        return self._root

    def _context_table(self, bus: int, upper: bool) -> int:
        key = (bus, int(upper))
        table = self._ctx_tables.get(key)
        if table is not None:
            return table
        table = self.new_page()
        self._ctx_tables[key] = table
        raddr = self.root + bus * 16
        q0, q1 = self.mem.read_qwords(raddr, 2)
        if self.scalable:
            if upper:
                q1 = ScalableRootEntry(up=1, uctp=table).encode()[1]
            else:
                q0 = ScalableRootEntry(lp=1, lctp=table).encode()[0]
        else:
            q0, q1 = LegacyRootEntry(p=1, ctp=table).encode()
        self.write_qwords(raddr, (q0, q1))
        return table

    def context_entry_address(self, sid: int) -> int:
        bus, devfn = bus_devfn(sid)
        if self.scalable:
            return self._context_table(bus, devfn >= 0x80) + (devfn & 0x7F) * 32
        return self._context_table(bus, False) + devfn * 16

    def set_legacy_context(self, sid: int, *, slptptr: int = 0, aw: int = 2, did: int = 1,
                           tt: int = 0, fpd: int = 0, p: int = 1) -> int:
        if self.scalable:
            raise ConfigError("builder is in scalable mode; create it with scalable=False")
        addr = self.context_entry_address(sid)
        ce = LegacyContextEntry(p=p, fpd=fpd, tt=tt, slptptr=slptptr, aw=aw, did=did)
        self.write_qwords(addr, ce.encode())
        return addr

    def set_sm_context(self, sid: int, *, pdts: int = 7, dte: int = 0, paside: int = 1,
                       pre: int = 0, fpd: int = 0, rid_pasid: int = 0, rid_priv: int = 0,
                       p: int = 1, pasid_dir: int | None = None) -> int:
        """Scalable-mode context entry; allocates a PASID directory sized by PDTS."""
        if not self.scalable:
            raise ConfigError("builder is in legacy mode; create it with scalable=True")
        if pasid_dir is None:
            pasid_dir = self._pasid_dirs.get(sid)
            if pasid_dir is None:
                pages = max(1, ((1 << (pdts + 7)) * 8) // PAGE)
                pasid_dir = self.new_page(pages)
        self._pasid_dirs[sid] = pasid_dir
        addr = self.context_entry_address(sid)
        ce = ScalableContextEntry(p=p, fpd=fpd, dte=dte, paside=paside, pre=pre, pdts=pdts,
                                  pasiddirptr=pasid_dir, rid_pasid=rid_pasid, rid_priv=rid_priv)
        self.write_qwords(addr, ce.encode())
        return addr

    def pasid_entry_address(self, sid: int, pasid: int, dir_fpd: int = 0) -> int:
        pdir = self._pasid_dirs.get(sid)
        if pdir is None:
            raise ConfigError(f"no scalable context for sid {sid:#x}; call set_sm_context first")
        didx = pasid_dir_index(pasid)
        table = self._pasid_tables.get((sid, didx))
        if table is None:
            table = self.new_page()
            self._pasid_tables[(sid, didx)] = table
            self.write_u64(pdir + didx * 8, PasidDirEntry(p=1, fpd=dir_fpd,
                                                          smptblptr=table).encode())
        return table + pasid_table_index(pasid) * 64

    def set_pasid_entry(self, sid: int, pasid: int, entry: PasidEntry) -> int:
        addr = self.pasid_entry_address(sid, pasid)
        self.write_qwords(addr, entry.encode())
        return addr

    # ------------------------------------------------------------------ page tables
    def fs_tables(self, levels: int = 4, ss: SsTables | None = None,
                  gpa_offset: int = 0) -> FsTables:
        return FsTables(self, levels, ss, gpa_offset)

    def ss_tables(self, levels: int = 4) -> SsTables:
        return SsTables(self, levels)


class _Tables(ABC):
    """Radix table writer shared by both stages."""

    def __init__(self, b: TableBuilder, levels: int, nonleaf_bits: int,
                 to_hpa: Callable[[int], int] | None = None) -> None:
        self.b = b
        self.levels = levels
        self.nonleaf_bits = nonleaf_bits
        self._to_hpa = to_hpa or (lambda a: a)
        self.root_hpa = self._new_table()
        self.root = self._ptr(self.root_hpa)

    def _new_table(self) -> int:
        return self.b.new_page()

    def _ptr(self, hpa: int) -> int:
        """Value written into a table pointer for a table at ``hpa``."""
        return hpa

    def entry_address(self, addr: int, level: int, create: bool = True) -> int:
        """HPA of the entry for ``addr`` at ``level`` (levels count down to 1)."""
        table = self.root_hpa
        for lvl in range(self.levels, level, -1):
            ea = table + ((addr >> (12 + 9 * (lvl - 1))) & 0x1FF) * 8
            v = self.b.mem.read_u64(ea)
            if not self._present(v) or self._is_leaf(v, lvl):
                if not create:
                    raise KeyError(f"no table below level {lvl} for {addr:#x}")
                hpa = self._new_table()
                v = self._ptr(hpa) | self.nonleaf_bits
                self.b.write_u64(ea, v)
            table = self._to_hpa(v & ADDR_MASK)
        return table + ((addr >> (12 + 9 * (level - 1))) & 0x1FF) * 8

    def set_entry(self, addr: int, level: int, value: int) -> int:
        ea = self.entry_address(addr, level)
        self.b.write_u64(ea, value)
        return ea

    @abstractmethod
    def _present(self, v: int) -> bool: ...

    @abstractmethod
    def _is_leaf(self, v: int, level: int) -> bool: ...

    def _map(self, addr: int, out: int, size: int, leaf_bits: int) -> int:
        level = _SIZES.get(size)
        if level is None or addr % size or out % size:
            raise ConfigError(f"bad mapping {addr:#x}->{out:#x} size {size:#x}: need 4K/2M/1G "
                              "and aligned addresses")
        value = out | leaf_bits | (self._ps_bit if level > 1 else 0)
        return self.set_entry(addr, level, value)

    _ps_bit = 0

    def unmap(self, addr: int, size: int = PAGE) -> int:
        level = _SIZES[size]
        return self.set_entry(addr, level, 0)


class SsTables(_Tables):
    """Second-stage tables (levels = AW + 2)."""

    _ps_bit = SS_PS

    def __init__(self, b: TableBuilder, levels: int = 4) -> None:
        super().__init__(b, levels, SS_R | SS_W | SS_X)

    def _present(self, v: int) -> bool:
        return bool(v & 3)

    def _is_leaf(self, v: int, level: int) -> bool:
        return level > 1 and bool(v & SS_PS)

    @property
    def aw(self) -> int:
        return self.levels - 2

    def map(self, iova: int, hpa: int, size: int = PAGE, *, r: bool = True, w: bool = True,
            x: bool = False, accessed: bool = False, dirty: bool = False) -> int:
        bits = (SS_R if r else 0) | (SS_W if w else 0) | (SS_X if x else 0)
        bits |= (SS_A if accessed else 0) | (SS_D if dirty else 0)
        return self._map(iova, hpa, size, bits)


class FsTables(_Tables):
    """First-stage (IA-32e) tables. With ``ss`` the tables live at GPA = HPA +
    ``gpa_offset`` and are mapped into ``ss`` (nested translation)."""

    _ps_bit = FS_PS

    def __init__(self, b: TableBuilder, levels: int = 4, ss: SsTables | None = None,
                 gpa_offset: int = 0) -> None:
        self.ss = ss
        self.gpa_offset = gpa_offset if ss is not None else 0
        super().__init__(b, levels, FS_P | FS_RW | FS_US,
                         to_hpa=(lambda g: g - self.gpa_offset) if ss is not None else None)

    def _new_table(self) -> int:
        hpa = self.b.new_page()
        if self.ss is not None:
            self.ss.map(hpa + self.gpa_offset, hpa, r=True, w=True)
        return hpa

    def _ptr(self, hpa: int) -> int:
        return hpa + self.gpa_offset

    def _present(self, v: int) -> bool:
        return bool(v & FS_P)

    def _is_leaf(self, v: int, level: int) -> bool:
        return level > 1 and bool(v & FS_PS)

    @property
    def flpm(self) -> int:
        return 1 if self.levels == 5 else 0

    def map(self, va: int, pa: int, size: int = PAGE, *, writable: bool = True,
            user: bool = True, xd: bool = False, accessed: bool = False,
            dirty: bool = False) -> int:
        va &= (1 << 57) - 1 if self.levels == 5 else (1 << 48) - 1
        bits = FS_P | (FS_RW if writable else 0) | (FS_US if user else 0)
        bits |= (FS_XD if xd else 0) | (FS_A if accessed else 0) | (FS_D if dirty else 0)
        return self._map(va, pa, size, bits)
