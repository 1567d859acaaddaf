"""The model against QEMU's own VT-d emulation (an independent implementation), over
qtest: same tables, same register writes, then QEMU's edu device DMAs and the model
translates; data moved, A/D bits and fault records must agree."""

from __future__ import annotations

import os

from harness.qemu.qtest import EDU_BUF, QtestMachine
from harness.viommu import FaultReason, FsTables, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel

RAM = 512 << 20
FSTS, FRCD = 0x34, 0x220  # QEMU: FRO = 0x22, one fault recording register
PATTERN = os.urandom(4096)
SRC_HPA, DST_HPA = 0x0100_0000, 0x0200_0000
IOVA_SRC, IOVA_DST, IOVA_RO, IOVA_UNMAPPED = 0x7F00_1000, 0x7F00_2000, 0x7F00_3000, 0x7F00_9000


def _program(q: QtestMachine, model: VtdModel, b: TableBuilder, scalable: bool) -> None:
    for page, data in b.written_pages():
        q.write(page, bytes(data))
    q.write(SRC_HPA, PATTERN)
    q.reg_write(0x20, b.root | (int(scalable) << 10), 8)  # RTADDR (+TTM=01 scalable)
    q.reg_write(0x18, 1 << 30, 4)  # GCMD.SRTP
    q.reg_write(0x18, 1 << 31, 4)  # GCMD.TE
    assert q.reg_read(0x1C, 4) >> 31 & 1, "QEMU did not enable translation"
    model.enable(b.root, scalable=scalable)


def _fault_record(q: QtestMachine) -> tuple[int, int] | None:
    if not q.reg_read(FSTS, 4) & 0x2:  # PPF
        return None
    hi = q.reg_read(FRCD + 8, 8)
    return (hi >> 32) & 0xFF, hi & 0xFFFF  # FR, SID


def _clear_faults(q: QtestMachine) -> None:
    q.reg_write(FRCD + 12, 1 << 31, 4)  # FRCD.F is RW1C
    q.reg_write(FSTS, 0x7F, 4)


def _first_stage_rig(sid: int) -> tuple[GuestMemory, TableBuilder, FsTables]:
    """Scalable mode, RID_PASID 0 with first-stage tables (how Linux maps DMA under x-flts)."""
    mem = GuestMemory(RAM)
    b = TableBuilder(mem, scalable=True)
    fs = b.fs_tables(4)
    b.set_sm_context(sid)
    b.set_pasid_entry(sid, 0, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs.root, aw=2))
    return mem, b, fs


def _compare_dma(q: QtestMachine, model: VtdModel, sid: int) -> None:
    q.edu_dma(IOVA_SRC, EDU_BUF, 4096, to_ram=False)
    q.edu_dma(EDU_BUF, IOVA_DST, 4096, to_ram=True)
    src = model.translate(sid, IOVA_SRC)
    dst = model.translate(sid, IOVA_DST, write=True)
    assert (src.ok, src.address, dst.ok, dst.address) == (True, SRC_HPA, True, DST_HPA)
    # QEMU moved the data exactly where the model says the translations lead.
    assert q.read(dst.address, 4096) == PATTERN
    assert _fault_record(q) is None


def _compare_fault(q: QtestMachine, model: VtdModel, sid: int, iova: int, write: bool,
                   expect: FaultReason) -> None:
    _clear_faults(q)
    if write:
        q.edu_dma(EDU_BUF, iova, 4096, to_ram=True)
    else:
        q.edu_dma(iova, EDU_BUF, 4096, to_ram=False)
    t = model.translate(sid, iova, write=write)
    rec = _fault_record(q)
    assert rec is not None, "QEMU recorded no fault"
    assert t.fault is expect and rec == (int(expect), sid), (t.fault, rec)


def test_legacy_second_stage_agrees_with_qemu() -> None:
    with QtestMachine("caching-mode=on") as q:
        sid = q.edu_sid
        mem = GuestMemory(RAM)
        b = TableBuilder(mem, scalable=False)
        ss = b.ss_tables(4)
        b.set_legacy_context(sid, slptptr=ss.root, aw=2, did=1)
        ss.map(IOVA_SRC, SRC_HPA)
        ss.map(IOVA_DST, DST_HPA)
        ss.map(IOVA_RO, DST_HPA, w=False)
        model = VtdModel(mem, scalable_mode=False, flts=False)
        _program(q, model, b, scalable=False)
        _compare_dma(q, model, sid)
        _compare_fault(q, model, sid, IOVA_UNMAPPED, False, FaultReason.READ_DENIED)
        _compare_fault(q, model, sid, IOVA_RO, True, FaultReason.WRITE_DENIED)


def test_scalable_first_stage_agrees_with_qemu() -> None:
    with QtestMachine("caching-mode=on,x-scalable-mode=on,x-flts=on") as q:
        sid = q.edu_sid
        mem, b, fs = _first_stage_rig(sid)
        leaf_src = fs.map(IOVA_SRC, SRC_HPA)
        leaf_dst = fs.map(IOVA_DST, DST_HPA)
        fs.map(IOVA_RO, DST_HPA, writable=False)
        model = VtdModel(mem)
        _program(q, model, b, scalable=True)
        _compare_dma(q, model, sid)
        # A/D: QEMU and the model set the same bits in the leaf entries.
        for leaf in (leaf_src, leaf_dst):
            qemu_pte = int.from_bytes(q.read(leaf, 8), "little")
            assert qemu_pte & 0x60 == mem.read_u64(leaf) & 0x60, (hex(qemu_pte), hex(mem.read_u64(leaf)))
        _compare_fault(q, model, sid, IOVA_UNMAPPED, False, FaultReason.FS_ENTRY_NOT_PRESENT)
        _compare_fault(q, model, sid, IOVA_RO, True, FaultReason.SM_WRITE_DENIED)


IQ_BASE, STATUS = 0x0300_0000, 0x0300_8000
OTHER_HPA = 0x0400_0000


def _submit(q: QtestMachine, model: VtdModel, mem: GuestMemory, tail: int, *descs: tuple[int, int, int, int]) -> int:
    """Write 256-bit descriptors at the tail in both, then move IQT in both."""
    for d in descs:
        at = IQ_BASE + tail * 32
        raw = b"".join(x.to_bytes(8, "little") for x in d)
        q.write(at, raw)
        mem.write(at, raw)
        tail += 1
    q.reg_write(0x88, tail << 5, 8)
    model.write_reg(0x88, tail << 5, 8)
    return tail


def test_missing_invalidation_is_stale_in_both_until_the_covering_one() -> None:
    from harness.viommu.invalidation import piotlb_desc, wait_desc

    with QtestMachine("caching-mode=on,x-scalable-mode=on,x-flts=on") as q:
        sid = q.edu_sid
        mem, b, fs = _first_stage_rig(sid)
        fs.map(IOVA_SRC, SRC_HPA)
        leaf = fs.map(IOVA_DST, DST_HPA)
        model = VtdModel(mem)
        _program(q, model, b, scalable=True)
        for unit in (q.reg_write, model.write_reg):  # 256-bit queue, QIE
            unit(0x88, 0, 8)
            unit(0x90, IQ_BASE | 1 << 11, 8)
            unit(0x18, (1 << 31) | (1 << 26), 4)
        _compare_dma(q, model, sid)  # both now cache IOVA_DST -> DST_HPA
        # The guest retargets the page and "forgets" to invalidate.
        new = (mem.read_u64(leaf) & ~0xFFFFFFFFF000) | OTHER_HPA
        mem.write_u64(leaf, new)
        q.write(leaf, new.to_bytes(8, "little"))
        assert model.is_stale(sid, IOVA_DST, write=True)
        q.write(OTHER_HPA, bytes(4096))
        q.write(DST_HPA, bytes(4096))
        q.edu_dma(EDU_BUF, IOVA_DST, 4096, to_ram=True)
        # QEMU used its stale translation: the data went to the OLD page.
        assert q.read(DST_HPA, 4096) == PATTERN and q.read(OTHER_HPA, 4096) == bytes(4096)
        # The covering invalidation, then a wait with a status write: both agree again.
        tail = _submit(q, model, mem, 0, piotlb_desc(3, did=1, pasid=0, addr=IOVA_DST),
                       wait_desc(sw=1, status_data=0x600D, status_addr=STATUS))
        assert q.reg_read(0x80, 8) == model.read_reg(0x80, 8) == tail << 5  # IQH caught up
        assert int.from_bytes(q.read(STATUS, 4), "little") == mem.read_u32(STATUS) == 0x600D
        assert not model.is_stale(sid, IOVA_DST, write=True)
        q.edu_dma(EDU_BUF, IOVA_DST, 4096, to_ram=True)
        assert q.read(OTHER_HPA, 4096) == PATTERN
        assert model.translate(sid, IOVA_DST, write=True).address == OTHER_HPA


def test_divergence_sm_fault_recorded_with_pp_for_requests_without_pasid() -> None:
    """QEMU 10.0 records PP=1, PV=RID_PASID for a request without PASID; the spec (and
    the model) record PP=0. If this starts failing, QEMU fixed it: drop the divergence."""
    from harness.viommu.divergences import BY_ID

    assert "sm-fault-pp-rid-pasid" in BY_ID
    with QtestMachine("caching-mode=on,x-scalable-mode=on,x-flts=on") as q:
        sid = q.edu_sid
        mem, b, fs = _first_stage_rig(sid)
        fs.map(IOVA_SRC, SRC_HPA)
        model = VtdModel(mem)
        _program(q, model, b, scalable=True)
        q.edu_dma(IOVA_UNMAPPED, EDU_BUF, 4096, to_ram=False)
        hi = q.reg_read(FRCD + 8, 8)
        qemu_pp = hi >> 31 & 1
        model.translate(sid, IOVA_UNMAPPED)
        spec_pp = model.faults()[0].pp
    assert (qemu_pp, spec_pp) == (1, 0), f"QEMU PP={qemu_pp}: has QEMU fixed it? model PP={spec_pp}"


def test_divergence_iqercd_reads_zero_after_an_invalid_descriptor() -> None:
    from harness.viommu.divergences import BY_ID

    assert "iqercd-zero" in BY_ID
    bad = (0x6 | 0 << 4, 0, 0, 0)  # PASID-based IOTLB with reserved granularity G=00
    with QtestMachine("caching-mode=on,x-scalable-mode=on,x-flts=on") as q:
        mem = GuestMemory(RAM)
        model = VtdModel(mem)
        for unit in (q.reg_write, model.write_reg):
            unit(0x88, 0, 8)
            unit(0x90, IQ_BASE | 1 << 11, 8)
            unit(0x18, 1 << 26, 4)
        _submit(q, model, mem, 0, bad)
        assert q.reg_read(FSTS, 4) & 0x10 and model.read_reg(FSTS, 4) & 0x10  # IQE in both
        assert q.reg_read(0x80, 8) == model.read_reg(0x80, 8) == 0  # IQH stays on it in both
        assert q.reg_read(0xB0, 8) == 0, "QEMU now reports IQERCD: drop the divergence"
        assert model.read_reg(0xB0, 8) & 0xF == 4  # IQEI 4: reserved-field violation
