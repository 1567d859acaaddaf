"""First-stage (IA-32e format) paging walk (docs/VTD_FACTS.md §4.1, §4.2).

Order: canonical check (0x80); per level read (0x73 for the root table, 0x70
below), P (0x71), reserved bits (0x72); at the leaf, the accumulated rights
are checked against the request (U/S 0x81, R/W 0x85 with WPE, XD/SMEP 0x82);
then A is set on every entry used (EA too with EAFE) and D on the leaf of a
write. A/D are set only for translations that succeed. In nested mode every
table address is a GPA, translated through ``xlate`` before it is read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .bits import haw_mask, mask
from .faults import FaultReason, WalkFault
from .memory import GuestMemory, MemoryAccessError

FR = FaultReason
_unpack = struct.Struct("<Q").unpack_from

FS_P = 1 << 0
FS_RW = 1 << 1
FS_US = 1 << 2
FS_PWT = 1 << 3
FS_PCD = 1 << 4
FS_A = 1 << 5
FS_D = 1 << 6
FS_PS = 1 << 7
FS_G = 1 << 8
FS_EA = 1 << 10
FS_XD = 1 << 63
ADDR_MASK_4K = mask(51, 12)

#: Purpose of a table-address translation in nested mode.
XLATE_ROOT = 0
XLATE_ENTRY = 1
XLATE_AD = 2

#: ``xlate(gpa, purpose) -> hpa``; raises WalkFault with the nested fault reason.
TableXlate = Callable[[int, int], int]


def fs_reserved_masks(
    haw: int, levels: int, *, fs1gp: bool, nxe: bool
) -> tuple[dict[int, int], dict[int, int]]:
    """(non-leaf, leaf) reserved masks per level for IA-32e entries."""
    base = haw_mask(haw, 51) if haw < 52 else 0
    if not nxe:
        base |= FS_XD
    nonleaf = {lvl: base for lvl in range(1, levels + 1)}
    for lvl in range(4, levels + 1):
        nonleaf[lvl] |= FS_PS
    if not fs1gp:
        nonleaf[3] |= FS_PS
    leaf = {1: base, 2: base | mask(20, 13), 3: base | mask(29, 13)}
    return nonleaf, leaf


@dataclass(frozen=True, slots=True)
class FsParams:
    """Everything a first-stage walk needs, fixed per PASID entry."""

    root: int
    levels: int
    wpe: bool
    nxe: bool
    smep: bool
    eafe: bool
    nonleaf_rsvd: dict[int, int]
    leaf_rsvd: dict[int, int]
    nonleaf_t: tuple[int, ...] = ()  # the masks as tuples indexed by level
    leaf_t: tuple[int, ...] = ()

    @classmethod
    def make(
        cls,
        root: int,
        *,
        flpm: int = 0,
        haw: int = 48,
        fs1gp: bool = True,
        wpe: bool = False,
        nxe: bool = False,
        smep: bool = False,
        eafe: bool = False,
    ) -> FsParams:
        levels = 5 if flpm == 1 else 4
        nonleaf, leaf = fs_reserved_masks(haw, levels, fs1gp=fs1gp, nxe=nxe)
        return cls(root & ADDR_MASK_4K, levels, wpe, nxe, smep, eafe, nonleaf, leaf,
                   tuple(nonleaf.get(i, 0) for i in range(levels + 1)),
                   tuple(leaf.get(i, 0) for i in range(4)))

    @property
    def width(self) -> int:
        """Canonical width: 48 bits for 4-level paging, 57 for 5-level."""
        return 57 if self.levels == 5 else 48


def is_canonical(addr: int, width: int) -> bool:
    top = addr >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


class FsResult(NamedTuple):
    """A successful first-stage walk: output address and the rights accumulated."""

    address: int
    page_size: int
    level: int
    leaf_pte: int
    leaf_addr: int
    rw: bool  # R/W set at every level
    us: bool  # U/S set at every level
    xd: bool  # XD set at some level (meaningful with NXE)
    dirty: bool  # leaf D set: a write can be served without an A/D update


def fs_access_fault(
    p: FsParams, *, rw: bool, us: bool, xd: bool, write: bool, execute: bool, priv: bool
) -> FaultReason | None:
    """The fault a request with these accumulated rights takes, or None."""
    if not priv and not us:
        return FR.SM_USER_DENIED
    if write and not rw and (not priv or p.wpe):
        return FR.SM_WRITE_DENIED
    if execute and ((p.nxe and xd) or (priv and p.smep and us)):
        return FR.SM_EXECUTE_DENIED
    return None


def fs_walk(
    mem: GuestMemory,
    p: FsParams,
    addr: int,
    *,
    write: bool = False,
    execute: bool = False,
    priv: bool = False,
    xlate: TableXlate | None = None,
    update_ad: bool = True,
    start: tuple[int, int, int, int] | None = None,
    collect: list[tuple[int, int, int, int, int]] | None = None,
) -> FsResult:
    """Translate ``addr`` through the first-stage tables of ``p``.

    ``start`` = (level, table, rights, xd) resumes below a cached non-leaf entry (the
    paging-structure cache); ``collect`` receives (level, entry address, entry, rights, xd)
    for every non-leaf entry used, to fill that cache.
    """
    top = addr >> (p.width - 1)
    if top and top != (1 << (65 - p.width)) - 1:
        raise WalkFault(FR.SM_NOT_CANONICAL, p.levels, "fs")
    read_u64 = mem.read_u64
    table = p.root
    level = p.levels
    nonleaf = p.nonleaf_t
    leafm = p.leaf_t
    rw = FS_RW | FS_US
    xd = 0
    if start is not None:
        level, table, rw, xd = start
    accessed = FS_A | (FS_EA if p.eafe else 0)
    need_ad = False
    used: list[tuple[int, int]] = []  # (address as software sees it, address read)
    fv = mem.flat
    buf, last = fv if fv is not None else (b"", -1)
    while True:
        entry_gpa = table + ((addr >> (9 * level)) & 0xFF8)
        entry_at = entry_gpa
        if xlate is not None:
            entry_at = xlate(entry_gpa, XLATE_ROOT if level == p.levels else XLATE_ENTRY)
        try:
            if 0 <= entry_at <= last:
                pte = _unpack(buf, entry_at)[0]
            else:
                pte = read_u64(entry_at)
        except MemoryAccessError:
            raise WalkFault(
                FR.FS_ROOT_ACCESS if level == p.levels else FR.FS_ENTRY_ACCESS, level, "fs"
            ) from None
        if not pte & FS_P:
            raise WalkFault(FR.FS_ENTRY_NOT_PRESENT, level, "fs")
        nl = nonleaf[level]
        if level == 1 or (pte & FS_PS and not nl & FS_PS):
            if pte & leafm[level]:
                raise WalkFault(FR.FS_ENTRY_RESERVED, level, "fs")
            is_leaf = True
        else:
            if pte & nl:
                raise WalkFault(FR.FS_ENTRY_RESERVED, level, "fs")
            is_leaf = False
        rw &= pte
        xd |= pte
        if pte & accessed != accessed:
            need_ad = True
        used.append((entry_gpa, entry_at))
        if is_leaf:
            break
        if collect is not None:
            collect.append((level, entry_at, pte, rw, xd))
        table = pte & ADDR_MASK_4K
        level -= 1
    rwb, usb, xdb = bool(rw & FS_RW), bool(rw & FS_US), bool(xd & FS_XD)
    reason = fs_access_fault(p, rw=rwb, us=usb, xd=xdb, write=write, execute=execute, priv=priv)
    if reason is not None:
        raise WalkFault(reason, level, "fs")
    dirty = bool(pte & FS_D)
    if update_ad and (need_ad or (write and not dirty)):
        _fs_set_ad(mem, p, used, write, xlate)
        pte |= FS_A
        if write:
            dirty = True
            pte |= FS_D
    size = 1 << (3 + 9 * level)
    out = (pte & ADDR_MASK_4K & ~(size - 1)) | (addr & (size - 1))
    return FsResult(out, size, level, pte, used[-1][1], rwb, usb, xdb, dirty)


def _fs_set_ad(
    mem: GuestMemory,
    p: FsParams,
    used: list[tuple[int, int]],
    write: bool,
    xlate: TableXlate | None,
) -> None:
    accessed = FS_A | (FS_EA if p.eafe else 0)
    last = len(used) - 1
    for i, (gpa, at) in enumerate(used):
        v = mem.read_u64(at)
        nv = v | accessed
        if write and i == last:
            nv |= FS_D
        if nv == v:
            continue
        if xlate is not None:
            # The A/D write goes to a GPA and needs second-stage write permission.
            at = xlate(gpa, XLATE_AD)
        try:
            mem.write_u64(at, nv)
        except MemoryAccessError:
            raise WalkFault(FR.FS_AD_UPDATE_FAILED, 0, "fs") from None
