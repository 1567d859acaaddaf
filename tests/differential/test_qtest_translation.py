"""Differential check 1, breadth: the model against QEMU 10.0's VT-d emulation over qtest
for large pages, 3/4-level second stage, pass-through, every fault reason the edu device
can provoke, and hypothesis-generated first-stage mappings.

Every scenario writes the same tables into QEMU's RAM and a model's memory, programs both
units with the same register writes, lets edu DMA and asks the model to translate the same
request. The data must land where the model's translation leads, and QEMU's fault record
(FR, SID, FI, read/write) must equal the model's, except where QEMU 10.0 records another
code: those go through the explicit tables below, each citing its divergence id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.qemu.probe import IommuSettings
from harness.qemu.qtest import EDU_BUF, QtestMachine
from harness.viommu import (
    FaultOutcome,
    FaultReason,
    FsTables,
    GuestMemory,
    PasidEntry,
    Pgtt,
    TableBuilder,
    Translation,
    VtdModel,
)
from harness.viommu.builder import SsTables
from harness.viommu.capability import Cap, Ecap, config_from_caps
from harness.viommu.divergences import BY_ID
from harness.viommu.first_stage import FS_A, FS_D

pytestmark = pytest.mark.qemu  # each test drives a QEMU process over qtest (no guest)


FR = FaultReason
FRCD, FSTS = rig.FRCD, rig.FSTS
GCMD, GSTS, RTADDR, IOTLB_REG = 0x18, 0x1C, 0x20, 0xF8  # QEMU: IRO = 0xF -> IOTLB_REG at 0xF8
ABSENT = 0x3F_0000_0000  # below 2^39 and 2^48, not backed by anything in QEMU or the model
SCRATCH_IOVA, SCRATCH_HPA = 0x1000, 0x0300_0000  # a RW page every scenario maps, to move data through
DATA_HPA = 0x0400_0000  # 2 MiB-aligned data pages from here (tables live at 1-17 MiB)
INTR = 0xFEE0_0000

STATS = {"dma": 0, "faults": 0, "mismatches": 0}

# Divergence "sm-legacy-fault-codes": in scalable mode QEMU 10.0 records legacy codes for
# root/context faults, and for second-stage (PGTT=010) walks. (read code, write code).
SM_ROOT_CONTEXT_CODES: dict[FaultReason, tuple[int, int]] = {
    FR.SM_ROOT_ACCESS: (0x8, 0x8),
    FR.SM_ROOT_NOT_PRESENT: (0x1, 0x1),
    FR.SM_ROOT_RESERVED: (0xA, 0xA),
    FR.SM_CONTEXT_ACCESS: (0x9, 0x9),
    FR.SM_CONTEXT_NOT_PRESENT: (0x2, 0x2),
    FR.SM_CONTEXT_RESERVED: (0xB, 0xB),
}
SM_SECOND_STAGE_CODES: dict[FaultReason, tuple[int, int]] = {
    FR.SM_BEYOND_HW_MAX: (0x4, 0x4),
    FR.SM_WRITE_DENIED: (0x5, 0x5),
    FR.SM_READ_DENIED: (0x6, 0x6),
    FR.SS_SM_ENTRY_NOT_PRESENT: (0x6, 0x5),  # QEMU: no not-present code, R/W permission instead
    FR.SS_SM_ENTRY_ACCESS: (0x7, 0x7),
    FR.SS_SM_ENTRY_RESERVED: (0xC, 0xC),
    # together with "ss-root-read-error-context-invalid": an unreadable SS root is 0x3
    FR.SS_SM_INVALID_SLPTPTR: (0x3, 0x3),
}
# Divergence "ss-root-read-error-context-invalid" (legacy mode): LSL.1 0x7 for the top level.
LEGACY_SS_ROOT_CODES: dict[FaultReason, tuple[int, int]] = {FR.SS_ENTRY_ACCESS: (0x3, 0x3)}
# Divergence "legacy-interrupt-range-sm-code": x-scalable-mode=on, TTM=legacy.
LEGACY_ON_SM_UNIT_CODES: dict[FaultReason, tuple[int, int]] = {FR.INTERRUPT_RANGE: (0x87, 0x87)}


# ------------------------------------------------------------------------------ counters
def check(ok: bool, what: str) -> None:
    if not ok:
        STATS["mismatches"] += 1
        raise AssertionError(what)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rig.print_past_capture(request.config, f"qtest translation oracle: {STATS['dma']} DMAs compared, "
                           f"{STATS['faults']} fault records compared, {STATS['mismatches']} mismatches")


# ------------------------------------------------------------------------------ the rig
class Unit:
    """One QEMU machine; each scenario gets a fresh builder and model over one memory."""

    def __init__(self, q: QtestMachine) -> None:
        self.q = q
        self.sid = q.edu_sid
        self.cap = Cap.decode(q.reg_read(0x8, 8))
        self.ecap = Ecap.decode(q.reg_read(0x10, 8))
        self.mem = GuestMemory(rig.RAM)
        self.model: VtdModel | None = None
        self.codes: dict[FaultReason, tuple[int, int]] = {}
        self.divergences: tuple[str, ...] = ()
        self.tables: FsTables | SsTables | None = None
        self.first_write: dict[int, bool] = {}  # leaf entry address -> first successful access was a write

    def scenario(self, scalable: bool) -> TableBuilder:
        self.model = VtdModel(self.mem, config_from_caps(self.cap, self.ecap))
        self.codes = {}
        self.divergences = ()
        self.tables = None
        self.first_write = {}
        return TableBuilder(self.mem, scalable=scalable)

    @property
    def m(self) -> VtdModel:
        assert self.model is not None
        return self.model

    def both(self, offset: int, value: int, size: int) -> None:
        self.q.reg_write(offset, value, size)
        self.m.write_reg(offset, value, size)

    def program(self, b: TableBuilder, *, ttm: int, root: int | None = None) -> None:
        rt = b.root if root is None else root
        for page, data in b.written_pages():
            self.q.write(page, bytes(data))
        self.both(RTADDR, rt | ttm << 10, 8)
        self.both(GCMD, 1 << 30, 4)  # SRTP (QEMU: also turns TE off, as TE is not in the value)
        self.both(GCMD, 1 << 31, 4)  # TE
        assert self.q.reg_read(GSTS, 4) >> 31 & 1 and self.m.read_reg(GSTS, 4) >> 31 & 1
        self.clear_faults()

    def clear_faults(self) -> None:
        self.both(FRCD + 12, 1 << 31, 4)
        self.both(FSTS, 0x7F, 4)

    def flush_iotlb(self) -> None:
        """Register-based global IOTLB invalidation in both: every DMA is a fresh walk."""
        self.both(IOTLB_REG, 1 << 63 | 1 << 60, 8)

    @staticmethod
    def _record(read: Callable[[int, int], int]) -> tuple[int, int, int, int] | None:
        if not read(FSTS, 4) & 0x2:  # PPF
            return None
        lo, hi = read(FRCD, 8), read(FRCD + 8, 8)
        return (hi >> 32) & 0xFF, hi & 0xFFFF, (hi >> 62) & 1, lo & ~0xFFF  # FR, SID, T, FI

    def expected_qemu_code(self, fr: int, write: bool) -> int:
        mapped = self.codes.get(FaultReason(fr))
        if mapped is None:
            return fr
        for d in self.divergences:
            assert d in BY_ID, d
        return mapped[int(write)]

    # -- one DMA ---------------------------------------------------------------------
    def access(self, iova: int, write: bool, size: int = 4096) -> Translation:
        """edu DMAs ``size`` bytes to/from ``iova``; the outcome must agree with the model."""
        q, m, sid = self.q, self.m, self.sid
        data = os.urandom(size)
        if write:  # load edu's buffer through the scratch page
            q.write(self._scratch(), data)
            self._dma(SCRATCH_IOVA, False, size)
        self.flush_iotlb()
        self.clear_faults()
        t = m.walk(sid, iova, write=write, update_ad=False)  # where it will land (no side effects)
        if t.ok and t.address is not None:
            q.write(t.address, bytes(size) if write else data)
        if write:
            q.edu_dma(EDU_BUF, iova, size, to_ram=True)
        else:
            q.edu_dma(iova, EDU_BUF, size, to_ram=False)
        t = m.translate(sid, iova, write=write)
        self._compare(t, iova, write)
        if t.ok and t.level is not None and self.tables is not None:
            self.first_write.setdefault(self.tables.entry_address(iova, t.level, create=False), write)
        if t.ok and t.address is not None:
            if write:
                check(q.read(t.address, size) == data, f"{iova:#x}: written data not at the model's {t.address:#x}")
            else:
                q.write(self._scratch(), bytes(size))
                self._dma(SCRATCH_IOVA, True, size)
                check(q.read(self._scratch(), size) == data, f"{iova:#x}: read data is not the model's {t.address:#x}")
        return t

    def _scratch(self) -> int:
        t = self.m.walk(self.sid, SCRATCH_IOVA, update_ad=False)
        assert t.address is not None, f"the scratch page does not translate: {t.fault}"
        return t.address

    def _dma(self, iova: int, write: bool, size: int) -> None:
        self.flush_iotlb()
        self.clear_faults()
        if write:
            self.q.edu_dma(EDU_BUF, iova, size, to_ram=True)
        else:
            self.q.edu_dma(iova, EDU_BUF, size, to_ram=False)
        t = self.m.translate(self.sid, iova, write=write)
        check(t.ok, f"scratch access {iova:#x} faulted in the model: {t.fault}")
        self._compare(t, iova, write)

    def _compare(self, t: Translation, iova: int, write: bool) -> None:
        STATS["dma"] += 1
        rq, rm = self._record(self.q.reg_read), self._record(self.m.read_reg)
        suppressed = not t.ok and t.record is FaultOutcome.SUPPRESSED
        check((rm is None) == (t.ok or suppressed), f"model outcome {t.fault} vs its own record {rm}")
        if rm is None:
            check(rq is None, f"{iova:#x} write={write}: QEMU recorded FR {rq and hex(rq[0])}, the model "
                              f"{'translated' if t.ok else 'suppressed ' + str(t.fault)}")
            return
        STATS["faults"] += 1
        fr, sid, tbit, fi = rm
        want = (self.expected_qemu_code(fr, write), sid, tbit, fi)
        check(rq == want, f"{iova:#x} write={write}: QEMU record {rq and tuple(map(hex, rq))}, model "
                          f"{FaultReason(fr).name} -> expected {tuple(map(hex, want))}")

    def same_entry(self, addr: int) -> None:
        """A paging entry (A/D bits included) reads the same in QEMU's RAM and the model's,
        but for divergence "fs-dirty-skipped-when-accessed": QEMU sets a first-stage leaf's D
        only on a write walk that finds A clear, i.e. when the first access was a write."""
        qv = int.from_bytes(self.q.read(addr, 8), "little")
        mv = want = self.mem.read_u64(addr)
        if isinstance(self.tables, FsTables) and mv & FS_D and not self.first_write.get(addr, True):
            assert "fs-dirty-skipped-when-accessed" in BY_ID
            want = mv & ~FS_D
        check(qv == want, f"entry at {addr:#x}: QEMU {qv:#x}, model {mv:#x}, expected {want:#x} in QEMU")

    def fault(self, iova: int, write: bool, spec: FaultReason | None) -> None:
        """A DMA that must fault: the model's spec code, then QEMU's record via ``access``.
        ``spec`` None: the fault is suppressed (FPD) in the model, and QEMU must record nothing."""
        t = self.access(iova, write)
        check(not t.ok, f"{iova:#x}: the model translated it to {t.address}")
        if spec is None:
            check(t.record is FaultOutcome.SUPPRESSED, f"not suppressed: {t.record}")
        else:
            check(t.fault is spec, f"model fault {t.fault!r}, spec says {spec!r}")


Machines = Callable[[IommuSettings], Unit]


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    started: dict[tuple[tuple[str, bool | int], ...], tuple[QtestMachine, Unit]] = {}

    def get(props: IommuSettings) -> Unit:
        key = tuple(sorted(props.items()))
        if key not in started:
            q = QtestMachine(props).__enter__()
            started[key] = (q, Unit(q))
        return started[key][1]

    yield get
    for q, _ in started.values():
        q.__exit__(None, None, None)


LEGACY, FLTS, SMSS = rig.LEGACY, rig.FLTS, rig.SMSS
LEGACY39 = {**LEGACY, "aw_bits": 39}


def fs_scenario(u: Unit, *, pasid_entry: dict[str, int] | None = None) -> tuple[TableBuilder, FsTables]:
    b = u.scenario(scalable=True)
    fs = b.fs_tables(4)
    b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid)
    kw = dict(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs.root, aw=2)
    kw.update(pasid_entry or {})
    b.set_pasid_entry(u.sid, 0, PasidEntry(**kw))
    fs.map(SCRATCH_IOVA, SCRATCH_HPA)
    u.tables = fs
    return b, fs


# ============================================================================ first stage
@pytest.mark.parametrize("page", ["2M", "1G"])
def test_first_stage_large_leaves_move_data_and_set_ad_like_qemu(machines: Machines, page: str) -> None:
    u = machines(FLTS)
    assert u.ecap.flts and u.ecap.smts
    if page == "1G":
        assert u.cap.fl1gp, "QEMU 10.0 with x-flts and fs1gp (default on) reports CAP.FS1GP"
        size, iova, hpa = 1 << 30, 0x0055_4000_0000, 0  # 1 GiB at HPA 0: RAM 0-512 MiB inside
        offsets = [0x0500_0000, 0x0512_3000, 0x1F00_0000]
    else:
        size, iova, hpa = 1 << 21, 0x1234_5640_0000, 0x0460_0000
        offsets = [0, 0x12_3000, 0x1F_F000]
    b, fs = fs_scenario(u)
    leaf = fs.map(iova, hpa, size)
    ro_leaf = fs.map(iova + 2 * size if page == "2M" else 0x0056_4000_0000, hpa + (2 * size if page == "2M" else 0),
                     size, writable=False)
    u.program(b, ttm=1)
    ro_iova = iova + 2 * size if page == "2M" else 0x0056_4000_0000
    for i, off in enumerate(offsets):
        t = u.access(iova + off, write=bool(i & 1))
        check(t.page_size == size, f"model page size {t.page_size:#x}")
        u.same_entry(leaf)
    u.access(iova + offsets[0] + 0x880, write=False, size=256)  # unaligned, inside one page
    u.same_entry(leaf)
    u.access(ro_iova + offsets[-1], write=False)
    u.same_entry(ro_leaf)
    u.fault(ro_iova + offsets[-1], True, FR.SM_WRITE_DENIED)
    u.same_entry(ro_leaf)


def test_first_stage_canonical_high_half_translates(machines: Machines) -> None:
    u = machines(FLTS)
    b, fs = fs_scenario(u)
    high = 0xFFFF_8000_1234_5000
    leaf = fs.map(high, DATA_HPA)
    u.program(b, ttm=1)
    u.access(high, True)
    u.access(high + 0x100, False, size=512)
    u.same_entry(leaf)
    u.fault(high & ((1 << 48) - 1), False, FR.SM_NOT_CANONICAL)  # bit 47 set, 63:48 clear


def test_divergence_fs_dirty_not_set_when_leaf_already_accessed(machines: Machines) -> None:
    """Read a page, invalidate the IOTLB, write it: the spec (and the model) set D in the
    leaf; QEMU 10.0 skips the A/D update because A is already set."""
    assert "fs-dirty-skipped-when-accessed" in BY_ID
    u = machines(FLTS)
    b, fs = fs_scenario(u)
    leaf = fs.map(0x7F00_1000, DATA_HPA)
    u.program(b, ttm=1)
    u.access(0x7F00_1000, False)
    u.access(0x7F00_1000, True)  # data lands where the model says: the translation agrees
    qv, mv = int.from_bytes(u.q.read(leaf, 8), "little"), u.mem.read_u64(leaf)
    assert mv & (FS_A | FS_D) == FS_A | FS_D
    assert qv & (FS_A | FS_D) == FS_A, f"QEMU leaf {qv:#x}: D now set, drop the divergence"


def test_divergence_fs1gp_off_still_translates_1g_leaves(machines: Machines) -> None:
    """QEMU 10.0 with fs1gp=off clears CAP.FS1GP but its reserved-bit masks still accept PS
    in a PDPE; the spec (and the model) treat it as reserved (0x72)."""
    assert "fs1gp-not-enforced" in BY_ID
    u = machines({**FLTS, "fs1gp": False})
    assert not u.cap.fl1gp
    b, fs = fs_scenario(u)
    fs.map(0x0055_4000_0000, 0, 1 << 30)
    u.program(b, ttm=1)
    t = u.m.translate(u.sid, 0x0055_4500_0000)
    assert t.fault is FR.FS_ENTRY_RESERVED
    u.clear_faults()
    u.q.write(0x0500_0000, rig.PATTERN)
    u.q.edu_dma(0x0055_4500_0000, EDU_BUF, 4096, to_ram=False)
    assert Unit._record(u.q.reg_read) is None, "QEMU now faults a 1 GiB leaf without FS1GP: drop the divergence"


# ============================================================================ second stage
@pytest.mark.parametrize("props,levels", [(LEGACY39, 3), (LEGACY, 3), (LEGACY, 4)],
                         ids=["aw39-3level", "aw48-3level", "aw48-4level"])
def test_legacy_second_stage_levels_and_superpages(machines: Machines,
                                                   props: IommuSettings, levels: int) -> None:
    u = machines(props)
    aw = levels - 2
    assert u.cap.supports_agaw(aw), f"SAGAW {u.cap.sagaw:#x} lacks {levels}-level tables"
    b = u.scenario(scalable=False)
    ss = b.ss_tables(levels)
    b.set_legacy_context(u.sid, slptptr=ss.root, aw=aw, did=3)
    ss.map(SCRATCH_IOVA, SCRATCH_HPA)
    leaves = [ss.map(0x12_3456_7000, DATA_HPA)]
    sizes = [4096]
    if u.cap.ss_2m:  # CAP.SLLPS bit 34
        leaves.append(ss.map(0x40_0000_0000 - (1 << 21) * 5, 0x0460_0000, 1 << 21))
        sizes.append(1 << 21)
    if u.cap.ss_1g:  # CAP.SLLPS bit 35
        leaves.append(ss.map(0x7_4000_0000, 0, 1 << 30))
        sizes.append(1 << 30)
    ro = ss.map(0x12_3456_9000, DATA_HPA + 0x1000, w=False)
    u.program(b, ttm=0)
    iovas = [0x12_3456_7000, 0x40_0000_0000 - (1 << 21) * 5 + 0x1_5000, 0x7_4000_0000 + 0x0600_0000]
    for iova, size, leaf in zip(iovas, sizes, leaves, strict=False):
        for write in (False, True):
            t = u.access(iova, write)
            check(t.page_size == size, f"page size {t.page_size:#x} != {size:#x}")
        u.same_entry(leaf)  # no SS A/D in QEMU 10.0 (ECAP.SLADS=0): both leave the entry alone
    u.access(0x12_3456_9000, False)
    u.fault(0x12_3456_9000, True, FR.WRITE_DENIED)
    u.same_entry(ro)
    u.fault(0x12_3456_a000, False, FR.READ_DENIED)  # not mapped: R=W=0
    width = min(30 + 9 * aw, u.cap.mgaw + 1)
    u.fault(1 << width, False, FR.ADDRESS_BEYOND_MGAW)
    u.fault((1 << width) + 0x5000, True, FR.ADDRESS_BEYOND_MGAW)


@pytest.mark.parametrize("aw", [1, 2])
def test_scalable_second_stage_pgtt_ss(machines: Machines, aw: int) -> None:
    u = machines(SMSS)
    assert u.ecap.slts and u.ecap.smts and not u.ecap.flts, "QEMU 10.0 SM without x-flts walks SS only"
    u.divergences = ("sm-legacy-fault-codes",)
    b = u.scenario(scalable=True)
    ss = b.ss_tables(aw + 2)
    b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid)
    b.set_pasid_entry(u.sid, 0, PasidEntry(p=1, pgtt=Pgtt.SECOND_STAGE, did=2, slptptr=ss.root, aw=aw))
    ss.map(SCRATCH_IOVA, SCRATCH_HPA)
    leaf = ss.map(0x23_4560_0000, 0x0460_0000, 1 << 21)
    ss.map(0x23_4580_0000, DATA_HPA, w=False)
    ss.map(0x23_4580_1000, DATA_HPA, r=False, w=False)
    u.program(b, ttm=1)
    u.codes = SM_SECOND_STAGE_CODES
    u.divergences = ("sm-legacy-fault-codes",)
    u.access(0x23_4561_2000, True)
    u.access(0x23_4561_3000, False)
    u.same_entry(leaf)
    u.access(0x23_4580_0000, False)
    u.fault(0x23_4580_0000, True, FR.SM_WRITE_DENIED)
    u.fault(0x23_4580_1000, False, FR.SS_SM_ENTRY_NOT_PRESENT)
    u.fault(0x23_4580_1000, True, FR.SS_SM_ENTRY_NOT_PRESENT)
    u.fault(1 << (30 + 9 * aw), False, FR.SM_BEYOND_HW_MAX)


# ============================================================================ pass-through
def test_legacy_pass_through_tt2(machines: Machines) -> None:
    u = machines(LEGACY)
    assert u.ecap.pt, "pt=on must report ECAP.PT"
    b = u.scenario(scalable=False)
    b.set_legacy_context(u.sid, tt=2, aw=2, did=4)
    u.program(b, ttm=0)
    for iova, write in ((SCRATCH_HPA, True), (DATA_HPA + 0x3000, True), (DATA_HPA + 0x3000, False),
                        (0x0765_4000, False)):
        t = u.access(iova, write)
        check(t.address == iova, f"pass-through moved {iova:#x} to {t.address}")


@pytest.mark.parametrize("props", [FLTS, SMSS], ids=["first-stage", "second-stage"])
def test_scalable_pass_through_pgtt(machines: Machines, props: IommuSettings) -> None:
    u = machines(props)
    assert u.ecap.pt
    b = u.scenario(scalable=True)
    b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid)
    b.set_pasid_entry(u.sid, 0, PasidEntry(p=1, pgtt=Pgtt.PASS_THROUGH, did=1, aw=2))
    u.program(b, ttm=1)
    for iova, write in ((SCRATCH_HPA, True), (DATA_HPA + 0x5000, True), (DATA_HPA + 0x5000, False)):
        t = u.access(iova, write)
        check(t.address == iova, f"pass-through moved {iova:#x} to {t.address}")


# ============================================================================ fault reasons
@dataclass(frozen=True)
class Case:
    name: str
    spec: FaultReason | None  # None: suppressed by FPD
    build: Callable[[Unit], tuple[TableBuilder, int | None]]  # -> builder, root override
    iova: int = 0x7F00_9000
    write: bool = False


def _legacy(u: Unit, *, tt: int = 0, aw: int = 2, fpd: int = 0, levels: int = 4,
            edit: Callable[[TableBuilder, SsTables], object] | None = None, root: int | None = None
            ) -> tuple[TableBuilder, int | None]:
    b = u.scenario(scalable=False)
    ss = b.ss_tables(levels)
    b.set_legacy_context(u.sid, slptptr=ss.root, aw=aw, tt=tt, did=1, fpd=fpd)
    ss.map(SCRATCH_IOVA, SCRATCH_HPA)
    ss.map(0x7F00_1000, DATA_HPA, w=False)
    u.tables = ss
    if edit is not None:
        edit(b, ss)
    return b, root


def _or(b: TableBuilder, addr: int, bits: int) -> None:
    b.write_u64(addr, b.mem.read_u64(addr) | bits)


def _root_entry(u: Unit, b: TableBuilder) -> int:
    return b.root + (u.sid >> 8) * 16


LEGACY_CASES = [
    Case("root-not-present", FR.ROOT_NOT_PRESENT,
         lambda u: _legacy(u, edit=lambda b, ss: b.write_qwords(_root_entry(u, b), (0, 0)))),
    Case("root-reserved", FR.ROOT_RESERVED, lambda u: _legacy(u, edit=lambda b, ss: _or(b, _root_entry(u, b), 1 << 3))),
    Case("root-table-access", FR.ROOT_ACCESS, lambda u: _legacy(u, root=ABSENT)),
    Case("context-table-access", FR.CONTEXT_ACCESS,
         lambda u: _legacy(u, edit=lambda b, ss: b.write_qwords(_root_entry(u, b), (ABSENT | 1, 0)))),
    Case("context-not-present", FR.CONTEXT_NOT_PRESENT,
         lambda u: _legacy(u, edit=lambda b, ss: b.set_legacy_context(u.sid, p=0))),
    Case("context-reserved", FR.CONTEXT_RESERVED,
         lambda u: _legacy(u, edit=lambda b, ss: _or(b, b.context_entry_address(u.sid) + 8, 1 << 7))),
    Case("context-aw-unsupported", FR.CONTEXT_INVALID, lambda u: _legacy(u, aw=3)),
    Case("context-tt-reserved", FR.CONTEXT_INVALID, lambda u: _legacy(u, tt=3)),
    Case("beyond-agaw", FR.ADDRESS_BEYOND_MGAW, lambda u: _legacy(u, aw=1, levels=3), iova=1 << 39),
    Case("write-denied", FR.WRITE_DENIED, lambda u: _legacy(u), iova=0x7F00_1000, write=True),
    Case("read-denied", FR.READ_DENIED, lambda u: _legacy(u)),
    Case("fpd-suppresses-read-denied", None, lambda u: _legacy(u, fpd=1)),
    Case("ss-leaf-reserved", FR.SS_ENTRY_RESERVED,
         lambda u: _legacy(u, edit=lambda b, ss: _or(b, ss.entry_address(0x7F00_1000, 1), 1 << 51)),
         iova=0x7F00_1000),
    Case("ss-pml4e-ps-reserved", FR.SS_ENTRY_RESERVED,
         lambda u: _legacy(u, edit=lambda b, ss: _or(b, ss.entry_address(0x7F00_1000, 4), 1 << 7)),
         iova=0x7F00_1000),
    Case("ss-entry-access", FR.SS_ENTRY_ACCESS,
         lambda u: _legacy(u, edit=lambda b, ss: b.write_u64(ss.entry_address(0x7F00_9000, 3), ABSENT | 3))),
    Case("interrupt-range-output", FR.INTERRUPT_RANGE,
         lambda u: _legacy(u, edit=lambda b, ss: ss.map(0x7F00_9000, INTR))),
]


@pytest.mark.parametrize("case", LEGACY_CASES, ids=lambda c: c.name)
def test_legacy_fault_reasons(machines: Machines, case: Case) -> None:
    u = machines(LEGACY)
    b, root = case.build(u)
    u.program(b, ttm=0, root=root)
    u.fault(case.iova, case.write, case.spec)


def test_divergence_legacy_ss_root_read_error_is_context_invalid(machines: Machines) -> None:
    """An unreadable second-stage root table: spec LSL.1 (0x7), QEMU 10.0 records 0x3."""
    assert "ss-root-read-error-context-invalid" in BY_ID
    u = machines(LEGACY)
    b = u.scenario(scalable=False)
    b.set_legacy_context(u.sid, slptptr=ABSENT, aw=2, did=1)
    u.program(b, ttm=0)
    u.codes, u.divergences = LEGACY_SS_ROOT_CODES, ("ss-root-read-error-context-invalid",)
    u.fault(0x7F00_9000, False, FR.SS_ENTRY_ACCESS)
    rec = Unit._record(u.q.reg_read)
    assert rec is not None and rec[0] == 0x3, "QEMU changed its code: drop the divergence"


def test_divergence_legacy_interrupt_range_uses_sm_code_on_sm_capable_unit(machines: Machines) -> None:
    """x-scalable-mode=on but TTM=legacy: QEMU picks 0x87 from the capability, not the mode."""
    assert "legacy-interrupt-range-sm-code" in BY_ID
    u = machines(SMSS)
    b, _ = _legacy(u, edit=lambda b, ss: ss.map(0x7F00_9000, INTR))
    u.program(b, ttm=0)
    u.codes, u.divergences = LEGACY_ON_SM_UNIT_CODES, ("legacy-interrupt-range-sm-code",)
    u.access(0x7F00_2000 - 0x1000, False)  # legacy translation itself works on this unit
    u.fault(0x7F00_9000, False, FR.INTERRUPT_RANGE)
    rec = Unit._record(u.q.reg_read)
    assert rec is not None and rec[0] == 0x87, "QEMU now records 0xE: drop the divergence"


def _sm(u: Unit, *, pe: dict[str, int] | None = None, ctx: dict[str, int] | None = None,
        edit: Callable[[TableBuilder, FsTables], object] | None = None, root: int | None = None
        ) -> tuple[TableBuilder, int | None]:
    b, fs = fs_scenario(u, pasid_entry=pe)
    if ctx:
        b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid, **ctx)
    fs.map(0x7F00_1000, DATA_HPA, writable=False)
    fs.map(0x7F00_2000, DATA_HPA, user=False)
    if edit is not None:
        edit(b, fs)
    return b, root


def _pasid_dir(u: Unit, b: TableBuilder) -> int:
    return b._pasid_dirs[u.sid]


FS_CASES = [
    Case("sm-root-not-present", FR.SM_ROOT_NOT_PRESENT,
         lambda u: _sm(u, edit=lambda b, fs: b.write_qwords(_root_entry(u, b), (0, 0)))),
    Case("sm-root-reserved", FR.SM_ROOT_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, _root_entry(u, b), 1 << 3))),
    Case("sm-root-table-access", FR.SM_ROOT_ACCESS, lambda u: _sm(u, root=ABSENT)),
    Case("sm-context-table-access", FR.SM_CONTEXT_ACCESS,
         lambda u: _sm(u, edit=lambda b, fs: b.write_qwords(_root_entry(u, b), (ABSENT | 1, 0)))),
    Case("sm-context-not-present", FR.SM_CONTEXT_NOT_PRESENT, lambda u: _sm(u, ctx={"p": 0})),
    Case("sm-context-reserved", FR.SM_CONTEXT_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, b.context_entry_address(u.sid), 1 << 6))),
    Case("sm-context-reserved-qw2", FR.SM_CONTEXT_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, b.context_entry_address(u.sid) + 16, 1))),
    Case("pasid-dir-access", FR.SM_PASID_DIR_ACCESS, lambda u: _sm(u, ctx={"pasid_dir": ABSENT})),
    Case("pasid-dir-not-present", FR.SM_PASID_DIR_NOT_PRESENT,
         lambda u: _sm(u, edit=lambda b, fs: b.write_u64(_pasid_dir(u, b), 0))),
    Case("pasid-table-access", FR.SM_PASID_ENTRY_ACCESS,
         lambda u: _sm(u, edit=lambda b, fs: b.write_u64(_pasid_dir(u, b), ABSENT | 1))),
    Case("pasid-entry-not-present", FR.SM_PASID_ENTRY_NOT_PRESENT, lambda u: _sm(u, pe={"p": 0})),
    Case("pasid-entry-pgtt-nested", FR.SM_PASID_ENTRY_INVALID, lambda u: _sm(u, pe={"pgtt": Pgtt.NESTED})),
    Case("pasid-entry-pgtt-ss-without-slts", FR.SM_PASID_ENTRY_INVALID,
         lambda u: _sm(u, pe={"pgtt": Pgtt.SECOND_STAGE})),
    Case("pasid-entry-pgtt-reserved", FR.SM_PASID_ENTRY_INVALID, lambda u: _sm(u, pe={"pgtt": 5})),
    Case("pasid-entry-flpm-5-level", FR.SM_PASID_ENTRY_INVALID, lambda u: _sm(u, pe={"flpm": 1})),
    Case("fpd-in-pasid-entry-suppresses", None, lambda u: _sm(u, pe={"fpd": 1})),
    Case("fs-root-access", FR.FS_ROOT_ACCESS, lambda u: _sm(u, pe={"flptptr": ABSENT})),
    Case("fs-entry-access", FR.FS_ENTRY_ACCESS,
         lambda u: _sm(u, edit=lambda b, fs: b.write_u64(fs.entry_address(0x7F00_9000, 2), ABSENT | 7))),
    Case("fs-not-present", FR.FS_ENTRY_NOT_PRESENT, lambda u: _sm(u)),
    Case("fs-leaf-reserved-above-haw", FR.FS_ENTRY_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, fs.entry_address(0x7F00_1000, 1), 1 << 50)),
         iova=0x7F00_1000),
    Case("fs-pml4e-ps-reserved", FR.FS_ENTRY_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, fs.entry_address(0x7F00_1000, 4), 1 << 7)),
         iova=0x7F00_1000),
    Case("fs-2m-leaf-reserved", FR.FS_ENTRY_RESERVED,
         lambda u: _sm(u, edit=lambda b, fs: _or(b, fs.map(0x7F20_0000, 0x0460_0000, 1 << 21), 1 << 13)),
         iova=0x7F20_0000),
    Case("non-canonical", FR.SM_NOT_CANONICAL, lambda u: _sm(u), iova=0x0000_8000_0000_0000),
    Case("non-canonical-high", FR.SM_NOT_CANONICAL, lambda u: _sm(u), iova=0xFFF0_0000_0000_0000),
    Case("user-denied", FR.SM_USER_DENIED, lambda u: _sm(u), iova=0x7F00_2000),
    Case("write-denied", FR.SM_WRITE_DENIED, lambda u: _sm(u), iova=0x7F00_1000, write=True),
    Case("interrupt-range-output", FR.SM_INTERRUPT_RANGE,
         lambda u: _sm(u, edit=lambda b, fs: fs.map(0x7F00_9000, INTR))),
]


@pytest.mark.parametrize("case", FS_CASES, ids=lambda c: c.name)
def test_scalable_first_stage_fault_reasons(machines: Machines, case: Case) -> None:
    u = machines(FLTS)
    b, root = case.build(u)
    u.program(b, ttm=1, root=root)
    u.codes, u.divergences = SM_ROOT_CONTEXT_CODES, ("sm-legacy-fault-codes",)
    u.fault(case.iova, case.write, case.spec)


def _smss(u: Unit, *, edit: Callable[[TableBuilder, SsTables], object] | None = None,
          slptptr: int | None = None, ctx: dict[str, int] | None = None, pgtt: int = Pgtt.SECOND_STAGE
          ) -> tuple[TableBuilder, int | None]:
    b = u.scenario(scalable=True)
    ss = b.ss_tables(4)
    b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid, **(ctx or {}))
    b.set_pasid_entry(u.sid, 0, PasidEntry(p=1, pgtt=pgtt, did=2, aw=2,
                                           slptptr=ss.root if slptptr is None else slptptr, flptptr=ss.root))
    ss.map(SCRATCH_IOVA, SCRATCH_HPA)
    if edit is not None:
        edit(b, ss)
    return b, None


SMSS_CASES = [
    Case("ss-root-access", FR.SS_SM_INVALID_SLPTPTR, lambda u: _smss(u, slptptr=ABSENT)),
    Case("ss-entry-access", FR.SS_SM_ENTRY_ACCESS,
         lambda u: _smss(u, edit=lambda b, ss: b.write_u64(ss.entry_address(0x7F00_9000, 2), ABSENT | 3))),
    Case("ss-leaf-reserved", FR.SS_SM_ENTRY_RESERVED,
         lambda u: _smss(u, edit=lambda b, ss: _or(b, ss.map(0x7F00_9000, DATA_HPA), 1 << 50))),
    Case("ss-not-present-write", FR.SS_SM_ENTRY_NOT_PRESENT, lambda u: _smss(u), write=True),
    Case("pgtt-fs-without-flts", FR.SM_PASID_ENTRY_INVALID, lambda u: _smss(u, pgtt=Pgtt.FIRST_STAGE)),
    Case("sm-context-not-present", FR.SM_CONTEXT_NOT_PRESENT, lambda u: _smss(u, ctx={"p": 0})),
    Case("interrupt-range-output", FR.SM_INTERRUPT_RANGE,
         lambda u: _smss(u, edit=lambda b, ss: ss.map(0x7F00_9000, INTR))),
]


@pytest.mark.parametrize("case", SMSS_CASES, ids=lambda c: c.name)
def test_scalable_second_stage_fault_reasons(machines: Machines, case: Case) -> None:
    u = machines(SMSS)
    b, root = case.build(u)
    u.program(b, ttm=1, root=root)
    u.codes = {**SM_ROOT_CONTEXT_CODES, **SM_SECOND_STAGE_CODES}
    u.divergences = ("sm-legacy-fault-codes", "ss-root-read-error-context-invalid")
    u.fault(case.iova, case.write, case.spec)


def test_divergence_sm_context_dte_not_checked(machines: Machines) -> None:
    """Context DTE=1 on a unit without ECAP.DT: invalid programming (SCT.4, 0x43) for the
    spec and the model; QEMU 10.0 never looks at DTE and translates."""
    assert "sm-context-fields-unchecked" in BY_ID
    u = machines(FLTS)
    assert not u.ecap.dt
    b, fs = fs_scenario(u)
    fs.map(0x7F00_1000, DATA_HPA)
    b.set_sm_context(u.sid, pdts=0, paside=u.ecap.pasid, dte=1)
    u.program(b, ttm=1)
    assert u.m.translate(u.sid, 0x7F00_1000).fault is FR.SM_CONTEXT_INVALID
    u.clear_faults()
    u.q.write(DATA_HPA, rig.PATTERN)
    u.q.edu_dma(0x7F00_1000, EDU_BUF, 4096, to_ram=False)
    assert Unit._record(u.q.reg_read) is None, "QEMU now checks DTE: drop the divergence"


# ============================================================================ hypothesis
_PAGE = st.sampled_from([1 << 12, 1 << 21])


@st.composite
def _mapping(draw: st.DrawFn) -> tuple[int, int, bool]:
    size = draw(_PAGE)
    iova = draw(st.integers(1 << 32 >> 21, (1 << 47 >> 21) - 1)) << 21  # 2 MiB granule, above scratch
    if size == 1 << 12:
        iova += draw(st.integers(0, 511)) << 12
    if draw(st.booleans()):
        iova |= 0xFFFF_8000_0000_0000  # canonical upper half
    return iova, size, draw(st.booleans())


@st.composite
def _access(draw: st.DrawFn) -> tuple[int, int, int, int, bool]:
    # (mapping index or -1 for anywhere, page within the mapping, offset, length, write)
    which = draw(st.integers(-1, 5))
    page = draw(st.integers(0, 511))
    off = draw(st.integers(0, 4095 // 64)) * 64
    length = draw(st.integers(1, (4096 - off) // 64)) * 64
    return which, page, off, length, draw(st.booleans())


@pytest.fixture(scope="module")
def flts_unit(machines: Machines) -> Unit:
    return machines(FLTS)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(maps=st.lists(_mapping(), min_size=1, max_size=6), accesses=st.lists(_access(), min_size=1, max_size=8),
       stray=st.integers(0, (1 << 64) - 1))
def test_random_first_stage_mappings_agree(flts_unit: Unit, maps: list[tuple[int, int, bool]],
                                           accesses: list[tuple[int, int, int, int, bool]], stray: int) -> None:
    u = flts_unit
    b, fs = fs_scenario(u)
    leaves = []
    for i, (iova, size, writable) in enumerate(maps):
        leaves.append(fs.map(iova, DATA_HPA + i * (1 << 21), size, writable=writable))
    u.program(b, ttm=1)
    u.codes, u.divergences = SM_ROOT_CONTEXT_CODES, ("sm-legacy-fault-codes",)
    for which, page, off, length, write in accesses:
        if which < 0 or which >= len(maps):
            iova = (stray >> (page % 16)) & ~0xFFF  # anywhere: often non-canonical or not mapped
            if which == -1 and page & 1:
                iova &= (1 << 47) - 1
        else:
            base, size, _ = maps[which]
            iova = base + (page << 12) % size
        t = u.access(iova + off, write, size=length)
        if t.ok:
            for leaf in leaves:
                u.same_entry(leaf)
