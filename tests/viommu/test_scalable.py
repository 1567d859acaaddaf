"""Scalable mode: SM root/context, PASID directory/table, PGTT dispatch, per fault reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.viommu import FaultOutcome, FaultReason, GuestMemory, PasidEntry, Pgtt, Reg, VtdModel
from harness.viommu.registers import Gcmd

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

FR = FaultReason
SID = 0x0018
PASID = 0x42


def test_fs_translation_with_pasid(sm: Rig) -> None:
    fs = sm.fs_pasid()
    fs.map(0x7F00_0000_0000, 0x30_0000)
    sm.enable()
    t = sm.model.translate(SID, 0x7F00_0000_0ABC, pasid=PASID)
    assert t.ok and t.address == 0x30_0ABC and t.pgtt is Pgtt.FIRST_STAGE and t.did == 7
    assert t.pasid == PASID and t.level == 1


def test_request_without_pasid_uses_rid_pasid(sm: Rig) -> None:
    fs = sm.fs_pasid(pasid=0)
    fs.map(0x1000, 0x40_0000)
    sm.enable()
    t = sm.model.translate(SID, 0x1008)
    assert t.ok and t.address == 0x40_0008 and t.pasid == 0


def test_sm_root_faults(sm: Rig) -> None:
    sm.fs_pasid()
    sm.enable()
    assert sm.model.translate(0x0100, 0, pasid=PASID).fault is FR.SM_ROOT_NOT_PRESENT
    # devfn >= 0x80 uses the upper half, which is not present.
    assert sm.model.translate(0x0080, 0, pasid=PASID).fault is FR.SM_ROOT_NOT_PRESENT
    # CM=1 caches the not-present result: later checks walk memory directly.
    sm.b.write_u64(sm.b.root + 8, 1 | (1 << 5))  # UP with a reserved bit
    assert sm.model.walk(0x0080, 0, pasid=PASID).fault is FR.SM_ROOT_RESERVED
    sm.b.write_u64(sm.b.root + 8, (1 << 40) | 1)
    assert sm.model.walk(0x0080, 0, pasid=PASID).fault is FR.SM_CONTEXT_ACCESS
    sm.model.write_reg(Reg.RTADDR, (1 << 40) | (1 << 10), 8)
    sm.model.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.SRTP)
    assert sm.model.translate(SID, 0, pasid=PASID).fault is FR.SM_ROOT_ACCESS


def test_upper_context_table(sm: Rig) -> None:
    fs = sm.fs_pasid(sid=0x00A8)
    fs.map(0x2000, 0x50_0000)
    sm.enable()
    assert sm.model.translate(0x00A8, 0x2010, pasid=PASID).address == 0x50_0010


def test_sm_context_faults(sm: Rig) -> None:
    sm.fs_pasid()
    sm.enable()
    assert sm.model.translate(0x0019, 0, pasid=PASID).fault is FR.SM_CONTEXT_NOT_PRESENT
    ea = sm.b.context_entry_address(SID)
    sm.b.write_u64(ea + 16, 1)  # qw2 reserved
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_CONTEXT_RESERVED
    sm.b.write_u64(ea + 16, 0)
    sm.b.write_u64(ea + 8, 5)  # RID_PASID without ECAP.RPS: reserved
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_CONTEXT_RESERVED


def test_context_invalid_programming(rig_factory: RigFactory) -> None:
    r = rig_factory(True, device_iotlb=False, prs=False)
    r.b.set_sm_context(SID, dte=1)
    r.b.set_sm_context(0x20, pre=1)
    r.enable()
    assert r.model.translate(SID, 0, pasid=1).fault is FR.SM_CONTEXT_INVALID
    assert r.model.translate(0x20, 0, pasid=1).fault is FR.SM_CONTEXT_INVALID


def test_paside_and_pdts(sm: Rig) -> None:
    sm.b.set_sm_context(SID, paside=0, pdts=0)
    sm.b.set_sm_context(0x20, paside=1, pdts=0)  # 128 directory entries: PASID < 8192
    sm.enable()
    assert sm.model.translate(SID, 0, pasid=1).fault is FR.SM_PASIDE_CLEAR
    assert sm.model.translate(0x20, 0, pasid=8192).fault is FR.SM_PASID_TOO_LARGE
    assert sm.model.translate(0x20, 0, pasid=8191).fault is FR.SM_PASID_DIR_NOT_PRESENT


def test_pasid_directory_faults(sm: Rig) -> None:
    sm.fs_pasid()
    sm.enable()
    pdir = sm.b._pasid_dirs[SID]
    sm.b.write_u64(pdir + 8, 0x5000 | 1 | (1 << 4))  # dir entry for PASIDs 64..127
    assert sm.model.walk(SID, 0, pasid=64).fault is FR.SM_PASID_DIR_RESERVED
    sm.b.write_u64(pdir + 8, (1 << 40) | 1)
    assert sm.model.walk(SID, 0, pasid=64).fault is FR.SM_PASID_ENTRY_ACCESS
    ea = sm.b.context_entry_address(SID)
    q0 = sm.mem.read_u64(ea)
    sm.b.write_u64(ea, (q0 & 0xFFF) | (1 << 40))
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_PASID_DIR_ACCESS


def test_pasid_entry_faults(sm: Rig) -> None:
    sm.fs_pasid()
    sm.enable()
    assert sm.model.walk(SID, 0, pasid=PASID + 1).fault is FR.SM_PASID_ENTRY_NOT_PRESENT
    ea = sm.b.pasid_entry_address(SID, PASID)
    sm.b.write_u64(ea + 24, 1)  # qw3 reserved
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_PASID_ENTRY_RESERVED
    sm.b.write_u64(ea + 24, 0)
    q0 = sm.mem.read_u64(ea)
    sm.b.write_u64(ea, q0 & ~(7 << 6))  # PGTT 000 reserved
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_PASID_ENTRY_INVALID
    sm.b.write_u64(ea, q0 | (7 << 6))
    assert sm.model.walk(SID, 0, pasid=PASID).fault is FR.SM_PASID_ENTRY_INVALID


def test_pgtt_requires_capability(rig_factory: RigFactory) -> None:
    r = rig_factory(True, nested=False, slts=False)
    r.nested_pasid()
    r.ss_pasid(pasid=1)
    r.enable()
    assert r.model.translate(SID, 0, pasid=PASID).fault is FR.SM_PASID_ENTRY_INVALID
    assert r.model.translate(SID, 0, pasid=1).fault is FR.SM_PASID_ENTRY_INVALID


def test_five_level_needs_fs5lp(rig_factory: RigFactory) -> None:
    r = rig_factory(True)
    r.fs_pasid(levels=5).map(0x1000, 0x20_0000)
    r.enable()
    assert r.model.translate(SID, 0x1000, pasid=PASID).fault is FR.SM_PASID_ENTRY_INVALID
    r5 = rig_factory(True, fs5lp=True, aw_bits=57)
    fs = r5.fs_pasid(levels=5)
    va = 0x00FF_0000_0000_1000  # needs 57-bit canonical addressing
    fs.map(va, 0x20_0000)
    r5.enable()
    t = r5.model.translate(SID, va | 0x10, pasid=PASID)
    assert t.ok and t.address == 0x20_0010


def test_ere_and_sre(sm: Rig) -> None:
    sm.fs_pasid().map(0x1000, 0x20_0000)
    sm.fs_pasid(pasid=2, sre=1, ere=1).map(0x1000, 0x20_0000)
    sm.enable()
    m = sm.model
    assert m.translate(SID, 0x1000, pasid=PASID, execute=True).fault is FR.SM_ERE_CLEAR
    assert m.translate(SID, 0x1000, pasid=PASID, privileged=True).fault is FR.SM_SRE_CLEAR
    assert m.translate(SID, 0x1000, pasid=2, execute=True, privileged=True).ok


def test_pass_through_pgtt(sm: Rig) -> None:
    sm.b.set_sm_context(SID)
    sm.b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.PASS_THROUGH, did=1, aw=2))
    sm.enable()
    t = sm.model.translate(SID, 0x1234_5678, pasid=PASID, write=True)
    assert t.ok and t.address == 0x1234_5678 and t.pgtt is Pgtt.PASS_THROUGH
    assert sm.model.translate(SID, 0xFEE0_0000, pasid=PASID).fault is FR.SM_INTERRUPT_RANGE
    assert sm.model.translate(SID, 1 << 48, pasid=PASID).fault is FR.SM_BEYOND_HW_MAX


def test_sm_fpd_from_pasid_entry(sm: Rig) -> None:
    sm.fs_pasid(fpd=1)
    sm.enable()
    t = sm.model.translate(SID, 0x9000, pasid=PASID)
    assert t.fault is FR.FS_ENTRY_NOT_PRESENT and t.record is FaultOutcome.SUPPRESSED
    # A not-present PASID entry with FPD=1 suppresses its own 0x59.
    sm.b.set_pasid_entry(SID, 3, PasidEntry(p=0, fpd=1))
    assert sm.model.translate(SID, 0, pasid=3).record is FaultOutcome.SUPPRESSED
    # Access errors are never suppressed.
    sm.b.set_sm_context(0x30, fpd=1, pasid_dir=1 << 40)
    assert sm.model.translate(0x30, 0, pasid=3).record is FaultOutcome.RECORDED


def test_ttm_reserved_and_abort() -> None:
    m = VtdModel(GuestMemory(1 << 20))
    m.write_reg(Reg.RTADDR, 0x1000 | (2 << 10), 8)
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.SRTP)
    assert m.translate(0, 0).fault is FR.SM_RTA_INVALID
    m.write_reg(Reg.RTADDR, 0x1000 | (3 << 10), 8)
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.SRTP)
    assert m.translate(0, 0).fault is FR.SM_RTA_INVALID  # ADMS=0
    ma = VtdModel(GuestMemory(1 << 20), adms=True)
    ma.write_reg(Reg.RTADDR, 0x1000 | (3 << 10), 8)
    ma.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.SRTP)
    t = ma.translate(0, 0)
    assert not t.ok and t.fault is None and t.source == "abort"


def test_mode_latched_at_srtp_not_at_rtaddr_write(sm: Rig) -> None:
    sm.fs_pasid().map(0x1000, 0x20_0000)
    sm.enable()
    sm.model.write_reg(Reg.RTADDR, sm.b.root, 8)  # TTM=00 written but not latched
    assert sm.model.translate(SID, 0x1000, pasid=PASID).ok
    sm.model.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.SRTP)
    assert sm.model.translate(SID, 0x1000, pasid=PASID).fault is FR.SM_TTM_LEGACY_PASID


@pytest.mark.parametrize("pgtt", [Pgtt.SECOND_STAGE, Pgtt.NESTED])
def test_request_without_pasid_for_ss_and_nested(sm: Rig, pgtt: Pgtt) -> None:
    if pgtt == Pgtt.SECOND_STAGE:
        sm.ss_pasid(pasid=0).map(0x3000, 0x70_0000)
    else:
        fs, ss = sm.nested_pasid(pasid=0)
        fs.map(0x3000, 0x9000_0000)
        ss.map(0x9000_0000, 0x70_0000)
    sm.enable()
    t = sm.model.translate(SID, 0x3004, write=True)
    assert t.ok and t.address == 0x70_0004 and t.pgtt is pgtt
