"""The QI completeness check on a real guest trace, and on the same trace with bugs seeded."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from harness.checks.qi import check_qi
from harness.results import CheckResult
from harness.trace.parser import iter_events
from harness.viommu import GuestMemory
from reports.bundle import Verdict

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "traces" / "vtd-rng256.trace.xz"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return lzma.decompress(FIXTURE.read_bytes()).decode().splitlines(keepends=True)


def judge(lines: list[str]) -> CheckResult:
    return check_qi(iter_events(lines), None)


def test_real_guest_trace_is_complete(lines: list[str]) -> None:
    result = judge(lines)
    assert result.verdict is Verdict.PASS, result.findings
    # virtio-rng under strict mode: every unmap is a page-selective PASID-IOTLB flush.
    assert result.counts["desc_PasidIotlbInv"] == 266
    assert result.counts["waits_completed"] == result.counts["desc_WaitDesc"] == 312
    assert result.counts["hits"] > 2000 and result.counts["fills"] == 260
    assert result.counts.get("hits_after_invalidation", 0) == 0


def _refilled_after_invalidation(lines: list[str]) -> tuple[int, int]:
    """Index of the page-selective PASID-IOTLB descriptor that invalidated a page
    which the device later uses again (a refill), and that refill's index."""
    fills: dict[int, int] = {}
    for i, line in enumerate(lines):
        if line.startswith("vtd_iotlb_page_update"):
            iova = int(line.split()[7], 16) & ~0xFFF
            prev = fills.get(iova)
            if prev is not None:
                for j in range(i - 1, prev, -1):
                    if "type p-iotlb" in lines[j]:
                        return j, i
            fills[iova] = i
    raise AssertionError("the fixture has no page used again after its invalidation")


def _remap(line: str) -> str:
    """The same fill, but to another physical page: the IOVA was reused."""
    parts = line.split(" ")
    pte = int(parts[9], 16)
    parts[9] = hex(pte ^ 0x100000)
    return " ".join(parts)


def test_dropped_invalidation_is_caught(lines: list[str]) -> None:
    desc, refill = _refilled_after_invalidation(lines)
    # The guest reused the IOVA for another page and "forgot" the invalidation.
    seeded = lines[:desc] + lines[desc + 1 : refill] + [_remap(lines[refill])] + lines[refill + 1 :]
    result = judge(seeded)
    assert result.verdict is Verdict.FAIL
    stale = [f for f in result.findings if "no invalidation covered it" in f.message]
    assert stale, result.findings
    # the finding names the old fill and the refill (line numbers of the seeded trace)
    assert refill in stale[0].trace_lines  # refill moved up one line: 0-based index == 1-based line - 1


def test_wait_that_never_completes_is_caught(lines: list[str]) -> None:
    i = next(i for i, line in enumerate(lines) if line.startswith("vtd_inv_desc_wait_sw"))
    result = judge(lines[:i] + lines[i + 1 :])
    assert result.verdict is Verdict.FAIL
    assert result.counts["waits_pending"] == 1
    assert any("never completed" in f.message and f.trace_lines == (i,) for f in result.findings)


def test_use_after_invalidation_is_caught(lines: list[str]) -> None:
    # Move a cache hit to just after the invalidation that removed its entry.
    desc, refill = _refilled_after_invalidation(lines)
    hit_line = lines[refill].replace("vtd_iotlb_page_update IOTLB page update", "vtd_iotlb_page_hit IOTLB page hit")
    seeded = lines[: desc + 1] + [hit_line] + lines[desc + 1 :]
    result = judge(seeded)
    assert result.counts["hits_after_invalidation"] >= 1
    assert result.verdict is Verdict.FAIL


def test_invalid_descriptor_is_reported(lines: list[str]) -> None:
    i = next(i for i, line in enumerate(lines) if "type p-iotlb" in line)
    # G=00 is reserved for PASID-based IOTLB invalidation
    bad = "vtd_inv_desc invalidate desc type p-iotlb high 0x0 low 0x50006\n"
    result = judge(lines[:i] + [bad] + lines[i:])
    assert result.counts["invalid_descriptors"] == 1
    assert any(f.trace_lines == (i + 1,) for f in result.findings)


def test_an_empty_trace_is_an_error_naming_the_missing_descriptors() -> None:
    result = check_qi(iter_events([]), GuestMemory(1 << 20))
    assert result.verdict is Verdict.ERROR
    assert "no invalidation descriptors (vtd_inv_desc)" in result.summary
    assert "no root-table pointer (vtd_reg_dmar_root)" in result.summary


def test_a_trace_begun_after_the_root_pointer_cannot_compare_ram_and_says_so(lines: list[str]) -> None:
    # Tracing switched on after boot (QMP trace-event-set-state): the root pointer line
    # is not in the trace, so the cached translations cannot be read back from RAM.
    root_line = next(i for i, line in enumerate(lines) if line.startswith("vtd_reg_dmar_root "))
    later = lines[root_line + 1:]
    assert check_qi(iter_events(later), None).verdict is Verdict.PASS  # trace-only rules: judged
    result = check_qi(iter_events(later), GuestMemory(1 << 20))
    assert result.verdict is Verdict.ERROR and "root-table pointer" in result.summary
    assert "invalidation descriptors" not in result.summary
