"""The faults check's PASID leg and per-device console match, on real fault records of
svmval's QEMU (tests/fixtures/traces/svmval-pasid-faults.*): edu's not-present read, and
sva_pasid_not_present's read and write tagged with PASID 63, which no bind holds."""

from __future__ import annotations

from pathlib import Path

from harness.checks.faults import ExpectedFault, check_faults
from harness.results import Verdict
from harness.trace.events import DmarFault
from harness.trace.parser import iter_events

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
FORMATS = TRACES / "qemu10.2.2-svmval0003-vtd-trace-events"
CONSOLE = (TRACES / "svmval-pasid-faults.console").read_text()


def _faults() -> list[DmarFault]:
    evs = list(iter_events(TRACES / "svmval-pasid-faults.trace", strict=True, trace_events=FORMATS))
    return [e for e in evs if isinstance(e, DmarFault)]


def _expected(edu_pasid: int | None = None) -> list[ExpectedFault]:
    edu, read, write = _faults()
    return [ExpectedFault("edu_dma_fault", edu.sid, edu.addr, False, pasid=edu_pasid),
            ExpectedFault("sva_pasid_not_present", read.sid, read.addr, False, pasid=63),
            ExpectedFault("sva_pasid_not_present", write.sid, write.addr, True, pasid=63)]


def test_records_that_carry_no_pasid_to_judge_are_named_as_qemus_departures() -> None:
    evs = list(iter_events(TRACES / "svmval-pasid-faults.trace", strict=True, trace_events=FORMATS))
    r = check_faults(evs, _expected(), None, None, CONSOLE)
    assert r.verdict is Verdict.PASS, [f.message for f in r.findings]
    # edu's request had no PASID, its record says RID_PASID 0; PASID 63's records say none.
    assert r.counts["divergence_sm_fault_pp_rid_pasid"] == 1
    assert r.counts["divergence_pasid_fault_record_pp_clear"] == 2
    assert r.counts.get("pasid_compared", 0) == 0
    assert "PASID judged on 0 fault records, 3 recorded it as QEMU departs (not judged)" in r.summary


def test_a_record_with_another_pasid_than_the_request_is_a_finding() -> None:
    """The device claims it tagged edu's read with PASID 5; the record carries 0."""
    evs = list(iter_events(TRACES / "svmval-pasid-faults.trace", strict=True, trace_events=FORMATS))
    r = check_faults(evs, _expected(edu_pasid=5), None, None, CONSOLE)
    assert r.verdict is Verdict.FAIL
    (f,) = r.findings
    assert "fault record carries PASID 0, the request had PASID 5" in f.message and f.trace_lines


def test_the_console_report_is_matched_by_device_as_well_as_page() -> None:
    """Two processes fault at the same VA: the svmval-sva device's report (0x5b) must not
    stand for an edu fault at that page."""
    evs = list(iter_events(TRACES / "svmval-pasid-faults.trace", strict=True, trace_events=FORMATS))
    _edu, read, _write = _faults()
    other = CONSOLE.replace("[0000:00:08.0] fault addr " + f"{read.addr:#x}", "[0000:00:06.0] fault addr "
                            + f"{read.addr:#x}")
    r = check_faults(evs, _expected(), None, None, other)
    assert r.verdict is Verdict.FAIL
    assert any("did not report the fault" in f.message for f in r.findings), [f.message for f in r.findings]
