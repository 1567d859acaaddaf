"""Page requests: every request answered once, with the right group, nothing lost.

QEMU 10.0 emulates no page request queue and no emulated device issues PCIe page
requests, so on the local lab this check runs on MODELLED traffic, and says so:
the pages a workload first-touched become page requests from an SVM device
(PASID-tagged, one page group per fault, as a device faulting on independent
pages issues them) into the reference model's PRQ; a responder that does what
Linux's prq_event_thread does (clear PPR, read PQH..PQT, answer each group that
ended with a page group response through the invalidation queue, move PQH)
drains it. On a lab host with a PRI-capable device the same rules judge the real
PRQ traffic read from the trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.results import CheckResult, Finding, Traffic, Verdict
from harness.viommu import GuestMemory, Reg, TableBuilder, VtdModel
from harness.viommu.descriptors import PageRequest
from harness.viommu.invalidation import prg_resp_desc
from harness.viommu.prq import PageRequestStatus

SVM_SID = 0x0100  # bus 1 device 0: a device the local guest does not have
SVA_PASID = 1
IQ_BASE = 0x80_0000
PQ_BASE = 0x90_0000
PQS = 0  # one 4 KiB page: 128 requests, small so the drain-as-you-go path is exercised
RC_SUCCESS, RC_INVALID = 0x0, 0x1


@dataclass
class Responder:
    """The guest side: Linux's page request handling, in the order it does it."""

    model: VtdModel
    memory: GuestMemory
    drop_group: int | None = None  # seeded bug: never answer this PRGI
    requests_seen: int = 0
    responses_sent: int = 0
    iq_tail: int = 0
    rejected: list[int] = field(default_factory=list)

    def service(self) -> None:
        m = self.model
        m.write_reg(Reg.PRS, 1)  # W1C PPR first, so a request arriving now re-raises it
        head = m.read_reg(Reg.PQH, 8)
        tail = m.read_reg(Reg.PQT, 8)
        size = 4096 << PQS
        descs = []
        while head != tail:
            qws = self.memory.read_qwords(PQ_BASE + head, 4)
            descs.append(PageRequest.decode(*qws))
            head = (head + 32) % size
        for req in descs:
            self.requests_seen += 1
            if not req.lpig or req.prgi == self.drop_group:
                continue
            canonical = req.addr < (1 << 47)
            rc = RC_SUCCESS if canonical else RC_INVALID
            if not canonical:
                self.rejected.append(req.addr)
            self._submit(prg_resp_desc(req.rid, req.prgi, rc, pasid=req.pasid if req.pp else None))
            self.responses_sent += 1
        m.write_reg(Reg.PQH, tail, 8)

    def _submit(self, desc: tuple[int, int, int, int]) -> None:
        at = IQ_BASE + (self.iq_tail << 5)
        for i, q in enumerate(desc):
            self.memory.write_u64(at + 8 * i, q)
        self.iq_tail = (self.iq_tail + 1) % 128  # 256-bit queue, QS=0: 128 descriptors
        self.model.write_reg(Reg.IQT, self.iq_tail << 5, 8)


def _unit() -> tuple[VtdModel, GuestMemory]:
    memory = GuestMemory(16 << 20)
    model = VtdModel(memory)
    b = TableBuilder(memory, scalable=True)
    b.set_sm_context(SVM_SID, pre=1, dte=1, paside=1)
    model.enable(b.root, scalable=True)
    model.write_reg(Reg.IQT, 0, 8)
    model.write_reg(Reg.IQA, IQ_BASE | 1 << 11, 8)
    gsts = model.read_reg(Reg.GSTS) & ((1 << 31) | (1 << 25))
    model.write_reg(Reg.GCMD, gsts | (1 << 26))
    model.write_reg(Reg.PQH, 0, 8)
    model.write_reg(Reg.PQT, 0, 8)
    model.write_reg(Reg.PQA, PQ_BASE | PQS, 8)
    model.write_reg(Reg.PECTL, 0)
    return model, memory


def check_prq_modelled(workload: str, pages: list[int], *, drop_group: int | None = None) -> CheckResult:
    """Drive one page request per first-touched page and judge the exchange."""
    t0 = time.monotonic()
    model, memory = _unit()
    responder = Responder(model, memory, drop_group=drop_group)
    findings: list[Finding] = []
    overflow = 0
    for i, gva in enumerate(pages):
        prgi = i % 512
        r = model.page_request(SVM_SID, gva, pasid=SVA_PASID, write=True, prgi=prgi, last=True)
        if r.status is PageRequestStatus.OVERFLOW:
            overflow += 1
        elif not r.queued:
            findings.append(Finding(f"page request for {gva:#x} not queued: {r.status.name} {r.fault!r}"))
        # The page-request interrupt runs the handler when PPR is set; a burst larger
        # than the queue is drained as it arrives, as the threaded IRQ does.
        if model.read_reg(Reg.PRS) & 1 and (i % 64 == 63 or i == len(pages) - 1):
            responder.service()
    if model.read_reg(Reg.PRS) & 1:
        responder.service()
    unanswered = model.prq.unanswered()
    unmatched = [r for r in model.prq.responses if not r.matched]
    for rid, pasid, prgi in unanswered:
        findings.append(Finding(f"page group {prgi} (rid {rid:#x}, PASID {pasid}) never answered"))
    for resp in unmatched:
        findings.append(Finding(f"response for group {resp.prgi} answers no outstanding request"))
    if responder.requests_seen != len(pages):
        findings.append(
            Finding(f"{len(pages)} first touches predict {len(pages)} page requests; the queue "
                    f"delivered {responder.requests_seen}")
        )
    if overflow or model.read_reg(Reg.PRS) & 2:
        findings.append(Finding(f"page request queue overflowed ({overflow} requests dropped)"))
    faults = model.faults()
    if faults:
        findings.append(Finding(f"{len(faults)} non-recoverable faults recorded: {faults[:3]}"))
    counts = {
        "page_requests": len(pages),
        "delivered": responder.requests_seen,
        "responses": len(model.prq.responses),
        "unanswered": len(unanswered),
        "overflow": overflow,
        "invalid_responses": len(responder.rejected),
    }
    return CheckResult(
        name="prq",
        verdict=Verdict.FAIL if findings or not pages else Verdict.PASS,
        traffic=Traffic.MODELLED,
        summary=(
            f"{len(pages)} page requests from {workload}'s first touches (modelled: no device on "
            f"this lab issues PCIe page requests), {len(model.prq.responses)} answered, "
            f"{len(unanswered)} unanswered"
        ),
        workload=workload,
        counts=counts,
        findings=tuple(findings),
        duration_s=time.monotonic() - t0,
    )
