"""Seeded bugs: change the guest's IOMMU tables behind its back, to prove the checks fail.

A checker that never fails is worthless; these put a real missing invalidation
into a live guest (a first-stage PTE rewritten in guest RAM with no invalidation
issued) so the tests can show QI completeness catches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.viommu import GuestMemory

_ADDR = ((1 << 52) - 1) & ~0xFFF


@dataclass(frozen=True)
class SeededPte:
    address: int  # GPA of the PTE
    old: int
    new: int


def first_stage_leaf(memory: GuestMemory, root: int, sid: int, addr: int) -> tuple[int, int]:
    """(GPA of the leaf PTE, its value) for a request without PASID (RID_PASID), scalable
    mode, 4-level first stage. Follows the spec layouts (docs/VTD_FACTS.md §2.3, 2.4, 3, 4.1)."""
    bus, devfn = sid >> 8, sid & 0xFF
    root_lo, root_hi = memory.read_u64(root + bus * 16), memory.read_u64(root + bus * 16 + 8)
    half = root_hi if devfn >= 128 else root_lo
    if not half & 1:
        raise LookupError(f"root entry for bus {bus} not present")
    ctx = (half & _ADDR) + (devfn & 0x7F) * 32
    ctx0, ctx1 = memory.read_u64(ctx), memory.read_u64(ctx + 8)
    if not ctx0 & 1:
        raise LookupError(f"context entry for sid {sid:#x} not present")
    pasid = ctx1 & 0xFFFFF  # RID_PASID
    dir_entry = memory.read_u64((ctx0 & _ADDR) + (pasid >> 6) * 8)
    pe = (dir_entry & _ADDR) + (pasid & 0x3F) * 64
    table = memory.read_u64(pe + 16) & _ADDR  # FLPTPTR
    for level in (4, 3, 2, 1):
        at = table + ((addr >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        entry = memory.read_u64(at)
        if not entry & 1:
            raise LookupError(f"{addr:#x} not mapped at level {level}")
        if level == 1 or entry & 0x80:
            return at, entry
        table = entry & _ADDR
    raise AssertionError("unreachable")


def retarget_pte(memory: GuestMemory, root: int, sid: int, addr: int, new_page: int) -> SeededPte:
    """Point the page at `addr` to `new_page` in guest RAM; no invalidation is issued."""
    at, old = first_stage_leaf(memory, root, sid, addr)
    new = (old & ~_ADDR) | (new_page & _ADDR)
    memory.write_u64(at, new)
    return SeededPte(at, old, new)


def restore_pte(memory: GuestMemory, seeded: SeededPte) -> None:
    memory.write_u64(seeded.address, seeded.old)
