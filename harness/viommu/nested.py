"""Nested translation (PGTT=011): first stage over second stage (docs/VTD_FACTS.md §5).

Every first-stage table address (FSPTPTR and each next-table pointer) is a GPA
translated through the second stage before it is read; the FS output GPA is
then translated through the second stage with the request's own access. A
second-stage failure while translating an FS structure is reported with the
nested codes: 0x74 (beyond the SS input width), 0x75 (SS denies reading the FS
root), 0x76 (SS denies reading an FS entry), 0x77 (SS denies the FS A/D write);
structural SS faults (0x78-0x7B) keep their own codes.

:func:`nested_walk` first tries :func:`_nested_walk_fast`, a straight-line version of
the common case (flat RAM, no fault, no A/D bit to set) that reads exactly the same
entries but never writes; anything else is left to the general walkers, which then run
from the start as if the fast attempt had not happened.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .faults import FaultReason, WalkFault
from .first_stage import (
    ADDR_MASK_4K,
    FS_A,
    FS_D,
    FS_EA,
    FS_P,
    FS_PS,
    FS_RW,
    FS_US,
    FS_XD,
    XLATE_AD,
    XLATE_ROOT,
    FsParams,
    FsResult,
    fs_access_fault,
    fs_walk,
)
from .memory import GuestMemory
from .second_stage import SS_A, SS_D, SS_R, SS_W, SS_X, SsParams, SsResult, ss_walk, ss_walk_fast

FR = FaultReason
_unpack = struct.Struct("<Q").unpack_from
_tuple_new = tuple.__new__


class NestedResult(NamedTuple):
    address: int
    page_size: int
    level: int  # first-stage leaf level
    leaf_pte: int  # first-stage leaf entry
    leaf_addr: int
    fs: FsResult
    ss: SsResult
    dirty: bool


def nested_table_fault(reason: FaultReason, purpose: int) -> FaultReason:
    """Map a second-stage fault met while translating an FS structure to its nested code."""
    if reason in (FR.SM_BEYOND_HW_MAX, FR.ADDRESS_BEYOND_MGAW):
        return FR.FS_NESTED_BEYOND_MGAW
    if purpose == XLATE_AD and reason in (FR.SM_WRITE_DENIED, FR.WRITE_DENIED):
        return FR.FS_NESTED_AD_WRITE_DENIED
    if purpose != XLATE_AD and reason in (FR.SM_READ_DENIED, FR.READ_DENIED):
        return FR.FS_NESTED_ROOT_READ_DENIED if purpose == XLATE_ROOT else (
            FR.FS_NESTED_ENTRY_READ_DENIED
        )
    return reason


def nested_walk(
    mem: GuestMemory,
    fsp: FsParams,
    ssp: SsParams,
    addr: int,
    *,
    write: bool = False,
    execute: bool = False,
    priv: bool = False,
    update_ad: bool = True,
) -> NestedResult:
    """Translate ``addr`` (an IOVA/GVA) to an HPA through FS then SS."""
    fast = _nested_walk_fast(mem, fsp, ssp, addr, write=write, execute=execute, priv=priv,
                             update_ad=update_ad)
    if fast is not None:
        return fast

    def xlate(gpa: int, purpose: int) -> int:
        try:
            return ss_walk(mem, ssp, gpa, write=purpose == XLATE_AD, execute=False,
                           update_ad=update_ad, addr_only=True)
        except WalkFault as f:
            raise WalkFault(nested_table_fault(f.reason, purpose), f.level, "nested-ss") from None

    fs = fs_walk(mem, fsp, addr, write=write, execute=execute, priv=priv, xlate=xlate,
                 update_ad=update_ad)
    ss = ss_walk(mem, ssp, fs.address, write=write, execute=execute, update_ad=update_ad)
    size = min(fs.page_size, ss.page_size)
    return NestedResult(
        ss.address, size, fs.level, fs.leaf_pte, fs.leaf_addr, fs, ss, fs.dirty and ss.dirty
    )


def _nested_walk_fast(
    mem: GuestMemory,
    fsp: FsParams,
    ssp: SsParams,
    addr: int,
    *,
    write: bool,
    execute: bool,
    priv: bool,
    update_ad: bool,
) -> NestedResult | None:
    """:func:`nested_walk` for a walk that succeeds without writing memory, else None.

    The same entries are read in the same order as by the general path: each FS table
    entry's GPA goes through the second stage (:func:`ss_walk_fast`) before the entry is
    read, then the FS output does. Whatever the general path would turn into a fault or
    an A/D write makes this return None before anything is written: a missing FS A (or
    EA) bit or leaf D on a write, and with SSADE a missing SS A bit or leaf D on a write
    (A is added to the bits each SS entry must have, so one test covers it).
    """
    flat = mem.flat
    if flat is None:
        return None
    buf, last = flat
    width = fsp.width
    top = addr >> (width - 1)
    if top and top != (1 << (65 - width)) - 1:
        return None  # non-canonical
    ss_set_ad = update_ad and ssp.ssade
    table_need = SS_R | (SS_A if ss_set_ad else 0)  # FS structures are read (A/D writes bail)
    fs_need = FS_P | ((FS_A | (FS_EA if fsp.eafe else 0)) if update_ad else 0)
    nonleaf, leafm = fsp.nonleaf_t, fsp.leaf_t
    table = fsp.root
    rw = FS_RW | FS_US
    xd = 0
    level = fsp.levels
    while True:
        hit = ss_walk_fast(buf, last, ssp, table + ((addr >> (9 * level)) & 0xFF8), table_need)
        if hit is None:
            return None
        at = hit[0]
        if at > last:
            return None
        pte = _unpack(buf, at)[0]
        if pte & fs_need != fs_need:
            return None  # not present, or an A/EA bit to set
        rw &= pte
        xd |= pte
        nl = nonleaf[level]
        if level == 1 or (pte & FS_PS and not nl & FS_PS):
            if pte & leafm[level]:
                return None
            break
        if pte & nl:
            return None
        table = pte & ADDR_MASK_4K
        level -= 1
    rwb, usb, xdb = bool(rw & FS_RW), bool(rw & FS_US), bool(xd & FS_XD)
    if fs_access_fault(fsp, rw=rwb, us=usb, xd=xdb, write=write, execute=execute,
                       priv=priv) is not None:
        return None
    fs_dirty = bool(pte & FS_D)
    if update_ad and write and not fs_dirty:
        return None  # the leaf's D bit would be set
    fs_size = 1 << (3 + 9 * level)
    gpa = (pte & ADDR_MASK_4K & ~(fs_size - 1)) | (addr & (fs_size - 1))
    fs = _tuple_new(FsResult, (gpa, fs_size, level, pte, at, rwb, usb, xdb, fs_dirty))

    if execute and not ssp.slee:
        return None  # SS execute is denied outright without SLEE
    need = (SS_W if write else SS_R) | (SS_X if execute else 0) | (SS_A if ss_set_ad else 0)
    hit = ss_walk_fast(buf, last, ssp, gpa, need)
    if hit is None:
        return None
    out, ss_level, ss_pte, ss_at, acc = hit
    ss_dirty = True  # without SSADE, D never needs setting
    if ssp.ssade:
        ss_dirty = bool(ss_pte & SS_D)
        if ss_set_ad and write and not ss_dirty:
            return None
    ss_size = 1 << (3 + 9 * ss_level)
    ss = _tuple_new(SsResult, (out, ss_size, ss_level, ss_pte, ss_at, bool(acc & SS_R),
                               bool(acc & SS_W), bool(acc & SS_X) and ssp.slee, ss_dirty))
    return _tuple_new(NestedResult, (out, min(fs_size, ss_size), level, pte, at, fs, ss,
                                     fs_dirty and ss_dirty))
