"""Second-stage paging walk (docs/VTD_FACTS.md §4.3, §4.4).

Per level: read the entry (access error), present = R|W, reserved bits, then the
request's permission (R for reads, W for writes, X for execute with SLEE);
permissions are intersected across levels. With SSADE the walk sets A on each
entry and D on the leaf of a write. Fault codes come from a per-mode table:
legacy mode uses 0x4-0xC, scalable mode 0x78-0x86.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from .bits import haw_mask, mask
from .faults import FaultReason, WalkFault
from .memory import GuestMemory, MemoryAccessError

FR = FaultReason
_unpack = struct.Struct("<Q").unpack_from

ADDR_MASK_4K = mask(51, 12)
PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30

SS_R = 1 << 0
SS_W = 1 << 1
SS_X = 1 << 2
SS_PS = 1 << 7
SS_A = 1 << 8
SS_D = 1 << 9
SS_SNP = 1 << 11
SS_TM = 1 << 62


@dataclass(frozen=True, slots=True)
class SsCodes:
    """Fault reasons of one translation mode."""

    beyond: FaultReason
    root_access: FaultReason
    entry_access: FaultReason
    not_present_read: FaultReason
    not_present_write: FaultReason
    reserved: FaultReason
    read_denied: FaultReason
    write_denied: FaultReason
    exec_denied: FaultReason


LEGACY_CODES = SsCodes(
    beyond=FR.ADDRESS_BEYOND_MGAW,
    root_access=FR.SS_ENTRY_ACCESS,
    entry_access=FR.SS_ENTRY_ACCESS,
    # Legacy mode has no not-present code: R=W=0 denies the access.
    not_present_read=FR.READ_DENIED,
    not_present_write=FR.WRITE_DENIED,
    reserved=FR.SS_ENTRY_RESERVED,
    read_denied=FR.READ_DENIED,
    write_denied=FR.WRITE_DENIED,
    exec_denied=FR.READ_DENIED,
)

SCALABLE_CODES = SsCodes(
    beyond=FR.SM_BEYOND_HW_MAX,
    root_access=FR.SS_SM_INVALID_SLPTPTR,
    entry_access=FR.SS_SM_ENTRY_ACCESS,
    not_present_read=FR.SS_SM_ENTRY_NOT_PRESENT,
    not_present_write=FR.SS_SM_ENTRY_NOT_PRESENT,
    reserved=FR.SS_SM_ENTRY_RESERVED,
    read_denied=FR.SM_READ_DENIED,
    write_denied=FR.SM_WRITE_DENIED,
    exec_denied=FR.SM_EXECUTE_DENIED,
)


def ss_reserved_masks(haw: int, levels: int, *, ps_2m: bool, ps_1g: bool, snp_ok: bool,
                      ) -> tuple[dict[int, int], dict[int, int]]:
    """(non-leaf mask per level, leaf mask per level) of reserved bits.

    Address bits HAW..51 and TM (bit 62) are reserved everywhere; PS is reserved in
    PML5E/PML4E, and in PDPE/PDE when the page size is not supported; superpage
    leaves reserve the address bits below the page size; SNP needs ECAP.SC.
    """
    base = (haw_mask(haw, 51) if haw < 52 else 0) | SS_TM
    if not snp_ok:
        base |= SS_SNP
    nonleaf: dict[int, int] = {}
    leaf: dict[int, int] = {}
    for level in range(1, levels + 1):
        m = base
        if level >= 4 or (level == 3 and not ps_1g) or (level == 2 and not ps_2m):
            m |= SS_PS
        nonleaf[level] = m
    leaf[1] = base
    leaf[2] = base | mask(20, 12)
    leaf[3] = base | mask(29, 12)
    return nonleaf, leaf


@dataclass(frozen=True, slots=True)
class SsParams:
    """Everything a second-stage walk needs, fixed per context/PASID entry."""

    root: int
    levels: int
    width: int  # input addresses must be < 2**width
    slee: bool
    ssade: bool
    codes: SsCodes
    nonleaf_rsvd: dict[int, int]
    leaf_rsvd: dict[int, int]
    # The same masks as tuples indexed by level, and whether PS makes a leaf there.
    nonleaf_t: tuple[int, ...] = ()
    leaf_t: tuple[int, ...] = ()
    ps_leaf_t: tuple[bool, ...] = ()
    #: (level, index shift, stop mask) for the non-leaf levels, top down: what
    #: :func:`ss_walk_fast` needs per level (empty: no fast path for these params).
    fast_steps: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def make(
        cls,
        root: int,
        aw: int,
        *,
        mgaw: int,
        haw: int,
        ps_2m: bool,
        ps_1g: bool,
        scalable: bool,
        slee: bool = False,
        ssade: bool = False,
        snp_ok: bool = True,
    ) -> SsParams:
        levels = aw + 2
        nonleaf, leaf = ss_reserved_masks(haw, levels, ps_2m=ps_2m, ps_1g=ps_1g, snp_ok=snp_ok)
        return cls(
            root=root & ADDR_MASK_4K,
            levels=levels,
            width=min(30 + 9 * aw, mgaw),
            slee=slee,
            ssade=ssade,
            codes=SCALABLE_CODES if scalable else LEGACY_CODES,
            nonleaf_rsvd=nonleaf,
            leaf_rsvd=leaf,
            nonleaf_t=tuple(nonleaf.get(i, 0) for i in range(levels + 1)),
            leaf_t=tuple(leaf.get(i, 0) for i in range(max(levels, 3) + 1)),
            ps_leaf_t=tuple(1 < i <= 3 and not nonleaf[i] & SS_PS if i in nonleaf else False
                            for i in range(levels + 1)),
            # PS joins the stop mask so one test per level catches both a reserved bit and
            # a possible superpage leaf; the rare stop is sorted out off the hot path.
            fast_steps=tuple((lvl, 9 * lvl, nonleaf[lvl] | SS_PS) for lvl in range(levels, 1, -1)),
        )


class SsResult(NamedTuple):
    """A successful second-stage walk."""

    address: int
    page_size: int
    level: int
    leaf_pte: int
    leaf_addr: int
    r: bool
    w: bool
    x: bool
    dirty: bool  # a write can be served without another A/D update


def ss_walk(
    mem: GuestMemory,
    p: SsParams,
    addr: int,
    *,
    write: bool = False,
    execute: bool = False,
    update_ad: bool = True,
    addr_only: bool = False,
) -> Any:
    """Translate ``addr`` through the second-stage tables of ``p``: an :class:`SsResult`,
    or just the output address with ``addr_only`` (nested table translations)."""
    if addr >> p.width:
        raise WalkFault(p.codes.beyond, p.levels, "ss")
    table = p.root
    level = top = p.levels
    need = (SS_W if write else SS_R) | (SS_X if execute else 0)
    x_off = execute and not p.slee
    acc = SS_R | SS_W | SS_X
    nonleaf = p.nonleaf_t
    leafm = p.leaf_t
    ps_leaf = p.ps_leaf_t
    used: list[int] | None = [] if p.ssade else None
    # Flat RAM: unpack straight from the buffer (the hot path of nested walks).
    fv = mem.flat
    buf, last = fv if fv is not None else (b"", -1)
    read_u64 = mem.read_u64
    while True:
        pte_addr = table + ((addr >> (9 * level)) & 0xFF8)
        try:
            if 0 <= pte_addr <= last:
                pte = _unpack(buf, pte_addr)[0]
            else:
                pte = read_u64(pte_addr)
        except MemoryAccessError:
            codes = p.codes
            raise WalkFault(
                codes.root_access if level == top else codes.entry_access, level, "ss"
            ) from None
        if not pte & 3:
            codes = p.codes
            raise WalkFault(
                codes.not_present_write if write else codes.not_present_read, level, "ss"
            )
        if level == 1 or (pte & SS_PS and ps_leaf[level]):
            if pte & leafm[level]:
                raise WalkFault(p.codes.reserved, level, "ss")
            is_leaf = True
        else:
            if pte & nonleaf[level]:
                raise WalkFault(p.codes.reserved, level, "ss")
            is_leaf = False
        acc &= pte
        if acc & need != need or x_off:
            codes = p.codes
            if write and not acc & SS_W:
                raise WalkFault(codes.write_denied, level, "ss")
            if not write and not acc & SS_R:
                raise WalkFault(codes.read_denied, level, "ss")
            raise WalkFault(codes.exec_denied, level, "ss")
        if used is not None:
            used.append(pte_addr)
        if is_leaf:
            break
        table = pte & ADDR_MASK_4K
        level -= 1
    size = 1 << (3 + 9 * level)
    dirty = True
    if used is not None:
        dirty = bool(pte & SS_D)
        if update_ad:
            try:
                _ss_set_ad(mem, used, write)
            except MemoryAccessError:
                raise WalkFault(p.codes.entry_access, level, "ss") from None
            if write:
                dirty = True
                pte |= SS_D | SS_A
    out = (pte & ADDR_MASK_4K & ~(size - 1)) | (addr & (size - 1))
    if addr_only:
        return out
    return SsResult(out, size, level, pte, pte_addr, bool(acc & SS_R), bool(acc & SS_W),
                    bool(acc & SS_X) and p.slee, dirty)


def ss_walk_fast(
    buf: Any, last: int, p: SsParams, addr: int, need: int
) -> tuple[int, int, int, int, int] | None:
    """The side-effect-free common case of :func:`ss_walk` over flat RAM.

    ``buf``/``last`` come from :attr:`GuestMemory.flat`. Returns (output address, leaf
    level, leaf entry, leaf entry address, R/W/X bits ANDed over the levels), in
    :class:`SsResult` order, or None when the walk leaves the common case: an entry
    outside RAM, a fault of any kind, or an entry lacking a bit of ``need``.

    ``need`` holds the request's R/W/X bits, plus A when the caller would have to set A
    bits (SSADE with A/D updates): then None means "memory would be written", and the
    caller reruns :func:`ss_walk`, which reports the exact fault or does the update.
    Bailing out is always safe because nothing has been written.

    A leaf passing ``need`` is present (``need`` has R or W). Per level a single test
    against the stop mask (reserved bits | PS) keeps superpages off the hot path.
    """
    if addr >> p.width or not p.fast_steps:
        return None
    table = p.root
    acc = SS_R | SS_W | SS_X
    for level, shift, stop in p.fast_steps:
        at = table + ((addr >> shift) & 0xFF8)
        if at > last:
            return None
        pte = _unpack(buf, at)[0]
        if pte & need != need:
            return None
        acc &= pte
        if pte & stop:
            # A superpage leaf, or a reserved-bit fault (PS where it is reserved included).
            if not (pte & SS_PS and p.ps_leaf_t[level]) or pte & p.leaf_t[level]:
                return None
            size = 1 << (3 + 9 * level)
            return (pte & ADDR_MASK_4K & ~(size - 1)) | (addr & (size - 1)), level, pte, at, acc
        table = pte & ADDR_MASK_4K
    at = table + ((addr >> 9) & 0xFF8)
    if at > last:
        return None
    pte = _unpack(buf, at)[0]
    if pte & need != need or pte & p.leaf_t[1]:
        return None
    return (pte & ADDR_MASK_4K) | (addr & 0xFFF), 1, pte, at, acc & pte


def _ss_set_ad(mem: GuestMemory, used: list[int], write: bool) -> None:
    """Set A on every entry used and D on the leaf of a write (hardware does it atomically)."""
    last = len(used) - 1
    for i, a in enumerate(used):
        v = mem.read_u64(a)
        nv = v | SS_A
        if write and i == last:
            nv |= SS_D
        if nv != v:
            mem.write_u64(a, nv)
