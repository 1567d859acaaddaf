"""Nested translation (PGTT=011): first stage over second stage (VTD_FACTS §5).

Every first-stage table address (FSPTPTR and each next-table pointer) is a GPA
translated through the second stage before it is read; the FS output GPA is
then translated through the second stage with the request's own access. A
second-stage failure while translating an FS structure is reported with the
nested codes: 0x74 (beyond the SS input width), 0x75 (SS denies reading the FS
root), 0x76 (SS denies reading an FS entry), 0x77 (SS denies the FS A/D write);
structural SS faults (0x78-0x7B) keep their own codes.
"""

from __future__ import annotations

from typing import NamedTuple

from .faults import FaultReason, WalkFault
from .first_stage import XLATE_AD, XLATE_ROOT, FsParams, FsResult, fs_walk
from .memory import GuestMemory
from .second_stage import SsParams, SsResult, ss_walk

FR = FaultReason


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
    write: bool = False,
    execute: bool = False,
    priv: bool = False,
    update_ad: bool = True,
) -> NestedResult:
    """Translate ``addr`` (an IOVA/GVA) to an HPA through FS then SS."""

    def xlate(gpa: int, purpose: int) -> int:
        try:
            return ss_walk(mem, ssp, gpa, purpose == XLATE_AD, False, update_ad, True)
        except WalkFault as f:
            raise WalkFault(nested_table_fault(f.reason, purpose), f.level, "nested-ss") from None

    fs = fs_walk(mem, fsp, addr, write, execute, priv, xlate=xlate, update_ad=update_ad)
    ss = ss_walk(mem, ssp, fs.address, write, execute, update_ad=update_ad)
    size = min(fs.page_size, ss.page_size)
    return NestedResult(
        ss.address, size, fs.level, fs.leaf_pte, fs.leaf_addr, fs, ss, fs.dirty and ss.dirty
    )
