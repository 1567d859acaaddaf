"""The model's first-stage walk over exactly the entries one of QEMU's walks read.

svmval's QEMU traces every first-stage entry a walk reads, as read, before the
walk sets A/D (`vtd_fs_walk_entry`, host_setup/qemu_build/patches/0003-*). That
is the guest's tables as they were at that moment, so the reference model can
walk them again and must arrive where QEMU did: the same output page, page
size and leaf, or the same fault. The walk's root (FSPTPTR) is the table the
first entry was read from; the PASID entry that gave it is judged elsewhere
(at pause points, against guest RAM).

Also: what a change to a first-stage entry means for a translation cached
from it (patch 0003's `vtd_iotlb_hit_source` names the first changed level).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from harness.trace.events import FsWalkEntry
from harness.viommu import FaultReason, GuestMemory
from harness.viommu.faults import WalkFault
from harness.viommu.first_stage import ADDR_MASK_4K, FS_P, FS_PS, FS_RW, FS_US, FS_XD, FsParams, fs_walk
from harness.viommu.memory import MemoryAccessError

# The bits of a first-stage entry that decide a translation (patch 0003's
# VTD_FS_MEANING_MASK): P, R/W, U/S, PS, the address, XD. A and D are set by
# walks (and by the CPU, for a process's own tables); the ignored bits are software's.
MEANING = FS_P | FS_RW | FS_US | FS_PS | ADDR_MASK_4K | FS_XD


class _WalkedEntries(GuestMemory):
    """Guest memory holding only the entries one walk read: anything else the model
    reads is an access QEMU's walk did not make."""

    def __init__(self, walk: Sequence[FsWalkEntry]) -> None:
        super().__init__(0)
        self.flat = None
        self._entries = {e.addr: e.entry for e in walk}

    def read_u64(self, gpa: int) -> int:
        try:
            return self._entries[gpa]
        except KeyError:
            raise MemoryAccessError(gpa, 8, "was not read by QEMU's walk") from None


@dataclass(frozen=True)
class ModelWalk:
    """The model's answer for one of QEMU's walks: a page, or a fault."""

    page_size: int = 0
    leaf: int = 0
    fault: FaultReason | None = None
    where: str = ""  # for a fault: the level


@functools.lru_cache(maxsize=4096)
def _params(root: int, flpm: int, haw: int) -> FsParams:
    return FsParams.make(root, flpm=flpm, haw=haw, nxe=True)


def model_walk(walk: Sequence[FsWalkEntry], *, write: bool = False, haw: int = 48) -> ModelWalk:
    """Walk the entries QEMU read with the model (4- or 5-level, as QEMU's walk began)."""
    if not walk:
        raise ValueError("an empty walk")
    top = walk[0]
    # NXE is the PASID entry's, which the record lacks. With NXE=0, XD (bit 63) is a
    # reserved bit, and a process's page tables (SVA) set it on every data page; QEMU
    # ignores XD and NXE (docs/VTD_FACTS.md §10.4) and no walk here is for an
    # execute request, so XD is read as NXE=1 reads it: honoured for execute only.
    params = _params(top.addr & ~0xFFF, 1 if top.level == 5 else 0, haw)
    try:
        r = fs_walk(_WalkedEntries(walk), params, top.iova, write=write, update_ad=False)
    except WalkFault as exc:
        return ModelWalk(fault=exc.reason, where=f"level {exc.level}")
    return ModelWalk(page_size=r.page_size, leaf=r.leaf_pte)


def fill_mismatch(walk: Sequence[FsWalkEntry], pte: int, size: int | None, *, haw: int = 48) -> str | None:
    """Why the model disagrees with a fill QEMU made from `walk` (leaf `pte`, page `size`,
    None when the trace gave none), or None when it agrees."""
    m = model_walk(walk, haw=haw)
    if m.fault is not None:
        return f"the model faults it ({m.fault.name} {int(m.fault):#x} at {m.where}), QEMU filled pte {pte:#x}"
    if (m.leaf ^ pte) & MEANING:
        return f"the model's leaf is {m.leaf:#x}, QEMU filled pte {pte:#x}"
    if walk[-1].entry != pte:
        return f"QEMU filled pte {pte:#x} but its walk's last entry read {walk[-1].entry:#x}"
    if size is not None and size != m.page_size:
        return f"the model gives a {m.page_size:#x}-byte page, QEMU cached {size:#x}"
    return None


def change_kind(was: int, now: int) -> str | None:
    """What a change of a first-stage entry does to a translation cached from it: None
    when it only grants more (software need not invalidate that: a cached, narrower
    right only costs a fault and a re-walk), else why the cached one is stale."""
    if not now & FS_P:
        return "no longer present"
    if (was ^ now) & ADDR_MASK_4K:
        return f"now points to {now & ADDR_MASK_4K:#x} (was {was & ADDR_MASK_4K:#x})"
    if (was ^ now) & FS_PS:
        return "changed page size"
    lost = [name for bit, name in ((FS_RW, "write"), (FS_US, "user")) if was & bit and not now & bit]
    if now & FS_XD and not was & FS_XD:
        lost.append("execute")
    if lost:
        return "lost " + "/".join(lost) + " permission"
    return None
