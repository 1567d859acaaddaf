"""DMA faults: the ones a workload provokes must be recorded right; no others may occur.

A DMA to an address the guest never mapped must not reach memory and must be
recorded by the unit with the reason and direction the spec gives, and the guest
kernel must report it. The expected reason comes from the model walking the guest's
tables as they were at the fault: the entries QEMU's walk read just before it
(svmval's QEMU traces them, patches/0003-*); with a stock QEMU, from the tables in
guest RAM at the end of the run (the result says which). Any fault that no
workload asked for is a non-recoverable fault in a run that should have none.

Where the unit's fault recording register took the fault (vtd_frr_new: QEMU has one,
so a fault arriving while the guest has not cleared the last is lost, PFO), the
record's PASID is compared with the one the device used.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.checks.walks import model_walk
from harness.results import CheckResult, Finding, Traffic, Verdict
from harness.trace.events import DmarFault, FrrNew, FsWalkEntry, TraceEvent
from harness.viommu import FaultReason, GuestMemory, VtdModel
from harness.viommu.faults import Fault
from harness.viommu.root_context import sid_of

PAGE_MASK = ~0xFFF
# Linux: "DMAR: [DMA Read NO_PASID] Request device [00:06.0] fault addr 0x... [fault reason 0x71] ..."
_CONSOLE_FAULT = re.compile(r"DMAR: \[DMA (Read|Write)[^\]]*\] Request device \[([0-9a-f:.]+)\] "
                            r"fault addr (0x[0-9a-f]+) \[fault reason (0x[0-9a-f]+)\]")


@dataclass(frozen=True)
class ExpectedFault:
    workload: str
    sid: int
    iova: int
    write: bool
    # The workload changed this page's mapping after the fault (e.g. unmapped the
    # read-only page it faulted on): the tables at the end of the run are not the
    # tables at the fault, so only a walk traced at the fault can give the reason.
    remapped_after: bool = False
    pasid: int | None = None  # the PASID the request carried (None: a request without one)


def check_faults(
    events: Iterable[TraceEvent],
    expected: list[ExpectedFault],
    memory: GuestMemory | None,
    root: int | None,
    console: str,
    requested: frozenset[tuple[int, int]] = frozenset(),
    walks: Mapping[int, Sequence[FsWalkEntry]] | None = None,
    none_provoked: str = "no workload provoked a fault",
) -> CheckResult:
    """`requested`: (sid, page) pairs a device asked for with a page request after its
    ATS translation request found them not present. QEMU also records those as DMA
    faults, though the spec answers a translation request in its completion and a
    recoverable miss is not a fault record: they are counted as that divergence, not
    reported as unexpected faults.

    `walks`: trace line of a DMA fault -> the entries QEMU's walk read for it.
    `none_provoked`: why no fault was provoked, when none was (the check is then an
    ERROR: the recording leg had nothing to judge)."""
    t0 = time.monotonic()
    faults = [ev for ev in events if isinstance(ev, DmarFault | FrrNew)]
    dmar = [ev for ev in faults if isinstance(ev, DmarFault)]
    records = [ev for ev in faults if isinstance(ev, FrrNew)]
    # By device and page: two processes (edu's and the svmval-sva's) fault at the same VA.
    console_lines = {
        (_sid_of(m[2]), int(m[3], 16) & PAGE_MASK): (i + 1, int(m[4], 16))
        for i, line in enumerate(console.split("\n"))
        if (m := _CONSOLE_FAULT.search(line))
    }
    recorded: dict[tuple[int, int], Fault] = {}
    for rec in records:
        try:
            f = Fault.decode(rec.hi << 64 | rec.lo)
        except ValueError:  # a reason outside the spec's list: judged by the reason compare
            continue
        recorded.setdefault((f.sid, f.addr), f)
    model = None
    if memory is not None and root is not None:
        model = VtdModel(memory)
        model.enable(root, scalable=True)
    findings: list[Finding] = []
    claimed: set[int] = set()
    walks = walks or {}
    legs = Counter[str]()
    for exp in expected:
        page = exp.iova & PAGE_MASK
        hits = [ev for ev in dmar if ev.sid == exp.sid and ev.addr & PAGE_MASK == page]
        if not hits:
            findings.append(Finding(f"{exp.workload}: DMA to unmapped {exp.iova:#x} was not faulted by the unit"))
            continue
        ev = hits[0]
        claimed.update(id(h) for h in hits)
        if ev.is_write != exp.write:
            findings.append(Finding(
                f"{exp.workload}: the unit recorded a DMA {'write' if ev.is_write else 'read'}, the device "
                f"made a {'write' if exp.write else 'read'}", trace_lines=(ev.line,)))
        _compare_pasid(exp, recorded.get((exp.sid, page)), ev, findings, legs)
        want: FaultReason | None = None
        judged = False
        if ev.line in walks:
            legs["reason_from_walk_at_fault"] += 1
            want, judged = model_walk(walks[ev.line], write=exp.write).fault, True
        elif model is not None and exp.remapped_after:
            legs["reason_not_judged"] += 1
        elif model is not None:
            legs["reason_from_tables_at_end"] += 1
            want, judged = model.walk(exp.sid, exp.iova, pasid=exp.pasid, write=exp.write,
                                      update_ad=False).fault, True
        if judged:
            if want is None:
                findings.append(
                    Finding(f"{exp.workload}: the model says {exp.iova:#x} is mapped, QEMU faulted it "
                            f"with {ev.fault:#x}", trace_lines=(ev.line,))
                )
            elif want is FaultReason.SM_PASID_ENTRY_NOT_PRESENT and ev.fault == FaultReason.SM_PASID_ENTRY_INVALID:
                legs["divergence_pasid_entry_type_before_present"] += 1  # harness/viommu/divergences.py
            elif int(want) != ev.fault:  # first-stage codes: QEMU 10.0 uses the spec's
                findings.append(
                    Finding(f"{exp.workload}: QEMU fault reason {ev.fault:#x}, the spec (model) gives "
                            f"{int(want):#x} {FaultReason(want).name}", trace_lines=(ev.line,))
                )
        seen = console_lines.get((exp.sid, page))
        if seen is None:
            findings.append(Finding(f"{exp.workload}: the guest kernel did not report the fault at {page:#x}",
                                    trace_lines=(ev.line,)))
        elif seen[1] != ev.fault:
            findings.append(Finding(f"{exp.workload}: guest reports reason {seen[1]:#x}, unit recorded {ev.fault:#x}",
                                    trace_lines=(ev.line,), console_lines=(seen[0],)))
    ats_recorded = 0
    for ev in dmar:
        if id(ev) not in claimed and (ev.sid, ev.addr & PAGE_MASK) in requested:
            ats_recorded += 1
            claimed.add(id(ev))
    # One finding per page and reason: QEMU records a blocked DMA once per access.
    unexpected: dict[tuple[int, int, int, bool], list[DmarFault]] = {}
    for ev in dmar:
        if id(ev) not in claimed:
            unexpected.setdefault((ev.sid, ev.addr & PAGE_MASK, ev.fault, ev.is_write), []).append(ev)
    for (sid, page, reason, write), evs in unexpected.items():
        findings.append(Finding(
            f"unexpected DMA fault: sid {sid:#x} {'write' if write else 'read'} of page {page:#x}, reason "
            f"{reason:#x}" + (f" ({len(evs)} accesses)" if len(evs) > 1 else ""), trace_lines=(evs[0].line,)))
    counts = {"expected": len(expected), "dmar_faults": len(dmar), "fault_records": len(records),
              "console_reports": len(console_lines), "ats_misses_recorded": ats_recorded, **legs}
    summary = (f"{len(expected)} provoked faults, {len(dmar)} recorded by the unit, "
               f"{len(console_lines)} reported by the guest"
               + (f"; {ats_recorded} of them ATS misses the device then page-requested (QEMU records "
                  "those too: a divergence, not a finding)" if ats_recorded else ""))
    if legs["reason_from_walk_at_fault"]:
        summary += f"; {legs['reason_from_walk_at_fault']} reasons judged on the tables as they were at the fault"
    if legs["reason_from_tables_at_end"]:
        summary += f"; {legs['reason_from_tables_at_end']} on the tables at the end of the run (no walk traced)"
    if legs["reason_not_judged"]:
        summary += (f"; {legs['reason_not_judged']} reasons not judged: no walk was traced at the fault and the "
                    "workload changed those mappings afterwards (svmval's QEMU traces the walk)")
    diverged = sum(v for k, v in legs.items() if k.startswith("divergence_"))
    if diverged:
        summary += f"; {diverged} where QEMU departs from the spec as harness/viommu/divergences.py names"
    unjudged = legs["divergence_sm_fault_pp_rid_pasid"] + legs["divergence_pasid_fault_record_pp_clear"]
    if expected:
        summary += (f"; PASID judged on {legs['pasid_compared']} fault records"
                    + (f", {unjudged} recorded it as QEMU departs (not judged)" if unjudged else "")
                    + (f", {legs['pasid_not_judged']} found the unit's one record register busy"
                       if legs["pasid_not_judged"] else ""))
    verdict = Verdict.FAIL if findings else Verdict.PASS
    if not expected and not findings:
        verdict = Verdict.ERROR
        summary = f"not judged: {none_provoked}, so the unit's recording of faults was not tested; " + summary
    return CheckResult(
        name="faults",
        verdict=verdict,
        traffic=Traffic.REAL,
        summary=summary,
        counts=counts,
        findings=tuple(findings),
        duration_s=time.monotonic() - t0,
    )


def _compare_pasid(exp: ExpectedFault, rec: Fault | None, ev: DmarFault, findings: list[Finding],
                   legs: Counter[str]) -> None:
    """The fault record's PASID against the request's. QEMU records a request without a
    PASID with PP=1 and PV=RID_PASID (0 as Linux programs it), and a PASID-tagged ATS
    request with PP=0: divergences sm-fault-pp-rid-pasid and pasid-fault-record-pp-clear,
    counted, not findings."""
    if rec is None:
        legs["pasid_not_judged"] += 1
    elif exp.pasid is None and rec.pasid == 0:
        legs["divergence_sm_fault_pp_rid_pasid"] += 1
    elif exp.pasid is not None and rec.pasid is None:
        legs["divergence_pasid_fault_record_pp_clear"] += 1
    else:
        legs["pasid_compared"] += 1
        if rec.pasid != exp.pasid:
            got = "no PASID" if rec.pasid is None else f"PASID {rec.pasid}"
            sent = "no PASID" if exp.pasid is None else f"PASID {exp.pasid}"
            findings.append(Finding(f"{exp.workload}: the unit's fault record carries {got}, the request had "
                                    f"{sent}", trace_lines=(ev.line,)))


def _sid_of(bdf: str) -> int:
    """Source-id of Linux's "[0000:00:08.0]" (or "[00:08.0]")."""
    bus, dev_fn = bdf.split(":")[-2:]
    dev, fn = dev_fn.split(".")
    return sid_of(int(bus, 16), int(dev, 16) << 3 | int(fn, 16))
