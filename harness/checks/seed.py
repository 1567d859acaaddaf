"""Seeded bugs: change the guest's IOMMU tables behind its back, to prove the checks fail.

A checker that never fails is worthless; these put a real missing invalidation
into a live guest (a first-stage PTE rewritten in guest RAM with no invalidation
issued) so the tests can show QI completeness catches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.viommu import GuestMemory, Pgtt, VtdConfig
from harness.viommu.faults import WalkFault
from harness.viommu.first_stage import FS_RW, FsParams, fs_walk
from harness.viommu.pasid import pasid_entry_lookup
from harness.viommu.root_context import scalable_context_lookup

_ADDR = ((1 << 52) - 1) & ~0xFFF
_ELSEWHERE = 0x200000  # an address bit: the page 2 MiB away


@dataclass(frozen=True)
class SeededPte:
    address: int  # GPA of the PTE
    old: int
    new: int


# Seeding finds a PTE and judges nothing, so the unit is taken to have every optional
# feature (RID_PASID honoured, 5-level tables, EAFE): only the spec's layouts decide.
_ANY_UNIT = VtdConfig(rps=True, rprivs=True, fs5lp=True, eafs=True)


def first_stage_leaf(memory: GuestMemory, root: int, sid: int, addr: int) -> tuple[int, int]:
    """(GPA of the leaf PTE, its value) for a request without PASID (RID_PASID), scalable
    mode, first stage: the model's own lookups and walk (supervisor read, A/D untouched,
    XD read as NXE=1 reads it: a process's tables set it on data pages). Raises
    LookupError where the model's walk faults."""
    cap, ecap, haw = _ANY_UNIT.cap(), _ANY_UNIT.ecap(), _ANY_UNIT.host_address_width
    try:
        ctx = scalable_context_lookup(memory, root, sid, ecap, haw)
        pe = pasid_entry_lookup(memory, ctx, ctx.rid_pasid, cap, ecap, haw).entry
        if pe.pgtt not in (Pgtt.FIRST_STAGE, Pgtt.NESTED):
            raise LookupError(f"sid {sid:#x}: PASID entry has no first stage (PGTT {pe.pgtt:#05b})")
        params = FsParams.make(pe.flptptr, flpm=pe.flpm, haw=haw, fs1gp=True, nxe=True)
        r = fs_walk(memory, params, addr, priv=True, update_ad=False)
    except WalkFault as exc:
        raise LookupError(f"{addr:#x} from sid {sid:#x}: the walk faults with {exc.reason.name} "
                          f"({exc.stage}, level {exc.level})") from None
    return r.leaf_addr, r.leaf_pte


def rewrite_pte(memory: GuestMemory, root: int, sid: int, addr: int, change: Callable[[int], int]) -> SeededPte:
    """Replace the leaf PTE of `addr` by `change(old)` in guest RAM; no invalidation is issued."""
    at, old = first_stage_leaf(memory, root, sid, addr)
    new = change(old)
    memory.write_u64(at, new)
    return SeededPte(at, old, new)


def retarget_pte(memory: GuestMemory, root: int, sid: int, addr: int, new_page: int) -> SeededPte:
    """Point the page at `addr` to `new_page` in guest RAM; no invalidation is issued."""
    return rewrite_pte(memory, root, sid, addr, lambda old: (old & ~_ADDR) | (new_page & _ADDR))


def retarget_elsewhere(memory: GuestMemory, root: int, sid: int, addr: int) -> SeededPte:
    """Point the page at `addr` to the page 2 MiB from where it maps; no invalidation."""
    return rewrite_pte(memory, root, sid, addr, lambda old: old ^ _ELSEWHERE)


def revoke_write(memory: GuestMemory, root: int, sid: int, addr: int) -> SeededPte:
    """Take write permission away from the page at `addr`; no invalidation."""
    return rewrite_pte(memory, root, sid, addr, lambda old: old & ~FS_RW)


def restore_pte(memory: GuestMemory, seeded: SeededPte) -> None:
    memory.write_u64(seeded.address, seeded.old)
