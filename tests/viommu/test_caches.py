"""Cache rules: what is cached, what each invalidation removes, staleness detection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.viommu import FaultReason, PasidEntry, Pgtt, Reg
from harness.viommu.invalidation import (
    Desc,
    cc_desc,
    devtlb_desc,
    iotlb_desc,
    pc_desc,
    pdevtlb_desc,
    piotlb_desc,
)

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

FR = FaultReason
SID, PASID, DID = 0x0018, 0x42, 7


@pytest.fixture
def fsq(sm: Rig) -> Rig:
    fs = sm.fs_pasid()
    fs.map(0x1000, 0x20_0000)
    fs.map(0x2000, 0x21_0000)
    sm.extra["fs"] = fs
    sm.enable()
    sm.qi_setup()
    for a in (0x1000, 0x2000):
        assert sm.model.translate(SID, a, pasid=PASID).ok
    return sm


def _stale(r: Rig, addr: int, pasid: int | None = PASID, **kw: bool) -> bool:
    return r.model.is_stale(SID, addr, pasid, **kw)


def test_iotlb_hit_after_fill(fsq: Rig) -> None:
    t = fsq.model.translate(SID, 0x1010, pasid=PASID)
    assert t.source == "iotlb" and t.address == 0x20_0010
    st = fsq.model.cache_state()
    assert {(e["did"], e["pasid"], e["iova"], e["pgtt"]) for e in st["iotlb"]} == {
        (DID, PASID, 0x1000, Pgtt.FIRST_STAGE), (DID, PASID, 0x2000, Pgtt.FIRST_STAGE)}
    assert st["context"] == [SID] and st["pasid"] == [(SID, PASID)]


def test_fs_remap_is_stale_until_piotlb_page(fsq: Rig) -> None:
    fsq.extra["fs"].map(0x1000, 0x30_0000)
    assert _stale(fsq, 0x1000) and not _stale(fsq, 0x2000)
    assert fsq.model.translate(SID, 0x1000, pasid=PASID).address == 0x20_0000  # old answer
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x3000))  # wrong page
    assert _stale(fsq, 0x1000)
    fsq.submit(piotlb_desc(3, DID, PASID + 1, addr=0x1000))  # wrong PASID
    assert _stale(fsq, 0x1000)
    fsq.submit(piotlb_desc(3, DID + 1, PASID, addr=0x1000))  # wrong DID
    assert _stale(fsq, 0x1000)
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x1000))
    assert not _stale(fsq, 0x1000)
    assert fsq.model.translate(SID, 0x1000, pasid=PASID).address == 0x30_0000
    assert fsq.model.translate(SID, 0x2000, pasid=PASID).source == "iotlb"  # untouched


def test_piotlb_address_mask_covers_range(fsq: Rig) -> None:
    fsq.extra["fs"].map(0x1000, 0x30_0000)
    fsq.extra["fs"].map(0x2000, 0x31_0000)
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x0, am=2))  # 4 pages from 0
    assert not _stale(fsq, 0x1000) and not _stale(fsq, 0x2000)


def test_piotlb_pasid_selective(fsq: Rig) -> None:
    fsq.extra["fs"].map(0x1000, 0x30_0000)
    fsq.submit(piotlb_desc(2, DID, PASID))
    assert not _stale(fsq, 0x1000)
    assert fsq.model.cache_state()["iotlb"] == []


def test_iotlb_psi_removes_fs_entries_of_domain_regardless_of_address(fsq: Rig) -> None:
    fsq.submit(iotlb_desc(3, did=DID, addr=0x9000_0000))
    assert fsq.model.cache_state()["iotlb"] == []


def test_iotlb_dsi_and_global(fsq: Rig) -> None:
    fsq.submit(iotlb_desc(2, did=DID + 1))
    assert len(fsq.model.cache_state()["iotlb"]) == 2
    fsq.submit(iotlb_desc(2, did=DID))
    assert fsq.model.cache_state()["iotlb"] == []
    fsq.model.translate(SID, 0x1000, pasid=PASID)
    fsq.submit(iotlb_desc(1))
    assert fsq.model.cache_state()["iotlb"] == []


def test_pasid_entry_change_needs_pasid_cache_and_iotlb(fsq: Rig) -> None:
    fs2 = fsq.b.fs_tables(4)
    fs2.map(0x1000, 0x50_0000)
    fsq.b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=DID,
                                                 flptptr=fs2.root))
    assert _stale(fsq, 0x1000)
    fsq.submit(pc_desc(1, DID, PASID))
    assert _stale(fsq, 0x1000)  # the IOTLB still holds the old translation
    fsq.submit(piotlb_desc(2, DID, PASID))
    assert not _stale(fsq, 0x1000)
    assert fsq.model.translate(SID, 0x1000, pasid=PASID).address == 0x50_0000


@pytest.mark.parametrize("desc", [pc_desc(0, DID), pc_desc(3), pc_desc(1, DID, PASID)])
def test_pasid_cache_granularities(fsq: Rig, desc: Desc) -> None:
    fsq.submit(desc)
    assert fsq.model.cache_state()["pasid"] == []


def test_pasid_cache_wrong_domain_keeps_entry(fsq: Rig) -> None:
    fsq.submit(pc_desc(0, DID + 1))
    fsq.submit(pc_desc(1, DID, PASID + 1))
    assert fsq.model.cache_state()["pasid"] == [(SID, PASID)]


def test_pasid_entry_teardown_is_stale_without_invalidation(fsq: Rig) -> None:
    fsq.b.set_pasid_entry(SID, PASID, PasidEntry(p=0, fpd=1))
    assert _stale(fsq, 0x1000)
    fsq.submit(pc_desc(1, DID, PASID), piotlb_desc(2, DID, PASID))
    assert not _stale(fsq, 0x1000)
    t = fsq.model.translate(SID, 0x1000, pasid=PASID)
    assert t.fault is FR.SM_PASID_ENTRY_NOT_PRESENT


def test_context_cache_device_selective_with_function_mask(fsq: Rig) -> None:
    m = fsq.model
    fsq.fs_pasid(sid=0x1F).map(0x1000, 0x20_0000)
    m.translate(0x1F, 0x1000, pasid=PASID)
    fsq.submit(cc_desc(3, sid=0x19, fm=0))  # function 1 only: neither entry
    assert sorted(m.cache_state()["context"]) == [SID, 0x1F]
    fsq.submit(cc_desc(3, sid=0x1A, fm=3))  # mask bits 2:0 -> functions 0..7
    assert m.cache_state()["context"] == []


def test_cm1_caches_not_present_context(sm: Rig) -> None:
    sm.enable()
    sm.qi_setup()
    assert sm.model.translate(SID, 0, pasid=PASID).fault is FR.SM_ROOT_NOT_PRESENT
    sm.fs_pasid().map(0, 0x20_0000)
    assert _stale(sm, 0)  # the negative entry still answers
    sm.submit(cc_desc(3, did=0, sid=SID))
    assert not _stale(sm, 0)
    assert sm.model.translate(SID, 0, pasid=PASID).ok


def test_cm0_never_caches_not_present(rig_factory: RigFactory) -> None:
    r = rig_factory(True, caching_mode=False)
    r.enable()
    assert r.model.translate(SID, 0, pasid=PASID).fault is FR.SM_ROOT_NOT_PRESENT
    r.fs_pasid().map(0, 0x20_0000)
    assert not r.model.is_stale(SID, 0, PASID)
    assert r.model.translate(SID, 0, pasid=PASID).ok


def test_first_stage_not_present_never_cached_even_with_cm(fsq: Rig) -> None:
    assert fsq.model.translate(SID, 0x5000, pasid=PASID).fault is FR.FS_ENTRY_NOT_PRESENT
    fsq.extra["fs"].map(0x5000, 0x40_0000)
    assert not _stale(fsq, 0x5000)  # Linux does not invalidate FS map events (§9.3)


@pytest.fixture
def ssq(sm: Rig) -> Rig:
    ss = sm.ss_pasid()
    ss.map(0x1000, 0x20_0000)
    sm.extra["ss"] = ss
    sm.enable()
    sm.qi_setup()
    assert sm.model.translate(SID, 0x1000, pasid=PASID).ok
    return sm


def test_ss_not_present_cached_with_cm(ssq: Rig) -> None:
    assert ssq.model.translate(SID, 0x5000, pasid=PASID).fault is FR.SS_SM_ENTRY_NOT_PRESENT
    assert any(e["negative"] for e in ssq.model.cache_state()["iotlb"])
    ssq.extra["ss"].map(0x5000, 0x40_0000)
    assert _stale(ssq, 0x5000)
    ssq.submit(iotlb_desc(3, did=DID, addr=0x5000))
    assert not _stale(ssq, 0x5000)


def test_piotlb_page_never_removes_second_stage_entries(ssq: Rig) -> None:
    ssq.extra["ss"].map(0x1000, 0x30_0000)
    ssq.submit(piotlb_desc(3, DID, PASID, addr=0x1000))
    assert _stale(ssq, 0x1000)
    ssq.submit(iotlb_desc(3, did=DID, addr=0x1000))
    assert not _stale(ssq, 0x1000)


def test_iotlb_psi_range_for_second_stage(ssq: Rig) -> None:
    ssq.extra["ss"].map(0x1000, 0x30_0000)
    ssq.submit(iotlb_desc(3, did=DID, addr=0x4000))
    assert _stale(ssq, 0x1000)


def test_permission_downgrade_is_stale(ssq: Rig) -> None:
    ssq.model.translate(SID, 0x1000, pasid=PASID, write=True)
    ssq.extra["ss"].map(0x1000, 0x20_0000, w=False)
    assert _stale(ssq, 0x1000, write=True)
    assert not _stale(ssq, 0x1000)  # reads still get the same answer


def test_write_through_read_cached_fs_entry_rewalks(fsq: Rig) -> None:
    fsq.extra["fs"].map(0x1000, 0x20_0000, writable=False)
    t = fsq.model.translate(SID, 0x1000, pasid=PASID, write=True)
    # The read-filled entry has D clear, so a write cannot be answered from it.
    assert t.fault is FR.SM_WRITE_DENIED and t.source == "walk"


def test_register_based_invalidation_also_works(ssq: Rig) -> None:
    m = ssq.model
    m.write_reg(Reg.GCMD, (1 << 31))  # drop QIE (queue idle) to use registers
    ssq.extra["ss"].map(0x1000, 0x30_0000)
    iva = m.ecap.iro * 16
    m.write_reg(iva, 0x1000, 8)
    m.write_reg(iva + 8, (1 << 63) | (3 << 60) | (DID << 32), 8)
    assert not _stale(ssq, 0x1000)


def test_device_tlb(fsq: Rig) -> None:
    m = fsq.model
    fsq.b.set_sm_context(SID, dte=1)
    fsq.submit(cc_desc(3, sid=SID))
    t = m.translation_request(SID, 0x1000, pasid=PASID)
    assert t.ok and m.device_tlb_lookup(SID, 0x1010, PASID) == 0x20_0010
    fsq.submit(pdevtlb_desc(SID, PASID + 1, addr=0x1000))
    assert m.device_tlb_lookup(SID, 0x1010, PASID) == 0x20_0010
    fsq.submit(pdevtlb_desc(SID, PASID, addr=0x1000))
    assert m.device_tlb_lookup(SID, 0x1010, PASID) is None
    m.translation_request(SID, 0x1000, pasid=PASID)
    fsq.submit(pdevtlb_desc(SID, 0, g=1, s=1, addr=0x7FFF_FFFF_FFFF_F000))
    assert m.device_tlb_lookup(SID, 0x1010, PASID) is None


def test_device_tlb_without_pasid(rig_factory: RigFactory) -> None:
    r = rig_factory(True)
    r.b.set_sm_context(SID, dte=1)
    r.b.set_pasid_entry(SID, 0, PasidEntry(p=1, pgtt=Pgtt.PASS_THROUGH, did=1))
    r.enable()
    r.qi_setup()
    assert r.model.translation_request(SID, 0x4000).ok
    assert r.model.device_tlb_lookup(SID, 0x4000) == 0x4000
    r.submit(devtlb_desc(SID, addr=0x4000, s=1))  # 8 KiB at 0x4000
    assert r.model.device_tlb_lookup(SID, 0x4000) is None


def test_translation_request_needs_dte(fsq: Rig) -> None:
    t = fsq.model.translation_request(SID, 0x1000, pasid=PASID)
    assert t.fault is FR.SM_DTE_CLEAR


def test_esrtps_srtp_flushes_caches(rig_factory: RigFactory) -> None:
    r = rig_factory(True, esrtps=True)
    r.fs_pasid().map(0x1000, 0x20_0000)
    r.enable()
    r.model.translate(SID, 0x1000, pasid=PASID)
    assert r.model.caches.counts()["iotlb"] == 1
    r.model.write_reg(Reg.GCMD, (1 << 31) | (1 << 30))
    assert r.model.caches.counts() == {"context": 0, "pasid": 0, "iotlb": 0, "psc": 0,
                                       "devtlb": 0}


def test_srtp_without_esrtps_keeps_caches(fsq: Rig) -> None:
    fsq.model.write_reg(Reg.GCMD, (1 << 31) | (1 << 30) | (1 << 26))
    assert fsq.model.caches.counts()["iotlb"] == 2


def test_iotlb_capacity_eviction_is_never_stale(rig_factory: RigFactory) -> None:
    r = rig_factory(True, iotlb_capacity=4)
    fs = r.fs_pasid()
    for i in range(10):
        fs.map(0x1000 * (i + 1), 0x20_0000 + 0x1000 * i)
    r.enable()
    for i in range(10):
        assert r.model.translate(SID, 0x1000 * (i + 1), pasid=PASID).ok
    assert r.model.caches.counts()["iotlb"] <= 4


# ------------------------------------------------------------------ paging-structure cache
def test_psc_filled_by_first_stage_walks(fsq: Rig) -> None:
    assert fsq.model.caches.counts()["psc"] == 3  # PML4E, PDPE, PDE shared by both pages


def test_ih1_keeps_paging_structure_cache(fsq: Rig) -> None:
    fs = fsq.extra["fs"]
    pml4e = fs.entry_address(0x1000, 4, create=False)
    fsq.b.write_u64(pml4e, 0)  # tear down the upper level
    assert _stale(fsq, 0x1000)
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x1000, ih=1))  # "only leaves changed"
    # The IOTLB entry is gone but the cached PDE still lets the walk succeed.
    t = fsq.model.translate(SID, 0x1000, pasid=PASID)
    assert t.ok and t.source == "walk" and t.address == 0x20_0000
    assert _stale(fsq, 0x1000)
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x1000, ih=0))
    assert not _stale(fsq, 0x1000)
    assert fsq.model.translate(SID, 0x1000, pasid=PASID).fault is FR.FS_ENTRY_NOT_PRESENT


def test_ih0_psi_drops_only_covering_psc_entries(fsq: Rig) -> None:
    fs = fsq.extra["fs"]
    fs.map(0x4000_0000, 0x40_0000)  # another PDPE/PDE under the same PML4E
    fsq.model.translate(SID, 0x4000_0000, pasid=PASID)
    assert fsq.model.caches.counts()["psc"] == 5
    fsq.submit(piotlb_desc(3, DID, PASID, addr=0x1000))
    # The PML4E (covers both) and the PDPE/PDE over 0x1000 go; the PDPE and PDE of the
    # other 1 GiB slot (0x4000_0000) do not overlap the range and stay.
    assert fsq.model.caches.counts()["psc"] == 2


def test_psc_dropped_by_pasid_selective_and_domain(fsq: Rig) -> None:
    fsq.submit(piotlb_desc(2, DID, PASID))
    assert fsq.model.caches.counts()["psc"] == 0
    fsq.model.translate(SID, 0x1000, pasid=PASID)
    fsq.submit(iotlb_desc(2, did=DID))
    assert fsq.model.caches.counts()["psc"] == 0
