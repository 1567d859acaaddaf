"""Nested walks for a whole batch at once (the engine behind ``VtdModel.walk_many``).

The walk is the one :func:`nested.nested_walk` does: every first-stage table entry's
GPA goes through the second stage before the entry is read, and so does the FS output.
Here each step is done for every address of the batch together, with numpy gathers
from flat RAM, which costs far less per address than walking them one by one.

Only the plain case is decided here: every entry present, no reserved bit, rights
granted, 4 KiB pages at both stages, and no A/D bit left to set. A lane ("address")
that leaves the plain case in any way is only *flagged*; the caller walks it again
with the per-address walker, which reports the exact fault, handles superpages and
does the A/D writes. Nothing here writes memory, so the answers for the lanes before
the first flagged one are what a one-by-one walk would have given. After a flagged lane
the per-address walk may have set A/D bits the batch's reads did not see, so the
caller stops trusting the batch from there on (when A/D updates are on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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
    FsParams,
    fs_access_fault,
)
from .memory import GuestMemory
from .second_stage import SS_A, SS_D, SS_R, SS_W, SsParams

#: One u64 per lane (dtype uint64 at run time; numpy's stubs type ``u64 & int`` as signed).
U64 = npt.NDArray[Any]
Flags = npt.NDArray[np.bool_]


class BatchWalk:
    """Per-lane results of :func:`nested_walk_batch`, as Python lists.

    ``flagged[i]``: lane i left the plain case and must be walked one by one; otherwise
    ``address[i]`` is the HPA and ``leaf_pte[i]`` the FS leaf entry (a 4 KiB page, FS
    leaf level 1).
    """

    __slots__ = ("address", "leaf_pte", "flagged")

    def __init__(self, address: list[int], leaf_pte: list[int], flagged: list[bool]) -> None:
        self.address = address
        self.leaf_pte = leaf_pte
        self.flagged = flagged


def _frame(pte: U64) -> U64:
    """The 4 KiB frame an entry points at."""
    return pte & ADDR_MASK_4K


def _read(ram: U64, at: U64, flagged: Flags) -> U64:
    """The entries at byte addresses ``at`` (all 8-byte aligned); lanes outside RAM are
    flagged and read entry 0 instead, so one gather serves the whole batch."""
    index = at >> 3
    outside = index >= len(ram)
    if outside.any():
        flagged |= outside
        index = np.where(outside, 0, index)
    return ram[index]


def _ss_translate(ram: U64, p: SsParams, gpa: U64, need: int, leaf_need: int,
                  flagged: Flags) -> U64:
    """Second-stage output address of every lane's ``gpa``.

    Each entry must hold all of ``need`` (``leaf_need`` for the leaf): the request's R
    or W, which also makes it present, plus A/D when the per-address walk would set
    them. A reserved bit, or PS in a non-leaf entry (a superpage, or a reserved PS),
    flags the lane, as does an input beyond the SS width.
    """
    flagged |= (gpa >> p.width) != 0
    table = np.full_like(gpa, p.root)
    for _level, shift, stop in p.fast_steps:
        pte = _read(ram, table + ((gpa >> shift) & 0xFF8), flagged)
        flagged |= ((pte & need) != need) | ((pte & stop) != 0)
        table = _frame(pte)
    pte = _read(ram, table + ((gpa >> 9) & 0xFF8), flagged)
    flagged |= ((pte & leaf_need) != leaf_need) | ((pte & p.leaf_t[1]) != 0)
    return _frame(pte) | (gpa & 0xFFF)


def _fs_rights_ok(p: FsParams, *, write: bool, priv: bool) -> npt.NDArray[np.bool_]:
    """Whether a request is allowed, indexed by RW | US << 1 | XD << 2 of the rights
    accumulated over the FS walk: :func:`fs_access_fault` for all eight combinations."""
    return np.array([
        fs_access_fault(p, rw=bool(i & 1), us=bool(i & 2), xd=bool(i & 4), write=write,
                        execute=False, priv=priv) is None
        for i in range(8)
    ])


def nested_walk_batch(mem: GuestMemory, fsp: FsParams, ssp: SsParams, addrs: Sequence[int],
                      *, write: bool, priv: bool, update_ad: bool) -> BatchWalk | None:
    """Walk every address of ``addrs`` (non-execute requests); None when the batch as a
    whole cannot be done here (RAM not flat, or an address that is no u64)."""
    flat = mem.flat
    if flat is None or not ssp.fast_steps or not addrs:
        return None
    buf, last = flat
    if last < 0:
        return None
    try:
        va = np.fromiter(addrs, dtype=np.uint64, count=len(addrs))
    except (OverflowError, TypeError, ValueError):
        return None
    ram: Any = np.frombuffer(buf, dtype="<u8", count=(last + 8) // 8)

    width = fsp.width
    top = va >> (width - 1)
    flagged = (top != 0) & (top != (1 << (65 - width)) - 1)  # non-canonical
    ss_set_ad = update_ad and ssp.ssade
    table_need = SS_R | (SS_A if ss_set_ad else 0)  # FS structures are read
    fs_need = FS_P | ((FS_A | (FS_EA if fsp.eafe else 0)) if update_ad else 0)
    table = np.full_like(va, fsp.root)
    rights = np.full_like(va, FS_RW | FS_US)
    xd = np.zeros_like(va)
    for level in range(fsp.levels, 0, -1):
        entry_gpa = table + ((va >> (9 * level)) & 0xFF8)
        pte = _read(ram, _ss_translate(ram, ssp, entry_gpa, table_need, table_need, flagged),
                    flagged)
        # Above level 1, PS means a superpage leaf or a reserved bit: not the plain case.
        stop = fsp.leaf_t[1] if level == 1 else fsp.nonleaf_t[level] | FS_PS
        flagged |= ((pte & fs_need) != fs_need) | ((pte & stop) != 0)
        rights &= pte
        xd |= pte
        table = _frame(pte)
    leaf = pte
    combo = ((rights & FS_RW) != 0) | (((rights & FS_US) != 0) << 1) | (((xd & FS_XD) != 0) << 2)
    flagged |= ~_fs_rights_ok(fsp, write=write, priv=priv)[combo.astype(np.intp)]
    if update_ad and write:
        flagged |= (leaf & FS_D) == 0  # the walk would set the FS leaf's D bit

    need = (SS_W if write else SS_R) | (SS_A if ss_set_ad else 0)
    leaf_need = need | (SS_D if ss_set_ad and write else 0)
    out = _ss_translate(ram, ssp, table | (va & 0xFFF), need, leaf_need, flagged)
    result = BatchWalk(out.tolist(), leaf.tolist(), flagged.tolist())
    del ram  # drop the buffer export now (an mmap cannot be closed while it exists)
    return result
