"""The model against QEMU's own VT-d emulation (an independent implementation), over
qtest: same tables, same register writes, then QEMU's edu device DMAs and the model
translates; data moved, A/D bits and fault records must agree."""

from __future__ import annotations

import os

from harness.qemu.qtest import EDU_BUF, QtestMachine
from harness.viommu import FaultReason, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel

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
        mem = GuestMemory(RAM)
        b = TableBuilder(mem, scalable=True)
        fs = b.fs_tables(4)
        b.set_sm_context(sid)
        b.set_pasid_entry(sid, 0, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs.root, aw=2))
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
