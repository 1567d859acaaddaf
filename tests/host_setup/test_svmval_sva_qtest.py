"""svmval-sva (docs/TESTDEV.md) in svmval's own QEMU, driven over the qtest protocol.

Nothing runs in the guest (-bios HALT.bin): the test is the guest. It programs PCI config
through ECAM (the extended capabilities live above 0x100), builds VT-d tables with the
model's TableBuilder, copies them into QEMU's RAM and mirrors every register and
descriptor write into the model, so the device's data must land where the model's
translation says, and its page requests must be the descriptors the model would queue.

The QEMU runs TCG without icount: with icount and a halted vCPU virtual time jumps to the
next timer, which would fire the device's 2 s page-request timeout at once. Without it
virtual time is host time, and the test answers page requests well within 2 s.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from harness.qemu.probe import IommuSettings, probe_qemu
from harness.qemu.qtest import QtestError, QtestMachine
from harness.viommu import FaultReason, FsTables, GuestMemory, PasidEntry, Pgtt, TableBuilder, VtdModel
from harness.viommu.descriptors import PageRequest, ResponseCode
from harness.viommu.faults import Fault
from harness.viommu.invalidation import pdevtlb_desc, piotlb_desc, prg_resp_desc, wait_desc

pytestmark = [pytest.mark.slow, pytest.mark.qemu]  # qtest only, but the first run may build QEMU

RAM = 512 << 20
ECAM = 0xB000_0000  # we enable q35's MMCONFIG ourselves: no firmware runs
BAR = 0xE020_0000
DEVFN = 0x40  # addr=0x8 on pcie.0, as the local lab places it
SID = DEVFN
PASID = 5  # QEMU 10.2 tags PASIDs in MemTxAttrs.pid: 8 bits
DID = 1

# BAR0 (docs/TESTDEV.md)
ID, PASID_REG, OP, SRC, DST, LEN, PATTERN, DOORBELL = 0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38
STATUS, ERROR, ERROR_ADDR, RESULT, DEVICE_NS, OP_PAGE_REQUESTS = 0x40, 0x48, 0x50, 0x58, 0x60, 0x68
INTR, ATC_FLUSH, SEED, CNT_RESET = 0x70, 0x78, 0x80, 0x1F8
COUNTERS = ("ats_requests", "atc_hits", "atc_misses", "page_requests", "prg_success", "prg_invalid",
            "prg_failure", "invalidations", "ops", "bytes", "atc_entries")
READ_CRC, COMPARE, WRITE_PATTERN, COPY, FILL = 1, 2, 3, 4, 5
BUSY, DONE, FAILED = 1, 2, 4
E_FAILURE, E_INVALID, E_NO_ACCESS, E_TIMEOUT, E_MISMATCH, E_BAD_OP, E_DMA = 1, 2, 3, 4, 5, 6, 7
PV, PV_PRIV, PV_EXEC = 1 << 31, 1 << 30, 1 << 29

# VT-d registers and guest memory layout
IQH, IQT, IQA, GCMD, PQH, PQT, PQA, PRS, PECTL = 0x80, 0x88, 0x90, 0x18, 0xC0, 0xC8, 0xD0, 0xDC, 0xE0
IQ_BASE, WAIT_STATUS, PRQ_BASE, MSI_ADDR = 0x0300_0000, 0x0300_8000, 0x0310_0000, 0x0320_0000
MSI_DATA = 0x4D53
HPA_A, HPA_B, HPA_C, HPA_D = 0x0400_0000, 0x0401_0000, 0x0402_0000, 0x0403_0000
GVA = 0x7F12_3400_0000  # a user-space-looking range for PASID traffic
GVA_A, GVA_B, GVA_NP = GVA, GVA + 0x10_000, GVA + 0x20_000
IOVA_SRC, IOVA_DST, IOVA_UNMAPPED = 0x7F00_1000, 0x7F00_2000, 0x7F00_9000

DATA = random.Random(0x5356).randbytes(8192)


def _binary() -> str:
    """SVMVAL_SVA_QEMU (an explicit binary, e.g. a scratch build) wins over the pipeline's
    (host_setup.qemu_build, which builds it when missing)."""
    explicit = os.environ.get("SVMVAL_SVA_QEMU")
    if explicit:
        return explicit
    try:
        from host_setup.qemu_build import ensure_svmval_qemu
    except ImportError:
        pytest.skip("no svmval QEMU: host_setup.qemu_build has no ensure_svmval_qemu yet and "
                    "SVMVAL_SVA_QEMU is not set (point it at a qemu-system-x86_64 with svmval-sva)")
    return str(ensure_svmval_qemu())


@pytest.fixture(scope="module")
def qemu() -> str:
    binary = _binary()
    assert probe_qemu(binary).has_device("svmval-sva"), f"{binary} has no svmval-sva device"
    return binary


# intel-iommu with first stage, PASID, device-TLB and page requests: svmval's patched 10.2
# needs svm=on for ECAP.PRS (harness/qemu/probe.py spells the keys for the binary).
SVA_IOMMU: dict[str, bool | int] = {"flts": True, "pasid": True, "device_iotlb": True, "svm": True}


class SvaMachine(QtestMachine):
    """QtestMachine (edu and all) plus svmval-sva at 00:08.0, TCG without icount."""

    def __init__(self, qemu: str, iommu: IommuSettings, device_props: str = "") -> None:
        super().__init__(iommu, memory_mib=RAM >> 20, qemu=qemu)
        i = self.argv.index("-icount")
        del self.argv[i : i + 2]
        self.argv += ["-device", f"svmval-sva,addr=0x8{device_props}"]

    def __enter__(self) -> SvaMachine:
        super().__enter__()
        self.setup_pci()
        return self

    def setup_pci(self) -> None:
        # q35 PCIEXBAR (MCH 0x60): ECAM at ECAM, 256 buses, enabled.
        self.cmd(f"outl {self._cfg(0, 0x64):#x} 0")
        self.cmd(f"outl {self._cfg(0, 0x60):#x} {ECAM | 1:#x}")
        if self.cfg(0, 4) != 0x5356_1234:
            raise QtestError(f"no svmval-sva at devfn {DEVFN:#x}: {self.cfg(0, 4):#x}")
        self.cfg_write(0x10, BAR, 4)
        self.cfg_write(0x04, self.cfg(0x04, 2) | 0x6, 2)  # memory + bus master

    def reset(self, timeout: float = 10) -> None:
        """A system reset through the reset control register (0xcf9); PCI set up again."""
        self.cmd("outb 0xcf9 0x6")
        deadline = time.monotonic() + timeout
        while int(self.cmd(f"inl {self._cfg(DEVFN, 0x10):#x}"), 16) & ~0xF:  # BAR0 cleared
            if time.monotonic() > deadline:
                raise QtestError("the machine did not reset")
        self.setup_pci()

    # config space of svmval-sva through ECAM
    def cfg(self, reg: int, size: int = 4) -> int:
        return int(self.cmd(f"read{'bwl'[size >> 1]} {ECAM + (DEVFN << 12) + reg:#x}"), 16)

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.cmd(f"write{'bwl'[size >> 1]} {ECAM + (DEVFN << 12) + reg:#x} {value:#x}")

    def cap(self, cap_id: int) -> int:
        pos = self.cfg(0x34, 1)
        while pos:
            if self.cfg(pos, 1) == cap_id:
                return pos
            pos = self.cfg(pos + 1, 1)
        raise AssertionError(f"no capability {cap_id:#x}")

    def ext_cap(self, cap_id: int) -> int:
        pos = 0x100
        while pos:
            header = self.cfg(pos)
            if header & 0xFFFF == cap_id:
                return pos
            pos = header >> 20
        raise AssertionError(f"no extended capability {cap_id:#x}")

    def enable_msi(self) -> None:
        msi = self.cap(0x05)
        self.cfg_write(msi + 4, MSI_ADDR)
        self.cfg_write(msi + 8, 0)
        self.cfg_write(msi + 12, MSI_DATA, 2)
        self.cfg_write(msi + 2, self.cfg(msi + 2, 2) | 1, 2)

    def enable_sva(self, *, pri: bool = True) -> None:
        """What Linux does for SVA: PASID (+exec, priv), then PRI with an allocation, then ATS."""
        self.cfg_write(self.ext_cap(0x1B) + 6, 0x7, 2)
        if pri:
            pri_cap = self.ext_cap(0x13)
            self.cfg_write(pri_cap + 0xC, 32)
            self.cfg_write(pri_cap + 4, 1, 2)
        self.cfg_write(self.ext_cap(0x0F) + 6, 0x8000, 2)

    # BAR0
    def reg(self, off: int) -> int:
        return self.readq(BAR + off)

    def set(self, off: int, value: int) -> None:
        self.writeq(BAR + off, value)

    def counters(self) -> dict[str, int]:
        return {name: self.reg(0x100 + 8 * i) for i, name in enumerate(COUNTERS)}

    def start(self, op: int, src: int, length: int, *, dst: int = 0, pattern: int = 0,
              pasid: int = 0) -> None:
        for off, value in ((PASID_REG, pasid), (OP, op), (SRC, src), (DST, dst), (LEN, length),
                           (PATTERN, pattern)):
            self.set(off, value)
        self.set(DOORBELL, 1)

    def wait(self, timeout: float = 10) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while (status := self.reg(STATUS)) & BUSY:
            if time.monotonic() > deadline:
                raise QtestError("svmval-sva op never finished")
        return status, self.reg(ERROR)

    def run(self, op: int, src: int, length: int, **kw: int) -> tuple[int, int]:
        self.start(op, src, length, **kw)
        return self.wait()


def pattern_bytes(seed: int, n: int) -> bytes:
    return bytes((seed + i * 131) & 0xFF for i in range(n))


@dataclass
class Rig:
    """One set of VT-d tables in QEMU and in the model, with QI and the PRQ set up in both."""

    q: SvaMachine
    mem: GuestMemory
    b: TableBuilder
    model: VtdModel
    fs: FsTables | None
    tail: int = 0

    def sync(self) -> None:
        for page, data in self.b.written_pages():
            self.q.write(page, bytes(data))

    def both(self, offset: int, value: int, size: int) -> None:
        self.q.reg_write(offset, value, size)
        self.model.write_reg(offset, value, size)

    def submit(self, *descs: tuple[int, int, int, int]) -> None:
        """256-bit descriptors at the tail in both, a status-writing wait last."""
        status = 0x600D + self.tail
        for d in (*descs, wait_desc(sw=1, status_data=status, status_addr=WAIT_STATUS)):
            raw = b"".join(x.to_bytes(8, "little") for x in d)
            self.q.write(IQ_BASE + self.tail * 32, raw)
            self.mem.write(IQ_BASE + self.tail * 32, raw)
            self.tail += 1
        self.both(IQT, self.tail << 5, 8)
        assert self.q.reg_read(IQH, 8) == self.model.read_reg(IQH, 8) == self.tail << 5
        assert int.from_bytes(self.q.read(WAIT_STATUS, 4), "little") == status

    def program(self, write: Callable[[int, int, int], None], *, prq: bool) -> None:
        """Root table, QI (256-bit descriptors), translation on, and the PRQ if `prq`."""
        write(0x20, self.b.root | 1 << 10, 8)  # RTADDR, TTM=01 scalable
        write(GCMD, 1 << 30, 4)  # SRTP
        write(IQT, 0, 8)
        write(IQA, IQ_BASE | 1 << 11, 8)
        write(GCMD, 1 << 31 | 1 << 26, 4)  # TE + QIE
        if prq:
            write(PQH, 0, 8)
            write(PQT, 0, 8)
            write(PQA, PRQ_BASE, 8)  # one page: 128 descriptors
            write(PECTL, 1 << 31, 4)  # page request event masked: we poll PQT
        assert self.q.reg_read(0x1C, 4) >> 31 & 1, "QEMU did not enable translation"

    def remap(self, gva: int, hpa: int) -> None:
        """Point a PASID page at `hpa` in both memories (no invalidation)."""
        assert self.fs is not None
        self.fs.map(gva, hpa)
        self.sync()

    def next_page_request(self, timeout: float = 5) -> PageRequest:
        deadline = time.monotonic() + timeout
        head = self.q.reg_read(PQH, 8)
        while (tail := self.q.reg_read(PQT, 8)) == head:
            if time.monotonic() > deadline:
                raise QtestError("no page request reached the PRQ")
        req = PageRequest.from_bytes(self.q.read(PRQ_BASE + head, 32))
        self.q.reg_write(PQH, tail, 8)  # consumed, as Linux's prq thread does
        return req


@contextmanager
def sva_rig(qemu: str, *, device_props: str = "", first_stage: bool = True) -> Iterator[Rig]:
    """Scalable mode. first_stage: RID_PASID pass-through (where the MSI lands) and PASID
    with first-stage tables, device-TLB and page requests on; else RID_PASID second-stage."""
    props: dict[str, bool | int] = {"caching_mode": True, "aw_bits": 48, "scalable_mode": True}
    if first_stage:
        props |= SVA_IOMMU
    with SvaMachine(qemu, props, device_props) as q:
        mem = GuestMemory(RAM)
        b = TableBuilder(mem, scalable=True)
        b.set_sm_context(SID, dte=int(first_stage), pre=int(first_stage))
        fs = None
        if first_stage:
            b.set_pasid_entry(SID, 0, PasidEntry(p=1, pgtt=Pgtt.PASS_THROUGH, did=DID))
            fs = b.fs_tables(4)
            b.set_pasid_entry(SID, PASID, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=DID,
                                                     flptptr=fs.root, aw=2))
        else:
            ss = b.ss_tables(4)
            ss.map(IOVA_SRC, HPA_A, w=False)
            ss.map(IOVA_DST, HPA_B)
            ss.map(MSI_ADDR, MSI_ADDR)
            b.set_pasid_entry(SID, 0, PasidEntry(p=1, pgtt=Pgtt.SECOND_STAGE, did=DID,
                                                 slptptr=ss.root, aw=ss.aw))
        rig = Rig(q, mem, b, VtdModel(mem), fs)
        rig.sync()
        rig.program(rig.both, prq=first_stage)
        q.enable_msi()
        yield rig


def msi_seen(q: SvaMachine) -> bool:
    seen = int.from_bytes(q.read(MSI_ADDR, 4), "little") == MSI_DATA
    q.write(MSI_ADDR, bytes(4))
    return seen


# ------------------------------------------------------------------------------------ tests
def test_identity_registers_and_bad_ops(qemu: str) -> None:
    with SvaMachine(qemu, {"caching_mode": True}) as q:  # DMAR stays off: DMA is untranslated
        assert q.reg(ID) == 1 << 32 | 0x5356_4D56
        assert q.readl(BAR + ID + 4) == 1  # register-map version, 32-bit access
        assert q.cfg(0x0A, 2) == 0x00FF  # class
        exp = q.cap(0x10)
        assert q.cfg(exp + 2, 2) >> 4 & 0xF == 0x9  # root-complex integrated endpoint
        assert q.cfg(exp + 0x24) & 1 << 21  # DEVCAP2 End-End TLP Prefix
        pasid_cap = q.cfg(q.ext_cap(0x1B) + 4, 2)
        assert (pasid_cap >> 8 & 0x1F, pasid_cap & 0x6) == (20, 0x6)  # width, exec + priv
        pri = q.ext_cap(0x13)
        assert q.cfg(pri + 8) == 32 and q.cfg(pri + 6, 2) & 0x100  # capacity, stopped
        q.ext_cap(0x0F)
        assert q.reg(SEED) == 0

        q.set(SRC, 0x1122_3344_5566_7788)
        q.writel(BAR + SRC + 4, 0xAABB_CCDD)  # a 32-bit write updates its half
        assert q.reg(SRC) == 0xAABB_CCDD_5566_7788 and q.readl(BAR + SRC) == 0x5566_7788
        q.set(PASID_REG, (1 << 64) - 1)
        assert q.reg(PASID_REG) == PV | PV_PRIV | PV_EXEC | 0xFFFFF
        for ro in (ID, STATUS, ERROR, RESULT, SEED, 0x100):
            before = q.reg(ro)
            q.set(ro, 0x5A5A)
            assert q.reg(ro) == before, hex(ro)
        assert q.reg(0x200) == 0

        q.enable_msi()
        for op, length in ((0, 64), (6, 64), (FILL, 0), (FILL, (64 << 20) + 1)):
            assert q.run(op, 0x0500_0000, length) == (FAILED, E_BAD_OP), (op, length)
            assert msi_seen(q) and q.reg(INTR) == 1
            q.set(INTR, 1)
            assert q.reg(INTR) == 0
        assert q.run(FILL, 0x0500_0000, 20, pattern=0x0807_0605_0403_0201) == (DONE, 0)
        assert q.read(0x0500_0000, 24) == bytes(range(1, 9)) * 2 + bytes(range(1, 5)) + bytes(4)
        assert msi_seen(q)
        assert q.counters()["ops"] == 5 and q.counters()["bytes"] == 20
        q.set(CNT_RESET, 1)
        assert set(q.counters().values()) == {0}


def test_plain_dma_without_pasid_goes_through_the_second_stage(qemu: str) -> None:
    with sva_rig(qemu, first_stage=False) as r:
        q, model = r.q, r.model
        q.write(HPA_A, DATA[:4096])
        src = model.translate(SID, IOVA_SRC)
        dst = model.translate(SID, IOVA_DST, write=True)
        assert (src.address, dst.address) == (HPA_A, HPA_B)
        assert dst.address is not None
        assert q.run(COPY, IOVA_SRC, 4096, dst=IOVA_DST) == (DONE, 0)
        assert q.read(dst.address, 4096) == DATA[:4096]
        assert msi_seen(q)  # the MSI went through the second stage too
        assert q.run(READ_CRC, IOVA_SRC + 100, 1000) == (DONE, 0)
        assert q.reg(RESULT) == zlib.crc32(DATA[100:1100])
        assert q.run(COMPARE, IOVA_SRC, 4096, dst=IOVA_DST) == (DONE, 0) and q.reg(RESULT) == 0
        q.write(HPA_B + 77, bytes([DATA[77] ^ 0xFF]))
        assert q.run(COMPARE, IOVA_SRC, 4096, dst=IOVA_DST) == (FAILED, E_MISMATCH)
        assert (q.reg(RESULT), q.reg(ERROR_ADDR)) == (78, IOVA_SRC + 77)
        assert q.run(WRITE_PATTERN, IOVA_DST, 4096, pattern=9) == (DONE, 0)
        assert q.read(dst.address, 4096) == pattern_bytes(9, 4096)
        # Read-only and unmapped IOVAs: the vIOMMU refuses, the op ends with DMA_ERROR.
        assert model.translate(SID, IOVA_SRC, write=True).fault is not None
        assert q.run(FILL, IOVA_SRC, 8) == (FAILED, E_DMA) and q.reg(ERROR_ADDR) == IOVA_SRC
        assert q.run(READ_CRC, IOVA_UNMAPPED, 8) == (FAILED, E_DMA)
        c = q.counters()
        assert (c["ats_requests"], c["atc_entries"], c["ops"]) == (0, 0, 7)


def test_ats_with_a_pasid_lands_at_the_models_translation(qemu: str) -> None:
    with sva_rig(qemu) as r:
        q, model = r.q, r.model
        assert r.fs is not None
        r.fs.map(GVA_A, HPA_A, writable=False)
        r.fs.map(GVA_A + 0x1000, HPA_C)
        r.fs.map(GVA_B, HPA_B)
        r.fs.map(GVA_B + 0x1000, HPA_D)
        r.sync()
        q.write(HPA_A, DATA[:4096])
        q.write(HPA_C, DATA[4096:])
        # Without PASID/ATS enabled the device may not translate: ATS_NO_ACCESS.
        assert q.run(READ_CRC, GVA_A, 64, pasid=PV | PASID) == (FAILED, E_NO_ACCESS)
        assert q.counters()["ats_requests"] == 0 and msi_seen(q)
        q.enable_sva()
        # Two pages each side at different offsets: 3 chunks, 6 lookups, 4 translations.
        n, soff, doff = 6000, 0x123, 0x456
        assert q.run(COPY, GVA_A + soff, n, dst=GVA_B + doff, pasid=PV | PASID) == (DONE, 0)
        assert msi_seen(q)
        for k in range(0, n, 997):
            t = model.translation_request(SID, GVA_B + doff + k, pasid=PASID, write=True)
            assert t.ok and t.address is not None and q.read(t.address, 1) == DATA[soff + k : soff + k + 1]
        landed = q.read(HPA_B + doff, 4096 - doff) + q.read(HPA_D, n - 4096 + doff)
        assert landed == DATA[soff : soff + n]
        c = q.counters()
        assert (c["ats_requests"], c["atc_misses"], c["atc_hits"], c["atc_entries"]) == (4, 4, 2, 4)
        assert c["bytes"] == 2 * n and c["page_requests"] == 0
        # The same pages again: all from the ATC.
        assert q.run(READ_CRC, GVA_A, 8192, pasid=PV | PASID) == (DONE, 0)
        assert q.reg(RESULT) == zlib.crc32(DATA)
        c2 = q.counters()
        assert (c2["ats_requests"], c2["atc_hits"] - c["atc_hits"]) == (4, 2)
        # A write through the read-only page the ATC holds: asks again, is denied, and
        # without PRI that ends the op.
        assert model.translation_request(SID, GVA_A, pasid=PASID, write=True).fault is not None
        q.cfg_write(q.ext_cap(0x13) + 4, 0, 2)  # PRI off (this also drops the ATC)
        assert q.counters()["atc_entries"] == 0
        assert q.run(FILL, GVA_A, 8, pasid=PV | PASID) == (FAILED, E_NO_ACCESS)
        assert q.reg(ERROR_ADDR) == GVA_A and q.read(HPA_A, 8) == DATA[:8]


def test_page_request_round_trip_then_failure_and_invalid(qemu: str) -> None:
    with sva_rig(qemu) as r:
        q, model = r.q, r.model
        q.enable_sva()
        # A write to a page that is not present: one page request, LPIG, PRGI 0.
        q.start(WRITE_PATTERN, GVA_NP + 0x10, 100, pattern=3, pasid=PV | PASID)
        req = r.next_page_request()
        expect = model.page_request(SID, GVA_NP, pasid=PASID, write=True, prgi=0, last=True)
        assert expect.queued and expect.offset is not None
        assert req.to_bytes() == r.mem.read(PRQ_BASE + expect.offset, 32)  # what the model queues
        assert (req.rid, req.pasid, req.wr, req.rd, req.lpig, req.addr) == (SID, PASID, 1, 0, 1, GVA_NP)
        assert q.reg(STATUS) == BUSY  # waiting, QEMU not blocked
        # The "OS" maps the page and answers Success; the device retries and completes.
        r.remap(GVA_NP, HPA_C)
        rc = ResponseCode.SUCCESS
        r.submit(prg_resp_desc(SID, req.prgi, rc=rc, pasid=PASID))
        assert q.wait() == (DONE, 0) and msi_seen(q)
        t = model.translation_request(SID, GVA_NP + 0x10, pasid=PASID, write=True)
        assert t.ok and t.address == HPA_C + 0x10
        assert q.read(t.address, 100) == pattern_bytes(3, 100)
        c = q.counters()
        assert (c["page_requests"], c["prg_success"], c["ats_requests"], c["atc_misses"]) == (1, 1, 2, 1)
        assert q.reg(OP_PAGE_REQUESTS) == 1

        # Response Failure and Invalid Request end the op with ERROR 1 / 2.
        for prgi, (rc, error) in enumerate(((ResponseCode.RESPONSE_FAILURE, E_FAILURE),
                                            (ResponseCode.INVALID_REQUEST, E_INVALID)), start=1):
            gva = GVA_NP + prgi * 0x1000
            q.start(READ_CRC, gva + 8, 8, pasid=PV | PASID)
            req = r.next_page_request()
            assert (req.prgi, req.rd, req.wr, req.addr) == (prgi, 1, 0, gva)
            model.page_request(SID, gva, pasid=PASID, prgi=prgi)
            r.submit(prg_resp_desc(SID, req.prgi, rc=rc, pasid=PASID))
            assert q.wait() == (FAILED, error) and q.reg(ERROR_ADDR) == gva + 8
            assert msi_seen(q)
        c = q.counters()
        assert (c["page_requests"], c["prg_failure"], c["prg_invalid"]) == (3, 1, 1)
        assert model.prq.unanswered() == []  # every group the model queued got its answer


def test_page_request_without_last_page_times_out(qemu: str) -> None:
    with sva_rig(qemu, device_props=",x-seed-no-last-page=on") as r:
        q = r.q
        assert q.reg(SEED) == 2
        q.enable_sva()
        q.start(READ_CRC, GVA_NP, 8, pasid=PV | PASID)
        req = r.next_page_request()
        assert not req.lpig and not req.needs_response  # no responder answers it
        assert q.wait(timeout=20) == (FAILED, E_TIMEOUT)
        assert q.reg(ERROR_ADDR) == GVA_NP and q.reg(DEVICE_NS) >= 2_000_000_000


@pytest.mark.parametrize("ignore", [False, True], ids=["honoured", "seed-ignored"])
def test_device_tlb_invalidation_drops_the_atc_entry(qemu: str, ignore: bool) -> None:
    props = ",x-seed-ignore-invalidation=on" if ignore else ""
    with sva_rig(qemu, device_props=props) as r:
        q, model = r.q, r.model
        assert q.reg(SEED) == int(ignore)
        assert r.fs is not None
        r.fs.map(GVA_A, HPA_A)
        r.fs.map(GVA_B, HPA_B)
        r.sync()
        q.enable_sva()
        assert q.run(WRITE_PATTERN, GVA_A, 4096, pattern=1, pasid=PV | PASID) == (DONE, 0)
        assert q.run(WRITE_PATTERN, GVA_B, 4096, pattern=2, pasid=PV | PASID) == (DONE, 0)
        for gva in (GVA_A, GVA_B):
            model.translation_request(SID, gva, pasid=PASID, write=True)
        assert q.counters()["atc_entries"] == 2
        # The OS moves GVA_B to HPA_C and invalidates: PASID IOTLB, then the device's TLB.
        r.remap(GVA_B, HPA_C)
        r.submit(piotlb_desc(3, did=DID, pasid=PASID, addr=GVA_B),
                 pdevtlb_desc(SID, PASID, addr=GVA_B))
        assert model.device_tlb_lookup(SID, GVA_B, PASID) is None  # the spec drops it
        assert model.device_tlb_lookup(SID, GVA_A, PASID) == HPA_A  # and only it
        c = q.counters()
        assert c["invalidations"] == 1 and c["atc_entries"] == (2 if ignore else 1)
        q.write(HPA_B, bytes(4096))
        assert q.run(WRITE_PATTERN, GVA_B, 4096, pattern=7, pasid=PV | PASID) == (DONE, 0)
        fresh = model.translation_request(SID, GVA_B, pasid=PASID, write=True).address
        assert fresh == HPA_C
        c2 = q.counters()
        if ignore:
            # The stale entry was used: the data went to the old page, not the model's.
            assert q.read(HPA_B, 4096) == pattern_bytes(7, 4096) and q.read(HPA_C, 16) == bytes(16)
            assert c2["atc_hits"] - c["atc_hits"] == 1
            q.set(ATC_FLUSH, 1)  # a local flush ends it
            assert q.counters()["atc_entries"] == 0
            assert q.run(WRITE_PATTERN, GVA_B, 4096, pattern=7, pasid=PV | PASID) == (DONE, 0)
        else:
            assert c2["atc_misses"] - c["atc_misses"] == 1
        assert q.read(fresh, 4096) == pattern_bytes(7, 4096)


def test_reset_disables_ats_pasid_pri_and_empties_the_device(qemu: str) -> None:
    with sva_rig(qemu) as r:
        q = r.q
        assert r.fs is not None
        r.fs.map(GVA_A, HPA_A)
        r.sync()
        q.enable_sva()
        assert q.run(FILL, GVA_A, 64, pattern=0x11, pasid=PV | PASID) == (DONE, 0)
        assert q.counters()["atc_entries"] == 1
        q.reset()
        ats, pasid, pri = (q.ext_cap(c) for c in (0x0F, 0x1B, 0x13))
        assert (q.cfg(ats + 6, 2), q.cfg(pasid + 6, 2), q.cfg(pri + 4, 2), q.cfg(pri + 0xC)) == (0, 0, 0, 0)
        assert q.cfg(pri + 6, 2) & 0x100  # PRI stopped
        assert (q.reg(STATUS), q.reg(INTR), q.reg(PASID_REG)) == (0, 0, 0)
        assert set(q.counters().values()) == {0}
        # The unit was reset too: program it again; the device binds its PASID afresh.
        r.program(q.reg_write, prq=True)
        q.enable_msi()
        q.enable_sva()
        assert q.run(FILL, GVA_A, 64, pattern=0x22, pasid=PV | PASID) == (DONE, 0)
        assert q.read(HPA_A, 8) == bytes([0x22] + [0] * 7) and msi_seen(q)
        assert (q.counters()["ats_requests"], q.counters()["atc_entries"]) == (1, 1)


def test_a_pasid_without_an_entry_faults_0x5b_recorded_without_its_pasid(qemu: str) -> None:
    """Divergences pasid-entry-type-before-present and ats-fault-record-drops-pasid (harness/
    viommu/divergences.py): an ATS translation request tagged with a PASID whose PASID-table
    entry is all zero. The spec (and the model): P=0, fault 0x59, recorded with PP=1 and that
    PASID. QEMU 10.2 type-checks the entry before its P bit (PGTT 000 is reserved: 0x5B) and
    records the fault with PP=0."""
    unbound = 63  # same PASID-table page as PASID 5, never given an entry
    with sva_rig(qemu) as r:
        q, model = r.q, r.model
        assert r.fs is not None
        r.fs.map(GVA_A, HPA_A)
        r.sync()
        q.enable_sva(pri=False)
        q.reg_write(0x34, 0x7F, 4)  # FSTS: nothing pending before
        status, error = q.run(READ_CRC, GVA_A, 64, pasid=PV | unbound)
        assert status == FAILED and error == E_NO_ACCESS, (status, error)
        assert q.reg_read(0x34, 4) & 0x2, "QEMU recorded no fault"  # FSTS.PPF
        rec = Fault.decode(q.reg_read(0x228, 8) << 64 | q.reg_read(0x220, 8))  # FRCD 0 (CAP.FRO = 0x22)
        spec = model.translation_request(SID, GVA_A, pasid=unbound)
    assert spec.fault is FaultReason.SM_PASID_ENTRY_NOT_PRESENT
    assert (rec.sid, rec.addr, rec.fr) == (SID, GVA_A, FaultReason.SM_PASID_ENTRY_INVALID)
    assert rec.pasid is None  # PP=0: the record does not say which PASID faulted
