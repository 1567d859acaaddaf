"""First-stage, second-stage (scalable codes) and nested walks, per fault reason and A/D rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from harness.viommu import FaultReason, GuestMemory, Pgtt, Translation, VtdModel
from harness.viommu.first_stage import FS_A, FS_D, FS_PS, FS_XD, FsParams, fs_walk
from harness.viommu.second_stage import SS_A, SS_D, SS_TM

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

FR = FaultReason
SID = 0x0018
PASID = 0x42


# ------------------------------------------------------------------------------ first stage
@pytest.fixture
def fsr(sm: Rig) -> Rig:
    sm.extra["fs"] = sm.fs_pasid(sre=1, ere=1)
    sm.extra["fs_nx"] = sm.fs_pasid(pasid=2, sre=1, ere=1, nxe=1, smep=1, wpe=1)
    sm.enable()
    return sm


def _w(r: Rig, addr: int, **kw: Any) -> Translation:
    return r.model.walk(SID, addr, pasid=kw.pop("pasid", PASID), **kw)


def test_fs_page_sizes(fsr: Rig) -> None:
    fs = fsr.extra["fs"]
    fs.map(0x1000, 0x20_0000)
    fs.map(0x40_0000, 0x60_0000, 1 << 21)
    fs.map(0x8000_0000, 0x4000_0000, 1 << 30)
    assert _w(fsr, 0x1FFF).address == 0x20_0FFF
    t = _w(fsr, 0x40_0000 + 0x12345)
    assert (t.address, t.page_size, t.level) == (0x60_0000 + 0x12345, 1 << 21, 2)
    t = _w(fsr, 0x8000_0000 + 0x123_4567)
    assert (t.address, t.page_size, t.level) == (0x4000_0000 + 0x123_4567, 1 << 30, 3)


def test_fs_1g_needs_fs1gp(rig_factory: RigFactory) -> None:
    r = rig_factory(True, fs1gp=False)
    r.fs_pasid().map(0x8000_0000, 0x4000_0000, 1 << 30)
    r.enable()
    assert r.model.translate(SID, 0x8000_0000, pasid=PASID).fault is FR.FS_ENTRY_RESERVED


def test_fs_not_canonical(fsr: Rig) -> None:
    assert _w(fsr, 1 << 47).fault is FR.SM_NOT_CANONICAL
    assert _w(fsr, 0xFFFF_8000_0000_0000).fault is FR.FS_ENTRY_NOT_PRESENT


def test_fs_high_half_canonical_address(fsr: Rig) -> None:
    fsr.extra["fs"].map(0xFFFF_8000_0000_0000, 0x20_0000)
    assert _w(fsr, 0xFFFF_8000_0000_0010).address == 0x20_0010


def test_fs_not_present_each_level(fsr: Rig) -> None:
    fs = fsr.extra["fs"]
    fs.map(0x1000, 0x20_0000)
    for level in (4, 3, 2, 1):
        ea = fs.entry_address(0x1000, level, create=False)
        old = fsr.mem.read_u64(ea)
        fsr.b.write_u64(ea, old & ~1)
        t = _w(fsr, 0x1000)
        assert t.fault is FR.FS_ENTRY_NOT_PRESENT and t.level == level
        fsr.b.write_u64(ea, old)


def test_fs_access_errors(fsr: Rig) -> None:
    fs = fsr.extra["fs"]
    fs.set_entry(0x1000, 3, (1 << 40) | 7)
    assert _w(fsr, 0x1000).fault is FR.FS_ENTRY_ACCESS
    m = fsr.model
    p = FsParams.make(1 << 40)
    with pytest.raises(Exception) as ei:
        fs_walk(m.memory, p, 0)
    assert getattr(ei.value, "reason", None) is FR.FS_ROOT_ACCESS


@pytest.mark.parametrize(
    ("level", "bits"),
    [(4, FS_PS), (1, 1 << 50), (2, FS_PS | (1 << 13)), (3, FS_PS | (1 << 20)), (1, FS_XD)],
)
def test_fs_reserved(fsr: Rig, level: int, bits: int) -> None:
    fs = fsr.extra["fs"]
    fs.map(0x4000_0000, 0x20_0000)
    ea = fs.entry_address(0x4000_0000, level, create=False)
    v = fsr.mem.read_u64(ea)
    if bits & FS_PS and level in (2, 3):
        v = (0x4000_0000 if level == 3 else 0x20_0000) | 0x7
    fsr.b.write_u64(ea, v | bits)
    t = _w(fsr, 0x4000_0000)  # XD without NXE is reserved too
    assert t.fault is FR.FS_ENTRY_RESERVED and t.level == level


def test_fs_user_supervisor(fsr: Rig) -> None:
    fs = fsr.extra["fs"]
    fs.map(0x1000, 0x20_0000, user=False)
    assert _w(fsr, 0x1000).fault is FR.SM_USER_DENIED
    assert _w(fsr, 0x1000, privileged=True).ok


def test_fs_write_permission_and_wpe(fsr: Rig) -> None:
    fsr.extra["fs"].map(0x1000, 0x20_0000, writable=False)
    fsr.extra["fs_nx"].map(0x1000, 0x20_0000, writable=False)
    assert _w(fsr, 0x1000, write=True).fault is FR.SM_WRITE_DENIED
    assert _w(fsr, 0x1000, write=True, privileged=True).ok  # WPE=0: supervisor may write
    assert _w(fsr, 0x1000, pasid=2, write=True, privileged=True).fault is FR.SM_WRITE_DENIED


def test_fs_execute_xd_and_smep(fsr: Rig) -> None:
    fs = fsr.extra["fs_nx"]
    fs.map(0x1000, 0x20_0000, xd=True)
    fs.map(0x2000, 0x21_0000)
    assert _w(fsr, 0x1000, pasid=2, execute=True).fault is FR.SM_EXECUTE_DENIED
    assert _w(fsr, 0x1000, pasid=2).ok
    assert _w(fsr, 0x2000, pasid=2, execute=True).ok
    # SMEP: supervisor execute of a user page.
    assert _w(fsr, 0x2000, pasid=2, execute=True, privileged=True).fault is FR.SM_EXECUTE_DENIED


def test_fs_accessed_and_dirty(fsr: Rig) -> None:
    fs = fsr.extra["fs"]
    leaf = fs.map(0x1000, 0x20_0000)
    upper = [fs.entry_address(0x1000, lvl, create=False) for lvl in (4, 3, 2)]
    assert fsr.model.translate(SID, 0x1000, pasid=PASID).ok
    assert all(fsr.mem.read_u64(a) & FS_A for a in [*upper, leaf])
    assert not fsr.mem.read_u64(leaf) & FS_D
    # A read never sets D; a write does (and the cached read entry cannot serve it).
    assert fsr.model.translate(SID, 0x1000, pasid=PASID, write=True).source == "walk"
    assert fsr.mem.read_u64(leaf) & FS_D
    assert fsr.model.translate(SID, 0x1000, pasid=PASID, write=True).source == "iotlb"


def test_fs_no_ad_on_fault(fsr: Rig) -> None:
    leaf = fsr.extra["fs"].map(0x1000, 0x20_0000, writable=False)
    fsr.model.translate(SID, 0x1000, pasid=PASID, write=True)
    assert not fsr.mem.read_u64(leaf) & (FS_A | FS_D)


def test_fs_ad_update_failure_on_read_only_memory(rig_factory: RigFactory) -> None:
    r = rig_factory(True)
    r.fs_pasid().map(0x1000, 0x20_0000)
    ro = GuestMemory(bytes(r.mem.read(0, r.mem.size)))
    m = VtdModel(ro)
    m.enable(r.b.root)
    assert m.translate(SID, 0x1000, pasid=PASID).fault is FR.FS_AD_UPDATE_FAILED


def test_fs_output_in_interrupt_range(fsr: Rig) -> None:
    fsr.extra["fs"].map(0x1000, 0xFEE0_0000)
    assert fsr.model.translate(SID, 0x1000, pasid=PASID).fault is FR.SM_INTERRUPT_RANGE


# ------------------------------------------------------------------------------ second stage
@pytest.fixture
def ssr(sm: Rig) -> Rig:
    sm.extra["ss"] = sm.ss_pasid(slee=1, ere=1)
    sm.extra["ss_ad"] = sm.ss_pasid(pasid=2, slade=1)
    sm.enable()
    return sm


def test_ss_sm_translation(ssr: Rig) -> None:
    ssr.extra["ss"].map(0x4000_0000, 0x20_0000, 1 << 21)
    t = ssr.model.translate(SID, 0x4000_1234, pasid=PASID, write=True)
    assert t.ok and t.address == 0x20_1234 and t.pgtt is Pgtt.SECOND_STAGE


def test_ss_sm_fault_codes(ssr: Rig) -> None:
    ss = ssr.extra["ss"]
    ss.map(0x1000, 0x20_0000, w=False)
    ss.map(0x2000, 0x21_0000, r=False)
    ss.map(0x3000, 0x22_0000, x=True)
    assert _w(ssr, 0x5000).fault is FR.SS_SM_ENTRY_NOT_PRESENT
    assert _w(ssr, 0x1000, write=True).fault is FR.SM_WRITE_DENIED
    assert _w(ssr, 0x2000).fault is FR.SM_READ_DENIED
    assert _w(ssr, 0x1000, execute=True).fault is FR.SM_EXECUTE_DENIED
    assert _w(ssr, 0x3000, execute=True).ok
    assert _w(ssr, 1 << 48).fault is FR.SM_BEYOND_HW_MAX
    ea = ss.map(0x6000, 0x23_0000)
    ssr.b.write_u64(ea, ssr.mem.read_u64(ea) | SS_TM)
    assert _w(ssr, 0x6000).fault is FR.SS_SM_ENTRY_RESERVED
    ss.set_entry(0x8000_0000, 3, (1 << 40) | 3)
    assert _w(ssr, 0x8000_0000).fault is FR.SS_SM_ENTRY_ACCESS


def test_ss_sm_invalid_slptptr(sm: Rig) -> None:
    from harness.viommu import PasidEntry
    sm.b.set_sm_context(SID)
    sm.b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=2, did=1, aw=2, slptptr=1 << 40))
    sm.enable()
    assert sm.model.translate(SID, 0, pasid=PASID).fault is FR.SS_SM_INVALID_SLPTPTR


def test_ss_ad_with_ssade(ssr: Rig) -> None:
    leaf = ssr.extra["ss_ad"].map(0x1000, 0x20_0000)
    plain = ssr.extra["ss"].map(0x1000, 0x20_0000)
    ssr.model.translate(SID, 0x1000, pasid=2)
    assert ssr.mem.read_u64(leaf) & (SS_A | SS_D) == SS_A
    ssr.model.translate(SID, 0x1000, pasid=2, write=True)
    assert ssr.mem.read_u64(leaf) & SS_D
    ssr.model.translate(SID, 0x1000, pasid=PASID, write=True)
    assert ssr.mem.read_u64(plain) & (SS_A | SS_D) == 0  # SSADE=0: untouched


def test_ssade_reserved_without_ssads(rig_factory: RigFactory) -> None:
    r = rig_factory(True, ssads=False)
    r.ss_pasid(slade=1)
    r.enable()
    assert r.model.translate(SID, 0, pasid=PASID).fault is FR.SM_PASID_ENTRY_RESERVED


# ------------------------------------------------------------------------------ nested
@pytest.fixture
def nr(sm: Rig) -> Rig:
    fs, ss = sm.nested_pasid()
    sm.extra.update(fs=fs, ss=ss)
    sm.enable()
    return sm


def test_nested_translation(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x7000_0000_0000, 0x1_0000_0000, 1 << 21)  # GVA -> GPA, 2M
    ss.map(0x1_0000_0000, 0x20_0000, 1 << 21)  # GPA -> HPA, 2M
    t = nr.model.translate(SID, 0x7000_0001_2345, pasid=PASID, write=True)
    assert t.ok and t.address == 0x21_2345 and t.pgtt is Pgtt.NESTED
    assert t.page_size == 1 << 21


def test_nested_page_size_is_the_smaller(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x4000_0000, 0x8000_0000, 1 << 30)
    ss.map(0x8000_0000 + 0x5000, 0x30_0000)
    t = nr.model.translate(SID, 0x4000_5010, pasid=PASID)
    assert t.address == 0x30_0010 and t.page_size == 4096


def test_nested_fs_tables_go_through_ss(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x1000, 0x9000_0000)
    ss.map(0x9000_0000, 0x20_0000)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).ok
    # Unmap the FS root's GPA from the second stage: the walk cannot read it.
    ss.unmap(fs.root)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).fault is FR.SS_SM_ENTRY_NOT_PRESENT
    ss.map(fs.root, fs.root_hpa, w=True, r=False)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).fault is FR.FS_NESTED_ROOT_READ_DENIED


def test_nested_entry_read_denied(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x1000, 0x9000_0000)
    ss.map(0x9000_0000, 0x20_0000)
    l3 = nr.mem.read_u64(fs.entry_address(0x1000, 4, create=False)) & ~0xFFF & ((1 << 52) - 1)
    ss.map(l3, l3 - fs.gpa_offset, r=False, w=True)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).fault is FR.FS_NESTED_ENTRY_READ_DENIED


def test_nested_ad_write_denied(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x1000, 0x9000_0000)
    ss.map(0x9000_0000, 0x20_0000)
    ss.map(fs.root, fs.root_hpa, r=True, w=False)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).fault is FR.FS_NESTED_AD_WRITE_DENIED
    # Once A is already set no write is needed.
    assert nr.model.walk(SID, 0x1000, pasid=PASID, update_ad=False).ok


def test_nested_table_beyond_ss_width(sm: Rig) -> None:
    from harness.viommu import PasidEntry
    ss = sm.b.ss_tables(3)  # 39-bit second stage
    fs = sm.b.fs_tables(4, ss=ss, gpa_offset=0x1000_0000)
    sm.b.set_sm_context(SID)
    sm.b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.NESTED, did=1, aw=1,
                                                slptptr=ss.root, flptptr=fs.root))
    sm.enable()
    fs.map(0x1000, 1 << 40)  # the final GPA beyond: a general SS fault, not 0x74
    assert sm.model.walk(SID, 0x1000, pasid=PASID).fault is FR.SM_BEYOND_HW_MAX
    va = 1 << 39  # another PML4 slot
    fs.set_entry(va, 4, (1 << 40) | 7)  # next-table GPA beyond the 39-bit SS input
    assert sm.model.walk(SID, va, pasid=PASID).fault is FR.FS_NESTED_BEYOND_MGAW


def test_nested_final_ss_faults(nr: Rig) -> None:
    fs, ss = nr.extra["fs"], nr.extra["ss"]
    fs.map(0x1000, 0x9000_0000)
    assert nr.model.walk(SID, 0x1000, pasid=PASID).fault is FR.SS_SM_ENTRY_NOT_PRESENT
    ss.map(0x9000_0000, 0x20_0000, w=False)
    assert nr.model.walk(SID, 0x1000, pasid=PASID, write=True).fault is FR.SM_WRITE_DENIED
    fs.map(0x2000, 0x9000_1000, writable=False)
    assert nr.model.walk(SID, 0x2000, pasid=PASID, write=True).fault is FR.SM_WRITE_DENIED
