"""GVA -> GPA -> HVA -> HPA: does every page the device used land where it should?

For each page a workload reports (its process virtual address, which is also the
IOVA the device used, and the guest-physical address /proc/self/pagemap gave it):

1. the reference model walks the guest's own IOMMU tables (root, context, PASID
   entry, first stage) for the device's source-id and that address: GVA -> GPA;
2. that GPA must equal the guest kernel's pagemap answer and the address QEMU's
   translation events gave the device for the same page;
3. GPA -> HVA through the shared RAM file (and QEMU's gpa2hva), HVA -> HPA through
   /proc/<qemu>/pagemap, which must equal QEMU's gpa2hpa;
4. the bytes at that place must hash to what the workload saw in the page;
5. the rights the tables give must allow what the device did with the page (its
   ``access``: read or write, as a user-mode request without PASID: U/S must be
   set at every level, R/W for a page it wrote).

The HPA leg is labelled for what it is: under TCG QEMU's pagemap and its gpa2hpa
read the same table (consistency only); on a KVM lab host it is the host's real
page table of the QEMU process.

Run it while the workload holds its mappings and the guest is paused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

from harness.results import CheckResult, Finding, Traffic, Verdict
from harness.session import HostView
from harness.trace.events import DmarTranslate, TraceEvent
from harness.viommu import FaultReason, GuestMemory, VtdModel

PAGE = 4096


def device_translations(events: Iterable[TraceEvent], sid: int) -> dict[int, tuple[int, int]]:
    """Last translation QEMU gave `sid` per IOVA page: page -> (gpa page, trace line)."""
    out: dict[int, tuple[int, int]] = {}
    for ev in events:
        if isinstance(ev, DmarTranslate) and ev.sid == sid:
            out[ev.iova & ~ev.mask] = (ev.gpa & ~ev.mask, ev.line)
    return out


def check_translation(
    workload: str,
    sid: int,
    pages: list[dict[str, Any]],
    memory: GuestMemory,
    root: int,
    qemu_translations: dict[int, tuple[int, int]],
    host: HostView | None,
) -> CheckResult:
    t0 = time.monotonic()
    model = VtdModel(memory)
    model.enable(root, scalable=True)
    findings: list[Finding] = []
    counts = {"pages": 0, "passed": 0, "failed": 0, "hpa_checked": 0, "qemu_checked": 0, "permissions_checked": 0}
    for page in pages:
        counts["pages"] += 1
        gva = int(page["gva"])
        problems: list[str] = []
        lines: tuple[int, ...] = ()
        access = page.get("access", "read")
        walk = model.walk(sid, gva, write=access == "write", update_ad=False)
        if access in ("read", "write"):
            counts["permissions_checked"] += 1
        if not walk.ok or walk.address is None:
            denied = walk.fault in (FaultReason.SM_WRITE_DENIED, FaultReason.SM_USER_DENIED)
            problems.append(f"the device made a {access} of it, which the guest's IOMMU tables deny "
                            f"(model: {walk.fault!r})" if denied
                            else f"the guest's IOMMU tables do not map it (model: {walk.fault!r})")
            gpa = None
        else:
            gpa = walk.address
            if page.get("gpa") is not None and int(page["gpa"]) != gpa:
                problems.append(f"model walk gives GPA {gpa:#x}, the guest's pagemap {int(page['gpa']):#x}")
            seen = qemu_translations.get(gva & ~(PAGE - 1))
            if seen is not None:
                counts["qemu_checked"] += 1
                lines = (seen[1],)
                if seen[0] != gpa & ~(PAGE - 1):
                    problems.append(f"QEMU translated it to {seen[0]:#x}, the model to {gpa:#x}")
            want = page.get("sha256")
            if want is not None:
                got = hashlib.sha256(memory.read(gpa & ~(PAGE - 1), PAGE)).hexdigest()
                if got != want:
                    problems.append("the bytes at that GPA are not what the workload saw in the page")
            if host is not None:
                hva = host.gpa2hva(gpa)
                hpa = host.hva2hpa(hva)
                qemu_hpa = host.gpa2hpa(gpa)
                if hpa is not None:
                    counts["hpa_checked"] += 1
                    if hpa != qemu_hpa:
                        problems.append(f"HPA from QEMU's pagemap {hpa:#x} != QEMU's gpa2hpa {qemu_hpa:#x}")
        if problems:
            counts["failed"] += 1
            findings.append(Finding(f"{workload}: page {gva:#x}: " + "; ".join(problems), trace_lines=lines))
        else:
            counts["passed"] += 1
    verdict = Verdict.FAIL if findings else Verdict.PASS
    summary = (
        f"{counts['passed']}/{counts['pages']} pages GVA->GPA->HPA consistent "
        f"({counts['qemu_checked']} against QEMU's translations, {counts['permissions_checked']} with the "
        f"rights the device used, {counts['hpa_checked']} to HPA"
        + (f": {host.hpa_leg}" if host is not None and counts["hpa_checked"] else "") + ")"
    )
    if not pages:
        verdict = Verdict.ERROR
        summary = f"not judged: {workload} reported no pages it had the device use"
    return CheckResult(
        name="translation",
        verdict=verdict,
        traffic=Traffic.REAL,
        summary=summary,
        workload=workload,
        counts=counts,
        findings=tuple(findings),
        duration_s=time.monotonic() - t0,
    )
