"""Page request queue: descriptor format, PPR/PRO, overflow, events, responses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.viommu import FaultReason, Reg, VtdModel
from harness.viommu.descriptors import PageRequest
from harness.viommu.faults import RequestType
from harness.viommu.invalidation import prg_resp_desc
from harness.viommu.prq import PageRequestStatus
from harness.viommu.registers import EventKind, IqeCode

if TYPE_CHECKING:
    from conftest import Rig, RigFactory  # tests/viommu/conftest.py (pytest puts tests/viommu on sys.path)

FR = FaultReason
SID, PASID = 0x0018, 0x42
PQ = 0x60_0000
S = PageRequestStatus


@pytest.fixture
def pr(sm: Rig) -> Rig:
    sm.b.set_sm_context(SID, pre=1, dte=1)
    sm.enable()
    sm.qi_setup()
    m = sm.model
    m.write_reg(Reg.PQH, 0, 8)
    m.write_reg(Reg.PQT, 0, 8)
    m.write_reg(Reg.PQA, PQ | 0, 8)  # one page: 128 descriptors
    m.write_reg(Reg.PEADDR, 0xFEE0_2000)
    m.write_reg(Reg.PEDATA, 0x77)
    m.write_reg(Reg.PECTL, 0)
    return sm


def _events(m: VtdModel) -> int:
    return sum(1 for e in m.regs.msi_log if e.kind is EventKind.PAGE_REQUEST)


def test_request_written_to_queue(pr: Rig) -> None:
    m = pr.model
    r = m.page_request(SID, 0x7F00_1234_5678, pasid=PASID, write=True, execute=True,
                       privileged=True, prgi=0x155, last=True)
    assert r.status is S.QUEUED and r.offset == 0
    assert m.read_reg(Reg.PQT, 8) == 32 and m.read_reg(Reg.PRS) & 1
    q0, q1, q2, q3 = pr.mem.read_qwords(PQ, 4)
    assert q0 & 0xFF == 1  # type: page request
    assert (q0 >> 8) & 1 == 1 and (q0 >> 16) & 0xFFFF == SID and (q0 >> 32) & 0xFFFFF == PASID
    assert (q0 >> 52) & 1 == 1 and (q0 >> 53) & 1 == 1  # ER, PMR
    assert q1 & 1 == 0 and (q1 >> 1) & 1 == 1  # RD=0, WR=1
    assert (q1 >> 2) & 1 == 1 and (q1 >> 3) & 0x1FF == 0x155
    assert q1 & ~0xFFF == 0x7F00_1234_5000
    d = PageRequest.decode(q0, q1, q2, q3)
    assert d == r.descriptor
    assert m.prq.pending() == [d]
    assert (d.rid, d.pasid, d.pp, d.rd, d.wr, d.er, d.pmr, d.lpig, d.prgi, d.addr) == (
        SID, PASID, 1, 0, 1, 1, 1, 1, 0x155, 0x7F00_1234_5000)


def test_event_only_when_ppr_goes_0_to_1(pr: Rig) -> None:
    m = pr.model
    m.page_request(SID, 0x1000, pasid=PASID, prgi=1)
    m.page_request(SID, 0x2000, pasid=PASID, prgi=2)
    assert _events(m) == 1
    assert m.regs.msi_log[-1].address == 0xFEE0_2000 and m.regs.msi_log[-1].data == 0x77
    m.write_reg(Reg.PRS, 1)  # software clears PPR
    m.page_request(SID, 0x3000, pasid=PASID, prgi=3)
    assert _events(m) == 2


def test_masked_event_pends(pr: Rig) -> None:
    m = pr.model
    m.write_reg(Reg.PECTL, 1 << 31)
    m.page_request(SID, 0x1000, pasid=PASID)
    assert _events(m) == 0 and m.read_reg(Reg.PECTL) == (1 << 31) | (1 << 30)
    m.write_reg(Reg.PECTL, 0)
    assert _events(m) == 1


def test_overflow_and_drop(pr: Rig) -> None:
    m = pr.model
    for i in range(127):  # a 128-entry queue holds 127 (one slot stays empty)
        assert m.page_request(SID, i << 12, pasid=PASID, prgi=i & 0x1FF).queued
    r = m.page_request(SID, 0x99_9000, pasid=PASID, prgi=7)
    assert r.status is S.OVERFLOW and m.read_reg(Reg.PRS) & 2
    assert m.read_reg(Reg.PQT, 8) == 127 * 32
    assert m.page_request(SID, 0x1000, pasid=PASID).status is S.DROPPED
    # Software drains the queue and clears PRO: requests are accepted again.
    m.write_reg(Reg.PQH, m.read_reg(Reg.PQT, 8), 8)
    assert m.page_request(SID, 0x1000, pasid=PASID).status is S.DROPPED  # PRO still set
    m.write_reg(Reg.PRS, 3)
    r = m.page_request(SID, 0x1000, pasid=PASID)
    assert r.queued and r.offset == 127 * 32


def test_overflow_event_when_nothing_pending(pr: Rig) -> None:
    m = pr.model
    m.write_reg(Reg.PQH, 32, 8)
    m.write_reg(Reg.PQT, 0, 8)  # (0 + 32) % size == PQH: full
    r = m.page_request(SID, 0x1000, pasid=PASID)
    assert r.status is S.OVERFLOW and _events(m) == 1


def test_pre_clear_faults_0x47(pr: Rig) -> None:
    pr.b.set_sm_context(0x20, pre=0)
    r = pr.model.page_request(0x20, 0x1000, pasid=PASID, write=True)
    assert r.status is S.FAULTED and r.fault is FR.SM_PRE_CLEAR
    f = pr.model.faults()[-1]
    assert f.fr is FR.SM_PRE_CLEAR and f.request_type is RequestType.PAGE_REQUEST
    assert pr.model.read_reg(Reg.PQT, 8) == 0


def test_paside_clear_faults(pr: Rig) -> None:
    pr.b.set_sm_context(0x20, pre=1, paside=0)
    assert pr.model.page_request(0x20, 0, pasid=1).fault is FR.SM_PASIDE_CLEAR
    assert pr.model.page_request(0x20, 0).queued  # without PASID: fine


def test_legacy_mode_page_request_faults(legacy: Rig) -> None:
    legacy.b.set_legacy_context(SID, aw=2)
    legacy.enable()
    assert legacy.model.page_request(SID, 0).fault is FR.SM_TTM_LEGACY_PAGE_REQUEST


def test_unsupported_without_prs(rig_factory: RigFactory) -> None:
    r = rig_factory(True, prs=False)
    assert r.model.page_request(SID, 0).status is S.UNSUPPORTED


def test_response_matches_group(pr: Rig) -> None:
    m = pr.model
    m.page_request(SID, 0x1000, pasid=PASID, prgi=5, last=False)
    m.page_request(SID, 0x2000, pasid=PASID, prgi=5, last=True)
    assert m.prq.unanswered() == [(SID, PASID, 5)]
    pr.submit(prg_resp_desc(SID, 5, rc=0, pasid=PASID, lpig=1))
    resp = m.prq.responses[-1]
    assert resp.matched and not resp.rc_reserved and resp.pasid == PASID
    assert m.prq.unanswered() == []
    pr.submit(prg_resp_desc(SID, 5, rc=0, pasid=PASID))  # a second response: unmatched
    assert not m.prq.responses[-1].matched


@pytest.mark.parametrize(("rid", "prgi", "pasid"), [(0x19, 5, PASID), (SID, 6, PASID),
                                                     (SID, 5, PASID + 1), (SID, 5, None)])
def test_response_mismatch(pr: Rig, rid: int, prgi: int, pasid: int | None) -> None:
    pr.model.page_request(SID, 0x1000, pasid=PASID, prgi=5)
    pr.submit(prg_resp_desc(rid, prgi, pasid=pasid))
    assert not pr.model.prq.responses[-1].matched
    assert pr.model.prq.unanswered() == [(SID, PASID, 5)]


def test_response_without_last_request_is_unmatched(pr: Rig) -> None:
    pr.model.page_request(SID, 0x1000, pasid=PASID, prgi=9, last=False)
    pr.submit(prg_resp_desc(SID, 9, pasid=PASID))
    assert not pr.model.prq.responses[-1].matched


def test_stop_marker_needs_no_response(pr: Rig) -> None:
    r = pr.model.page_request(SID, 0, pasid=PASID, prgi=3, read=False, write=False, last=True)
    assert r.queued and r.descriptor.is_stop_marker
    assert pr.model.prq.unanswered() == []


@pytest.mark.parametrize("rc", [0, 1, 0xF])
def test_response_codes(pr: Rig, rc: int) -> None:
    pr.model.page_request(SID, 0x1000, pasid=PASID, prgi=1)
    pr.submit(prg_resp_desc(SID, 1, rc=rc, pasid=PASID))
    resp = pr.model.prq.responses[-1]
    assert resp.matched and not resp.rc_reserved and int(resp.code) == rc


@pytest.mark.parametrize("rc", [2, 0xE])
def test_reserved_response_code_is_a_descriptor_error(pr: Rig, rc: int) -> None:
    pr.model.page_request(SID, 0x1000, pasid=PASID, prgi=1)
    pr.submit(prg_resp_desc(SID, 1, rc=rc, pasid=PASID))
    assert pr.model.read_reg(Reg.IQERCD, 8) & 0xF == IqeCode.RESERVED_FIELD
    assert pr.model.prq.responses == [] and pr.model.prq.unanswered() == [(SID, PASID, 1)]


def test_direct_response_with_reserved_code_is_flagged(pr: Rig) -> None:
    pr.model.page_request(SID, 0x1000, pasid=PASID, prgi=1)
    r = pr.model.prq.respond(rid=SID, pasid=PASID, prgi=1, rc=5, lpig=True)
    assert r.rc_reserved and r.matched and r.code.name == "RESPONSE_FAILURE"


def test_response_without_prs_is_invalid_descriptor(rig_factory: RigFactory) -> None:
    r = rig_factory(True, prs=False)
    r.enable()
    r.qi_setup()
    r.submit(prg_resp_desc(SID, 1))
    assert r.model.read_reg(Reg.IQERCD, 8) & 0xF == IqeCode.INVALID_TYPE


def test_clearing_ppr_and_pro_clears_pending_interrupt(pr: Rig) -> None:
    m = pr.model
    m.write_reg(Reg.PECTL, 1 << 31)
    m.page_request(SID, 0x1000, pasid=PASID)
    assert m.read_reg(Reg.PECTL) & (1 << 30)
    m.write_reg(Reg.PRS, 1)
    assert not m.read_reg(Reg.PECTL) & (1 << 30)
