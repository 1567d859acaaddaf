"""Page requests on real traffic: every request the device made answered once, with its group.

With svmval's QEMU (host_setup/qemu_build) the unit traces each page request descriptor it
writes into the guest's page request queue (`vtd_prq_desc`: sid, PASID, address, PRGI,
last-page flag, access), and every page group response the guest's IOMMU driver submits is
a raw `vtd_inv_desc` line. Rules (VT-d 7.5, PCIe PRI):

- each page group (RID, PASID, PRGI) whose last request came in is answered exactly once,
  after its requests, by a response with the same RID, PASID and PRGI;
- a response that answers no outstanding group is a finding (wrong PRGI or PASID);
- a group still outstanding when the guest is paused is a finding (left unanswered);
- the number of requests equals what the device counted (its CNT_PAGE_REQUESTS deltas,
  reported by the workloads), and the responses by code equal its CNT_PRG_* deltas.

Nothing to judge (no request in the trace) is an ERROR naming what is missing.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from harness.results import DATA_PRQ_LATENCY_US, CheckResult, Finding, Traffic, Verdict
from harness.trace.events import InvDesc, PrqDesc, TraceEvent
from harness.viommu.descriptors import PageGroupResponse, ResponseCode, decode_inv_desc

PRQ_EVENTS = frozenset({"vtd_prq_desc", "vtd_inv_desc"})


@dataclass(frozen=True)
class DeviceCounts:
    """What the device counted over the run (sums of the workloads' counter deltas)."""

    page_requests: int
    responses: dict[str, int]  # "success" / "invalid" / "failure" -> count


_CODE_NAMES = {ResponseCode.SUCCESS: "success", ResponseCode.INVALID_REQUEST: "invalid",
               ResponseCode.RESPONSE_FAILURE: "failure"}


def check_prq_real(events: Iterable[TraceEvent], device: DeviceCounts | None, *,
                   sva_workloads: int, why_none: str = "") -> CheckResult:
    t0 = time.monotonic()
    findings: list[Finding] = []
    open_groups: dict[tuple[int, int, int], list[PrqDesc]] = {}
    answered: Counter[tuple[int, int, int]] = Counter()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    per_pasid: Counter[int] = Counter()
    requests = responses = 0
    pending_by_key: dict[tuple[int, int, int], list[PrqDesc]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, PrqDesc):
            key = (ev.sid, ev.pasid, ev.prgi)
            requests += 1
            per_pasid[ev.pasid] += 1
            pending_by_key[key].append(ev)
            if ev.lpig:
                open_groups[key] = pending_by_key.pop(key)
        elif isinstance(ev, InvDesc) and "page group" in ev.type:
            d = decode_inv_desc(ev.low, ev.high)
            if not isinstance(d, PageGroupResponse):
                findings.append(Finding(f"a page group response that does not decode: {d}", trace_lines=(ev.line,)))
                continue
            responses += 1
            codes[_CODE_NAMES.get(d.rc, f"reserved {int(d.rc):#x}")] += 1
            key = (d.rid, d.pasid if d.pp else 0, d.prgi)
            group = open_groups.pop(key, None)
            if group is None:
                what = "answered twice" if answered[key] else "answers no outstanding request"
                findings.append(Finding(
                    f"page group response rid {d.rid:#x} PASID {key[1]} PRGI {d.prgi} ({d.rc.name}) {what}: "
                    "a wrong PRGI or PASID, or a duplicate", trace_lines=(ev.line,)))
                continue
            answered[key] += 1
            if ev.timestamp is not None and group[-1].timestamp is not None:
                latencies.append(round((ev.timestamp - group[-1].timestamp) * 1e6, 1))
    for (sid, pasid, prgi), group in open_groups.items():
        findings.append(Finding(f"page group rid {sid:#x} PASID {pasid} PRGI {prgi} was never answered "
                                f"({len(group)} request(s), first at {group[0].addr:#x})",
                                trace_lines=tuple(e.line for e in group[:5])))
    for (sid, pasid, prgi), group in pending_by_key.items():
        findings.append(Finding(f"page requests rid {sid:#x} PASID {pasid} PRGI {prgi} never closed their group "
                                f"(no last-page-in-group request), so no response can come: "
                                f"{len(group)} request(s)", trace_lines=tuple(e.line for e in group[:5])))
    if device is not None:
        if device.page_requests != requests:
            findings.append(Finding(f"the device counted {device.page_requests} page requests sent, the unit wrote "
                                    f"{requests} into the queue"))
        for name in ("success", "invalid", "failure"):
            if device.responses.get(name, 0) != codes.get(name, 0):
                findings.append(Finding(f"the device counted {device.responses.get(name, 0)} {name} responses, the "
                                        f"guest sent {codes.get(name, 0)}"))
    counts = {"page_requests": requests, "responses": responses, "groups_answered": sum(answered.values()),
              "unanswered": len(open_groups) + len(pending_by_key), "pasids": len(per_pasid),
              **{f"responses_{k}": v for k, v in codes.items()}}
    data = {DATA_PRQ_LATENCY_US: latencies} if latencies else {}
    if not requests:
        why = why_none or (f"{sva_workloads} SVA workload(s) passed but the trace holds no page request "
                           "(vtd_prq_desc): is it svmval's QEMU, with the event traced?")
        return CheckResult(name="prq", verdict=Verdict.ERROR, traffic=Traffic.REAL, counts=counts,
                           summary=f"not judged: {why}", findings=tuple(findings[:200]),
                           duration_s=time.monotonic() - t0)
    median = f", round trip median {statistics.median(latencies):.0f} us" if latencies else ""
    return CheckResult(
        name="prq", verdict=Verdict.FAIL if findings else Verdict.PASS, traffic=Traffic.REAL,
        summary=(f"{requests} page requests from the svmval-sva device ({len(per_pasid)} PASIDs), {responses} "
                 f"responses ({dict(codes)}), {counts['unanswered']} unanswered{median}"),
        counts=counts, findings=tuple(findings[:200]), duration_s=time.monotonic() - t0, data=data)
