"""The page-request check on real svmval-sva traffic: 400 consecutive lines of a local
run's trace from its first page request (tests/fixtures/traces/README.md)."""

from __future__ import annotations

from pathlib import Path

from harness.checks.prq_real import PRQ_EVENTS, DeviceCounts, check_prq_real
from harness.results import Verdict
from harness.trace.events import TraceEvent
from harness.trace.parser import iter_events

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
TRACE = TRACES / "svmval-sva-prq.trace"
FORMATS = TRACES / "qemu10.2.2-svmval-vtd-trace-events"


def events(lines: list[str] | None = None) -> list[TraceEvent]:
    src = lines if lines is not None else TRACE
    return list(iter_events(src, names=PRQ_EVENTS, strict=True, trace_events=FORMATS))


def test_every_request_answered_once_and_counted_as_the_device_counted() -> None:
    r = check_prq_real(events(), DeviceCounts(18, {"success": 18}), sva_workloads=1)
    assert r.verdict is Verdict.PASS, [f.message for f in r.findings]
    assert r.counts["page_requests"] == r.counts["responses"] == 18 and r.counts["unanswered"] == 0
    assert len(r.data["prq_latency_us"]) == 18


def test_a_request_whose_response_never_came_is_a_finding_naming_its_line() -> None:
    lines = TRACE.read_text().splitlines()
    last = max(i for i, ln in enumerate(lines) if "page group response" in ln)
    r = check_prq_real(events(lines[:last]), None, sva_workloads=1)
    assert r.verdict is Verdict.FAIL
    (f,) = r.findings
    assert "never answered" in f.message and f.trace_lines and "vtd_prq_desc" in lines[f.trace_lines[0] - 1]


def test_counts_that_differ_from_the_devices_fail() -> None:
    r = check_prq_real(events(), DeviceCounts(19, {"success": 18}), sva_workloads=1)
    assert r.verdict is Verdict.FAIL and "counted 19 page requests" in r.findings[0].message


def test_nothing_to_judge_is_an_error_naming_why() -> None:
    r = check_prq_real([], None, sva_workloads=2)
    assert r.verdict is Verdict.ERROR and "no page request (vtd_prq_desc)" in r.summary
