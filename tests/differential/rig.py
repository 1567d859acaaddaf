"""The qtest rig shared by the differential tests: one set of tables written to QEMU's
guest RAM and to the model's memory, the same register writes to both, and readers for
QEMU's fault recording registers."""

from __future__ import annotations

import os

import pytest

from harness.qemu.qtest import EDU_BUF, QtestMachine
from harness.viommu import FaultReason, FsTables, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel

RAM = 512 << 20

# intel-iommu settings by canonical key: harness/qemu/probe.py spells them as the QEMU
# under test does (10.x x-scalable-mode/x-flts, 11.1 scalable-mode/fsts).
CM: dict[str, bool | int] = {"caching_mode": True}
LEGACY: dict[str, bool | int] = {**CM, "pt": True}
FLTS: dict[str, bool | int] = {**CM, "scalable_mode": True, "flts": True}
SMSS: dict[str, bool | int] = {**CM, "scalable_mode": True}
FSTS, FRCD = 0x34, 0x220  # QEMU: FRO = 0x22, one fault recording register
PATTERN = os.urandom(4096)
SRC_HPA, DST_HPA = 0x0100_0000, 0x0200_0000
IOVA_SRC, IOVA_DST, IOVA_RO, IOVA_UNMAPPED = 0x7F00_1000, 0x7F00_2000, 0x7F00_3000, 0x7F00_9000


def program(q: QtestMachine, model: VtdModel, b: TableBuilder, scalable: bool) -> None:
    for page, data in b.written_pages():
        q.write(page, bytes(data))
    q.write(SRC_HPA, PATTERN)
    q.reg_write(0x20, b.root | (int(scalable) << 10), 8)  # RTADDR (+TTM=01 scalable)
    q.reg_write(0x18, 1 << 30, 4)  # GCMD.SRTP
    q.reg_write(0x18, 1 << 31, 4)  # GCMD.TE
    assert q.reg_read(0x1C, 4) >> 31 & 1, "QEMU did not enable translation"
    model.enable(b.root, scalable=scalable)


def fault_record(q: QtestMachine) -> tuple[int, int] | None:
    if not q.reg_read(FSTS, 4) & 0x2:  # PPF
        return None
    hi = q.reg_read(FRCD + 8, 8)
    return (hi >> 32) & 0xFF, hi & 0xFFFF  # FR, SID


def clear_faults(q: QtestMachine) -> None:
    q.reg_write(FRCD + 12, 1 << 31, 4)  # FRCD.F is RW1C
    q.reg_write(FSTS, 0x7F, 4)


def first_stage_rig(sid: int) -> tuple[GuestMemory, TableBuilder, FsTables]:
    """Scalable mode, RID_PASID 0 with first-stage tables (how Linux maps DMA under x-flts)."""
    mem = GuestMemory(RAM)
    b = TableBuilder(mem, scalable=True)
    fs = b.fs_tables(4)
    b.set_sm_context(sid)
    b.set_pasid_entry(sid, 0, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs.root, aw=2))
    return mem, b, fs


def compare_dma(q: QtestMachine, model: VtdModel, sid: int) -> None:
    q.edu_dma(IOVA_SRC, EDU_BUF, 4096, to_ram=False)
    q.edu_dma(EDU_BUF, IOVA_DST, 4096, to_ram=True)
    src = model.translate(sid, IOVA_SRC)
    dst = model.translate(sid, IOVA_DST, write=True)
    assert (src.ok, src.address, dst.ok, dst.address) == (True, SRC_HPA, True, DST_HPA)
    # QEMU moved the data exactly where the model says the translations lead.
    assert dst.address is not None
    assert q.read(dst.address, 4096) == PATTERN
    assert fault_record(q) is None


def compare_fault(q: QtestMachine, model: VtdModel, sid: int, iova: int, write: bool,
                   expect: FaultReason) -> None:
    clear_faults(q)
    if write:
        q.edu_dma(EDU_BUF, iova, 4096, to_ram=True)
    else:
        q.edu_dma(iova, EDU_BUF, 4096, to_ram=False)
    t = model.translate(sid, iova, write=write)
    rec = fault_record(q)
    assert rec is not None, "QEMU recorded no fault"
    assert t.fault is expect and rec == (int(expect), sid), (t.fault, rec)


IQ_BASE, STATUS = 0x0300_0000, 0x0300_8000
OTHER_HPA = 0x0400_0000


def submit(q: QtestMachine, model: VtdModel, mem: GuestMemory, tail: int, *descs: tuple[int, int, int, int]) -> int:
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


def print_past_capture(config: pytest.Config, line: str) -> None:
    """A summary line that shows even with pytest's output capture on."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print("\n" + line)
