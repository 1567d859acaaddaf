"""The invalidation queue against QEMU's own VT-d emulation (10.0), over qtest.

The same descriptors go into QEMU's queue and the model's; after every submission IQH,
FSTS (IQE/ICE/ITE), ICS.IWC and wait status writes must agree. For descriptors that
change caches, QEMU's edu device DMAs through a mapping the guest retargeted: before the
covering invalidation the data lands on the OLD page in QEMU and the model says stale;
after it, both use the new page; a non-covering one (other DID / PASID / page / device)
leaves both stale. Where QEMU departs from the spec, a test_divergence_<id> asserts
QEMU's actual behaviour, and fails the day QEMU changes.

Descriptor types QEMU 10.0 processes (hw/i386/intel_iommu.c vtd_process_inv_desc):
0x1 context-cache, 0x2 IOTLB, 0x3 device-TLB, 0x4 IEC, 0x5 wait, 0x6 PASID-IOTLB,
0x7 PASID-cache (no-op in scalable mode), 0x8 PASID-device-TLB. 0x9 page group
response and every other type are IQE ("unknown type").
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.qemu.probe import IommuSettings
from harness.qemu.qtest import EDU_BUF, QtestError, QtestMachine
from harness.viommu import PasidDirEntry, PasidEntry, Pgtt, VtdModel, config_from_caps
from harness.viommu.descriptors import desc_type_of
from harness.viommu.invalidation import (
    Desc,
    cc_desc,
    devtlb_desc,
    iec_desc,
    iotlb_desc,
    pc_desc,
    pdevtlb_desc,
    piotlb_desc,
    prg_resp_desc,
    wait_desc,
)

pytestmark = pytest.mark.qemu  # each test drives a QEMU process over qtest (no guest)

PROPS = {**rig.FLTS, "device_iotlb": True}
IQH, IQT, IQA, ICS, GCMD, FSTS = 0x80, 0x88, 0x90, 0x9C, 0x18, rig.FSTS
IQE, ICE, ITE = 0x10, 0x20, 0x40
TE, QIE = 1 << 31, 1 << 26
DW = 1 << 11
STATUS_SLOTS = tuple(rig.STATUS + 4 * i for i in range(8))
PT_IOVA = 0x0500_0000  # inside the 512 MiB of RAM: a pass-through DMA lands here
TYPE_NAMES = {0x1: "context-cache", 0x2: "iotlb", 0x3: "device-tlb", 0x4: "iec", 0x5: "wait",
              0x6: "pasid-iotlb", 0x7: "pasid-cache", 0x8: "pasid-device-tlb",
              0x9: "page-group-response"}

COMPARED: Counter[str] = Counter()
MISMATCHES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rig.print_past_capture(request.config, f"qtest queue oracle: {sum(COMPARED.values())} descriptors compared "
                           f"by type {dict(sorted(COMPARED.items()))}, {len(MISMATCHES)} mismatches")


class Unit:
    """One QEMU and one model fed the same tables, registers and descriptors."""

    def __init__(self, q: QtestMachine, *, wide: bool = True, qs: int = 0, pgtt: int = Pgtt.FIRST_STAGE,
                 enable_qi: bool = True) -> None:
        self.q = q
        self.sid = sid = q.edu_sid
        self.mem, self.b, self.fs = rig.first_stage_rig(sid)
        self.b.set_sm_context(sid, paside=0)  # QEMU here has no ECAP.PASID: PASIDE must be 0
        self.fs.map(rig.IOVA_SRC, rig.SRC_HPA)
        self.leaf = self.fs.map(rig.IOVA_DST, rig.DST_HPA)
        self.fs.map(PT_IOVA, rig.DST_HPA)
        if pgtt != Pgtt.FIRST_STAGE:
            self.b.set_pasid_entry(sid, 0, PasidEntry(p=1, pgtt=pgtt, did=1, aw=2))
        # The model is configured from QEMU's own CAP/ECAP: same DT, IR, PRS, PDS, MAMV.
        self.model = VtdModel(self.mem, config=config_from_caps(q.reg_read(0x8, 8), q.reg_read(0x10, 8)))
        rig.program(q, self.model, self.b, scalable=True)
        self.wide = wide
        self.size = 1 << (qs + 8 - int(wide))
        self.tail = 0
        self.both(IQT, 0, 8)
        self.both(IQA, rig.IQ_BASE | (DW if wide else 0) | qs, 8)
        if enable_qi:
            self.both(GCMD, TE | QIE, 4)
            assert self.q.reg_read(0x1C, 4) & self.model.read_reg(0x1C, 4) & (1 << 26), "QIES"

    # -- registers and memory in both -----------------------------------------------
    def both(self, offset: int, value: int, size: int) -> None:
        self.q.reg_write(offset, value, size)
        self.model.write_reg(offset, value, size)

    def poke(self, addr: int, value: int) -> None:
        self.mem.write_u64(addr, value)
        self.q.write(addr, value.to_bytes(8, "little"))

    def sync_tables(self) -> None:
        for page, data in self.b.written_pages():
            self.q.write(page, bytes(data))

    def state(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        q, m = self.q, self.model
        return ((q.reg_read(IQH, 8), q.reg_read(FSTS, 4) & (IQE | ICE | ITE), q.reg_read(ICS, 4) & 1),
                (m.read_reg(IQH, 8), m.read_reg(FSTS, 4) & (IQE | ICE | ITE), m.read_reg(ICS, 4) & 1))

    def agree(self) -> tuple[int, int, int]:
        qemu, model = self.state()
        if qemu != model:
            MISMATCHES.append(f"(IQH, FSTS errs, ICS.IWC): QEMU {qemu} model {model}")
            raise AssertionError(MISMATCHES[-1])
        return qemu

    # -- the queue ---------------------------------------------------------------------
    def place(self, index: int, d: Desc) -> None:
        width = 32 if self.wide else 16
        raw = b"".join(x.to_bytes(8, "little") for x in d[: width // 8])
        at = rig.IQ_BASE + index * width
        self.q.write(at, raw)
        self.mem.write(at, raw)

    def submit(self, *descs: Desc, count: bool = True) -> tuple[int, int, int]:
        """Write the descriptors at the tail, move IQT in both, return the agreed state."""
        for d in descs:
            self.place(self.tail, d)
            self.tail = (self.tail + 1) % self.size
        self.both(IQT, self.tail << (5 if self.wide else 4), 8)
        st_ = self.agree()
        if count:
            for d in descs:
                COMPARED[TYPE_NAMES.get(desc_type_of(d[0]), "invalid")] += 1
        return st_

    def qemu_rejects_model_accepts(self, d: Desc) -> None:
        """A descriptor QEMU stops on (IQE) and the model runs past; then QEMU alone is
        brought past it (the slot rewritten as a plain IF wait) so both agree again."""
        index = self.tail
        self.place(index, d)
        self.tail += 1
        self.both(IQT, self.tail << 5, 8)
        qemu, model = self.state()
        assert qemu == (index << 5, IQE, 0), f"QEMU accepted {d}: has QEMU changed?"
        assert model == (self.tail << 5, 0, 0)
        self.place(index, wait_desc(if_=1))
        self.q.reg_write(FSTS, IQE, 4)
        self.q.reg_write(IQT, self.tail << 5, 8)
        assert self.q.reg_read(IQH, 8) == self.tail << 5

    def recover(self, index: int) -> None:
        """What Linux does after IQE: overwrite the bad descriptor with a wait, then resume."""
        self.place(index, wait_desc(sw=1, status_data=0xFEED, status_addr=STATUS_SLOTS[7]))
        self.resume()
        assert self.status(STATUS_SLOTS[7]) == 0xFEED

    def resume(self) -> None:
        """Valid IQT, clear IQE, and (QEMU only fetches on an IQT write, see
        iqe-clear-no-resume) write IQT again: both run to the tail."""
        self.both(IQT, self.tail << (5 if self.wide else 4), 8)
        self.both(FSTS, IQE, 4)
        self.both(IQT, self.tail << (5 if self.wide else 4), 8)
        assert self.agree()[:2] == (self.tail << (5 if self.wide else 4), 0)

    def status(self, addr: int) -> int:
        qemu = int.from_bytes(self.q.read(addr, 4), "little")
        assert qemu == self.mem.read_u32(addr), (hex(qemu), hex(self.mem.read_u32(addr)))
        return qemu

    # -- the cache effect, seen through edu DMA ------------------------------------------
    def retarget(self, hpa: int) -> None:
        """The guest moves IOVA_DST to ``hpa`` in the first-stage leaf, no invalidation."""
        self.poke(self.leaf, (self.mem.read_u64(self.leaf) & ~0xFFFF_FFFF_F000) | hpa)

    def dma_lands(self, iova: int = rig.IOVA_DST) -> int | None:
        """Where QEMU's edu write to ``iova`` landed, and the model's answer must match."""
        q = self.q
        for hpa in (rig.DST_HPA, rig.OTHER_HPA, PT_IOVA):
            q.write(hpa, bytes(4096))
        q.edu_dma(EDU_BUF, iova, 4096, to_ram=True)
        landed = [hpa for hpa in (rig.DST_HPA, rig.OTHER_HPA, PT_IOVA) if q.read(hpa, 4096) != bytes(4096)]
        assert len(landed) <= 1, landed
        t = self.model.translate(self.sid, iova, write=True)
        qemu = landed[0] if landed else None
        assert qemu == t.address, f"QEMU DMA landed at {qemu}, model translated to {t.address}"
        return qemu

    def warm(self) -> None:
        """Both caches now hold IOVA_DST at its current target (read + write DMA)."""
        q = self.q
        q.edu_dma(rig.IOVA_SRC, EDU_BUF, 4096, to_ram=False)
        self.model.translate(self.sid, rig.IOVA_SRC)
        self.dma_lands()


def _machine(props: IommuSettings = PROPS) -> QtestMachine:
    return QtestMachine(props)


# ------------------------------------------------------------------------ cache effects
IOTLB_CASES: dict[str, tuple[list[Desc], Desc]] = {
    # name: (non-covering descriptors, the covering one)
    "iotlb-global": ([iotlb_desc(2, did=2), iotlb_desc(3, did=2, addr=rig.IOVA_DST)], iotlb_desc(1)),
    "iotlb-domain": ([iotlb_desc(2, did=2)], iotlb_desc(2, did=1)),
    # An IOTLB PSI removes ALL first-stage entries of its DID whatever the address (spec
    # 6.5.2.3, and QEMU vtd_hash_remove_by_page): another page of DID 1 covers.
    "iotlb-page-other-page-same-did": ([iotlb_desc(3, did=2, addr=rig.IOVA_DST)],
                                       iotlb_desc(3, did=1, addr=rig.IOVA_UNMAPPED)),
    "iotlb-page-am-ih": ([iotlb_desc(3, did=3, addr=0x7F00_0000, am=4, ih=1)],
                         iotlb_desc(3, did=1, addr=0x7F00_0000, am=4, ih=1)),
    "piotlb-pasid": ([piotlb_desc(2, did=1, pasid=5), piotlb_desc(2, did=2, pasid=0)],
                     piotlb_desc(2, did=1, pasid=0)),
    "piotlb-page": ([piotlb_desc(3, did=1, pasid=0, addr=rig.IOVA_SRC),
                     piotlb_desc(3, did=1, pasid=7, addr=rig.IOVA_DST),
                     piotlb_desc(3, did=2, pasid=0, addr=rig.IOVA_DST)],
                    piotlb_desc(3, did=1, pasid=0, addr=rig.IOVA_DST)),
    "piotlb-page-am-ih": ([piotlb_desc(3, did=1, pasid=0, addr=0x7F00_0000, am=1)],  # 0x7F000000-0x7F001FFF
                          piotlb_desc(3, did=1, pasid=0, addr=0x7F00_0000, am=2, ih=1)),
}


def _no_iotlb_effect(sid: int) -> list[Desc]:
    """Descriptors that must leave the IOTLB alone: both keep the stale entry."""
    return [cc_desc(1), cc_desc(2, did=1), cc_desc(3, sid=sid), devtlb_desc(sid, addr=rig.IOVA_DST),
            devtlb_desc(sid, addr=0x7FFF_FFFF_FFFF_F000, s=1), iec_desc(0), iec_desc(1, iidx=3, im=2),
            pc_desc(3), pc_desc(1, did=1, pasid=0), pdevtlb_desc(sid, 0, addr=rig.IOVA_DST),
            pdevtlb_desc(sid, 0, g=1, s=1, addr=0x7FFF_FFFF_FFFF_F000),
            wait_desc(if_=1), wait_desc(sw=1, fn=1, status_data=0x5A5A, status_addr=STATUS_SLOTS[1])]


@pytest.mark.parametrize("case", sorted(IOTLB_CASES))
def test_iotlb_invalidation_stale_before_fresh_after(case: str) -> None:
    non_covering, covering = IOTLB_CASES[case]
    with _machine() as q:
        u = Unit(q)
        sid = u.sid
        u.warm()
        assert u.dma_lands() == rig.DST_HPA
        u.retarget(rig.OTHER_HPA)
        assert u.model.is_stale(sid, rig.IOVA_DST, write=True)
        assert u.dma_lands() == rig.DST_HPA  # QEMU used its stale IOTLB entry too
        for d in non_covering + (_no_iotlb_effect(sid) if case == "iotlb-global" else []):
            u.submit(d)
            assert u.model.is_stale(sid, rig.IOVA_DST, write=True), d
            assert u.dma_lands() == rig.DST_HPA, f"{d} dropped QEMU's entry"
        assert u.submit(covering, wait_desc(sw=1, status_data=0x600D, status_addr=rig.STATUS))[1] == 0
        assert u.status(rig.STATUS) == 0x600D
        assert not u.model.is_stale(sid, rig.IOVA_DST, write=True)
        assert u.dma_lands() == rig.OTHER_HPA


def _new_pasid_dir(u: Unit, target: int) -> int:
    """A second PASID directory whose RID_PASID entry maps IOVA_DST to ``target``."""
    b = u.b
    fs2 = b.fs_tables(4)
    fs2.map(rig.IOVA_SRC, rig.SRC_HPA)
    fs2.map(rig.IOVA_DST, target)
    pdir, table = b.new_page(), b.new_page()
    b.write_u64(pdir, PasidDirEntry(p=1, smptblptr=table).encode())
    b.write_qwords(table, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=fs2.root, aw=2).encode())
    return pdir


CC_COVERING: dict[str, Callable[[int], Desc]] = {
    "global": lambda sid: cc_desc(1),
    "domain": lambda sid: cc_desc(2, did=1),  # scalable-mode context entries carry no DID
    "device": lambda sid: cc_desc(3, sid=sid),
    "device-fm": lambda sid: cc_desc(3, sid=sid | 7, fm=3),
}


@pytest.mark.parametrize("case", sorted(CC_COVERING))
def test_context_cache_invalidation_stale_before_fresh_after(case: str) -> None:
    with _machine() as q:
        u = Unit(q)
        sid = u.sid
        u.warm()
        # Retarget the context entry to another PASID directory (IOVA_DST -> OTHER_HPA).
        u.b.set_sm_context(sid, paside=0, pasid_dir=_new_pasid_dir(u, rig.OTHER_HPA))
        u.sync_tables()
        flush = (pc_desc(3), iotlb_desc(1))  # PASID cache + IOTLB, not the context cache
        u.submit(*flush)
        assert u.model.is_stale(sid, rig.IOVA_DST, write=True)
        assert u.dma_lands() == rig.DST_HPA  # the cached context entry is used in both
        u.submit(cc_desc(3, sid=sid ^ 0x08), *flush)  # another device: not covering
        assert u.model.is_stale(sid, rig.IOVA_DST, write=True)
        assert u.dma_lands() == rig.DST_HPA
        u.submit(CC_COVERING[case](sid), *flush, wait_desc(if_=1))
        assert not u.model.is_stale(sid, rig.IOVA_DST, write=True)
        assert u.dma_lands() == rig.OTHER_HPA


# ------------------------------------------------------------------------ wait descriptor
def test_wait_status_write_interrupt_flag_and_fence_agree() -> None:
    with _machine() as q:
        u = Unit(q)
        assert u.submit(wait_desc(sw=1, status_data=0x1234_5678, status_addr=STATUS_SLOTS[0]))[2] == 0
        assert u.status(STATUS_SLOTS[0]) == 0x1234_5678
        assert u.submit(wait_desc(sw=1, fn=1, status_data=0xCAFE, status_addr=STATUS_SLOTS[1]))[2] == 0
        assert u.status(STATUS_SLOTS[1]) == 0xCAFE
        assert u.submit(wait_desc(if_=1))[2] == 1  # ICS.IWC set in both
        assert u.submit(wait_desc(if_=1, fn=1))[2] == 1  # stays set
        u.both(ICS, 1, 4)  # RW1C
        assert u.agree()[2] == 0
        assert u.submit(wait_desc(if_=1, status_data=0x77, status_addr=STATUS_SLOTS[2]))[2] == 1
        assert u.status(STATUS_SLOTS[2]) == 0  # IF alone writes no status


# ------------------------------------------------------------------------ error rules
ERR_CASES: dict[str, tuple[bool, Desc]] = {
    # name: (256-bit queue?, descriptor both must reject with IQE)
    "type-0": (True, (0, 0, 0, 0)),
    "type-0xa": (True, (0xA, 0, 0, 0)),
    "type-0xf": (True, (0xF, 0, 0, 0)),
    "type-0x15-high-bits": (True, (0x5 | 1 << 9 | 1 << 5, 0, 0, 0)),
    "page-group-response-no-prs": (True, prg_resp_desc(0x08, prgi=1)),
    "cc-g0": (True, (0x1, 0, 0, 0)),
    "cc-rsvd-qw0": (True, (cc_desc(1)[0] | 1 << 6, 0, 0, 0)),
    "cc-rsvd-qw1": (True, (cc_desc(1)[0], 1, 0, 0)),
    "iotlb-g0": (True, (0x2, 0, 0, 0)),
    "iotlb-rsvd-qw0": (True, (iotlb_desc(1)[0] | 1 << 8, 0, 0, 0)),
    "iotlb-rsvd-qw1": (True, (iotlb_desc(3, did=1)[0], 1 << 7, 0, 0)),
    "iotlb-am-over-mamv": (True, iotlb_desc(3, did=1, am=19)),
    "devtlb-rsvd-qw0": (True, (devtlb_desc(8)[0] | 1 << 4, 0, 0, 0)),
    "devtlb-rsvd-qw1": (True, (devtlb_desc(8)[0], 1 << 1, 0, 0)),
    "iec-rsvd-qw0": (True, (iec_desc()[0] | 1 << 5, 0, 0, 0)),
    "iec-rsvd-qw1": (True, (iec_desc()[0], 1 << 63, 0, 0)),
    "wait-rsvd-qw0": (True, (wait_desc(sw=1)[0] | 1 << 8, STATUS_SLOTS[3], 0, 0)),
    "wait-status-addr-low-bits": (True, (wait_desc(sw=1)[0], STATUS_SLOTS[3] | 1, 0, 0)),
    "wait-pd-without-pds": (True, wait_desc(sw=1, pd=1, status_addr=STATUS_SLOTS[3])),
    "piotlb-g0": (True, piotlb_desc(0, did=1, pasid=0)),
    "piotlb-g1": (True, piotlb_desc(1, did=1, pasid=0)),
    "piotlb-rsvd-qw0": (True, (piotlb_desc(2, 1, 0)[0] | 1 << 6, 0, 0, 0)),
    "piotlb-rsvd-qw1": (True, (piotlb_desc(3, 1, 0)[0], 1 << 8, 0, 0)),
    "pdevtlb-rsvd-qw1": (True, (pdevtlb_desc(8, 0)[0], 1 << 1, 0, 0)),
    "128-bit-desc-qw2-in-256-queue": (True, (iotlb_desc(1)[0], 0, 1, 0)),
    "128-bit-desc-qw3-in-256-queue": (True, (wait_desc(if_=1)[0], 0, 0, 1 << 63)),
    "pdevtlb-qw2": (True, (pdevtlb_desc(8, 0)[0], 0, 1 << 5, 0)),
    "piotlb-in-128-queue": (False, piotlb_desc(2, did=1, pasid=0)),
    "pdevtlb-in-128-queue": (False, pdevtlb_desc(8, 0)),
    "cc-rsvd-in-128-queue": (False, (cc_desc(3)[0] | 1 << 12, 0, 0, 0)),
}


_SHARED: dict[bool, tuple[QtestMachine, Unit]] = {}


@pytest.fixture(scope="module")
def error_units() -> Iterator[Callable[[bool], Unit]]:
    """One machine per queue width for all error cases (each case leaves the queue
    recovered); a machine whose case failed is thrown away."""

    def get(wide: bool) -> Unit:
        if wide not in _SHARED:
            q = _machine().__enter__()
            _SHARED[wide] = (q, Unit(q, wide=wide))
        return _SHARED[wide][1]

    yield get
    for q, _ in _SHARED.values():
        q.__exit__(None, None, None)
    _SHARED.clear()


@pytest.mark.parametrize("case", sorted(ERR_CASES))
def test_invalid_descriptor_sets_iqe_and_holds_iqh_in_both(case: str, error_units: Callable[[bool], Unit]) -> None:
    wide, bad = ERR_CASES[case]
    shift = 5 if wide else 4
    u = error_units(wide)
    try:
        u.submit(wait_desc(sw=1, status_data=1, status_addr=STATUS_SLOTS[0]))
        index = u.tail
        u.both(ICS, 1, 4)
        for slot in STATUS_SLOTS[1:]:
            u.poke(slot & ~7, 0)
        iqh, fsts, _ = u.submit(bad, wait_desc(sw=1, status_data=2, status_addr=STATUS_SLOTS[1]))
        assert (iqh, fsts) == (index << shift, IQE), "both stop at the bad descriptor with IQE"
        assert u.status(STATUS_SLOTS[1]) == 0  # the wait behind it was not fetched
        # Writing IQT while IQE is set fetches nothing in either.
        u.both(IQT, u.tail << shift, 8)
        assert u.agree()[:2] == (index << shift, IQE)
        u.recover(index)
        assert u.status(STATUS_SLOTS[1]) == 2
    except BaseException:
        q, _ = _SHARED.pop(wide)
        q.__exit__(None, None, None)
        raise


def test_pasid_cache_in_a_128_bit_queue_is_accepted_by_both() -> None:
    """0x7 is not one of the 256-bit-only types (docs/VTD_FACTS.md §6.1): fine in a 128-bit queue."""
    with _machine() as q:
        u = Unit(q, wide=False)
        assert u.submit(pc_desc(3), pc_desc(0, did=1), pc_desc(1, did=1, pasid=0), wait_desc(if_=1)) == (4 << 4, 0, 1)


@pytest.mark.parametrize("wide", [True, False], ids=["256", "128"])
@pytest.mark.parametrize("qs", [0, 1])
def test_tail_beyond_queue_size_is_iqe_in_both(wide: bool, qs: int) -> None:
    shift = 5 if wide else 4
    with _machine() as q:
        u = Unit(q, wide=wide, qs=qs)
        assert u.size == 1 << (qs + 8 - int(wide))
        u.submit(wait_desc(sw=1, status_data=3, status_addr=STATUS_SLOTS[0]))
        u.place(1, wait_desc(sw=1, status_data=4, status_addr=STATUS_SLOTS[1]))
        u.both(IQT, u.size << shift, 8)  # one past the last slot
        assert u.agree() == (1 << shift, IQE, 0)
        assert u.status(STATUS_SLOTS[1]) == 0
        u.both(IQT, (u.size - 1) << shift, 8)  # the last slot: valid, but IQE still set
        assert u.agree() == (1 << shift, IQE, 0)
        u.tail = 2
        u.resume()
        assert u.status(STATUS_SLOTS[1]) == 4


def test_tail_misaligned_in_a_256_bit_queue_is_iqe_in_both() -> None:
    with _machine() as q:
        u = Unit(q)
        u.submit(wait_desc(sw=1, status_data=5, status_addr=STATUS_SLOTS[0]))
        u.place(1, wait_desc(sw=1, status_data=6, status_addr=STATUS_SLOTS[1]))
        u.both(IQT, (2 << 5) | 0x10, 8)  # bit 4: half a 256-bit descriptor
        assert u.agree() == (1 << 5, IQE, 0)
        assert u.status(STATUS_SLOTS[1]) == 0
        u.tail = 2
        u.resume()
        assert u.status(STATUS_SLOTS[1]) == 6


def test_tail_bit_4_is_a_valid_index_in_a_128_bit_queue() -> None:
    with _machine() as q:
        u = Unit(q, wide=False)
        assert u.submit(wait_desc(sw=1, status_data=7, status_addr=STATUS_SLOTS[0])) == (1 << 4, 0, 0)
        assert u.status(STATUS_SLOTS[0]) == 7


def test_queue_set_up_before_qie_runs_when_qi_is_enabled() -> None:
    with _machine() as q:
        u = Unit(q, enable_qi=False)
        u.place(0, wait_desc(sw=1, status_data=8, status_addr=STATUS_SLOTS[0]))
        u.place(1, wait_desc(if_=1))
        u.both(IQT, 2 << 5, 8)
        assert u.agree() == (0, 0, 0)  # QI off: nothing fetched
        u.both(GCMD, TE | QIE, 4)
        assert u.agree() == (2 << 5, 0, 1)
        assert u.status(STATUS_SLOTS[0]) == 8
        COMPARED["wait"] += 2


def test_queue_wraps_around_in_both() -> None:
    with _machine() as q:
        u = Unit(q)
        u.both(IQH, 0x40, 8)  # IQH is read-only to software in both
        assert u.agree()[0] == 0
        assert u.submit(*[wait_desc(if_=1)] * (u.size - 2)) == ((u.size - 2) << 5, 0, 1)
        for i in range(5):  # across the end of the queue, one at a time
            u.submit(wait_desc(sw=1, status_data=0x100 + i, status_addr=STATUS_SLOTS[i]))
            assert u.status(STATUS_SLOTS[i]) == 0x100 + i
        assert u.tail == 3 and u.agree()[0] == 3 << 5


# ------------------------------------------------------------------------ hypothesis
_ADDR = st.integers(0, (1 << 36) - 1).map(lambda a: a << 12)
_SID = st.integers(0, 0xFFFF)
_DID = st.integers(0, 0xFFFF)
_PASID = st.integers(0, (1 << 20) - 1)
VALID: st.SearchStrategy[Desc] = st.one_of(
    st.builds(lambda g, did, sid, fm: cc_desc(g, did=did, sid=sid, fm=fm), st.integers(1, 3), _DID, _SID,
              st.integers(0, 3)),
    st.builds(lambda g, did, addr, am, ih, dr, dw: iotlb_desc(g, did=did, addr=addr, am=am, ih=ih, dr=dr, dw=dw),
              st.integers(1, 3), _DID, _ADDR, st.integers(0, 18), st.integers(0, 1), st.integers(0, 1),
              st.integers(0, 1)),
    st.builds(lambda sid, addr, s, mip: devtlb_desc(sid, addr=addr, s=s, mip=mip), _SID, _ADDR,
              st.integers(0, 1), st.integers(0, 31)),
    st.builds(lambda g, iidx, im: iec_desc(g, iidx=iidx, im=im), st.integers(0, 1), st.integers(0, 0xFFFF),
              st.integers(0, 31)),
    st.builds(lambda slot, data, fn: wait_desc(sw=1, fn=fn, status_data=data, status_addr=STATUS_SLOTS[slot]),
              st.integers(0, 7), st.integers(0, 0xFFFF_FFFF), st.integers(0, 1)),
    st.builds(lambda fn: wait_desc(if_=1, fn=fn), st.integers(0, 1)),
    st.builds(lambda g, did, pasid, addr, am, ih: piotlb_desc(g, did, pasid, addr=addr, am=am, ih=ih),
              st.integers(2, 3), _DID, _PASID, _ADDR, st.integers(0, 18), st.integers(0, 1)),
    st.builds(lambda g, did, pasid: pc_desc(g, did=did, pasid=pasid), st.sampled_from([0, 1, 3]), _DID, _PASID),
    st.builds(lambda sid, pasid, g, s, addr, mip: pdevtlb_desc(sid, pasid, g=g, s=s, addr=addr, mip=mip),
              _SID, _PASID, st.integers(0, 1), st.integers(0, 1), _ADDR, st.integers(0, 31)),
)


@pytest.fixture(scope="module")
def shared_unit() -> Iterator[Unit]:
    with _machine() as q:
        yield Unit(q)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(VALID, min_size=1, max_size=12), clear_iwc=st.booleans())
def test_random_valid_batches_agree(shared_unit: Unit, batch: list[Desc], clear_iwc: bool) -> None:
    u = shared_unit
    if clear_iwc:
        u.both(ICS, 1, 4)
    iqh, fsts, _ = u.submit(*batch)
    assert (iqh, fsts) == (u.tail << 5, 0), "a valid batch must run to the tail"
    for slot in STATUS_SLOTS:
        u.status(slot)


# ------------------------------------------------------------------------ divergences
def test_divergence_wait_sw_and_if() -> None:
    """QEMU 10.0 asserts !(IF) when SW is set: the process aborts. The spec (and the
    model) do both: the status write and ICS.IWC. If this fails, QEMU changed."""
    from harness.viommu.divergences import BY_ID

    assert "wait-sw-and-if" in BY_ID
    both = wait_desc(sw=1, if_=1, status_data=0xB0B0, status_addr=STATUS_SLOTS[0])
    q = _machine()
    with pytest.raises(QtestError, match="died"):
        with q:
            u = Unit(q)
            u.place(0, both)
            u.model.write_reg(IQT, 1 << 5, 8)
            assert u.model.read_reg(IQH, 8) == 1 << 5 and u.model.read_reg(ICS, 4) & 1
            assert u.mem.read_u32(STATUS_SLOTS[0]) == 0xB0B0
            q.reg_write(IQT, 1 << 5, 8)  # QEMU dies here
    assert q.proc is not None
    assert q.proc.returncode == -signal.SIGABRT, f"QEMU exited with {q.proc.returncode}: has QEMU changed?"
    assert "Assertion" in (q.tmp / "stderr").read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(q.proc.pid, 0)  # nothing of that QEMU is left
    COMPARED["wait"] += 1


def test_divergence_pasid_cache_noop() -> None:
    """The RID_PASID entry goes from pass-through to first-stage, and the guest does what
    the spec asks: PASID-cache invalidation, PASID-IOTLB invalidation, wait. The model drops
    the cached PT entry and translates; QEMU, whose PASID-cache invalidation is a no-op,
    keeps using the old PT entry (the edu address space stays switched to pass-through)
    until a context-cache invalidation. QEMU also accepts a PASID-cache descriptor with
    reserved bits or the reserved granularity 10b. If this fails, QEMU changed."""
    from harness.viommu.divergences import BY_ID

    assert "pasid-cache-noop" in BY_ID
    with _machine() as q:
        u = Unit(q, pgtt=Pgtt.PASS_THROUGH)
        sid = u.sid
        q.edu_dma(rig.SRC_HPA, EDU_BUF, 4096, to_ram=False)  # load the pattern (pass-through)
        assert u.dma_lands(PT_IOVA) == PT_IOVA  # pass-through in both
        pe = u.b.pasid_entry_address(sid, 0)
        u.b.write_qwords(pe, PasidEntry(p=1, pgtt=Pgtt.FIRST_STAGE, did=1, flptptr=u.fs.root, aw=2).encode())
        u.sync_tables()
        u.submit(pc_desc(1, did=1, pasid=0), piotlb_desc(2, did=1, pasid=0),
                 wait_desc(sw=1, status_data=9, status_addr=STATUS_SLOTS[0]))
        assert not u.model.is_stale(sid, PT_IOVA, write=True)
        assert u.model.translate(sid, PT_IOVA, write=True).address == rig.DST_HPA
        q.write(PT_IOVA, bytes(4096))
        q.write(rig.DST_HPA, bytes(4096))
        q.edu_dma(EDU_BUF, PT_IOVA, 4096, to_ram=True)
        assert q.read(rig.DST_HPA, 4096) == bytes(4096), "QEMU dropped the PT entry: has QEMU changed?"
        assert q.read(PT_IOVA, 4096) != bytes(4096)  # QEMU still passes through
        # A context-cache invalidation makes QEMU catch up; then both agree again.
        u.submit(cc_desc(3, sid=sid), wait_desc(if_=1))
        assert u.dma_lands(PT_IOVA) == rig.DST_HPA
        # No reserved-field check in QEMU: IQE in the model only.
        for bad in (pc_desc(2, did=1), (pc_desc(3)[0] | 1 << 6, 0, 0, 0), (pc_desc(3)[0], 1, 0, 0)):
            u.place(u.tail, bad)
            u.tail = (u.tail + 1) % u.size
            u.both(IQT, u.tail << 5, 8)
            qemu, model = u.state()
            assert qemu == (u.tail << 5, 0, 1), f"QEMU rejected {bad}: has QEMU changed?"
            assert model == ((u.tail - 1) << 5, IQE, 1)
            u.place(u.tail - 1, wait_desc(if_=1))  # repaired: ICS.IWC is already set in both
            u.resume()
            COMPARED["pasid-cache"] += 1


def test_divergence_wait_neither_sw_nor_if() -> None:
    """A wait with neither SW nor IF (an ordering-only wait) is IQE in QEMU 10.0; the spec
    defines no such error and the model completes it. If this fails, QEMU changed."""
    from harness.viommu.divergences import BY_ID

    assert "wait-neither-sw-nor-if" in BY_ID
    with _machine() as q:
        u = Unit(q)
        for d in (wait_desc(), wait_desc(fn=1)):
            u.qemu_rejects_model_accepts(d)
            u.both(ICS, 1, 4)
            COMPARED["wait"] += 1


def test_divergence_devtlb_pfsid_reserved() -> None:
    """PFSID (qw0 15:12 and 63:52) of device-TLB (0x3) and PASID-device-TLB (0x8)
    descriptors is IQE in QEMU 10.0 (its reserved masks cover it); the spec defines the
    field and the model accepts it. If this fails, QEMU changed."""
    from harness.viommu.divergences import BY_ID

    assert "devtlb-pfsid-reserved" in BY_ID
    with _machine() as q:
        u = Unit(q)
        for d in (devtlb_desc(u.sid, pfsid=0x0012), devtlb_desc(u.sid, pfsid=0x1230),
                  pdevtlb_desc(u.sid, 0, pfsid=0x0003)):
            u.qemu_rejects_model_accepts(d)
            u.both(ICS, 1, 4)
            COMPARED[TYPE_NAMES[desc_type_of(d[0])]] += 1


def test_divergence_iqe_clear_no_resume() -> None:
    """After IQE, the model resumes fetching as soon as software clears FSTS.IQE; QEMU
    10.0 fetches nothing until the next IQT write. If this fails, QEMU changed."""
    from harness.viommu.divergences import BY_ID

    assert "iqe-clear-no-resume" in BY_ID
    with _machine() as q:
        u = Unit(q)
        u.submit((0xA, 0, 0, 0), wait_desc(sw=1, status_data=0xAB, status_addr=STATUS_SLOTS[0]))
        u.place(0, wait_desc(if_=1))  # repaired
        u.both(FSTS, IQE, 4)
        qemu, model = u.state()
        assert qemu == (0, 0, 0), f"QEMU resumed on the IQE clear: has QEMU changed? {qemu}"
        assert model == (2 << 5, 0, 1)
        u.both(IQT, 2 << 5, 8)
        assert u.agree() == (2 << 5, 0, 1)
        assert u.status(STATUS_SLOTS[0]) == 0xAB
