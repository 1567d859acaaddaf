"""Legacy mode (RTADDR.TTM=00): root/context lookup and second-stage walk, per fault reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.viommu import FaultOutcome, FaultReason, Reg
from harness.viommu.second_stage import SS_PS, SS_TM

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

FR = FaultReason
SID = 0x0018


@pytest.fixture
def rig(legacy: Rig) -> Rig:
    ss = legacy.b.ss_tables(4)
    legacy.b.set_legacy_context(SID, slptptr=ss.root, aw=2, did=3)
    legacy.extra["ss"] = ss
    legacy.enable()
    return legacy


def test_translate_4k_2m_1g(rig: Rig) -> None:
    ss = rig.extra["ss"]
    ss.map(0x1000, 0x20_0000)
    ss.map(0x4000_0000 + 0x20_0000, 0x60_0000, 1 << 21)
    ss.map(0x80_0000_0000, 0x4000_0000, 1 << 30)
    t = rig.model.translate(SID, 0x1234)
    assert (t.ok, t.address, t.page_size, t.did, t.level) == (True, 0x20_0234, 4096, 3, 1)
    t = rig.model.translate(SID, 0x4000_0000 + 0x20_0000 + 0x1_2345)
    assert (t.address, t.page_size, t.level) == (0x60_0000 + 0x1_2345, 1 << 21, 2)
    t = rig.model.translate(SID, 0x80_0000_0000 + 0x123_4567, write=True)
    assert (t.address, t.page_size, t.level) == (0x4000_0000 + 0x123_4567, 1 << 30, 3)


def test_translation_disabled_is_untranslated(legacy: Rig) -> None:
    t = legacy.model.translate(SID, 0xABC_D000)
    assert t.ok and t.address == 0xABC_D000 and t.source == "disabled"


def test_root_not_present(rig: Rig) -> None:
    t = rig.model.translate(0x0100, 0)  # bus 1 has no root entry
    assert t.fault is FR.ROOT_NOT_PRESENT and t.record is FaultOutcome.RECORDED


def test_root_access_error(rig: Rig) -> None:
    rig.model.write_reg(Reg.RTADDR, 1 << 40, 8)
    rig.model.write_reg(Reg.GCMD, (1 << 31) | (1 << 30))
    assert rig.model.translate(SID, 0).fault is FR.ROOT_ACCESS


def test_root_reserved(rig: Rig) -> None:
    addr = rig.b.root + 0 * 16
    rig.b.write_u64(addr + 8, 1)  # bits 127:64 reserved
    assert rig.model.translate(SID, 0).fault is FR.ROOT_RESERVED


def test_context_access_error(rig: Rig) -> None:
    rig.b.write_u64(rig.b.root, (1 << 40) | 1)
    assert rig.model.translate(SID, 0).fault is FR.CONTEXT_ACCESS


def test_context_not_present(rig: Rig) -> None:
    assert rig.model.translate(0x0019, 0).fault is FR.CONTEXT_NOT_PRESENT


def test_context_reserved(rig: Rig) -> None:
    ea = rig.b.context_entry_address(SID)
    rig.b.write_u64(ea, rig.mem.read_u64(ea) | (1 << 4))
    assert rig.model.translate(SID, 0).fault is FR.CONTEXT_RESERVED


@pytest.mark.parametrize(("aw", "tt"), [(3, 0), (0, 0), (2, 3)])
def test_context_invalid(rig: Rig, aw: int, tt: int) -> None:
    rig.b.set_legacy_context(SID, slptptr=rig.extra["ss"].root, aw=aw, tt=tt)
    assert rig.model.translate(SID, 0).fault is FR.CONTEXT_INVALID


def test_tt_needs_capability(rig_factory: RigFactory) -> None:
    r = rig_factory(False, device_iotlb=False, pt=False)
    r.b.set_legacy_context(SID, aw=2, tt=1)
    r.b.set_legacy_context(0x20, aw=2, tt=2)
    r.enable()
    assert r.model.translate(SID, 0).fault is FR.CONTEXT_INVALID
    assert r.model.translate(0x20, 0).fault is FR.CONTEXT_INVALID


def test_address_beyond_agaw(rig_factory: RigFactory) -> None:
    r = rig_factory(False)
    ss = r.b.ss_tables(3)
    r.b.set_legacy_context(SID, slptptr=ss.root, aw=1)
    r.enable()
    assert r.model.translate(SID, 1 << 39).fault is FR.ADDRESS_BEYOND_MGAW


def test_write_and_read_denied(rig: Rig) -> None:
    ss = rig.extra["ss"]
    ss.map(0x1000, 0x20_0000, r=True, w=False)
    ss.map(0x2000, 0x21_0000, r=False, w=True)
    assert rig.model.translate(SID, 0x1000, write=True).fault is FR.WRITE_DENIED
    assert rig.model.translate(0x20, 0).fault is FR.CONTEXT_NOT_PRESENT
    m = rig.model
    assert m.walk(SID, 0x2000).fault is FR.READ_DENIED
    assert m.walk(SID, 0x2000, write=True).ok
    # Not present (R=W=0) denies the access in legacy mode: 0x6 / 0x5.
    assert m.walk(SID, 0x5000).fault is FR.READ_DENIED
    assert m.walk(SID, 0x5000, write=True).fault is FR.WRITE_DENIED


def test_ss_entry_access_error(rig: Rig) -> None:
    rig.b.set_legacy_context(SID, slptptr=1 << 40, aw=2)
    assert rig.model.translate(SID, 0).fault is FR.SS_ENTRY_ACCESS
    ss = rig.extra["ss"]
    rig.b.set_legacy_context(SID, slptptr=ss.root, aw=2)
    ss.set_entry(0x9000, 2, (1 << 40) | 3)
    assert rig.model.walk(SID, 0x9000).fault is FR.SS_ENTRY_ACCESS


@pytest.mark.parametrize("bad", [SS_TM, 1 << 50])
def test_ss_reserved(rig: Rig, bad: int) -> None:
    ss = rig.extra["ss"]
    ea = ss.map(0x1000, 0x20_0000)
    rig.b.write_u64(ea, rig.mem.read_u64(ea) | bad)
    assert rig.model.translate(SID, 0x1000).fault is FR.SS_ENTRY_RESERVED


def test_ss_ps_in_pml4e_reserved(rig: Rig) -> None:
    ss = rig.extra["ss"]
    ss.set_entry(0, 4, 0x20_0000 | 3 | SS_PS)
    assert rig.model.translate(SID, 0).fault is FR.SS_ENTRY_RESERVED


def test_ss_superpage_low_bits_reserved(rig: Rig) -> None:
    ss = rig.extra["ss"]
    ss.set_entry(0x20_0000, 2, 0x40_0000 | 0x1000 | 3 | SS_PS)
    assert rig.model.translate(SID, 0x20_0000).fault is FR.SS_ENTRY_RESERVED


def test_output_in_interrupt_range(rig: Rig) -> None:
    rig.extra["ss"].map(0x1000, 0xFEE0_0000)
    assert rig.model.translate(SID, 0x1000).fault is FR.INTERRUPT_RANGE


def test_interrupt_write_without_pasid_is_not_dma(rig: Rig) -> None:
    t = rig.model.translate(SID, 0xFEE0_1000, write=True)
    assert not t.ok and t.fault is None and t.source == "interrupt"


def test_pass_through(rig: Rig) -> None:
    rig.b.set_legacy_context(SID, aw=2, tt=2, did=9)
    t = rig.model.translate(SID, 0x1234_5678, write=True)
    assert t.ok and t.address == 0x1234_5678 and t.did == 9


def test_request_with_pasid_in_legacy_mode(rig: Rig) -> None:
    assert rig.model.translate(SID, 0, pasid=1).fault is FR.SM_TTM_LEGACY_PASID


def test_fpd_suppresses_qualified_faults_only(rig: Rig) -> None:
    rig.b.set_legacy_context(SID, slptptr=rig.extra["ss"].root, aw=2, fpd=1)
    t = rig.model.translate(SID, 0x7000)
    assert t.fault is FR.READ_DENIED and t.record is FaultOutcome.SUPPRESSED
    assert rig.model.faults() == []
    # Not-present context with FPD=1: qualified, suppressed too.
    rig.b.set_legacy_context(0x30, p=0, fpd=1)
    assert rig.model.translate(0x30, 0).record is FaultOutcome.SUPPRESSED
    # Root not present is non-qualified: always recorded.
    t = rig.model.translate(0x0500, 0)
    assert t.record is FaultOutcome.RECORDED
