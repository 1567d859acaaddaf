"""Queued invalidation: queue mechanics, every descriptor type, error reporting."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.viommu import GuestMemory, Reg, VtdModel
from harness.viommu.invalidation import (
    Desc,
    DescriptorError,
    ats_range,
    cc_desc,
    decode_descriptor,
    devtlb_desc,
    iec_desc,
    iotlb_desc,
    pc_desc,
    pdevtlb_desc,
    piotlb_desc,
    prg_resp_desc,
    wait_desc,
)
from harness.viommu.registers import EventKind, Fsts, Gcmd, Gsts, IqeCode

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

STATUS = 0x70_0000


@pytest.fixture
def q(sm: Rig) -> Rig:
    sm.qi_setup(wide=True)
    return sm


def iqerr(r: Rig) -> tuple[bool, int]:
    return bool(r.model.read_reg(Reg.FSTS) & Fsts.IQE), r.model.read_reg(Reg.IQERCD, 8) & 0xF


def test_enable_sets_qies(q: Rig) -> None:
    assert q.model.read_reg(Reg.GSTS) & Gsts.QIES
    assert q.model.read_reg(Reg.IQH, 8) == 0


def test_wait_status_write_and_head(q: Rig) -> None:
    tail = q.submit(wait_desc(sw=1, status_data=0x1234_5678, status_addr=STATUS))
    assert q.mem.read_u32(STATUS) == 0x1234_5678
    assert q.model.read_reg(Reg.IQH, 8) == tail == 32  # 256-bit: index * 32


def test_128bit_queue_indexing(rig_factory: RigFactory) -> None:
    r = rig_factory(True)
    r.qi_setup(wide=False)
    r.submit(wait_desc(sw=1, status_data=1, status_addr=STATUS), cc_desc(1))
    assert r.model.read_reg(Reg.IQH, 8) == 32  # two 16-byte descriptors


def test_wait_interrupt_flag(q: Rig) -> None:
    m = q.model
    m.write_reg(Reg.IEADDR, 0xFEE0_1000)
    m.write_reg(Reg.IEDATA, 0x55)
    m.write_reg(Reg.IECTL, 0)
    q.submit(wait_desc(if_=1))
    assert m.read_reg(Reg.ICS) == 1
    assert [e.kind for e in m.regs.msi_log] == [EventKind.INV_COMPLETION]
    assert m.regs.msi_log[0].data == 0x55
    q.submit(wait_desc(if_=1))  # IWC still set: no new event
    assert len(m.regs.msi_log) == 1
    m.write_reg(Reg.ICS, 1)
    assert m.read_reg(Reg.ICS) == 0
    q.submit(wait_desc(if_=1))
    assert len(m.regs.msi_log) == 2


def test_masked_completion_event_pends(q: Rig) -> None:
    m = q.model
    q.submit(wait_desc(if_=1))
    assert m.read_reg(Reg.IECTL) == (1 << 31) | (1 << 30)
    m.write_reg(Reg.ICS, 1)  # clearing IWC clears IP
    assert m.read_reg(Reg.IECTL) == 1 << 31


def test_wait_without_sw_or_if_is_valid(q: Rig) -> None:
    q.submit(wait_desc(fn=1))
    assert iqerr(q) == (False, 0)
    assert q.model.read_reg(Reg.IQH, 8) == 32


@pytest.mark.parametrize("t", [0x0, 0xA, 0xF, 0x10])
def test_invalid_type(q: Rig, t: int) -> None:
    bad = ((t & 0xF) | ((t >> 4) << 9), 0, 0, 0)
    q.submit(wait_desc(sw=1, status_data=1, status_addr=STATUS), bad,
             wait_desc(sw=1, status_data=2, status_addr=STATUS))
    assert iqerr(q) == (True, IqeCode.INVALID_TYPE)
    assert q.model.read_reg(Reg.IQH, 8) == 32  # stays on the bad descriptor
    assert q.mem.read_u32(STATUS) == 1  # the wait behind it did not run


def test_processing_resumes_when_iqe_cleared(q: Rig) -> None:
    q.submit(wait_desc(sw=1, status_data=1, status_addr=STATUS), (0xA, 0, 0, 0),
             wait_desc(sw=1, status_data=2, status_addr=STATUS))
    # Software replaces the bad descriptor (as Linux does) then clears IQE.
    base = q.extra["qi"][0]
    for i, v in enumerate(wait_desc(sw=1, status_data=3, status_addr=STATUS + 8)):
        q.mem.write_u64(base + 32 + 8 * i, v)
    q.model.write_reg(Reg.FSTS, Fsts.IQE)
    assert q.mem.read_u32(STATUS + 8) == 3 and q.mem.read_u32(STATUS) == 2
    assert q.model.read_reg(Reg.IQH, 8) == q.model.read_reg(Reg.IQT, 8)


RESERVED_CASES = [
    ("cc", (cc_desc(1)[0] | 1 << 6, 0, 0, 0)),
    ("cc-qw1", (cc_desc(1)[0], 1, 0, 0)),
    ("cc-g0", cc_desc(0)),
    ("iotlb", (iotlb_desc(1)[0] | 1 << 40, 0, 0, 0)),
    ("iotlb-qw1", (iotlb_desc(3)[0], 1 << 8, 0, 0)),
    ("iotlb-am", iotlb_desc(3, did=1, am=19)),
    ("iotlb-g0", iotlb_desc(0)),
    ("devtlb", (devtlb_desc(0x18)[0] | 1 << 4, 0, 0, 0)),
    ("devtlb-qw1", (devtlb_desc(0x18)[0], 1 << 3, 0, 0)),
    ("iec", (iec_desc()[0] | 1 << 12, 0, 0, 0)),
    ("wait", (wait_desc(sw=1)[0] | 1 << 8, 0, 0, 0)),
    ("wait-qw1", (wait_desc(sw=1)[0], 0x1, 0, 0)),
    ("piotlb", (piotlb_desc(2, 1, 1)[0] | 1 << 60, 0, 0, 0)),
    ("piotlb-g1", piotlb_desc(1, 1, 1)),
    ("piotlb-am", piotlb_desc(3, 1, 1, am=19)),
    ("pc", (pc_desc(1, 1, 1)[0] | 1 << 6, 0, 0, 0)),
    ("pc-g2", pc_desc(2, 1, 1)),
    ("pdevtlb-qw1", (pdevtlb_desc(0x18, 1)[0], 1 << 2, 0, 0)),
    ("prg", (prg_resp_desc(0x18, 1)[0] | 1 << 8, 0, 0, 0)),
    ("prg-qw1", (prg_resp_desc(0x18, 1)[0], 1 << 12, 0, 0)),
    ("prg-rc", prg_resp_desc(0x18, 1, rc=2)),
    ("upper-half", (cc_desc(1)[0], 0, 1, 0)),
]


@pytest.mark.parametrize(("name", "desc"), RESERVED_CASES, ids=[c[0] for c in RESERVED_CASES])
def test_reserved_fields(q: Rig, name: str, desc: tuple[int, int, int, int]) -> None:
    q.submit(desc)
    assert iqerr(q) == (True, IqeCode.RESERVED_FIELD), name
    assert q.model.read_reg(Reg.IQH, 8) == 0


def test_pd_reserved_without_pds(rig_factory: RigFactory) -> None:
    r = rig_factory(True, pds=False)
    r.qi_setup()
    r.submit(wait_desc(sw=1, pd=1, status_addr=STATUS))
    assert iqerr(r) == (True, IqeCode.RESERVED_FIELD)


def test_pasid_descriptors_need_256bit_queue(rig_factory: RigFactory) -> None:
    r = rig_factory(True)
    r.qi_setup(wide=False)
    r.submit(piotlb_desc(2, 1, 1))
    assert iqerr(r) == (True, IqeCode.INVALID_WIDTH)


@pytest.mark.parametrize(("opt", "desc"), [
    ({"prs": False}, prg_resp_desc(0x18, 1)),
    ({"device_iotlb": False}, devtlb_desc(0x18)),
    ({"device_iotlb": False}, pdevtlb_desc(0x18, 1)),
    ({"intremap": False}, iec_desc()),
])
def test_type_needs_capability(rig_factory: RigFactory, opt: dict[str, bool], desc: Desc) -> None:
    r = rig_factory(True, **opt)
    r.qi_setup()
    r.submit(desc)
    assert iqerr(r) == (True, IqeCode.INVALID_TYPE)


def test_pasid_descriptors_invalid_in_legacy_only_unit() -> None:
    m = VtdModel(GuestMemory(16 << 20), scalable_mode=False)
    base = 0x80_0000
    m.write_reg(Reg.IQA, base, 8)
    m.write_reg(Reg.GCMD, Gcmd.QIE)
    for i, v in enumerate(pc_desc(3)[:2]):
        m.memory.write_u64(base + 8 * i, v)
    m.write_reg(Reg.IQT, 16, 8)
    assert m.read_reg(Reg.FSTS) & Fsts.IQE
    assert m.read_reg(Reg.IQERCD, 8) & 0xF == IqeCode.INVALID_TYPE


def test_tail_errors(q: Rig) -> None:
    q.model.write_reg(Reg.IQT, 0x10, 8)  # bit 4 set in a 256-bit queue
    assert iqerr(q) == (True, IqeCode.TAIL_MISALIGNED)
    q.model.write_reg(Reg.IQT, 200 * 32, 8)  # 128 entries in a 1-page 256-bit queue
    q.model.write_reg(Reg.FSTS, Fsts.IQE)  # clearing IQE resumes and meets the bad tail
    assert iqerr(q) == (True, IqeCode.INVALID_TAIL)


def test_fetch_error(sm: Rig) -> None:
    sm.qi_setup(base=1 << 40)
    sm.model.write_reg(Reg.IQT, 32, 8)
    assert iqerr(sm) == (True, IqeCode.FETCH_ERROR)


def test_queue_wraps(q: Rig) -> None:
    for batch in range(5):
        q.submit(*[wait_desc(sw=1, status_data=batch * 100 + i, status_addr=STATUS)
                   for i in range(50)])
    assert q.mem.read_u32(STATUS) == 449
    assert q.model.iq.processed == 250
    assert q.model.read_reg(Reg.IQH, 8) == (250 % 128) * 32


def test_qie_disable_rules(q: Rig) -> None:
    m = q.model
    q.submit(wait_desc(sw=1, status_addr=STATUS))
    m.write_reg(Reg.GCMD, 0)
    assert not m.read_reg(Reg.GSTS) & Gsts.QIES
    assert m.read_reg(Reg.IQH, 8) == 0
    # Descriptors queued while disabled run when QI is enabled again.
    m.write_reg(Reg.IQT, 0, 8)
    base = q.extra["qi"][0]
    for i, v in enumerate(wait_desc(sw=1, status_data=9, status_addr=STATUS)):
        q.mem.write_u64(base + 8 * i, v)
    m.write_reg(Reg.IQT, 32, 8)
    assert q.mem.read_u32(STATUS) != 9
    m.write_reg(Reg.GCMD, Gcmd.QIE)
    assert q.mem.read_u32(STATUS) == 9


def test_qie_disable_refused_with_work_pending(q: Rig) -> None:
    m = q.model
    q.submit((0xA, 0, 0, 0))  # stuck on an IQE... which permits disabling
    m.write_reg(Reg.FSTS, Fsts.IQE)  # resume: still bad, IQE again
    m.regs.set(Reg.FSTS, 0)
    m.write_reg(Reg.GCMD, 0)
    assert m.read_reg(Reg.GSTS) & Gsts.QIES  # IQH != IQT and no error: refused


def test_ite_stops_and_records_sid(q: Rig) -> None:
    q.model.iq.ite_sids.add(0x18)
    q.submit(devtlb_desc(0x18, s=1, addr=0x7FFF_FFFF_FFFF_F000),
             wait_desc(sw=1, status_data=5, status_addr=STATUS))
    m = q.model
    assert m.read_reg(Reg.FSTS) & Fsts.ITE
    assert (m.read_reg(Reg.IQERCD, 8) >> 32) & 0xFFFF == 0x18
    assert q.mem.read_u32(STATUS) == 0  # wait held back
    q.model.iq.ite_sids.clear()
    m.write_reg(Reg.FSTS, Fsts.ITE)
    assert q.mem.read_u32(STATUS) == 5


def test_ice_records_sid(q: Rig) -> None:
    q.model.iq.ice_sids.add(0x20)
    q.submit(pdevtlb_desc(0x20, 3), wait_desc(sw=1, status_data=5, status_addr=STATUS))
    assert q.model.read_reg(Reg.FSTS) & Fsts.ICE
    assert q.model.read_reg(Reg.IQERCD, 8) >> 48 == 0x20
    assert q.mem.read_u32(STATUS) == 5


def test_iqe_raises_fault_event(q: Rig) -> None:
    q.model.write_reg(Reg.FECTL, 0)
    q.submit((0xA, 0, 0, 0))
    assert [e.kind for e in q.model.regs.msi_log] == [EventKind.FAULT]


@pytest.mark.parametrize(("s", "addr", "base", "size"), [
    (0, 0x1234_5000, 0x1234_5000, 4096),
    (1, 0x1234_4000, 0x1234_4000, 8192),  # no trailing ones: 8 KiB
    (1, 0x1234_5000, 0x1234_4000, 16384),  # one trailing one: 16 KiB
    (1, 0x7FFF_FFFF_FFFF_F000, 0, 1 << 64),  # "all"
])
def test_ats_range(s: int, addr: int, base: int, size: int) -> None:
    assert ats_range(addr, s) == (base, size)


def test_decode_uses_shared_decoder_and_unit_caps() -> None:
    from harness.viommu import descriptors as dsc
    caps = dsc.QiCaps()
    d = decode_descriptor(piotlb_desc(3, 7, 0x42, addr=0x5000, am=2, ih=1), wide=True,
                          caps=caps, dt=True, ir=True, mamv=18, drain_ok=True)
    assert isinstance(d, dsc.PasidIotlbInv)
    assert (d.g, d.did, d.pasid, d.am, d.ih, d.addr) == (3, 7, 0x42, 2, 1, 0x5000)
    with pytest.raises(DescriptorError) as ei:
        decode_descriptor(piotlb_desc(3, 7, 0x42, am=5), wide=True, caps=caps, dt=True,
                          ir=True, mamv=4, drain_ok=True)
    assert ei.value.code == IqeCode.RESERVED_FIELD
    with pytest.raises(DescriptorError) as ei:
        decode_descriptor(iotlb_desc(2, did=1, dr=1), wide=True, caps=caps, dt=True, ir=True,
                          mamv=18, drain_ok=False)
    assert ei.value.code == IqeCode.RESERVED_FIELD


@pytest.mark.parametrize("desc", [
    cc_desc(3, did=5, sid=0x18, fm=2), iotlb_desc(3, did=4, addr=0x9000, am=1, ih=1),
    devtlb_desc(0x18, addr=0x5000, s=1, pfsid=0x123, mip=3), iec_desc(1, iidx=9, im=2),
    wait_desc(sw=1, if_=1, fn=1, pd=1, status_data=0xAB, status_addr=0x1004),
    piotlb_desc(2, 3, 0x77), pc_desc(1, 2, 0x99), pdevtlb_desc(0x20, 5, g=1, s=1, addr=0x3000),
    prg_resp_desc(0x18, 0x1FF, rc=1, pasid=8, lpig=1),
])
def test_encoders_roundtrip_through_shared_decoder(desc: Desc) -> None:
    from harness.viommu import descriptors as dsc
    d = dsc.decode_inv_desc(*desc, width=256)
    assert not isinstance(d, dsc.InvalidDescriptor), d
    assert d.encode(256) == desc
