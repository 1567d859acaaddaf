"""The model against QEMU's own VT-d emulation (an independent implementation), over
qtest: same tables, same register writes, then QEMU's edu device DMAs and the model
translates; data moved, A/D bits and fault records must agree."""

from __future__ import annotations

import pytest
import rig

from harness.qemu.qtest import EDU_BUF, QtestMachine
from harness.viommu import FaultReason, GuestMemory, TableBuilder, VtdModel

pytestmark = pytest.mark.qemu  # each test drives a QEMU process over qtest (no guest)



def test_legacy_second_stage_agrees_with_qemu() -> None:
    with QtestMachine(rig.CM) as q:
        sid = q.edu_sid
        mem = GuestMemory(rig.RAM)
        b = TableBuilder(mem, scalable=False)
        ss = b.ss_tables(4)
        b.set_legacy_context(sid, slptptr=ss.root, aw=2, did=1)
        ss.map(rig.IOVA_SRC, rig.SRC_HPA)
        ss.map(rig.IOVA_DST, rig.DST_HPA)
        ss.map(rig.IOVA_RO, rig.DST_HPA, w=False)
        model = VtdModel(mem, scalable_mode=False, flts=False)
        rig.program(q, model, b, scalable=False)
        rig.compare_dma(q, model, sid)
        rig.compare_fault(q, model, sid, rig.IOVA_UNMAPPED, False, FaultReason.READ_DENIED)
        rig.compare_fault(q, model, sid, rig.IOVA_RO, True, FaultReason.WRITE_DENIED)


def test_scalable_first_stage_agrees_with_qemu() -> None:
    with QtestMachine(rig.FLTS) as q:
        sid = q.edu_sid
        mem, b, fs = rig.first_stage_rig(sid)
        leaf_src = fs.map(rig.IOVA_SRC, rig.SRC_HPA)
        leaf_dst = fs.map(rig.IOVA_DST, rig.DST_HPA)
        fs.map(rig.IOVA_RO, rig.DST_HPA, writable=False)
        model = VtdModel(mem)
        rig.program(q, model, b, scalable=True)
        rig.compare_dma(q, model, sid)
        # A/D: QEMU and the model set the same bits in the leaf entries.
        for leaf in (leaf_src, leaf_dst):
            qemu_pte = int.from_bytes(q.read(leaf, 8), "little")
            assert qemu_pte & 0x60 == mem.read_u64(leaf) & 0x60, (hex(qemu_pte), hex(mem.read_u64(leaf)))
        rig.compare_fault(q, model, sid, rig.IOVA_UNMAPPED, False, FaultReason.FS_ENTRY_NOT_PRESENT)
        rig.compare_fault(q, model, sid, rig.IOVA_RO, True, FaultReason.SM_WRITE_DENIED)


def test_missing_invalidation_is_stale_in_both_until_the_covering_one() -> None:
    from harness.viommu.invalidation import piotlb_desc, wait_desc

    with QtestMachine(rig.FLTS) as q:
        sid = q.edu_sid
        mem, b, fs = rig.first_stage_rig(sid)
        fs.map(rig.IOVA_SRC, rig.SRC_HPA)
        leaf = fs.map(rig.IOVA_DST, rig.DST_HPA)
        model = VtdModel(mem)
        rig.program(q, model, b, scalable=True)
        for unit in (q.reg_write, model.write_reg):  # 256-bit queue, QIE
            unit(0x88, 0, 8)
            unit(0x90, rig.IQ_BASE | 1 << 11, 8)
            unit(0x18, (1 << 31) | (1 << 26), 4)
        rig.compare_dma(q, model, sid)  # both now cache rig.IOVA_DST -> rig.DST_HPA
        # The guest retargets the page and "forgets" to invalidate.
        new = (mem.read_u64(leaf) & ~0xFFFFFFFFF000) | rig.OTHER_HPA
        mem.write_u64(leaf, new)
        q.write(leaf, new.to_bytes(8, "little"))
        assert model.is_stale(sid, rig.IOVA_DST, write=True)
        q.write(rig.OTHER_HPA, bytes(4096))
        q.write(rig.DST_HPA, bytes(4096))
        q.edu_dma(EDU_BUF, rig.IOVA_DST, 4096, to_ram=True)
        # QEMU used its stale translation: the data went to the OLD page.
        assert q.read(rig.DST_HPA, 4096) == rig.PATTERN and q.read(rig.OTHER_HPA, 4096) == bytes(4096)
        # The covering invalidation, then a wait with a status write: both agree again.
        tail = rig.submit(q, model, mem, 0, piotlb_desc(3, did=1, pasid=0, addr=rig.IOVA_DST),
                       wait_desc(sw=1, status_data=0x600D, status_addr=rig.STATUS))
        assert q.reg_read(0x80, 8) == model.read_reg(0x80, 8) == tail << 5  # IQH caught up
        assert int.from_bytes(q.read(rig.STATUS, 4), "little") == mem.read_u32(rig.STATUS) == 0x600D
        assert not model.is_stale(sid, rig.IOVA_DST, write=True)
        q.edu_dma(EDU_BUF, rig.IOVA_DST, 4096, to_ram=True)
        assert q.read(rig.OTHER_HPA, 4096) == rig.PATTERN
        assert model.translate(sid, rig.IOVA_DST, write=True).address == rig.OTHER_HPA


def test_divergence_sm_fault_recorded_with_pp_for_requests_without_pasid() -> None:
    """QEMU 10.0 records PP=1, PV=RID_PASID for a request without PASID; the spec (and
    the model) record PP=0. If this starts failing, QEMU fixed it: drop the divergence."""
    from harness.viommu.divergences import BY_ID

    assert "sm-fault-pp-rid-pasid" in BY_ID
    with QtestMachine(rig.FLTS) as q:
        sid = q.edu_sid
        mem, b, fs = rig.first_stage_rig(sid)
        fs.map(rig.IOVA_SRC, rig.SRC_HPA)
        model = VtdModel(mem)
        rig.program(q, model, b, scalable=True)
        q.edu_dma(rig.IOVA_UNMAPPED, EDU_BUF, 4096, to_ram=False)
        hi = q.reg_read(rig.FRCD + 8, 8)
        qemu_pp = hi >> 31 & 1
        model.translate(sid, rig.IOVA_UNMAPPED)
        spec_pp = model.faults()[0].pp
    assert (qemu_pp, spec_pp) == (1, 0), f"QEMU PP={qemu_pp}: has QEMU fixed it? model PP={spec_pp}"


def test_divergence_iqercd_reads_zero_after_an_invalid_descriptor() -> None:
    from harness.viommu.divergences import BY_ID

    assert "iqercd-zero" in BY_ID
    bad = (0x6 | 0 << 4, 0, 0, 0)  # PASID-based IOTLB with reserved granularity G=00
    with QtestMachine(rig.FLTS) as q:
        mem = GuestMemory(rig.RAM)
        model = VtdModel(mem)
        for unit in (q.reg_write, model.write_reg):
            unit(0x88, 0, 8)
            unit(0x90, rig.IQ_BASE | 1 << 11, 8)
            unit(0x18, 1 << 26, 4)
        rig.submit(q, model, mem, 0, bad)
        assert q.reg_read(rig.FSTS, 4) & 0x10 and model.read_reg(rig.FSTS, 4) & 0x10  # IQE in both
        assert q.reg_read(0x80, 8) == model.read_reg(0x80, 8) == 0  # IQH stays on it in both
        assert q.reg_read(0xB0, 8) == 0, "QEMU now reports IQERCD: drop the divergence"
        assert model.read_reg(0xB0, 8) & 0xF == 4  # IQEI 4: reserved-field violation
