"""Register file: offsets, access semantics, GCMD/GSTS handshake, fault recording/events."""

from __future__ import annotations

import pytest

from harness.viommu import Fault, FaultOutcome, FaultReason, GuestMemory, Reg, VtdModel
from harness.viommu.caches import ContextCacheEntry
from harness.viommu.faults import RequestType
from harness.viommu.registers import EventKind, Fsts, Gcmd, Gsts

FR = FaultReason


@pytest.fixture
def m() -> VtdModel:
    return VtdModel(GuestMemory(1 << 20))


def test_identity_registers(m: VtdModel) -> None:
    assert m.read_reg(Reg.VER) == 0x10
    assert m.read_reg(Reg.CAP, 8) == m.cap.encode()
    assert m.read_reg(Reg.ECAP, 8) == m.ecap.encode()
    assert m.read_reg(Reg.CAP + 4) == m.cap.encode() >> 32
    m.write_reg(Reg.CAP, 0, 8)  # read-only
    assert m.read_reg(Reg.CAP, 8) == m.cap.encode()


def test_reset_values(m: VtdModel) -> None:
    assert m.read_reg(Reg.FECTL) == 1 << 31  # IM set at reset
    assert m.read_reg(Reg.IECTL) == 1 << 31
    assert m.read_reg(Reg.PECTL) == 1 << 31
    assert m.read_reg(Reg.GSTS) == 0


def test_gcmd_is_write_only_and_srtp_latches(m: VtdModel) -> None:
    m.write_reg(Reg.RTADDR, 0x12_3000 | 0x3FF | (1 << 10), 8)
    # Bits 9:0 are reserved; TTM (11:10) and the address stick.
    assert m.read_reg(Reg.RTADDR, 8) == 0x12_3000 | (1 << 10)
    assert m.rta == 0  # not latched until SRTP
    m.write_reg(Reg.GCMD, Gcmd.SRTP)
    assert m.read_reg(Reg.GCMD) == 0
    assert m.read_reg(Reg.GSTS) & Gsts.RTPS
    assert m.rta == 0x12_3000 and m.ttm == 1


def test_te_follows_command(m: VtdModel) -> None:
    m.write_reg(Reg.GCMD, Gcmd.TE)
    assert m.read_reg(Reg.GSTS) & Gsts.TES and m.te
    m.write_reg(Reg.GCMD, 0)
    assert not m.read_reg(Reg.GSTS) & Gsts.TES and not m.te


def test_persistent_bits_must_be_kept(m: VtdModel) -> None:
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.IRE)
    assert m.read_reg(Reg.GSTS) & (Gsts.TES | Gsts.IRES) == Gsts.TES | Gsts.IRES
    m.write_reg(Reg.GCMD, Gcmd.TE | Gcmd.IRE | Gcmd.SIRTP)
    assert m.read_reg(Reg.GSTS) & Gsts.IRTPS
    m.write_reg(Reg.GCMD, Gcmd.TE)  # IRE dropped -> interrupt remapping disabled
    assert not m.read_reg(Reg.GSTS) & Gsts.IRES


def test_wbf_ignored_without_rwbf(m: VtdModel) -> None:
    m.write_reg(Reg.GCMD, Gcmd.WBF)
    assert m.read_reg(Reg.GSTS) & Gsts.WBFS == 0


def test_half_writes_to_64bit_register(m: VtdModel) -> None:
    m.write_reg(Reg.IQA, 0x5000_0000, 4)
    m.write_reg(Reg.IQA + 4, 0x1, 4)
    assert m.read_reg(Reg.IQA, 8) == 0x1_5000_0000
    assert m.read_reg(Reg.IQA + 4) == 1


def test_unknown_offset_reads_zero(m: VtdModel) -> None:
    m.write_reg(0x300, 0xFFFF_FFFF)
    assert m.read_reg(0x300) == 0


def test_bad_access_size_rejected(m: VtdModel) -> None:
    with pytest.raises(ValueError):
        m.read_reg(0x2, 4)
    with pytest.raises(ValueError):
        m.write_reg(0x0, 0, 2)


def _fault(sid: int = 0x10, fr: FR = FR.FS_ENTRY_NOT_PRESENT, pasid: int | None = 5) -> Fault:
    return Fault(sid=sid, addr=0x1234_5678, fr=fr, pasid=pasid,
                 request_type=RequestType.WRITE, priv=True, exe=False)


def test_fault_record_layout(m: VtdModel) -> None:
    m.write_reg(Reg.FEADDR, 0xFEE0_0000)
    m.write_reg(Reg.FEDATA, 0x41)
    m.write_reg(Reg.FECTL, 0)  # unmask
    assert m.regs.record_fault(_fault()) is FaultOutcome.RECORDED
    fsts = m.read_reg(Reg.FSTS)
    assert fsts & Fsts.PPF and (fsts >> 8) & 0xFF == 0
    base = m.cap.fro * 16
    lo, hi = m.read_reg(base, 8), m.read_reg(base + 8, 8)
    assert lo == 0x1234_5000
    assert hi & 0xFFFF == 0x10  # SID
    assert (hi >> 32) & 0xFF == FR.FS_ENTRY_NOT_PRESENT  # FR
    assert (hi >> 31) & 1 == 1  # PP
    assert (hi >> 40) & 0xFFFFF == 5  # PV
    assert (hi >> 29) & 1 == 1  # PRIV
    assert (hi >> 62) & 1 == 0  # T1 = 0: write
    assert hi >> 63 == 1  # F
    assert m.regs.msi_log[-1].kind is EventKind.FAULT
    assert m.regs.msi_log[-1].address == 0xFEE0_0000 and m.regs.msi_log[-1].data == 0x41
    assert m.faults() == [_fault().__class__.decode(_fault().encode())]


def test_fault_compression_and_overflow(m: VtdModel) -> None:
    assert m.regs.record_fault(_fault(sid=1)) is FaultOutcome.RECORDED
    assert m.regs.record_fault(_fault(sid=1, fr=FR.SM_WRITE_DENIED)) is FaultOutcome.COMPRESSED
    # One record (NFR=0): a second source overflows.
    assert m.regs.record_fault(_fault(sid=2)) is FaultOutcome.OVERFLOW
    assert m.read_reg(Reg.FSTS) & Fsts.PFO
    assert m.regs.record_fault(_fault(sid=3)) is FaultOutcome.DROPPED
    # Clear F (RW1C) then PFO: recording resumes.
    hi = m.cap.fro * 16 + 8
    m.write_reg(hi + 4, 1 << 31)
    assert not m.read_reg(Reg.FSTS) & Fsts.PPF
    m.write_reg(Reg.FSTS, Fsts.PFO)
    assert m.read_reg(Reg.FSTS) & Fsts.PFO == 0
    assert m.regs.record_fault(_fault(sid=3)) is FaultOutcome.RECORDED


def test_multiple_records_and_fri() -> None:
    m = VtdModel(GuestMemory(1 << 20), nfr=4)
    for sid in (1, 2, 3):
        assert m.regs.record_fault(_fault(sid=sid)) is FaultOutcome.RECORDED
    assert [f.sid for f in m.faults()] == [1, 2, 3]
    assert (m.read_reg(Reg.FSTS) >> 8) & 0xFF == 0
    # Clearing record 0 keeps PPF (others pending).
    m.write_reg(m.cap.fro * 16 + 12, 1 << 31)
    assert m.read_reg(Reg.FSTS) & Fsts.PPF
    assert [f.sid for f in m.faults()] == [2, 3]


def test_masked_fault_event_pends_until_unmasked(m: VtdModel) -> None:
    m.regs.record_fault(_fault())
    assert m.read_reg(Reg.FECTL) == (1 << 31) | (1 << 30)  # IM, IP
    assert m.regs.msi_log == []
    m.write_reg(Reg.FECTL, 0)
    assert len(m.regs.msi_log) == 1
    assert m.read_reg(Reg.FECTL) & (1 << 30) == 0


def test_no_second_event_while_status_pending(m: VtdModel) -> None:
    m.write_reg(Reg.FECTL, 0)
    m.regs.set_fault_status(Fsts.IQE)
    assert len(m.regs.msi_log) == 1
    m.regs.record_fault(_fault())
    assert len(m.regs.msi_log) == 1  # IQE already pending: no new event


def test_fsts_w1c_and_ro_bits(m: VtdModel) -> None:
    m.regs.set_fault_status(Fsts.IQE)
    m.regs.record_fault(_fault())
    m.write_reg(Reg.FSTS, 0xFFFF_FFFF)
    fsts = m.read_reg(Reg.FSTS)
    assert not fsts & Fsts.IQE
    assert fsts & Fsts.PPF  # RO: only clearing FRCD.F clears it


def test_ccmd_register_invalidation(m: VtdModel) -> None:
    m.caches.context[0x18] = ContextCacheEntry(0x18, did=None, entry=None, fault=FaultReason.CONTEXT_NOT_PRESENT,
                                               fpd=False, scalable=False)  # a negative entry
    m.write_reg(Reg.CCMD, (1 << 63) | (3 << 61) | (0x18 << 16), 8)
    v = m.read_reg(Reg.CCMD, 8)
    assert v >> 63 == 0  # ICC cleared on completion
    assert (v >> 59) & 3 == 3  # CAIG = device
    assert 0x18 not in m.caches.context


def test_iotlb_register_invalidation(m: VtdModel) -> None:
    iva = m.ecap.iro * 16
    m.write_reg(iva, 0x1000 | 19, 8)  # AM 19 > MAMV 18
    m.write_reg(iva + 8, (1 << 63) | (3 << 60) | (5 << 32), 8)
    v = m.read_reg(iva + 8, 8)
    assert v >> 63 == 0 and (v >> 57) & 3 == 0  # failed: IAIG 0
    m.write_reg(iva + 8, (1 << 63) | (1 << 60), 8)
    assert (m.read_reg(iva + 8, 8) >> 57) & 3 == 1


def test_register_invalidation_ignored_with_qi(m: VtdModel) -> None:
    m.write_reg(Reg.IQA, 0x8000, 8)
    m.write_reg(Reg.GCMD, Gcmd.QIE)
    assert m.read_reg(Reg.GSTS) & Gsts.QIES
    m.write_reg(Reg.CCMD, (1 << 63) | (1 << 61), 8)
    assert (m.read_reg(Reg.CCMD, 8) >> 59) & 3 == 0


def test_prq_registers_absent_without_prs() -> None:
    m = VtdModel(GuestMemory(1 << 20), prs=False)
    m.write_reg(Reg.PQA, 0x5000, 8)
    assert m.read_reg(Reg.PQA, 8) == 0
    assert m.read_reg(Reg.PECTL) == 0
